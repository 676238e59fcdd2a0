//! The HTTP load balancer: four echo origins behind an `http` listener;
//! distribution per algorithm, weights, backup servers, maxconn and the
//! queue, passive and active health, retries, stickiness, the client-identity
//! headers, WebSocket and h2c upgrades, HTTP/2, and the HAProxy log codes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use crate::harness::{Echo, Origin, Sekisho, TempDir, curl, start};

/// A config with pool `web` over `origins` (extra pool keys and server keys
/// spliced in), an `http` listener on {PORT} and a log line in `format`.
fn lb_config(
    origins: &[&Origin],
    pool_extra: &str,
    server_extra: &[&str],
    listener_extra: &str,
    format: &str,
) -> String {
    let mut s = format!("[pool.web]\n{pool_extra}\n");
    for (i, o) in origins.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.web.server]]\nname = \"s{i}\"\naddress = \"127.0.0.1:{}\"\n{}\n",
            o.port,
            server_extra.get(i).copied().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:{{PORT}}"
mode = "http"
default_pool = "web"
{listener_extra}
[admin]
bind = "127.0.0.1:{{ADMIN}}"
[[access_log]]
output = "stdout"
style = "haproxy"
format = "{format}"
"#
    ));
    s
}

fn origins(n: usize) -> Vec<Origin> {
    (0..n).map(|_| Origin::start()).collect()
}

fn counts(os: &[Origin]) -> Vec<usize> {
    os.iter().map(|o| o.requests.load(SeqCst)).collect()
}

