//! IP transparency: a load balancer whose connections to the servers leave
//! from the client's address (`source = "client"`), in network namespaces
//! laid out as in the seed: client 192.168.99.1, proxy 192.168.99.10 /
//! 172.16.0.1, servers in 172.16.0.0/24 whose default route is the proxy.
//! And the start-up refusal without CAP_NET_ADMIN.

use std::net::SocketAddr;
use std::process::Command;

use crate::harness::{Echo, TempDir, bin};
use crate::netns::Net;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn servers_see_the_clients_address() {
    let Some(mut net) = Net::new() else { return };
    crate::harness::require_tool("nft");
    let cl = net.ns("cl");
    let px = net.ns("px");
    let up = net.ns("up");
    net.veth_named(&cl, "c0", "192.168.99.1/24", &px, "p0", "192.168.99.10/24");
    net.veth_named(&px, "p1", "172.16.0.1/24", &up, "u0", "172.16.0.11/24");
    for a in ["172.16.0.12/24", "172.16.0.13/24", "172.16.0.14/24"] {
        net.addr(&up, "u0", a);
    }
    net.run(&up, "ip", &["route", "add", "default", "via", "172.16.0.1"]);
    net.forwarding(&px);
    // four web upstreams, as in the seed, and a TCP service
    let webs: Vec<_> = (11..=14)
        .map(|i| net.origin(&up, sa(&format!("172.16.0.{i}:8080"))))
        .collect();
    let tcp_svc = net.origin(&up, sa("172.16.0.12:9090"));

    let config = r#"
[pool.web]
source = "client"
[[pool.web.server]]
address = "172.16.0.11:8080"
[[pool.web.server]]
address = "172.16.0.12:8080"
[[pool.web.server]]
address = "172.16.0.13:8080"
[[pool.web.server]]
address = "172.16.0.14:8080"
[pool.raw]
source = "client"
[[pool.raw.server]]
address = "172.16.0.12:9090"
[[listener]]
name = "web"
bind = "192.168.99.10:80"
mode = "http"
default_pool = "web"
[[listener]]
name = "tcp"
bind = "192.168.99.10:90"
mode = "tcp"
default_pool = "raw"
[[access_log]]
output = "stdout"
style = "haproxy"
format = "%ft %ci %si %bi %ST"
"#;
    let mut s = net.sekisho(&px, config, sa("192.168.99.10:80"));
    let cfg = s.dir().join("sekisho.toml");
    let cfg = cfg.to_str().unwrap();
    // the plan: the seed's capture of the servers' answers, and what the servers need
    let plan = net.run(&px, bin(), &["routes", "-c", cfg]);
    for line in [
        "ip rule add fwmark 0x1 lookup 100 priority 900 proto 157",
        "ip route add local default dev lo table 100 proto 157",
        "    ip saddr 172.16.0.11 tcp sport 8080 meta mark set 0x1",
        "    ip saddr 172.16.0.12 tcp sport 9090 meta mark set 0x1",
        "#   on 172.16.0.11: ip route replace default via 172.16.0.1",
    ] {
        assert!(plan.lines().any(|l| l == line), "missing `{line}` in:\n{plan}");
    }
    // without the capture the answers never reach sekisho
    let o = net.curl(
        &cl,
        &[
            "-s",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://192.168.99.10:80/who",
        ],
    );
    assert_ne!(String::from_utf8_lossy(&o.stdout), "200", "no capture yet");
    let applied = net.run(&px, bin(), &["routes", "-c", cfg, "--apply"]);
    assert!(applied.contains("applied: nft table sekisho_capture"), "{applied}");
    let again = net.run(&px, bin(), &["routes", "-c", cfg, "--apply"]);
    assert_eq!(again.matches("present:").count(), 2, "idempotent: {again}");
    // eight requests over the four web upstreams, then the TCP service: every one sees the client
    let targets: Vec<u16> = std::iter::repeat_n(80, 8).chain([90]).collect();
    for port in targets {
        let o = net.curl(
            &cl,
            &["-sS", "--max-time", "5", &format!("http://192.168.99.10:{port}/who")],
        );
        assert!(
            o.status.success(),
            "port {port}: {}\nsekisho: {}",
            String::from_utf8_lossy(&o.stderr),
            s.stderr()
        );
        let body = String::from_utf8_lossy(&o.stdout).to_string();
        let peer = sa(Echo::parse(&body).field("peer"));
        assert_eq!(
            peer.ip().to_string(),
            "192.168.99.1",
            "port {port}: the server sees the client: {body}"
        );
    }
    for (i, w) in webs.iter().enumerate() {
        assert_eq!(w.requests.load(std::sync::atomic::Ordering::SeqCst), 2, "upstream {i}");
    }
    assert!(tcp_svc.connections() >= 1);
    let want = "web 192.168.99.1 172.16.0.11 192.168.99.1 200";
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.stdout().contains(want) && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        s.stdout().contains(want),
        "the source address in the log: {}",
        s.stdout()
    );
    let removed = net.run(&px, bin(), &["routes", "-c", cfg, "--remove"]);
    assert_eq!(removed.matches("removed:").count(), 3, "{removed}");
    assert!(!net.run(&px, "ip", &["rule", "show"]).contains("lookup 100"));
    assert!(!net.run(&px, "nft", &["list", "tables"]).contains("sekisho_capture"));
    s.stop();
}

