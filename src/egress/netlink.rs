//! Applying a policy-routing plan to this host through rtnetlink.
//!
//! `sekisho routes --apply` turns the egress plan (a routing table per uplink,
//! and the rules that select those tables) into [`Item`]s and adds each one
//! here; `sekisho routes --remove` deletes them again. Every entry sekisho adds
//! carries its own routing protocol number (`proto`), and removal asks the
//! kernel to match on it, so an equal-looking route or rule that somebody else
//! added is never touched.
//!
//! Adding uses `NLM_F_CREATE | NLM_F_EXCL`, so an entry is never duplicated or
//! replaced. The kernel answers `EEXIST` whenever the entry's *slot* is taken,
//! though: for an IPv4 route that is the same table, destination, TOS and
//! metric, whatever the gateway, device or protocol. So an `EEXIST` is checked
//! against a dump of the routes (or rules): only an identical entry with our
//! protocol is [`Change::AlreadyPresent`]; anything else is reported as a
//! conflict, naming what is in the way.
//!
//! Plain blocking socket calls: this runs from the CLI, not inside the
//! daemon's runtime. Linux only, like the rest of the project.

use std::ffi::CString;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use ipnet::IpNet;

// Constants from the Linux UAPI headers (linux/netlink.h, linux/rtnetlink.h,
// linux/fib_rules.h). Spelled out here because the libc crate does not carry
// all of them; the values are part of the kernel's stable ABI.

/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Size of `struct rtmsg` and of `struct fib_rule_hdr` (both 12 bytes).
const FAMILY_HDRLEN: usize = 12;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
/// On an NLMSG_ERROR: only the header of our request is echoed back.
const NLM_F_CAPPED: u16 = 0x100;
/// On an NLMSG_ERROR: extended-ACK attributes follow the echoed request.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Extended-ACK attribute: the kernel's error message, a C string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Attribute type bits that are flags (nested, byte order), not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;

const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
/// `rtm_table` / `fib_rule_hdr.table` when the real id is in the u32 attribute.
const RT_TABLE_UNSPEC: u8 = 0;
/// Metric the kernel gives an IPv6 route added without RTA_PRIORITY.
const IP6_RT_PRIO_USER: u32 = 1024;

const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_SUPPRESS_IFGROUP: u16 = 13;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FRA_PROTOCOL: u16 = 21;
const FR_ACT_TO_TBL: u8 = 1;
/// `fib_rule_hdr.flags`: the rule matches when its selectors do *not* ("ip rule add not ...").
const FIB_RULE_INVERT: u32 = 0x2;

/// How long to wait for the kernel's answer before giving up.
const RECV_TIMEOUT_SECS: libc::time_t = 10;

/// One entry of a routing plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// `ip route add DST [via GW] dev DEV [src SRC] [scope link] table T proto P`
    /// (added exclusively: an existing route is never replaced).
    Route {
        table: u32,
        dst: IpNet,
        gateway: Option<IpAddr>,
        dev: String,
        prefsrc: Option<IpAddr>,
        scope_link: bool,
        /// `ip route add local ...`: deliver to this host (scope host).
        local: bool,
    },
    /// `ip rule add [from NET] [fwmark M] lookup T priority P proto P`
    Rule {
        priority: u32,
        from: Option<IpNet>,
        fwmark: Option<u32>,
        table: u32,
        ipv6: bool,
    },
}

impl Item {
    /// The equivalent `ip` command (for `sekisho routes` printing), e.g.
    /// `ip route add 10.1.0.0/24 dev up1 src 10.1.0.2 scope link table 101 proto 157`
    /// `ip route add default via 10.1.0.1 dev up1 table 101 proto 157`
    /// `ip rule add from 10.1.0.2 lookup 101 priority 1000 proto 157`
    /// `ip -6 rule add fwmark 0x10 lookup 101 priority 1001 proto 157`
    /// (`ip -6` for IPv6 entries; `default` for a /0 destination; a host /32
    /// or /128 `from` without the prefix length).
    pub fn command(&self, proto: u8) -> String {
        self.text("add", proto)
    }

    /// The matching removal command (`ip route del ...` / `ip rule del ...`
    /// with the same selectors and proto).
    pub fn undo_command(&self, proto: u8) -> String {
        self.text("del", proto)
    }

    fn text(&self, verb: &str, proto: u8) -> String {
        let mut s = String::new();
        match self {
            Item::Route {
                table,
                dst,
                gateway,
                dev,
                prefsrc,
                scope_link,
                local,
            } => {
                let six = if dst.addr().is_ipv6() { " -6" } else { "" };
                let kind = if *local { "local " } else { "" };
                let _ = write!(s, "ip{six} route {verb} {kind}{}", dst_text(dst));
                if let Some(gw) = gateway {
                    let _ = write!(s, " via {gw}");
                }
                let _ = write!(s, " dev {dev}");
                if let Some(src) = prefsrc {
                    let _ = write!(s, " src {src}");
                }
                if *scope_link {
                    s.push_str(" scope link");
                }
                let _ = write!(s, " table {table} proto {proto}");
            }
            Item::Rule {
                priority,
                from,
                fwmark,
                table,
                ipv6,
            } => {
                let v6 = *ipv6 || from.is_some_and(|n| n.addr().is_ipv6());
                let six = if v6 { " -6" } else { "" };
                let _ = write!(s, "ip{six} rule {verb}");
                if let Some(net) = from {
                    let _ = write!(s, " from {}", from_text(net));
                }
                if let Some(mark) = fwmark {
                    let _ = write!(s, " fwmark {mark:#x}");
                }
                let _ = write!(s, " lookup {table} priority {priority} proto {proto}");
            }
        }
        s
    }

