//! The PROXY protocol on listeners: curl and HAProxy as the balancer,
//! hand-built v1/v2 headers, trusted sources, the header deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Only 203.0.113.0/24 (a client a header can name) may use the proxy;
/// headers are believed from `lb` sources only.
fn pp_config(lb: &str, require: bool, extra: &str) -> String {
    format!(
        r#"
visible_hostname = "proxy.test"
[hosts]
"origin.test" = "127.0.0.1"
[acl]
clients = {{ src = ["203.0.113.0/24", "2001:db8::/32"] }}
lb = {{ src = "{lb}" }}
[[listener]]
bind = "127.0.0.1:{{PORT}}"
access = ["allow clients", "deny all"]
[listener.proxy_protocol]
require = {require}
trusted = ["lb"]
{extra}
[admin]
bind = "127.0.0.1:{{ADMIN}}"
[[access_log]]
output = "stdout"
format = "%>a:%>p %>pa %la:%lp %Ss/%03>Hs %rm %ru %{{0x02}}pt"
"#
    )
}

/// Sends `bytes` from `source` and reads the answer (empty when the proxy closes at once).
fn exchange_from(source: &str, port: u16, bytes: &[u8]) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{source}:0").parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&addr(port).into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn get(url: &str) -> String {
    format!("GET {url} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
}

fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.push(0x20 | cmd);
    v.push(fam);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn the_header_names_the_client_for_acls_and_logs() {
    let origin = Origin::start();
    let p = start(&pp_config("127.0.0.1", true, ""));
    let url = origin.url("/echo");
    // v1: the client named by the header passes the ACL that the balancer would not
    let hdr = format!("PROXY TCP4 203.0.113.7 192.0.2.80 40000 {}\r\n", p.port);
    let r = exchange_from("127.0.0.1", p.port, &[hdr.as_bytes(), get(&url).as_bytes()].concat());
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let e = Echo::parse(r.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(e.header("x-forwarded-for"), Some("203.0.113.7"));
    // v2 over IPv6 with an authority TLV and one of an unknown type
    let mut body = vec![0x20, 0x01, 0x0d, 0xb8];
    body.extend_from_slice(&[0; 11]);
    body.push(9);
    body.extend_from_slice(&[0; 15]);
    body.push(1);
    body.extend_from_slice(&50000u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&[0x02, 0, 7]);
    body.extend_from_slice(b"lb.test");
    body.extend_from_slice(&[0xee, 0, 2, 1, 2]);
    let r = exchange_from(
        "127.0.0.1",
        p.port,
        &[v2(1, 0x21, &body), get(&url).into_bytes()].concat(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // without a header from the balancer: refused (the listener requires one)
    let r = exchange_from("127.0.0.1", p.port, get(&url).as_bytes());
    assert_eq!(r, "", "no answer without the header");
    // curl's own header names 127.0.0.1, which the access rules do not allow
    let (code, _) = curl_status(&p.proxy(), &url, &["--haproxy-protocol"]);
    assert_eq!(code, 403);

    let lines = p.log_lines(4);
    assert_eq!(
        lines[0],
        format!(
            "203.0.113.7:40000 127.0.0.1 192.0.2.80:{} TCP_MISS/200 GET {url} -",
            p.port
        )
    );
    assert_eq!(
        lines[1],
        format!("2001:db8::9:50000 127.0.0.1 ::1:443 TCP_MISS/200 GET {url} lb.test")
    );
    assert!(
        lines[2].contains("NONE/000 NONE error:proxy-header-missing"),
        "{lines:#?}"
    );
    assert!(lines[3].starts_with("127.0.0.1:"), "{lines:#?}");
    assert!(lines[3].contains("TCP_DENIED/403"), "{lines:#?}");
}

#[test]
fn headers_from_untrusted_sources_are_refused() {
    let origin = Origin::start();
    // only 127.0.0.2 is a trusted balancer; the header is optional
    let p = start(&pp_config("127.0.0.2", false, ""));
    let url = origin.url("/echo");
    let hdr = format!("PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n", p.port);
    let msg = [hdr.as_bytes(), get(&url).as_bytes()].concat();
    assert_eq!(exchange_from("127.0.0.1", p.port, &msg), "", "spoofed header refused");
    assert!(exchange_from("127.0.0.2", p.port, &msg).starts_with("HTTP/1.1 200"));
    // no header: the TCP peer is the client (and is not allowed by the rules)
    assert!(exchange_from("127.0.0.1", p.port, get(&url).as_bytes()).starts_with("HTTP/1.1 403"));
    let lines = p.log_lines(3);
    assert!(
        lines[0].starts_with("127.0.0.1:") && lines[0].contains("error:proxy-header-untrusted"),
        "{lines:#?}"
    );
    assert!(lines[1].starts_with("203.0.113.7:40000 127.0.0.2 "), "{lines:#?}");
    assert_eq!(origin.connections(), 1);
}

#[test]
fn local_headers_bad_headers_and_the_deadline() {
    let origin = Origin::start();
    let p = start(&pp_config("127.0.0.0/8", true, "timeout = \"300ms\""));
    let url = origin.url("/echo");
    // v2 LOCAL (a balancer's health check): the connection's own addresses are used
    let r = exchange_from(
        "127.0.0.1",
        p.port,
        &[v2(0, 0x00, &[]), get(&url).into_bytes()].concat(),
    );
    assert!(
        r.starts_with("HTTP/1.1 403"),
        "LOCAL accepted, peer 127.0.0.1 not a client: {r}"
    );
    // PROXY UNKNOWN: likewise
    let r = exchange_from(
        "127.0.0.1",
        p.port,
        &[b"PROXY UNKNOWN\r\n".as_slice(), get(&url).as_bytes()].concat(),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // garbage after the v1 signature
    assert_eq!(
        exchange_from("127.0.0.1", p.port, b"PROXY TCP4 1.2.3.4 nonsense\r\n"),
        ""
    );
    // nothing at all within the deadline
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PROXY TCP4 ").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let lines = p.log_lines(4);
    assert!(lines[2].contains("error:proxy-header-invalid"), "{lines:#?}");
    assert!(lines[3].contains("error:proxy-header-timeout"), "{lines:#?}");
}

#[test]
fn a_listener_without_the_protocol_never_interprets_a_header() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let hdr = format!("PROXY TCP4 203.0.113.7 127.0.0.1 40000 {}\r\n", p.port);
    let r = exchange_from(
        "127.0.0.1",
        p.port,
        &[hdr.as_bytes(), get(&origin.url("/echo")).as_bytes()].concat(),
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(origin.connections(), 0);
}

/// HAProxy in TCP mode in front of sekisho, sending PROXY v1 or v2; the
/// client connects to HAProxy from 127.0.0.3, HAProxy to sekisho from 127.0.0.2.
fn haproxy(dir: &TempDir, front: u16, back: u16, send: &str) -> Child {
    require_tool("haproxy");
    let cfg = dir.path(&format!("haproxy-{send}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\n\
             backend b\n  server s1 127.0.0.1:{back} {send} source 127.0.0.2 check inter 200ms check-send-proxy\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    assert!(wait_for_port(front, Duration::from_secs(10)), "haproxy did not listen");
    child
}

#[test]
fn haproxy_send_proxy_v1_and_v2_in_front() {
    let origin = Origin::start();
    let cfg = pp_config("127.0.0.2", true, "").replace(
        r#"clients = { src = ["203.0.113.0/24", "2001:db8::/32"] }"#,
        r#"clients = { src = "127.0.0.3" }"#,
    );
    let p = start(&cfg);
    let dir = TempDir::new();
    for send in ["send-proxy", "send-proxy-v2"] {
        let front = free_port();
        let mut h = haproxy(&dir, front, p.port, send);
        // let a few health checks (LOCAL for v2) arrive
        std::thread::sleep(Duration::from_millis(700));
        let (code, body) = curl_status(
            &format!("http://127.0.0.1:{front}"),
            &origin.url("/echo"),
            &["--interface", "127.0.0.3"],
        );
        let _ = h.kill();
        let _ = h.wait();
        assert_eq!(code, 200, "{send}: {body}");
        assert_eq!(
            Echo::parse(&body).header("x-forwarded-for"),
            Some("127.0.0.3"),
            "{send}"
        );
    }
    let end = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<String> = p
            .stdout()
            .lines()
            .filter(|l| l.contains("TCP_MISS/200"))
            .map(String::from)
            .collect();
        if lines.len() >= 2 || Instant::now() > end {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "{}", p.stdout());
    for l in &lines {
        assert!(l.starts_with("127.0.0.3:") && l.contains(" 127.0.0.2 "), "{l}");
    }
    // health checks are not failures worth a line (v1 checks close without a header)
    assert!(!p.stdout().contains("error:proxy-header-invalid"), "{}", p.stdout());
}
