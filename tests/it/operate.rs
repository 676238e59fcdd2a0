//! Operating a running sekisho: reload under load (SIGHUP and `sekisho
//! reload`), an invalid configuration on reload, the binary upgrade by
//! socket takeover, systemd notifications, and the connection and header limits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A forward listener, CONNECT to any port, a control socket and a pid file.
fn operated_config(hostname: &str, extra: &str) -> String {
    let top = "control_socket = \"{DIR}/control.sock\"\npid_file = \"{DIR}/sekisho.pid\"\n";
    let body = basic_config(&format!("[acl]\nCONNECT = {{ method = [\"CONNECT\"] }}\n{extra}\n"));
    format!("{top}{body}").replace("proxy.test", hostname)
}

/// Reads one HTTP/1.1 response (Content-Length or chunked); `None` when the
/// connection closed before its first byte.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<Option<(u16, String)>, String> {
    let mut status = String::new();
    match r.read_line(&mut status) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if status.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(format!("reading the status line: {e}")),
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status:?}"))?;
    let (mut len, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| format!("reading headers: {e}"))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| format!("bad length {h}"))?;
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(|e| format!("chunk size: {e}"))?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| format!("bad chunk size {size:?}"))?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).map_err(|e| format!("chunk: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(len, 0);
        r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    }
    Ok(Some((code, String::from_utf8_lossy(&body).to_string())))
}

/// Bounded continuous load through a forward proxy: keep-alive clients (a
/// request on a reused connection that the proxy closed before answering is
/// sent again on a new one, as HTTP clients do) and clients that open a new
/// connection per request. Every other failure is counted.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(proxy_port: u16, url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for keep_alive in [true, true, false, false] {
            let (stop, ok, url) = (stop.clone(), ok.clone(), url.to_string());
            workers.push(std::thread::spawn(move || {
                let mut failures = Vec::new();
                let req = format!(
                    "GET {url} HTTP/1.1\r\nHost: origin.test\r\n{}\r\n",
                    if keep_alive { "" } else { "Connection: close\r\n" }
                );
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Relaxed) && Instant::now() < deadline && failures.len() < 20 {
                    let mut reused = conn.is_some();
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        if conn.is_none() {
                            match TcpStream::connect(("127.0.0.1", proxy_port)) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                    conn = Some(BufReader::new(s));
                                }
                                Err(e) => {
                                    failures.push(format!("connect: {e}"));
                                    break;
                                }
                            }
                        }
                        let c = conn.as_mut().unwrap();
                        let sent = c.get_mut().write_all(req.as_bytes());
                        let got = match sent {
                            Ok(()) => read_response(c),
                            Err(e) if reused => Err(format!("closed: {e}")),
                            Err(e) => Err(format!("send: {e}")),
                        };
                        match got {
                            Ok(Some((200, _))) => {
                                ok.fetch_add(1, Relaxed);
                                if !keep_alive {
                                    conn = None;
                                }
                                break;
                            }
                            Ok(Some((code, body))) => {
                                failures.push(format!("status {code}: {body}"));
                                conn = None;
                                break;
                            }
                            // closed before any byte of an answer: retry on a new connection
                            Ok(None) | Err(_) if reused && attempt == 1 => {
                                conn = None;
                                reused = false;
                            }
                            Ok(None) => {
                                failures.push("closed before any answer on a new connection".into());
                                conn = None;
                                break;
                            }
                            Err(e) => {
                                failures.push(e);
                                conn = None;
                                break;
                            }
                        }
                    }
                }
                failures
            }));
        }
        Load { stop, ok, workers }
    }

    /// Stops the clients; returns (answered requests, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        let failures = self.workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        (self.ok.load(Relaxed), failures)
    }
}

/// A TCP echo server for a long tunnel.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(4) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A CONNECT tunnel to the echo server.
struct Tunnel(TcpStream);