/// GET through the balancer: (status, body).
fn get(p: &Sekisho, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", p.port);
    let mut args = vec!["-s", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    let o = curl(&args);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The log once `n` lines are in it (records are written a moment after the response).
fn log_lines(p: &Sekisho, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = p.stdout().lines().map(String::from).collect();
        if lines.len() >= n || Instant::now() > until {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn round_robin_weights_and_backup() {
    let os = origins(4);
    let refs: Vec<&Origin> = os.iter().collect();
    let p = start(&lb_config(
        &refs,
        "retries = 3",
        &["weight = 3", "", "", "backup = true"],
        "",
        "%b/%s",
    ));
    for _ in 0..50 {
        assert_eq!(get(&p, "/", &[]).0, 200);
    }
    assert_eq!(counts(&os), [30, 10, 10, 0], "weights 3:1:1, the backup unused");
    let lines = log_lines(&p, 50);
    assert_eq!(lines.iter().filter(|l| *l == "web/s0").count(), 30);

    // every primary gone: the backup serves (GETs are retried past the dead ones)
    let backup_port = os[3].port;
    let mut os = os;
    let backup = os.pop().unwrap();
    drop(os);
    for _ in 0..5 {
        let (code, body) = get(&p, "/", &[]);
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(backup.requests.load(SeqCst), 5);
    assert_eq!(backup.port, backup_port);
}

#[test]
fn algorithms_distribute_as_documented() {
    let os = origins(4);
    let refs: Vec<&Origin> = os.iter().collect();
    // leastconn with sequential requests: each server in turn
    let p = start(&lb_config(&refs, "balance = \"leastconn\"", &[], "", "%s"));
    for _ in 0..40 {
        assert_eq!(get(&p, "/", &[]).0, 200);
    }
    assert_eq!(counts(&os), [10, 10, 10, 10]);
    drop(p);

    // uri: one path, one server; many paths, every server
    let base = counts(&os);
    let p = start(&lb_config(&refs, "balance = \"uri\"", &[], "", "%HU %s"));
    for _ in 0..10 {
        get(&p, "/same?x=1", &[]);
    }
    let after: Vec<usize> = counts(&os).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert_eq!(after.iter().filter(|&&n| n == 10).count(), 1, "{after:?}");
    for i in 0..200 {
        get(&p, &format!("/page{i}"), &[]);
    }
    let spread: Vec<usize> = counts(&os).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert!(
        spread.iter().all(|&n| n >= 20),
        "200 URIs reach every server: {spread:?}"
    );
    drop(p);

    // source: one client address, one server
    let base = counts(&os);
    let p = start(&lb_config(&refs, "balance = \"source\"", &[], "", "%s"));
    for _ in 0..12 {
        get(&p, "/", &[]);
    }
    let after: Vec<usize> = counts(&os).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert_eq!(after.iter().filter(|&&n| n == 12).count(), 1, "{after:?}");
    drop(p);

    // random (two choices): every server, within loose bounds
    let base = counts(&os);
    let p = start(&lb_config(&refs, "balance = \"random\"", &[], "", "%s"));
    for _ in 0..200 {
        get(&p, "/", &[]);
    }
    let after: Vec<usize> = counts(&os).iter().zip(&base).map(|(a, b)| a - b).collect();
    assert!(after.iter().all(|&n| (20..=80).contains(&n)), "{after:?}");
    drop(p);

    // hash of a header: two balancers that share nothing agree on every key
    let cfg = lb_config(
        &refs,
        "balance = \"hash\"\nhash_key = \"header:X-User\"",
        &[],
        "",
        "%[ssl_fc_sni]%s",
    );
    let a = start(&cfg);
    let b = start(&cfg);
    for u in 0..20 {
        let h = format!("X-User: user{u}");
        get(&a, "/", &["-H", &h]);
        get(&b, "/", &["-H", &h]);
    }
    let la = log_lines(&a, 20);
    let lb = log_lines(&b, 20);
    assert_eq!(la, lb, "same key, same server on both nodes");
    let distinct: std::collections::HashSet<&String> = la.iter().collect();
    assert!(distinct.len() >= 3, "20 users spread: {la:?}");
}

#[test]
fn maxconn_queue_and_503() {
    let os = origins(1);
    let p = start(&lb_config(
        &[&os[0]],
        "maxqueue = 1\nqueue_timeout = \"500ms\"",
        &["maxconn = 1"],
        "",
        "%ST %Tw %tsc %sq/%bq",
    ));
    let port = p.port;
    let slow = std::thread::spawn(move || {
        let o = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/slow?ms=2000"),
        ]);
        String::from_utf8_lossy(&o.stdout).to_string()
    });
    std::thread::sleep(Duration::from_millis(300));
    let queued = std::thread::spawn(move || {
        let t = Instant::now();
        let o = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/"),
        ]);
        (String::from_utf8_lossy(&o.stdout).to_string(), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    // the queue (1) is taken: refused at once
    let (code, body) = get(&p, "/", &[]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("queue is full"), "{body}");
    let (code, waited) = queued.join().unwrap();
    assert_eq!(code, "503", "the queued request times out");
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert_eq!(slow.join().unwrap(), "200");
    let lines = log_lines(&p, 3).join("\n");
    assert!(lines.contains("503 -1 sQ--") || lines.contains("503 0 sQ--"), "{lines}");
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("503 ") && l.split(' ').nth(1).unwrap().parse::<i64>().unwrap() >= 400),
        "queue time logged: {lines}"
    );
    assert!(lines.contains("200 0 ----"), "{lines}");
}

#[test]
fn passive_health_and_retries_of_idempotent_requests_only() {
    let dead = crate::harness::free_port();
    let live = Origin::start();
    let cfg = format!(
        r#"
[pool.web]
max_fails = 1
fail_timeout = "3s"
retries = 2
[[pool.web.server]]
name = "dead"
address = "127.0.0.1:{dead}"
[[pool.web.server]]
name = "live"
address = "127.0.0.1:{}"
[[listener]]
name = "front"
bind = "127.0.0.1:{{PORT}}"
mode = "http"
default_pool = "web"
[[access_log]]
output = "stdout"
style = "haproxy"
format = "%HM %ST %s %rc"
"#,
        live.port
    );
    // POST first: not retried, the client sees the failure
    let p = start(&cfg);
    let (code, _) = get(&p, "/", &["-X", "POST", "-d", "x"]);
    assert_eq!(code, 503, "a POST that failed is not sent again");
    drop(p);
    let p = start(&cfg);
    let (code, body) = get(&p, "/", &[]);
    assert_eq!(code, 200, "{body}");
    for _ in 0..6 {
        assert_eq!(get(&p, "/", &[]).0, 200);
    }
    let lines = log_lines(&p, 7);
    assert_eq!(
        lines[0], "GET 200 live 1",
        "retried once on the other server: {lines:?}"
    );
    assert!(
        lines[1..].iter().all(|l| l == "GET 200 live 0"),
        "the dead server is out: {lines:?}"
    );
}

#[test]
fn active_checks_rise_and_fall() {
    let os = origins(2);
    let cfg = lb_config(
        &[&os[0], &os[1]],
        "[pool.web.check]\ntype = \"http\"\npath = \"/status?code=200\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2",
        &[],
        "",
        "%s",
    );
    let p = start(&cfg);
    let mut os = os;
    let port1 = os[1].port;
    drop(os.pop());
    // without any request, the checks take s1 down
    let until = Instant::now() + Duration::from_secs(10);
    while !p.stderr().contains("server is DOWN") {
        assert!(Instant::now() < until, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        p.stderr().contains("server = s1") || p.stderr().contains("s1"),
        "{}",
        p.stderr()
    );
    for _ in 0..4 {
        assert_eq!(get(&p, "/", &[]).0, 200);
    }
    assert!(os[0].requests.load(SeqCst) >= 4);
    // back on the same port: up again after `rise` good checks
    let back = Origin::from_listener(std::net::TcpListener::bind(("127.0.0.1", port1)).unwrap(), None);
    let until = Instant::now() + Duration::from_secs(10);
    while !p.stderr().contains("server is UP") {
        assert!(Instant::now() < until, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..4 {
        assert_eq!(get(&p, "/", &[]).0, 200);
    }
    assert!(
        back.requests.load(SeqCst) >= 2 + 2,
        "checks plus traffic reach the restarted server"
    );
}

#[test]
fn stickiness_learned_inserted_and_source() {
    let os = origins(3);
    let refs: Vec<&Origin> = os.iter().collect();
    // (a) learn JSESSIONID from responses, match it on requests
    let p = start(&lb_config(
        &refs,
        "[pool.web.stick]\ntype = \"learn\"\ncookie = \"JSESSIONID\"\nsize = 100\nexpire = \"2s\"",
        &[],
        "capture_cookie = { name = \"JSESSIONID\", len = 32 }",
        "%s %CC %CS %tsc",
    ));
    let (code, _) = get(&p, "/setcookie?v=abc", &[]);
    assert_eq!(code, 200);
    let first = log_lines(&p, 1)[0].clone();
    let server = first.split(' ').next().unwrap().to_string();
    assert!(first.contains("JSESSIONID=abc"), "{first}");
    for _ in 0..6 {
        get(&p, "/", &["-H", "Cookie: JSESSIONID=abc"]);
    }
    let lines = log_lines(&p, 7);
    assert!(
        lines[1..].iter().all(|l| l.starts_with(&format!("{server} "))),
        "{lines:?}"
    );
    assert!(lines[1].ends_with("--VN"), "valid cookie, nothing set: {lines:?}");
    // expiry: after 2 s the key is forgotten, the balancer decides again
    std::thread::sleep(Duration::from_millis(2200));
    for _ in 0..6 {
        get(&p, "/", &["-H", "Cookie: JSESSIONID=abc"]);
    }
    let lines = log_lines(&p, 13);
    let servers: std::collections::HashSet<&str> = lines[7..].iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(servers.len() > 1, "expired: balanced again: {lines:?}");
    drop(p);

    // (b) an inserted cookie with a dynamic key, decoded the same by a second balancer
    let dir = TempDir::new();
    let key = dir.path("cookie.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let cfg = lb_config(
        &refs,
        &format!(
            "[pool.web.stick]\ntype = \"insert\"\ncookie = \"SRV\"\nkey_file = \"{}\"\nnocache = true",
            key.display()
        ),
        &[],
        "",
        "%s %tsc",
    );
    let a = start(&cfg);
    let o = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{}/", a.port),
    ]);
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: SRV=")
                .or_else(|| l.strip_prefix("Set-Cookie: SRV="))
        })
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no SRV cookie: {head}"))
        .to_string();
    assert!(head.to_ascii_lowercase().contains("cache-control: private"), "{head}");
    for o in &os {
        assert!(
            !cookie.contains(&o.port.to_string()),
            "the value hides the server: {cookie}"
        );
    }
    let first = log_lines(&a, 1)[0].split(' ').next().unwrap().to_string();
    let b = start(&cfg);
    for _ in 0..5 {
        get(&b, "/", &["-H", &format!("Cookie: SRV={cookie}")]);
    }
    let lines = log_lines(&b, 5);
    assert!(
        lines.iter().all(|l| l == &format!("{first} --VN")),
        "node b agrees: {lines:?}"
    );
    drop(b);

    // the sticky server down: balanced elsewhere and the cookie rewritten
    let idx: usize = first.trim_start_matches('s').parse().unwrap();
    let mut os = os;
    drop(os.remove(idx));
    let o = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &format!("Cookie: SRV={cookie}"),
        &format!("http://127.0.0.1:{}/", a.port),
    ]);
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("set-cookie: srv="),
        "rewritten: {head}"
    );
    drop(a);

    // (c) source-address stickiness
    let p = start(&lb_config(
        &os.iter().collect::<Vec<_>>(),
        "[pool.web.stick]\ntype = \"source\"",
        &[],
        "",
        "%s",
    ));
    for _ in 0..6 {
        get(&p, "/", &[]);
    }
    let lines = log_lines(&p, 6);
    assert!(lines.iter().all(|l| l == &lines[0]), "{lines:?}");
}

