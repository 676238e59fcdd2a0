//! The integration-test harness: the real `sekisho` binary on free loopback
//! ports, an origin that counts its connections, and curl as the client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Fails the test when a tool the tests need is missing: under CI that is an
/// error, never a skip.
pub fn require_tool(name: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the tests need `{name}`; run `bash .ci/run` (or `apt-get install {name}`) first"
    );
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sekisho-it-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sekisho")
}

/// A running sekisho; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Sekisho {
    pub child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub dir: TempDir,
}

/// `{PORT}` and `{ADMIN}` in the config text become the chosen ports.
pub fn start(config: &str) -> Sekisho {
    start_env(config, &[])
}

/// [`start`] with extra environment variables; `{DIR}` in their values is
/// the instance's directory too.
pub fn start_env(config: &str, env: &[(&str, &str)]) -> Sekisho {
    let dir = TempDir::new();
    let port = free_port();
    let admin_port = free_port();
    let text = config
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin_port.to_string())
        .replace("{DIR}", dir.0.to_str().unwrap());
    let cfg = dir.path("sekisho.toml");
    std::fs::write(&cfg, text).unwrap();
    let child = Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .envs(
            env.iter()
                .map(|(k, v)| (*k, v.replace("{DIR}", dir.0.to_str().unwrap()))),
        )
        .stdout(std::fs::File::create(dir.path("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .expect("start sekisho");
    let s = Sekisho {
        child: Some(child),
        port,
        admin_port,
        dir,
    };
    if !wait_for_port(port, Duration::from_secs(10)) {
        panic!("sekisho did not start listening; stderr:\n{}", s.stderr());
    }
    s
}

/// Access to everything from loopback, the test origin named `origin.test`.
pub fn basic_config(extra: &str) -> String {
    format!(
        r#"
visible_hostname = "proxy.test"
[hosts]
"origin.test" = "127.0.0.1"
[[listener]]
name = "fwd"
bind = "127.0.0.1:{{PORT}}"
access = ["allow localhost", "deny all"]
[admin]
bind = "127.0.0.1:{{ADMIN}}"
[[access_log]]
output = "stdout"
format = "squid"
{extra}
"#
    )
}

impl Sekisho {
    pub fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on the child we started.
        unsafe { libc::kill(self.pid(), sig) };
    }
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path("stdout")).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path("stderr")).unwrap_or_default()
    }
    /// Waits until the access log holds at least `n` lines.
    pub fn log_lines(&self, n: usize) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = self.stdout().lines().map(String::from).collect();
            if lines.len() >= n || Instant::now() > end {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sekisho did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let o = curl(&[
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{}{path}", self.admin_port),
        ]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }
}

impl Drop for Sekisho {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs curl with a 30 s cap.
pub fn curl(args: &[&str]) -> Output {
    require_tool("curl");
    Command::new("curl")
        .args(["--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl")
}

/// `curl -x proxy` and the status code (the body is written to `body_out` if given).
pub fn curl_status(proxy: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["-s", "-x", proxy, "-w", "\n%{http_code}", url];
    args.extend_from_slice(extra);
    let o = curl(&args);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A raw HTTP exchange on a fresh connection: sends `request`, reads to EOF or `timeout`.
pub fn raw(port: u16, request: &[u8], timeout: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// The test origin: an HTTP/1.1 server on a loopback port that counts
/// connections and requests and echoes what it received.
pub struct Origin {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn origin_service(req: Request<Incoming>, conn_id: usize, peer: SocketAddr) -> Response<Body> {
    let q = query(&req);
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/big" | "/chunked" => {
            let n: u64 = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(1024);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut r = Response::new(ChunkBody { left: n, chunk }.boxed());
            if path == "/big" {
                r.headers_mut().insert("content-length", n.into());
            }
            r.headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            r
        }
        "/slow" => {
            let ms: u64 = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full(""))
        }
        "/setcookie" => {
            // the application's session cookie, for stickiness tests
            let v = q.get("v").cloned().unwrap_or_else(|| "s1".into());
            let mut r = Response::new(full(format!("cookie {v}")));
            r.headers_mut()
                .insert("set-cookie", format!("JSESSIONID={v}; Path=/").parse().unwrap());
            r
        }
        "/status" => {
            let code: u16 = q.get("code").and_then(|v| v.parse().ok()).unwrap_or(200);
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
            r
        }
        "/hop" => {
            let mut r = Response::new(full("hop"));
            let h = r.headers_mut();
            h.insert("connection", "x-private".parse().unwrap());
            h.insert("x-private", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            r
        }
        _ => {
            // echo: method, target, headers and a digest of the body
            let method = req.method().to_string();
            let target = req.uri().to_string();
            let version = format!("{:?}", req.version());
            let headers: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{}: {}", k, String::from_utf8_lossy(v.as_bytes())))
                .collect();
            let mut body = req.into_body();
            let mut len = 0u64;
            let mut sum = 0u64;
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                    sum = d.iter().fold(sum, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
                }
            }
            let text = format!(
                "method={method}\ntarget={target}\nversion={version}\nconn={conn_id}\npeer={peer}\nbody_len={len}\nbody_sum={sum}\n{}\n",
                headers.join("\n")
            );
            let mut r = Response::new(full(text));
            r.headers_mut().insert("content-type", "text/plain".parse().unwrap());
            r
        }
    }
}

/// `n` bytes of `x`, produced as they are sent.
struct ChunkBody {
    left: u64,
    chunk: Bytes,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

impl Origin {
    pub fn start() -> Origin {
        Origin::start_with_tls(None)
    }

    /// With `tls`, the origin speaks HTTPS with that acceptor.
    pub fn start_with_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
        Origin::from_listener(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), tls)
    }

    /// The origin on an already-bound listener (one bound inside a network
    /// namespace, for instance); with `tls`, it speaks HTTPS.
    pub fn from_listener(listener: std::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let id = c.fetch_add(1, SeqCst);
                let r = r.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, SeqCst);
                        async move { Ok::<_, Infallible>(origin_service(req, id, peer).await) }
                    });
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Origin {
            port,
            connections,
            requests,
            _rt: rt,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://origin.test:{}{path}", self.port)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(SeqCst)
    }
}

/// Parses the echo origin's answer into its fields and headers (lower-cased names).
pub struct Echo {
    pub fields: HashMap<String, String>,
    pub headers: Vec<(String, String)>,
}

impl Echo {
    pub fn parse(text: &str) -> Echo {
        let mut fields = HashMap::new();
        let mut headers = Vec::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(": ") {
                headers.push((k.to_ascii_lowercase(), v.to_string()));
            } else if let Some((k, v)) = line.split_once('=') {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        Echo { fields, headers }
    }
    pub fn field(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no field {k} in echo"))
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// A self-signed certificate for `tls.test`, made with the openssl CLI.
pub fn tls_acceptor(dir: &Path) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    require_tool("openssl");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=tls.test",
            "-addext",
            "subjectAltName=DNS:tls.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl could not make a test certificate");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert)
}

/// Resident and peak resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let get = |k: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
