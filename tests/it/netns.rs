//! The network-namespace harness: for what needs several hosts (client, proxy,
//! upstreams, uplinks), namespaces joined by veth pairs, with sekisho, the echo
//! origin and curl running inside them.
//!
//! Everything a [`Net`] makes is named from a prefix unique to this process and
//! this `Net` (`sk{pid}n{n}`), so tests running in parallel never collide, and is
//! removed when the `Net` is dropped, also when the test panics: first every
//! process still inside one of its namespaces is killed (by PID, found with
//! `ip netns pids`), then the namespaces are deleted (`ip netns del`), which
//! takes their interfaces with them.
//!
//! It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2. Outside CI a
//! missing privilege or tool skips the test with a printed reason; under
//! `CI=true` it fails the test.
//!
//! Traffic stays on loopback and on the addresses inside the namespaces.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::harness::{self, TempDir};

static NETS: AtomicUsize = AtomicUsize::new(0);

/// Namespaces, veth pairs and processes made for one test; everything is
/// removed on drop (processes killed by PID, namespaces deleted with
/// `ip netns del`).
pub struct Net {
    /// `sk{pid}n{n}`: namespaces are `{prefix}-{name}`.
    prefix: String,
    /// `s{pid:x}n{n}`: interface names are `{if_prefix}v{k}a` / `…b` (at most 15 bytes).
    if_prefix: String,
    /// Full names, in creation order.
    namespaces: Vec<String>,
    veths: usize,
}

/// Why this process cannot make namespaces, if it cannot.
fn privilege_problem() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    for (bit, name) in [(12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")] {
        if caps & (1u64 << bit) == 0 {
            return Some(format!("root, but without {name}"));
        }
    }
    None
}

fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `ip args...`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr).trim()
    );
}