#[test]
fn client_identity_headers_and_proxy_protocol() {
    let o = Origin::start();
    let p = start(&lb_config(
        &[&o],
        "",
        &[],
        "forwarded_for = \"append\"\nx_real_ip = true\nforwarded = true\ntrusted_proxies = [\"localhost\"]",
        "%s",
    ));
    let (code, body) = get(&p, "/", &["-H", "X-Forwarded-For: 203.0.113.9"]);
    assert_eq!(code, 200);
    let e = Echo::parse(&body);
    assert_eq!(e.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"), "{body}");
    // a Connection header naming them drops the client's copies, never ours
    let (_, body) = get(
        &p,
        "/",
        &[
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "Connection: X-Forwarded-For, X-Real-IP, Forwarded",
        ],
    );
    let e = Echo::parse(&body);
    assert_eq!(e.header("x-forwarded-for"), Some("127.0.0.1"), "{body}");
    assert_eq!(e.header("x-real-ip"), Some("127.0.0.1"), "{body}");
    assert_eq!(e.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert!(
        e.header("forwarded")
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http;host=127.0.0.1"),
        "{body}"
    );

    // an untrusted client's X-Forwarded-For is replaced
    let q = start(&lb_config(&[&o], "", &[], "trusted_proxies = []", "%s"));
    let (_, body) = get(&q, "/", &["-H", "X-Forwarded-For: 203.0.113.9"]);
    assert_eq!(Echo::parse(&body).header("x-forwarded-for"), Some("127.0.0.1"));

    // PROXY protocol v2 to the server: a sekisho forward listener that requires it sees the client
    let upstream = start(
        &crate::harness::basic_config("")
            .replace(
                "access = [\"allow localhost\", \"deny all\"]",
                "access = [\"allow all\"]\n[listener.proxy_protocol]\nrequire = true",
            )
            .replace("format = \"squid\"", "format = \"%>a %>pa %ru\""),
    );
    let cfg = format!(
        "[pool.pp]\nproxy_protocol = 2\n[[pool.pp.server]]\naddress = \"127.0.0.1:{}\"\n[[listener]]\nbind = \"127.0.0.1:{{PORT}}\"\nmode = \"http\"\ndefault_pool = \"pp\"\n",
        upstream.port
    );
    let r = start(&cfg);
    let o2 = Origin::start();
    let url = format!("http://127.0.0.1:{}/", r.port);
    let out = curl(&["-s", "-H", &format!("Host: 127.0.0.1:{}", o2.port), &url]);
    let _ = out;
    let line = log_lines(&upstream, 1).join("\n");
    assert!(
        line.starts_with("127.0.0.1 127.0.0.1"),
        "the PROXY header named the client: {line}"
    );
}

/// A server that accepts one WebSocket upgrade and echoes what follows.
fn ws_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains("upgrade: websocket") {
                    let _ = s.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                    );
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                } else {
                    let body = format!("upgrade header seen: {}", text.contains("upgrade:"));
                    let _ = s.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                    );
                }
            });
        }
    });
    port
}