/// The plan for direct server return: the stateless source rewrite as tc and as nft.
#[test]
fn dsr_plan_prints_the_source_rewrite() {
    let dir = TempDir::new();
    let cfg = dir.path("dsr.toml");
    std::fs::write(
        &cfg,
        "[pool.dns]\nsource = \"client-port\"\n[pool.dns.check]\ntype = \"udp\"\npayload_hex = \"00\"\n[[pool.dns.server]]\naddress = \"172.16.0.11:53\"\n[[listener]]\nbind = \"192.168.99.10:53\"\nmode = \"udp\"\ndefault_pool = \"dns\"\nresponses = 0\n",
    )
    .unwrap();
    let o = Command::new(bin()).args(["routes", "-c"]).arg(&cfg).output().unwrap();
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for line in [
        "tc filter add dev DEV parent 10: protocol ip prio 10 u32 match ip src 172.16.0.11/32 match ip sport 53 0xffff action nat egress 172.16.0.11/32 192.168.99.10",
        "nft add table ip sekisho_dsr; nft 'add chain ip sekisho_dsr post { type filter hook postrouting priority 300; }'; nft add rule ip sekisho_dsr post ip saddr 172.16.0.11 udp sport 53 ip saddr set 192.168.99.10",
    ] {
        assert!(plan.lines().any(|l| l == line), "missing `{line}` in:\n{plan}");
    }
}

#[test]
fn without_cap_net_admin_the_start_fails_naming_the_listener() {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs as root");
        eprintln!("skipped: needs root to drop a capability");
        return;
    }
    crate::harness::require_tool("setpriv");
    let dir = TempDir::new();
    let cfg = dir.path("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[pool.web]\nsource = \"client\"\n[[pool.web.server]]\naddress = \"127.0.0.1:9\"\n[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:{}\"\nmode = \"http\"\ndefault_pool = \"web\"\n",
            crate::harness::free_port()
        ),
    )
    .unwrap();
    // as an unprivileged user (nobody), from a copy that user can run
    let exe = dir.path("sekisho");
    std::fs::copy(bin(), &exe).unwrap();
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(&exe)
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sekisho started without the capability: {}",
                std::fs::read_to_string(dir.path("stderr")).unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(dir.path("stderr")).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("listener `front`") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
}

/// Where the responders' queries came from.
static QUERIES: std::sync::Mutex<Vec<SocketAddr>> = std::sync::Mutex::new(Vec::new());

