//! `[[outgoing]]`, `[source_pool.*]`, `[[uplink]]`, `[[parent]]`, `[egress]`
//! and `[pac]`.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;

use http::HeaderValue;
use ipnet::IpNet;

use super::*;
use crate::config::egress::*;

pub(super) static SOURCE_POOL: TableKeys = TableKeys {
    path: "source_pool.NAME",
    keys: &["addresses", "rotation"],
};

pub(super) static UPLINK: TableKeys = TableKeys {
    path: "uplink",
    keys: &["name", "interface", "address", "gateway", "table", "mark", "priority"],
};

pub(super) static OUTGOING: TableKeys = TableKeys {
    path: "outgoing",
    keys: &[
        "match",
        "address",
        "pool",
        "uplink",
        "interface",
        "mark",
        "family",
        "freebind",
    ],
};

pub(super) static PARENT: TableKeys = TableKeys {
    path: "parent",
    keys: &[
        "name",
        "address",
        "username",
        "password_file",
        "password_env",
        "tls",
        "tls_ca_file",
        "tls_server_name",
    ],
};

pub(super) static EGRESS: TableKeys = TableKeys {
    path: "egress",
    keys: &[
        "parent_select",
        "parent_retry_after",
        "parent_check_interval",
        "always_direct",
        "never_direct",
        "route_protocol",
        "capture_mark",
        "capture_table",
    ],
};

pub(super) static RETURN_PATH: TableKeys = TableKeys {
    path: "return_path",
    keys: &["name", "mac", "gateway", "interface", "mark", "table", "priority"],
};

pub(super) static PAC: TableKeys = TableKeys {
    path: "pac",
    keys: &["proxies", "fallback", "direct", "access"],
};

/// Reads every egress key of the top-level table.
pub(super) fn egress(
    cx: &mut Cx,
    root: &mut Tab<'_, '_>,
    acls: &[(Acl, Option<Span>)],
    listeners: &[ListenerConfig],
    visible_hostname: &str,
) -> Egress {
    let mut e = Egress {
        parent_retry_after: Duration::from_secs(30),
        route_protocol: 157,
        capture_mark: 1,
        capture_table: 100,
        ..Egress::default()
    };
    source_pools(cx, root, &mut e);
    uplinks(cx, root, &mut e);
    outgoing(cx, root, acls, &mut e);
    parents(cx, root, &mut e);
    options(cx, root, acls, &mut e);
    return_paths(cx, root, &mut e);
    e.pac = pac(cx, root, acls, listeners, visible_hostname);
    e
}

fn ip(cx: &mut Cx, path: &str, s: &str, span: Span) -> Option<IpAddr> {
    match s.trim().parse::<IpAddr>() {
        Ok(a) if a.is_unspecified() || a.is_multicast() => {
            cx.err(span, format!("`{path}`: {a} cannot be a source address"));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(span, format!("`{path}`: `{s}` is not an IP address"));
            None
        }
    }
}

fn source_pools(cx: &mut Cx, root: &mut Tab<'_, '_>, e: &mut Egress) {
    let Some(v) = root.get("source_pool") else { return };
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(
            v.span(),
            format!(
                "`source_pool` must be a table of NAME = {{ addresses = [...] }}, not {}",
                type_name(v.get_ref())
            ),
        );
        return;
    };
    for (k, v) in t.iter() {
        let name = k.get_ref().to_string();
        let path = format!("source_pool.{name}");
        let DeValue::Table(def) = v.get_ref() else {
            cx.err(v.span(), format!("`{path}` must be a table with `addresses`"));
            continue;
        };
        let mut tab = Tab::new(def, v.span(), path.clone(), &SOURCE_POOL);
        let mut addresses = Vec::new();
        match tab.strings(cx, "addresses") {
            Some(list) => {
                for (s, span) in list {
                    if let Some(a) = ip(cx, &format!("{path}.addresses"), s, span.clone()) {
                        if addresses.contains(&a) {
                            cx.err(span, format!("`{path}.addresses`: {a} is listed twice"));
                        }
                        addresses.push(a);
                    }
                }
                if addresses.is_empty() {
                    cx.err(v.span(), format!("`{path}.addresses` needs at least one address"));
                }
            }
            None => cx.err(v.span(), format!("`{path}` needs `addresses`")),
        }
        let rotation = match tab.str(cx, "rotation") {
            None => Rotation::RoundRobin,
            Some((s, span)) => Rotation::parse(s).unwrap_or_else(|| {
                cx.err(
                    span,
                    format!("`{path}.rotation` = `{s}`: expected round-robin, random, sticky-user, sticky-host or sticky-session"),
                );
                Rotation::RoundRobin
            }),
        };
        tab.finish(cx);
        e.source_pools.push(SourcePool {
            name,
            addresses,
            rotation,
            next: Default::default(),
        });
    }
}

