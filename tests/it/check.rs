//! `sekisho check`: every class of configuration error, with file, line and column.

use std::process::Command;

use crate::harness::{TempDir, bin};

fn check(text: &str) -> (bool, String, String) {
    let dir = TempDir::new();
    let p = dir.path("c.toml");
    std::fs::write(&p, text).unwrap();
    let o = Command::new(bin()).args(["check", "-c"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (o.status.success(), err, p.display().to_string())
}

/// Asserts one `file:line:col: error: ...` line containing `needle`.
fn assert_error(text: &str, line: usize, col: usize, needle: &str) {
    let (ok, err, file) = check(text);
    assert!(!ok, "check accepted:\n{text}");
    let want = format!("{file}:{line}:{col}: error: ");
    assert!(
        err.lines().any(|l| l.starts_with(&want) && l.contains(needle)),
        "expected `{want}...{needle}` in:\n{err}"
    );
}

const LISTENER: &str = "[[listener]]\nbind = \"127.0.0.1:3128\"\n";

#[test]
fn valid_config_passes() {
    let (ok, err, _) = check(LISTENER);
    assert!(ok, "{err}");
    let o = Command::new(bin()).arg("default-config").output().unwrap();
    let (ok, err, _) = check(&String::from_utf8(o.stdout).unwrap());
    assert!(ok, "embedded default must validate: {err}");
}

#[test]
fn unknown_keys() {
    assert_error(
        "[[listener]]\nbind = \"127.0.0.1:3128\"\nbnid = 1\n",
        3,
        1,
        "unknown key `bnid` in `listener[0]`",
    );
    assert_error(
        "[timeouts]\nconect = \"1s\"\n",
        2,
        1,
        "unknown key `conect` in `timeouts`",
    );
    assert_error("colour = \"blue\"\n", 1, 1, "unknown key `colour` at the top level");
}

#[test]
fn wrong_types() {
    assert_error(
        "[timeouts]\nconnect = true\n",
        2,
        11,
        "`timeouts.connect` must be a duration",
    );
    assert_error("[http]\nvia = \"yes\"\n", 2, 7, "`http.via` must be true or false");
    assert_error(
        "[[listener]]\nbind = 3128\n",
        2,
        8,
        "`listener[0].bind` must be a string",
    );
    assert_error("[timeouts]\nconnect = \"5 parsecs\"\n", 2, 11, "unknown unit");
    assert_error(
        "[tunnel]\nbuffer = 100\n",
        2,
        10,
        "`tunnel.buffer` must be between 4096 and 16777216",
    );
    assert_error(
        "[tunnel]\nrelay = \"splice\"\nbuffer = 65536\n",
        3,
        10,
        "`tunnel.buffer` sizes the `copy` relay's buffers",
    );
    assert_error(
        "[tunnel]\nrelay = \"zerocopy\"\n",
        2,
        9,
        "`tunnel.relay` is \"copy\" or \"splice\"",
    );
    assert_error(
        "[http]\nforwarded_for = \"maybe\"\n",
        2,
        17,
        "one of on, off, delete, transparent",
    );
}

#[test]
fn bad_cidrs() {
    assert_error(
        "[acl]\nnet = { src = [\"10.0.0.0/33\"] }\n",
        2,
        16,
        "`10.0.0.0/33` is not a CIDR",
    );
    assert_error(
        "[acl]\nnet = { dst = \"10.1.2.3/8\" }\n",
        2,
        15,
        "did you mean `10.0.0.0/8`",
    );
}

#[test]
fn bad_ports() {
    assert_error(
        "[[listener]]\nbind = \"127.0.0.1:70000\"\n",
        2,
        8,
        "port 70000 is out of range",
    );
    assert_error("[[listener]]\nbind = \"127.0.0.1\"\n", 2, 8, "it has no port");
    assert_error("[acl]\np = { port = [80, 0] }\n", 2, 19, "`0` is not a port");
    assert_error("[acl]\np = { port = [\"90-80\"] }\n", 2, 15, "runs backwards");
}

#[test]
fn undefined_acl_names() {
    let text = "[[listener]]\nbind = \"127.0.0.1:3128\"\naccess = [\"allow localnet\", \"deny !nosuch all\"]\n";
    // both the undefined name and its exact column inside the rule string
    assert_error(text, 3, 18, "undefined ACL `localnet`");
    assert_error(text, 3, 36, "undefined ACL `nosuch`");
}

#[test]
fn duplicate_listener_addresses() {
    let text = "[[listener]]\nbind = \"127.0.0.1:3128\"\n[[listener]]\nbind = \"127.0.0.1:3128\"\n";
    assert_error(text, 4, 8, "duplicate listener address 127.0.0.1:3128");
    let wildcard = "[[listener]]\nbind = \"0.0.0.0:3128\"\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:3128\"\n";
    assert_error(wildcard, 5, 8, "duplicate listener address");
    let admin = "[admin]\nbind = \"127.0.0.1:3128\"\n[[listener]]\nbind = \"127.0.0.1:3128\"\n";
    assert_error(admin, 4, 8, "the admin server's bind already binds it");
}

#[test]
fn every_error_is_printed_not_just_the_first() {
    let text =
        "a = 1\n[timeouts]\nconnect = \"x\"\n[acl]\nn = { src = \"bad\" }\n[[listener]]\nbind = \"127.0.0.1:0\"\n";
    let (ok, err, _) = check(text);
    assert!(!ok);
    assert!(err.contains("4 errors"), "{err}");
}

#[test]
fn syntax_errors_have_a_location() {
    let (ok, err, file) = check("[[listener]]\nbind = \"127.0.0.1:3128\n");
    assert!(!ok);
    assert!(err.starts_with(&format!("{file}:2:")), "{err}");
    assert!(err.contains("TOML syntax"), "{err}");
}

#[test]
fn run_refuses_an_invalid_file() {
    let dir = TempDir::new();
    let p = dir.path("c.toml");
    std::fs::write(&p, "[timeouts]\nconnect = 5x\n").unwrap();
    let o = Command::new(bin()).args(["run", "-c"]).arg(&p).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(":2:"),
        "run must print the located error"
    );
}

#[test]
fn version_flag() {
    let o = Command::new(bin()).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("sekisho {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Asserts that `check` fails with a message containing `needle` (any place).
fn assert_message(text: &str, needle: &str) {
    let (ok, err, _) = check(&format!("{LISTENER}{text}"));
    assert!(!ok, "check accepted:\n{text}");
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
}

#[test]
fn egress_errors() {
    assert_message(
        "[[outgoing]]\nmatch = \"all\"\npool = \"nope\"\n",
        "no `[source_pool.nope]` is defined",
    );
    assert_message("[[outgoing]]\nmatch = \"nobody\"\nmark = 1\n", "undefined ACL `nobody`");
    assert_message("[[outgoing]]\nmatch = \"all\"\n", "chooses nothing");
    assert_message("[[outgoing]]\nmatch = \"all\"\nmark = 0\n", "must not be 0");
    assert_message(
        "[source_pool.p]\naddresses = [\"10.0.0.1\"]\n[[outgoing]]\nmatch = \"all\"\npool = \"p\"\naddress = \"10.0.0.2\"\n",
        "use only one of `address`, `pool` and `uplink`",
    );
    assert_message(
        "[[outgoing]]\nmatch = \"all\"\naddress = \"10.0.0.1\"\nfamily = \"ipv6\"\n",
        "no source address of the family",
    );
    assert_message(
        "[[outgoing]]\nmatch = \"all\"\nfamily = \"v5\"\nmark = 1\n",
        "expected any, ipv4, ipv6",
    );
    assert_message(
        "[[outgoing]]\nmatch = \"all\"\ninterface = \"a-very-long-interface\"\n",
        "is not an interface name",
    );
    assert_message(
        "[source_pool.p]\naddresses = [\"10.0.0.1\", \"x\"]\n",
        "`x` is not an IP address",
    );
    assert_message(
        "[source_pool.p]\naddresses = [\"10.0.0.1\"]\nrotation = \"lottery\"\n",
        "expected round-robin, random",
    );
    assert_message(
        "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\naddress = \"10.0.0.2/24\"\ngateway = \"10.9.0.1\"\n",
        "is not on the link 10.0.0.0/24",
    );
    assert_message(
        "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\naddress = \"10.0.0.2/24\"\ntable = 254\n",
        "reserved table",
    );
    assert_message("[[parent]]\nname = \"p\"\n", "needs `address`");
    assert_message("[[parent]]\naddress = \"p1:99999\"\n", "is not HOST:PORT");
    assert_message(
        "[[parent]]\naddress = \"p1:3128\"\nusername = \"u\"\npassword_env = \"SEKISHO_SURELY_UNSET\"\n",
        "SEKISHO_SURELY_UNSET is not set",
    );
    assert_message(
        "[[parent]]\naddress = \"p1:3128\"\nusername = \"u\"\n",
        "needs `password_file` or `password_env`",
    );
    assert_message(
        "[[parent]]\naddress = \"p1:3128\"\ntls_server_name = \"x\"\n",
        "TLS settings without `tls = true`",
    );
    assert_message(
        "[egress]\nnever_direct = [\"allow all\"]\n",
        "no `[[parent]]` is configured",
    );
    assert_message(
        "[[parent]]\naddress = \"p1:3128\"\n[egress]\nalways_direct = [\"allow to_private\"]\n",
        "use dstdomain",
    );
    assert_message(
        "[[parent]]\naddress = \"p1:3128\"\n[egress]\nparent_select = \"best\"\n",
        "expected first-up, round-robin or hash",
    );
    assert_message("[egress]\nroute_protocol = 2\n", "between 5 and 255");
    assert_message(
        "[pac]\nfallback = [\"SOMETIMES\"]\n",
        "is not `DIRECT` or `PROXY host:port`",
    );
    assert_message("[pac]\ndirect = [\"10.0.0.1/8\"]\n", "host bits set");
    assert_message(
        "[acl]\nm = { method = [\"GET\"] }\n[pac]\naccess = [\"allow m\"]\n",
        "not a source-address ACL",
    );

    // a password from the environment
    let dir = TempDir::new();
    let p = dir.path("c.toml");
    std::fs::write(
        &p,
        format!(
            "{LISTENER}[[parent]]\naddress = \"p1:3128\"\nusername = \"u\"\npassword_env = \"SEKISHO_IT_PARENT_PW\"\n"
        ),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["check", "-c"])
        .arg(&p)
        .env("SEKISHO_IT_PARENT_PW", "pw")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn egress_examples_are_valid() {
    for name in ["redundant-forward.toml", "multi-homed.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let o = Command::new(bin()).args(["check", "-c"]).arg(&path).output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/multi-homed.toml");
    let o = Command::new(bin()).args(["routes", "-c"]).arg(&path).output().unwrap();
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains("ip route add 10.10.1.0/24 dev eth1 src 10.10.1.2 scope link table 101 proto 157"),
        "{plan}"
    );
    assert!(
        plan.contains("ip route add default dev ppp0 scope link table 102 proto 157"),
        "{plan}"
    );
}

#[test]
fn egress_names_and_ranges() {
    assert_message(
        "[[parent]]\nname = \"p 1\"\naddress = \"p1:3128\"\n",
        "a name is 1-64 letters",
    );
    assert_message(
        "[[parent]]\nname = \"parent1\"\naddress = \"p1:3128\"\n[[parent]]\naddress = \"p2:3128\"\n",
        "parent name `parent1` is used twice",
    );
    assert_message(
        "[[uplink]]\nname = \"a\"\ninterface = \"eth0\"\naddress = \"10.0.0.2/24\"\npriority = 32765\n",
        "between 1 and 32764",
    );
    assert_message("[egress]\nparent_retry_after = 99999999999\n", "too long");
    // an IPv6 uplink's next hop is usually link-local
    let (ok, err, _) = check(&format!(
        "{LISTENER}[[uplink]]\nname = \"v6\"\ninterface = \"eth0\"\naddress = \"2001:db8::2/64\"\ngateway = \"fe80::1\"\n"
    ));
    assert!(ok, "{err}");
}

#[test]
fn load_balancer_errors() {
    let pool = "[pool.web]\n[[pool.web.server]]\naddress = \"127.0.0.1:8080\"\n";
    let http = "[[listener]]\nname = \"w\"\nbind = \"127.0.0.1:8081\"\nmode = \"http\"\ndefault_pool = \"web\"\n";
    let (ok, err, _) = check(&format!("{LISTENER}{pool}{http}"));
    assert!(ok, "{err}");
    assert_message(
        "[pool.web]\nbalance = \"fastest\"\n[[pool.web.server]]\naddress = \"127.0.0.1:1\"\n",
        "expected round-robin, leastconn",
    );
    assert_message("[pool.web]\n", "needs at least one");
    assert_message(
        "[pool.web]\n[[pool.web.server]]\naddress = \"nowhere\"\n",
        "is not IP:PORT",
    );
    assert_message(
        &format!("{pool}[pool.web.check]\ntype = \"icmp\"\n"),
        "expected http, tcp or udp",
    );
    assert_message(
        &format!("{pool}[pool.web.check]\nexpect = \"2xx\"\n"),
        "write a status or a range",
    );
    assert_message(
        &format!("{pool}[pool.web.check]\ninterval = \"1s\"\ntimeout = \"2s\"\n"),
        "must not be longer than `interval`",
    );
    assert_message(
        &format!("{pool}[pool.web.stick]\ntype = \"insert\"\ncookie = \"SRV\"\nkey_env = \"SEKISHO_SURELY_UNSET\"\n"),
        "is not set",
    );
    assert_message(&format!("{pool}[pool.web.stick]\ntype = \"learn\"\n"), "needs `cookie`");
    assert_message(
        "[pool.web]\nhash_key = \"uri\"\n[[pool.web.server]]\naddress = \"127.0.0.1:8080\"\n",
        "needs `balance = \"hash\"`",
    );
    assert_message(
        "[pool.web]\ntls_server_name = \"x\"\n[[pool.web.server]]\naddress = \"127.0.0.1:8080\"\n",
        "TLS settings without `tls = true`",
    );
    assert_message(
        "[[listener]]\nbind = \"127.0.0.1:8081\"\nmode = \"http\"\ndefault_pool = \"nope\"\n",
        "no `[pool.nope]` is defined",
    );
    assert_message(
        "[[listener]]\nbind = \"127.0.0.1:8081\"\nroutes = []\n",
        "is for `http` and `https` listeners",
    );
    assert_message(
        &format!("{pool}[[listener]]\nbind = \"127.0.0.1:8081\"\nmode = \"https\"\ndefault_pool = \"web\"\n"),
        "needs `[listener[1].tls]`",
    );
    assert_message(
        &format!(
            "{pool}[[listener]]\nbind = \"127.0.0.1:8081\"\nmode = \"https\"\ndefault_pool = \"web\"\n[listener.tls]\ncertificates = []\n"
        ),
        "needs at least one certificate",
    );
    assert_message(
        &format!(
            "{pool}[[listener]]\nbind = \"127.0.0.1:8081\"\nmode = \"https\"\ndefault_pool = \"web\"\n[listener.tls]\ncertificates = [{{ cert = \"/nonexistent.pem\", key = \"/nonexistent.key\" }}]\nmin_version = \"1.0\"\n"
        ),
        "never speaks",
    );
}

#[test]
fn tcp_listener_errors() {
    let pool = "[pool.db]\n[[pool.db.server]]\naddress = \"127.0.0.1:5432\"\n";
    assert_message(
        &format!("{pool}[[listener]]\nbind = \"127.0.0.1:5433\"\nmode = \"tcp\"\n"),
        "(tcp) needs `default_pool`",
    );
    assert_message(
        &format!("{pool}[[listener]]\nbind = \"127.0.0.1:5433\"\nmode = \"tcp\"\ndefault_pool = \"db\"\nroutes = []\n"),
        "is for `http` and `https` listeners",
    );
    assert_message(
        &format!("{pool}[[listener]]\nbind = \"127.0.0.1:5433\"\nmode = \"tcp\"\ndefault_pool = \"nope\"\n"),
        "no `[pool.nope]`",
    );
    let (ok, err, _) = check(&format!(
        "{LISTENER}{pool}[[listener]]\nbind = \"127.0.0.1:5433\"\nmode = \"tcp\"\ndefault_pool = \"db\"\n[[access_log]]\nformat = \"tcplog\"\n"
    ));
    assert!(ok, "{err}");
}

#[test]
fn udp_listener_errors() {
    let pool = "[pool.dns]\n[[pool.dns.server]]\naddress = \"127.0.0.1:53\"\n";
    assert_message(
        &format!("{pool}[[listener]]\nbind = \"127.0.0.1:5353\"\nmode = \"udp\"\n"),
        "(udp) needs `default_pool`",
    );
    assert_message(
        &format!("{pool}[[listener]]\nbind = \"127.0.0.1:5353\"\nresponses = 1\n"),
        "is for `udp` listeners",
    );
    assert_message(
        &format!(
            "{pool}[[listener]]\nbind = \"127.0.0.1:5353\"\nmode = \"udp\"\ndefault_pool = \"dns\"\nrouting = 1\n"
        ),
        "unknown key `routing`",
    );
    assert_message(
        "[pool.dns]\n[pool.dns.check]\ntype = \"udp\"\n[[pool.dns.server]]\naddress = \"127.0.0.1:53\"\n",
        "needs `payload_hex`",
    );
    assert_message(
        "[pool.dns]\n[pool.dns.check]\ntype = \"udp\"\npayload_hex = \"0g\"\n[[pool.dns.server]]\naddress = \"127.0.0.1:53\"\n",
        "is not hex bytes",
    );
    // a UDP listener may share a TCP listener's address
    let (ok, err, _) = check(&format!(
        "{LISTENER}{pool}[[listener]]\nbind = \"127.0.0.1:3128\"\nmode = \"udp\"\ndefault_pool = \"dns\"\nresponses = 0\ntimeout = \"2s\"\nmax_sessions = 100\n"
    ));
    assert!(ok, "{err}");
}

#[test]
fn transparency_and_dsr_rules() {
    let dsr_pool = "[pool.dns]\nsource = \"client-port\"\n[[pool.dns.server]]\naddress = \"127.0.0.1:53\"\n";
    assert_message(
        &format!(
            "{dsr_pool}[[listener]]\nbind = \"127.0.0.1:5353\"\nmode = \"udp\"\ndefault_pool = \"dns\"\nresponses = 1\n"
        ),
        "needs a `udp` listener with `responses = 0`",
    );
    assert_message(
        &format!(
            "{dsr_pool}[[listener]]\nbind = \"127.0.0.1:5353\"\nmode = \"udp\"\ndefault_pool = \"dns\"\nresponses = 0\n"
        ),
        "only active checks can see its servers",
    );
    assert_message(
        "[pool.p]\nsource = \"elsewhere\"\n[[pool.p.server]]\naddress = \"127.0.0.1:1\"\n",
        "expected local, client or client-port",
    );
    let (ok, err, _) = check(&format!(
        "user = \"root\"\n{LISTENER}[pool.p]\nsource = \"client\"\n[[pool.p.server]]\naddress = \"127.0.0.1:1\"\n"
    ));
    assert!(!ok && err.contains("needs CAP_NET_ADMIN"), "{err}");
    let (ok, err, _) = check(&format!(
        "{LISTENER}[pool.dns]\nsource = \"client-port\"\n[pool.dns.check]\ntype = \"udp\"\npayload_hex = \"00\"\n[[pool.dns.server]]\naddress = \"127.0.0.1:53\"\n[[listener]]\nbind = \"127.0.0.1:5353\"\nmode = \"udp\"\ndefault_pool = \"dns\"\nresponses = 0\n"
    ));
    assert!(ok, "{err}");
}

#[test]
fn capture_keys() {
    assert_message("[egress]\ncapture_table = 255\n", "reserved table");
    assert_message("[egress]\ncapture_mark = 0\n", "between 1 and");
    let (ok, err, _) = check(&format!(
        "{LISTENER}[egress]\ncapture_mark = 0x20\ncapture_table = 120\n"
    ));
    assert!(ok, "{err}");
}

#[test]
fn return_path_errors() {
    assert_message_top(
        "[[return_path]]\nmac = \"02:00:00:00:00\"\ngateway = \"172.16.0.1\"\ninterface = \"eth0\"\n",
        "is not a MAC address",
    );
    assert_message_top(
        "[[return_path]]\nmac = \"02:00:00:00:00:01\"\ninterface = \"eth0\"\n",
        "needs `gateway`",
    );
    assert_message_top(
        "[[return_path]]\nmac = \"02:00:00:00:00:01\"\ngateway = \"172.16.0.1\"\n",
        "needs `interface`",
    );
    let (ok, err, _) = check(&format!(
        "{LISTENER}[[return_path]]\nname = \"lb1\"\nmac = \"02:00:00:00:00:01\"\ngateway = \"172.16.0.1\"\ninterface = \"eth0\"\nmark = 0x20\ntable = 120\npriority = 960\n"
    ));
    assert!(ok, "{err}");
}

/// Like `assert_message`, with `text` at the top level (before any listener table).
fn assert_message_top(text: &str, needle: &str) {
    let (ok, err, _) = check(&format!("{text}{LISTENER}"));
    assert!(!ok, "check accepted:\n{text}");
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
}

#[test]
fn access_log_errors() {
    const SYSLOG: &str = "[[access_log]]\noutput = \"syslog\"\n";
    let bad = |line: &str| format!("{SYSLOG}{line}\n");
    assert_error(
        &bad("syslog_address = \"tcp://logs:514\""),
        3,
        18,
        "`access_log[0].syslog_address`: the `tcp` transport is not supported",
    );
    assert_error(
        &bad("syslog_address = \"udp://logs:0\""),
        3,
        18,
        "is not a port (1-65535)",
    );
    assert_error(
        &bad("syslog_address = \"unix://dev/log\""),
        3,
        18,
        "the socket path must be absolute",
    );
    assert_error(
        &bad("syslog_format = \"rfc5425\""),
        3,
        17,
        "`access_log[0].syslog_format` is \"rfc5424\" or \"rfc3164\", not `rfc5425`",
    );
    assert_error(
        &bad("syslog_facility = \"local8\""),
        3,
        19,
        "unknown facility `local8`; expected one of: kern, user",
    );
    assert_error(
        &bad("syslog_severity = \"loud\""),
        3,
        19,
        "unknown severity `loud`; expected one of: emerg, alert",
    );
    assert_error(
        &bad("syslog_tag = \"my app\""),
        3,
        14,
        "`access_log[0].syslog_tag` may hold",
    );
    assert_error(
        &bad("syslog_hostname = \"two words\""),
        3,
        19,
        "`access_log[0].syslog_hostname` may hold printable ASCII",
    );
    assert_error(
        &bad("syslog_max_length = 100"),
        3,
        21,
        "`access_log[0].syslog_max_length` must be between 480 and 65507, not 100",
    );
    assert_error(&bad("syslog_max_length = \"2k\""), 3, 21, "must be an integer");
    assert_error(
        &bad("syslog_port = 514"),
        3,
        1,
        "unknown key `syslog_port` in `access_log[0]`",
    );
    // syslog keys on another output
    assert_error(
        "[[access_log]]\noutput = \"/var/log/sekisho.log\"\nsyslog_tag = \"x\"\n",
        3,
        1,
        "`access_log[0].syslog_tag` is only for `output = \"syslog\"`",
    );
    assert_error(
        "[[access_log]]\nsyslog_facility = \"daemon\"\n",
        2,
        1,
        "`access_log[0].syslog_facility` is only for `output = \"syslog\"`",
    );
    assert_error(
        "[[access_log]]\noutput = \"sys.log\"\n",
        2,
        10,
        "\"stdout\", \"stderr\", \"syslog\" or an absolute file path",
    );
    // every key at once is valid
    let (ok, err, _) = check(&format!(
        "{LISTENER}{SYSLOG}syslog_address = \"udp://[::1]:5514\"\nsyslog_format = \"rfc3164\"\nsyslog_facility = \"local7\"\n\
         syslog_severity = \"warning\"\nsyslog_tag = \"proxy\"\nsyslog_hostname = \"p1.example\"\nsyslog_max_length = 1024\n\
         format = \"json\"\nqueue_size = 100\n"
    ));
    assert!(ok, "{err}");
}
