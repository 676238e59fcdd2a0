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
    net.addr(&up, "u0", "172.16.0.12/24");
    net.run(&up, "ip", &["route", "add", "default", "via", "172.16.0.1"]);
    net.forwarding(&px);
    let web = net.origin(&up, sa("172.16.0.11:8080"));
    let tcp_svc = net.origin(&up, sa("172.16.0.12:9090"));

    let config = r#"
[pool.web]
source = "client"
[[pool.web.server]]
address = "172.16.0.11:8080"
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
    for (port, origin) in [(80, &web), (90, &tcp_svc)] {
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
        assert!(origin.connections() >= 1);
    }
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
    // IP_TRANSPARENT is allowed with CAP_NET_ADMIN or CAP_NET_RAW: drop both
    let mut child = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-net_admin,-net_raw",
            "--inh-caps",
            "-net_admin,-net_raw",
            "--",
        ])
        .arg(bin())
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