fn mark(cx: &mut Cx, tab: &mut Tab<'_, '_>) -> Option<u32> {
    let m = tab.uint(cx, "mark", 0, u32::MAX as u64)? as u32;
    if m == 0 {
        let span = tab.get("mark").map(|v| v.span()).unwrap_or(0..0);
        cx.err(
            span,
            format!("`{}` must not be 0 (0 is the unmarked state)", tab.key_path("mark")),
        );
        return None;
    }
    Some(m)
}

fn interface(cx: &mut Cx, tab: &mut Tab<'_, '_>) -> Option<String> {
    let (s, span) = tab.str(cx, "interface")?;
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', '\0']) {
        cx.err(
            span,
            format!(
                "`{}` = `{s}` is not an interface name (1-15 characters)",
                tab.key_path("interface")
            ),
        );
        return None;
    }
    Some(s.to_string())
}

fn uplinks(cx: &mut Cx, root: &mut Tab<'_, '_>, e: &mut Egress) {
    for (i, mut tab) in tables_of(cx, root, &UPLINK) {
        let path = format!("uplink[{i}]");
        let name = match tab.str(cx, "name") {
            Some((s, span)) => {
                check_name(cx, &format!("{path}.name"), s, span.clone());
                if e.uplinks.iter().any(|u| u.name == s) {
                    cx.err(span, format!("uplink name `{s}` is used twice"));
                }
                s.to_string()
            }
            None => {
                cx.err(tab.span.clone(), format!("`{path}` needs `name`"));
                String::new()
            }
        };
        let iface = interface(cx, &mut tab);
        if iface.is_none() && !tab.used.contains(&"interface") {
            cx.err(tab.span.clone(), format!("`{path}` needs `interface`"));
        }
        let address = match tab.str(cx, "address") {
            Some((s, span)) => match s.parse::<IpNet>() {
                Ok(n) => Some(n),
                Err(_) => {
                    cx.err(
                        span,
                        format!("`{path}.address` = `{s}` must be the host's address with the link's prefix, e.g. 203.0.113.10/24 (/32 for a point-to-point link)"),
                    );
                    None
                }
            },
            None => {
                cx.err(tab.span.clone(), format!("`{path}` needs `address` (ADDRESS/PREFIX)"));
                None
            }
        };
        let gateway = match tab.str(cx, "gateway") {
            Some((s, span)) => match s.parse::<IpAddr>() {
                Ok(g) => {
                    if let Some(a) = address {
                        if g.is_ipv4() != a.addr().is_ipv4() {
                            cx.err(
                                span,
                                format!("`{path}.gateway` {g} is not of the same family as the address {a}"),
                            );
                        } else if !a.contains(&g) && !is_link_local(g) {
                            cx.err(span, format!("`{path}.gateway` {g} is not on the link {}", a.trunc()));
                        }
                    }
                    Some(g)
                }
                Err(_) => {
                    cx.err(span, format!("`{path}.gateway`: `{s}` is not an IP address"));
                    None
                }
            },
            // a point-to-point link (ppp0) routes by the device alone
            None => None,
        };
        let table = match tab.uint(cx, "table", 1, u32::MAX as u64) {
            Some(t) if (253..=255).contains(&t) => {
                let span = tab.get("table").map(|v| v.span()).unwrap_or(0..0);
                cx.err(
                    span,
                    format!("`{path}.table` {t} is a reserved table (default, main, local)"),
                );
                t as u32
            }
            Some(t) => t as u32,
            None => 101 + i as u32,
        };
        if let Some(other) = e.uplinks.iter().find(|u| u.table == table) {
            cx.err(
                tab.span.clone(),
                format!("`{path}` uses routing table {table}, as uplink `{}` does", other.name),
            );
        }
        let mark = mark(cx, &mut tab);
        let priority = tab
            .uint(cx, "priority", 1, 32764)
            .map_or(1000 + 10 * i as u32, |p| p as u32);
        tab.finish(cx);
        if let (Some(interface), Some(address)) = (iface, address) {
            e.uplinks.push(Uplink {
                name,
                interface,
                address,
                gateway,
                table,
                mark,
                priority,
            });
        }
    }
}

