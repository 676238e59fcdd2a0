//! Outgoing address rules: which source address, interface and firewall mark
//! an upstream connection uses, and how a source pool rotates its addresses.
//!
//! The rules are evaluated per destination address (so `dst` ACLs can take
//! part); the first rule whose ACLs all hold chooses. A pool picks an address
//! of the destination's family by its rotation policy; sticky policies use
//! rendezvous hashing, so the same key keeps the same address without any
//! table, and removing one address moves only the keys that were on it.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;

use crate::config::Config;
use crate::config::egress::{Choice, Rotation, SourcePool};
use crate::policy::acl::{self, Facts};

/// What a sticky rotation keys on.
#[derive(Clone, Copy, Debug)]
pub struct StickyKeys<'a> {
    pub user: Option<&'a str>,
    /// From a `NAME-session-KEY` user name.
    pub session: Option<&'a str>,
    pub host: &'a str,
    pub client: IpAddr,
}

/// The socket settings chosen for one connection attempt.
#[derive(Clone, Copy, Debug)]
pub struct Egress<'a> {
    /// Index of the outgoing rule (`None`: no rule matched, the system's defaults).
    pub rule: Option<usize>,
    pub choice: Option<&'a Choice>,
    pub source: Option<IpAddr>,
}

impl Egress<'_> {
    pub const DEFAULT: Egress<'static> = Egress {
        rule: None,
        choice: None,
        source: None,
    };
}

/// Why no attempt is made to an address.
#[derive(Debug)]
pub struct NoSource {
    pub rule: usize,
    pub pool: String,
}

impl std::fmt::Display for NoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "outgoing rule {} uses source pool `{}`, which has no address of this family",
            self.rule, self.pool
        )
    }
}

/// The first outgoing rule whose ACLs all hold before DNS: its `family`
/// filters and orders the destination addresses.
pub fn arrange(cfg: &Config, facts: &Facts<'_>, addrs: &mut Vec<SocketAddr>) {
    if let Some(r) = cfg
        .egress
        .outgoing
        .iter()
        .find(|r| acl::all_hold(&cfg.acls, &r.terms, facts))
    {
        r.choice.family.arrange(addrs, SocketAddr::ip);
    }
}

/// The settings for a connection to `dst`.
pub fn choose<'c>(
    cfg: &'c Config,
    facts: &Facts<'_>,
    keys: &StickyKeys<'_>,
    dst: IpAddr,
) -> Result<Egress<'c>, NoSource> {
    let facts = Facts {
        dst: Some(dst),
        ..*facts
    };
    let Some((i, rule)) = cfg
        .egress
        .outgoing
        .iter()
        .enumerate()
        .find(|(_, r)| acl::all_hold(&cfg.acls, &r.terms, &facts))
    else {
        return Ok(Egress::DEFAULT);
    };
    let source = match rule.choice.pool {
        None => None,
        Some(p) => {
            let pool = &cfg.egress.source_pools[p];
            match pick(pool, keys, dst.is_ipv4()) {
                Some(a) => Some(a),
                None => {
                    return Err(NoSource {
                        rule: i,
                        pool: pool.name.clone(),
                    });
                }
            }
        }
    };
    Ok(Egress {
        rule: Some(i),
        choice: Some(&rule.choice),
        source,
    })
}

/// An address of the wanted family from the pool, by its rotation.
pub fn pick(pool: &SourcePool, keys: &StickyKeys<'_>, v4: bool) -> Option<IpAddr> {
    let n = pool.addresses.iter().filter(|a| a.is_ipv4() == v4).count();
    if n == 0 {
        return None;
    }
    let nth = |k: usize| pool.addresses.iter().filter(|a| a.is_ipv4() == v4).nth(k % n).copied();
    let next = &pool.next[usize::from(!v4)];
    match pool.rotation {
        Rotation::RoundRobin => nth(next.fetch_add(1, Relaxed)),
        Rotation::Random => nth(getrandom::u32().unwrap_or_else(|_| next.fetch_add(1, Relaxed) as u32) as usize),
        Rotation::Host => sticky(pool, v4, keys.host.as_bytes()),
        Rotation::User => sticky(pool, v4, &user_key(keys)),
        Rotation::Session => match keys.session {
            Some(s) => sticky(pool, v4, s.as_bytes()),
            None => sticky(pool, v4, &user_key(keys)),
        },
    }
}

