//! `tcp` listeners: connections balanced over a pool, failover on connect
//! errors, PROXY headers and TLS termination in front of a TCP service, and
//! one `tcplog` record per connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::harness::{Sekisho, TempDir, start};

/// A TCP service that greets with its name (and the first line it got when
/// `proxy` is set: the PROXY header), then echoes. Counts connections.
fn service(name: &'static str, proxy: bool) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            c.fetch_add(1, SeqCst);
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut greeting = format!("{name}\n");
                if proxy {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while !line.ends_with(b"\r\n") {
                        if s.read(&mut b).unwrap_or(0) == 0 {
                            return;
                        }
                        line.push(b[0]);
                    }
                    greeting = format!("{name} {}", String::from_utf8_lossy(&line));
                }
                if s.write_all(greeting.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 || s.write_all(&buf[..k]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, n)
}

fn tcp_config(servers: &[u16], pool_extra: &str, listener_extra: &str) -> String {
    let mut s = format!("[pool.svc]\n{pool_extra}\n");
    for (i, p) in servers.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.svc.server]]\nname = \"t{i}\"\naddress = \"127.0.0.1:{p}\"\n"
        ));
    }
    s.push_str(&format!(
        "[[listener]]\nname = \"tcpfront\"\nbind = \"127.0.0.1:{{PORT}}\"\nmode = \"tcp\"\ndefault_pool = \"svc\"\n{listener_extra}\n[[access_log]]\noutput = \"stdout\"\nformat = \"tcplog\"\n"
    ));
    s
}

/// Connects, reads the greeting line, sends `msg`, reads it back, closes.
fn exchange(p: &Sekisho, msg: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let until = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).ends_with(msg) && Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

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
fn tcp_connections_are_balanced_fail_over_and_are_logged() {
    let (a, na) = service("alpha", false);
    let (b, nb) = service("beta", false);
    let dead = crate::harness::free_port();
    let p = start(&tcp_config(&[a, dead, b], "retries = 2", ""));
    let mut greetings = Vec::new();
    for i in 0..6 {
        let got = exchange(&p, &format!("ping{i}\n"));
        assert!(got.ends_with(&format!("ping{i}\n")), "{got:?}");
        greetings.push(got.lines().next().unwrap().to_string());
    }
    // round robin over the two live servers (the readiness probe took one turn)
    assert!(greetings.iter().filter(|g| *g == "alpha").count() >= 2, "{greetings:?}");
    assert!(greetings.iter().filter(|g| *g == "beta").count() >= 2, "{greetings:?}");
    // the harness's own readiness probe was one more connection
    assert_eq!(na.load(SeqCst) + nb.load(SeqCst), 7);
    let all = log_lines(&p, 7);
    // the probe only got a greeting (5 or 6 bytes); the six exchanges got the echo too
    let lines: Vec<&String> = all
        .iter()
        .filter(|l| {
            l.split(' ')
                .nth(5)
                .and_then(|b| b.parse::<u32>().ok())
                .is_some_and(|b| b > 6)
        })
        .collect();
    assert_eq!(lines.len(), 6, "{all:?}");
    // %ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f[2], "tcpfront", "{}", lines[0]);
    assert!(f[3] == "svc/t0" || f[3] == "svc/t2", "{}", lines[0]);
    assert!(
        f[5] == "12" || f[5] == "11",
        "bytes to the client: greeting and echo: {}",
        lines[0]
    );
    assert_eq!(f[6], "--");
    // the dead server was tried once, then left out (passive health); the
    // retry is logged on the connection that made it, which ended on a live
    // server (which one depends on how the first connections' picks
    // interleave across the runtime's threads)
    let retried: Vec<&String> = all.iter().filter(|l| l.ends_with("/1 0/0")).collect();
    assert_eq!(retried.len(), 1, "{all:?}");
    assert!(
        retried[0].contains(" svc/t0 ") || retried[0].contains(" svc/t2 "),
        "{all:?}"
    );
    assert!(
        !all.iter().any(|l| l.contains(" svc/t1 ")),
        "the dead server never served: {all:?}"
    );
}

