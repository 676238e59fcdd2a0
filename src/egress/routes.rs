//! The policy-routing plan behind the egress configuration: one routing
//! table per uplink with its on-link and default routes, `from ADDR lookup T`
//! for every source address on that uplink, and `fwmark M lookup T` for its
//! mark. `sekisho routes` prints it as `ip` commands; `--apply` and
//! `--remove` install or undo it through netlink.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Config;
use crate::egress::netlink::Item;

/// The plan, with notes on what it cannot cover.
pub struct Plan {
    /// Per uplink: a heading and its entries, in the order to add them.
    pub sections: Vec<(String, Vec<Item>)>,
    /// Egress settings no uplink routes (printed as comments).
    pub notes: Vec<String>,
    pub protocol: u8,
    /// The nft script `--apply` runs with `nft -f` (the marking of transparent
    /// pools' answers, the connection marks of return paths), when needed.
    pub nft: Option<String>,
    /// Commands for other hosts (the servers, a router): printed, never applied.
    pub elsewhere: Vec<String>,
}

/// The nft table `--apply` creates for transparent pools.
pub const NFT_TABLE: &str = "sekisho_capture";

impl Plan {
    pub fn items(&self) -> impl DoubleEndedIterator<Item = &Item> {
        self.sections.iter().flat_map(|(_, items)| items.iter())
    }
}

/// Builds the plan from the configuration.
pub fn plan(cfg: &Config) -> Plan {
    let e = &cfg.egress;
    let mut sections = Vec::new();
    let mut notes = Vec::new();
    for u in &e.uplinks {
        let v6 = u.address.addr().is_ipv6();
        let mut items = Vec::new();
        if u.address.prefix_len() < u.address.max_prefix_len() {
            // without it, traffic from the uplink's address to its own link
            // would follow the default route of the table
            items.push(Item::Route {
                table: u.table,
                dst: u.address.trunc(),
                gateway: None,
                dev: u.interface.clone(),
                prefsrc: Some(u.address.addr()),
                scope_link: true,
                local: false,
            });
        }
        items.push(Item::Route {
            table: u.table,
            dst: any_net(v6),
            gateway: u.gateway,
            dev: u.interface.clone(),
            prefsrc: None,
            scope_link: u.gateway.is_none(),
            local: false,
        });
        let mut sources = vec![u.address.addr()];
        for p in &e.source_pools {
            for &a in &p.addresses {
                if a != u.address.addr() && u.address.contains(&a) && !sources.contains(&a) {
                    sources.push(a);
                }
            }
        }
        for a in sources {
            items.push(Item::Rule {
                priority: u.priority,
                from: Some(IpNet::from(a)),
                fwmark: None,
                table: u.table,
                ipv6: v6,
            });
        }
        if let Some(m) = u.mark {
            items.push(Item::Rule {
                priority: u.priority + 1,
                from: None,
                fwmark: Some(m),
                table: u.table,
                ipv6: v6,
            });
        }
        let via = u
            .gateway
            .map_or_else(|| "point-to-point".to_string(), |g| format!("via {g}"));
        sections.push((
            format!(
                "uplink {} ({} {}, {via}): table {}",
                u.name, u.interface, u.address, u.table
            ),
            items,
        ));
    }
    let on_uplink = |a: &IpAddr| e.uplinks.iter().any(|u| u.address.contains(a));
    for p in &e.source_pools {
        for a in p.addresses.iter().filter(|a| !on_uplink(a)) {
            notes.push(format!(
                "source address {a} (`{}`) is on no [[uplink]]: it follows the main table",
                p.name
            ));
        }
    }
    for (i, r) in e.outgoing.iter().enumerate() {
        if let Some(m) = r.choice.mark
            && !e.uplinks.iter().any(|u| u.mark == Some(m))
        {
            notes.push(format!(
                "mark {m:#x} of outgoing[{i}] belongs to no [[uplink]]: no fwmark rule for it"
            ));
        }
    }
    let mut nft = None;
    let mut elsewhere = Vec::new();
    transparency(cfg, &mut sections, &mut nft, &mut elsewhere);
    return_paths(cfg, &mut sections, &mut nft);
    Plan {
        sections,
        notes,
        protocol: e.route_protocol,
        nft,
        elsewhere,
    }
}