/// An IPv6 next hop is usually the router's link-local address.
fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Names shown in logs, stats and commands: letters, digits, `.`, `_`, `-`.
fn check_name(cx: &mut Cx, path: &str, s: &str, span: Span) {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        cx.err(
            span,
            format!("`{path}` = `{s}`: a name is 1-64 letters, digits, `.`, `_` or `-`"),
        );
    }
}

fn outgoing(cx: &mut Cx, root: &mut Tab<'_, '_>, acls: &[(Acl, Option<Span>)], e: &mut Egress) {
    let lookup = |n: &str| acls.iter().position(|(a, _)| a.name == n);
    for (i, mut tab) in tables_of(cx, root, &OUTGOING) {
        let path = format!("outgoing[{i}]");
        let (terms, text) = match tab.str(cx, "match") {
            Some((s, span)) => match acl::parse_rule(&format!("allow {s}"), lookup) {
                Ok(r) => (r.terms, s.to_string()),
                Err(errs) => {
                    for (off, msg) in errs {
                        let off = off.saturating_sub(6);
                        cx.err(inner_span(&span, off, 1), format!("`{path}.match`: {msg}"));
                    }
                    continue;
                }
            },
            None => {
                cx.err(
                    tab.span.clone(),
                    format!("`{path}` needs `match` (ACL names, e.g. \"crawlers\" or \"all\")"),
                );
                continue;
            }
        };
        let mut choice = Choice::default();
        let mut sources = 0;
        if let Some(list) = tab.strings(cx, "address") {
            sources += 1;
            let mut addresses = Vec::new();
            for (s, span) in list {
                if let Some(a) = ip(cx, &format!("{path}.address"), s, span) {
                    addresses.push(a);
                }
            }
            if !addresses.is_empty() {
                choice.pool = Some(e.source_pools.len());
                e.source_pools.push(SourcePool {
                    name: format!("{path}.address"),
                    addresses,
                    rotation: Rotation::RoundRobin,
                    next: Default::default(),
                });
            }
        }
        if let Some((s, span)) = tab.str(cx, "pool") {
            sources += 1;
            match e.source_pools.iter().position(|p| p.name == s) {
                Some(p) => choice.pool = Some(p),
                None => cx.err(span, format!("`{path}.pool`: no `[source_pool.{s}]` is defined")),
            }
        }
        let mut uplink_mark = None;
        if let Some((s, span)) = tab.str(cx, "uplink") {
            sources += 1;
            match e.uplinks.iter().find(|u| u.name == s) {
                Some(u) => {
                    choice.pool = Some(e.source_pools.len());
                    uplink_mark = u.mark;
                    e.source_pools.push(SourcePool {
                        name: format!("uplink {s}"),
                        addresses: vec![u.address.addr()],
                        rotation: Rotation::RoundRobin,
                        next: Default::default(),
                    });
                }
                None => cx.err(span, format!("`{path}.uplink`: no `[[uplink]]` is named `{s}`")),
            }
        }
        if sources > 1 {
            cx.err(
                tab.span.clone(),
                format!("`{path}`: use only one of `address`, `pool` and `uplink`"),
            );
        }
        choice.interface = interface(cx, &mut tab);
        choice.mark = mark(cx, &mut tab).or(uplink_mark);
        choice.family = match tab.str(cx, "family") {
            None => Family::Any,
            Some((s, span)) => Family::parse(s).unwrap_or_else(|| {
                cx.err(
                    span,
                    format!("`{path}.family` = `{s}`: expected any, ipv4, ipv6, prefer-ipv4 or prefer-ipv6"),
                );
                Family::Any
            }),
        };
        choice.freebind = tab.bool(cx, "freebind").unwrap_or(false);
        if let Some(p) = choice.pool {
            let addrs = &e.source_pools[p].addresses;
            let (v4, v6) = (addrs.iter().any(IpAddr::is_ipv4), addrs.iter().any(IpAddr::is_ipv6));
            let bad = match choice.family {
                Family::Ipv4 => !v4,
                Family::Ipv6 => !v6,
                _ => false,
            };
            if bad {
                cx.err(
                    tab.span.clone(),
                    format!("`{path}`: no source address of the family `family` asks for"),
                );
            }
        }
        if choice.pool.is_none() && choice.interface.is_none() && choice.mark.is_none() && sources == 0 {
            cx.err(
                tab.span.clone(),
                format!("`{path}` chooses nothing: set `address`, `pool`, `uplink`, `interface` or `mark`"),
            );
        }
        tab.finish(cx);
        e.outgoing.push(OutgoingRule { terms, text, choice });
    }
}