    /// The item's address family (AF_INET or AF_INET6), or why its addresses
    /// do not agree on one.
    fn family(&self) -> Result<u8, String> {
        match self {
            Item::Route {
                dst, gateway, prefsrc, ..
            } => {
                let v6 = dst.addr().is_ipv6();
                let name = if v6 { "IPv6" } else { "IPv4" };
                if let Some(gw) = gateway.filter(|a| a.is_ipv6() != v6) {
                    return Err(format!("gateway {gw} is not an {name} address like the destination"));
                }
                if let Some(src) = prefsrc.filter(|a| a.is_ipv6() != v6) {
                    return Err(format!("source {src} is not an {name} address like the destination"));
                }
                if dst.trunc() != *dst {
                    return Err(format!(
                        "destination {dst} has host bits set (the network is {})",
                        dst.trunc()
                    ));
                }
                Ok(family_byte(v6))
            }
            Item::Rule { from, ipv6, .. } => match from {
                Some(net) if net.addr().is_ipv4() && *ipv6 => {
                    Err(format!("`from {net}` is an IPv4 network in an IPv6 rule"))
                }
                Some(net) if net.trunc() != *net => Err(format!(
                    "`from {net}` has host bits set (the network is {})",
                    net.trunc()
                )),
                Some(net) => Ok(family_byte(net.addr().is_ipv6())),
                None => Ok(family_byte(*ipv6)),
            },
        }
    }
}

/// A route destination as `ip` spells it: `default` for a /0.
fn dst_text(dst: &IpNet) -> String {
    if dst.prefix_len() == 0 {
        "default".to_string()
    } else {
        dst.to_string()
    }
}

/// A rule's `from` as `ip` spells it: `all` for a /0, a bare address for a host.
fn from_text(net: &IpNet) -> String {
    if net.prefix_len() == 0 {
        "all".to_string()
    } else if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn family_byte(v6: bool) -> u8 {
    if v6 { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 }
}

/// The 8-bit table field of `rtmsg` / `fib_rule_hdr`: ids above 255 only fit
/// in the u32 attribute, which is always sent too.
fn short_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(RT_TABLE_UNSPEC)
}

/// What `add` or `remove` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    AlreadyPresent,
    Removed,
    NotPresent,
}

/// A NETLINK_ROUTE socket for adding and removing routes and rules.
pub struct Netlink {
    fd: RawFd,
    /// Sequence number of the last request; each reply is matched against it.
    seq: u32,
}