impl Tunnel {
    fn open(proxy_port: u16, echo: u16) -> Tunnel {
        let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("CONNECT origin.test:{echo} HTTP/1.1\r\nHost: origin.test:{echo}\r\n\r\n").as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).unwrap(), 1, "tunnel answer cut: {head:?}");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        Tunnel(s)
    }

    /// Sends a line through the tunnel and checks it comes back.
    fn ping(&mut self, n: usize) -> Result<(), String> {
        let msg = format!("ping {n}\n");
        self.0.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
        let mut got = vec![0u8; msg.len()];
        self.0.read_exact(&mut got).map_err(|e| e.to_string())?;
        if got == msg.as_bytes() {
            Ok(())
        } else {
            Err(format!("echoed {:?}", String::from_utf8_lossy(&got)))
        }
    }
}

fn stats(p: &Sekisho) -> serde_json::Value {
    let (code, body) = p.admin_get("/stats.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the running configuration is generation `g`.
fn wait_generation(p: &Sekisho, g: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if stats(p)["generation"].as_u64() == Some(g) {
            return;
        }
        assert!(Instant::now() < end, "generation {g} not reached: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reload_cmd(args: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("reload").args(args).output().unwrap()
}

#[test]
fn twenty_reloads_under_load_lose_no_request_and_keep_the_tunnel() {
    let origin = Origin::start();
    let echo = echo_server();
    let p = start(&operated_config("gen1.test", ""));
    let cfg = p.dir.path("sekisho.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let control = p.dir.path("control.sock");
    let extra_port = free_port();
    let mut tunnel = Tunnel::open(p.port, echo);
    let load = Load::start(p.port, &origin.url("/echo"));
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..20u64 {
        // each generation names itself differently; every other one adds a listener
        let mut next = text.replace("gen1.test", &format!("gen{}.test", i + 2));
        if i % 2 == 0 {
            next.push_str(&format!(
                "[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:{extra_port}\"\naccess = [\"allow localhost\", \"deny all\"]\n"
            ));
        }
        std::fs::write(&cfg, next).unwrap();
        if i % 2 == 0 {
            p.signal(libc::SIGHUP);
        } else {
            let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                format!("ok generation {}", i + 2)
            );
        }
        wait_generation(&p, i + 2);
        // the added listener serves; the removed one refuses
        let extra = TcpStream::connect(("127.0.0.1", extra_port));
        assert_eq!(extra.is_ok(), i % 2 == 0, "listener `extra` after reload {}", i + 1);
        tunnel
            .ping(i as usize)
            .unwrap_or_else(|e| panic!("tunnel after reload {}: {e}", i + 1));
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
    assert!(ok > 100, "the load ran: {ok} requests");
    tunnel.ping(99).expect("the tunnel survives 20 reloads");
    // the new configuration is in force
    let (code, body) = curl_status(&p.proxy(), &origin.url("/echo"), &[]);
    assert_eq!(code, 200);
    assert!(body.contains("1.1 gen21.test"), "Via names the last generation: {body}");
    let s = stats(&p);
    assert_eq!(s["reloads"], 20);
    assert_eq!(s["reloads_failed"], 0);
}

#[test]
fn an_invalid_configuration_on_reload_keeps_the_old_one() {
    let origin = Origin::start();
    let p = start(&operated_config("keep.test", ""));
    let cfg = p.dir.path("sekisho.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("deny all", "deny nosuchacl")).unwrap();
    // `sekisho reload -c` validates first and sends nothing
    let o = reload_cmd(&["-c", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("nosuchacl") && err.contains("sekisho.toml:"), "{err}");
    assert_eq!(stats(&p)["reloads_failed"], 0, "nothing was sent");
    // through the control socket the running daemon refuses it and says why
    let control = p.dir.path("control.sock");
    let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("reload failed") && err.contains("nosuchacl"), "{err}");
    // and by SIGHUP, through the pid file
    let pid_file = p.dir.path("sekisho.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), p.pid().to_string());
    let o = reload_cmd(&["--pid-file", pid_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let end = Instant::now() + Duration::from_secs(10);
    while stats(&p)["reloads_failed"] != 2 {
        assert!(Instant::now() < end, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = stats(&p);
    assert_eq!(s["generation"], 1);
    assert!(s["last_reload_error"].as_str().unwrap().contains("nosuchacl"), "{s}");
    assert!(p.stderr().contains("reload refused"), "{}", p.stderr());
    let (code, body) = curl_status(&p.proxy(), &origin.url("/echo"), &[]);
    assert_eq!(code, 200, "the old configuration still serves: {body}");
    assert!(body.contains("keep.test"), "{body}");
    // fixed, it goes through and the error is cleared
    std::fs::write(&cfg, good).unwrap();
    let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
    assert!(o.status.success());
    let s = stats(&p);
    assert_eq!(s["generation"], 2);
    assert!(s["last_reload_error"].is_null());
}

#[test]
fn reload_keeps_server_health() {
    // two servers; one refuses connections and is taken out by the checks
    let a = Origin::start();
    let dead = free_port();
    let conf = format!(
        r#"
control_socket = "{{DIR}}/control.sock"
[[listener]]
name = "web"
bind = "127.0.0.1:{{PORT}}"
mode = "http"
default_pool = "app"
[pool.app]
max_fails = 0
[[pool.app.server]]
name = "a"
address = "127.0.0.1:{}"
[[pool.app.server]]
name = "b"
address = "127.0.0.1:{dead}"
[pool.app.check]
type = "tcp"
interval = "200ms"
timeout = "100ms"
fall = 1
rise = 50
[pool.app.stick]
type = "source"
[admin]
bind = "127.0.0.1:{{ADMIN}}"
"#,
        a.port
    );
    let p = start(&conf);
    let control = p.dir.path("control.sock");
    std::thread::sleep(Duration::from_millis(600));
    // b is down now; it needs 50 good checks (10 s) to come back
    let url = format!("http://127.0.0.1:{}/echo", p.port);
    for _ in 0..4 {
        let o = curl(&["-s", "-w", "\n%{http_code}", &url]);
        assert!(String::from_utf8_lossy(&o.stdout).ends_with("\n200"));
    }
    // the dead address comes alive: a fresh health state would send traffic
    // to b at once; the kept one still has it down (rise = 50)
    let b = Origin::from_listener(TcpListener::bind(("127.0.0.1", dead)).unwrap(), None);
    let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for _ in 0..10 {
        let o = curl(&["-s", &url]);
        assert!(o.status.success());
    }
    assert_eq!(
        b.requests.load(Relaxed),
        0,
        "b stays down across the reload (only checks reach it)"
    );
    assert!(a.connections() > 0);
}

#[test]
fn binary_upgrade_takes_the_sockets_over_without_a_failed_request() {
    let origin = Origin::start();
    let echo = echo_server();
    let mut old = start(&operated_config("old.test", "[timeouts]\nshutdown = \"20s\"\n"));
    let cfg = old.dir.path("sekisho.toml");
    let control = old.dir.path("control.sock");
    let mut tunnel = Tunnel::open(old.port, echo);
    let load = Load::start(old.port, &origin.url("/echo"));
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace("old.test", "new.test"),
    )
    .unwrap();
    let new_out = old.dir.path("new.stderr");
    let new = Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .arg("--takeover")
        .arg(&control)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&new_out).unwrap())
        .spawn()
        .unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut new = Kill(new);
    // the old one hands over, keeps its tunnel, and exits once that ends
    let end = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&new_out).unwrap_or_default().contains("ready") {
        assert!(
            Instant::now() < end,
            "new: {}",
            std::fs::read_to_string(&new_out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    tunnel.ping(1).expect("the old process still relays its tunnel");
    drop(tunnel);
    let child = old.child.as_mut().unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "the old process did not exit: {}", old.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{}", old.stderr());
    old.child = None;
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{} failed requests: {failures:?}", failures.len());
    assert!(ok > 50, "the load ran: {ok}");
    assert!(old.stderr().contains("binary upgrade"), "{}", old.stderr());
    // the new process serves on the same port with its configuration
    let (code, body) = curl_status(&old.proxy(), &origin.url("/echo"), &[]);
    assert_eq!(code, 200);
    assert!(body.contains("new.test"), "{body}");
    let pid = std::fs::read_to_string(old.dir.path("sekisho.pid")).unwrap();
    assert_eq!(pid.trim(), new.0.id().to_string(), "the pid file names the new process");
    // and it answers on the control socket
    let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = new.0.kill();
}

#[test]
fn a_second_instance_on_the_same_control_socket_is_refused() {
    let p = start(&operated_config("one.test", ""));
    let cfg = p.dir.path("sekisho.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // other ports, same control socket
    let other = p.dir.path("other.toml");
    std::fs::write(
        &other,
        text.replace(&p.port.to_string(), &free_port().to_string())
            .replace(&p.admin_port.to_string(), &free_port().to_string()),
    )
    .unwrap();
    let o = Command::new(bin()).args(["run", "-c"]).arg(&other).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another sekisho is running") && err.contains("--takeover"),
        "{err}"
    );
}

#[test]
fn systemd_notifications_for_start_reload_and_stop() {
    let dir = TempDir::new();
    let sock_path = dir.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = start_env(&basic_config(""), &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", p.pid())), "{ready}");
    p.signal(libc::SIGHUP);
    let reloading = next();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1");
    assert_eq!(p.stop(), Some(0));
    assert_eq!(next(), "STOPPING=1");
}

#[test]
fn per_source_limit_answers_429_and_frees_the_place() {
    let origin = Origin::start();
    let p = start(&basic_config("").replace(
        "access = [\"allow localhost\", \"deny all\"]",
        "access = [\"allow localhost\", \"deny all\"]\nmaxconn_per_source = 2",
    ));
    let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/echo"));
    // two keep-alive connections, each known to be served (holding a place)
    let held = || {
        let s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s);
        r.get_mut().write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(&mut r).unwrap().unwrap().0, 200);
        r
    };
    let a = held();
    let b = held();
    let resp = raw(p.port, req.as_bytes(), Duration::from_secs(5));
    assert!(
        resp.starts_with("HTTP/1.1 429"),
        "{resp} {}",
        p.admin_get("/stats.json").1
    );
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let (code, _) = curl_status(&p.proxy(), &origin.url("/echo"), &[]);
    assert_eq!(code, 200, "a place was given back");
    drop(b);
    let lines = p.log_lines(2);
    assert!(
        lines.iter().any(|l| l.contains("error:too-many-connections")),
        "{lines:?}"
    );
    let s = stats(&p);
    assert_eq!(s["listeners"][0]["refused"], 1, "{s}");
}

#[test]
fn listener_maxconn_keeps_the_rest_waiting_in_the_backlog() {
    let origin = Origin::start();
    let p = start(&basic_config("").replace(
        "access = [\"allow localhost\", \"deny all\"]",
        "access = [\"allow localhost\", \"deny all\"]\nmaxconn = 2",
    ));
    let a = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    let _b = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // the third connects (kernel backlog) but is not served while two are open
    let mut c = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    c.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
            origin.url("/echo")
        )
        .as_bytes(),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 64];
    assert!(c.read(&mut buf).is_err(), "not served while the listener is full");
    let s = stats(&p);
    assert_eq!(s["listeners"][0]["current"], 2, "{s}");
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "served once a place freed: {resp}");
    assert_eq!(stats(&p)["listeners"][0]["max"], 2);
}

#[test]
fn header_size_and_count_caps_answer_431() {
    let p = start(&basic_config("[http]\nmax_header_size = 8192\nmax_headers = 20\n"));
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(
        p.port,
        format!("GET http://origin.test/ HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(resp.starts_with("HTTP/1.1 431"), "too many headers: {resp}");
    let big = "a".repeat(10_000);
    let resp = raw(
        p.port,
        format!("GET http://origin.test/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert!(resp.starts_with("HTTP/1.1 431"), "too large a header block: {resp}");
    let lines = p.log_lines(2);
    assert_eq!(lines.iter().filter(|l| l.contains("/431")).count(), 2, "{lines:?}");
}

#[test]
fn reload_keeps_a_learnt_stick_table() {
    let a = Origin::start();
    let b = Origin::start();
    let conf = format!(
        r#"
control_socket = "{{DIR}}/control.sock"
[[listener]]
name = "web"
bind = "127.0.0.1:{{PORT}}"
mode = "http"
default_pool = "app"
[pool.app]
[pool.app.stick]
type = "learn"
cookie = "JSESSIONID"
[[pool.app.server]]
name = "a"
address = "127.0.0.1:{}"
[[pool.app.server]]
name = "b"
address = "127.0.0.1:{}"
[admin]
bind = "127.0.0.1:{{ADMIN}}"
"#,
        a.port, b.port
    );
    let p = start(&conf);
    let base = format!("http://127.0.0.1:{}", p.port);
    // two sessions set by the application, one on each server (round robin)
    let o = curl(&["-s", &format!("{base}/setcookie?v=first")]);
    assert!(o.status.success());
    let first_on_a = a.requests.load(Relaxed) == 1;
    let o = curl(&["-s", &format!("{base}/setcookie?v=second")]);
    assert!(o.status.success());
    assert_eq!(a.requests.load(Relaxed) + b.requests.load(Relaxed), 2);
    assert_eq!(a.requests.load(Relaxed), 1, "one session on each server");
    let o = reload_cmd(&["--control-socket", p.dir.path("control.sock").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // after the reload each session still goes to the server that set it
    for (cookie, on_a) in [("first", first_on_a), ("second", !first_on_a)] {
        let (a0, b0) = (a.requests.load(Relaxed), b.requests.load(Relaxed));
        for _ in 0..4 {
            let o = curl(&[
                "-s",
                "-H",
                &format!("Cookie: JSESSIONID={cookie}"),
                &format!("{base}/echo"),
            ]);
            assert!(o.status.success());
        }
        let (da, db) = (a.requests.load(Relaxed) - a0, b.requests.load(Relaxed) - b0);
        assert_eq!(
            (da, db),
            if on_a { (4, 0) } else { (0, 4) },
            "session `{cookie}` after the reload"
        );
    }
}

#[test]
fn reload_keeps_the_default_maxconn_and_refuses_a_new_control_socket() {
    let p = start(&operated_config("limits.test", ""));
    let cfg = p.dir.path("sekisho.toml");
    let control = p.dir.path("control.sock");
    let before = stats(&p)["maxconn"].as_u64().unwrap();
    assert!(before >= 64, "a default derived from the open-file limit: {before}");
    let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        stats(&p)["maxconn"].as_u64(),
        Some(before),
        "the same default after a reload"
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("control.sock", "other.sock")).unwrap();
    let o = reload_cmd(&["--control-socket", control.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("`control_socket` cannot change on reload"), "{err}");
    assert_eq!(stats(&p)["generation"], 2);
}

/// Threads of a process that the runtime named as its workers.
fn worker_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "tokio-rt-worker")
        .count()
}

#[test]
fn threads_sets_the_serving_threads_and_cannot_change_on_reload() {
    let origin = Origin::start();
    let echo = echo_server();
    for (threads, workers) in [(1, 0), (3, 3)] {
        let conf = operated_config("threads.test", "").replacen(
            "control_socket",
            &format!("threads = {threads}\ncontrol_socket"),
            1,
        );
        let p = start(&conf);
        assert_eq!(stats(&p)["threads"], threads, "threads = {threads}");
        assert!(worker_threads(p.pid()) >= workers, "threads = {threads}");
        // a tunnel stays open while requests are served beside it
        let mut tunnel = Tunnel::open(p.port, echo);
        for i in 0..5 {
            let (code, body) = curl_status(&p.proxy(), &origin.url("/echo"), &[]);
            assert_eq!(code, 200, "{body}");
            tunnel.ping(i).unwrap();
        }
        let cfg = p.dir.path("sekisho.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(
            &cfg,
            text.replace(&format!("threads = {threads}"), &format!("threads = {}", threads + 1)),
        )
        .unwrap();
        let o = reload_cmd(&["--control-socket", p.dir.path("control.sock").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("`threads` cannot change on reload"), "{err}");
        assert_eq!(stats(&p)["threads"], threads);
        tunnel.ping(9).unwrap();
    }
}

#[test]
fn threads_default_to_the_cpus_sekisho_may_run_on() {
    let p = start(&operated_config("threads.test", ""));
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(stats(&p)["threads"], cpus);
}
