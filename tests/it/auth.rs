//! Proxy authentication: Basic and Digest with curl, hand-built Digest
//! requests for replays and stale nonces, `sekisho passwd`, proxy_auth ACLs.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sekisho::policy::digest::{Algorithm, ha1, response};

use crate::harness::*;

/// `sekisho passwd ARGS...` with the password on standard input.
pub fn passwd(args: &[&str], password: &str) -> Output {
    let mut child = Command::new(bin())
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // a refusal before the password is read closes the pipe first: not an error here
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes());
    child.wait_with_output().unwrap()
}

/// Credential files made by `sekisho passwd`: alice (Digest, realm "crawl")
/// and bob (Basic, bcrypt), carol (Basic, SHA-512-crypt).
pub fn credentials(dir: &TempDir) -> (String, String) {
    let dig = dir.path("htdigest");
    let pw = dir.path("htpasswd");
    let d = dig.to_str().unwrap();
    let p = pw.to_str().unwrap();
    for (args, pass) in [
        (vec!["--digest", "--realm", "crawl", d, "alice"], "alice-pw"),
        (vec!["--cost", "4", p, "bob"], "bob-pw"),
        (vec!["--sha512", p, "carol"], "carol-pw"),
    ] {
        let o = passwd(&args, pass);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (d.to_string(), p.to_string())
}

pub fn auth_config(digest: &str, basic: &str, access: &str, extra: &str) -> String {
    format!(
        r#"
visible_hostname = "proxy.test"
[hosts]
"origin.test" = "127.0.0.1"
[acl]
authed = {{ proxy_auth = "REQUIRED" }}
admins = {{ proxy_auth = ["alice", "carol"] }}
quiet_src = {{ src = "127.0.0.2" }}
[auth]
realm = "crawl"
[auth.digest]
file = "{digest}"
{extra}
[auth.basic]
file = "{basic}"
[[listener]]
bind = "127.0.0.1:{{PORT}}"
access = {access}
[admin]
bind = "127.0.0.1:{{ADMIN}}"
[[access_log]]
output = "stdout"
format = "%>a %un %Ss/%03>Hs %rm %ru"
"#
    )
}

const AUTHED: &str = r#"["allow authed", "deny all"]"#;

#[test]
fn curl_logs_in_with_digest_basic_and_anyauth() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let p = start(&auth_config(&d, &b, AUTHED, ""));
    let url = origin.url("/echo");
    let cases: &[(&[&str], u16, &str)] = &[
        (&["--proxy-digest", "-U", "alice:alice-pw"], 200, "alice"),
        (&["--proxy-digest", "-U", "alice:wrong"], 407, "-"),
        (&["--proxy-basic", "-U", "bob:bob-pw"], 200, "bob"),
        (&["--proxy-basic", "-U", "bob:wrong"], 407, "-"),
        (&["--proxy-basic", "-U", "carol:carol-pw"], 200, "carol"),
        (&["--proxy-anyauth", "-U", "alice:alice-pw"], 200, "alice"),
        (&["--proxy-anyauth", "-U", "alice:nope"], 407, "-"),
        (&[], 407, "-"),
    ];
    for (args, want, _) in cases {
        let (code, body) = curl_status(&p.proxy(), &url, args);
        assert_eq!(code, *want, "{args:?}: {body}");
        if code == 200 {
            let e = Echo::parse(&body);
            assert_eq!(e.header("proxy-authorization"), None, "credentials leaked upstream");
        }
    }
    // CONNECT logs in the same way
    let o = curl(&[
        "-s",
        "-p",
        "-x",
        &p.proxy(),
        "--proxy-digest",
        "-U",
        "alice:alice-pw",
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.ends_with("\n200"), "{out}");

    // the log names the user of every success; a 407 names nobody
    let lines = p.log_lines(14);
    let ok: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("TCP_MISS/200") || l.contains("TCP_TUNNEL"))
        .collect();
    assert_eq!(ok.len(), 5, "{lines:#?}");
    for (line, who) in ok.iter().zip(["alice", "bob", "carol", "alice", "alice"]) {
        assert!(line.starts_with(&format!("127.0.0.1 {who} ")), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("127.0.0.1 - TCP_DENIED/407 GET")),
        "{lines:#?}"
    );
}