#[test]
fn tcp_proxy_header_and_tls_termination_in_front() {
    crate::harness::require_tool("openssl");
    let (a, _) = service("alpha", true);
    let p = start(&tcp_config(&[a], "proxy_protocol = 1", ""));
    let got = exchange(&p, "hello\n");
    let first = got.lines().next().unwrap();
    assert!(first.starts_with("alpha PROXY TCP4 127.0.0.1 127.0.0.1 "), "{got:?}");
    assert!(
        first.ends_with(&format!(" {}", p.port)),
        "the listener's port is the destination: {first}"
    );

    // TLS terminated by sekisho, clear text to the service
    let (b, _) = service("beta", false);
    let dir = TempDir::new();
    let (cert, key) = crate::lb::cert(&dir, "tcp", &["tcp.test"]);
    let q = start(&tcp_config(
        &[b],
        "",
        &format!("[listener.tls]\ncertificates = [{{ cert = \"{cert}\", key = \"{key}\" }}]"),
    ));
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-connect",
            &format!("127.0.0.1:{}", q.port),
            "-servername",
            "tcp.test",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"over tls\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("beta\n") && text.contains("over tls"), "{text}");
}

/// `parked` from `/stats.json`.
fn parked(p: &Sekisho) -> u64 {
    let (code, body) = p.admin_get("/stats.json?history=0");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["parked"].as_u64().unwrap()
}

/// Waits up to 3 s for `parked` to become `n`.
fn wait_parked(p: &Sekisho, n: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let now = parked(p);
        if now == n || Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_exactly(s: &mut TcpStream, n: usize) -> String {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    String::from_utf8_lossy(&b).to_string()
}

#[test]
fn a_quiet_session_leaves_its_task_and_comes_back_on_bytes_close_or_idle_end() {
    let (a, _) = service("alpha", false);
    let cfg = tcp_config(&[a], "", "") + "[admin]\nbind = \"127.0.0.1:{ADMIN}\"\n[timeouts]\ntunnel_idle = \"4s\"\n";
    let p = start(&cfg);
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_exactly(&mut s, 6), "alpha\n");
    s.write_all(b"one\n").unwrap();
    assert_eq!(read_exactly(&mut s, 4), "one\n");
    assert_eq!(parked(&p), 0, "a session that just moved bytes is not parked");
    assert_eq!(wait_parked(&p, 1), 1, "quiet for a second: parked");
    let (_, metrics) = p.admin_get("/metrics");
    assert!(metrics.lines().any(|l| l == "sekisho_parked_sessions 1"), "{metrics}");
    // bytes from the client wake it
    s.write_all(b"two\n").unwrap();
    assert_eq!(read_exactly(&mut s, 4), "two\n");
    assert_eq!(wait_parked(&p, 0), 0, "woken: back in a task");
    assert_eq!(wait_parked(&p, 1), 1, "quiet again: parked again");
    // a half-close wakes it too, and passes on: the service sees EOF and closes
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // one record for the whole session, its bytes counted across the parking
    let lines = log_lines(&p, 2);
    let line = lines
        .iter()
        .find(|l| l.split(' ').nth(5) == Some("14"))
        .unwrap_or_else(|| panic!("a record with the 14 bytes sent to the client: {lines:?}"));
    assert_eq!(line.split(' ').nth(6), Some("--"), "{line}");

    // a parked session still ends at tunnel_idle, and is logged as such
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(read_exactly(&mut s, 6), "alpha\n");
    assert_eq!(wait_parked(&p, 1), 1);
    let t0 = Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "closed by the proxy at tunnel_idle");
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    assert_eq!(parked(&p), 0);
    let lines = log_lines(&p, 3);
    assert!(
        lines.iter().any(|l| l.split(' ').nth(6) == Some("cD")),
        "the idle end is logged: {lines:?}"
    );
}

#[test]
fn a_session_where_nothing_ever_moves_is_parked_too() {
    // a server that accepts and says nothing until told to close
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (close, closed) = std::sync::mpsc::channel::<()>();
    let _held = std::thread::spawn(move || {
        // the harness's readiness probe, then the test's connection
        let conns: Vec<_> = l.incoming().take(2).collect();
        let _ = closed.recv_timeout(Duration::from_secs(20));
        drop(conns);
    });
    let cfg = tcp_config(&[port], "", "") + "[admin]\nbind = \"127.0.0.1:{ADMIN}\"\n";
    let p = start(&cfg);
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(wait_parked(&p, 1), 1, "silent both ways for a second: parked");
    // the client's half-close wakes it and is passed on; the server's close ends it
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(wait_parked(&p, 0), 0, "woken by the client's close");
    close.send(()).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let lines = log_lines(&p, 2);
    assert!(
        lines
            .iter()
            .any(|l| l.split(' ').nth(5) == Some("0") && l.split(' ').nth(6) == Some("--")),
        "one record, nothing sent to the client, ended by both closes: {lines:?}"
    );
}