fn user_key(keys: &StickyKeys<'_>) -> Vec<u8> {
    match keys.user {
        Some(u) => u.as_bytes().to_vec(),
        None => keys.client.to_string().into_bytes(),
    }
}

/// Rendezvous (highest random weight) hashing.
fn sticky(pool: &SourcePool, v4: bool, key: &[u8]) -> Option<IpAddr> {
    pool.addresses
        .iter()
        .filter(|a| a.is_ipv4() == v4)
        .max_by_key(|a| {
            let mut h = std::hash::DefaultHasher::new();
            key.hash(&mut h);
            a.hash(&mut h);
            h.finish()
        })
        .copied()
}

/// Splits a `NAME-session-KEY` user name into the name and the session key.
pub fn split_session(user: &str) -> (&str, Option<&str>) {
    match user.split_once("-session-") {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => (name, Some(key)),
        _ => (user, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(rotation: Rotation, addrs: &[&str]) -> SourcePool {
        SourcePool {
            name: "p".into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            rotation,
            next: Default::default(),
        }
    }

    fn keys<'a>(user: Option<&'a str>, session: Option<&'a str>, host: &'a str) -> StickyKeys<'a> {
        StickyKeys {
            user,
            session,
            host,
            client: "192.0.2.1".parse().unwrap(),
        }
    }

    #[test]
    fn round_robin_takes_each_address_of_the_family_in_turn() {
        let p = pool(
            Rotation::RoundRobin,
            &["10.0.0.1", "2001:db8::1", "10.0.0.2", "10.0.0.3"],
        );
        let k = keys(None, None, "h");
        let got: Vec<String> = (0..6).map(|_| pick(&p, &k, true).unwrap().to_string()).collect();
        assert_eq!(
            got,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(pick(&p, &k, false).unwrap().to_string(), "2001:db8::1");
        // the families keep their own turn: alternating requests still see every address
        let mixed = pool(
            Rotation::RoundRobin,
            &["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"],
        );
        let got: Vec<String> = (0..4)
            .flat_map(|_| [pick(&mixed, &k, true).unwrap(), pick(&mixed, &k, false).unwrap()])
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "10.0.0.1",
                "2001:db8::1",
                "10.0.0.2",
                "2001:db8::2",
                "10.0.0.1",
                "2001:db8::1",
                "10.0.0.2",
                "2001:db8::2"
            ]
        );
        let v4only = pool(Rotation::RoundRobin, &["10.0.0.1"]);
        assert_eq!(pick(&v4only, &k, false), None);
    }

    #[test]
    fn sticky_keys_keep_their_address_and_spread() {
        let addrs = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
        let p = pool(Rotation::User, &addrs);
        let mut seen = std::collections::HashSet::new();
        for u in 0..64 {
            let name = format!("user{u}");
            let a = pick(&p, &keys(Some(&name), None, "h"), true);
            assert_eq!(a, pick(&p, &keys(Some(&name), None, "other"), true));
            seen.insert(a);
        }
        assert_eq!(seen.len(), 4, "64 users over 4 addresses use all of them");
        // removing an address moves only the keys that were on it
        let smaller = pool(Rotation::User, &addrs[..3]);
        for u in 0..64 {
            let name = format!("user{u}");
            let before = pick(&p, &keys(Some(&name), None, "h"), true).unwrap();
            if before.to_string() != "10.0.0.4" {
                assert_eq!(Some(before), pick(&smaller, &keys(Some(&name), None, "h"), true));
            }
        }
        let by_host = pool(Rotation::Host, &addrs);
        assert_eq!(
            pick(&by_host, &keys(Some("a"), None, "example.com"), true),
            pick(&by_host, &keys(Some("b"), None, "example.com"), true)
        );
        let by_session = pool(Rotation::Session, &addrs);
        assert_eq!(
            pick(&by_session, &keys(Some("a"), Some("s1"), "x"), true),
            pick(&by_session, &keys(Some("b"), Some("s1"), "y"), true)
        );
    }

    #[test]
    fn session_user_names() {
        assert_eq!(split_session("crawler-session-abc"), ("crawler", Some("abc")));
        assert_eq!(split_session("crawler"), ("crawler", None));
        assert_eq!(split_session("-session-abc"), ("-session-abc", None));
        assert_eq!(split_session("a-session-"), ("a-session-", None));
    }
}