impl Netlink {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the fd is owned by the Netlink below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Owned from here: an early return closes the fd.
        let nl = Netlink { fd, seq: 0 };
        // Best effort: error messages from the kernel (EXT_ACK), and error
        // replies that do not echo our whole request (CAP_ACK). Old kernels
        // without them still work, with terser errors.
        let _ = nl.set_option(libc::SOL_NETLINK, NETLINK_EXT_ACK, &1 as *const libc::c_int, 4);
        let _ = nl.set_option(libc::SOL_NETLINK, NETLINK_CAP_ACK, &1 as *const libc::c_int, 4);
        // The kernel always answers; the timeout only guards against a bug.
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        nl.set_option(
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval,
            std::mem::size_of::<libc::timeval>(),
        )?;
        // SAFETY: an all-zero sockaddr_nl is valid (port id 0: the kernel picks one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(nl)
    }

    /// Adds `item` with routing protocol `proto` (RTM_NEWROUTE / RTM_NEWRULE,
    /// NLM_F_CREATE | NLM_F_EXCL). An identical entry with the same protocol
    /// already there is `AlreadyPresent`; a different entry in its place (say
    /// another default route in the table, or an equal rule with another
    /// protocol) is an error naming it.
    pub fn add(&mut self, item: &Item, proto: u8) -> Result<Change, String> {
        let cmd = item.command(proto);
        let family = item.family().map_err(|e| format!("{cmd}: {e}"))?;
        let oif = match item {
            Item::Route { dev, .. } => match ifindex(dev) {
                Some(i) => Some(i),
                None => return Err(format!("{cmd}: interface `{dev}` does not exist")),
            },
            Item::Rule { .. } => None,
        };
        self.seq = self.seq.wrapping_add(1);
        let req = request(item, family, oif, proto, true, self.seq);
        match self.transact(&req) {
            Ok(()) => Ok(Change::Added),
            Err(Failure::Kernel { errno, .. }) if errno == libc::EEXIST => self
                .confirm(item, family, oif, proto)
                .map_err(|e| format!("{cmd}: {e}")),
            Err(f) => Err(format!("{cmd}: {f}")),
        }
    }

    /// Removes `item` (RTM_DELROUTE / RTM_DELRULE) with the same attributes
    /// and protocol `proto`, so an entry someone else added with another
    /// protocol is never removed. Nothing to remove is `NotPresent`, and so is
    /// a route whose interface is gone (the kernel flushed it with the
    /// interface).
    pub fn remove(&mut self, item: &Item, proto: u8) -> Result<Change, String> {
        let cmd = item.undo_command(proto);
        let family = item.family().map_err(|e| format!("{cmd}: {e}"))?;
        let oif = match item {
            Item::Route { dev, .. } => match ifindex(dev) {
                Some(i) => Some(i),
                None => return Ok(Change::NotPresent),
            },
            Item::Rule { .. } => None,
        };
        self.seq = self.seq.wrapping_add(1);
        let req = request(item, family, oif, proto, false, self.seq);
        match self.transact(&req) {
            Ok(()) => Ok(Change::Removed),
            Err(Failure::Kernel { errno, .. }) if errno == libc::ESRCH || errno == libc::ENOENT => {
                Ok(Change::NotPresent)
            }
            Err(f) => Err(format!("{cmd}: {f}")),
        }
    }

    /// After EEXIST: is the entry in the way identical to `item` (with our
    /// protocol)? Then it is `AlreadyPresent`, else the conflict is an error.
    fn confirm(&mut self, item: &Item, family: u8, oif: Option<u32>, proto: u8) -> Result<Change, String> {
        let kind = match item {
            Item::Route { .. } => RTM_GETROUTE,
            Item::Rule { .. } => RTM_GETRULE,
        };
        let entries = self
            .dump(kind, family)
            .map_err(|f| format!("File exists, and listing the existing entries failed: {f}"))?;
        match item {
            Item::Route {
                table,
                dst,
                gateway,
                prefsrc,
                scope_link,
                local,
                ..
            } => {
                let routes: Vec<KernelRoute> = entries.iter().filter_map(|m| KernelRoute::parse(m)).collect();
                let same_slot = |r: &&KernelRoute| {
                    r.table == *table
                        && r.dst_len == dst.prefix_len()
                        && (dst.prefix_len() == 0 || r.dst == Some(dst.addr()))
                        && r.src_len == 0
                        && r.tos == 0
                };
                let v6 = dst.addr().is_ipv6();
                let identical = |r: &&KernelRoute| {
                    r.protocol == proto
                        && r.kind == if *local { RTN_LOCAL } else { RTN_UNICAST }
                        && !r.multipath
                        && r.gateway == *gateway
                        && r.oif == oif
                        && r.prefsrc == *prefsrc
                        // IPv6 routes have no scope: dumps always say universe.
                        && (v6
                            || *local
                            || r.scope == if *scope_link { RT_SCOPE_LINK } else { RT_SCOPE_UNIVERSE })
                        && r.priority == if v6 { IP6_RT_PRIO_USER } else { 0 }
                };
                let slot: Vec<&KernelRoute> = routes.iter().filter(same_slot).collect();
                if slot.iter().any(identical) {
                    Ok(Change::AlreadyPresent)
                } else if let Some(other) = slot.first() {
                    Err(format!(
                        "table {table} already has a different route to {}: {}",
                        dst_text(dst),
                        other.describe()
                    ))
                } else {
                    Err(format!(
                        "File exists, but table {table} shows no route to {}",
                        dst_text(dst)
                    ))
                }
            }
            Item::Rule {
                priority,
                from,
                fwmark,
                table,
                ..
            } => {
                let rules: Vec<KernelRule> = entries.iter().filter_map(|m| KernelRule::parse(m)).collect();
                let src_len = from.map_or(0, |n| n.prefix_len());
                let identical = |r: &&KernelRule| {
                    r.priority == *priority
                        && r.table == *table
                        && r.action == FR_ACT_TO_TBL
                        && r.flags & FIB_RULE_INVERT == 0
                        && r.dst_len == 0
                        && r.tos == 0
                        && r.src_len == src_len
                        && (src_len == 0 || r.src == from.map(|n| n.addr()))
                        && r.fwmark == fwmark.unwrap_or(0)
                        && r.fwmask == if fwmark.is_some() { u32::MAX } else { 0 }
                        && r.protocol == proto
                        && !r.other_selectors
                };
                if rules.iter().any(|r| identical(&r)) {
                    Ok(Change::AlreadyPresent)
                } else if let Some(other) = rules.iter().find(|r| r.priority == *priority) {
                    Err(format!(
                        "a different rule is already at priority {priority}: {}",
                        other.describe()
                    ))
                } else {
                    Err(format!("File exists, but no rule is shown at priority {priority}"))
                }
            }
        }
    }

    /// Sends one request and reads its acknowledgement.
    fn transact(&mut self, req: &[u8]) -> Result<(), Failure> {
        self.send(req)?;
        let seq = self.seq;
        self.replies(seq, |kind, flags, payload| match kind {
            NLMSG_ERROR => Some(parse_ack(flags, payload)),
            _ => None,
        })
    }

    /// Dumps all routes or rules (`kind` RTM_GETROUTE / RTM_GETRULE) of one
    /// family; returns each message's payload (family header + attributes).
    fn dump(&mut self, kind: u16, family: u8) -> Result<Vec<Vec<u8>>, Failure> {
        self.seq = self.seq.wrapping_add(1);
        let header = [family, 0, 0, 0, 0, 0, 0, 0];
        let req = Request::new(kind, NLM_F_REQUEST | NLM_F_DUMP, self.seq, &header).finish();
        self.send(&req)?;
        let seq = self.seq;
        let mut out = Vec::new();
        self.replies(seq, |kind, flags, payload| match kind {
            NLMSG_DONE => Some(Ok(())),
            NLMSG_ERROR => match parse_ack(flags, payload) {
                // An ACK ends a dump only on error; be lenient about a zero one.
                Ok(()) => Some(Ok(())),
                Err(f) => Some(Err(f)),
            },
            _ => {
                out.push(payload.to_vec());
                None
            }
        })?;
        Ok(out)
    }

    fn send(&self, req: &[u8]) -> Result<(), Failure> {
        // SAFETY: an all-zero sockaddr_nl is valid; port id 0 is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: req is a live buffer of req.len() bytes; kernel is a sockaddr_nl.
            let n = unsafe {
                libc::sendto(
                    self.fd,
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&kernel as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Failure::Io(e));
            }
        }
    }

    /// Reads messages answering request `seq` and hands each (type, flags,
    /// payload) to `each` until it returns a result. Messages from anyone but
    /// the kernel, or for another sequence number, are skipped.
    fn replies<T>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(u16, u16, &[u8]) -> Option<Result<T, Failure>>,
    ) -> Result<T, Failure> {
        // Dumps come in datagrams of up to 32 KiB; twice that is plenty.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: an all-zero sockaddr_nl is valid.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: buf is writable for buf.len() bytes; from/from_len describe a sockaddr_nl.
            // MSG_TRUNC makes the call return the datagram's real length.
            let n = unsafe {
                libc::recvfrom(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(Failure::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no answer from the kernel",
                        )));
                    }
                    _ => return Err(Failure::Io(e)),
                }
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(Failure::Io(io::Error::other("netlink answer larger than the buffer")));
            }
            if from.nl_pid != 0 {
                continue;
            }
            let mut rest = &buf[..n];
            while let Some((hdr, payload, next)) = split_message(rest) {
                rest = next;
                if hdr.seq != seq {
                    continue;
                }
                if let Some(result) = each(hdr.kind, hdr.flags, payload) {
                    return result;
                }
            }
        }
    }

    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: *const T, len: usize) -> io::Result<()> {
        // SAFETY: value points to a live T of len bytes (callers pass &local).
        let rc = unsafe { libc::setsockopt(self.fd, level, name, value.cast(), len as libc::socklen_t) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed only here.
        unsafe { libc::close(self.fd) };
    }
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    /// The kernel refused: its errno and, with extended ACKs, its message.
    Kernel { errno: i32, message: Option<String> },
    /// The socket itself failed.
    Io(io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Kernel { errno, message } => {
                f.write_str(&errno_text(*errno))?;
                if *errno == libc::EPERM {
                    f.write_str(" (needs CAP_NET_ADMIN)")?;
                }
                if let Some(m) = message {
                    write!(f, " (kernel: {m})")?;
                }
                Ok(())
            }
            Failure::Io(e) => write!(f, "netlink: {e}"),
        }
    }
}

