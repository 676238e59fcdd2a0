//! `[pool.NAME]` and the `http`/`https` keys of `[[listener]]`.

use std::net::SocketAddr;

use http::{HeaderName, Method};

use super::*;
use crate::config::upstream::*;
use crate::upstream::balance::Algorithm;

pub(super) static POOL: TableKeys = TableKeys {
    path: "pool.NAME",
    keys: &[
        "server",
        "balance",
        "hash_key",
        "maxqueue",
        "queue_timeout",
        "retries",
        "max_fails",
        "fail_timeout",
        "fail_on_5xx",
        "check",
        "stick",
        "proxy_protocol",
        "tls",
        "tls_ca_file",
        "tls_server_name",
        "tls_verify",
        "source",
    ],
};

pub(super) static SERVER: TableKeys = TableKeys {
    path: "pool.NAME.server",
    keys: &["name", "address", "weight", "backup", "maxconn"],
};

pub(super) static CHECK: TableKeys = TableKeys {
    path: "pool.NAME.check",
    keys: &[
        "type",
        "interval",
        "timeout",
        "rise",
        "fall",
        "method",
        "path",
        "host",
        "expect",
        "payload_hex",
        "expect_hex",
    ],
};

pub(super) static STICK: TableKeys = TableKeys {
    path: "pool.NAME.stick",
    keys: &[
        "type",
        "cookie",
        "size",
        "expire",
        "key_length",
        "key_file",
        "key_env",
        "nocache",
        "maxidle",
        "maxlife",
    ],
};

pub(super) static TLS: TableKeys = TableKeys {
    path: "listener.tls",
    keys: &[
        "certificates",
        "default_certificate",
        "min_version",
        "max_version",
        "ciphers",
        "alpn",
    ],
};

pub(super) static CERTIFICATES: TableKeys = TableKeys {
    path: "listener.tls.certificates",
    keys: &["cert", "key"],
};

pub(super) static ROUTES: TableKeys = TableKeys {
    path: "listener.routes",
    keys: &["host", "path", "pool"],
};

const CAPTURE_KEYS: &[&str] = &["name", "len"];

pub(super) static CAPTURE_REQUEST_HEADERS: TableKeys = TableKeys {
    path: "listener.capture_request_headers",
    keys: CAPTURE_KEYS,
};

pub(super) static CAPTURE_RESPONSE_HEADERS: TableKeys = TableKeys {
    path: "listener.capture_response_headers",
    keys: CAPTURE_KEYS,
};

pub(super) static CAPTURE_COOKIE: TableKeys = TableKeys {
    path: "listener.capture_cookie",
    keys: CAPTURE_KEYS,
};