#[test]
fn websocket_passes_h2c_upgrade_does_not() {
    let port = ws_server();
    let cfg = format!(
        "[pool.ws]\n[[pool.ws.server]]\naddress = \"127.0.0.1:{port}\"\n[[listener]]\nbind = \"127.0.0.1:{{PORT}}\"\nmode = \"http\"\ndefault_pool = \"ws\"\n"
    );
    let p = start(&cfg);
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"hello frames").unwrap();
    let mut got = Vec::new();
    while got.len() < 12 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got, b"hello frames");

    // Upgrade: h2c is removed: the server never sees it, the client gets HTTP/1.1
    let o = curl(&["-s", "-i", "--http2", &format!("http://127.0.0.1:{}/", p.port)]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("upgrade header seen: false"), "{text}");
}

#[test]
fn http2_prior_knowledge_and_alpn() {
    let o = Origin::start();
    let p = start(&lb_config(&[&o], "", &[], "h2c = true", "%HV %ST"));
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/", p.port),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    // HTTP/1.1 still works on the same listener
    assert_eq!(get(&p, "/", &[]).0, 200);
    let lines = log_lines(&p, 2);
    assert_eq!(lines, ["HTTP/2.0 200", "HTTP/1.1 200"]);
}

/// A self-signed certificate for `names` (the first is the CN), in `dir`.
pub fn cert(dir: &TempDir, stem: &str, names: &[&str]) -> (String, String) {
    let cert = dir.path(&format!("{stem}.pem"));
    let key = dir.path(&format!("{stem}.key"));
    let san = names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",");
    let o = std::process::Command::new("openssl")
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
            &format!("/CN={}", names[0]),
            "-addext",
            &format!("subjectAltName={san}"),
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (cert.display().to_string(), key.display().to_string())
}

