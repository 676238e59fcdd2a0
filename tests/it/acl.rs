//! Access rules: each ACL type allowing and denying; a denied request never
//! opens an upstream connection.

use crate::harness::*;

/// A proxy whose listener uses `rules` with the ACLs in `acls`.
fn proxy_with(acls: &str, rules: &str) -> Sekisho {
    start(&format!(
        r#"
visible_hostname = "proxy.test"
[hosts]
"origin.test" = "127.0.0.1"
"other.test" = "127.0.0.1"
"www.allowed.test" = "127.0.0.1"
[acl]
{acls}
[[listener]]
bind = "127.0.0.1:{{PORT}}"
access = [{rules}]
[[access_log]]
format = "squid"
"#
    ))
}

/// Asserts `url` is allowed (200) or denied (403 with no upstream connection).
fn expect(p: &Sekisho, origin: &Origin, url: &str, extra: &[&str], allowed: bool) {
    let before = origin.connections();
    let (code, body) = curl_status(&p.proxy(), url, extra);
    if allowed {
        assert_eq!(code, 200, "{url} should be allowed: {body}");
    } else {
        assert_eq!(code, 403, "{url} should be denied");
        assert!(body.contains("denied"), "{body}");
        assert_eq!(
            origin.connections(),
            before,
            "a denied request opens no upstream connection"
        );
    }
}

#[test]
fn src_acl() {
    let origin = Origin::start();
    let p = proxy_with(r#"me = { src = ["127.0.0.0/8"] }"#, r#""allow me", "deny all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    let p = proxy_with(
        r#"others = { src = ["10.0.0.0/8", "::1"] }"#,
        r#""allow others", "deny all""#,
    );
    expect(&p, &origin, &origin.url("/echo"), &[], false);
}

#[test]
fn dst_acl_uses_the_resolved_address() {
    let origin = Origin::start();
    // origin.test resolves (through hosts) to 127.0.0.1: denied by address, though the name is fine
    let p = proxy_with(r#"lo = { dst = "127.0.0.1/32" }"#, r#""deny lo", "allow all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], false);
    let p = proxy_with(r#"lo = { dst = ["127.0.0.0/8"] }"#, r#""allow lo", "deny all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
}

#[test]
fn dst_acl_checks_every_address_it_connects_to() {
    let origin = Origin::start();
    // something listens on the forbidden address too, to see whether it is ever tried
    let trap = std::net::TcpListener::bind(("127.0.0.3", origin.port)).unwrap();
    trap.set_nonblocking(true).unwrap();
    // two addresses: the first is forbidden, the second allowed; the proxy skips the first
    let p = start(
        r#"
[hosts]
"two.test" = ["127.0.0.3", "127.0.0.1"]
[acl]
bad = { dst = "127.0.0.3" }
[[listener]]
bind = "127.0.0.1:{PORT}"
access = ["deny bad", "allow all"]
"#,
    );
    let (code, _) = curl_status(&p.proxy(), &format!("http://two.test:{}/echo", origin.port), &[]);
    assert_eq!(code, 200);
    assert!(trap.accept().is_err(), "the forbidden address was never connected to");
}

#[test]
fn dstdomain_acl_exact_and_suffix() {
    let origin = Origin::start();
    let p = proxy_with(
        r#"ok = { dstdomain = ["origin.test", ".allowed.test"] }"#,
        r#""allow ok", "deny all""#,
    );
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    expect(
        &p,
        &origin,
        &format!("http://www.allowed.test:{}/echo", origin.port),
        &[],
        true,
    );
    expect(
        &p,
        &origin,
        &format!("http://other.test:{}/echo", origin.port),
        &[],
        false,
    );
}

#[test]
fn port_acl_numbers_and_ranges() {
    let origin = Origin::start();
    let range = format!("\"{}-{}\"", origin.port, origin.port);
    let p = proxy_with(&format!("ok = {{ port = [1, {range}] }}"), r#""allow ok", "deny all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    let p = proxy_with(
        &format!("ok = {{ port = [{}] }}", origin.port),
        r#""deny !ok", "allow all""#,
    );
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    let p = proxy_with("ok = { port = [80, 443] }", r#""deny !ok", "allow all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], false);
}

#[test]
fn method_acl() {
    let origin = Origin::start();
    let p = proxy_with(r#"ro = { method = ["GET", "HEAD"] }"#, r#""allow ro", "deny all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    expect(&p, &origin, &origin.url("/echo"), &["-X", "POST", "-d", "x"], false);
}

#[test]
fn builtin_acls_and_first_match_wins() {
    let origin = Origin::start();
    let p = proxy_with("", r#""allow localhost", "deny all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    let p = proxy_with("", r#""deny to_localhost", "allow all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], false);
    let p = proxy_with("", r#""deny to_linklocal", "deny to_private", "allow all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
    let p = proxy_with("", r#""deny all", "allow localhost""#);
    expect(&p, &origin, &origin.url("/echo"), &[], false);
    // the implicit answer after the last rule is its opposite
    let p = proxy_with("", r#""deny to_private""#);
    expect(&p, &origin, &origin.url("/echo"), &[], true);
}

#[test]
fn denied_requests_are_logged() {
    let origin = Origin::start();
    let p = proxy_with("", r#""deny all""#);
    expect(&p, &origin, &origin.url("/echo"), &[], false);
    let lines = p.log_lines(1);
    assert!(lines[0].contains("TCP_DENIED/403"), "{lines:?}");
    assert!(lines[0].contains("HIER_NONE/-"), "{lines:?}");
}