#[test]
fn a_407_offers_every_scheme_and_no_upstream_connection_is_made() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let p = start(&auth_config(&d, &b, AUTHED, ""));
    let o = curl(&["-s", "-i", "-x", &p.proxy(), &origin.url("/echo")]);
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 407"), "{head}");
    let challenges: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("proxy-authenticate: "))
        .collect();
    assert_eq!(challenges.len(), 3, "{head}");
    assert!(challenges[0].starts_with("digest realm=\"crawl\", qop=\"auth\", algorithm=sha-256, nonce=\""));
    assert!(challenges[1].contains("algorithm=md5,"));
    assert!(challenges[2].starts_with("basic realm=\"crawl\""));
    assert!(!head.contains("stale"));
    assert!(!head.contains("sekisho"), "no product name or version: {head}");
    assert_eq!(origin.connections(), 0);
}

/// A hand-built Digest exchange on one raw connection per request.
struct DigestClient {
    port: u16,
    url: String,
}

impl DigestClient {
    fn challenge(&self) -> String {
        let r = raw(
            self.port,
            format!(
                "GET {} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
                self.url
            )
            .as_bytes(),
            Duration::from_secs(5),
        );
        nonce_of(&r)
    }

    fn send(&self, alg: Algorithm, nonce: &str, nc: u32, password: &str) -> String {
        self.send_as("GET", &self.url, &self.url, (alg, nonce, nc), password)
    }

    /// `METHOD TARGET` with the response computed over `digest_uri`.
    fn send_as(
        &self,
        method: &str,
        target: &str,
        digest_uri: &str,
        n: (Algorithm, &str, u32),
        password: &str,
    ) -> String {
        let (alg, nonce, nc) = n;
        let nc = format!("{nc:08x}");
        let h1 = ha1(alg, "alice", "crawl", password);
        let resp = response(alg, &h1, nonce, &nc, "c0ffee", "auth", method, digest_uri);
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\
             Proxy-Authorization: Digest username=\"alice\", realm=\"crawl\", nonce=\"{nonce}\", uri=\"{digest_uri}\", \
             algorithm={a}, response=\"{resp}\", qop=auth, nc={nc}, cnonce=\"c0ffee\"\r\n\r\n",
            a = alg.name()
        );
        // a tunnel stays open: read what came within a moment
        let wait = if method == "CONNECT" { 500 } else { 5000 };
        raw(self.port, req.as_bytes(), Duration::from_millis(wait))
    }
}

fn nonce_of(resp: &str) -> String {
    let i = resp.find("nonce=\"").expect("a Digest challenge") + 7;
    resp[i..i + resp[i..].find('"').unwrap()].to_string()
}

fn status(resp: &str) -> u16 {
    resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn stale(resp: &str) -> bool {
    resp.contains("stale=true")
}

#[test]
fn replayed_lower_overused_and_expired_nonces_are_stale() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let extra = "nonce_max_count = 3\nnonce_max_duration = \"2s\"\nalgorithms = [\"SHA-256\", \"SHA-256-sess\", \"MD5\", \"MD5-sess\"]";
    let p = start(&auth_config(&d, &b, AUTHED, extra));
    let c = DigestClient {
        port: p.port,
        url: origin.url("/echo"),
    };
    // every algorithm works
    for alg in Algorithm::ALL {
        let n = c.challenge();
        let r = c.send(alg, &n, 1, "alice-pw");
        assert_eq!(status(&r), 200, "{}: {r}", alg.name());
    }

    let n = c.challenge();
    assert_eq!(status(&c.send(Algorithm::Md5, &n, 5, "alice-pw")), 200);
    // the same count again: a replay
    let r = c.send(Algorithm::Md5, &n, 5, "alice-pw");
    assert_eq!((status(&r), stale(&r)), (407, true), "{r}");
    assert_ne!(nonce_of(&r), n, "a stale answer carries a fresh nonce");
    // a lower count
    let r = c.send(Algorithm::Md5, &n, 4, "alice-pw");
    assert_eq!((status(&r), stale(&r)), (407, true), "{r}");
    // uses 2 and 3 are fine, the 4th is one too many
    assert_eq!(status(&c.send(Algorithm::Md5, &n, 6, "alice-pw")), 200);
    assert_eq!(status(&c.send(Algorithm::Md5, &n, 7, "alice-pw")), 200);
    let r = c.send(Algorithm::Md5, &n, 8, "alice-pw");
    assert_eq!((status(&r), stale(&r)), (407, true), "{r}");
    // a wrong password is never stale, even on a good nonce
    let n = c.challenge();
    let r = c.send(Algorithm::Sha256, &n, 1, "wrong");
    assert_eq!((status(&r), stale(&r)), (407, false), "{r}");
    // a nonce made up by the client is stale (only the credentials are right)
    let r = c.send(
        Algorithm::Sha256,
        "AAAAAGsB7A6ae41XaqdP2LPaiKHjp737xsF59EC_YVQ",
        1,
        "alice-pw",
    );
    assert_eq!((status(&r), stale(&r)), (407, true), "{r}");
    // an expired nonce
    std::thread::sleep(Duration::from_millis(2100));
    let r = c.send(Algorithm::Sha256, &n, 2, "alice-pw");
    assert_eq!((status(&r), stale(&r)), (407, true), "{r}");
    // the fresh nonce from the stale answer works at once
    assert_eq!(status(&c.send(Algorithm::Sha256, &nonce_of(&r), 1, "alice-pw")), 200);
}

