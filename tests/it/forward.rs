//! Forward proxying of absolute-form requests: methods, bodies, streaming, keep-alive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

#[test]
fn get_head_post_put_with_bodies() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let proxy = p.proxy();

    let (code, body) = curl_status(&proxy, &origin.url("/echo?x=1"), &[]);
    assert_eq!(code, 200);
    let e = Echo::parse(&body);
    assert_eq!(e.field("method"), "GET");
    assert_eq!(e.field("target"), "/echo?x=1", "the origin gets the origin-form target");
    assert_eq!(e.header("host"), Some(format!("origin.test:{}", origin.port).as_str()));

    let o = curl(&["-s", "-I", "-x", &proxy, &origin.url("/big?n=12345")]);
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 12345"), "HEAD keeps the length: {head}");

    let (code, body) = curl_status(&proxy, &origin.url("/echo"), &["--data-binary", "hello=world"]);
    assert_eq!(code, 200);
    let e = Echo::parse(&body);
    assert_eq!(e.field("method"), "POST");
    assert_eq!(e.field("body_len"), "11");

    let dir = TempDir::new();
    let file = dir.path("up.bin");
    std::fs::write(&file, vec![7u8; 300_000]).unwrap();
    let upload = format!("@{}", file.display());
    let (code, body) = curl_status(&proxy, &origin.url("/echo"), &["-X", "PUT", "--data-binary", &upload]);
    assert_eq!(code, 200);
    let e = Echo::parse(&body);
    assert_eq!(e.field("method"), "PUT");
    assert_eq!(e.field("body_len"), "300000");

    for m in ["DELETE", "OPTIONS", "PATCH", "PROPFIND"] {
        let (code, body) = curl_status(&proxy, &origin.url("/echo"), &["-X", m]);
        assert_eq!(code, 200, "{m}");
        assert_eq!(Echo::parse(&body).field("method"), m);
    }
}

#[test]
fn chunked_upload_and_chunked_response() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let dir = TempDir::new();
    let file = dir.path("up.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    let (code, body) = curl_status(
        &p.proxy(),
        &origin.url("/echo"),
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &upload],
    );
    assert_eq!(code, 200);
    let e = Echo::parse(&body);
    assert_eq!(e.field("body_len"), "200000");
    let sum = data
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    assert_eq!(e.field("body_sum"), sum.to_string(), "the body arrives intact");

    let o = curl(&[
        "-s",
        "-x",
        &p.proxy(),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &origin.url("/chunked?n=1000000"),
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "1000000");
}

#[test]
fn large_bodies_stream_with_flat_memory() {
    let origin = Origin::start();
    let p = start(&basic_config("[http]\nvia = false\n"));
    // warm up: one ordinary request so the baseline includes the runtime's buffers
    assert_eq!(curl_status(&p.proxy(), &origin.url("/echo"), &[]).0, 200);
    let (_, base_hwm) = rss_kib(p.pid());

    let gib = 1u64 << 30;
    let o = curl(&[
        "-s",
        "-x",
        &p.proxy(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        "--max-time",
        "120",
        &origin.url(&format!("/big?n={gib}")),
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("200 {gib}"));

    // upload 1 GiB from a generator, never written to disk
    let mut child = std::process::Command::new("curl")
        .args([
            "-s",
            "-x",
            &p.proxy(),
            "--max-time",
            "120",
            "-T",
            "-",
            "-H",
            "Transfer-Encoding: chunked",
        ])
        .arg(origin.url("/echo"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let block = vec![b'u'; 1 << 20];
        for _ in 0..1024 {
            stdin.write_all(&block).unwrap();
        }
    });
    writer.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let e = Echo::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(e.field("body_len"), gib.to_string());

    let (_, hwm) = rss_kib(p.pid());
    let grown = hwm.saturating_sub(base_hwm);
    assert!(
        grown < 64 * 1024,
        "peak RSS grew by {grown} KiB while 2 GiB streamed through"
    );
}

#[test]
fn keep_alive_on_both_sides() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let u = origin.url("/echo");
    // five requests on one client connection: curl reports how many connections it opened
    let proxy = p.proxy();
    let mut args = vec!["-s", "-x", &proxy, "-w", "%{num_connects},"];
    for _ in 0..5 {
        args.extend(["-o", "/dev/null", &u]);
    }
    let o = curl(&args);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "1,0,0,0,0,",
        "the client connection is kept alive"
    );
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(
        origin.connections(),
        1,
        "one pooled upstream connection serves all five"
    );
    // a second client reuses the pooled upstream connection too
    assert_eq!(curl_status(&p.proxy(), &u, &[]).0, 200);
    assert_eq!(origin.connections(), 1);
}

#[test]
fn http10_client_is_served() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let req = format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/echo"));
    let resp = raw(p.port, req.as_bytes(), Duration::from_secs(5));
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    assert!(resp.contains("method=GET"), "{resp}");
    assert!(
        resp.contains(&format!("host: origin.test:{}", origin.port)),
        "Host is set from the URL: {resp}"
    );
}

#[test]
fn origin_form_gets_a_clear_400() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let resp = raw(
        p.port,
        b"GET /echo HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("absolute URL"), "the page says what is wrong: {resp}");
    assert!(resp.contains("proxy.test"), "the page names visible_hostname: {resp}");
    assert_eq!(origin.connections(), 0);
}

#[test]
fn expect_100_continue() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        origin.url("/echo")
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue"),
        "the proxy asks for the body: {interim}"
    );
    s.write_all(b"abcde").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let all = interim + &String::from_utf8_lossy(&rest);
    assert!(all.contains("HTTP/1.1 200"), "{all}");
    assert!(all.contains("body_len=5"), "{all}");

    // a denied request is answered at once and its body never asked for
    let p2 = start(&basic_config("").replace("\"allow localhost\", ", "\"deny localhost\", "));
    let mut s = TcpStream::connect(("127.0.0.1", p2.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let n = s.read(&mut buf).unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]);
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
}
