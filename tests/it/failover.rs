//! Destination failover address by address; 502 and 504 when nothing answers.

use std::net::TcpStream;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::harness::*;

#[test]
fn one_dead_address_is_invisible() {
    let origin = Origin::start();
    // 127.0.0.2 refuses (nothing listens there on that port); 127.0.0.1 is the origin
    let p = start(&basic_config("").replace(
        "\"origin.test\" = \"127.0.0.1\"",
        "\"origin.test\" = [\"127.0.0.2\", \"127.0.0.1\"]",
    ));
    for _ in 0..3 {
        let (code, body) = curl_status(&p.proxy(), &origin.url("/echo"), &["-H", "Connection: close"]);
        assert_eq!(code, 200, "{body}");
    }
    let lines = p.log_lines(3);
    assert!(
        lines[0].contains("HIER_DIRECT/127.0.0.1"),
        "the log names the address connected to: {lines:?}"
    );
}

#[test]
fn every_address_refusing_is_a_502() {
    let port = free_port();
    let p = start(&basic_config("").replace(
        "\"origin.test\" = \"127.0.0.1\"",
        "\"origin.test\" = [\"127.0.0.2\", \"127.0.0.1\"]",
    ));
    let (code, body) = curl_status(&p.proxy(), &format!("http://origin.test:{port}/"), &[]);
    assert_eq!(code, 502);
    assert!(body.contains("Cannot connect to origin.test"), "{body}");
    assert!(
        body.contains("127.0.0.2") && body.contains("127.0.0.1"),
        "both attempts are named: {body}"
    );
    assert!(
        !body.to_lowercase().contains(env!("CARGO_PKG_VERSION")),
        "no version string: {body}"
    );
    let lines = p.log_lines(1);
    assert!(lines[0].contains("/502 "), "{lines:?}");
}

/// A listening socket whose accept queue is full: new SYNs are dropped, so a
/// connect to it hangs until the connect timeout.
fn blackhole(at: std::net::SocketAddr) -> (Socket, Vec<TcpStream>, u16) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&at.into()).unwrap();
    s.listen(0).unwrap();
    let bound = s.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&bound, Duration::from_millis(300)) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    assert!(
        TcpStream::connect_timeout(&bound, Duration::from_millis(300)).is_err(),
        "the accept queue is full"
    );
    (s, held, bound.port())
}

#[test]
fn connect_timeout_is_a_504() {
    let (_sock, _held, port) = blackhole(addr(0));
    let p = start(&basic_config("[timeouts]\nconnect = \"1s\"\n"));
    let t0 = std::time::Instant::now();
    let (code, body) = curl_status(&p.proxy(), &format!("http://origin.test:{port}/"), &[]);
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("answered in time"), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn connect_timeout_then_next_address() {
    let origin = Origin::start();
    // the first address never answers; the second is the origin
    let (_sock, _held, _) = blackhole(std::net::SocketAddr::from(([127, 0, 0, 4], origin.port)));
    let p = start(&basic_config("[timeouts]\nconnect = \"1s\"\n").replace(
        "\"origin.test\" = \"127.0.0.1\"",
        "\"origin.test\" = [\"127.0.0.4\", \"127.0.0.1\"]",
    ));
    let t0 = std::time::Instant::now();
    let (code, body) = curl_status(&p.proxy(), &origin.url("/echo"), &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "the first address was tried for the connect timeout"
    );
}

#[test]
fn server_response_timeout_is_a_504() {
    let origin = Origin::start();
    let p = start(&basic_config("[timeouts]\nserver_response = \"1s\"\n"));
    let (code, body) = curl_status(&p.proxy(), &origin.url("/hang"), &[]);
    assert_eq!(code, 504);
    assert!(body.contains("did not answer within 1 s"), "{body}");
    let lines = p.log_lines(1);
    assert!(lines[0].contains("TCP_MISS/504"), "{lines:?}");
    // the slow origin was reached, so the log names it
    assert!(lines[0].contains("HIER_DIRECT/127.0.0.1"), "{lines:?}");
}

#[test]
fn dns_failure_is_a_clear_502() {
    let p = start(&basic_config(
        "[resolver]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n",
    ));
    let (code, body) = curl_status(&p.proxy(), "http://no-such-name.test/", &[]);
    assert_eq!(code, 502);
    assert!(body.contains("DNS lookup failed"), "{body}");
    assert!(body.contains("no-such-name.test"), "{body}");
}