/// Reads every `[pool.NAME]`.
pub(super) fn pools(cx: &mut Cx, root: &mut Tab<'_, '_>) -> Vec<PoolConfig> {
    let mut out = Vec::new();
    let Some(v) = root.get("pool") else { return out };
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(
            v.span(),
            format!(
                "`pool` must be a table of NAME = {{ ... }}, not {}",
                type_name(v.get_ref())
            ),
        );
        return out;
    };
    for (k, v) in t.iter() {
        let name = k.get_ref().to_string();
        let path = format!("pool.{name}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            cx.err(
                k.span(),
                format!("`{name}`: a pool name is letters, digits, `.`, `_` or `-`"),
            );
            continue;
        }
        let DeValue::Table(def) = v.get_ref() else {
            cx.err(
                v.span(),
                format!("`{path}` must be a table with `[[{path}.server]]` entries"),
            );
            continue;
        };
        let mut tab = Tab::new(def, v.span(), path.clone(), &POOL);
        let servers = servers(cx, &mut tab, &path);
        let balance = match tab.str(cx, "balance") {
            None => Algorithm::RoundRobin,
            Some((s, span)) => Algorithm::parse(s).unwrap_or_else(|| {
                cx.err(
                    span,
                    format!("`{path}.balance` = `{s}`: expected round-robin, leastconn, source, uri, random or hash"),
                );
                Algorithm::RoundRobin
            }),
        };
        let hash_key = match tab.str(cx, "hash_key") {
            None => HashKey::Source,
            Some((s, span)) => {
                if balance != Algorithm::Hash {
                    cx.err(span.clone(), format!("`{path}.hash_key` needs `balance = \"hash\"`"));
                }
                parse_hash_key(s).unwrap_or_else(|m| {
                    cx.err(span, format!("`{path}.hash_key`: {m}"));
                    HashKey::Source
                })
            }
        };
        let maxqueue = tab.uint(cx, "maxqueue", 0, u32::MAX as u64).unwrap_or(0) as u32;
        let queue_timeout = tab.duration(cx, "queue_timeout").unwrap_or(Duration::from_secs(5));
        let retries = tab.uint(cx, "retries", 0, 16).unwrap_or(2) as u32;
        let max_fails = tab.uint(cx, "max_fails", 0, 1_000_000).unwrap_or(1) as u32;
        let fail_timeout = tab.duration(cx, "fail_timeout").unwrap_or(Duration::from_secs(10));
        let fail_on_5xx = tab.bool(cx, "fail_on_5xx").unwrap_or(false);
        let check = check(cx, &mut tab, &path);
        let stick = stick(cx, &mut tab, &path);
        let proxy_protocol = match tab.uint(cx, "proxy_protocol", 0, 2) {
            None | Some(0) => None,
            Some(n) => Some(n as u8),
        };
        let tls = upstream_tls(cx, &mut tab, &path);
        let source = match tab.str(cx, "source") {
            None | Some(("local", _)) => SourceMode::Local,
            Some(("client", _)) => SourceMode::Client,
            Some(("client-port", _)) => SourceMode::ClientPort,
            Some((o, span)) => {
                cx.err(
                    span,
                    format!("`{path}.source` = `{o}`: expected local, client or client-port"),
                );
                SourceMode::Local
            }
        };
        tab.finish(cx);
        out.push(PoolConfig {
            name: name.into(),
            servers,
            balance,
            hash_key,
            maxqueue,
            queue_timeout,
            retries,
            max_fails,
            fail_timeout,
            fail_on_5xx,
            check,
            stick,
            proxy_protocol,
            tls,
            source,
        });
    }
    out
}

