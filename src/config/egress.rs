//! The egress part of the runtime model: outgoing address rules, source
//! address pools, uplinks (for the routing plan), parent proxies and the PAC
//! file. Rotation counters and parent health live here too, as atomics, so a
//! connection reads them through the one `Arc<Config>` it took at accept.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;

use crate::policy::acl::Rules;

/// `[egress]`, `[[outgoing]]`, `[source_pool.*]`, `[[uplink]]`, `[[parent]]`, `[pac]`.
#[derive(Default)]
pub struct Egress {
    pub source_pools: Vec<SourcePool>,
    /// Ordered; the first rule whose ACLs all match chooses.
    pub outgoing: Vec<OutgoingRule>,
    pub uplinks: Vec<Uplink>,
    pub parents: Vec<Parent>,
    pub parent_select: ParentSelect,
    /// How long a parent that failed is skipped.
    pub parent_retry_after: Duration,
    /// Active TCP checks of every parent at this interval (none when `None`).
    pub parent_check_interval: Option<Duration>,
    /// Requests matching these go straight to the origin, never to a parent.
    pub always_direct: Rules,
    /// Requests matching these go only to parents, never straight.
    pub never_direct: Rules,
    /// Round-robin position among parents.
    pub parent_next: AtomicUsize,
    /// The routing protocol number put on the rules and routes `sekisho routes --apply` adds.
    pub route_protocol: u8,
    /// Transparent pools: the mark put on the servers' answers, and the table
    /// that delivers marked packets to this host.
    pub capture_mark: u32,
    pub capture_table: u32,
    /// On a server behind several balancers: the balancers its answers must go back through.
    pub return_paths: Vec<ReturnPath>,
    pub pac: Pac,
}

/// How a source pool picks an address for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    RoundRobin,
    Random,
    /// The same address for the same user (the client address when there is no user).
    User,
    /// The same address for the same destination host.
    Host,
    /// The same address for the same session key (`NAME-session-KEY` user names),
    /// else as `User`.
    Session,
}

impl Rotation {
    pub fn parse(s: &str) -> Option<Rotation> {
        Some(match s {
            "round-robin" => Rotation::RoundRobin,
            "random" => Rotation::Random,
            "sticky-user" => Rotation::User,
            "sticky-host" => Rotation::Host,
            "sticky-session" => Rotation::Session,
            _ => return None,
        })
    }
}

/// A set of source addresses used in turn.
pub struct SourcePool {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub rotation: Rotation,
    /// Round-robin positions, IPv4 and IPv6 apart.
    pub next: [AtomicUsize; 2],
}

/// Which destination addresses a rule uses, and in what order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Family {
    /// As the resolver returned them.
    #[default]
    Any,
    Ipv4,
    Ipv6,
    PreferIpv4,
    PreferIpv6,
}

impl Family {
    pub fn parse(s: &str) -> Option<Family> {
        Some(match s {
            "any" => Family::Any,
            "ipv4" => Family::Ipv4,
            "ipv6" => Family::Ipv6,
            "prefer-ipv4" => Family::PreferIpv4,
            "prefer-ipv6" => Family::PreferIpv6,
            _ => return None,
        })
    }

    /// Filters and orders candidate addresses.
    pub fn arrange<T: Copy>(self, addrs: &mut Vec<T>, ip: impl Fn(&T) -> IpAddr) {
        match self {
            Family::Any => {}
            Family::Ipv4 => addrs.retain(|a| ip(a).is_ipv4()),
            Family::Ipv6 => addrs.retain(|a| ip(a).is_ipv6()),
            Family::PreferIpv4 => addrs.sort_by_key(|a| ip(a).is_ipv6()),
            Family::PreferIpv6 => addrs.sort_by_key(|a| ip(a).is_ipv4()),
        }
    }
}

/// What an outgoing rule sets on the upstream socket.
#[derive(Debug, Default)]
pub struct Choice {
    /// Source addresses: an index into `source_pools` (single addresses and
    /// uplinks are pools of their own).
    pub pool: Option<usize>,
    /// `SO_BINDTODEVICE`.
    pub interface: Option<String>,
    /// `SO_MARK`.
    pub mark: Option<u32>,
    pub family: Family,
    /// Bind a source address that is not (yet) configured on the host.
    pub freebind: bool,
}

/// `[[outgoing]]`: `match` ACLs -> a choice.
pub struct OutgoingRule {
    /// (index into the ACL table, negated); all must match.
    pub terms: Vec<(usize, bool)>,
    /// The `match` text, for messages.
    pub text: String,
    pub choice: Choice,
}

/// `[[uplink]]`: one link to the outside, for the routing plan.
#[derive(Clone, Debug)]
pub struct Uplink {
    pub name: String,
    pub interface: String,
    /// The host's address on the link, with the link's prefix length.
    pub address: IpNet,
    /// The next hop; none on a point-to-point link (`default dev ppp0`).
    pub gateway: Option<IpAddr>,
    pub table: u32,
    pub mark: Option<u32>,
    /// Priority of the `from` rule; the `fwmark` rule takes the next one.
    pub priority: u32,
}

/// `[[return_path]]`: a balancer in front of this host. Connections that
/// arrive from its MAC address are marked, and their answers routed back
/// through it (connection-mark return routing).
#[derive(Clone, Debug)]
pub struct ReturnPath {
    pub name: String,
    pub mac: [u8; 6],
    pub gateway: IpAddr,
    pub interface: String,
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

/// How a parent is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ParentSelect {
    /// The first one that is up, in order (failover).
    #[default]
    FirstUp,
    RoundRobin,
    /// A hash of the destination host: the same host always goes through the same parent.
    Hash,
}

/// `[[parent]]`: an upstream HTTP proxy.
pub struct Parent {
    pub name: Arc<str>,
    /// Host name or address literal (without brackets).
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` sent to the parent (Basic).
    pub authorization: Option<HeaderValue>,
    /// TLS to the parent.
    pub tls: Option<ParentTls>,
    /// Milliseconds since the process epoch until which the parent is skipped (0: up).
    pub down_until: AtomicU64,
}

/// TLS settings for a parent.
pub struct ParentTls {
    pub config: Arc<tokio_rustls::rustls::ClientConfig>,
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

/// `[pac]`: the proxy auto-config file served on the admin listener.
#[derive(Clone, Debug, Default)]
pub struct Pac {
    /// `host:port` entries, in order (`PROXY a; PROXY b`).
    pub proxies: Vec<String>,
    /// Appended after the proxies (`DIRECT`, or nothing).
    pub fallback: Vec<String>,
    /// Hosts (`name`, `.suffix`) and networks sent `DIRECT`.
    pub direct_domains: Vec<String>,
    pub direct_networks: Vec<IpNet>,
    /// Who may fetch the file (rules of `src` ACLs); everyone by default.
    pub access: Rules,
}