/// The C library's text for `errno`, without std's " (os error N)" suffix.
fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// The interface index of `dev`, or None when there is no such interface.
fn ifindex(dev: &str) -> Option<u32> {
    let name = CString::new(dev).ok()?;
    // SAFETY: name is a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// The name of interface `index`, or the number when it has none.
fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{index}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The add (`add` true) or delete request for `item`.
fn request(item: &Item, family: u8, oif: Option<u32>, proto: u8, add: bool, seq: u32) -> Vec<u8> {
    let flags = if add {
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    } else {
        NLM_F_REQUEST | NLM_F_ACK
    };
    match item {
        Item::Route {
            table,
            dst,
            gateway,
            prefsrc,
            scope_link,
            local,
            ..
        } => {
            // Deleting with scope "nowhere" matches a route of any scope.
            let scope = match (add, scope_link, local) {
                (false, _, _) => RT_SCOPE_NOWHERE,
                (true, _, true) => RT_SCOPE_HOST,
                (true, true, false) => RT_SCOPE_LINK,
                (true, false, false) => RT_SCOPE_UNIVERSE,
            };
            let rtype = if *local { RTN_LOCAL } else { RTN_UNICAST };
            // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
            // scope, type (then flags, 0).
            let table8 = short_table(*table);
            let header = [family, dst.prefix_len(), 0, 0, table8, proto, scope, rtype];
            let kind = if add { RTM_NEWROUTE } else { RTM_DELROUTE };
            let mut req = Request::new(kind, flags, seq, &header);
            if dst.prefix_len() > 0 {
                req.addr(RTA_DST, dst.addr());
            }
            if let Some(gw) = gateway {
                req.addr(RTA_GATEWAY, *gw);
            }
            if let Some(i) = oif {
                req.attr(RTA_OIF, &i.to_ne_bytes());
            }
            if let Some(src) = prefsrc {
                req.addr(RTA_PREFSRC, *src);
            }
            req.attr(RTA_TABLE, &table.to_ne_bytes());
            req.finish()
        }
        Item::Rule {
            priority,
            from,
            fwmark,
            table,
            ..
        } => {
            let src_len = from.map_or(0, |n| n.prefix_len());
            // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1,
            // res2, action (then flags, 0).
            let header = [family, 0, src_len, 0, short_table(*table), 0, 0, FR_ACT_TO_TBL];
            let kind = if add { RTM_NEWRULE } else { RTM_DELRULE };
            let mut req = Request::new(kind, flags, seq, &header);
            if let Some(net) = from.filter(|n| n.prefix_len() > 0) {
                req.addr(FRA_SRC, net.addr());
            }
            if let Some(mark) = fwmark {
                req.attr(FRA_FWMARK, &mark.to_ne_bytes());
                req.attr(FRA_FWMASK, &u32::MAX.to_ne_bytes());
            }
            req.attr(FRA_PRIORITY, &priority.to_ne_bytes());
            req.attr(FRA_TABLE, &table.to_ne_bytes());
            req.attr(FRA_PROTOCOL, &[proto]);
            req.finish()
        }
    }
}

/// A netlink message being built: header, family header, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    /// `header` is the first 8 bytes of the `rtmsg` / `fib_rule_hdr`; its
    /// u32 `flags` that follow are always 0 here.
    fn new(kind: u16, flags: u16, seq: u32, header: &[u8; 8]) -> Request {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: let the kernel fill it
        buf.extend_from_slice(header);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Request { buf }
    }

    /// Appends one attribute, padded to 4 bytes (NLA_ALIGN).
    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn addr(&mut self, kind: u16, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => self.attr(kind, &a.octets()),
            IpAddr::V6(a) => self.attr(kind, &a.octets()),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The fields of a received `nlmsghdr` that matter here.
struct Header {
    kind: u16,
    flags: u16,
    seq: u32,
}

/// Splits the first message off `buf`: its header, its payload, and the rest
/// of the buffer. None at the end or on a malformed length.
fn split_message(buf: &[u8]) -> Option<(Header, &[u8], &[u8])> {
    let len = read_u32(buf, 0)? as usize;
    if len < NLMSG_HDRLEN || len > buf.len() {
        return None;
    }
    let hdr = Header {
        kind: read_u16(buf, 4)?,
        flags: read_u16(buf, 6)?,
        seq: read_u32(buf, 8)?,
    };
    let next = align4(len).min(buf.len());
    Some((hdr, &buf[NLMSG_HDRLEN..len], &buf[next..]))
}

/// Reads an NLMSG_ERROR payload (`struct nlmsgerr`): error 0 is success.
fn parse_ack(flags: u16, payload: &[u8]) -> Result<(), Failure> {
    let Some(code) = read_u32(payload, 0).map(|c| c as i32) else {
        return Err(Failure::Io(io::Error::other("short netlink error message")));
    };
    if code == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // After the error code comes our request: its header only when capped,
        // else all of it; then the extended-ACK attributes.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            read_u32(payload, 4).map_or(NLMSG_HDRLEN, |l| align4(l as usize))
        };
        if let Some(tlvs) = payload.get(4 + echoed..) {
            message = attributes(tlvs)
                .into_iter()
                .find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)
                .map(|(_, data)| String::from_utf8_lossy(data).trim_end_matches('\0').to_string())
                .filter(|m| !m.is_empty());
        }
    }
    Err(Failure::Kernel {
        errno: code.wrapping_neg(),
        message,
    })
}

