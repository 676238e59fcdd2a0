//! Header rewriting: hop-by-hop removal, Via, X-Forwarded-For, the delete list.

use crate::harness::*;

fn echo_through(p: &Sekisho, origin: &Origin, extra: &[&str]) -> Echo {
    let (code, body) = curl_status(&p.proxy(), &origin.url("/echo"), extra);
    assert_eq!(code, 200, "{body}");
    Echo::parse(&body)
}

#[test]
fn hop_by_hop_headers_are_removed_both_ways() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let e = echo_through(
        &p,
        &origin,
        &[
            "-H",
            "Connection: keep-alive, X-Private",
            "-H",
            "X-Private: secret",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "Proxy-Authorization: Basic dXNlcjpwYXNz",
            "-H",
            "TE: trailers",
            "-H",
            "Trailer: X-Sum",
            "-H",
            "Upgrade: websocket",
            "-H",
            "X-Kept: yes",
        ],
    );
    for h in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert_eq!(e.header(h), None, "{h} must not reach the origin");
    }
    assert_eq!(e.header("x-kept"), Some("yes"));

    let o = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-x",
        &p.proxy(),
        &origin.url("/hop"),
    ]);
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(!head.contains("x-private"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(head.contains("x-kept: yes"), "{head}");
}

#[test]
fn via_is_added_unless_off() {
    let origin = Origin::start();
    let p = start(&basic_config(""));
    let e = echo_through(&p, &origin, &["-H", "Via: 1.1 upstream-cache"]);
    assert_eq!(e.header("via"), Some("1.1 upstream-cache, 1.1 proxy.test"));
    let o = curl(&[
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-x",
        &p.proxy(),
        &origin.url("/echo"),
    ]);
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(
        head.contains("via: 1.1 proxy.test"),
        "the response carries Via too: {head}"
    );

    let p = start(&basic_config("[http]\nvia = false\n"));
    let e = echo_through(&p, &origin, &[]);
    assert_eq!(e.header("via"), None);
}

#[test]
fn forwarded_for_modes() {
    let origin = Origin::start();
    let sent = ["-H", "X-Forwarded-For: 203.0.113.9"];
    let cases = [
        ("on", Some("203.0.113.9, 127.0.0.1")),
        ("off", Some("203.0.113.9, unknown")),
        ("delete", None),
        ("transparent", Some("203.0.113.9")),
    ];
    for (mode, want) in cases {
        let p = start(&basic_config(&format!("[http]\nforwarded_for = \"{mode}\"\n")));
        let e = echo_through(&p, &origin, &sent);
        assert_eq!(e.header("x-forwarded-for"), want, "forwarded_for = {mode}");
    }
    // the default is on
    let p = start(&basic_config(""));
    assert_eq!(
        echo_through(&p, &origin, &[]).header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

#[test]
fn request_header_delete_list() {
    let origin = Origin::start();
    let p = start(&basic_config(
        "[http]\nrequest_header_delete = [\"Cache-Control\", \"x-forwarded-for\", \"Via\"]\nforwarded_for = \"transparent\"\nvia = false\n",
    ));
    let e = echo_through(
        &p,
        &origin,
        &[
            "-H",
            "Cache-Control: no-cache",
            "-H",
            "X-Forwarded-For: 10.1.1.1",
            "-H",
            "Via: 1.0 x",
            "-H",
            "X-Other: 1",
        ],
    );
    assert_eq!(e.header("cache-control"), None);
    assert_eq!(e.header("x-forwarded-for"), None);
    assert_eq!(e.header("via"), None);
    assert_eq!(e.header("x-other"), Some("1"));
}

#[test]
fn error_pages_show_visible_hostname_and_no_version() {
    let p = start(&basic_config("").replace("\"allow localhost\", ", ""));
    let o = curl(&["-s", "-D", "-", "-x", &p.proxy(), "http://origin.test:1/"]);
    let all = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(all.starts_with("HTTP/1.1 403"), "{all}");
    assert!(all.contains("<address>proxy.test</address>"), "{all}");
    assert!(!all.contains(env!("CARGO_PKG_VERSION")), "no version string: {all}");
    assert!(!all.to_ascii_lowercase().contains("server:"), "no Server header: {all}");
}

#[test]
fn anonymous_mode_hides_the_proxy_and_its_keys_still_override() {
    let origin = Origin::start();
    let tell_tales = [
        "-H",
        "X-Forwarded-For: 198.51.100.1",
        "-H",
        "Via: 1.1 inner",
        "-H",
        "Cache-Control: max-age=0",
        "-H",
        "Forwarded: for=198.51.100.1",
        "-H",
        "X-Real-IP: 198.51.100.1",
        "-H",
        "X-Kept: yes",
    ];
    let p = start(&basic_config("[http]\nanonymous = true\n"));
    let o = curl(&["-s", "-i", "-x", &p.proxy(), &origin.url("/echo")]);
    let proxy = p.proxy();
    let mut args = vec!["-s", "-i", "-x", &proxy];
    args.extend_from_slice(&tell_tales);
    let url = origin.url("/echo");
    args.push(&url);
    let o2 = curl(&args);
    let (head, body) = String::from_utf8_lossy(&o2.stdout)
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap();
    let e = Echo::parse(&body);
    for h in ["x-forwarded-for", "via", "cache-control", "forwarded", "x-real-ip"] {
        assert_eq!(e.header(h), None, "{h} reached the origin");
    }
    assert_eq!(e.header("x-kept"), Some("yes"));
    assert!(!head.to_ascii_lowercase().contains("\nvia:"), "{head}");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 200"));
    // a version string nowhere: not on an error page either
    let (code, page) = curl_status(&p.proxy(), "http://127.0.0.1:1/", &[]);
    assert_eq!(code, 502);
    assert!(
        !page.contains("sekisho") && !page.contains(env!("CARGO_PKG_VERSION")),
        "{page}"
    );

    // each key behind the switch still wins
    let p = start(&basic_config(
        "[http]\nanonymous = true\nvia = true\nrequest_header_delete = [\"X-Real-IP\"]\n",
    ));
    let proxy = p.proxy();
    let mut args = vec!["-s", "-x", &proxy];
    args.extend_from_slice(&tell_tales);
    args.push(&url);
    let e = Echo::parse(&String::from_utf8_lossy(&curl(&args).stdout));
    assert_eq!(e.header("via"), Some("1.1 inner, 1.1 proxy.test"));
    assert_eq!(e.header("cache-control"), Some("max-age=0"));
    assert_eq!(e.header("x-real-ip"), None);
    assert_eq!(e.header("x-forwarded-for"), None, "forwarded_for stays delete");
}