/// `Basic base64(user:password)`.
fn basic_authorization(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {token}")).ok()
}

fn parents(cx: &mut Cx, root: &mut Tab<'_, '_>, e: &mut Egress) {
    for (i, mut tab) in tables_of(cx, root, &PARENT) {
        let path = format!("parent[{i}]");
        let (name, name_span) = match tab.str(cx, "name") {
            Some((s, span)) => {
                check_name(cx, &format!("{path}.name"), s, span.clone());
                (s.to_string(), span)
            }
            None => (format!("parent{i}"), tab.span.clone()),
        };
        if e.parents.iter().any(|p| *p.name == *name) {
            cx.err(
                name_span,
                format!("parent name `{name}` is used twice (unnamed parents are parent0, parent1, ...)"),
            );
        }
        let target = match tab.str(cx, "address") {
            Some((s, span)) => match split_host_port(s) {
                Some(hp) => Some(hp),
                None => {
                    cx.err(
                        span,
                        format!("`{path}.address` = `{s}` is not HOST:PORT (IPv6 in brackets)"),
                    );
                    None
                }
            },
            None => {
                cx.err(tab.span.clone(), format!("`{path}` needs `address` (HOST:PORT)"));
                None
            }
        };
        let username = tab.str(cx, "username");
        let password = match (tab.str(cx, "password_file"), tab.str(cx, "password_env")) {
            (Some(_), Some((_, span))) => {
                cx.err(
                    span,
                    format!("`{path}`: use `password_file` or `password_env`, not both"),
                );
                None
            }
            (Some((f, span)), None) => match std::fs::read_to_string(f) {
                Ok(text) => Some((text.lines().next().unwrap_or("").to_string(), span)),
                Err(err) => {
                    cx.err(span, format!("`{path}.password_file`: cannot read {f}: {err}"));
                    None
                }
            },
            (None, Some((var, span))) => match std::env::var(var) {
                Ok(v) => Some((v, span)),
                Err(_) => {
                    cx.err(
                        span,
                        format!("`{path}.password_env`: the environment variable {var} is not set"),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        let authorization = match (username, password) {
            (Some((u, span)), Some((p, _))) => {
                if u.contains(':') || u.chars().any(char::is_control) {
                    cx.err(
                        span,
                        format!("`{path}.username` cannot contain `:` or control characters"),
                    );
                }
                basic_authorization(u, &p)
            }
            (Some((_, span)), None) => {
                cx.err(
                    span,
                    format!("`{path}.username` needs `password_file` or `password_env`"),
                );
                None
            }
            (None, Some((_, span))) => {
                cx.err(span, format!("`{path}`: a password needs `username`"));
                None
            }
            (None, None) => None,
        };
        let tls_on = tab.bool(cx, "tls").unwrap_or(false);
        let ca = tab.str(cx, "tls_ca_file");
        let sni = tab.str(cx, "tls_server_name");
        let tls = if tls_on {
            let host = target.as_ref().map(|(h, _)| h.clone()).unwrap_or_default();
            parent_tls(cx, &path, ca, sni, &host, &tab.span)
        } else {
            for (_, span) in [ca, sni].into_iter().flatten() {
                cx.err(span, format!("`{path}`: TLS settings without `tls = true`"));
            }
            None
        };
        tab.finish(cx);
        if let Some((host, port)) = target {
            e.parents.push(Parent {
                name: name.into(),
                host,
                port,
                authorization,
                tls,
                down_until: AtomicU64::new(0),
            });
        }
    }
}

/// `host:port`, `[v6]:port`; the host lower-cased, brackets removed.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

pub(super) fn parent_tls(
    cx: &mut Cx,
    path: &str,
    ca: Option<(&str, Span)>,
    sni: Option<(&str, Span)>,
    host: &str,
    span: &Span,
) -> Option<ParentTls> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls;
    let (ca_path, ca_span) = ca.map_or(("/etc/ssl/certs/ca-certificates.crt", span.clone()), |(p, s)| (p, s));
    let mut roots = rustls::RootCertStore::empty();
    match CertificateDer::pem_file_iter(ca_path) {
        Ok(iter) => {
            for cert in iter {
                match cert {
                    Ok(c) => {
                        if let Err(e) = roots.add(c) {
                            cx.err(
                                ca_span.clone(),
                                format!("`{path}.tls_ca_file`: {ca_path}: a certificate is invalid: {e}"),
                            );
                        }
                    }
                    Err(e) => cx.err(ca_span.clone(), format!("`{path}.tls_ca_file`: {ca_path}: {e}")),
                }
            }
        }
        Err(e) => cx.err(
            ca_span.clone(),
            format!("`{path}.tls_ca_file`: cannot read {ca_path}: {e}"),
        ),
    }
    if roots.is_empty() {
        cx.err(ca_span, format!("`{path}.tls_ca_file`: {ca_path} holds no certificate"));
        return None;
    }
    let (name, name_span) = sni.map_or((host, span.clone()), |(n, s)| (n, s));
    let server_name = match ServerName::try_from(name.to_string()) {
        Ok(n) => n,
        Err(_) => {
            cx.err(name_span, format!("`{path}`: `{name}` is not a valid TLS server name"));
            return None;
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(e) => {
            cx.err(span.clone(), format!("`{path}`: TLS setup failed: {e}"));
            return None;
        }
    };
    Some(ParentTls {
        config: Arc::new(config),
        server_name,
    })
}

/// A rule list such as `always_direct = ["allow intranet"]`.
fn rule_list(cx: &mut Cx, tab: &mut Tab<'_, '_>, key: &'static str, acls: &[(Acl, Option<Span>)]) -> Rules {
    let lookup = |n: &str| acls.iter().position(|(a, _)| a.name == n);
    let Some(items) = tab.strings(cx, key) else {
        return Rules::default();
    };
    let path = tab.key_path(key);
    let mut out = Vec::new();
    for (text, span) in items {
        match acl::parse_rule(text, lookup) {
            Ok(r) => {
                if let Some(&(idx, _)) = r
                    .terms
                    .iter()
                    .find(|&&(idx, _)| matches!(acls[idx].0.kind, AclKind::Dst(_)))
                {
                    cx.err(
                        span,
                        format!(
                            "`{path}`: ACL `{}` tests the destination address, which is not known when a parent is chosen (the parent resolves the name); use dstdomain",
                            acls[idx].0.name
                        ),
                    );
                    continue;
                }
                out.push(r);
            }
            Err(errs) => {
                for (off, msg) in errs {
                    cx.err(inner_span(&span, off, 1), format!("`{path}`: {msg}"));
                }
            }
        }
    }
    Rules { rules: out }
}

fn options(cx: &mut Cx, root: &mut Tab<'_, '_>, acls: &[(Acl, Option<Span>)], e: &mut Egress) {
    let Some(mut tab) = root.table(cx, &EGRESS) else {
        return;
    };
    if let Some((s, span)) = tab.str(cx, "parent_select") {
        e.parent_select = match s {
            "first-up" => ParentSelect::FirstUp,
            "round-robin" => ParentSelect::RoundRobin,
            "hash" => ParentSelect::Hash,
            _ => {
                cx.err(
                    span,
                    format!("`egress.parent_select` = `{s}`: expected first-up, round-robin or hash"),
                );
                ParentSelect::FirstUp
            }
        };
    }
    if let Some(d) = tab.duration(cx, "parent_retry_after") {
        e.parent_retry_after = d;
    }
    e.parent_check_interval = tab.duration(cx, "parent_check_interval");
    e.always_direct = rule_list(cx, &mut tab, "always_direct", acls);
    e.never_direct = rule_list(cx, &mut tab, "never_direct", acls);
    if let Some(p) = tab.uint(cx, "route_protocol", 5, 255) {
        e.route_protocol = p as u8;
    }
    if let Some(m) = tab.uint(cx, "capture_mark", 1, u32::MAX as u64) {
        e.capture_mark = m as u32;
    }
    if let Some(t) = tab.uint(cx, "capture_table", 1, u32::MAX as u64) {
        if (253..=255).contains(&t) {
            let span = tab.get("capture_table").map(|v| v.span()).unwrap_or(0..0);
            cx.err(
                span,
                format!("`egress.capture_table` {t} is a reserved table (default, main, local)"),
            );
        }
        e.capture_table = t as u32;
    }
    if e.parents.is_empty() {
        for key in [
            "parent_select",
            "parent_retry_after",
            "parent_check_interval",
            "never_direct",
        ] {
            if let Some(v) = tab.t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v.span()) {
                cx.err(v, format!("`egress.{key}` is set but no `[[parent]]` is configured"));
            }
        }
    }
    tab.finish(cx);
}

fn return_paths(cx: &mut Cx, root: &mut Tab<'_, '_>, e: &mut Egress) {
    for (i, mut tab) in tables_of(cx, root, &RETURN_PATH) {
        let path = format!("return_path[{i}]");
        let name = match tab.str(cx, "name") {
            Some((s, span)) => {
                check_name(cx, &format!("{path}.name"), s, span);
                s.to_string()
            }
            None => format!("balancer{i}"),
        };
        let mac = match tab.str(cx, "mac") {
            Some((s, span)) => {
                let parts: Vec<Option<u8>> = s
                    .split(':')
                    .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
                    .collect();
                if parts.len() == 6 && parts.iter().all(Option::is_some) {
                    let mut m = [0u8; 6];
                    for (d, p) in m.iter_mut().zip(parts) {
                        *d = p.unwrap_or(0);
                    }
                    Some(m)
                } else {
                    cx.err(
                        span,
                        format!("`{path}.mac` = `{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                    );
                    None
                }
            }
            None => {
                cx.err(
                    tab.span.clone(),
                    format!("`{path}` needs `mac`, the balancer's MAC address"),
                );
                None
            }
        };
        let gateway = match tab.str(cx, "gateway") {
            Some((s, span)) => match s.parse::<IpAddr>() {
                Ok(g) => Some(g),
                Err(_) => {
                    cx.err(span, format!("`{path}.gateway`: `{s}` is not an IP address"));
                    None
                }
            },
            None => {
                cx.err(
                    tab.span.clone(),
                    format!("`{path}` needs `gateway`, the balancer's address"),
                );
                None
            }
        };
        let iface = interface(cx, &mut tab);
        if iface.is_none() && !tab.used.contains(&"interface") {
            cx.err(tab.span.clone(), format!("`{path}` needs `interface`"));
        }
        let mark = mark(cx, &mut tab).unwrap_or(0x100 + i as u32 + 1);
        let table = tab
            .uint(cx, "table", 1, u32::MAX as u64)
            .map_or(201 + i as u32, |t| t as u32);
        if (253..=255).contains(&table) {
            cx.err(tab.span.clone(), format!("`{path}.table` {table} is a reserved table"));
        }
        let priority = tab.uint(cx, "priority", 1, 32764).map_or(950 + i as u32, |p| p as u32);
        tab.finish(cx);
        if let (Some(mac), Some(gateway), Some(interface)) = (mac, gateway, iface) {
            if e.return_paths.iter().any(|r| r.mark == mark || r.table == table) {
                cx.err(
                    root.span.clone(),
                    format!("`{path}`: mark {mark:#x} or table {table} is used twice"),
                );
            }
            e.return_paths.push(ReturnPath {
                name,
                mac,
                gateway,
                interface,
                mark,
                table,
                priority,
            });
        }
    }
}

fn pac(
    cx: &mut Cx,
    root: &mut Tab<'_, '_>,
    acls: &[(Acl, Option<Span>)],
    listeners: &[ListenerConfig],
    visible_hostname: &str,
) -> Pac {
    let defaults = || -> Vec<String> {
        listeners
            .iter()
            .filter(|l| l.mode == Mode::Forward)
            .map(|l| {
                if l.bind.ip().is_unspecified() {
                    format!("{visible_hostname}:{}", l.bind.port())
                } else {
                    l.bind.to_string()
                }
            })
            .collect()
    };
    let mut pac = Pac {
        proxies: Vec::new(),
        fallback: vec!["DIRECT".to_string()],
        direct_domains: Vec::new(),
        direct_networks: Vec::new(),
        access: Rules {
            rules: vec![
                acl::parse_rule("allow all", |n| acls.iter().position(|(a, _)| a.name == n)).expect("built-in"),
            ],
        },
    };
    let Some(mut tab) = root.table(cx, &PAC) else {
        pac.proxies = defaults();
        return pac;
    };
    if tab.t.iter().any(|(k, _)| k.get_ref() == "access") {
        pac.access = rules(cx, &mut tab, acls, &[]);
        if let Some(i) = pac
            .access
            .first_not(&acls.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(), |k| {
                matches!(k, AclKind::Src(_) | AclKind::All)
            })
        {
            cx.err(
                acls[i].1.clone().unwrap_or(0..0),
                format!(
                    "`pac.access`: ACL `{}` is not a source-address ACL (type src)",
                    acls[i].0.name
                ),
            );
        }
    }
    pac.proxies = match tab.strings(cx, "proxies") {
        Some(list) => {
            let mut out = Vec::new();
            for (s, span) in list {
                match split_host_port(s) {
                    Some(_) => out.push(s.to_string()),
                    None => cx.err(span, format!("`pac.proxies`: `{s}` is not HOST:PORT")),
                }
            }
            out
        }
        None => defaults(),
    };
    if let Some(list) = tab.strings(cx, "fallback") {
        pac.fallback.clear();
        for (s, span) in list {
            let ok = s == "DIRECT"
                || s.split_once(' ').is_some_and(|(kind, hp)| {
                    matches!(kind, "PROXY" | "HTTPS" | "SOCKS" | "SOCKS5") && split_host_port(hp).is_some()
                });
            if ok {
                pac.fallback.push(s.to_string());
            } else {
                cx.err(
                    span,
                    format!("`pac.fallback`: `{s}` is not `DIRECT` or `PROXY host:port`"),
                );
            }
        }
    }
    if let Some(list) = tab.strings(cx, "direct") {
        for (s, span) in list {
            if s.contains('/') || s.parse::<IpAddr>().is_ok() {
                match parse_net(s) {
                    Ok(n) => pac.direct_networks.push(n),
                    Err(m) => cx.err(span, format!("`pac.direct`: {m}")),
                }
            } else {
                match acl::DomainPattern::parse(s) {
                    Ok(_) => pac.direct_domains.push(s.trim_end_matches('.').to_ascii_lowercase()),
                    Err(m) => cx.err(span, format!("`pac.direct`: {m}")),
                }
            }
        }
    }
    if pac.proxies.is_empty() && pac.fallback.is_empty() {
        cx.err(tab.span.clone(), "`pac` lists no proxy and no fallback");
    }
    tab.finish(cx);
    pac
}
