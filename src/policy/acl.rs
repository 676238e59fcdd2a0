//! Named ACLs and the ordered access rules that use them, in the shape Squid
//! operators know: `allow localnet !blocked`, first match wins.
//!
//! Evaluation is split in two so that a destination-address ACL (`dst`,
//! `to_localhost`, ...) is checked against the address actually connected to:
//! [`Rules::check`] first runs without a destination address and answers
//! [`Verdict::NeedDst`] only when a rule that could decide depends on one; the
//! caller then resolves the name and asks again for each candidate address.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use http::Method;
use ipnet::IpNet;

/// What an ACL tests.
#[derive(Clone, Debug)]
pub enum AclKind {
    /// Matches every request.
    All,
    /// Client address within one of the networks.
    Src(Vec<IpNet>),
    /// Destination address (after DNS) within one of the networks.
    Dst(Vec<IpNet>),
    /// Destination host name: exact names, or `.suffix` for a domain and all below it.
    DstDomain(Vec<DomainPattern>),
    /// Destination port within one of the ranges.
    Port(Vec<RangeInclusive<u16>>),
    /// Request method.
    Method(Vec<Method>),
    /// An authenticated user: any (`REQUIRED`, `None`) or one of the names.
    /// Testing it without a verified user asks for credentials (407).
    ProxyAuth(Option<Vec<String>>),
}

/// A `dstdomain` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainPattern {
    /// `example.com`: that name only.
    Exact(String),
    /// `.example.com`: `example.com` and every name below it.
    Suffix(String),
}

impl DomainPattern {
    /// Parses one entry; names are compared case-insensitively and without a trailing dot.
    pub fn parse(s: &str) -> Result<DomainPattern, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix('.') {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b == b':')
        {
            return Err(format!("`{s}` is not a domain name (use `name` or `.suffix`)"));
        }
        Ok(if suffix {
            DomainPattern::Suffix(name)
        } else {
            DomainPattern::Exact(name)
        })
    }

    /// `host` must already be lower case without a trailing dot.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            DomainPattern::Exact(n) => host == n,
            DomainPattern::Suffix(n) => {
                host == n
                    || (host.len() > n.len()
                        && host.ends_with(n.as_str())
                        && host.as_bytes()[host.len() - n.len() - 1] == b'.')
            }
        }
    }
}

/// A named ACL.
#[derive(Clone, Debug)]
pub struct Acl {
    pub name: String,
    pub kind: AclKind,
}

/// The facts about a request that ACLs test.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub src: IpAddr,
    pub method: &'a Method,
    /// Destination host, lower case, no trailing dot (an address literal for IP targets).
    pub host: &'a str,
    pub port: u16,
    /// The destination address, once known.
    pub dst: Option<IpAddr>,
    /// The authenticated user, once credentials have been checked.
    pub user: Option<&'a str>,
}

/// Three-valued ACL result: a destination ACL is unknown until the address
/// is known, a user ACL until credentials have been checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    UnknownDst,
    UnknownUser,
}