/// The capture of transparent pools' return traffic on this host, the
/// default route each of their servers needs, and the stateless source
/// rewrite of direct server return.
fn transparency(
    cfg: &Config,
    sections: &mut Vec<(String, Vec<Item>)>,
    nft: &mut Option<String>,
    elsewhere: &mut Vec<String>,
) {
    use crate::config::Mode;
    use crate::config::upstream::SourceMode;
    let e = &cfg.egress;
    let mut marks: Vec<(IpAddr, u16, &'static str)> = Vec::new();
    for l in &cfg.listeners {
        let l4 = if l.mode == Mode::Udp { "udp" } else { "tcp" };
        for p in l.pools() {
            let pool = &cfg.pools[p];
            match pool.source {
                SourceMode::Local => {}
                SourceMode::Client => {
                    for s in &pool.servers {
                        if !marks.contains(&(s.addr.ip(), s.addr.port(), l4)) {
                            marks.push((s.addr.ip(), s.addr.port(), l4));
                        }
                    }
                }
                SourceMode::ClientPort => {
                    let vip = l.bind.ip();
                    for s in &pool.servers {
                        let (ip, port) = (s.addr.ip(), s.addr.port());
                        elsewhere.push(format!(
                            "# direct server return, pool {}: answers from {ip}:{port} must leave with the listener's address {vip}",
                            pool.name
                        ));
                        elsewhere.push(
                            "# with tc (stateless NAT), on the server's interface towards the clients (origin NAT) or on the router (router NAT):".into(),
                        );
                        elsewhere.push("tc qdisc add dev DEV root handle 10: htb".into());
                        elsewhere.push(format!(
                            "tc filter add dev DEV parent 10: protocol ip prio 10 u32 match ip src {ip}/32 match ip sport {port} 0xffff action nat egress {ip}/32 {vip}"
                        ));
                        elsewhere.push("# or with nft, for kernels without act_nat (origin NAT through this host: sysctl net.ipv4.conf.IF.accept_local=1 here):".into());
                        elsewhere.push(format!(
                            "nft add table ip sekisho_dsr; nft 'add chain ip sekisho_dsr post {{ type filter hook postrouting priority 300; }}'; nft add rule ip sekisho_dsr post ip saddr {ip} udp sport {port} ip saddr set {vip}"
                        ));
                    }
                }
            }
        }
    }
    if marks.is_empty() {
        return;
    }
    let mut items = Vec::new();
    for v6 in [false, true] {
        if !marks.iter().any(|(ip, _, _)| ip.is_ipv6() == v6) {
            continue;
        }
        items.push(Item::Rule {
            priority: 900,
            from: None,
            fwmark: Some(e.capture_mark),
            table: e.capture_table,
            ipv6: v6,
        });
        items.push(Item::Route {
            table: e.capture_table,
            dst: any_net(v6),
            gateway: None,
            dev: "lo".into(),
            prefsrc: None,
            scope_link: false,
            local: true,
        });
    }
    sections.push((
        format!(
            "transparency: the servers' answers to client addresses are delivered to this host (mark {:#x}, table {})",
            e.capture_mark, e.capture_table
        ),
        items,
    ));
    let mut script = String::new();
    for (family, v6) in [("ip", false), ("ip6", true)] {
        let rules: Vec<String> = marks
            .iter()
            .filter(|(ip, _, _)| ip.is_ipv6() == v6)
            .map(|(ip, port, l4)| {
                format!(
                    "    {family} saddr {ip} {l4} sport {port} meta mark set {:#x}",
                    e.capture_mark
                )
            })
            .collect();
        if rules.is_empty() {
            continue;
        }
        script.push_str(&format!(
            "table {family} {NFT_TABLE} {{}}\nflush table {family} {NFT_TABLE}\ntable {family} {NFT_TABLE} {{\n  chain pre {{\n    type filter hook prerouting priority mangle;\n{}\n  }}\n}}\n",
            rules.join("\n")
        ));
    }
    *nft = Some(script);
    let servers: Vec<String> = marks.iter().map(|(ip, _, _)| ip.to_string()).collect();
    elsewhere.push(format!(
        "# on each server of a transparent pool ({}): the default route via this host's address on its network, e.g.",
        servers.join(", ")
    ));
    for (ip, _, _) in &marks {
        let via = local_address_towards(*ip).map_or_else(|| "THIS_HOST".to_string(), |a| a.to_string());
        let six = if ip.is_ipv6() { " -6" } else { "" };
        elsewhere.push(format!("#   on {ip}: ip{six} route replace default via {via}"));
    }
}

/// The nft table `--apply` creates for return paths.
pub const NFT_RETURN_TABLE: &str = "sekisho_return";

/// A server behind several balancers: connections are marked by the MAC
/// address of the balancer they came through, the mark is restored on the
/// answers, and each mark has a table whose default route is that balancer.
fn return_paths(cfg: &Config, sections: &mut Vec<(String, Vec<Item>)>, nft: &mut Option<String>) {
    let paths = &cfg.egress.return_paths;
    if paths.is_empty() {
        return;
    }
    for r in paths {
        let v6 = r.gateway.is_ipv6();
        sections.push((
            format!(
                "return path {}: connections from {} go back via {} (mark {:#x}, table {})",
                r.name,
                mac_text(&r.mac),
                r.gateway,
                r.mark,
                r.table
            ),
            vec![
                Item::Rule {
                    priority: r.priority,
                    from: None,
                    fwmark: Some(r.mark),
                    table: r.table,
                    ipv6: v6,
                },
                Item::Route {
                    table: r.table,
                    dst: any_net(v6),
                    gateway: Some(r.gateway),
                    dev: r.interface.clone(),
                    prefsrc: None,
                    scope_link: false,
                    local: false,
                },
            ],
        ));
    }
    let marks: Vec<String> = paths
        .iter()
        .map(|r| {
            format!(
                "    ct mark 0 ether saddr {} ct mark set {:#x}",
                mac_text(&r.mac),
                r.mark
            )
        })
        .collect();
    let t = NFT_RETURN_TABLE;
    let script = format!(
        "table inet {t} {{}}\nflush table inet {t}\ntable inet {t} {{\n  chain pre {{\n    type filter hook prerouting priority mangle;\n{}\n  }}\n  chain out {{\n    type route hook output priority mangle;\n    ct mark != 0 meta mark set ct mark\n  }}\n}}\n",
        marks.join("\n")
    );
    nft.get_or_insert_with(String::new).push_str(&script);
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `0.0.0.0/0` or `::/0`.
fn any_net(v6: bool) -> IpNet {
    if v6 {
        IpNet::V6(ipnet::Ipv6Net::default())
    } else {
        IpNet::V4(ipnet::Ipv4Net::default())
    }
}

/// This host's address on the network of `ip`, if it has one.
fn local_address_towards(ip: IpAddr) -> Option<IpAddr> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` walks the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: the address and mask point to sockaddrs of the family they name.
        let (addr, mask) = unsafe { (sockaddr_ip(ifa.ifa_addr), sockaddr_ip(ifa.ifa_netmask)) };
        if let (Some(a), Some(m)) = (addr, mask)
            && let Ok(net) = IpNet::with_netmask(a, m)
            && net.contains(&ip)
            && a != ip
        {
            found = Some(a);
            break;
        }
    }
    // SAFETY: the list came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

/// The IP address of a `sockaddr` (IPv4 or IPv6).
///
/// # Safety
/// `sa` must point to a valid sockaddr of the family it names.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller guarantees `sa` is valid for its family.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

/// The plan as a shell script of `ip` commands.
pub fn render(plan: &Plan, source: &str) -> String {
    let mut out = format!("# Policy routing for sekisho's egress, from {source}.\n");
    if plan.sections.is_empty() {
        out.push_str("# No [[uplink]] is configured: nothing to route.\n");
    }
    for (title, items) in &plan.sections {
        out.push_str(&format!("# {title}\n"));
        for it in items {
            out.push_str(&it.command(plan.protocol));
            out.push('\n');
        }
    }
    if let Some(script) = &plan.nft {
        out.push_str("# packet marks (--apply runs this with nft -f):\n");
        out.push_str("nft -f - <<'NFT'\n");
        out.push_str(script);
        out.push_str("NFT\n");
    }
    if !plan.elsewhere.is_empty() {
        out.push_str("# ---- for other hosts (printed only, never applied):\n");
        for l in &plan.elsewhere {
            out.push_str(l);
            out.push('\n');
        }
    }
    for n in &plan.notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    out
}
