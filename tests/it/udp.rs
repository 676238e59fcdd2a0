//! `udp` listeners: sessions per client address and port balanced over a
//! pool, an answer expected per datagram (`responses`), a datagram with no
//! answer in time retried on another server, active UDP health checks.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::harness::{Sekisho, start};

/// A UDP responder answering `NAME:` + the datagram (or nothing when silent).
fn responder(name: &'static str, silent: bool) -> (u16, Arc<AtomicUsize>) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((k, from)) = s.recv_from(&mut buf) {
            c.fetch_add(1, SeqCst);
            if !silent {
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..k]);
                let _ = s.send_to(&out, from);
            }
        }
    });
    (port, n)
}

fn udp_config(servers: &[u16], pool_extra: &str, listener_extra: &str) -> String {
    let mut s = format!("[pool.dns]\n{pool_extra}\n");
    for (i, p) in servers.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.dns.server]]\nname = \"u{i}\"\naddress = \"127.0.0.1:{p}\"\n"
        ));
    }
    // the harness waits for a TCP port: an idle forward listener provides it
    s.push_str(&format!(
        "[[listener]]\nname = \"probe\"\nbind = \"127.0.0.1:{{PORT}}\"\n[[listener]]\nname = \"dnsfront\"\nbind = \"127.0.0.1:{{ADMIN}}\"\nmode = \"udp\"\ndefault_pool = \"dns\"\n{listener_extra}\n[[access_log]]\noutput = \"stdout\"\nstyle = \"haproxy\"\nformat = \"%ft %b/%s %B %U %ts %rc\"\n"
    ));
    s
}

/// One query from a fresh client socket: the answer, if any within 3 s.
fn ask(p: &Sekisho, msg: &str) -> Option<String> {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.send_to(msg.as_bytes(), ("127.0.0.1", p.admin_port)).unwrap();
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).to_string())
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
fn udp_sessions_are_balanced_and_logged() {
    let rs: Vec<(u16, Arc<AtomicUsize>)> = ["a", "b", "c", "d"].iter().map(|n| responder(n, false)).collect();
    let ports: Vec<u16> = rs.iter().map(|r| r.0).collect();
    let p = start(&udp_config(&ports, "", "responses = 1\ntimeout = \"1s\""));
    let mut names = Vec::new();
    for i in 0..8 {
        let a = ask(&p, &format!("q{i}")).expect("an answer");
        let (name, rest) = a.split_once(':').unwrap();
        assert_eq!(rest, format!("q{i}"));
        names.push(name.to_string());
    }
    for n in ["a", "b", "c", "d"] {
        assert_eq!(names.iter().filter(|x| *x == n).count(), 2, "{names:?}");
    }
    // one record per session: ended by its one answer
    let lines = log_lines(&p, 8);
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("dnsfront dns/u") && l.ends_with(" -- 0")),
        "{lines:?}"
    );
    assert!(lines[0].contains(" 4 2 "), "bytes to and from the client: {lines:?}");
}

#[test]
fn unanswered_datagrams_move_to_another_server() {
    let (silent, heard) = responder("mute", true);
    let (live, _) = responder("live", false);
    let p = start(&udp_config(
        &[silent, live],
        "retries = 1\nmax_fails = 1\nfail_timeout = \"30s\"",
        "responses = 1\ntimeout = \"500ms\"",
    ));
    // the first session goes to the silent server, times out, and is retried
    let t = Instant::now();
    let a = ask(&p, "hello").expect("answered after the retry");
    assert_eq!(a, "live:hello");
    assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
    assert_eq!(heard.load(SeqCst), 1);
    // the silent server is now out: answers come at once
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(ask(&p, "again").as_deref(), Some("live:again"));
        assert!(t.elapsed() < Duration::from_millis(400));
    }
    assert_eq!(heard.load(SeqCst), 1);
    let lines = log_lines(&p, 4);
    // sessions are logged as they end (after `timeout` of silence), in any order
    assert!(lines.iter().all(|l| l.starts_with("dnsfront dns/u1 ")), "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with(" 1")).count(),
        1,
        "one session retried once: {lines:?}"
    );
}

#[test]
fn active_udp_checks_take_a_silent_server_down() {
    let (silent, _) = responder("mute", true);
    let (live, _) = responder("live", false);
    let p = start(&udp_config(
        &[silent, live],
        "[pool.dns.check]\ntype = \"udp\"\npayload_hex = \"0001\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 2",
        "responses = 1\ntimeout = \"1s\"",
    ));
    let until = Instant::now() + Duration::from_secs(5);
    while !p.stderr().contains("server is DOWN") {
        assert!(Instant::now() < until, "{}", p.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(p.stderr().contains("u0"), "{}", p.stderr());
    for _ in 0..4 {
        assert_eq!(ask(&p, "x").as_deref(), Some("live:x"));
    }
}

#[test]
fn a_session_reuses_its_socket_while_the_client_sends_and_ends_soon_after_its_answers() {
    let (a, _) = responder("a", false);
    let (b, _) = responder("b", false);
    let p = start(&udp_config(&[a, b], "", "responses = 1\ntimeout = \"5s\""));
    // one client port, three queries in a row: one session, one server
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut answers = Vec::new();
    for q in ["1", "2", "3"] {
        c.send_to(q.as_bytes(), ("127.0.0.1", p.admin_port)).unwrap();
        let mut buf = [0u8; 64];
        let n = c.recv(&mut buf).unwrap();
        answers.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let server = &answers[0][..1];
    assert!(answers.iter().all(|s| s.starts_with(server)), "{answers:?}");
    // with every answer in, the session ends well before the 5 s timeout
    let t = Instant::now();
    let lines = log_lines(&p, 1);
    assert_eq!(lines.len(), 1, "one record for the session: {lines:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "logged after {:?}", t.elapsed());
    // %B (three 3-byte answers) and %U (three 1-byte queries)
    assert!(lines[0].contains(" 9 3 "), "{lines:?}");
}
