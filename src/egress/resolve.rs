//! Name resolution: the config's `hosts` table first, then DNS through
//! hickory-resolver (which caches answers up to their TTL).

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig as HickoryConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::ResolverConfig;

pub struct Resolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    dns: Result<TokioResolver, String>,
}

impl Resolver {
    /// Builds the resolver; a missing or unreadable system DNS configuration is
    /// reported per lookup (names in `hosts` and address literals still work).
    pub fn new(cfg: &ResolverConfig) -> Resolver {
        let provider = TokioRuntimeProvider::default();
        let builder = match &cfg.nameservers {
            Some(list) => {
                let servers = list
                    .iter()
                    .map(|sa| {
                        let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                        for c in &mut ns.connections {
                            c.port = sa.port();
                        }
                        ns
                    })
                    .collect();
                Ok(TokioResolver::builder_with_config(
                    HickoryConfig::from_name_servers(servers),
                    provider,
                ))
            }
            None => TokioResolver::builder(provider).map_err(|e| format!("system DNS configuration: {e}")),
        };
        let dns = builder.and_then(|mut b| {
            let o = b.options_mut();
            o.cache_size = cfg.cache_size as u64;
            o.timeout = cfg.timeout;
            o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            b.build().map_err(|e| format!("DNS resolver: {e}"))
        });
        if let Err(e) = &dns {
            tracing::warn!("{e}; only `hosts` entries and address literals can be resolved");
        }
        Resolver {
            hosts: cfg.hosts.clone(),
            dns,
        }
    }

    /// All addresses of `host` (lower case, no brackets, no trailing dot), in
    /// the order they should be tried.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(ips) = self.hosts.get(host) {
            return Ok(ips.clone());
        }
        let dns = self.dns.as_ref().map_err(|e| e.clone())?;
        let fqdn = format!("{host}.");
        match dns.lookup_ip(fqdn.as_str()).await {
            Ok(l) => {
                let ips: Vec<IpAddr> = l.iter().collect();
                if ips.is_empty() {
                    Err(format!("no address for {host}"))
                } else {
                    Ok(ips)
                }
            }
            Err(e) => Err(format!("cannot resolve {host}: {e}")),
        }
    }
}
