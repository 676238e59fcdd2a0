//! Startup on the embedded default, its safe rules, timeouts, the admin
//! server, the log queue, and the graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The embedded default with its ports replaced by free ones.
fn default_on_free_ports() -> Sekisho {
    let o = Command::new(bin()).arg("default-config").output().unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("127.0.0.1:3128") && text.contains("127.0.0.1:8404"));
    start(
        &text
            .replace("127.0.0.1:3128", "127.0.0.1:{PORT}")
            .replace("127.0.0.1:8404", "127.0.0.1:{ADMIN}"),
    )
}

#[test]
fn embedded_default_runs_on_3128_with_healthz() {
    let mut child = Command::new(bin())
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = wait_for_port(3128, Duration::from_secs(10)) && wait_for_port(8404, Duration::from_secs(5));
    let health = curl(&["-s", "http://127.0.0.1:8404/healthz"]);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        up,
        "the embedded default listens on 127.0.0.1:3128 and 127.0.0.1:8404: {err}"
    );
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok\n");
    assert!(status.success(), "SIGTERM exits 0: {err}");
}

#[test]
fn default_rules_deny_unsafe_ports_connect_and_loopback() {
    let origin = Origin::start();
    let p = default_on_free_ports();
    // to_localhost: the origin is on loopback
    let (code, _) = curl_status(&p.proxy(), &format!("http://127.0.0.1:{}/echo", origin.port), &[]);
    assert_eq!(code, 403);
    // not a Safe_port
    let (code, _) = curl_status(&p.proxy(), "http://127.0.0.1:25/", &[]);
    assert_eq!(code, 403);
    // CONNECT only to 443
    let resp = raw(
        p.port,
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let resp = raw(
        p.port,
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(
        resp.starts_with("HTTP/1.1 403"),
        "to_localhost applies to CONNECT: {resp}"
    );
    let resp = raw(
        p.port,
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
    // the admin server answers locally
    assert_eq!(p.admin_get("/healthz"), (200, "ok\n".to_string()));
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let origin = Origin::start();
    let mut p = start(&basic_config(""));
    let url = origin.url("/slow?ms=1500");
    let proxy = p.proxy();
    let inflight = std::thread::spawn(move || curl_status(&proxy, &url, &[]));
    std::thread::sleep(Duration::from_millis(400));
    p.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(("127.0.0.1", p.port)).is_err(),
        "no new connections after SIGTERM"
    );
    let (code, body) = inflight.join().unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "slow done"),
        "the request in flight completes"
    );
    assert_eq!(p.stop(), Some(0), "exit status 0");
    let log = p.stdout();
    assert!(
        log.contains("TCP_MISS/200") && log.contains("/slow?ms=1500"),
        "its log line is flushed: {log}"
    );
}

#[test]
fn shutdown_deadline_cuts_what_is_left() {
    let origin = Origin::start();
    let mut p = start(&basic_config("[timeouts]\nshutdown = \"1s\"\n"));
    let url = origin.url("/hang");
    let proxy = p.proxy();
    let _stuck = std::thread::spawn(move || curl_status(&proxy, &url, &[]));
    std::thread::sleep(Duration::from_millis(400));
    let t0 = Instant::now();
    assert_eq!(p.stop(), Some(0));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stopped at the deadline: {:?}",
        t0.elapsed()
    );
    assert!(
        p.stderr().contains("still open at the shutdown deadline"),
        "{}",
        p.stderr()
    );
    assert!(
        p.stdout().contains("/hang"),
        "the cut transaction is still logged: {}",
        p.stdout()
    );
}

#[test]
fn client_header_timeout() {
    let p = start(&basic_config(
        "[timeouts]\nclient_header = \"1s\"\nclient_idle = \"20s\"\n",
    ));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: ori").unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn client_idle_timeout() {
    let origin = Origin::start();
    let p = start(&basic_config(
        "[timeouts]\nclient_idle = \"1s\"\nclient_header = \"20s\"\n",
    ));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/status?code=204")).as_bytes())
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 204"));
    let took = time_to_close(&mut s);
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// Reads until the proxy closes the connection (nothing more may arrive);
/// returns how long that took.
fn time_to_close(s: &mut TcpStream) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "the idle keep-alive connection is closed: {}",
        String::from_utf8_lossy(&buf[..n])
    );
    t0.elapsed()
}

#[test]
fn admin_server_access_and_switch() {
    let p = start(&basic_config(""));
    assert_eq!(p.admin_get("/healthz"), (200, "ok\n".to_string()));
    let (code, body) = p.admin_get("/stats.json");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["connections"].is_u64() && v["log_dropped"].is_u64(), "{body}");

    let denied = start(&basic_config("").replace("[admin]\n", "[admin]\naccess = [\"deny all\"]\n"));
    assert_eq!(denied.admin_get("/healthz").0, 403);

    let off = start(&basic_config("").replace("[admin]\n", "[admin]\nenabled = false\n"));
    assert!(
        TcpStream::connect(("127.0.0.1", off.admin_port)).is_err(),
        "no admin listener when disabled"
    );
}

#[test]
fn full_log_queue_is_counted_not_waited_on() {
    let origin = Origin::start();
    let dir = TempDir::new();
    let port = free_port();
    let admin = free_port();
    let cfg = dir.path("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[hosts]\n\"origin.test\" = \"127.0.0.1\"\n[[listener]]\nbind = \"127.0.0.1:{port}\"\naccess = [\"allow all\"]\n\
             [admin]\nbind = \"127.0.0.1:{admin}\"\n[[access_log]]\noutput = \"stdout\"\nqueue_size = 1\n"
        ),
    )
    .unwrap();
    // stdout is a pipe nobody reads: once it is full, the writer blocks and the queue overflows
    let mut child = Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_port(port, Duration::from_secs(10)));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.url(&format!("/status?code=204&pad={}", "p".repeat(200)))
    );
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    for _ in 0..1500 {
        s.write_all(req.as_bytes()).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 204"),
            "requests keep being served"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(60));
    let stats = curl(&["-s", &format!("http://127.0.0.1:{admin}/stats.json")]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(v["log_dropped"].as_u64().unwrap() > 0, "{v}");
    drop(child.stdout.take());
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "sekisho must still stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The idle timer keeps working after it fired during a long request: the
/// connection closes `client_idle` after the response.
#[test]
fn client_idle_timeout_after_a_long_request() {
    let origin = Origin::start();
    let p = start(&basic_config(
        "[timeouts]\nclient_idle = \"1s\"\nclient_header = \"1s\"\n",
    ));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // the origin answers after 2.5 s: the connection's timer fires and is set
    // again twice while the request waits
    s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/slow?ms=2500")).as_bytes())
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.ends_with(b"slow done") {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "closed before the response: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    let took = time_to_close(&mut s);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// A reload retires the old configuration: a keep-alive connection idle
/// between requests is closed at once, not at the end of `client_idle`.
#[test]
fn a_reload_closes_idle_keep_alive_connections() {
    let origin = Origin::start();
    let p = start(&basic_config("[timeouts]\nclient_idle = \"60s\"\n"));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // two requests: the connection is polled and waits again between them
    for _ in 0..2 {
        s.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/status?code=204")).as_bytes())
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 204"));
    }
    p.signal(libc::SIGHUP);
    let took = time_to_close(&mut s);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo"), &[]).0, 200);
}

#[test]
fn sighup_never_stops_the_daemon() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    p.signal(libc::SIGHUP);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !p.stderr().contains("SIGHUP") {
        assert!(
            std::time::Instant::now() < end,
            "SIGHUP not acknowledged: {}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo"), &[]).0, 200);
}