/// A minimal DNS responder bound inside a namespace: answers every query
/// with one A record holding its own address (so the client sees which
/// server answered).
fn dns_responder(net: &Net, ns: &str, addr: SocketAddr) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let sock = net.udp_in(ns, addr);
    let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quiet = silent.clone();
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 only"),
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            QUERIES.lock().unwrap().push(from);
            if n < 12 || quiet.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            // the question ends after its name (labels up to a zero byte) and QTYPE/QCLASS
            let mut end = 12;
            while end < n && buf[end] != 0 {
                end += 1 + buf[end] as usize;
            }
            let end = end + 5;
            if end > n {
                continue;
            }
            let mut out = Vec::with_capacity(end + 16);
            out.extend_from_slice(&buf[..2]);
            out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            out.extend_from_slice(&buf[12..end]);
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            out.extend_from_slice(&ip);
            let _ = sock.send_to(&out, from);
        }
    });
    silent
}

/// `dig` from `ns`: the A record of the answer (which server answered), and
/// the address the answer came from.
fn dig(net: &Net, ns: &str, server: &str) -> (String, String) {
    let o = net.output(
        ns,
        "dig",
        &["+tries=1", "+time=3", &format!("@{server}"), "who.test", "A"],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let answer = text
        .lines()
        .find(|l| l.starts_with("who.test.") && l.contains("\tA\t"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("")
        .to_string();
    let from = text
        .lines()
        .find_map(|l| l.strip_prefix(";; SERVER: "))
        .unwrap_or("")
        .to_string();
    if answer.is_empty() {
        eprintln!("dig: {text}{}", String::from_utf8_lossy(&o.stderr));
    }
    (answer, from)
}

/// The seed's DNS balancer: four responders behind a `udp` listener, first
/// with sekisho relaying the answers (`responses = 1`, a dead responder's
/// queries moved to another), then with direct server return (`client-port`,
/// `responses = 0`): the query reaches the server from the client's address
/// and port, and the answer goes back without sekisho, its source rewritten
/// statelessly to the balancer's address by the nft rule `sekisho routes` prints.
#[test]
fn dns_balancing_and_direct_server_return() {
    let Some(mut net) = Net::new() else { return };
    crate::harness::require_tool("dig");
    crate::harness::require_tool("nft");
    let cl = net.ns("cl");
    let px = net.ns("px");
    let up = net.ns("up");
    net.veth_named(&cl, "c0", "192.168.99.1/24", &px, "p0", "192.168.99.10/24");
    net.veth_named(&px, "p1", "172.16.0.1/24", &up, "u0", "172.16.0.11/24");
    for a in ["172.16.0.12/24", "172.16.0.13/24", "172.16.0.14/24"] {
        net.addr(&up, "u0", a);
    }
    net.run(&up, "ip", &["route", "add", "default", "via", "172.16.0.1"]);
    net.forwarding(&px);
    let responders: Vec<_> = (11..=14)
        .map(|i| dns_responder(&net, &up, sa(&format!("172.16.0.{i}:53"))))
        .collect();

    let relayed = r#"
[pool.dns]
retries = 2
[[pool.dns.server]]
address = "172.16.0.11:53"
[[pool.dns.server]]
address = "172.16.0.12:53"
[[pool.dns.server]]
address = "172.16.0.13:53"
[[pool.dns.server]]
address = "172.16.0.14:53"
[[listener]]
name = "probe"
bind = "192.168.99.10:3128"
[[listener]]
name = "dns"
bind = "192.168.99.10:53"
mode = "udp"
default_pool = "dns"
responses = 1
timeout = "1s"
"#;
    let mut s = net.sekisho(&px, relayed, sa("192.168.99.10:3128"));
    // all four answer, in turn
    let answers: Vec<String> = (0..8).map(|_| dig(&net, &cl, "192.168.99.10").0).collect();
    for i in 11..=14 {
        assert_eq!(
            answers.iter().filter(|a| **a == format!("172.16.0.{i}")).count(),
            2,
            "{answers:?}"
        );
    }
    // one stops answering: every query is still answered (its queries move on)
    responders[3].store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..8 {
        let (answer, from) = dig(&net, &cl, "192.168.99.10");
        assert!(
            ["172.16.0.11", "172.16.0.12", "172.16.0.13"].contains(&answer.as_str()),
            "answered: {answer:?} {}",
            s.stderr()
        );
        assert!(from.starts_with("192.168.99.10#53"), "{from}");
    }
    assert!(s.stderr().contains("no answer within 1000 ms"), "{}", s.stderr());
    s.stop();
    responders[3].store(false, std::sync::atomic::Ordering::SeqCst);

    // direct server return
    let dsr = relayed
        .replace("[pool.dns]\nretries = 2\n", "[pool.dns]\nsource = \"client-port\"\n[pool.dns.check]\ntype = \"udp\"\npayload_hex = \"0001 0100 0001 0000 0000 0000 0377686f 0474657374 00 0001 0001\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nfall = 1\n")
        .replace("responses = 1\ntimeout = \"1s\"", "responses = 0\ntimeout = \"1s\"");
    let mut s = net.sekisho(&px, &dsr, sa("192.168.99.10:3128"));
    let cfg = s.dir().join("sekisho.toml");
    let plan = net.run(&px, bin(), &["routes", "-c", cfg.to_str().unwrap()]);
    // origin NAT: the nft form of the printed rewrite, on the upstream host itself;
    // the proxy forwards answers that carry its own address as their source
    net.run(&up, "nft", &["add table ip sekisho_dsr"]);
    net.run(
        &up,
        "nft",
        &["add chain ip sekisho_dsr post { type filter hook postrouting priority 300; }"],
    );
    for i in 11..=14 {
        let rule = format!("ip saddr 172.16.0.{i} udp sport 53 ip saddr set 192.168.99.10");
        assert!(plan.contains(&rule), "{plan}");
        net.run(&up, "nft", &[&format!("add rule ip sekisho_dsr post {rule}")]);
    }
    net.run(&px, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/conf/p1/accept_local"]);
    // all four answer directly; then one stops and the active check takes it out
    let answers: Vec<String> = (0..8).map(|_| dig(&net, &cl, "192.168.99.10").0).collect();
    for i in 11..=14 {
        assert_eq!(
            answers.iter().filter(|a| **a == format!("172.16.0.{i}")).count(),
            2,
            "{answers:?} {}",
            s.stderr()
        );
    }
    // sekisho keeps no socket for the answers
    let udp = net.run(&px, "cat", &["/proc/net/udp"]);
    // (no socket bound to 192.168.99.1, which /proc/net/udp writes 0163A8C0)
    assert!(!udp.contains("0163A8C0:"), "{udp}");
    responders[3].store(true, std::sync::atomic::Ordering::SeqCst);
    // the active check takes the silent responder out
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s.stderr().contains("server is DOWN") {
        assert!(std::time::Instant::now() < until, "{}", s.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let (answer, from) = dig(&net, &cl, "192.168.99.10");
        assert!(
            answer.starts_with("172.16.0.1"),
            "answered: {answer:?} {}\nqueries from: {:?}\n{}",
            s.stderr(),
            QUERIES.lock().unwrap(),
            net.run(&px, "nft", &["list", "ruleset"])
        );
        assert!(from.starts_with("192.168.99.10#53"), "the rewritten source: {from}");
        seen.insert(answer);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // the servers saw the client's own address (and sekisho kept nothing for the answers)
    let from_client = QUERIES
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.ip().to_string() == "192.168.99.1")
        .count();
    assert!(from_client >= 6, "{:?}", QUERIES.lock().unwrap());
    s.stop();
}

/// The seed's HAProxy case: a backend behind two balancers that both connect
/// from the client's address. The backend sends each connection's answers
/// back through the balancer it came from: connections are marked by the
/// balancer's MAC address, the mark is restored on the answers, and each mark
/// routes through its balancer (`[[return_path]]`, installed by
/// `sekisho routes --apply` on the backend).
#[test]
fn backend_behind_two_balancers_answers_through_each() {
    let Some(mut net) = Net::new() else { return };
    crate::harness::require_tool("nft");
    let cl = net.ns("cl");
    let lb1 = net.ns("lb1");
    let lb2 = net.ns("lb2");
    let be = net.ns("be");
    net.veth_named(&cl, "c1", "10.1.1.2/24", &lb1, "l0", "10.1.1.1/24");
    net.veth_named(&cl, "c2", "10.1.2.2/24", &lb2, "l0", "10.1.2.1/24");
    net.run(&cl, "ip", &["addr", "add", "192.168.99.1/32", "dev", "lo"]);
    net.run(&be, "ip", &["link", "add", "br0", "type", "bridge"]);
    net.veth_named(&lb1, "b1", "172.16.0.1/24", &be, "x1", "");
    net.veth_named(&lb2, "b2", "172.16.0.2/24", &be, "x2", "");
    for x in ["x1", "x2"] {
        net.run(&be, "ip", &["link", "set", x, "master", "br0"]);
    }
    net.run(&be, "ip", &["addr", "add", "172.16.0.11/24", "dev", "br0"]);
    net.run(&be, "ip", &["link", "set", "br0", "up"]);
    // without return paths every answer would go to lb1
    net.run(&be, "ip", &["route", "add", "default", "via", "172.16.0.1"]);
    for (lb, via) in [(&lb1, "10.1.1.2"), (&lb2, "10.1.2.2")] {
        net.run(lb, "ip", &["route", "add", "192.168.99.1/32", "via", via]);
    }
    let _svc = net.origin(&be, sa("172.16.0.11:9090"));

    let mut balancers = Vec::new();
    for (lb, vip) in [(&lb1, "10.1.1.1"), (&lb2, "10.1.2.1")] {
        let config = format!(
            "[pool.be]\nsource = \"client\"\n[[pool.be.server]]\naddress = \"172.16.0.11:9090\"\n[[listener]]\nbind = \"{vip}:90\"\nmode = \"tcp\"\ndefault_pool = \"be\"\n"
        );
        let s = net.sekisho(lb, &config, sa(&format!("{vip}:90")));
        let cfg = s.dir().join("sekisho.toml");
        net.run(lb, bin(), &["routes", "-c", cfg.to_str().unwrap(), "--apply"]);
        balancers.push(s);
    }
    let mac = |ns: &str, dev: &str| -> String {
        let out = net.run(ns, "ip", &["-br", "link", "show", dev]);
        out.split_whitespace().nth(2).unwrap().to_string()
    };
    let dir = TempDir::new();
    let be_cfg = dir.path("be.toml");
    std::fs::write(
        &be_cfg,
        format!(
            "[[return_path]]\nname = \"lb1\"\nmac = \"{}\"\ngateway = \"172.16.0.1\"\ninterface = \"br0\"\n[[return_path]]\nname = \"lb2\"\nmac = \"{}\"\ngateway = \"172.16.0.2\"\ninterface = \"br0\"\n",
            mac(&lb1, "b1"),
            mac(&lb2, "b2")
        ),
    )
    .unwrap();
    let be_cfg = be_cfg.to_str().unwrap();
    let ask = |vip: &str| -> Option<String> {
        let o = net.curl(
            &cl,
            &[
                "-s",
                "--max-time",
                "3",
                "--interface",
                "192.168.99.1",
                &format!("http://{vip}:90/who"),
            ],
        );
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    };
    // before: lb1's connections work, lb2's answers go astray
    assert!(ask("10.1.1.1").is_some());
    assert!(
        ask("10.1.2.1").is_none(),
        "without return paths lb2's answers go to lb1"
    );

    let plan = net.run(&be, bin(), &["routes", "-c", be_cfg]);
    assert!(
        plan.contains("ct mark set 0x101") && plan.contains("ct mark != 0 meta mark set ct mark"),
        "{plan}"
    );
    assert!(
        plan.contains("ip route add default via 172.16.0.2 dev br0 table 202 proto 157"),
        "{plan}"
    );
    net.run(&be, bin(), &["routes", "-c", be_cfg, "--apply"]);
    for _ in 0..3 {
        for vip in ["10.1.1.1", "10.1.2.1"] {
            let body = ask(vip).unwrap_or_else(|| panic!("no answer through {vip}"));
            let peer = sa(Echo::parse(&body).field("peer"));
            assert_eq!(peer.ip().to_string(), "192.168.99.1", "through {vip}: {body}");
        }
    }
    let removed = net.run(&be, bin(), &["routes", "-c", be_cfg, "--remove"]);
    assert!(removed.contains("removed: nft table sekisho_return"), "{removed}");
    drop(balancers);
}
