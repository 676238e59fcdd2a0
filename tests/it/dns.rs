//! Resolution through DNS (hickory-resolver) with its cache, against a tiny
//! DNS responder on loopback that counts the queries it gets.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use crate::harness::*;

/// Answers A queries for any name with 127.0.0.1 (TTL 300), AAAA with no data.
struct Dns {
    port: u16,
    a_queries: Arc<AtomicUsize>,
}

fn dns_server() -> Dns {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let a_queries = Arc::new(AtomicUsize::new(0));
    let count = a_queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            let q = &buf[..n];
            if n < 12 {
                continue;
            }
            // walk the question name
            let mut i = 12;
            while i < n && q[i] != 0 {
                i += 1 + q[i] as usize;
            }
            if i + 5 > n {
                continue;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let question_end = i + 5;
            let mut r = Vec::with_capacity(64);
            r.extend_from_slice(&q[0..2]); // id
            r.extend_from_slice(&[0x81, 0x80]); // response, recursion available, no error
            r.extend_from_slice(&[0, 1]); // one question
            let answer = qtype == 1;
            r.extend_from_slice(&[0, u8::from(answer), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..question_end]);
            if answer {
                count.fetch_add(1, SeqCst);
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0x01, 0x2c, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&r, peer);
        }
    });
    Dns { port, a_queries }
}

fn config(dns: &Dns, extra: &str) -> String {
    format!(
        r#"
[resolver]
nameservers = ["127.0.0.1:{}"]
{extra}
[[listener]]
bind = "127.0.0.1:{{PORT}}"
access = ["allow localhost", "deny all"]
[[access_log]]
format = "squid"
"#,
        dns.port
    )
}

#[test]
fn names_resolve_through_dns_and_are_cached() {
    let origin = Origin::start();
    let dns = dns_server();
    let p = start(&config(&dns, ""));
    let url = format!("http://app.example.test:{}/echo", origin.port);
    for _ in 0..3 {
        let (code, body) = curl_status(&p.proxy(), &url, &[]);
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(dns.a_queries.load(SeqCst), 1, "later requests use the cached answer");
}

#[test]
fn cache_size_zero_asks_every_time() {
    let origin = Origin::start();
    let dns = dns_server();
    let p = start(&config(&dns, "cache_size = 0"));
    let url = format!("http://app.example.test:{}/echo", origin.port);
    for _ in 0..3 {
        assert_eq!(curl_status(&p.proxy(), &url, &[]).0, 200);
    }
    assert_eq!(dns.a_queries.load(SeqCst), 3);
}

#[test]
fn hosts_table_wins_over_dns() {
    let origin = Origin::start();
    let dns = dns_server();
    let p = start(&config(&dns, "").replace(
        "[resolver]",
        "[hosts]\n\"app.example.test\" = \"127.0.0.1\"\n[resolver]",
    ));
    let url = format!("http://APP.example.test.:{}/echo", origin.port);
    assert_eq!(curl_status(&p.proxy(), &url, &[]).0, 200);
    assert_eq!(dns.a_queries.load(SeqCst), 0, "a hosts entry needs no DNS query");
}

#[test]
fn resolver_timeout_applies() {
    // a name server that never answers
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let p = start(&format!(
        "[resolver]\nnameservers = [\"127.0.0.1:{port}\"]\ntimeout = \"300ms\"\n[[listener]]\nbind = \"127.0.0.1:{{PORT}}\"\naccess = [\"allow all\"]\n"
    ));
    let t0 = std::time::Instant::now();
    let (code, body) = curl_status(&p.proxy(), "http://quiet.example.test/", &[]);
    assert_eq!(code, 502, "{body}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{:?}", t0.elapsed());
    drop(silent);
}
