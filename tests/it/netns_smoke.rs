//! The network-namespace harness itself: two hosts on a veth pair, the echo
//! origin on one, curl and a forward sekisho on the other, and nothing left
//! behind afterwards.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Echo, bin};
use crate::netns::Net;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The names `ip netns list` shows.
fn listed_namespaces() -> Vec<String> {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The inode of a network namespace as `/proc/PID/ns/net` names it (`net:[N]`).
fn netns_inode_of(pid: i32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let link = link.to_string_lossy();
    link.trim_start_matches("net:[").trim_end_matches(']').parse().unwrap()
}

/// Waits until process `pid` has entered namespace `ns` (`ip netns exec` does
/// setns, then exec).
fn wait_inside(pid: i32, ns: &str) {
    let inode = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
    let end = Instant::now() + Duration::from_secs(5);
    while netns_inode_of(pid) != inode {
        assert!(Instant::now() < end, "process {pid} never entered {ns}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that our child `c` was SIGKILLed by the harness (bounded: 5 s).
fn assert_killed(mut c: std::process::Child) {
    let end = Instant::now() + Duration::from_secs(5);
    let st = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            panic!("process {} outlived the namespaces", c.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{st:?}"
    );
}

fn body(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn two_hosts_origin_curl_and_forward_proxy() {
    let t0 = Instant::now();
    let Some(mut net) = Net::new() else { return };
    let a = net.ns("a");
    let b = net.ns("b");
    let (a_if, b_if) = net.veth(&a, "10.210.0.1/24", &b, "10.210.0.2/24");
    assert!(a_if.len() <= 15 && b_if.len() <= 15, "{a_if} {b_if}");
    net.addr(&a, &a_if, "fd00:210::1/64");
    net.addr(&b, &b_if, "fd00:210::2/64");
    let origin = net.origin(&b, sa("10.210.0.2:8080"));
    let origin6 = net.origin("b", sa("[fd00:210::2]:8080"));
    let t_setup = t0.elapsed();

    // curl in `a` reaches the origin in `b` over the veth, from a's address
    let e = Echo::parse(&body(&net.curl(&a, &["-s", "http://10.210.0.2:8080/direct"])));
    assert_eq!(e.field("target"), "/direct");
    assert_eq!(sa(e.field("peer")).ip().to_string(), "10.210.0.1");
    let e = Echo::parse(&body(&net.curl(&a, &["-s", "-g", "http://[fd00:210::2]:8080/v6"])));
    assert_eq!(sa(e.field("peer")).ip().to_string(), "fd00:210::1");
    assert_eq!(origin6.connections(), 1);

    // UDP between the two, from sockets bound inside them
    let server = net.udp_in(&b, sa("10.210.0.2:5353"));
    let client = net.udp_in(&a, sa("10.210.0.1:0"));
    server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.send_to(b"ping", sa("10.210.0.2:5353")).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], client.local_addr().unwrap()));

    // forwarding is per namespace
    let root_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    net.forwarding(&b);
    assert_eq!(net.run(&b, "cat", &["/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    assert_eq!(
        net.run(&b, "cat", &["/proc/sys/net/ipv6/conf/all/forwarding"]).trim(),
        "1"
    );
    assert_eq!(net.run(&a, "cat", &["/proc/sys/net/ipv4/ip_forward"]).trim(), "0");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forwarding
    );

    // a forward sekisho in `a` relays to the origin in `b`
    let config = r#"
visible_hostname = "proxy.test"
[hosts]
"origin.test" = "10.210.0.2"
[[listener]]
name = "fwd"
bind = "127.0.0.1:3128"
access = ["allow localhost", "deny all"]
[[access_log]]
output = "stdout"
format = "squid"
[[access_log]]
output = "{DIR}/access.log"
format = "squid"
"#;
    let t1 = Instant::now();
    let mut s = net.sekisho(&a, config, sa("127.0.0.1:3128"));
    let t_sekisho = t1.elapsed();

    // the PID is sekisho's own, and it runs in namespace `a`
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid())).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(bin()).unwrap(),
        "the child PID is sekisho itself"
    );
    let a_inode = std::fs::metadata(format!("/run/netns/{a}")).unwrap().ino();
    assert_eq!(netns_inode_of(s.pid()), a_inode, "sekisho runs in {a}");
    assert_ne!(netns_inode_of(std::process::id() as i32), a_inode);

    let o = net.curl(
        &a,
        &["-s", "-x", "http://127.0.0.1:3128", "http://origin.test:8080/via"],
    );
    let e = Echo::parse(&body(&o));
    assert_eq!(e.field("target"), "/via");
    assert_eq!(e.header("host"), Some("origin.test:8080"));
    assert_eq!(sa(e.field("peer")).ip().to_string(), "10.210.0.1");
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    let file_log = || std::fs::read_to_string(s.dir().join("access.log")).unwrap_or_default();
    let end = Instant::now() + Duration::from_secs(10);
    while !(s.stdout().contains("http://origin.test:8080/via") && file_log().contains("http://origin.test:8080/via")) {
        assert!(
            Instant::now() < end,
            "no access log line: {:?} {:?}",
            s.stdout(),
            file_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // the proxy listens on a's loopback only, not on b's
    assert!(net.wait_port(&a, sa("127.0.0.1:3128"), Duration::from_secs(1)));
    assert!(
        net.connect_from(&b, sa("127.0.0.1:3128"), Duration::from_secs(1))
            .is_err()
    );

    s.stop();
    s.stop();
    s.signal(libc::SIGKILL); // a no-op once reaped: the PID may belong to someone else by now
    assert!(s.exit_status().is_some_and(|st| st.success()), "{:?}", s.exit_status());
    drop(s);

    // a stray process left in `a` is killed before the namespaces go
    let stray = net.command(&a, "sleep").arg("600").spawn().unwrap();
    wait_inside(stray.id() as i32, &a);

    let names = net.namespaces().to_vec();
    assert_eq!(names, [a.clone(), b.clone()]);
    assert!(names.iter().all(|n| n.starts_with(&format!("{}-", net.prefix()))));
    assert!(names.iter().all(|n| listed_namespaces().contains(n)));
    let t2 = Instant::now();
    drop(origin);
    drop(origin6);
    drop(net);
    let t_drop = t2.elapsed();
    let left: Vec<String> = listed_namespaces().into_iter().filter(|n| names.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_killed(stray);
    eprintln!(
        "netns smoke: setup {t_setup:?}, sekisho ready {t_sekisho:?}, cleanup {t_drop:?}, total {:?}",
        t0.elapsed()
    );
}

#[test]
fn cleanup_when_the_test_panics() {
    let mut made = Vec::new();
    let mut stray = None;
    let Some(net) = Net::new() else { return };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut net = net; // dropped by the unwinding
        let p = net.ns("p");
        let q = net.ns("q");
        net.veth(&p, "10.211.0.1/30", &q, "10.211.0.2/30");
        made = net.namespaces().to_vec();
        let child = net.command(&p, "sleep").arg("600").spawn().unwrap();
        wait_inside(child.id() as i32, &p);
        stray = Some(child);
        let _listener = net.tcp_listener_in(&q, sa("10.211.0.2:9"));
        panic!("deliberate panic with namespaces {made:?} alive");
    }));
    assert!(r.is_err());
    assert_eq!(made.len(), 2);
    let left: Vec<String> = listed_namespaces().into_iter().filter(|n| made.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_killed(stray.unwrap());
}
