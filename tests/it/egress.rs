//! Egress in network namespaces: a multi-homed proxy whose outgoing rules
//! pick the uplink (made to work by `sekisho routes --apply` alone), source
//! address rotation, and redundant parent proxies with failover.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{Echo, bin};
use crate::netns::Net;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `curl -x PROXY URL` inside `ns`: (status, body).
fn get(net: &Net, ns: &str, proxy: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["-s", "-o", "-", "-w", "\n%{http_code}", "-x", proxy];
    args.extend_from_slice(extra);
    args.push(url);
    let o = net.curl(ns, &args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The peer address the echo origin saw.
fn peer_of(body: &str) -> String {
    sa(Echo::parse(body).field("peer")).ip().to_string()
}

const LOG: &str = r#"
[[access_log]]
output = "stdout"
format = "%ru %>Hs %Sh/%<A %<la"
"#;

/// Test 1 of the issue: two uplinks to two ISPs, one origin behind both.
/// Requests for a.test leave from uplink 1's address, the rest from uplink
/// 2's; without the plan of `sekisho routes --apply` nothing gets out.
#[test]
fn multi_homed_egress_by_rule_works_with_the_applied_plan_only() {
    let Some(mut net) = Net::new() else { return };
    let px = net.ns("px");
    let i1 = net.ns("i1");
    let i2 = net.ns("i2");
    let org = net.ns("org");
    net.veth_named(&px, "up1", "10.1.0.2/24", &i1, "dn", "10.1.0.1/24");
    net.veth_named(&px, "up2", "10.2.0.2/24", &i2, "dn", "10.2.0.1/24");
    net.veth_named(&i1, "core", "10.11.0.1/24", &org, "isp1", "10.11.0.2/24");
    net.veth_named(&i2, "core", "10.12.0.1/24", &org, "isp2", "10.12.0.2/24");
    net.addr(&org, "lo", "10.99.0.1/32");
    for (isp, via) in [(&i1, "10.11.0.2"), (&i2, "10.12.0.2")] {
        net.forwarding(isp);
        net.run(isp, "ip", &["route", "add", "10.99.0.1/32", "via", via]);
    }
    net.run(&org, "ip", &["route", "add", "10.1.0.0/24", "via", "10.11.0.1"]);
    net.run(&org, "ip", &["route", "add", "10.2.0.0/24", "via", "10.12.0.1"]);
    let _origin = net.origin(&org, sa("10.99.0.1:8080"));

    let config = format!(
        r#"
[hosts]
"a.test" = "10.99.0.1"
"b.test" = "10.99.0.1"
"c.test" = "10.99.0.1"
[acl]
via_isp1 = {{ dstdomain = ["a.test"] }}
by_mark = {{ dstdomain = ["c.test"] }}
[[uplink]]
name = "isp1"
interface = "up1"
address = "10.1.0.2/24"
gateway = "10.1.0.1"
mark = 0x10
[[uplink]]
name = "isp2"
interface = "up2"
address = "10.2.0.2/24"
gateway = "10.2.0.1"
[[outgoing]]
match = "via_isp1"
uplink = "isp1"
[[outgoing]]
match = "by_mark"
mark = 0x10
[[outgoing]]
match = "all"
uplink = "isp2"
[[listener]]
bind = "127.0.0.1:3128"
access = ["allow localhost", "deny all"]
{LOG}"#
    );
    let mut s = net.sekisho(&px, &config, sa("127.0.0.1:3128"));
    let cfg = s.dir().join("sekisho.toml");
    let cfg = cfg.to_str().unwrap();
    let proxy = "http://127.0.0.1:3128";

    // the main table has no default route: nothing reaches the origin yet
    let (code, _) = get(&net, &px, proxy, "http://a.test:8080/", &[]);
    assert_eq!(code, 502, "no route before the plan");

    // the printed plan: one table per uplink, on-link and default routes, from and fwmark rules
    let plan = net.run(&px, bin(), &["routes", "-c", cfg]);
    for line in [
        "ip route add 10.1.0.0/24 dev up1 src 10.1.0.2 scope link table 101 proto 157",
        "ip route add default via 10.1.0.1 dev up1 table 101 proto 157",
        "ip rule add from 10.1.0.2 lookup 101 priority 1000 proto 157",
        "ip rule add fwmark 0x10 lookup 101 priority 1001 proto 157",
        "ip route add default via 10.2.0.1 dev up2 table 102 proto 157",
        "ip rule add from 10.2.0.2 lookup 102 priority 1010 proto 157",
    ] {
        assert!(plan.lines().any(|l| l == line), "missing `{line}` in:\n{plan}");
    }

    let applied = net.run(&px, bin(), &["routes", "-c", cfg, "--apply"]);
    assert_eq!(applied.matches("added:").count(), 7, "{applied}");
    let again = net.run(&px, bin(), &["routes", "-c", cfg, "--apply"]);
    assert_eq!(again.matches("present:").count(), 7, "idempotent: {again}");
    let rules = net.run(&px, "ip", &["rule", "show"]);
    assert_eq!(rules.matches("lookup 101").count(), 2, "{rules}");

    let (code, body) = get(&net, &px, proxy, "http://a.test:8080/", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(peer_of(&body), "10.1.0.2", "a.test leaves through uplink 1");
    let (code, body) = get(&net, &px, proxy, "http://b.test:8080/", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(peer_of(&body), "10.2.0.2", "everything else through uplink 2");
    let (code, body) = get(&net, &px, proxy, "http://c.test:8080/", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(peer_of(&body), "10.1.0.2", "the mark selects uplink 1's table");

    // the chosen source address is a log code
    logged(
        || s.stdout(),
        "http://a.test:8080/ 200 HIER_DIRECT/10.99.0.1 10.1.0.2",
        1,
    );
    logged(
        || s.stdout(),
        "http://b.test:8080/ 200 HIER_DIRECT/10.99.0.1 10.2.0.2",
        1,
    );

    // --remove takes away exactly what --apply added, and a foreign rule stays
    net.run(
        &px,
        "ip",
        &["rule", "add", "from", "10.1.0.2", "lookup", "101", "priority", "1000"],
    );
    let removed = net.run(&px, bin(), &["routes", "-c", cfg, "--remove"]);
    assert_eq!(removed.matches("removed:").count(), 7, "{removed}");
    let rules = net.run(&px, "ip", &["rule", "show"]);
    assert!(!rules.contains("proto 157"), "{rules}");
    assert_eq!(
        rules.matches("lookup 101").count(),
        1,
        "the foreign rule is kept: {rules}"
    );
    let routes = net.run(&px, "ip", &["route", "show", "table", "101"]);
    assert!(routes.trim().is_empty(), "{routes}");
    s.stop();
}

/// Test 2 of the issue: a pool of three source addresses; round robin, and
/// the sticky policies keep one address per user, host and session key.
#[test]
fn source_pools_rotate_and_stick() {
    let Some(mut net) = Net::new() else { return };
    let px = net.ns("px");
    let org = net.ns("org");
    net.veth_named(&px, "out", "10.3.0.2/24", &org, "in", "10.3.0.1/24");
    net.addr(&px, "out", "10.3.0.3/24");
    net.addr(&px, "out", "10.3.0.4/24");
    net.addr(&px, "out", "fd00:3::2/64");
    net.addr(&px, "out", "fd00:3::3/64");
    net.addr(&org, "in", "fd00:3::1/64");
    let _origin = net.origin(&org, sa("10.3.0.1:8080"));
    let _origin6 = net.origin(&org, sa("[fd00:3::1]:8080"));
    let config = format!(
        r#"
[hosts]
"rr.test" = "10.3.0.1"
"user.test" = "10.3.0.1"
"sess.test" = "10.3.0.1"
"h1.host.test" = "10.3.0.1"
"h2.host.test" = "10.3.0.1"
"h3.host.test" = "10.3.0.1"
"gone.test" = "10.3.0.1"
"random.test" = "10.3.0.1"
"dual.test" = ["fd00:3::1", "10.3.0.1"]
[acl]
rr = {{ dstdomain = ["rr.test"] }}
per_user = {{ dstdomain = ["user.test"] }}
per_host = {{ dstdomain = [".host.test"] }}
per_session = {{ dstdomain = ["sess.test"] }}
gone = {{ dstdomain = ["gone.test"] }}
random = {{ dstdomain = ["random.test"] }}
dual = {{ dstdomain = ["dual.test"] }}
[source_pool.random]
addresses = ["10.3.0.2", "10.3.0.3", "10.3.0.4"]
rotation = "random"
[source_pool.rr]
addresses = ["10.3.0.2", "10.3.0.3", "10.3.0.4"]
[source_pool.user]
addresses = ["10.3.0.2", "10.3.0.3", "10.3.0.4"]
rotation = "sticky-user"
[source_pool.host]
addresses = ["10.3.0.2", "10.3.0.3", "10.3.0.4"]
rotation = "sticky-host"
[source_pool.session]
addresses = ["10.3.0.2", "10.3.0.3", "10.3.0.4"]
rotation = "sticky-session"
[[outgoing]]
match = "rr"
pool = "rr"
[[outgoing]]
match = "per_user"
pool = "user"
[[outgoing]]
match = "per_host"
pool = "host"
[[outgoing]]
match = "per_session"
pool = "session"
[[outgoing]]
match = "gone"
address = "10.3.0.99"
[[outgoing]]
match = "random"
pool = "random"
[[outgoing]]
match = "dual"
address = ["10.3.0.4", "fd00:3::3"]
family = "{{FAMILY}}"
[[listener]]
bind = "127.0.0.1:3128"
access = ["allow localhost", "deny all"]
{LOG}"#
    );
    let mut s = net.sekisho(&px, &config.replace("{FAMILY}", "any"), sa("127.0.0.1:3128"));
    let proxy = "http://127.0.0.1:3128";

    // each destination family takes the source address of its own family
    let (code, body) = get(&net, &px, proxy, "http://dual.test:8080/", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        peer_of(&body),
        "fd00:3::3",
        "IPv6 first (as listed), from the IPv6 source"
    );

    // random: spread, and only pool addresses
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let (code, body) = get(&net, &px, proxy, "http://random.test:8080/", &[]);
        assert_eq!(code, 200, "{body}");
        seen.insert(peer_of(&body));
    }
    assert!(
        seen.len() >= 2 && seen.iter().all(|a| a.starts_with("10.3.0.")),
        "{seen:?}"
    );

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let (code, body) = get(&net, &px, proxy, "http://rr.test:8080/", &[]);
        assert_eq!(code, 200, "{body}");
        *counts.entry(peer_of(&body)).or_default() += 1;
    }
    let expect: HashMap<String, usize> = [("10.3.0.2", 20), ("10.3.0.3", 20), ("10.3.0.4", 20)]
        .into_iter()
        .map(|(a, n)| (a.to_string(), n))
        .collect();
    assert_eq!(counts, expect, "60 requests over 3 addresses, 20 each");

    // sticky per user (the name the client presents), per host, per session key
    let sticky = |url: &str, user: Option<&str>| -> String {
        let extra: Vec<&str> = user.map(|u| vec!["-U", u]).unwrap_or_default();
        let (code, body) = get(&net, &px, proxy, url, &extra);
        assert_eq!(code, 200, "{body}");
        peer_of(&body)
    };
    let mut users = std::collections::HashSet::new();
    for u in ["ann", "bob", "cyd", "dan", "eve", "fay"] {
        let cred = format!("{u}:pw");
        let first = sticky("http://user.test:8080/", Some(&cred));
        for _ in 0..3 {
            assert_eq!(
                sticky("http://user.test:8080/", Some(&cred)),
                first,
                "user {u} keeps its address"
            );
        }
        users.insert(first);
    }
    assert!(users.len() >= 2, "six users are spread: {users:?}");
    for h in ["h1", "h2", "h3"] {
        let url = format!("http://{h}.host.test:8080/");
        let first = sticky(&url, None);
        for u in ["ann:pw", "bob:pw"] {
            assert_eq!(sticky(&url, Some(u)), first, "host {h} keeps its address for any user");
        }
    }
    let mut sessions = std::collections::HashSet::new();
    for k in ["s1", "s2", "s3", "s4", "s5", "s6"] {
        let a = format!("ann-session-{k}:pw");
        let b = format!("bob-session-{k}:pw");
        let first = sticky("http://sess.test:8080/", Some(&a));
        assert_eq!(
            sticky("http://sess.test:8080/", Some(&b)),
            first,
            "session {k} keeps its address"
        );
        sessions.insert(first);
    }
    assert!(sessions.len() >= 2, "six sessions are spread: {sessions:?}");

    // a source address the host does not have: a clear error naming it
    let (code, body) = get(&net, &px, proxy, "http://gone.test:8080/", &[]);
    assert_eq!(code, 502);
    assert!(
        body.contains("source address 10.3.0.99 is not configured on this host"),
        "{body}"
    );
    assert!(s.stderr().contains("10.3.0.99"), "{}", s.stderr());
    s.stop();

    // family = "ipv4": the IPv4 address of the name, from the IPv4 source
    let mut s = net.sekisho(&px, &config.replace("{FAMILY}", "ipv4"), sa("127.0.0.1:3128"));
    let (code, body) = get(&net, &px, proxy, "http://dual.test:8080/", &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(peer_of(&body), "10.3.0.4");
    s.stop();
}

/// The log once `pat` appears `n` times in it (tunnels are logged when they
/// close, a moment after curl is done); bounded by 5 s.
fn logged(read: impl Fn() -> String, pat: &str, n: usize) -> String {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let log = read();
        let seen = log.matches(pat).count();
        if seen >= n || Instant::now() > until {
            assert_eq!(seen, n, "`{pat}` in:\n{log}");
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PARENT: &str = r#"
visible_hostname = "{NAME}"
[hosts]
"origin.test" = "{ORIGIN}"
[acl]
clients = { src = ["10.4.0.0/16"] }
[[listener]]
bind = "0.0.0.0:3128"
access = ["allow clients", "deny all"]
[[access_log]]
output = "stdout"
format = "%rm %ru %>Hs"
"#;

/// Tests 3 and 4 of the issue: a client-side sekisho with parents P1 and P2
/// (sekisho instances in their own namespaces; P2 wants a password). P1 is
/// stopped halfway through a run of requests and every request still
/// succeeds; P1 restarted is used again after the retry-after. curl given
/// both parents' addresses for one name gets through when the first is dead.
#[test]
fn parent_failover_and_return() {
    let Some(mut net) = Net::new() else { return };
    let cl = net.ns("cl");
    let p1 = net.ns("p1");
    let p2 = net.ns("p2");
    let org = net.ns("org");
    net.veth_named(&cl, "to1", "10.4.1.1/24", &p1, "in", "10.4.1.2/24");
    net.veth_named(&cl, "to2", "10.4.2.1/24", &p2, "in", "10.4.2.2/24");
    net.veth_named(&p1, "out", "10.5.1.1/24", &org, "from1", "10.5.1.2/24");
    net.veth_named(&p2, "out", "10.5.2.1/24", &org, "from2", "10.5.2.2/24");
    let _origin = net.origin(&org, sa("0.0.0.0:8080"));

    let dir = crate::harness::TempDir::new();
    let users = dir.path("users");
    let o = crate::auth::passwd(&[users.to_str().unwrap(), "edge"], "edge-secret");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(dir.path("p2.pass"), "edge-secret\n").unwrap();

    let p1_config = PARENT.replace("{NAME}", "p1").replace("{ORIGIN}", "10.5.1.2");
    let p2_config = PARENT.replace("{NAME}", "p2").replace("{ORIGIN}", "10.5.2.2").replace(
        "access = [\"allow clients\", \"deny all\"]",
        "access = [\"allow clients authed\", \"deny all\"]",
    ) + &format!(
        "[acl.authed]\nproxy_auth = [\"REQUIRED\"]\n[auth.basic]\nfile = \"{}\"\n",
        users.display()
    );
    let mut s1 = net.sekisho(&p1, &p1_config, sa("10.4.1.2:3128"));
    let s2 = net.sekisho(&p2, &p2_config, sa("10.4.2.2:3128"));

    let client_config = format!(
        r#"
[[parent]]
name = "p1"
address = "10.4.1.2:3128"
[[parent]]
name = "p2"
address = "10.4.2.2:3128"
username = "edge"
password_file = "{}"
[egress]
parent_select = "first-up"
parent_retry_after = "2s"
never_direct = ["allow all"]
[[listener]]
bind = "127.0.0.1:3128"
access = ["allow localhost", "deny all"]
[admin]
bind = "127.0.0.1:8404"
[[access_log]]
output = "stdout"
format = "%rm %ru %>Hs %Sh/%<A"
"#,
        dir.path("p2.pass").display()
    );
    let c = net.sekisho(&cl, &client_config, sa("127.0.0.1:3128"));
    let proxy = "http://127.0.0.1:3128";

    let run = |n: usize, tag: &str| {
        for i in 0..n {
            let url = format!("http://origin.test:8080/{tag}{i}");
            let (code, body) = get(&net, &cl, proxy, &url, &[]);
            assert_eq!(code, 200, "{url}: {body}");
            // a tunnel through the parent too
            let (code, body) = get(&net, &cl, proxy, &format!("{url}t"), &["-p"]);
            assert_eq!(code, 200, "CONNECT {url}: {body}");
        }
    };
    run(10, "a");
    let log = logged(|| c.stdout(), "FIRSTUP_PARENT/p1", 20);
    assert!(!log.contains("/p2"), "p2 is not used while p1 is up: {log}");

    s1.stop();
    run(10, "b");
    let log = logged(|| c.stdout(), "FIRSTUP_PARENT/p2", 20);
    assert_eq!(log.matches("FIRSTUP_PARENT/p1").count(), 20, "{log}");
    assert!(c.stderr().contains("parent proxy is down"), "{}", c.stderr());
    let p2_log = logged(|| s2.stdout(), "CONNECT origin.test:8080 200", 10);
    assert!(p2_log.contains("GET http://origin.test:8080/b0 200"), "{p2_log}");
    assert!(p2_log.contains("CONNECT origin.test:8080 200"), "{p2_log}");
    let stats = net.curl(&cl, &["-s", "http://127.0.0.1:8404/stats.json"]);
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains(r#"{"name":"p1","state":"down"}"#), "{stats}");

    // curl with both parents' addresses under one name: the dead one is skipped
    let (code, body) = get(
        &net,
        &cl,
        "http://proxy.test:3128",
        "http://origin.test:8080/resolve",
        &[
            "--resolve",
            "proxy.test:3128:10.4.1.2,10.4.2.2",
            "-U",
            "edge:edge-secret",
        ],
    );
    assert_eq!(code, 200, "{body}");
    logged(|| s2.stdout(), "GET http://origin.test:8080/resolve 200", 1);

    // P1 back: used again once its retry-after has passed
    let mut s1 = net.sekisho(&p1, &p1_config, sa("10.4.1.2:3128"));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = get(&net, &cl, proxy, "http://origin.test:8080/back", &[]);
        assert_eq!(code, 200);
        if s1.stdout().contains("GET http://origin.test:8080/back 200") {
            break;
        }
        assert!(Instant::now() < until, "p1 was never used again: {}", c.stdout());
        std::thread::sleep(Duration::from_millis(200));
    }
    s1.stop();
}

/// Test 5 of the issue: the PAC file served by the admin listener runs in a
/// JavaScript engine (node) and answers the configured proxies, fallback and
/// direct exceptions.
#[test]
fn pac_file_runs_and_lists_the_proxies() {
    crate::harness::require_tool("node");
    let extra = r#"
[pac]
proxies = ["p1.example:3128", "p2.example:3128"]
fallback = ["DIRECT"]
direct = [".corp.example", "intranet", "10.0.0.0/8"]
"#;
    let p = crate::harness::start(&crate::harness::basic_config(extra));
    let (code, pac) = p.admin_get("/proxy.pac");
    assert_eq!(code, 200, "{pac}");
    let dir = crate::harness::TempDir::new();
    let file = dir.path("proxy.pac");
    std::fs::write(&file, &pac).unwrap();
    let answers = run_pac(
        &file,
        &[
            "www.example.org",
            "a.corp.example",
            "corp.example",
            "intranet",
            "10.1.2.3",
            "192.0.2.1",
        ],
    );
    let list = "PROXY p1.example:3128; PROXY p2.example:3128; DIRECT";
    assert_eq!(
        answers,
        [list, "DIRECT", "DIRECT", "DIRECT", "DIRECT", list].map(String::from),
        "{pac}"
    );

    // without [pac]: the forward listener itself, then DIRECT
    let q = crate::harness::start(&crate::harness::basic_config(""));
    let (code, pac) = q.admin_get("/wpad.dat");
    assert_eq!(code, 200);
    std::fs::write(&file, &pac).unwrap();
    assert_eq!(
        run_pac(&file, &["example.com"]),
        [format!("PROXY 127.0.0.1:{}; DIRECT", q.port)]
    );
}

/// Evaluates `FindProxyForURL` of a PAC file with node, for each host.
fn run_pac(file: &std::path::Path, hosts: &[&str]) -> Vec<String> {
    const DRIVER: &str = r#"
const fs = require('fs');
function isPlainHostName(h) { return h.indexOf('.') < 0; }
function dnsDomainIs(h, d) { return h.length >= d.length && h.substring(h.length - d.length) == d; }
function ip(s) { return s.split('.').reduce((a, b) => a * 256 + Number(b), 0); }
function isInNet(h, net, mask) { return (ip(h) & ip(mask)) >>> 0 == (ip(net) & ip(mask)) >>> 0; }
eval(fs.readFileSync(process.argv[1], 'utf8'));
for (const h of process.argv.slice(2)) console.log(FindProxyForURL('http://' + h + '/', h));
"#;
    let o = std::process::Command::new("node")
        .arg("-e")
        .arg(DRIVER)
        .arg("--")
        .arg(file)
        .args(hosts)
        .output()
        .unwrap();
    assert!(o.status.success(), "node: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
}

/// A CA and a certificate for `parent.test` signed by it (openssl).
pub fn ca_and_leaf(dir: &crate::harness::TempDir) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = dir.path("ca.key");
    let ca = dir.path("ca.pem");
    let key = dir.path("leaf.key");
    let csr = dir.path("leaf.csr");
    let leaf = dir.path("leaf.pem");
    let ext = dir.path("leaf.ext");
    std::fs::write(&ext, "basicConstraints=CA:FALSE\nsubjectAltName=DNS:parent.test\n").unwrap();
    let p = |x: &std::path::PathBuf| x.to_str().unwrap().to_string();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
        ],
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=parent.test",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&leaf),
        ],
    ] {
        let o = std::process::Command::new("openssl").args(&args).output().unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (ca, leaf, key)
}

/// TLS in front of a plain port: accepts TLS on a loopback port and relays
/// the clear bytes to `backend`. Runs until the runtime is dropped.
fn tls_front(leaf: &std::path::Path, key: &std::path::Path, backend: u16) -> (u16, tokio::runtime::Runtime) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(leaf)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, rt)
}

/// A parent reached over TLS (verified against a configured CA, with a
/// server name): plain requests and tunnels go through it; a parent whose
/// certificate does not verify is never used.
#[test]
fn parent_over_tls() {
    use crate::harness::{TempDir, basic_config, curl_status, start};
    crate::harness::require_tool("openssl");
    let dir = TempDir::new();
    let (ca, leaf, key) = ca_and_leaf(&dir);
    let parent = start(&basic_config(""));
    let (tls_port, _rt) = tls_front(&leaf, &key, parent.port);
    let origin = crate::harness::Origin::start();

    let child = |ca_file: &std::path::Path| {
        basic_config(&format!(
            r#"
[[parent]]
name = "secure"
address = "127.0.0.1:{tls_port}"
tls = true
tls_ca_file = "{}"
tls_server_name = "parent.test"
[egress]
never_direct = ["allow all"]
"#,
            ca_file.display()
        ))
        .replace("format = \"squid\"", "format = \"%rm %ru %>Hs %Sh/%<A\"")
    };
    let c = start(&child(&ca));
    let (code, body) = curl_status(&c.proxy(), &origin.url("/over-tls"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(Echo::parse(&body).field("target"), "/over-tls");
    let (code, body) = curl_status(&c.proxy(), &origin.url("/tunnel-over-tls"), &["-p"]);
    assert_eq!(code, 200, "{body}");
    let log = logged(|| c.stdout(), "FIRSTUP_PARENT/secure", 2);
    assert!(log.contains("CONNECT origin.test:"), "{log}");
    let plog = logged(|| parent.stdout(), "origin.test", 2);
    assert!(plog.contains("/over-tls"), "{plog}");

    // a CA that did not sign the parent's certificate: the parent is refused
    let other = TempDir::new();
    let (wrong_ca, _, _) = ca_and_leaf(&other);
    let d = start(&child(&wrong_ca));
    let (code, body) = curl_status(&d.proxy(), &origin.url("/unverified"), &[]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("TLS handshake"), "{body}");
}

/// Parent selection by round robin and by destination hash, `always_direct`,
/// and active checks that mark a stopped parent down (and up again) without
/// any traffic.
#[test]
fn parent_selection_direct_rules_and_active_checks() {
    use crate::harness::{Origin, basic_config, curl_status, start};
    let origin = Origin::start();
    let with_hosts = |cfg: String| {
        cfg.replace(
            "[hosts]\n",
            "[hosts]\n\"home.test\" = \"127.0.0.1\"\n\"a.test\" = \"127.0.0.1\"\n\"b.test\" = \"127.0.0.1\"\n",
        )
    };
    let p1 = start(&with_hosts(basic_config("")));
    let mut p2 = start(&with_hosts(basic_config("")));
    let child = |select: &str, extra: &str| {
        basic_config(&format!(
            r#"
[acl]
home = {{ dstdomain = ["home.test"] }}
[[parent]]
name = "one"
address = "127.0.0.1:{}"
[[parent]]
name = "two"
address = "127.0.0.1:{}"
[egress]
parent_select = "{select}"
always_direct = ["allow home"]
{extra}
"#,
            p1.port, p2.port
        ))
        .replace("format = \"squid\"", "format = \"%ru %Sh/%<A\"")
        .replace(
            "[hosts]\n",
            "[hosts]\n\"home.test\" = \"127.0.0.1\"\n\"a.test\" = \"127.0.0.1\"\n\"b.test\" = \"127.0.0.1\"\n",
        )
    };

    let rr = start(&child("round-robin", ""));
    for i in 0..6 {
        let (code, body) = curl_status(&rr.proxy(), &origin.url(&format!("/rr{i}")), &[]);
        assert_eq!(code, 200, "{body}");
    }
    let log = logged(|| rr.stdout(), "ROUNDROBIN_PARENT/", 6);
    assert_eq!(log.matches("ROUNDROBIN_PARENT/one").count(), 3, "{log}");
    assert_eq!(log.matches("ROUNDROBIN_PARENT/two").count(), 3, "{log}");
    let port = origin.port;
    let (code, _) = curl_status(&rr.proxy(), &format!("http://home.test:{port}/direct"), &[]);
    assert_eq!(code, 200);
    logged(
        || rr.stdout(),
        &format!("http://home.test:{port}/direct HIER_DIRECT/127.0.0.1"),
        1,
    );

    let hash = start(&child("hash", ""));
    for host in ["a.test", "b.test", "origin.test"] {
        for i in 0..3 {
            let (code, _) = curl_status(&hash.proxy(), &format!("http://{host}:{port}/h{i}"), &[]);
            assert_eq!(code, 200);
        }
        let log = logged(|| hash.stdout(), &format!("http://{host}:{port}/h2 CARP/"), 1);
        let parents: std::collections::HashSet<&str> = log
            .lines()
            .filter(|l| l.starts_with(&format!("http://{host}:")))
            .map(|l| l.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(parents.len(), 1, "one parent per host: {log}");
    }

    // active checks: p2 stopped is seen down with no request at all, then up again
    let checked = start(&child(
        "first-up",
        "parent_check_interval = \"200ms\"\nparent_retry_after = \"1s\"",
    ));
    let state = |name: &str| -> String {
        let (_, stats) = checked.admin_get("/stats.json");
        let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
        v["parents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    let wait_state = |name: &str, want: &str| {
        let until = Instant::now() + Duration::from_secs(10);
        while state(name) != want {
            assert!(Instant::now() < until, "parent {name} never became {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_state("two", "up");
    let p2_port = p2.port;
    p2.stop();
    wait_state("two", "down");
    assert_eq!(state("one"), "up");
    // anything accepting connections on the port again passes the TCP check
    let _back = std::net::TcpListener::bind(("127.0.0.1", p2_port)).unwrap();
    wait_state("two", "up");
}

/// `interface`, `family`, `freebind` and `route_protocol`.
#[test]
fn outgoing_interface_family_freebind() {
    use crate::harness::{Origin, basic_config, curl_status, start};
    let origin = Origin::start();
    let port = origin.port;
    let p = start(
        &basic_config(
            r#"
[timeouts]
connect = "1s"
[acl]
lo = { dstdomain = ["lo.test"] }
nodev = { dstdomain = ["nodev.test"] }
v6only = { dstdomain = ["v6only.test"] }
both = { dstdomain = ["both.test"] }
unbound = { dstdomain = ["unbound.test"] }
free = { dstdomain = ["free.test"] }
[[outgoing]]
match = "lo"
interface = "lo"
[[outgoing]]
match = "nodev"
interface = "nodev0"
[[outgoing]]
match = "v6only"
family = "ipv6"
interface = "lo"
[[outgoing]]
match = "both"
family = "ipv4"
address = ["127.0.0.5", "::1"]
[[outgoing]]
match = "unbound"
address = "192.0.2.77"
[[outgoing]]
match = "free"
address = "192.0.2.77"
freebind = true
"#,
        )
        .replace("format = \"squid\"", "format = \"%ru %<a %<la\"")
        .replace(
            "[hosts]\n",
            r#"[hosts]
"lo.test" = "127.0.0.1"
"nodev.test" = "127.0.0.1"
"v6only.test" = "127.0.0.1"
"both.test" = ["::1", "127.0.0.1"]
"unbound.test" = "127.0.0.1"
"free.test" = "127.0.0.1"
"#,
        ),
    );
    let url = |host: &str| format!("http://{host}:{port}/");
    let (code, body) = curl_status(&p.proxy(), &url("lo.test"), &[]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl_status(&p.proxy(), &url("nodev.test"), &[]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("cannot bind to interface `nodev0`"), "{body}");
    let (code, body) = curl_status(&p.proxy(), &url("v6only.test"), &[]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("no address of the family"), "{body}");
    // IPv4 only, from the pool's IPv4 address
    let (code, body) = curl_status(&p.proxy(), &url("both.test"), &[]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(peer_of(&body), "127.0.0.5");
    logged(|| p.stdout(), &format!("{} 127.0.0.1 127.0.0.5", url("both.test")), 1);
    let (code, body) = curl_status(&p.proxy(), &url("unbound.test"), &[]);
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("source address 192.0.2.77 is not configured on this host"),
        "{body}"
    );
    // with freebind the address binds; the connection then fails elsewhere
    let (code, body) = curl_status(&p.proxy(), &url("free.test"), &[]);
    assert!(code == 502 || code == 504, "{code} {body}");
    assert!(!body.contains("not configured on this host"), "{body}");

    // route_protocol tags the plan
    let dir = crate::harness::TempDir::new();
    let cfg = dir.path("r.toml");
    std::fs::write(
        &cfg,
        "[[uplink]]\nname = \"u\"\ninterface = \"eth9\"\naddress = \"10.8.0.2/24\"\ngateway = \"10.8.0.1\"\ntable = 300\npriority = 500\n[egress]\nroute_protocol = 201\n",
    )
    .unwrap();
    let o = std::process::Command::new(bin())
        .args(["routes", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains("ip rule add from 10.8.0.2 lookup 300 priority 500 proto 201"),
        "{plan}"
    );
    assert!(
        plan.contains("ip route add default via 10.8.0.1 dev eth9 table 300 proto 201"),
        "{plan}"
    );
}

/// A hand-written parent: answers each connection's first request head with
/// `answer`, then echoes whatever follows. Returns its port and how many
/// connections it accepted.
fn fake_parent(answer: &'static [u8]) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                if s.write_all(answer).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

/// What parents answer: interim 1xx heads before a CONNECT's 200 are
/// skipped; a parent's 407 (to a tunnel or a request) becomes 502, since its
/// login is this proxy's business; other refusals reach the client; a parent
/// that cannot be reached is left for a direct connection (no never_direct),
/// and the log then names the origin, not the parent.
#[test]
fn parent_answers_and_fallback_to_direct() {
    use crate::harness::{Origin, basic_config, raw, start};
    let origin = Origin::start();
    let child = |parent_port: u16, extra: &str| {
        basic_config(&format!(
            "[[parent]]\nname = \"fake\"\naddress = \"127.0.0.1:{parent_port}\"\n{extra}"
        ))
        .replace("format = \"squid\"", "format = \"%rm %ru %>Hs %Sh/%<A\"")
    };
    let connect = |p: &crate::harness::Sekisho| {
        raw(
            p.port,
            b"CONNECT origin.test:9 HTTP/1.1\r\nHost: origin.test:9\r\n\r\nping",
            Duration::from_secs(3),
        )
    };

    let (port, _) = fake_parent(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Connection established\r\n\r\n");
    let p = start(&child(port, "[egress]\nnever_direct = [\"allow all\"]\n"));
    let got = connect(&p);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.ends_with("ping"),
        "the tunnel carries bytes after the interim answers: {got}"
    );

    let (port, _) = fake_parent(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n");
    let p = start(&child(port, "[egress]\nnever_direct = [\"allow all\"]\n"));
    let got = connect(&p);
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    let (code, body) = crate::harness::curl_status(&p.proxy(), &origin.url("/x"), &[]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("refused this proxy's credentials"), "{body}");

    let (port, _) = fake_parent(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let p = start(&child(port, "[egress]\nnever_direct = [\"allow all\"]\n"));
    assert!(connect(&p).starts_with("HTTP/1.1 403"));

    // nothing listens on the parent's port: direct, logged as direct
    let dead = crate::harness::free_port();
    let p = start(&child(dead, ""));
    let (code, body) = crate::harness::curl_status(&p.proxy(), &origin.url("/fallback"), &[]);
    assert_eq!(code, 200, "{body}");
    logged(
        || p.stdout(),
        &format!("GET {} 200 HIER_DIRECT/127.0.0.1", origin.url("/fallback")),
        1,
    );
    assert!(p.stderr().contains("parent proxy is down"), "{}", p.stderr());
}

/// Outgoing rules apply to connections to parents too, and a kept-alive
/// connection to a parent is reused only for requests that chose the same
/// source: the parent sees the sources alternate.
#[test]
fn parent_connections_keep_the_rotation() {
    use crate::harness::{Origin, basic_config, curl_status, start};
    let origin = Origin::start();
    let parent = start(&basic_config("").replace("format = \"squid\"", "format = \"%>a %ru\""));
    let child = start(&basic_config(&format!(
        r#"
[[parent]]
name = "up"
address = "127.0.0.1:{}"
[egress]
never_direct = ["allow all"]
[source_pool.two]
addresses = ["127.0.0.2", "127.0.0.3"]
[[outgoing]]
match = "all"
pool = "two"
"#,
        parent.port
    )));
    for i in 0..6 {
        let (code, body) = curl_status(&child.proxy(), &origin.url(&format!("/k{i}")), &[]);
        assert_eq!(code, 200, "{body}");
    }
    let log = logged(|| parent.stdout(), "/k", 6);
    let sources: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        sources,
        [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.2",
            "127.0.0.3"
        ],
        "{log}"
    );
    assert!(
        origin.connections() <= 2,
        "the parent's pooled connections to the origin are reused"
    );
}
