//! CONNECT tunnels: to a TLS origin with curl, and to a plain echo with half-close.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use crate::harness::*;

const CONNECT_ANY_PORT: &str = r#"
[acl]
CONNECT = { method = ["CONNECT"] }
"#;

#[test]
fn connect_to_a_tls_origin() {
    let dir = TempDir::new();
    let (acceptor, cert) = tls_acceptor(&dir.0);
    let origin = Origin::start_with_tls(Some(acceptor));
    let cfg = basic_config(CONNECT_ANY_PORT).replace("\"origin.test\" = \"127.0.0.1\"", "\"tls.test\" = \"127.0.0.1\"");
    let p = start(&cfg);
    let url = format!("https://tls.test:{}/echo", origin.port);
    let o = curl(&[
        "-s",
        "-x",
        &p.proxy(),
        "--cacert",
        cert.to_str().unwrap(),
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.ends_with("\n200"),
        "curl through the tunnel: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("method=GET"), "{out}");
    let lines = p.log_lines(1);
    assert!(lines[0].contains("TCP_TUNNEL/200"), "{lines:?}");
    assert!(
        lines[0].contains(&format!("CONNECT tls.test:{}", origin.port)),
        "{lines:?}"
    );
}

/// A plain TCP server that reads until the client's FIN, then answers with
/// what it got and closes: only a tunnel that passes half-closes works.
fn half_close_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(4) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                let _ = s.write_all(format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got)).as_bytes());
            });
        }
    });
    port
}

fn open_tunnel(proxy_port: u16, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).to_string())
}

#[test]
fn connect_to_plain_echo_with_half_close() {
    half_close_through(&basic_config(CONNECT_ANY_PORT));
}

#[test]
fn copy_relay_passes_half_close_too() {
    half_close_through(&basic_config(&format!(
        "{CONNECT_ANY_PORT}\n[tunnel]\nrelay = \"copy\"\n"
    )));
}

#[test]
fn large_transfer_through_the_tunnel() {
    for relay in ["\"splice\"", "\"copy\"", "\"copy\"\nbuffer = 4096"] {
        let origin = Origin::start();
        let p = start(&basic_config(&format!("[tunnel]\nrelay = {relay}\n")));
        let o = curl(&[
            "-s",
            "-p",
            "-x",
            &p.proxy(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &origin.url("/big?n=300000000"),
        ]);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "200 300000000", "relay = {relay}");
        let lines = p.log_lines(1);
        assert!(lines[0].contains("TCP_TUNNEL/200"), "{lines:?}");
        let bytes: u64 = lines[0].split_whitespace().nth(6).unwrap().parse().unwrap();
        assert!(bytes > 300_000_000, "the log counts the tunnelled bytes: {lines:?}");
    }
}

fn half_close_through(config: &str) {
    let port = half_close_server();
    let p = start(config);
    let (mut s, head) = open_tunnel(p.port, &format!("origin.test:{port}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping through the tunnel").unwrap();
    // close our sending half: the server sees EOF, still answers, and the answer comes back
    s.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 23 bytes: ping through the tunnel");
    let lines = p.log_lines(1);
    assert!(lines[0].contains("TCP_TUNNEL/200"), "{lines:?}");
}

#[test]
fn bytes_sent_with_the_connect_request_are_relayed() {
    let port = half_close_server();
    let p = start(&basic_config(CONNECT_ANY_PORT));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // the first tunnel bytes arrive in the same packet as the request
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\nearly").as_bytes())
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.ends_with("got 5 bytes: early"), "{all}");
}

#[test]
fn tunnel_idle_timeout_closes_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // the server accepts and then says nothing
    let _held = std::thread::spawn(move || {
        let conns: Vec<_> = l.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(20));
        drop(conns);
    });
    let p = start(&basic_config(&format!(
        "{CONNECT_ANY_PORT}\n[timeouts]\ntunnel_idle = \"1s\"\n"
    )));
    let (mut s, head) = open_tunnel(p.port, &format!("127.0.0.1:{port}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the proxy closes the idle tunnel");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "closed after about tunnel_idle, not at the server's pace"
    );
    let lines = p.log_lines(1);
    assert!(lines[0].contains("TCP_TUNNEL/200"), "{lines:?}");
}

/// Pipes among a process's open descriptors.
fn pipes_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// A server that reads one connection to its end, answering "ok" after
/// every `n` bytes.
fn counting_sink(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let Some(Ok(mut s)) = l.incoming().next() else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    got += k;
                    if got >= n {
                        got -= n;
                        let _ = s.write_all(b"ok");
                    }
                }
            }
        }
    });
    port
}

#[test]
fn bulk_transfers_take_a_pipe_only_with_splice_and_give_it_back_when_idle() {
    const BULK: usize = 4 << 20;
    for relay in ["copy (the default)", "splice"] {
        let sink = counting_sink(BULK);
        let extra = if relay == "splice" {
            "[tunnel]\nrelay = \"splice\"\n"
        } else {
            ""
        };
        let p = start(&basic_config(&format!("{CONNECT_ANY_PORT}\n{extra}")));
        let before = pipes_of(p.pid());
        let (mut s, head) = open_tunnel(p.port, &format!("127.0.0.1:{sink}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(&vec![7u8; BULK]).unwrap();
        let mut ok = [0u8; 2];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok", "relay {relay}: the sink got every byte");
        let during = pipes_of(p.pid());
        if relay == "splice" {
            assert_eq!(during, before + 2, "relay {relay}: a bulk direction holds one pipe");
        } else {
            assert_eq!(during, before, "relay {relay}: no pipe");
        }
        // a direction idle for 1 s gives its pipe back; the tunnel stays open
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            pipes_of(p.pid()),
            before,
            "relay {relay}: the idle tunnel holds no pipe"
        );
        s.write_all(&vec![7u8; BULK]).unwrap();
        s.read_exact(&mut ok).unwrap();
        assert_eq!(
            &ok, b"ok",
            "relay {relay}: the tunnel still moves bulk after going idle"
        );
    }
}