/// The attributes in `buf` as (type, data) pairs; stops at a malformed one.
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (read_u16(buf, 0), read_u16(buf, 2)) {
        let len = len as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind & NLA_TYPE_MASK, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// An attribute holding exactly one u32.
fn attr_u32(data: &[u8]) -> Option<u32> {
    (data.len() == 4).then(|| read_u32(data, 0)).flatten()
}

/// An attribute holding an address of the family (4 or 16 bytes).
fn attr_addr(data: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(data) {
        Some(IpAddr::V4(Ipv4Addr::from(a)))
    } else if let Ok(a) = <[u8; 16]>::try_from(data) {
        Some(IpAddr::V6(Ipv6Addr::from(a)))
    } else {
        None
    }
}

/// One route from a dump: the fields that decide whether it is an item's.
struct KernelRoute {
    table: u32,
    dst_len: u8,
    src_len: u8,
    tos: u8,
    protocol: u8,
    scope: u8,
    kind: u8,
    dst: Option<IpAddr>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    prefsrc: Option<IpAddr>,
    priority: u32,
    multipath: bool,
}

impl KernelRoute {
    /// Parses an RTM_NEWROUTE payload (`struct rtmsg` + attributes).
    fn parse(payload: &[u8]) -> Option<KernelRoute> {
        let h = payload.get(..FAMILY_HDRLEN)?;
        let mut r = KernelRoute {
            table: u32::from(h[4]),
            dst_len: h[1],
            src_len: h[2],
            tos: h[3],
            protocol: h[5],
            scope: h[6],
            kind: h[7],
            dst: None,
            gateway: None,
            oif: None,
            prefsrc: None,
            priority: 0,
            multipath: false,
        };
        for (kind, data) in attributes(&payload[FAMILY_HDRLEN..]) {
            match kind {
                RTA_TABLE => r.table = attr_u32(data).unwrap_or(r.table),
                RTA_DST => r.dst = attr_addr(data),
                RTA_GATEWAY => r.gateway = attr_addr(data),
                RTA_OIF => r.oif = attr_u32(data),
                RTA_PREFSRC => r.prefsrc = attr_addr(data),
                RTA_PRIORITY => r.priority = attr_u32(data).unwrap_or(0),
                RTA_MULTIPATH => r.multipath = true,
                _ => {}
            }
        }
        Some(r)
    }

    /// The route roughly as `ip route show` prints it.
    fn describe(&self) -> String {
        let mut s = match self.dst {
            Some(a) if self.dst_len > 0 => format!("{a}/{}", self.dst_len),
            _ => "default".to_string(),
        };
        if let Some(gw) = self.gateway {
            let _ = write!(s, " via {gw}");
        }
        if self.multipath {
            s.push_str(" (multipath)");
        }
        if let Some(i) = self.oif {
            let _ = write!(s, " dev {}", ifname(i));
        }
        let _ = write!(s, " proto {}", self.protocol);
        if self.scope == RT_SCOPE_LINK {
            s.push_str(" scope link");
        }
        if let Some(src) = self.prefsrc {
            let _ = write!(s, " src {src}");
        }
        if self.priority != 0 {
            let _ = write!(s, " metric {}", self.priority);
        }
        s
    }
}

/// One rule from a dump: the fields that decide whether it is an item's.
struct KernelRule {
    dst_len: u8,
    src_len: u8,
    tos: u8,
    table: u32,
    action: u8,
    flags: u32,
    src: Option<IpAddr>,
    priority: u32,
    fwmark: u32,
    fwmask: u32,
    protocol: u8,
    /// Any selector or option sekisho never sets (iif, oif, dst, uid range,
    /// ports, goto, suppress_*, ...): such a rule is not one of ours.
    other_selectors: bool,
}

impl KernelRule {
    /// Parses an RTM_NEWRULE payload (`struct fib_rule_hdr` + attributes).
    fn parse(payload: &[u8]) -> Option<KernelRule> {
        let h = payload.get(..FAMILY_HDRLEN)?;
        let mut r = KernelRule {
            dst_len: h[1],
            src_len: h[2],
            tos: h[3],
            table: u32::from(h[4]),
            action: h[7],
            flags: read_u32(h, 8)?,
            src: None,
            priority: 0,
            fwmark: 0,
            fwmask: 0,
            protocol: 0,
            other_selectors: false,
        };
        for (kind, data) in attributes(&payload[FAMILY_HDRLEN..]) {
            match kind {
                FRA_SRC => r.src = attr_addr(data),
                FRA_PRIORITY => r.priority = attr_u32(data).unwrap_or(0),
                FRA_FWMARK => r.fwmark = attr_u32(data).unwrap_or(0),
                FRA_FWMASK => r.fwmask = attr_u32(data).unwrap_or(0),
                FRA_TABLE => r.table = attr_u32(data).unwrap_or(r.table),
                FRA_PROTOCOL => r.protocol = data.first().copied().unwrap_or(0),
                // Always dumped; "unset" is all ones.
                FRA_SUPPRESS_PREFIXLEN | FRA_SUPPRESS_IFGROUP => {
                    if attr_u32(data) != Some(u32::MAX) {
                        r.other_selectors = true;
                    }
                }
                _ => r.other_selectors = true,
            }
        }
        Some(r)
    }

    /// The rule roughly as `ip rule show` prints it.
    fn describe(&self) -> String {
        let mut s = format!("{}: from ", self.priority);
        match self.src {
            Some(a) if self.src_len > 0 => {
                let _ = write!(s, "{a}/{}", self.src_len);
            }
            _ => s.push_str("all"),
        }
        if self.fwmark != 0 || self.fwmask != 0 {
            let _ = write!(s, " fwmark {:#x}/{:#x}", self.fwmark, self.fwmask);
        }
        if self.action == FR_ACT_TO_TBL {
            let _ = write!(s, " lookup {}", self.table);
        } else {
            let _ = write!(s, " action {}", self.action);
        }
        let _ = write!(s, " proto {}", self.protocol);
        if self.other_selectors || self.flags & FIB_RULE_INVERT != 0 || self.dst_len != 0 || self.tos != 0 {
            s.push_str(" (with further selectors)");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const PROTO: u8 = 157;

    fn route(table: u32, dst: &str, gateway: Option<&str>, dev: &str, prefsrc: Option<&str>, scope_link: bool) -> Item {
        Item::Route {
            table,
            dst: dst.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            dev: dev.to_string(),
            prefsrc: prefsrc.map(|s| s.parse().unwrap()),
            scope_link,
            local: false,
        }
    }

    fn rule(priority: u32, from: Option<&str>, fwmark: Option<u32>, table: u32, ipv6: bool) -> Item {
        Item::Rule {
            priority,
            from: from.map(|f| f.parse().unwrap()),
            fwmark,
            table,
            ipv6,
        }
    }

    #[test]
    fn route_commands() {
        let link = route(101, "10.1.0.0/24", None, "up1", Some("10.1.0.2"), true);
        assert_eq!(
            link.command(PROTO),
            "ip route add 10.1.0.0/24 dev up1 src 10.1.0.2 scope link table 101 proto 157"
        );
        assert_eq!(
            link.undo_command(PROTO),
            "ip route del 10.1.0.0/24 dev up1 src 10.1.0.2 scope link table 101 proto 157"
        );
        let default = route(101, "0.0.0.0/0", Some("10.1.0.1"), "up1", None, false);
        assert_eq!(
            default.command(PROTO),
            "ip route add default via 10.1.0.1 dev up1 table 101 proto 157"
        );
        assert_eq!(
            default.undo_command(PROTO),
            "ip route del default via 10.1.0.1 dev up1 table 101 proto 157"
        );
        let v6 = route(1000, "::/0", Some("fe80::1"), "up2", Some("2001:db8::2"), false);
        assert_eq!(
            v6.command(7),
            "ip -6 route add default via fe80::1 dev up2 src 2001:db8::2 table 1000 proto 7"
        );
        let v6_net = route(102, "2001:db8:1::/48", None, "up2", None, true);
        assert_eq!(
            v6_net.undo_command(PROTO),
            "ip -6 route del 2001:db8:1::/48 dev up2 scope link table 102 proto 157"
        );
    }

    #[test]
    fn rule_commands() {
        let from = rule(1000, Some("10.1.0.2/32"), None, 101, false);
        assert_eq!(
            from.command(PROTO),
            "ip rule add from 10.1.0.2 lookup 101 priority 1000 proto 157"
        );
        assert_eq!(
            from.undo_command(PROTO),
            "ip rule del from 10.1.0.2 lookup 101 priority 1000 proto 157"
        );
        let mark6 = rule(1001, None, Some(0x10), 101, true);
        assert_eq!(
            mark6.command(PROTO),
            "ip -6 rule add fwmark 0x10 lookup 101 priority 1001 proto 157"
        );
        assert_eq!(
            mark6.undo_command(PROTO),
            "ip -6 rule del fwmark 0x10 lookup 101 priority 1001 proto 157"
        );
        // A v6 `from` makes the rule IPv6 even without the flag; a network keeps its length.
        let net6 = rule(1002, Some("2001:db8::/64"), Some(1), 300, false);
        assert_eq!(
            net6.command(PROTO),
            "ip -6 rule add from 2001:db8::/64 fwmark 0x1 lookup 300 priority 1002 proto 157"
        );
        let host6 = rule(1003, Some("2001:db8::2/128"), None, 300, true);
        assert_eq!(
            host6.command(PROTO),
            "ip -6 rule add from 2001:db8::2 lookup 300 priority 1003 proto 157"
        );
        let net4 = rule(1004, Some("10.2.0.0/16"), None, 5, false);
        assert_eq!(
            net4.command(PROTO),
            "ip rule add from 10.2.0.0/16 lookup 5 priority 1004 proto 157"
        );
    }

    #[test]
    fn mismatched_families_and_host_bits_are_errors() {
        let bad = [
            route(1, "10.0.0.0/8", Some("fe80::1"), "lo", None, false),
            route(1, "::/0", None, "lo", Some("10.0.0.1"), false),
            route(1, "10.0.0.1/8", None, "lo", None, false),
            rule(1, Some("10.0.0.1/32"), None, 1, true),
            rule(1, Some("10.0.0.1/8"), None, 1, false),
        ];
        for item in &bad {
            assert!(item.family().is_err(), "{item:?}");
        }
        assert_eq!(rule(1, None, Some(1), 1, true).family(), Ok(libc::AF_INET6 as u8));
        assert_eq!(rule(1, Some("::/0"), None, 1, false).family(), Ok(libc::AF_INET6 as u8));
    }

    #[test]
    fn wire_format() {
        let req = request(
            &rule(1177, Some("10.77.0.2/32"), Some(0x17), 300, false),
            2,
            None,
            157,
            true,
            9,
        );
        assert_eq!(req.len() % 4, 0);
        assert_eq!(read_u32(&req, 0), Some(req.len() as u32));
        assert_eq!(read_u16(&req, 4), Some(RTM_NEWRULE));
        assert_eq!(read_u32(&req, 8), Some(9));
        let hdr = &req[NLMSG_HDRLEN..NLMSG_HDRLEN + FAMILY_HDRLEN];
        // table 300 does not fit the u8 field: unspec there, u32 attribute instead.
        assert_eq!(hdr[..8], [2, 0, 32, 0, 0, 0, 0, FR_ACT_TO_TBL]);
        let attrs = attributes(&req[NLMSG_HDRLEN + FAMILY_HDRLEN..]);
        let kinds: Vec<u16> = attrs.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [FRA_SRC, FRA_FWMARK, FRA_FWMASK, FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL]
        );
        assert_eq!(attrs[0].1, [10, 77, 0, 2]);
        assert_eq!(attr_u32(attrs[4].1), Some(300));
        assert_eq!(attrs[5].1, [157]);
        // Truncated or garbage input never panics.
        for cut in 0..req.len() {
            let _ = split_message(&req[..cut]);
            let _ = attributes(&req[cut..]);
            let _ = KernelRule::parse(&req[cut..]);
            let _ = KernelRoute::parse(&req[cut..]);
            let _ = parse_ack(NLM_F_ACK_TLVS, &req[cut..]);
        }
    }

    /// Runs `ip` with `args`; its stdout, or its stderr as the error.
    fn try_ip(args: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .map_err(|e| format!("ip {args}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn ip(args: &str) -> String {
        try_ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// How many lines of `text` contain `needle`, whitespace squeezed to single spaces.
    fn count(text: &str, needle: &str) -> usize {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Everything sekisho-owned the kernel shows, as one string.
    fn state() -> String {
        [
            "rule show",
            "-6 rule show",
            "route show table 177",
            "-6 route show table 177",
        ]
        .iter()
        .map(|a| format!("# ip {a}\n{}", ip(a)))
        .collect()
    }

    fn skip_or_fail(why: &str) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("kernel netlink test cannot run in CI: {why}");
        }
        eprintln!("skipping the kernel netlink test: {why}");
    }

    /// Adds and removes a real plan in a private network namespace.
    #[test]
    fn kernel_add_remove() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip_or_fail("needs root (CAP_NET_ADMIN in a new network namespace)");
            return;
        }
        // The namespace belongs to this one thread (and the `ip` children it
        // starts): the test process's own network is never touched.
        let worker = std::thread::spawn(|| {
            // SAFETY: unshare only changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                skip_or_fail(&format!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error()));
                return;
            }
            if let Err(e) = try_ip("-V") {
                skip_or_fail(&format!("iproute2 is needed: {e}"));
                return;
            }
            in_private_netns();
        });
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }

    fn in_private_netns() {
        // A dummy interface where the kernel has the module, else a veth pair.
        if try_ip("link add t0 type dummy").is_err() {
            ip("link add t0 type veth peer name t0p");
            ip("link set t0p up");
        }
        ip("link set t0 up");
        ip("addr add 10.77.0.2/24 dev t0");
        ip("-6 addr add fd77::2/64 dev t0 nodad");

        let mut nl = Netlink::open().expect("netlink socket");
        let items = [
            route(177, "10.77.0.0/24", None, "t0", Some("10.77.0.2"), true),
            route(177, "0.0.0.0/0", Some("10.77.0.1"), "t0", None, false),
            route(177, "::/0", Some("fd77::1"), "t0", None, false),
            rule(1177, Some("10.77.0.2/32"), None, 177, false),
            rule(1178, None, Some(0x17), 177, false),
            rule(1177, Some("fd77::2/128"), None, 177, true),
            rule(1178, None, Some(0x17), 177, true),
        ];
        // What iproute2 shows for each item, in the same order.
        let shown = [
            "10.77.0.0/24 dev t0 proto 157 scope link src 10.77.0.2",
            "default via 10.77.0.1 dev t0 proto 157",
            "default via fd77::1 dev t0 proto 157",
            "1177: from 10.77.0.2 lookup 177 proto 157",
            "1178: from all fwmark 0x17 lookup 177 proto 157",
            "1177: from fd77::2 lookup 177 proto 157",
            "1178: from all fwmark 0x17 lookup 177 proto 157",
        ];
        let expect_once = |state: &str| {
            // The two fwmark rules print the same, once in each family's listing.
            for (i, line) in shown.iter().enumerate() {
                let want = if i == 4 || i == 6 { 2 } else { 1 };
                assert_eq!(count(state, line), want, "`{line}` in\n{state}");
            }
        };

        for item in &items {
            assert_eq!(nl.add(item, PROTO), Ok(Change::Added), "{}", item.command(PROTO));
        }
        expect_once(&state());

        // Again: all present, nothing duplicated.
        for item in &items {
            assert_eq!(
                nl.add(item, PROTO),
                Ok(Change::AlreadyPresent),
                "{}",
                item.command(PROTO)
            );
        }
        let after_first = state();
        expect_once(&after_first);

        // A foreign rule equal to ours but for the protocol.
        ip("rule add from 10.77.0.2 lookup 177 priority 1177");
        let foreign_rule = "1177: from 10.77.0.2 lookup 177";
        let rules = ip("rule show");
        assert_eq!(count(&rules, foreign_rule), 2, "{rules}");

        // A foreign route where the plan wants one: a conflict, not "present",
        // and never removed.
        ip("route add 10.77.1.0/24 dev t0 table 177");
        let foreign_route = route(177, "10.77.1.0/24", None, "t0", None, true);
        let err = nl.add(&foreign_route, PROTO).unwrap_err();
        assert!(
            err.starts_with("ip route add 10.77.1.0/24 dev t0 scope link table 177 proto 157: ")
                && err.contains("already has a different route to 10.77.1.0/24"),
            "{err}"
        );
        eprintln!("conflict: {err}");
        assert_eq!(nl.remove(&foreign_route, PROTO), Ok(Change::NotPresent));

        // A missing interface is named; nothing to remove on it.
        let missing = route(177, "10.78.0.0/24", None, "up9", None, true);
        let err = nl.add(&missing, PROTO).unwrap_err();
        assert!(err.ends_with("interface `up9` does not exist"), "{err}");
        assert_eq!(nl.remove(&missing, PROTO), Ok(Change::NotPresent));

        // An unreachable gateway: the kernel's reason is passed on.
        let unreachable = route(178, "0.0.0.0/0", Some("10.99.0.1"), "t0", None, false);
        let err = nl.add(&unreachable, PROTO).unwrap_err();
        assert!(
            err.starts_with("ip route add default via 10.99.0.1 dev t0 table 178 proto 157: "),
            "{err}"
        );
        eprintln!("unreachable gateway: {err}");

        for item in &items {
            assert_eq!(
                nl.remove(item, PROTO),
                Ok(Change::Removed),
                "{}",
                item.undo_command(PROTO)
            );
        }
        let after = state();
        assert_eq!(count(&after, "proto 157"), 0, "{after}");
        assert_eq!(count(&after, foreign_rule), 1, "{after}");
        assert_eq!(count(&after, "10.77.1.0/24 dev t0 scope link"), 1, "{after}");

        for item in &items {
            assert_eq!(
                nl.remove(item, PROTO),
                Ok(Change::NotPresent),
                "{}",
                item.undo_command(PROTO)
            );
        }
        assert_eq!(state(), after);
    }
}