/// PIDs of the processes inside namespace `ns`, this process excepted.
fn pids_in(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// SIGKILLs every process inside `ns` until none is left (bounded: 5 s).
fn kill_all_in(ns: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() {
            return;
        }
        if Instant::now() > end {
            eprintln!("netns harness: processes {pids:?} still run in {ns}");
            return;
        }
        for pid in pids {
            // SAFETY: plain kill(2); the PID was just listed as inside our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Net {
    /// `None` (after printing the reason) when this process may not make
    /// namespaces and CI is not `"true"`; panics under `CI=true` when it may
    /// not or `ip` is missing. Tests start with
    /// `let Some(mut net) = Net::new() else { return };`.
    pub fn new() -> Option<Net> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let problem =
            privilege_problem().or_else(|| (!have_tool("ip")).then(|| "`ip` (iproute2) is missing".to_string()));
        if let Some(problem) = problem {
            assert!(
                !ci,
                "the network-namespace tests need root and iproute2 under CI=true: {problem}"
            );
            eprintln!("skipping a network-namespace test: {problem}");
            return None;
        }
        let pid = std::process::id();
        let n = NETS.fetch_add(1, SeqCst);
        Some(Net {
            prefix: format!("sk{pid}n{n}"),
            if_prefix: format!("s{pid:x}n{n}"),
            namespaces: Vec::new(),
            veths: 0,
        })
    }

    /// The prefix of everything this `Net` makes (`sk{pid}n{n}`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full names of the namespaces made so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The full name for `ns`: the short name given to [`Net::ns`] or already a
    /// full name (anything else is used as given).
    fn full(&self, ns: &str) -> String {
        let long = format!("{}-{ns}", self.prefix);
        if self.namespaces.contains(&long) {
            long
        } else {
            ns.to_string()
        }
    }

    /// Creates namespace `<prefix>-<name>` with `lo` up; returns the full name.
    /// The other methods take either that full name or `name`.
    pub fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        assert!(!self.namespaces.contains(&full), "namespace {full} made twice");
        ip(&["netns", "add", &full]);
        self.namespaces.push(full.clone());
        ip(&["-n", &full, "link", "set", "lo", "up"]);
        full
    }

    /// A veth pair between namespaces `a` and `b`, both ends up, each with an
    /// address in CIDR form (`"10.1.0.2/24"`, `"fd00::2/64"`; `""` for none);
    /// returns the two interface names (`{if_prefix}v{k}a`, `…b`).
    pub fn veth(&mut self, a: &str, a_addr: &str, b: &str, b_addr: &str) -> (String, String) {
        let k = self.veths;
        self.veths += 1;
        let a_if = format!("{}v{k}a", self.if_prefix);
        let b_if = format!("{}v{k}b", self.if_prefix);
        self.veth_named(a, &a_if, a_addr, b, &b_if, b_addr);
        (a_if, b_if)
    }

    /// [`Net::veth`] with interface names chosen by the caller (at most 15
    /// bytes; they only need to be unique inside their namespace, since the
    /// pair is created directly inside the namespaces).
    pub fn veth_named(&mut self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let (a, b) = (self.full(a), self.full(b));
        for name in [a_if, b_if] {
            assert!(
                !name.is_empty() && name.len() <= 15,
                "interface name {name:?} must be 1 to 15 bytes"
            );
        }
        ip(&[
            "link", "add", a_if, "netns", &a, "type", "veth", "peer", "name", b_if, "netns", &b,
        ]);
        for (ns, dev, cidr) in [(&a, a_if, a_addr), (&b, b_if, b_addr)] {
            if !cidr.is_empty() {
                self.addr(ns, dev, cidr);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Adds address `cidr` to interface `dev` in `ns` (IPv6 ones with `nodad`,
    /// so that they can be bound at once).
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) {
        let ns = self.full(ns);
        let mut args = vec!["-n", &ns, "addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }

    /// A `Command` for `cmd` inside namespace `ns` (`ip netns exec`, which execs
    /// `cmd` itself: the child's PID is the program's own PID). A process
    /// spawned from it is killed when the `Net` is dropped only once it is
    /// inside the namespace: wait for it (its port, say) before dropping.
    pub fn command(&self, ns: &str, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.full(ns), cmd]);
        c
    }

    /// Runs `cmd args...` inside `ns`, asserting success; returns stdout.
    pub fn run(&self, ns: &str, cmd: &str, args: &[&str]) -> String {
        let o = self.output(ns, cmd, args);
        assert!(
            o.status.success(),
            "`{cmd} {}` in {ns} failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs `cmd args...` inside `ns`; the full output, not asserted.
    pub fn output(&self, ns: &str, cmd: &str, args: &[&str]) -> Output {
        self.command(ns, cmd)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run `{cmd}` in {ns}: {e}"))
    }

    /// Turns on IPv4 and IPv6 forwarding in `ns`.
    pub fn forwarding(&self, ns: &str) {
        self.run(
            ns,
            "sh",
            &[
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
            ],
        );
    }

    /// Runs `f` on a helper thread that has entered namespace `ns`
    /// (setns(CLONE_NEWNET) on /run/netns/<ns>); sockets it makes keep
    /// belonging to that namespace. Other threads are not affected.
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let path = Path::new("/run/netns").join(self.full(ns));
        let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on an open namespace fd; it moves only this
                // short-lived helper thread into the namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// A TCP listener bound to `addr` inside `ns`.
    pub fn tcp_listener_in(&self, ns: &str, addr: SocketAddr) -> TcpListener {
        self.in_ns(ns, || TcpListener::bind(addr))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("bind TCP {addr} in {ns}: {e}"))
    }

    /// A UDP socket bound to `addr` inside `ns`.
    pub fn udp_in(&self, ns: &str, addr: SocketAddr) -> UdpSocket {
        self.in_ns(ns, || UdpSocket::bind(addr))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("bind UDP {addr} in {ns}: {e}"))
    }

    /// A TCP connection made from inside `ns`.
    pub fn connect_from(&self, ns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.in_ns(ns, || TcpStream::connect_timeout(&addr, timeout))
            .and_then(|r| r)
    }

    /// Waits (at most `timeout`) until `addr` accepts connections from inside
    /// `ns`; returns whether it did.
    pub fn wait_port(&self, ns: &str, addr: SocketAddr, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        self.in_ns(ns, || {
            loop {
                let left = end.saturating_duration_since(Instant::now());
                if TcpStream::connect_timeout(&addr, left.clamp(Duration::from_millis(1), Duration::from_millis(500)))
                    .is_ok()
                {
                    return true;
                }
                if Instant::now() >= end {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .unwrap_or(false)
    }

    /// Starts the sekisho binary inside `ns` with this config text (written to
    /// a temporary directory kept by the handle; `{DIR}` in the text becomes
    /// that directory) and waits until `wait_for` accepts connections from
    /// inside `ns`; panics with sekisho's stderr when it does not within 10 s.
    pub fn sekisho(&mut self, ns: &str, config: &str, wait_for: SocketAddr) -> NsSekisho {
        let ns = self.full(ns);
        let dir = TempDir::new();
        let cfg = dir.path("sekisho.toml");
        std::fs::write(&cfg, config.replace("{DIR}", dir.0.to_str().unwrap())).unwrap();
        let child = self
            .command(&ns, harness::bin())
            .args(["run", "-c"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path("stdout")).unwrap())
            .stderr(File::create(dir.path("stderr")).unwrap())
            .spawn()
            .expect("start sekisho in a namespace");
        let mut s = NsSekisho {
            pid: child.id() as i32,
            child: Some(child),
            status: None,
            dir,
        };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sekisho in {ns} exited ({st}) before listening on {wait_for}; stderr:\n{}",
                    s.stderr()
                );
            }
            if self.connect_from(&ns, wait_for, Duration::from_millis(200)).is_ok() {
                return s;
            }
            if Instant::now() > end {
                panic!(
                    "sekisho in {ns} did not listen on {wait_for} within 10 s; stderr:\n{}",
                    s.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The echo origin (harness.rs) listening on `addr` inside `ns`.
    pub fn origin(&self, ns: &str, addr: SocketAddr) -> harness::Origin {
        harness::Origin::from_listener(self.tcp_listener_in(ns, addr), None)
    }

    /// curl inside `ns` with these args (with `--max-time 30`, no curlrc and
    /// no proxy from the environment).
    pub fn curl(&self, ns: &str, args: &[&str]) -> Output {
        harness::require_tool("curl");
        let mut c = self.command(ns, "curl");
        for v in [
            "http_proxy",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ] {
            c.env_remove(v);
        }
        c.args(["-q", "--max-time", "30"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run curl in {ns}: {e}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Processes first: deleting a namespace does not end what runs in it.
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
        }
        for ns in self.namespaces.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "netns harness: `ip netns del {ns}` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("netns harness: `ip netns del {ns}`: {e}"),
            }
        }
    }
}

/// A sekisho running inside a namespace; stopped (SIGTERM, then SIGKILL) when
/// dropped.
pub struct NsSekisho {
    pid: i32,
    /// `None` once reaped: the PID is signalled only while the child is unreaped.
    child: Option<Child>,
    status: Option<ExitStatus>,
    dir: TempDir,
}

impl NsSekisho {
    /// The PID of sekisho itself (`ip netns exec` execs it).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` while the process is not reaped yet.
    pub fn signal(&mut self, sig: i32) {
        if let Some(child) = self.child.as_mut()
            && child.try_wait().is_ok_and(|st| st.is_none())
        {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL; idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(st)) = child.try_wait() {
            self.status = Some(st);
            return;
        }
        // SAFETY: plain kill(2) on our own child, not reaped yet (so the PID is still its).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                self.status = Some(st);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        self.status = child.wait().ok();
    }

    /// How it ended, once stopped (or found exited by `stop`).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path("stderr")).unwrap_or_default()
    }

    /// The temporary directory with the config, stdout and stderr.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for NsSekisho {
    fn drop(&mut self) {
        self.stop();
    }
}