#[test]
fn the_digest_uri_must_name_the_request() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let p = start(&auth_config(&d, &b, AUTHED, ""));
    let c = DigestClient {
        port: p.port,
        url: origin.url("/echo"),
    };
    let alg = Algorithm::Sha256;
    let authority = c
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/echo")
        .to_string();
    // the path form is accepted for an absolute-form request
    let r = c.send_as("GET", &c.url, "/echo", (alg, &c.challenge(), 1), "alice-pw");
    assert_eq!(status(&r), 200, "{r}");
    // another path is not: the response was made for another request
    let r = c.send_as("GET", &c.url, "/other", (alg, &c.challenge(), 1), "alice-pw");
    assert_eq!((status(&r), stale(&r)), (407, false), "{r}");
    // CONNECT: only host:port, never an empty uri
    let r = c.send_as("CONNECT", &authority, "", (alg, &c.challenge(), 1), "alice-pw");
    assert_eq!((status(&r), stale(&r)), (407, false), "{r}");
    let r = c.send_as("CONNECT", &authority, &authority, (alg, &c.challenge(), 1), "alice-pw");
    assert_eq!(status(&r), 200, "{r}");
}

#[test]
fn some_sources_without_login_everyone_else_logs_in() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let p = start(&auth_config(
        &d,
        &b,
        r#"["allow quiet_src", "allow admins", "deny all"]"#,
        "",
    ));
    let url = origin.url("/echo");
    // 127.0.0.2 is on the allow list: no login asked
    assert_eq!(curl_status(&p.proxy(), &url, &["--interface", "127.0.0.2"]).0, 200);
    assert_eq!(curl_status(&p.proxy(), &url, &[]).0, 407);
    assert_eq!(
        curl_status(&p.proxy(), &url, &["--proxy-basic", "-U", "carol:carol-pw"]).0,
        200
    );
    // bob logs in fine but is not one of the listed users
    assert_eq!(
        curl_status(&p.proxy(), &url, &["--proxy-basic", "-U", "bob:bob-pw"]).0,
        403
    );
    let lines = p.log_lines(4);
    assert!(lines[0].starts_with("127.0.0.2 - TCP_MISS/200"), "{lines:#?}");
    assert!(lines[3].starts_with("127.0.0.1 bob TCP_DENIED/403"), "{lines:#?}");
}

#[test]
fn passwd_writes_private_files_atomically_and_replaces_users() {
    let dir = TempDir::new();
    let f = dir.path("users");
    let fs = f.to_str().unwrap();
    assert!(passwd(&["--cost", "4", fs, "u1"], "one").status.success());
    assert!(passwd(&["--cost", "4", fs, "u2"], "two").status.success());
    let before = std::fs::read_to_string(&f).unwrap();
    let o = passwd(&["--cost", "4", fs, "u1"], "uno");
    assert!(String::from_utf8_lossy(&o.stderr).contains("replaced user `u1`"));
    let after = std::fs::read_to_string(&f).unwrap();
    assert_eq!(after.lines().count(), 2);
    assert_ne!(before.lines().next(), after.lines().next(), "u1 has a new hash");
    assert_eq!(before.lines().nth(1), after.lines().nth(1), "u2 untouched");
    assert!(after.starts_with("u1:$2b$04$"), "{after}");
    assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    // no password on the command line, an empty one refused, bad names refused
    let o = passwd(&[fs, "u3", "secret"], "x");
    assert!(!o.status.success());
    let o = passwd(&[fs, "u3"], "");
    assert!(String::from_utf8_lossy(&o.stderr).contains("empty password"));
    let o = passwd(&[fs, "a:b"], "x");
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be a user name"));
    // htdigest: one MD5 and one SHA-256 line per user and realm
    let dg = dir.path("digest");
    let o = passwd(
        &["--digest", "--realm", "r", dg.to_str().unwrap(), "mufasa"],
        "Circle of Life",
    );
    assert!(o.status.success());
    let text = std::fs::read_to_string(&dg).unwrap();
    assert_eq!(
        text,
        format!(
            "mufasa:r:{}\nmufasa:r:{}\n",
            ha1(Algorithm::Md5, "mufasa", "r", "Circle of Life"),
            ha1(Algorithm::Sha256, "mufasa", "r", "Circle of Life")
        )
    );
}