/// `openssl s_client` against the listener: its whole output.
fn s_client(port: u16, args: &[&str]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // send nothing; closing stdin ends the session after the handshake
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn tls_termination_sni_versions_alpn_and_log_codes() {
    crate::harness::require_tool("openssl");
    let dir = TempDir::new();
    let (a_cert, a_key) = cert(&dir, "a", &["a.test"]);
    let (b_cert, b_key) = cert(&dir, "b", &["b.test", "*.b.test"]);
    let o = Origin::start();
    let listener = format!(
        r#"[listener.tls]
certificates = [{{ cert = "{a_cert}", key = "{a_key}" }}, {{ cert = "{b_cert}", key = "{b_key}" }}]
min_version = "1.2"
alpn = ["h2", "http/1.1"]"#
    );
    let cfg = lb_config(
        &[&o],
        "",
        &[],
        &listener,
        "%[ssl_fc_sni] %sslv %sslc %[ssl_fc_alpn] %HV %ST",
    )
    .replace("mode = \"http\"", "mode = \"https\"");
    let p = start(&cfg);

    // the certificate follows SNI; no SNI or an unknown name gets the default (the first)
    for (sni, cn) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("www.b.test", "b.test"),
        ("other.test", "a.test"),
    ] {
        let out = s_client(p.port, &["-servername", sni]);
        assert!(
            out.contains(&format!("subject=CN = {cn}")) || out.contains(&format!("subject=CN={cn}")),
            "{sni}: {out}"
        );
    }
    let out = s_client(p.port, &["-noservername"]);
    assert!(
        out.contains("subject=CN = a.test") || out.contains("subject=CN=a.test"),
        "{out}"
    );

    // TLS 1.0 and 1.1 are refused (min_version 1.2); 1.2 works
    for old in ["-tls1", "-tls1_1"] {
        let out = s_client(p.port, &[old, "-servername", "a.test"]);
        assert!(
            out.contains("Cipher is (NONE)") || out.contains("no protocols available"),
            "{old}: {out}"
        );
    }
    let out = s_client(p.port, &["-tls1_2", "-servername", "a.test"]);
    assert!(out.contains("TLSv1.2"), "{out}");

    // HTTP/2 by ALPN, HTTP/1.1 without; both through to the origin
    let url = format!("https://a.test:{}/", p.port);
    let resolve = format!("a.test:{}:127.0.0.1", p.port);
    let o2 = curl(&[
        "-s",
        "-k",
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&o2.stdout), "2 200");
    let o1 = curl(&[
        "-s",
        "-k",
        "--http1.1",
        "--tls-max",
        "1.2",
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&o1.stdout), "1.1 200");
    let until = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<String> = p.stdout().lines().map(String::from).collect();
        if lines.iter().filter(|l| l.ends_with(" 200")).count() >= 2 || Instant::now() > until {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let tail: Vec<&String> = lines.iter().filter(|l| l.ends_with(" 200")).collect();
    assert!(
        tail.iter()
            .any(|l| l.starts_with("a.test TLSv1.3 TLS_AES_") && l.ends_with("h2 HTTP/2.0 200")),
        "{lines:?}"
    );
    assert!(
        tail.iter()
            .any(|l| l.starts_with("a.test TLSv1.2 ECDHE-ECDSA-") && l.ends_with("http/1.1 HTTP/1.1 200")),
        "{lines:?}"
    );
    // the refused handshakes are logged too
    assert!(
        lines.iter().filter(|l| l.ends_with("HTTP/1.1 -1")).count() >= 2,
        "{lines:?}"
    );
}

#[test]
fn httplog_presets_with_captures_counts_and_tls() {
    crate::harness::require_tool("openssl");
    let dir = TempDir::new();
    let (c, k) = cert(&dir, "a", &["a.test"]);
    let o = Origin::start();
    let listener = format!(
        r#"capture_request_headers = [{{ name = "Host", len = 32 }}, {{ name = "Referer", len = 8 }}]
capture_response_headers = [{{ name = "Set-Cookie", len = 20 }}]
capture_cookie = {{ name = "JSESSIONID", len = 20 }}
[listener.tls]
certificates = [{{ cert = "{c}", key = "{k}" }}]"#
    );
    let mut cfg = lb_config(&[&o], "", &[], &listener, "x").replace("mode = \"http\"", "mode = \"https\"");
    cfg = cfg.replace(
        "style = \"haproxy\"\nformat = \"x\"",
        "format = \"httplog-tls\"\n[[access_log]]\noutput = \"stdout\"\nformat = \"httplog\"",
    );
    let p = start(&cfg);
    let url = format!("https://a.test:{}/setcookie?v=xyz", p.port);
    let resolve = format!("a.test:{}:127.0.0.1", p.port);
    let out = curl(&[
        "-s",
        "-k",
        "--http1.1",
        "--tls-max",
        "1.2",
        "--resolve",
        &resolve,
        "-H",
        "Referer: http://referrer.example/",
        "-H",
        "Cookie: JSESSIONID=abc",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let lines = log_lines(&p, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // httplog-tls: %ci:%cp [%t] %ft %b/%s %Tq/%Tw/%Tc/%Tr/%Tt %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs SSL:{%sslv,%sslc} %{+Q}r
    let tls_line = lines
        .iter()
        .find(|l| l.contains("SSL:{"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    let f: Vec<&str> = tls_line.split(' ').collect();
    assert!(f[0].starts_with("127.0.0.1:"), "{tls_line}");
    assert!(
        f[1].starts_with('[') && f[2].ends_with(']') || f[1].ends_with(']'),
        "{tls_line}"
    );
    let rest = &tls_line[tls_line.find("] ").unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    assert_eq!(f[0], "front", "{tls_line}");
    assert_eq!(f[1], "web/s0", "{tls_line}");
    let timers: Vec<i64> = f[2].split('/').map(|t| t.parse().unwrap()).collect();
    assert_eq!(timers.len(), 5, "{tls_line}");
    assert!(timers.iter().all(|&t| t >= 0) && timers[4] >= timers[3], "{tls_line}");
    assert_eq!(f[3], "200");
    assert!(f[4].parse::<u64>().unwrap() > 0);
    assert_eq!(f[5], "JSESSIONID=abc", "request cookie: {tls_line}");
    assert_eq!(f[6], "JSESSIONID=xyz", "response cookie: {tls_line}");
    assert_eq!(f[7], "----");
    assert_eq!(f[8], "1/1/1/1/0", "connection counts: {tls_line}");
    assert_eq!(f[9], "0/0");
    assert_eq!(
        f[10],
        format!("{{a.test:{}|http://r}}", p.port),
        "captured request headers: {tls_line}"
    );
    assert_eq!(
        f[11], "{JSESSIONID=xyz;",
        "captured response header (20 bytes): {tls_line}"
    );
    assert_eq!(f[12], "Path}", "{tls_line}");
    assert!(f[13].starts_with("SSL:{TLSv1.2,ECDHE-ECDSA-AES"), "{tls_line}");
    assert!(tls_line.ends_with("\"GET /setcookie?v=xyz HTTP/1.1\""), "{tls_line}");
    // httplog: the same fields with %TR/%Tw/%Tc/%Tr/%Ta and the request date
    let plain = lines.iter().find(|l| !l.contains("SSL:{")).unwrap();
    assert!(
        plain.contains(" front web/s0 ")
            && plain.contains(" JSESSIONID=abc JSESSIONID=xyz ---- 1/1/1/1/0 0/0 {a.test:"),
        "{plain}"
    );
}

#[test]
fn routes_by_host_and_path() {
    let os = origins(3);
    let cfg = format!(
        r#"
[pool.api]
[[pool.api.server]]
address = "127.0.0.1:{}"
[pool.static]
[[pool.static.server]]
address = "127.0.0.1:{}"
[pool.rest]
[[pool.rest.server]]
address = "127.0.0.1:{}"
[[listener]]
bind = "127.0.0.1:{{PORT}}"
mode = "http"
routes = [
  {{ host = "api.example", path = "/v1", pool = "api" }},
  {{ host = ".example", path = "/static", pool = "static" }},
]
default_pool = "rest"
[[access_log]]
output = "stdout"
style = "haproxy"
format = "%b %HU"
"#,
        os[0].port, os[1].port, os[2].port
    );
    let p = start(&cfg);
    for (i, (host, path, pool)) in [
        ("api.example", "/v1/users", "api"),
        ("API.example:8080", "/v1", "api"),
        ("api.example", "/v2", "rest"),
        ("cdn.example", "/static/a.css", "static"),
        ("example", "/static/", "static"),
        ("other.test", "/static/a.css", "rest"),
    ]
    .into_iter()
    .enumerate()
    {
        let (code, _) = get(&p, path, &["-H", &format!("Host: {host}")]);
        assert_eq!(code, 200);
        let lines = log_lines(&p, i + 1);
        assert_eq!(lines[i], format!("{pool} {path}"), "{host}{path}: {lines:?}");
    }
    // no default pool and no route: 404
    let q = start(&cfg.replace("default_pool = \"rest\"", ""));
    assert_eq!(get(&q, "/", &["-H", "Host: other.test"]).0, 404);
}

#[test]
fn tls_to_servers_with_and_without_verification() {
    crate::harness::require_tool("openssl");
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = TempDir::new();
    let (ca, leaf, key) = crate::egress::ca_and_leaf(&dir);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, PrivateKeyDer::from_pem_file(&key).unwrap())
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let origin = Origin::from_listener(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Some(acceptor));
    let pool = |extra: &str| {
        format!(
            "[pool.sec]\ntls = true\n{extra}\n[pool.sec.check]\ntype = \"http\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n[[pool.sec.server]]\naddress = \"127.0.0.1:{}\"\n[[listener]]\nbind = \"127.0.0.1:{{PORT}}\"\nmode = \"http\"\ndefault_pool = \"sec\"\n",
            origin.port
        )
    };
    let p = start(&pool(&format!(
        "tls_ca_file = \"{}\"\ntls_server_name = \"parent.test\"",
        ca.display()
    )));
    let (code, body) = get(&p, "/over-tls", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(Echo::parse(&body).field("target"), "/over-tls");
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !p.stderr().contains("server is DOWN"),
        "HTTP checks speak TLS too: {}",
        p.stderr()
    );

    // a certificate the CA did not sign: refused (and the checks take the server down)
    let other = TempDir::new();
    let (wrong_ca, _, _) = crate::egress::ca_and_leaf(&other);
    let q = start(&pool(&format!(
        "tls_ca_file = \"{}\"\ntls_server_name = \"parent.test\"",
        wrong_ca.display()
    )));
    let (code, body) = get(&q, "/", &[]);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("TLS handshake") || q.stderr().contains("TLS handshake"),
        "{body}\n{}",
        q.stderr()
    );

    // tls_verify = false: encrypted, certificate not checked
    let r = start(&pool("tls_verify = false"));
    assert_eq!(get(&r, "/", &[]).0, 200);
}

#[test]
fn fail_on_5xx_and_tcp_checks() {
    let os = origins(2);
    // two 5xx from each server take both out; the answers still reach the client
    for (on, after) in [(true, 503), (false, 200)] {
        let p = start(&lb_config(
            &[&os[0], &os[1]],
            &format!("fail_on_5xx = {on}\nmax_fails = 2\nfail_timeout = \"5s\""),
            &[],
            "",
            "%s %ST",
        ));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(get(&p, "/status?code=500", &[]).0);
        }
        assert!(seen.iter().all(|&c| c == 500), "{seen:?}");
        assert_eq!(get(&p, "/status?code=200", &[]).0, after, "fail_on_5xx = {on}");
    }

    // a TCP check notices a closed port
    let dead = crate::harness::free_port();
    let cfg = format!(
        "[pool.t]\n[pool.t.check]\ntype = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 1\n[[pool.t.server]]\naddress = \"127.0.0.1:{dead}\"\n[[pool.t.server]]\naddress = \"127.0.0.1:{}\"\n[[listener]]\nbind = \"127.0.0.1:{{PORT}}\"\nmode = \"http\"\ndefault_pool = \"t\"\n",
        os[0].port
    );
    let q = start(&cfg);
    let until = Instant::now() + Duration::from_secs(5);
    while !q.stderr().contains("server is DOWN") {
        assert!(Instant::now() < until, "{}", q.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(q.stderr().contains("connect: Connection refused"), "{}", q.stderr());
}

#[test]
fn http2_with_nghttp_over_tls_and_h2c() {
    crate::harness::require_tool("nghttp");
    crate::harness::require_tool("openssl");
    let dir = TempDir::new();
    let (c, k) = cert(&dir, "a", &["a.test"]);
    let o = Origin::start();
    let tls = format!("[listener.tls]\ncertificates = [{{ cert = \"{c}\", key = \"{k}\" }}]");
    let p = start(&lb_config(&[&o], "", &[], &tls, "%HV %ST %HU").replace("mode = \"http\"", "mode = \"https\""));
    // several streams on one connection, each answered
    let out = std::process::Command::new("nghttp")
        .args([
            "-n",
            "-s",
            "-m",
            "3",
            &format!("https://127.0.0.1:{}/nghttp?x=1", p.port),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = log_lines(&p, 3);
    // HTTP/2 requests carry their scheme and authority: logged in absolute form, as HAProxy does
    let want = format!("HTTP/2.0 200 https://127.0.0.1:{}/nghttp?x=1", p.port);
    assert_eq!(lines.iter().filter(|l| **l == want).count(), 3, "{lines:?}");

    // h2c with prior knowledge on a clear-text listener
    let q = start(&lb_config(&[&o], "", &[], "h2c = true", "%HV %ST"));
    let out = std::process::Command::new("nghttp")
        .args(["-n", &format!("http://127.0.0.1:{}/", q.port)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(log_lines(&q, 1), ["HTTP/2.0 200"]);
}

/// Data segments this socket has received (TCP_INFO).
fn data_segments_in(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

#[test]
fn a_tls_handshake_flight_leaves_in_one_segment() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    crate::harness::require_tool("openssl");
    let dir = TempDir::new();
    let (c, k) = cert(&dir, "a", &["a.test"]);
    let o = Origin::start();
    let listener = format!("[listener.tls]\ncertificates = [{{ cert = \"{c}\", key = \"{k}\" }}]");
    let cfg = lb_config(&[&o], "", &[], &listener, "%ST").replace("mode = \"http\"", "mode = \"https\"");
    let p = start(&cfg);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&c).unwrap()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut tls =
        rustls::ClientConnection::new(std::sync::Arc::new(config), ServerName::try_from("a.test").unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut sock).unwrap();
    }
    assert_eq!(tls.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // ServerHello, ChangeCipherSpec and the encrypted rest come in one
    // write; the session tickets that follow the client's Finished may be
    // in already, in one more
    let segs = data_segments_in(&sock);
    assert!(
        (1..=2).contains(&segs),
        "{segs} data segments for the server's handshake"
    );
    // and the connection works
    use std::io::{Read, Write};
    tls.writer()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    let _ = stream.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
}