/// `tls`, `tls_ca_file`, `tls_server_name`, `tls_verify` of a pool.
fn upstream_tls(cx: &mut Cx, tab: &mut Tab<'_, '_>, path: &str) -> Option<UpstreamTls> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let on = tab.bool(cx, "tls").unwrap_or(false);
    let ca = tab.str(cx, "tls_ca_file");
    let sni = tab.str(cx, "tls_server_name");
    let verify = tab.bool(cx, "tls_verify").unwrap_or(true);
    if !on {
        for (_, span) in [ca, sni].into_iter().flatten() {
            cx.err(span, format!("`{path}`: TLS settings without `tls = true`"));
        }
        return None;
    }
    let server_name = match sni {
        Some((n, span)) => match ServerName::try_from(n.to_string()) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.err(
                    span,
                    format!("`{path}.tls_server_name`: `{n}` is not a valid TLS server name"),
                );
                return None;
            }
        },
        None => None,
    };
    let config = if verify {
        // the parent-proxy builder checks the CA file; the name is set per connection
        super::egress::parent_tls(cx, path, ca, None, "localhost", &tab.span)?.config
    } else {
        if let Some((_, span)) = ca {
            cx.err(
                span,
                format!("`{path}.tls_ca_file` is not used with `tls_verify = false`"),
            );
        }
        match crate::upstream::tls::unverified() {
            Ok(c) => c,
            Err(e) => {
                cx.err(tab.span.clone(), format!("`{path}`: {e}"));
                return None;
            }
        }
    };
    Some(UpstreamTls { config, server_name })
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    Ok(match s {
        "source" => HashKey::Source,
        "uri" => HashKey::Uri,
        "host" => HashKey::Host,
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                HashKey::Header(
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{h}` is not a header name"))?,
                )
            } else if let Some(c) = s.strip_prefix("cookie:") {
                if c.is_empty()
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
                {
                    return Err(format!("`{c}` is not a cookie name"));
                }
                HashKey::Cookie(c.to_string())
            } else {
                return Err(format!("`{s}`: expected source, uri, host, header:NAME or cookie:NAME"));
            }
        }
    })
}

fn servers(cx: &mut Cx, tab: &mut Tab<'_, '_>, path: &str) -> Vec<ServerConfig> {
    let mut out: Vec<ServerConfig> = Vec::new();
    let Some(items) = tab.array(cx, "server") else {
        cx.err(
            tab.span.clone(),
            format!("`{path}` needs at least one `[[{path}.server]]`"),
        );
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let DeValue::Table(t) = item.get_ref() else {
            cx.err(item.span(), format!("`{path}.server` entries are tables"));
            continue;
        };
        let spath = format!("{path}.server[{i}]");
        let mut s = Tab::new(t, item.span(), spath.clone(), &SERVER);
        let addr = match s.str(cx, "address") {
            Some((a, span)) => match a.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => Some(a),
                _ => {
                    cx.err(span, format!("`{spath}.address` = `{a}` is not IP:PORT"));
                    None
                }
            },
            None => {
                cx.err(item.span(), format!("`{spath}` needs `address` (IP:PORT)"));
                None
            }
        };
        let name = match s.str(cx, "name") {
            Some((n, span)) => {
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                    cx.err(
                        span.clone(),
                        format!("`{spath}.name`: letters, digits, `.`, `_` or `-`"),
                    );
                }
                if out.iter().any(|o| &*o.name == n) {
                    cx.err(span, format!("server name `{n}` is used twice in `{path}`"));
                }
                Some(n.to_string())
            }
            None => None,
        };
        let weight = s.uint(cx, "weight", 0, 256).unwrap_or(1) as u32;
        let backup = s.bool(cx, "backup").unwrap_or(false);
        let maxconn = s.uint(cx, "maxconn", 0, u32::MAX as u64).unwrap_or(0) as u32;
        s.finish(cx);
        if let Some(addr) = addr {
            if out.iter().any(|o| o.addr == addr) {
                cx.err(item.span(), format!("server {addr} is listed twice in `{path}`"));
            }
            out.push(ServerConfig {
                name: name.unwrap_or_else(|| addr.to_string()).into(),
                addr,
                weight,
                backup,
                maxconn,
            });
        }
    }
    if out.is_empty() && !items.is_empty() {
        return out;
    }
    if items.is_empty() {
        cx.err(tab.span.clone(), format!("`{path}` needs at least one server"));
    }
    out
}

fn check(cx: &mut Cx, tab: &mut Tab<'_, '_>, path: &str) -> Option<CheckConfig> {
    let mut c = tab.table(cx, &CHECK)?;
    let cpath = format!("{path}.check");
    let kind = c.str(cx, "type").map(|(s, span)| (s.to_string(), span));
    let method = c.str(cx, "method").map(|(s, span)| (s.to_string(), span));
    let cpath_s = c.str(cx, "path").map(|(s, span)| (s.to_string(), span));
    let host = c.str(cx, "host").and_then(|(s, span)| {
        if s.is_empty() || http::HeaderValue::from_str(s).is_err() || s.contains(char::is_whitespace) {
            cx.err(span, format!("`{cpath}.host`: `{s}` is not a host name"));
            None
        } else {
            Some(s.to_string())
        }
    });
    let expect = c.str(cx, "expect").map(|(s, span)| (s.to_string(), span));
    let interval = c.duration(cx, "interval").unwrap_or(Duration::from_secs(2));
    let timeout = c.duration(cx, "timeout").unwrap_or(Duration::from_secs(1));
    let rise = c.uint(cx, "rise", 1, 1000).unwrap_or(2) as u32;
    let fall = c.uint(cx, "fall", 1, 1000).unwrap_or(3) as u32;
    let kind = match kind.as_ref().map(|(s, span)| (s.as_str(), span.clone())) {
        None | Some(("http", _)) => {
            let method = match method {
                None => Method::GET,
                Some((m, span)) => Method::from_bytes(m.as_bytes()).unwrap_or_else(|_| {
                    cx.err(span, format!("`{cpath}.method`: `{m}` is not a method"));
                    Method::GET
                }),
            };
            let p = match cpath_s {
                None => "/".to_string(),
                Some((p, span)) => {
                    if !p.starts_with('/') || p.contains(char::is_whitespace) {
                        cx.err(span, format!("`{cpath}.path` must start with `/` and have no spaces"));
                    }
                    p
                }
            };
            let expect = match expect {
                None => (200, 399),
                Some((e, span)) => parse_status_range(&e).unwrap_or_else(|| {
                    cx.err(
                        span,
                        format!("`{cpath}.expect` = `{e}`: write a status or a range such as \"200-399\""),
                    );
                    (200, 399)
                }),
            };
            CheckKind::Http {
                method,
                path: p,
                host,
                expect,
            }
        }
        Some(("udp", span)) => {
            let mut hex = |key: &'static str, c: &mut Tab<'_, '_>| -> Option<Vec<u8>> {
                let (h, hspan) = c.str(cx, key)?;
                match parse_hex(h) {
                    Some(b) if !b.is_empty() => Some(b),
                    _ => {
                        cx.err(hspan, format!("`{cpath}.{key}`: `{h}` is not hex bytes"));
                        None
                    }
                }
            };
            let payload = hex("payload_hex", &mut c);
            let expect_bytes = hex("expect_hex", &mut c);
            if payload.is_none() && !c.used.contains(&"payload_hex") {
                cx.err(
                    span,
                    format!("`{cpath}` (udp) needs `payload_hex`, the datagram to send"),
                );
            }
            CheckKind::Udp {
                payload: payload.unwrap_or_default(),
                expect: expect_bytes,
            }
        }
        Some(("tcp", _)) => {
            for (what, v) in [("method", &method), ("path", &cpath_s), ("expect", &expect)] {
                if let Some((_, span)) = v {
                    cx.err(
                        span.clone(),
                        format!("`{cpath}.{what}` is for HTTP checks (type = \"http\")"),
                    );
                }
            }
            CheckKind::Tcp
        }
        Some((other, span)) => {
            cx.err(span, format!("`{cpath}.type` = `{other}`: expected http, tcp or udp"));
            CheckKind::Tcp
        }
    };
    if timeout > interval {
        cx.err(
            c.span.clone(),
            format!("`{cpath}.timeout` must not be longer than `interval`"),
        );
    }
    c.finish(cx);
    Some(CheckConfig {
        kind,
        interval,
        timeout,
        rise,
        fall,
    })
}

/// `"12ab 00ff"` -> bytes (spaces and colons ignored).
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let p = |x: &str| x.trim().parse::<u16>().ok().filter(|n| (100..=599).contains(n));
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (p(a)?, p(b)?);
            (a <= b).then_some((a, b))
        }
        None => p(s).map(|n| (n, n)),
    }
}

fn stick(cx: &mut Cx, tab: &mut Tab<'_, '_>, path: &str) -> Option<StickConfig> {
    let mut s = tab.table(cx, &STICK)?;
    let spath = format!("{path}.stick");
    let kind = s.str(cx, "type").map(|(k, span)| (k.to_string(), span));
    let cookie = s.str(cx, "cookie").map(|(c, span)| (c.to_string(), span));
    let size = s.uint(cx, "size", 1, 100_000_000).unwrap_or(10_000) as usize;
    let expire = s.duration(cx, "expire").unwrap_or(Duration::from_secs(30 * 60));
    let key_len = s.uint(cx, "key_length", 1, 1024).unwrap_or(32) as usize;
    let key_file = s.str(cx, "key_file");
    let key_env = s.str(cx, "key_env");
    let nocache = s.bool(cx, "nocache").unwrap_or(true);
    let maxidle = s.duration(cx, "maxidle");
    let maxlife = s.duration(cx, "maxlife");
    let cookie_name = |cx: &mut Cx, what: &str| -> String {
        match &cookie {
            Some((c, span)) => {
                if c.is_empty()
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
                {
                    cx.err(span.clone(), format!("`{spath}.cookie`: `{c}` is not a cookie name"));
                }
                c.clone()
            }
            None => {
                cx.err(s.span.clone(), format!("`{spath}` ({what}) needs `cookie`"));
                String::new()
            }
        }
    };
    let out = match kind.as_ref().map(|(k, span)| (k.as_str(), span.clone())) {
        Some(("learn", _)) => Some(StickConfig::Learn {
            cookie: cookie_name(cx, "learn"),
            size,
            expire,
            key_len,
        }),
        Some(("insert", _)) => {
            let key = match (key_file, key_env) {
                (Some((f, span)), None) => match std::fs::read(f) {
                    Ok(b) => Some((trim_secret(b), span)),
                    Err(e) => {
                        cx.err(span, format!("`{spath}.key_file`: cannot read {f}: {e}"));
                        None
                    }
                },
                (None, Some((v, span))) => match std::env::var(v) {
                    Ok(k) => Some((k.into_bytes(), span)),
                    Err(_) => {
                        cx.err(
                            span,
                            format!("`{spath}.key_env`: the environment variable {v} is not set"),
                        );
                        None
                    }
                },
                (Some(_), Some((_, span))) => {
                    cx.err(span, format!("`{spath}`: use `key_file` or `key_env`, not both"));
                    None
                }
                (None, None) => {
                    cx.err(
                        s.span.clone(),
                        format!("`{spath}` (insert) needs the cookie key: `key_file` or `key_env`"),
                    );
                    None
                }
            };
            let key = match key {
                Some((k, span)) if k.len() < crate::upstream::stick::CookieCodec::MIN_KEY => {
                    cx.err(
                        span,
                        format!(
                            "`{spath}`: the cookie key must be at least {} bytes",
                            crate::upstream::stick::CookieCodec::MIN_KEY
                        ),
                    );
                    Vec::new()
                }
                Some((k, _)) => k,
                None => Vec::new(),
            };
            Some(StickConfig::Insert {
                cookie: cookie_name(cx, "insert"),
                key,
                nocache,
                maxidle,
                maxlife,
            })
        }
        Some(("source", _)) => Some(StickConfig::Source { size, expire }),
        Some((other, span)) => {
            cx.err(
                span,
                format!("`{spath}.type` = `{other}`: expected learn, insert or source"),
            );
            None
        }
        None => {
            cx.err(
                s.span.clone(),
                format!("`{spath}` needs `type` (learn, insert or source)"),
            );
            None
        }
    };
    s.finish(cx);
    out
}

/// A key file's bytes without a trailing line break.
fn trim_secret(mut b: Vec<u8>) -> Vec<u8> {
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    b
}

/// The `http`/`https` keys of a listener.
pub(super) fn http_listener(
    cx: &mut Cx,
    tab: &mut Tab<'_, '_>,
    path: &str,
    pools: &[PoolConfig],
    acls: &[(Acl, Option<Span>)],
) -> HttpListener {
    let pool_index = |cx: &mut Cx, name: &str, span: Span| -> Option<usize> {
        let i = pools.iter().position(|p| &*p.name == name);
        if i.is_none() {
            cx.err(span, format!("`{path}`: no `[pool.{name}]` is defined"));
        }
        i
    };
    let mut routes = Vec::new();
    if let Some(items) = tab.array(cx, "routes") {
        for (i, item) in items.iter().enumerate() {
            let DeValue::Table(t) = item.get_ref() else {
                cx.err(
                    item.span(),
                    format!("`{path}.routes` entries are tables {{ host, path, pool }}"),
                );
                continue;
            };
            let rpath = format!("{path}.routes[{i}]");
            let mut r = Tab::new(t, item.span(), rpath.clone(), &ROUTES);
            let host = r
                .str(cx, "host")
                .and_then(|(h, span)| match acl::DomainPattern::parse(h) {
                    Ok(p) => Some(p),
                    Err(m) => {
                        cx.err(span, format!("`{rpath}.host`: {m}"));
                        None
                    }
                });
            let prefix = match r.str(cx, "path") {
                Some((p, span)) => {
                    if !p.starts_with('/') {
                        cx.err(span, format!("`{rpath}.path` must start with `/`"));
                    }
                    p.to_string()
                }
                None => "/".to_string(),
            };
            let pool = match r.str(cx, "pool") {
                Some((p, span)) => pool_index(cx, p, span),
                None => {
                    cx.err(item.span(), format!("`{rpath}` needs `pool`"));
                    None
                }
            };
            r.finish(cx);
            if let Some(pool) = pool {
                routes.push(Route {
                    host,
                    path_prefix: prefix,
                    pool,
                });
            }
        }
    }
    let default_pool = tab
        .str(cx, "default_pool")
        .and_then(|(p, span)| pool_index(cx, p, span));
    if routes.is_empty() && default_pool.is_none() {
        cx.err(
            tab.span.clone(),
            format!("`{path}` needs `routes` and/or `default_pool`"),
        );
    }
    let xff = match tab.str(cx, "forwarded_for") {
        None | Some(("append", _)) => XffMode::Append,
        Some(("replace", _)) => XffMode::Replace,
        Some(("off", _)) => XffMode::Off,
        Some((o, span)) => {
            cx.err(
                span,
                format!("`{path}.forwarded_for` = `{o}`: expected append, replace or off"),
            );
            XffMode::Append
        }
    };
    let lookup = |n: &str| acls.iter().position(|(a, _)| a.name == n);
    let trusted = match tab.strings(cx, "trusted_proxies") {
        None => Rules::default(),
        Some(names) => {
            let mut rules = Vec::new();
            for (name, span) in names {
                match lookup(name) {
                    Some(i) if matches!(acls[i].0.kind, AclKind::Src(_) | AclKind::All) => rules.push(acl::Rule {
                        action: acl::Action::Allow,
                        terms: vec![(i, false)],
                        text: format!("allow {name}"),
                    }),
                    Some(_) => cx.err(span, format!("`{path}.trusted_proxies`: `{name}` is not a src ACL")),
                    None => cx.err(span, format!("`{path}.trusted_proxies`: undefined ACL `{name}`")),
                }
            }
            // nothing matched: not trusted
            rules.push(acl::Rule {
                action: acl::Action::Deny,
                terms: vec![(lookup("all").expect("built-in"), false)],
                text: "deny all".into(),
            });
            Rules { rules }
        }
    };
    let forwarding = Forwarding {
        xff,
        trusted,
        x_forwarded_proto: tab.bool(cx, "x_forwarded_proto").unwrap_or(true),
        x_real_ip: tab.bool(cx, "x_real_ip").unwrap_or(false),
        forwarded: tab.bool(cx, "forwarded").unwrap_or(false),
    };
    let captures = |cx: &mut Cx, tab: &mut Tab<'_, '_>, keys: &'static TableKeys| -> Vec<Capture> {
        let mut out = Vec::new();
        let key = keys.key();
        if let Some(items) = tab.array(cx, key) {
            for item in items {
                match capture(cx, item, &format!("{path}.{key}"), keys) {
                    Some(c) => out.push(c),
                    None => continue,
                }
            }
        }
        out
    };
    let capture_request = captures(cx, tab, &CAPTURE_REQUEST_HEADERS);
    let capture_response = captures(cx, tab, &CAPTURE_RESPONSE_HEADERS);
    let capture_cookie = tab.get("capture_cookie").and_then(|v| {
        let c = capture(cx, v, &format!("{path}.capture_cookie"), &CAPTURE_COOKIE)?;
        // cookie names keep their case; the header-name check above only vets the characters
        let DeValue::Table(t) = v.get_ref() else { return None };
        let name = t
            .iter()
            .find(|(k, _)| k.get_ref() == "name")
            .and_then(|(_, v)| match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                _ => None,
            })?;
        Some((name, c.len))
    });
    let h2c = tab.bool(cx, "h2c").unwrap_or(false);
    HttpListener {
        routes,
        default_pool,
        forwarding,
        capture_request,
        capture_response,
        capture_cookie,
        h2c,
    }
}

/// `[listener.tls]` of an `https` listener.
pub(super) fn tls(
    cx: &mut Cx,
    tab: &mut Tab<'_, '_>,
    path: &str,
    default_alpn: &[&str],
) -> Option<Arc<tokio_rustls::rustls::ServerConfig>> {
    use crate::listen::tls::{CertFiles, Settings, Version};
    let tpath = format!("{path}.tls");
    let Some(mut t) = tab.table(cx, &TLS) else {
        cx.err(
            tab.span.clone(),
            format!("`{path}` (https) needs `[{path}.tls]` with `certificates`"),
        );
        return None;
    };
    let mut certs = Vec::new();
    match t.array(cx, "certificates") {
        Some(items) => {
            for item in items {
                let DeValue::Table(ct) = item.get_ref() else {
                    cx.err(
                        item.span(),
                        format!("`{tpath}.certificates` entries are {{ cert = PATH, key = PATH }}"),
                    );
                    continue;
                };
                let mut c = Tab::new(ct, item.span(), format!("{tpath}.certificates"), &CERTIFICATES);
                let cert = c.str(cx, "cert").map(|(p, _)| std::path::PathBuf::from(p));
                let key = c.str(cx, "key").map(|(p, _)| std::path::PathBuf::from(p));
                c.finish(cx);
                match (cert, key) {
                    (Some(cert), Some(key)) => certs.push(CertFiles { cert, key }),
                    _ => cx.err(
                        item.span(),
                        format!("`{tpath}.certificates` entries need `cert` and `key`"),
                    ),
                }
            }
        }
        None => cx.err(t.span.clone(), format!("`{tpath}` needs `certificates`")),
    }
    let default_cert = t.uint(cx, "default_certificate", 0, 1 << 16).unwrap_or(0) as usize;
    let version = |cx: &mut Cx, t: &mut Tab<'_, '_>, key: &'static str, default: Version| match t.str(cx, key) {
        None => default,
        Some((v, span)) => Version::parse(v).unwrap_or_else(|m| {
            cx.err(span, format!("`{tpath}.{key}`: {m}"));
            default
        }),
    };
    let min_version = version(cx, &mut t, "min_version", Version::Tls12);
    let max_version = version(cx, &mut t, "max_version", Version::Tls13);
    let ciphers = t
        .strings(cx, "ciphers")
        .map(|l| l.into_iter().map(|(s, _)| s.to_string()).collect());
    let alpn = match t.strings(cx, "alpn") {
        Some(l) => l.into_iter().map(|(s, _)| s.to_string()).collect(),
        None => default_alpn.iter().map(|s| s.to_string()).collect(),
    };
    let span = t.span.clone();
    t.finish(cx);
    if certs.is_empty() {
        cx.err(span, format!("`{tpath}.certificates` needs at least one certificate"));
        return None;
    }
    if default_cert >= certs.len() {
        cx.err(
            span.clone(),
            format!(
                "`{tpath}.default_certificate` is {default_cert}, but there are {} certificates",
                certs.len()
            ),
        );
        return None;
    }
    if min_version > max_version {
        cx.err(span.clone(), format!("`{tpath}`: min_version is above max_version"));
        return None;
    }
    let settings = Settings {
        certs,
        default_cert,
        min_version,
        max_version,
        ciphers,
        alpn,
    };
    match crate::listen::tls::server_config(&settings) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.err(span, format!("`{tpath}`: {e}"));
            None
        }
    }
}

/// `{ name = "Host", len = 32 }`.
fn capture(cx: &mut Cx, item: &Val<'_>, path: &str, keys: &'static TableKeys) -> Option<Capture> {
    let DeValue::Table(t) = item.get_ref() else {
        cx.err(
            item.span(),
            format!("`{path}` entries are {{ name = \"Host\", len = 32 }}"),
        );
        return None;
    };
    let mut c = Tab::new(t, item.span(), path.to_string(), keys);
    let name = c.str(cx, "name");
    let len = c.uint(cx, "len", 1, 4096).unwrap_or(64) as usize;
    c.finish(cx);
    let (name, span) = name.or_else(|| {
        cx.err(item.span(), format!("`{path}` needs `name`"));
        None
    })?;
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) => Some(Capture { name: n, len }),
        Err(_) => {
            cx.err(span, format!("`{path}.name`: `{name}` is not a header or cookie name"));
            None
        }
    }
}