fn check_errors(config: &str) -> String {
    let dir = TempDir::new();
    let f = dir.path("c.toml");
    std::fs::write(&f, config).unwrap();
    let o = Command::new(bin()).args(["check", "-c"]).arg(&f).output().unwrap();
    assert!(!o.status.success(), "expected errors for:\n{config}");
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn auth_configuration_errors_are_named() {
    let dir = TempDir::new();
    let plain = dir.path("plain");
    std::fs::write(&plain, "alice:secret\n").unwrap();
    let e = check_errors(&format!(
        "[auth.basic]\nfile = \"{}\"\n[[listener]]\nbind = \"127.0.0.1:1\"\n",
        plain.display()
    ));
    assert!(e.contains("line 1: user `alice`: the password is plain text"), "{e}");
    let e = check_errors(
        "[acl]\nu = { proxy_auth = \"REQUIRED\" }\n[[listener]]\nbind = \"127.0.0.1:1\"\naccess = [\"allow u\"]\n",
    );
    assert!(e.contains("no `[auth.basic]` or `[auth.digest]` is configured"), "{e}");
    let e = check_errors("[auth.digest]\nfile = \"relative/path\"\n");
    assert!(e.contains("must be an absolute path"), "{e}");
    let e = check_errors("[auth.basic]\nfile = 5\n");
    assert_eq!(
        e.matches("error:").count(),
        1,
        "one error for a wrongly typed file: {e}"
    );
    assert!(e.contains("`auth.basic.file` must be a string"), "{e}");
    let e = check_errors("[auth.digest]\nfile = \"/nonexistent/htdigest\"\nalgorithms = [\"SHA-512\"]\n");
    assert!(e.contains("cannot open /nonexistent/htdigest"), "{e}");
    assert!(e.contains("unknown Digest algorithm `SHA-512`"), "{e}");
    let dg = dir.path("dg");
    std::fs::write(&dg, format!("a:other:{}\n", "0".repeat(32))).unwrap();
    let e = check_errors(&format!(
        "[auth]\nrealm = \"crawl\"\n[auth.digest]\nfile = \"{}\"\n",
        dg.display()
    ));
    assert!(e.contains("is for realm `crawl`"), "{e}");
    let e = check_errors("[auth]\nrealm = \"x\"\n");
    assert!(e.contains("`auth` needs `[auth.basic]` and/or `[auth.digest]`"), "{e}");
    let e = check_errors("user = \"no-such-user-here\"\n");
    assert!(e.contains("user `no-such-user-here` does not exist"), "{e}");
    let e = check_errors("user = \"nobody\"\ngroup = \"no-such-group-here\"\n");
    assert!(e.contains("group `no-such-group-here` does not exist"), "{e}");
    let e = check_errors("group = \"nogroup\"\n");
    assert!(e.contains("`group` needs `user` as well"), "{e}");
}

/// The example of the seed's crawler egress, on loopback: the LB network and
/// the origin moved to 127.0.0.1, the rest as shipped.
#[test]
fn the_crawler_egress_example_runs_and_logs_user_and_real_client() {
    let creds = TempDir::new();
    let dg = creds.path("htdigest");
    let o = passwd(
        &["--digest", "--realm", "crawler-egress", dg.to_str().unwrap(), "alice"],
        "alice-pw",
    );
    assert!(o.status.success());
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/crawler-egress.toml")).unwrap();
    let cfg = example
        .replace("/etc/sekisho/htdigest", dg.to_str().unwrap())
        .replace("0.0.0.0:35201", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:8404", "127.0.0.1:{ADMIN}")
        .replace(
            "lb_net = { src = [\"10.0.0.0/24\"] }",
            "lb_net = { src = [\"127.0.0.1\"] }",
        )
        .replace("  \"deny to_localhost\",\n", "")
        .replace("[acl]\n", "[hosts]\n\"origin.test\" = \"127.0.0.1\"\n[acl]\n")
        .replace("user = \"nobody\"\ngroup = \"nogroup\"\n", "");
    assert_ne!(cfg, example);
    let check_file = creds.path("example.toml");
    std::fs::write(
        &check_file,
        example.replace("/etc/sekisho/htdigest", dg.to_str().unwrap()),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["check", "-c"])
        .arg(&check_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let origin = Origin::start();
    let p = start(&cfg);
    let url = origin.url("/echo");
    let hdr = format!("PROXY TCP4 10.20.1.5 10.0.0.9 41000 {}\r\n", p.port);
    let send = |extra: &str| {
        raw(
            p.port,
            format!(
                "{hdr}GET {url} HTTP/1.1\r\nHost: origin.test\r\nX-Forwarded-For: 10.20.1.5\r\nVia: 1.1 crawler\r\n{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
            Duration::from_secs(5),
        )
    };
    let first = send("");
    assert_eq!(status(&first), 407, "{first}");
    let nonce = nonce_of(&first);
    let alg = Algorithm::Sha256;
    let resp = response(
        alg,
        &ha1(alg, "alice", "crawler-egress", "alice-pw"),
        &nonce,
        "00000001",
        "c1",
        "auth",
        "GET",
        &url,
    );
    let ok = send(&format!(
        "Proxy-Authorization: Digest username=\"alice\", realm=\"crawler-egress\", nonce=\"{nonce}\", uri=\"{url}\", \
         algorithm=SHA-256, response=\"{resp}\", qop=auth, nc=00000001, cnonce=\"c1\"\r\n"
    ));
    assert_eq!(status(&ok), 200, "{ok}");
    let e = Echo::parse(ok.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(e.header("x-forwarded-for"), None);
    assert_eq!(e.header("via"), None);
    assert!(!ok.to_ascii_lowercase().contains("\r\nvia:"));
    // the log line of the seed: real client from the header, the user
    let lines = p.log_lines(2);
    assert!(lines[1].contains(" 10.20.1.5 TCP_MISS/200 "), "{lines:#?}");
    assert!(
        lines[1].contains(&format!(" GET {url} alice HIER_DIRECT/127.0.0.1 ")),
        "{lines:#?}"
    );
}

fn stat(p: &Sekisho, key: &str) -> u64 {
    let (code, body) = p.admin_get("/stats.json");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {body}"))
}

#[test]
fn verified_passwords_are_remembered_for_credentials_ttl() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let url = origin.url("/echo");
    let cfg = auth_config(&d, &b, AUTHED, "");
    let bob = ["--proxy-basic", "-U", "bob:bob-pw"];
    // default (2 h): one slow hash check for three requests; a wrong password is always checked
    let p = start(&cfg);
    for _ in 0..3 {
        assert_eq!(curl_status(&p.proxy(), &url, &bob).0, 200);
    }
    assert_eq!(stat(&p, "auth_password_checks"), 1);
    assert_eq!(
        curl_status(&p.proxy(), &url, &["--proxy-basic", "-U", "bob:bad"]).0,
        407
    );
    assert_eq!(stat(&p, "auth_password_checks"), 2);
    // a short ttl: checked again once it has passed
    let p = start(&cfg.replace("[auth.basic]\n", "[auth.basic]\ncredentials_ttl = \"200ms\"\n"));
    for _ in 0..2 {
        assert_eq!(curl_status(&p.proxy(), &url, &bob).0, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(stat(&p, "auth_password_checks"), 2);
}

#[test]
fn expired_nonces_are_collected_at_the_garbage_interval() {
    let creds = TempDir::new();
    let (d, b) = credentials(&creds);
    let origin = Origin::start();
    let extra = "nonce_max_duration = \"2s\"\nnonce_garbage_interval = \"500ms\"";
    let p = start(&auth_config(&d, &b, AUTHED, extra));
    let url = origin.url("/echo");
    let c = DigestClient { port: p.port, url };
    for _ in 0..2 {
        let n = c.challenge();
        assert_eq!(status(&c.send(Algorithm::Sha256, &n, 1, "alice-pw")), 200);
    }
    assert_eq!(stat(&p, "digest_nonces"), 2);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while stat(&p, "digest_nonces") > 0 {
        assert!(std::time::Instant::now() < end, "expired nonces never collected");
        std::thread::sleep(Duration::from_millis(100));
    }
}