fn ip_in(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 addresses are tested as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl Acl {
    fn test(&self, f: &Facts<'_>) -> Tri {
        let yes = |b: bool| if b { Tri::Yes } else { Tri::No };
        match &self.kind {
            AclKind::All => Tri::Yes,
            AclKind::Src(nets) => yes(ip_in(nets, f.src)),
            AclKind::Dst(nets) => match f.dst {
                Some(ip) => yes(ip_in(nets, ip)),
                None => match f.host.parse::<IpAddr>() {
                    Ok(ip) => yes(ip_in(nets, ip)),
                    Err(_) => Tri::UnknownDst,
                },
            },
            AclKind::ProxyAuth(names) => match (f.user, names) {
                (None, _) => Tri::UnknownUser,
                (Some(_), None) => Tri::Yes,
                (Some(u), Some(list)) => yes(list.iter().any(|n| n == u)),
            },
            AclKind::DstDomain(pats) => yes(pats.iter().any(|p| p.matches(f.host))),
            AclKind::Port(ranges) => yes(ranges.iter().any(|r| r.contains(&f.port))),
            AclKind::Method(ms) => yes(ms.iter().any(|m| m == f.method)),
        }
    }
}

/// Whether every term holds for facts that are fully known now; a term whose
/// answer depends on something not known (the destination address, the user)
/// does not hold. For rule lists that choose rather than guard
/// (`[[outgoing]]`, `always_direct`).
pub fn all_hold(acls: &[Acl], terms: &[(usize, bool)], f: &Facts<'_>) -> bool {
    terms.iter().all(|&(idx, neg)| match acls[idx].test(f) {
        Tri::Yes => !neg,
        Tri::No => neg,
        Tri::UnknownDst | Tri::UnknownUser => false,
    })
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// One `allow|deny NAME [!NAME]...` line; all terms must match (AND).
#[derive(Clone, Debug)]
pub struct Rule {
    pub action: Action,
    /// (index into the ACL table, negated)
    pub terms: Vec<(usize, bool)>,
    /// The rule as written, for logs and error pages.
    pub text: String,
}

/// The outcome of checking a request against the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the rule at this index (`None`: the implicit default).
    Allow(Option<usize>),
    /// Denied by the rule at this index (`None`: the implicit default).
    Deny(Option<usize>),
    /// A rule that could decide tests the destination address: resolve and ask again.
    NeedDst,
    /// A rule that could decide tests the user: check the credentials (or ask
    /// for them with a 407) and ask again.
    NeedAuth,
}

impl Verdict {
    pub fn is_allow(self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

/// The built-in ACL names and what they test.
pub fn builtins() -> Vec<Acl> {
    let nets = |list: &[&str]| -> Vec<IpNet> { list.iter().map(|s| s.parse().expect("built-in CIDR")).collect() };
    vec![
        Acl {
            name: "all".into(),
            kind: AclKind::All,
        },
        Acl {
            name: "localhost".into(),
            kind: AclKind::Src(nets(&["127.0.0.0/8", "::1/128"])),
        },
        Acl {
            name: "to_localhost".into(),
            kind: AclKind::Dst(nets(&["127.0.0.0/8", "0.0.0.0/32", "::1/128", "::/128"])),
        },
        Acl {
            name: "to_linklocal".into(),
            kind: AclKind::Dst(nets(&["169.254.0.0/16", "fe80::/10"])),
        },
        Acl {
            name: "to_private".into(),
            kind: AclKind::Dst(nets(&["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"])),
        },
    ]
}

/// An ordered rule list bound to an ACL table.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

impl Rules {
    /// First matching rule wins. When none matches, the answer is the opposite of
    /// the last rule's action (Squid's rule), and deny for an empty list.
    pub fn check(&self, acls: &[Acl], f: &Facts<'_>) -> Verdict {
        for (i, rule) in self.rules.iter().enumerate() {
            let mut need_dst = false;
            let mut need_user = false;
            let mut failed = false;
            for &(idx, neg) in &rule.terms {
                match (acls[idx].test(f), neg) {
                    (Tri::Yes, false) | (Tri::No, true) => {}
                    (Tri::UnknownDst, _) => need_dst = true,
                    (Tri::UnknownUser, _) => need_user = true,
                    _ => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            // credentials first: they are checked before any DNS lookup
            if need_user {
                return Verdict::NeedAuth;
            }
            if need_dst {
                return Verdict::NeedDst;
            }
            return match rule.action {
                Action::Allow => Verdict::Allow(Some(i)),
                Action::Deny => Verdict::Deny(Some(i)),
            };
        }
        match self.rules.last() {
            Some(r) if r.action == Action::Deny => Verdict::Allow(None),
            _ => Verdict::Deny(None),
        }
    }

    /// Whether any rule tests the destination address.
    pub fn uses_dst(&self, acls: &[Acl]) -> bool {
        self.rules
            .iter()
            .flat_map(|r| r.terms.iter())
            .any(|&(i, _)| matches!(acls[i].kind, AclKind::Dst(_)))
    }

    /// The first ACL named in these rules that is not of the allowed kinds (for
    /// rule lists checked before a request exists, such as trusted PROXY sources).
    pub fn first_not(&self, acls: &[Acl], ok: impl Fn(&AclKind) -> bool) -> Option<usize> {
        self.rules
            .iter()
            .flat_map(|r| r.terms.iter())
            .map(|&(i, _)| i)
            .find(|&i| !ok(&acls[i].kind))
    }
}

/// Parses `allow NAME [!NAME]...` against the ACL names; errors carry the byte
/// offset within `text` of the offending token.
pub fn parse_rule(text: &str, lookup: impl Fn(&str) -> Option<usize>) -> Result<Rule, Vec<(usize, String)>> {
    let mut tokens = text.split_ascii_whitespace().map(|t| {
        let off = t.as_ptr() as usize - text.as_ptr() as usize;
        (off, t)
    });
    let action = match tokens.next() {
        Some((_, "allow")) => Action::Allow,
        Some((_, "deny")) => Action::Deny,
        Some((off, other)) => {
            return Err(vec![(
                off,
                format!("a rule starts with `allow` or `deny`, not `{other}`"),
            )]);
        }
        None => return Err(vec![(0, "empty rule: write `allow NAME...` or `deny NAME...`".into())]),
    };
    let mut terms = Vec::new();
    let mut errors = Vec::new();
    for (off, tok) in tokens {
        let (neg, name) = match tok.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, tok),
        };
        match lookup(name) {
            Some(i) => terms.push((i, neg)),
            None => errors.push((off + usize::from(neg), format!("undefined ACL `{name}`"))),
        }
    }
    if terms.is_empty() && errors.is_empty() {
        errors.push((
            text.len(),
            "a rule needs at least one ACL name (use `all` to match everything)".into(),
        ));
    }
    if errors.is_empty() {
        Ok(Rule {
            action,
            terms,
            text: text.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
        })
    } else {
        Err(errors)
    }
}

/// Parses a port list entry: `443` or `1025-65535`.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let p = |x: &str| -> Result<u16, String> {
        match x.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!("`{x}` is not a port (1-65535)")),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (p(a)?, p(b)?);
            if a > b {
                return Err(format!("port range `{s}` runs backwards"));
            }
            Ok(a..=b)
        }
        None => {
            let a = p(s)?;
            Ok(a..=a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Vec<Acl> {
        let mut t = builtins();
        t.push(Acl {
            name: "localnet".into(),
            kind: AclKind::Src(vec!["10.0.0.0/8".parse().unwrap()]),
        });
        t.push(Acl {
            name: "ssl_ports".into(),
            kind: AclKind::Port(vec![443..=443]),
        });
        t.push(Acl {
            name: "CONNECT".into(),
            kind: AclKind::Method(vec![Method::CONNECT]),
        });
        t.push(Acl {
            name: "blocked".into(),
            kind: AclKind::DstDomain(vec![DomainPattern::parse(".bad.example").unwrap()]),
        });
        t
    }

    fn rules(acls: &[Acl], lines: &[&str]) -> Rules {
        let lookup = |n: &str| acls.iter().position(|a| a.name == n);
        Rules {
            rules: lines.iter().map(|l| parse_rule(l, lookup).unwrap()).collect(),
        }
    }

    fn facts<'a>(src: &str, m: &'a Method, host: &'a str, port: u16) -> Facts<'a> {
        Facts {
            src: src.parse().unwrap(),
            method: m,
            host,
            port,
            dst: None,
            user: None,
        }
    }

    #[test]
    fn first_match_wins_and_negation_works() {
        let acls = table();
        let r = rules(
            &acls,
            &["deny CONNECT !ssl_ports", "deny blocked", "allow localnet", "deny all"],
        );
        let get = Method::GET;
        let conn = Method::CONNECT;
        assert_eq!(
            r.check(&acls, &facts("10.1.1.1", &get, "a.example", 80)),
            Verdict::Allow(Some(2))
        );
        assert_eq!(
            r.check(&acls, &facts("10.1.1.1", &conn, "a.example", 80)),
            Verdict::Deny(Some(0))
        );
        assert_eq!(
            r.check(&acls, &facts("10.1.1.1", &conn, "a.example", 443)),
            Verdict::Allow(Some(2))
        );
        assert_eq!(
            r.check(&acls, &facts("10.1.1.1", &get, "x.bad.example", 80)),
            Verdict::Deny(Some(1))
        );
        assert_eq!(
            r.check(&acls, &facts("192.0.2.1", &get, "a.example", 80)),
            Verdict::Deny(Some(3))
        );
    }

    #[test]
    fn implicit_default_is_opposite_of_last_rule() {
        let acls = table();
        let get = Method::GET;
        let r = rules(&acls, &["allow localnet"]);
        assert_eq!(r.check(&acls, &facts("192.0.2.1", &get, "h", 80)), Verdict::Deny(None));
        let r = rules(&acls, &["deny localnet"]);
        assert_eq!(r.check(&acls, &facts("192.0.2.1", &get, "h", 80)), Verdict::Allow(None));
        assert_eq!(
            Rules::default().check(&acls, &facts("10.0.0.1", &get, "h", 80)),
            Verdict::Deny(None)
        );
    }

    #[test]
    fn destination_acls_wait_for_the_address() {
        let acls = table();
        let get = Method::GET;
        let r = rules(&acls, &["deny to_localhost", "allow all"]);
        let mut f = facts("10.0.0.1", &get, "origin.test", 80);
        assert_eq!(r.check(&acls, &f), Verdict::NeedDst);
        f.dst = Some("127.0.0.1".parse().unwrap());
        assert_eq!(r.check(&acls, &f), Verdict::Deny(Some(0)));
        f.dst = Some("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(
            r.check(&acls, &f),
            Verdict::Deny(Some(0)),
            "mapped IPv4 is tested as IPv4"
        );
        f.dst = Some("192.0.2.7".parse().unwrap());
        assert_eq!(r.check(&acls, &f), Verdict::Allow(Some(1)));
        // an address literal needs no resolution
        let f = facts("10.0.0.1", &get, "127.0.0.1", 80);
        assert_eq!(r.check(&acls, &f), Verdict::Deny(Some(0)));
        // a rule that fails on another term never waits for the address
        let r = rules(&acls, &["deny CONNECT to_localhost", "allow all"]);
        let f = facts("10.0.0.1", &get, "origin.test", 80);
        assert_eq!(r.check(&acls, &f), Verdict::Allow(Some(1)));
    }

    #[test]
    fn domain_patterns() {
        let s = DomainPattern::parse(".Example.COM.").unwrap();
        assert!(s.matches("example.com"));
        assert!(s.matches("www.example.com"));
        assert!(!s.matches("badexample.com"));
        let e = DomainPattern::parse("example.com").unwrap();
        assert!(e.matches("example.com"));
        assert!(!e.matches("www.example.com"));
        assert!(DomainPattern::parse("bad name").is_err());
        assert!(DomainPattern::parse(".").is_err());
    }

    #[test]
    fn rule_parse_errors_point_at_the_token() {
        let acls = table();
        let lookup = |n: &str| acls.iter().position(|a| a.name == n);
        let e = parse_rule("allow localnet !nosuch", lookup).unwrap_err();
        assert_eq!(e, vec![(16, "undefined ACL `nosuch`".to_string())]);
        let e = parse_rule("permit all", lookup).unwrap_err();
        assert_eq!(e[0].0, 0);
        assert!(parse_rule("deny", lookup).is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("443").unwrap(), 443..=443);
        assert_eq!(parse_port_range("1025-65535").unwrap(), 1025..=65535);
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("70000").is_err());
        assert!(parse_port_range("90-80").is_err());
        assert!(parse_port_range("http").is_err());
    }

    #[test]
    fn user_acls_ask_for_credentials_only_when_they_decide() {
        let mut acls = table();
        acls.push(Acl {
            name: "authed".into(),
            kind: AclKind::ProxyAuth(None),
        });
        acls.push(Acl {
            name: "admins".into(),
            kind: AclKind::ProxyAuth(Some(vec!["root".into()])),
        });
        let r = rules(
            &acls,
            &[
                "allow localnet",
                "deny blocked",
                "allow admins",
                "allow authed",
                "deny all",
            ],
        );
        let get = Method::GET;
        // allowed sources never need to log in
        assert_eq!(
            r.check(&acls, &facts("10.1.1.1", &get, "a.example", 80)),
            Verdict::Allow(Some(0))
        );
        // a deny before the user rule decides without credentials
        assert_eq!(
            r.check(&acls, &facts("192.0.2.1", &get, "x.bad.example", 80)),
            Verdict::Deny(Some(1))
        );
        let mut f = facts("192.0.2.1", &get, "a.example", 80);
        assert_eq!(r.check(&acls, &f), Verdict::NeedAuth);
        f.user = Some("bob");
        assert_eq!(r.check(&acls, &f), Verdict::Allow(Some(3)));
        f.user = Some("root");
        assert_eq!(r.check(&acls, &f), Verdict::Allow(Some(2)));
        let user_acl = r.first_not(&acls, |k| !matches!(k, AclKind::ProxyAuth(_)));
        assert_eq!(user_acl.map(|i| acls[i].name.as_str()), Some("admins"));
    }
}
