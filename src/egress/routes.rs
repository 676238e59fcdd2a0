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
}

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
            });
        }
        let any = if v6 {
            IpNet::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
        } else {
            IpNet::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)
        }
        .expect("a /0 network");
        items.push(Item::Route {
            table: u.table,
            dst: any,
            gateway: u.gateway,
            dev: u.interface.clone(),
            prefsrc: None,
            scope_link: u.gateway.is_none(),
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
    Plan {
        sections,
        notes,
        protocol: e.route_protocol,
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
    for n in &plan.notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    out
}
