//! The schema walker: reads the spanned TOML tree key by key, converts each
//! value, and records every problem instead of stopping at the first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::*;
use crate::observe::format::{LogFormat, Style};
use crate::observe::syslog::{SyslogAddress, SyslogConfig, SyslogFormat};
use crate::policy::acl::{self, Acl, AclKind, DomainPattern, Rules};

#[cfg(test)]
mod docs;
mod egress;
mod upstream;

type Span = Range<usize>;
type Val<'i> = Spanned<DeValue<'i>>;

#[derive(Default)]
struct Cx {
    diags: Vec<Diag>,
}

impl Cx {
    fn err(&mut self, span: Span, message: impl Into<String>) {
        self.diags.push(Diag {
            span,
            message: message.into(),
        });
    }
}

/// A table being read: remembers which keys were taken so the rest can be
/// reported as unknown.
struct Tab<'a, 'i> {
    t: &'a DeTable<'i>,
    span: Span,
    path: String,
    allowed: &'static TableKeys,
    used: Vec<&'a str>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn int_of(v: &DeValue<'_>) -> Option<i64> {
    match v {
        DeValue::Integer(i) => {
            let s = i.as_str().replace('_', "");
            let digits = s.trim_start_matches(['+', '-']);
            let digits = digits
                .strip_prefix("0x")
                .or_else(|| digits.strip_prefix("0o"))
                .or_else(|| digits.strip_prefix("0b"))
                .unwrap_or(digits);
            let n = i64::from_str_radix(digits, i.radix()).ok()?;
            Some(if s.starts_with('-') { -n } else { n })
        }
        _ => None,
    }
}

impl<'a, 'i> Tab<'a, 'i> {
    fn new(t: &'a DeTable<'i>, span: Span, path: impl Into<String>, allowed: &'static TableKeys) -> Self {
        debug_assert!(
            TABLES.iter().any(|k| std::ptr::eq(*k, allowed)),
            "table `{}` is read but not listed by schema()",
            allowed.path
        );
        Tab {
            t,
            span,
            path: path.into(),
            allowed,
            used: Vec::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Val<'i>> {
        debug_assert!(
            self.allowed.keys.contains(&key),
            "{key} not in the keys of `{}`",
            self.allowed.path
        );
        let (k, v) = self.t.iter().find(|(k, _)| k.get_ref() == key)?;
        self.used.push(k.get_ref());
        Some(v)
    }

    fn expect<T>(&self, cx: &mut Cx, key: &str, v: &Val<'_>, what: &str) -> Option<T> {
        cx.err(
            v.span(),
            format!(
                "`{}` must be {what}, not {}",
                self.key_path(key),
                type_name(v.get_ref())
            ),
        );
        None
    }

    fn str(&mut self, cx: &mut Cx, key: &'static str) -> Option<(&'a str, Span)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            _ => self.expect(cx, key, v, "a string"),
        }
    }

    fn bool(&mut self, cx: &mut Cx, key: &'static str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => self.expect(cx, key, v, "true or false"),
        }
    }

    fn uint(&mut self, cx: &mut Cx, key: &'static str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        match int_of(v.get_ref()) {
            Some(n) if n >= min as i64 && (n as u64) <= max => Some(n as u64),
            Some(n) => {
                cx.err(
                    v.span(),
                    format!("`{}` must be between {min} and {max}, not {n}", self.key_path(key)),
                );
                None
            }
            None => self.expect(cx, key, v, "an integer"),
        }
    }

    fn duration(&mut self, cx: &mut Cx, key: &'static str) -> Option<Duration> {
        let v = self.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::String(s) => parse_duration(s),
            DeValue::Integer(_) => match int_of(v.get_ref()) {
                Some(n) if n > 1_000_000_000 => Err(format!("{n} seconds is too long")),
                Some(n) if n >= 0 => Ok(Duration::from_secs(n as u64)),
                _ => Err("a duration cannot be negative".to_string()),
            },
            _ => return self.expect(cx, key, v, "a duration such as \"30s\" or \"250ms\""),
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                cx.err(v.span(), format!("`{}` must be longer than zero", self.key_path(key)));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.err(v.span(), format!("`{}`: {e}", self.key_path(key)));
                None
            }
        }
    }

    /// The sub-table `allowed` describes (its key is the last part of its path).
    fn table(&mut self, cx: &mut Cx, allowed: &'static TableKeys) -> Option<Tab<'a, 'i>> {
        let key = allowed.key();
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Tab::new(t, v.span(), self.key_path(key), allowed)),
            _ => self.expect(cx, key, v, "a table"),
        }
    }

    fn array(&mut self, cx: &mut Cx, key: &'static str) -> Option<&'a [Val<'i>]> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => self.expect(cx, key, v, "an array"),
        }
    }

    /// A string or an array of strings.
    fn strings(&mut self, cx: &mut Cx, key: &'static str) -> Option<Vec<(&'a str, Span)>> {
        let v = self.get(key)?;
        strings_of(cx, &self.key_path(key), v)
    }

    /// Reports every key that was not taken.
    fn finish(self, cx: &mut Cx) {
        for (k, _) in self.t.iter() {
            if !self.used.contains(&k.get_ref().as_ref()) {
                let place = if self.path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{}`", self.path)
                };
                cx.err(
                    k.span(),
                    format!(
                        "unknown key `{}` {place}; expected one of: {}",
                        k.get_ref(),
                        self.allowed.keys.join(", ")
                    ),
                );
            }
        }
    }
}

/// The entries of an array of tables (`[[key]]`, the key being the last part
/// of `allowed`'s path), each as a [`Tab`]; an entry that is not a table is
/// reported and skipped.
fn tables_of<'a, 'i>(cx: &mut Cx, root: &mut Tab<'a, 'i>, allowed: &'static TableKeys) -> Vec<(usize, Tab<'a, 'i>)> {
    let key = allowed.key();
    let Some(items) = root.array(cx, key) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.get_ref() {
            DeValue::Table(t) => out.push((i, Tab::new(t, item.span(), format!("{key}[{i}]"), allowed))),
            other => cx.err(
                item.span(),
                format!("`{key}` entries are tables ([[{key}]]), not {}", type_name(other)),
            ),
        }
    }
    out
}

fn strings_of<'a>(cx: &mut Cx, path: &str, v: &'a Val<'_>) -> Option<Vec<(&'a str, Span)>> {
    match v.get_ref() {
        DeValue::String(s) => Some(vec![(s.as_ref(), v.span())]),
        DeValue::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for item in a.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((s.as_ref(), item.span())),
                    other => cx.err(item.span(), format!("`{path}` lists strings, not {}", type_name(other))),
                }
            }
            Some(out)
        }
        other => {
            cx.err(
                v.span(),
                format!(
                    "`{path}` must be a string or an array of strings, not {}",
                    type_name(other)
                ),
            );
            None
        }
    }
}

/// `"30s"`, `"250ms"`, `"2m"`, `"1h"`, `"1d"`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (write e.g. \"30s\", \"250ms\", \"5m\")"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => return Err(format!("unknown unit `{u}` in `{s}` (use ms, s, m, h or d)")),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("`{s}` is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The column offset of a token inside a basic TOML string starting at `span.start`
/// (the opening quote). Exact when the string has no escapes before the token.
fn inner_span(span: &Span, offset: usize, len: usize) -> Span {
    let start = span.start + 1 + offset;
    start..start + len.max(1)
}

/// One table of the configuration file and the keys it takes. `path` names
/// its place: `""` is the top level, `listener` each `[[listener]]`,
/// `pool.NAME.check` the check of any pool, `listener.routes` each entry of
/// the `routes` array.
#[derive(Debug)]
pub struct TableKeys {
    pub path: &'static str,
    pub keys: &'static [&'static str],
}

impl TableKeys {
    /// The key the table sits under in its parent.
    fn key(&'static self) -> &'static str {
        self.path.rsplit('.').next().unwrap_or(self.path)
    }
}

/// Every table sekisho reads and the keys each accepts, as (path, keys):
/// the loader reads each table through these lists and reports any other key
/// as unknown, so this is the schema of the file.
pub fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    TABLES.iter().map(|t| (t.path, t.keys)).collect()
}

static TABLES: &[&TableKeys] = &[
    &TOP,
    &TIMEOUTS,
    &RESOLVER,
    &ACL,
    &HTTP,
    &TUNNEL,
    &ADMIN,
    &LISTENER,
    &PROXY_PROTOCOL,
    &upstream::ROUTES,
    &upstream::CAPTURE_REQUEST_HEADERS,
    &upstream::CAPTURE_RESPONSE_HEADERS,
    &upstream::CAPTURE_COOKIE,
    &upstream::TLS,
    &upstream::CERTIFICATES,
    &ACCESS_LOG,
    &AUTH,
    &AUTH_BASIC,
    &AUTH_DIGEST,
    &upstream::POOL,
    &upstream::SERVER,
    &upstream::CHECK,
    &upstream::STICK,
    &egress::SOURCE_POOL,
    &egress::OUTGOING,
    &egress::UPLINK,
    &egress::RETURN_PATH,
    &egress::PARENT,
    &egress::EGRESS,
    &egress::PAC,
];

static TOP: TableKeys = TableKeys {
    path: "",
    keys: &[
        "visible_hostname",
        "timeouts",
        "resolver",
        "hosts",
        "acl",
        "http",
        "tunnel",
        "admin",
        "listener",
        "access_log",
        "auth",
        "user",
        "group",
        "source_pool",
        "outgoing",
        "uplink",
        "parent",
        "egress",
        "pac",
        "pool",
        "return_path",
        "pid_file",
        "control_socket",
        "maxconn",
        "threads",
    ],
};

static TIMEOUTS: TableKeys = TableKeys {
    path: "timeouts",
    keys: &[
        "connect",
        "client_header",
        "client_idle",
        "server_response",
        "tunnel_idle",
        "shutdown",
    ],
};

static RESOLVER: TableKeys = TableKeys {
    path: "resolver",
    keys: &["nameservers", "cache_size", "timeout"],
};

/// `[acl]`: each ACL is a table with one of these types as its only key.
static ACL: TableKeys = TableKeys {
    path: "acl.NAME",
    keys: &["src", "dst", "dstdomain", "port", "method", "proxy_auth"],
};

static HTTP: TableKeys = TableKeys {
    path: "http",
    keys: &[
        "anonymous",
        "via",
        "forwarded_for",
        "request_header_delete",
        "max_header_size",
        "max_headers",
    ],
};

static TUNNEL: TableKeys = TableKeys {
    path: "tunnel",
    keys: &["relay", "buffer"],
};

static ADMIN: TableKeys = TableKeys {
    path: "admin",
    keys: &["bind", "access", "enabled", "actions_token_file", "actions_token_env"],
};

static LISTENER: TableKeys = TableKeys {
    path: "listener",
    keys: &[
        "name",
        "bind",
        "mode",
        "access",
        "proxy_protocol",
        "routes",
        "default_pool",
        "forwarded_for",
        "trusted_proxies",
        "x_forwarded_proto",
        "x_real_ip",
        "forwarded",
        "capture_request_headers",
        "capture_response_headers",
        "capture_cookie",
        "h2c",
        "tls",
        "responses",
        "timeout",
        "max_sessions",
        "maxconn",
        "maxconn_per_source",
    ],
};

static AUTH: TableKeys = TableKeys {
    path: "auth",
    keys: &["realm", "basic", "digest"],
};

static AUTH_BASIC: TableKeys = TableKeys {
    path: "auth.basic",
    keys: &["file", "credentials_ttl"],
};

static AUTH_DIGEST: TableKeys = TableKeys {
    path: "auth.digest",
    keys: &[
        "file",
        "algorithms",
        "nonce_max_duration",
        "nonce_max_count",
        "nonce_garbage_interval",
        "nonce_count_window",
    ],
};

static PROXY_PROTOCOL: TableKeys = TableKeys {
    path: "listener.proxy_protocol",
    keys: &["require", "trusted", "timeout"],
};

static ACCESS_LOG: TableKeys = TableKeys {
    path: "access_log",
    keys: &[
        "output",
        "format",
        "style",
        "queue_size",
        "syslog_address",
        "syslog_format",
        "syslog_facility",
        "syslog_severity",
        "syslog_tag",
        "syslog_hostname",
        "syslog_max_length",
    ],
};

pub(super) fn load(src: &str) -> Result<Config, Vec<Diag>> {
    let (doc, errors) = DeTable::parse_recoverable(src);
    let mut cx = Cx::default();
    for e in errors {
        cx.err(e.span().unwrap_or(0..0), format!("TOML syntax: {}", e.message()));
    }
    if !cx.diags.is_empty() {
        return Err(cx.diags);
    }
    let mut root = Tab::new(doc.get_ref(), doc.span(), "", &TOP);

    let visible_hostname = match root.str(&mut cx, "visible_hostname") {
        Some((s, span)) => {
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                cx.err(span, "`visible_hostname` must be a non-empty name without spaces");
            }
            s.to_string()
        }
        None => system_hostname(),
    };

    let timeouts = timeouts(&mut cx, &mut root);
    let resolver = resolver(&mut cx, &mut root);
    let acls = acls(&mut cx, &mut root);
    let mut http = http_options(&mut cx, &mut root);
    if http.via {
        http.via_value = http::HeaderValue::from_str(&format!("1.1 {visible_hostname}")).ok();
    }
    let tunnel_relay = tunnel(&mut cx, &mut root);
    let admin = admin(&mut cx, &mut root, &acls);
    let pools = upstream::pools(&mut cx, &mut root);
    let listeners = listeners(&mut cx, &mut root, &acls, admin.as_ref(), &pools);
    let access_logs = access_logs(&mut cx, &mut root);
    let auth = auth(&mut cx, &mut root);
    check_auth_use(&mut cx, &acls, &listeners, admin.as_ref(), auth.is_some());
    let run_as = run_as(&mut cx, &mut root);
    if run_as.is_some()
        && let Some(p) = pools
            .iter()
            .find(|p| p.source != crate::config::upstream::SourceMode::Local)
    {
        let span = root
            .t
            .iter()
            .find(|(k, _)| k.get_ref() == "user")
            .map(|(_, v)| v.span())
            .unwrap_or(0..0);
        cx.err(
            span,
            format!(
                "pool `{}` sends from the client's address, which needs CAP_NET_ADMIN; switching to `user` gives it up: run without `user` (as root or with the capability)",
                p.name
            ),
        );
    }
    let egress = egress::egress(&mut cx, &mut root, &acls, &listeners, &visible_hostname);
    let pid_file = abs_path(&mut cx, &mut root, "pid_file");
    let control_socket = abs_path(&mut cx, &mut root, "control_socket");
    let maxconn = root.uint(&mut cx, "maxconn", 1, 10_000_000).unwrap_or(0) as u32;
    let threads = root.uint(&mut cx, "threads", 1, 1024).unwrap_or(0) as usize;
    root.finish(&mut cx);

    if !cx.diags.is_empty() {
        return Err(cx.diags);
    }
    Ok(Config {
        visible_hostname,
        timeouts,
        resolver,
        acls: acls.into_iter().map(|(a, _)| a).collect::<Vec<_>>().into(),
        http,
        tunnel_relay,
        admin,
        listeners,
        access_logs,
        auth,
        run_as,
        egress,
        pools,
        pid_file,
        control_socket,
        maxconn,
        threads,
        live: Default::default(),
    })
}

/// An optional key naming an absolute path.
fn abs_path(cx: &mut Cx, tab: &mut Tab<'_, '_>, key: &'static str) -> Option<PathBuf> {
    let (p, span) = tab.str(cx, key)?;
    if !p.starts_with('/') {
        cx.err(
            span,
            format!("`{}` must be an absolute path, not `{p}`", tab.key_path(key)),
        );
        return None;
    }
    Some(PathBuf::from(p))
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end])
            && !s.is_empty()
        {
            return s.to_string();
        }
    }
    "localhost".to_string()
}

fn timeouts(cx: &mut Cx, root: &mut Tab<'_, '_>) -> Timeouts {
    let mut t = Timeouts::default();
    if let Some(mut tab) = root.table(cx, &TIMEOUTS) {
        if let Some(d) = tab.duration(cx, "connect") {
            t.connect = d;
        }
        if let Some(d) = tab.duration(cx, "client_header") {
            t.client_header = d;
        }
        if let Some(d) = tab.duration(cx, "client_idle") {
            t.client_idle = d;
        }
        if let Some(d) = tab.duration(cx, "server_response") {
            t.server_response = d;
        }
        if let Some(d) = tab.duration(cx, "tunnel_idle") {
            t.tunnel_idle = d;
        }
        if let Some(d) = tab.duration(cx, "shutdown") {
            t.shutdown = d;
        }
        tab.finish(cx);
    }
    t
}

fn resolver(cx: &mut Cx, root: &mut Tab<'_, '_>) -> ResolverConfig {
    let mut r = ResolverConfig {
        hosts: HashMap::new(),
        nameservers: None,
        cache_size: 4096,
        timeout: Duration::from_secs(5),
    };
    if let Some(mut tab) = root.table(cx, &RESOLVER) {
        if let Some(list) = tab.strings(cx, "nameservers") {
            let mut out = Vec::new();
            for (s, span) in list {
                match s
                    .parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                {
                    Ok(a) => out.push(a),
                    Err(_) => cx.err(span, format!("`{s}` is not a name server address (IP or IP:port)")),
                }
            }
            r.nameservers = Some(out);
        }
        if let Some(n) = tab.uint(cx, "cache_size", 0, 1 << 24) {
            r.cache_size = n as usize;
        }
        if let Some(d) = tab.duration(cx, "timeout") {
            r.timeout = d;
        }
        tab.finish(cx);
    }
    if let Some(v) = root.get("hosts") {
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    let name = k.get_ref().trim_end_matches('.').to_ascii_lowercase();
                    if name.is_empty() || name.contains(char::is_whitespace) {
                        cx.err(k.span(), format!("`{}` is not a host name", k.get_ref()));
                        continue;
                    }
                    let Some(addrs) = strings_of(cx, &format!("hosts.{name}"), v) else {
                        continue;
                    };
                    let mut ips = Vec::new();
                    for (s, span) in addrs {
                        match s.parse::<IpAddr>() {
                            Ok(ip) => ips.push(ip),
                            Err(_) => cx.err(span, format!("`{s}` is not an IP address (hosts.{name})")),
                        }
                    }
                    if ips.is_empty() {
                        cx.err(v.span(), format!("`hosts.{name}` needs at least one address"));
                    }
                    r.hosts.insert(name, ips);
                }
            }
            other => {
                cx.err(
                    v.span(),
                    format!(
                        "`hosts` must be a table of name = [addresses], not {}",
                        type_name(other)
                    ),
                );
            }
        }
    }
    r
}

/// Built-ins and the `[acl]` table, each with the span of its definition.
fn acls(cx: &mut Cx, root: &mut Tab<'_, '_>) -> Vec<(Acl, Option<Span>)> {
    let mut out: Vec<(Acl, Option<Span>)> = acl::builtins().into_iter().map(|a| (a, None)).collect();
    let Some(v) = root.get("acl") else { return out };
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(
            v.span(),
            format!(
                "`acl` must be a table of NAME = {{ TYPE = [...] }}, not {}",
                type_name(v.get_ref())
            ),
        );
        return out;
    };
    let types = ACL.keys;
    for (k, v) in t.iter() {
        let name = k.get_ref().as_ref();
        let path = format!("acl.{name}");
        if name.starts_with('!') || name.is_empty() || name.contains(char::is_whitespace) {
            cx.err(k.span(), format!("`{name}` cannot be an ACL name"));
            continue;
        }
        if out.iter().any(|(a, _)| a.name == name) {
            cx.err(k.span(), format!("ACL `{name}` is built in and cannot be redefined"));
            continue;
        }
        let DeValue::Table(def) = v.get_ref() else {
            cx.err(
                v.span(),
                format!("`{path}` must be a table with one of: {}", types.join(", ")),
            );
            continue;
        };
        if def.len() != 1 {
            cx.err(
                v.span(),
                format!("`{path}` must have exactly one type key, one of: {}", types.join(", ")),
            );
            continue;
        }
        let (tk, tv) = def.iter().next().expect("one entry");
        let kind = match tk.get_ref().as_ref() {
            "src" | "dst" => {
                let Some(items) = strings_of(cx, &path, tv) else {
                    continue;
                };
                let mut nets = Vec::new();
                for (s, span) in items {
                    match parse_net(s) {
                        Ok(n) => nets.push(n),
                        Err(e) => cx.err(span, format!("{e} (in ACL `{name}`)")),
                    }
                }
                if tk.get_ref() == "src" {
                    AclKind::Src(nets)
                } else {
                    AclKind::Dst(nets)
                }
            }
            "dstdomain" => {
                let Some(items) = strings_of(cx, &path, tv) else {
                    continue;
                };
                let mut pats = Vec::new();
                for (s, span) in items {
                    match DomainPattern::parse(s) {
                        Ok(p) => pats.push(p),
                        Err(e) => cx.err(span, format!("{e} (in ACL `{name}`)")),
                    }
                }
                AclKind::DstDomain(pats)
            }
            "port" => {
                let items: Vec<&Val<'_>> = match tv.get_ref() {
                    DeValue::Array(a) => a.iter().collect(),
                    _ => vec![tv],
                };
                let mut ranges = Vec::new();
                for item in items {
                    let parsed = match item.get_ref() {
                        DeValue::String(s) => acl::parse_port_range(s),
                        DeValue::Integer(_) => match int_of(item.get_ref()) {
                            Some(n) => acl::parse_port_range(&n.to_string()),
                            None => Err("not a port".to_string()),
                        },
                        other => Err(format!(
                            "a port is a number or a \"low-high\" range, not {}",
                            type_name(other)
                        )),
                    };
                    match parsed {
                        Ok(r) => ranges.push(r),
                        Err(e) => cx.err(item.span(), format!("{e} (in ACL `{name}`)")),
                    }
                }
                AclKind::Port(ranges)
            }
            "method" => {
                let Some(items) = strings_of(cx, &path, tv) else {
                    continue;
                };
                let mut ms = Vec::new();
                for (s, span) in items {
                    match Method::from_bytes(s.as_bytes()) {
                        Ok(m) if !s.is_empty() => ms.push(m),
                        _ => cx.err(span, format!("`{s}` is not an HTTP method (in ACL `{name}`)")),
                    }
                }
                AclKind::Method(ms)
            }
            "proxy_auth" => {
                let Some(items) = strings_of(cx, &path, tv) else {
                    continue;
                };
                if items.len() == 1 && items[0].0 == "REQUIRED" {
                    AclKind::ProxyAuth(None)
                } else {
                    let mut users = Vec::new();
                    for (s, span) in items {
                        if s.is_empty() || s == "REQUIRED" || s.contains(char::is_whitespace) {
                            cx.err(
                                span,
                                format!(
                                    "`{s}` is not a user name (in ACL `{name}`: use \"REQUIRED\" alone, or a list of users)"
                                ),
                            );
                        } else {
                            users.push(s.to_string());
                        }
                    }
                    AclKind::ProxyAuth(Some(users))
                }
            }
            other => {
                cx.err(
                    tk.span(),
                    format!(
                        "unknown ACL type `{other}` in `{path}`; expected one of: {}",
                        types.join(", ")
                    ),
                );
                continue;
            }
        };
        out.push((
            Acl {
                name: name.to_string(),
                kind,
            },
            Some(k.span()),
        ));
    }
    out
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        if n.network() != n.addr() {
            return Err(format!("`{s}` has host bits set; did you mean `{}`?", n.trunc()));
        }
        return Ok(n);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("`{s}` is not a CIDR network or IP address"))
}

/// Parses the `access` rule list of a listener or the admin server.
fn rules(cx: &mut Cx, tab: &mut Tab<'_, '_>, acls: &[(Acl, Option<Span>)], default: &[&str]) -> Rules {
    let lookup = |n: &str| acls.iter().position(|(a, _)| a.name == n);
    let Some(items) = tab.strings(cx, "access") else {
        return Rules {
            rules: default
                .iter()
                .map(|l| acl::parse_rule(l, lookup).expect("default rule"))
                .collect(),
        };
    };
    let mut out = Vec::new();
    for (text, span) in items {
        match acl::parse_rule(text, lookup) {
            Ok(r) => out.push(r),
            Err(errs) => {
                for (off, msg) in errs {
                    let tok_len = text[off.min(text.len())..]
                        .split_ascii_whitespace()
                        .next()
                        .map_or(1, str::len);
                    cx.err(inner_span(&span, off, tok_len), msg);
                }
            }
        }
    }
    Rules { rules: out }
}

/// Request headers `http.anonymous` removes unless `request_header_delete` says otherwise.
pub const ANONYMOUS_DELETE: &[&str] = &["x-forwarded-for", "via", "cache-control", "forwarded", "x-real-ip"];

fn http_options(cx: &mut Cx, root: &mut Tab<'_, '_>) -> HttpOptions {
    let mut h = HttpOptions {
        via: true,
        forwarded_for: ForwardedFor::On,
        request_header_delete: Vec::new(),
        via_value: None,
        anonymous: false,
        max_header_size: 64 * 1024,
        max_headers: 100,
    };
    let Some(mut tab) = root.table(cx, &HTTP) else {
        return h;
    };
    if tab.bool(cx, "anonymous") == Some(true) {
        // hide that a proxy is in the path; each key below still overrides
        h.anonymous = true;
        h.via = false;
        h.forwarded_for = ForwardedFor::Delete;
        h.request_header_delete = ANONYMOUS_DELETE.iter().map(|n| HeaderName::from_static(n)).collect();
    }
    if let Some(b) = tab.bool(cx, "via") {
        h.via = b;
    }
    if let Some((s, span)) = tab.str(cx, "forwarded_for") {
        h.forwarded_for = match s {
            "on" => ForwardedFor::On,
            "off" => ForwardedFor::Off,
            "delete" => ForwardedFor::Delete,
            "transparent" => ForwardedFor::Transparent,
            _ => {
                cx.err(
                    span,
                    format!("`http.forwarded_for` is one of on, off, delete, transparent; not `{s}`"),
                );
                ForwardedFor::On
            }
        };
    }
    if let Some(n) = tab.uint(cx, "max_header_size", 8192, 16 * 1024 * 1024) {
        h.max_header_size = n as usize;
    }
    if let Some(n) = tab.uint(cx, "max_headers", 1, 10_000) {
        h.max_headers = n as usize;
    }
    if let Some(list) = tab.strings(cx, "request_header_delete") {
        h.request_header_delete.clear();
        for (s, span) in list {
            match HeaderName::from_bytes(s.as_bytes()) {
                Ok(n) => h.request_header_delete.push(n),
                Err(_) => cx.err(span, format!("`{s}` is not a header name")),
            }
        }
    }
    tab.finish(cx);
    h
}

fn tunnel(cx: &mut Cx, root: &mut Tab<'_, '_>) -> crate::relay::tunnel::Method {
    use crate::relay::tunnel::Method;
    let Some(mut tab) = root.table(cx, &TUNNEL) else {
        return Method::Copy(Method::BUFFER);
    };
    let buffer = tab.get("buffer").map(|v| v.span());
    let size = tab.uint(cx, "buffer", 4096, 16 << 20).map(|n| n as usize);
    let m = match tab.str(cx, "relay") {
        Some(("copy", _)) | None => Method::Copy(size.unwrap_or(Method::BUFFER)),
        Some(("splice", _)) => {
            if let Some(span) = buffer {
                cx.err(
                    span,
                    "`tunnel.buffer` sizes the `copy` relay's buffers; `splice` has none".to_string(),
                );
            }
            Method::Splice
        }
        Some((s, span)) => {
            cx.err(span, format!("`tunnel.relay` is \"copy\" or \"splice\", not `{s}`"));
            Method::Copy(Method::BUFFER)
        }
    };
    tab.finish(cx);
    m
}

fn socket_addr(cx: &mut Cx, path: &str, s: &str, span: Span) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            cx.err(span, format!("`{path}`: port 0 is not a listening port"));
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            let hint = match s.rsplit_once(':') {
                Some((_, p)) if p.parse::<u32>().is_ok_and(|n| n > 65535) => {
                    format!("port {p} is out of range (1-65535)")
                }
                Some((_, p)) if p.parse::<u32>().is_err() => format!("`{p}` is not a port"),
                None => "it has no port".to_string(),
                _ => "write ADDRESS:PORT, with IPv6 in brackets".to_string(),
            };
            cx.err(span, format!("`{path}` = \"{s}\" is not an address:port: {hint}"));
            None
        }
    }
}

fn admin(cx: &mut Cx, root: &mut Tab<'_, '_>, acls: &[(Acl, Option<Span>)]) -> Option<AdminConfig> {
    let mut tab = root.table(cx, &ADMIN)?;
    let enabled = tab.bool(cx, "enabled").unwrap_or(true);
    let bind = match tab.str(cx, "bind") {
        Some((s, span)) => socket_addr(cx, "admin.bind", s, span),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8404))),
    };
    let access = rules(cx, &mut tab, acls, &["allow localhost", "deny all"]);
    let actions_token = actions_token(cx, &mut tab);
    tab.finish(cx);
    if !enabled {
        return None;
    }
    Some(AdminConfig {
        bind: bind?,
        access,
        actions_token,
    })
}

/// `admin.actions_token_file` or `admin.actions_token_env`: the secret the
/// operator actions need (a trailing newline of the file is not part of it).
fn actions_token(cx: &mut Cx, tab: &mut Tab<'_, '_>) -> Option<crate::observe::actions::Token> {
    let (text, span, key) = match (tab.str(cx, "actions_token_file"), tab.str(cx, "actions_token_env")) {
        (None, None) => return None,
        (Some(_), Some((_, span))) => {
            cx.err(
                span,
                "`admin`: use `actions_token_file` or `actions_token_env`, not both",
            );
            return None;
        }
        (Some((f, span)), None) => {
            if !f.starts_with('/') {
                cx.err(
                    span,
                    format!("`admin.actions_token_file` must be an absolute path, not `{f}`"),
                );
                return None;
            }
            match std::fs::read(f) {
                Ok(mut b) => {
                    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                        b.pop();
                    }
                    (b, span, "actions_token_file")
                }
                Err(e) => {
                    cx.err(span, format!("`admin.actions_token_file`: cannot read {f}: {e}"));
                    return None;
                }
            }
        }
        (None, Some((v, span))) => match std::env::var(v) {
            Ok(t) if !t.is_empty() => (t.into_bytes(), span, "actions_token_env"),
            _ => {
                cx.err(
                    span,
                    format!("`admin.actions_token_env`: the environment variable {v} is not set"),
                );
                return None;
            }
        },
    };
    match crate::observe::actions::Token::new(&text) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.err(span, format!("`admin.{key}`: {e}"));
            None
        }
    }
}

fn listeners(
    cx: &mut Cx,
    root: &mut Tab<'_, '_>,
    acls: &[(Acl, Option<Span>)],
    admin: Option<&AdminConfig>,
    pools: &[crate::config::upstream::PoolConfig],
) -> Vec<ListenerConfig> {
    const UDP_ONLY: &[&str] = &["responses", "timeout", "max_sessions"];
    const HTTP_ONLY: &[&str] = &[
        "routes",
        "default_pool",
        "forwarded_for",
        "trusted_proxies",
        "x_forwarded_proto",
        "x_real_ip",
        "forwarded",
        "capture_request_headers",
        "capture_response_headers",
        "capture_cookie",
        "h2c",
        "tls",
    ];
    let mut out: Vec<ListenerConfig> = Vec::new();
    // (address, where, UDP): TCP and UDP listeners may share an address
    let mut seen: Vec<(SocketAddr, Span, bool)> = Vec::new();
    if let Some(a) = admin {
        seen.push((a.bind, 0..0, false));
    }
    for (i, mut tab) in tables_of(cx, root, &LISTENER) {
        let name = match tab.str(cx, "name") {
            Some((s, span)) => {
                if out.iter().any(|l| &*l.name == s) {
                    cx.err(span, format!("listener name `{s}` is used twice"));
                }
                s.to_string()
            }
            None => format!("listener{i}"),
        };
        let mode = match tab.str(cx, "mode") {
            Some(("forward", _)) | None => Mode::Forward,
            Some(("http", _)) => Mode::Http,
            Some(("https", _)) => Mode::Https,
            Some(("tcp", _)) => Mode::Tcp,
            Some(("udp", _)) => Mode::Udp,
            Some((s, span)) => {
                cx.err(
                    span,
                    format!("`listener[{i}].mode` = `{s}` is not supported; supported: forward, http, https, tcp, udp"),
                );
                Mode::Forward
            }
        };
        let bind = match tab.str(cx, "bind") {
            Some((s, span)) => {
                let a = socket_addr(cx, &format!("listener[{i}].bind"), s, span.clone());
                if let Some(a) = a {
                    let udp = mode == Mode::Udp;
                    if let Some((_, prev, _)) = seen.iter().find(|(b, _, u)| *u == udp && overlaps(*b, a)) {
                        let other = if prev.is_empty() {
                            "the admin server's bind".to_string()
                        } else {
                            "an earlier listener".to_string()
                        };
                        cx.err(
                            span.clone(),
                            format!("duplicate listener address {a}: {other} already binds it"),
                        );
                    }
                    seen.push((a, span, udp));
                }
                a
            }
            None => {
                cx.err(tab.span.clone(), format!("`listener[{i}]` needs `bind` (ADDRESS:PORT)"));
                None
            }
        };
        let default_access: &[&str] = if mode == Mode::Forward {
            &["allow localhost", "deny all"]
        } else {
            &["allow all"]
        };
        let access = rules(cx, &mut tab, acls, default_access);
        let proxy_protocol = proxy_protocol(cx, &mut tab, acls);
        let lpath = format!("listener[{i}]");
        let mut tcp_pool = None;
        let mut udp = None;
        if mode != Mode::Udp {
            reject_keys(cx, &mut tab, &lpath, UDP_ONLY, &[], "is for `udp` listeners");
        } else {
            reject_keys(
                cx,
                &mut tab,
                &lpath,
                &["maxconn", "maxconn_per_source"],
                &[],
                "is for TCP listeners (`udp` ones have `max_sessions`)",
            );
        }
        let maxconn = tab.uint(cx, "maxconn", 0, 10_000_000).unwrap_or(0) as u32;
        let maxconn_per_source = tab.uint(cx, "maxconn_per_source", 0, 10_000_000).unwrap_or(0) as u32;
        let (http, tls) = match mode {
            Mode::Forward => {
                reject_keys(
                    cx,
                    &mut tab,
                    &lpath,
                    HTTP_ONLY,
                    &[],
                    "is for `http` and `https` listeners",
                );
                (None, None)
            }
            Mode::Http => {
                let h = upstream::http_listener(cx, &mut tab, &lpath, pools, acls);
                if let Some(span) = tab.t.iter().find(|(k, _)| k.get_ref() == "tls").map(|(k, _)| k.span()) {
                    tab.used.push("tls");
                    cx.err(span, format!("`{lpath}.tls` needs `mode = \"https\"`"));
                }
                (Some(Arc::new(h)), None)
            }
            Mode::Https => {
                let h = upstream::http_listener(cx, &mut tab, &lpath, pools, acls);
                (
                    Some(Arc::new(h)),
                    upstream::tls(cx, &mut tab, &lpath, &["h2", "http/1.1"]),
                )
            }
            Mode::Udp => {
                reject_keys(
                    cx,
                    &mut tab,
                    &lpath,
                    HTTP_ONLY,
                    &["default_pool"],
                    "is not for `udp` listeners",
                );
                tcp_pool = default_pool(cx, &mut tab, &lpath, pools, "udp");
                udp = Some(UdpOptions {
                    responses: tab.uint(cx, "responses", 0, 1_000_000).map(|n| n as u32),
                    timeout: tab.duration(cx, "timeout").unwrap_or(Duration::from_secs(10)),
                    max_sessions: tab.uint(cx, "max_sessions", 1, 10_000_000).unwrap_or(10_000) as usize,
                });
                if tab.t.iter().any(|(k, _)| k.get_ref() == "proxy_protocol") {
                    cx.err(
                        tab.span.clone(),
                        format!("`{lpath}.proxy_protocol` is not for `udp` listeners"),
                    );
                }
                (None, None)
            }
            Mode::Tcp => {
                reject_keys(
                    cx,
                    &mut tab,
                    &lpath,
                    HTTP_ONLY,
                    &["default_pool", "tls"],
                    "is for `http` and `https` listeners",
                );
                tcp_pool = default_pool(cx, &mut tab, &lpath, pools, "tcp");
                let tls = if tab.t.iter().any(|(k, _)| k.get_ref() == "tls") {
                    upstream::tls(cx, &mut tab, &lpath, &[])
                } else {
                    None
                };
                (None, tls)
            }
        };
        // the pools this listener sends to, and what their `source` asks of it
        let used = crate::config::pools_of(http.as_deref(), tcp_pool);
        for &p in &used {
            use crate::config::upstream::SourceMode;
            let pool = &pools[p];
            if pool.source == SourceMode::ClientPort {
                let dsr_ok = mode == Mode::Udp && udp.is_some_and(|u| u.responses == Some(0));
                if !dsr_ok {
                    cx.err(
                        tab.span.clone(),
                        format!(
                            "`{lpath}`: pool `{}` has `source = \"client-port\"` (direct server return), which needs a `udp` listener with `responses = 0`",
                            pool.name
                        ),
                    );
                } else if pool.check.is_none() {
                    cx.err(
                        tab.span.clone(),
                        format!(
                            "`{lpath}`: pool `{}` returns answers directly to clients, so only active checks can see its servers: add `[pool.{}.check]`",
                            pool.name, pool.name
                        ),
                    );
                }
            }
        }
        tab.finish(cx);
        if let Some(bind) = bind {
            out.push(ListenerConfig {
                name: name.into(),
                bind,
                mode,
                access,
                proxy_protocol,
                http,
                tls,
                tcp_pool,
                udp,
                maxconn,
                maxconn_per_source,
                stats: Default::default(),
            });
        }
    }
    out
}

/// Reports each of `keys` (but those in `keep`) that the listener sets: `why` says for whom it is.
fn reject_keys(
    cx: &mut Cx,
    tab: &mut Tab<'_, '_>,
    lpath: &str,
    keys: &'static [&'static str],
    keep: &[&str],
    why: &str,
) {
    for key in keys.iter().filter(|k| !keep.contains(k)) {
        if let Some(span) = tab.t.iter().find(|(k, _)| k.get_ref() == *key).map(|(k, _)| k.span()) {
            tab.used.push(key);
            cx.err(span, format!("`{lpath}.{key}` {why}"));
        }
    }
}

/// The `default_pool` a `tcp` or `udp` listener needs.
fn default_pool(
    cx: &mut Cx,
    tab: &mut Tab<'_, '_>,
    lpath: &str,
    pools: &[crate::config::upstream::PoolConfig],
    mode: &str,
) -> Option<usize> {
    match tab.str(cx, "default_pool") {
        Some((p, span)) => {
            let i = pools.iter().position(|x| &*x.name == p);
            if i.is_none() {
                cx.err(span, format!("`{lpath}`: no `[pool.{p}]` is defined"));
            }
            i
        }
        None => {
            cx.err(tab.span.clone(), format!("`{lpath}` ({mode}) needs `default_pool`"));
            None
        }
    }
}

/// An absolute path to an existing credential file, opened now.
fn cred_file(
    cx: &mut Cx,
    tab: &mut Tab<'_, '_>,
    kind: crate::policy::credentials::Kind,
) -> Option<Arc<crate::policy::credentials::CredFile>> {
    let path = tab.key_path("file");
    let present = tab.t.iter().any(|(k, _)| k.get_ref() == "file");
    let Some((p, span)) = tab.str(cx, "file") else {
        if !present {
            cx.err(
                tab.span.clone(),
                format!("`{}` needs `file` (an absolute path)", tab.path),
            );
        }
        return None;
    };
    if !p.starts_with('/') {
        cx.err(span, format!("`{path}` must be an absolute path, not `{p}`"));
        return None;
    }
    match crate::policy::credentials::CredFile::open_shared(std::path::Path::new(p), kind) {
        Ok(f) => Some(f),
        Err(e) => {
            cx.err(span, format!("`{path}`: {e}"));
            None
        }
    }
}

fn auth(cx: &mut Cx, root: &mut Tab<'_, '_>) -> Option<Arc<crate::policy::auth::Authenticator>> {
    use crate::policy::auth::{Authenticator, Basic, Digest};
    use crate::policy::credentials::{Kind, Users};
    use crate::policy::digest::{Algorithm, DigestAuth, Settings};
    let mut tab = root.table(cx, &AUTH)?;
    let realm = match tab.str(cx, "realm") {
        Some((s, span)) => {
            if s.is_empty() || s.chars().any(char::is_control) {
                cx.err(span, "`auth.realm` must be non-empty text without control characters");
            }
            s.to_string()
        }
        None => "proxy".to_string(),
    };
    let basic = tab.table(cx, &AUTH_BASIC).and_then(|mut b| {
        let file = cred_file(cx, &mut b, Kind::Passwd);
        let ttl = b
            .duration(cx, "credentials_ttl")
            .unwrap_or(Duration::from_secs(2 * 3600));
        b.finish(cx);
        Some(Basic::new(file?, ttl))
    });
    let digest = tab.table(cx, &AUTH_DIGEST).and_then(|mut d| {
        let file = cred_file(cx, &mut d, Kind::Digest);
        if let (Some(f), Some(v)) = (&file, d.t.iter().find(|(k, _)| k.get_ref() == "file").map(|(_, v)| v))
            && let Users::Digest(m) = &*f.users()
            && !m.is_empty()
            && !m.keys().any(|(_, r)| *r == realm)
        {
            cx.err(
                v.span(),
                format!(
                    "no entry of {} is for realm `{realm}` (`auth.realm`); every Digest login would fail",
                    f.path.display()
                ),
            );
        }
        let algorithms = match d.strings(cx, "algorithms") {
            Some(list) => {
                let mut out = Vec::new();
                for (a, span) in list {
                    match Algorithm::parse(a) {
                        Some(alg) if !out.contains(&alg) => out.push(alg),
                        Some(_) => cx.err(span, format!("algorithm `{a}` is listed twice")),
                        None => cx.err(
                            span,
                            format!("unknown Digest algorithm `{a}`; expected SHA-256, SHA-256-sess, MD5 or MD5-sess"),
                        ),
                    }
                }
                if out.is_empty() {
                    cx.err(d.span.clone(), "`auth.digest.algorithms` needs at least one algorithm");
                }
                out
            }
            None => vec![Algorithm::Sha256, Algorithm::Md5],
        };
        let settings = Settings {
            realm: realm.clone(),
            algorithms,
            nonce_max_duration: d
                .duration(cx, "nonce_max_duration")
                .unwrap_or(Duration::from_secs(30 * 60)),
            nonce_max_count: d.uint(cx, "nonce_max_count", 0, u32::MAX as u64).unwrap_or(50) as u32,
            nonce_garbage_interval: d
                .duration(cx, "nonce_garbage_interval")
                .unwrap_or(Duration::from_secs(5 * 60)),
            nonce_count_window: d.uint(cx, "nonce_count_window", 0, 127).unwrap_or(0) as u32,
        };
        d.finish(cx);
        Some(Digest {
            file: file?,
            auth: DigestAuth::new(settings),
        })
    });
    if !tab.used.contains(&"basic") && !tab.used.contains(&"digest") {
        cx.err(tab.span.clone(), "`auth` needs `[auth.basic]` and/or `[auth.digest]`");
    }
    tab.finish(cx);
    if basic.is_none() && digest.is_none() {
        return None;
    }
    Some(Arc::new(Authenticator { realm, basic, digest }))
}

/// `proxy_auth` ACLs need a scheme, and cannot guard the admin server.
fn check_auth_use(
    cx: &mut Cx,
    acls: &[(Acl, Option<Span>)],
    listeners: &[ListenerConfig],
    admin: Option<&AdminConfig>,
    have_auth: bool,
) {
    let plain: Vec<Acl> = acls.iter().map(|(a, _)| a.clone()).collect();
    let is_user = |k: &AclKind| matches!(k, AclKind::ProxyAuth(_));
    let span_of = |i: usize| acls[i].1.clone().unwrap_or(0..0);
    if let Some(a) = admin
        && let Some(i) = a.access.first_not(&plain, |k| !is_user(k))
    {
        cx.err(
            span_of(i),
            format!("proxy_auth ACL `{}` cannot be used in `admin.access`", plain[i].name),
        );
    }
    if !have_auth {
        for l in listeners {
            if let Some(i) = l.access.first_not(&plain, |k| !is_user(k)) {
                cx.err(
                    span_of(i),
                    format!(
                        "ACL `{}` (proxy_auth) is used by listener `{}` but no `[auth.basic]` or `[auth.digest]` is configured",
                        plain[i].name, l.name
                    ),
                );
            }
        }
    }
}

fn run_as(cx: &mut Cx, root: &mut Tab<'_, '_>) -> Option<RunAs> {
    use crate::runtime::privileges::{lookup_group, lookup_user};
    let user = root.str(cx, "user");
    let group = root.str(cx, "group");
    let Some((name, span)) = user else {
        if let Some((_, span)) = group {
            cx.err(span, "`group` needs `user` as well");
        }
        return None;
    };
    let (uid, primary) = match lookup_user(name) {
        Ok(x) => x,
        Err(e) => {
            cx.err(span, format!("`user`: {e}"));
            return None;
        }
    };
    let (group, gid) = match group {
        Some((g, span)) => match lookup_group(g) {
            Ok(gid) => (g.to_string(), gid),
            Err(e) => {
                cx.err(span, format!("`group`: {e}"));
                return None;
            }
        },
        None => (format!("{primary}"), primary),
    };
    Some(RunAs {
        user: name.to_string(),
        uid,
        group,
        gid,
    })
}

/// `[listener.proxy_protocol]`.
fn proxy_protocol(cx: &mut Cx, tab: &mut Tab<'_, '_>, acls: &[(Acl, Option<Span>)]) -> Option<ProxyProtocolConfig> {
    let mut pp = tab.table(cx, &PROXY_PROTOCOL)?;
    let require = pp.bool(cx, "require").unwrap_or(true);
    let timeout = pp.duration(cx, "timeout").unwrap_or(Duration::from_secs(5));
    let lookup = |n: &str| acls.iter().position(|(a, _)| a.name == n);
    let trusted_path = pp.key_path("trusted");
    let trusted = match pp.strings(cx, "trusted") {
        None => Rules {
            rules: vec![acl::parse_rule("allow all", lookup).expect("built-in")],
        },
        Some(names) => {
            let mut rules = Vec::new();
            for (name, span) in names {
                match lookup(name) {
                    Some(i) if matches!(acls[i].0.kind, AclKind::Src(_) | AclKind::All) => {
                        rules.push(acl::Rule {
                            action: acl::Action::Allow,
                            terms: vec![(i, false)],
                            text: format!("allow {name}"),
                        });
                    }
                    Some(_) => cx.err(
                        span,
                        format!("`{trusted_path}`: ACL `{name}` is not a source-address ACL (type src)"),
                    ),
                    None => cx.err(span, format!("`{trusted_path}`: undefined ACL `{name}`")),
                }
            }
            Rules { rules }
        }
    };
    pp.finish(cx);
    Some(ProxyProtocolConfig {
        require,
        trusted,
        timeout,
    })
}

/// Two bind addresses collide when the ports match and either address is the
/// same or a wildcard of the same family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip() || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// The `[[access_log]]` keys that only `output = "syslog"` takes.
const SYSLOG_KEYS: &[&str] = &[
    "syslog_address",
    "syslog_format",
    "syslog_facility",
    "syslog_severity",
    "syslog_tag",
    "syslog_hostname",
    "syslog_max_length",
];

fn access_logs(cx: &mut Cx, root: &mut Tab<'_, '_>) -> Vec<AccessLogConfig> {
    let mut out = Vec::new();
    for (i, mut tab) in tables_of(cx, root, &ACCESS_LOG) {
        let path = format!("access_log[{i}]");
        let output = tab.str(cx, "output");
        let is_syslog = matches!(output, Some(("syslog", _)));
        let target = match output {
            Some(("stdout", _)) | None => Some(LogTarget::Stdout),
            Some(("stderr", _)) => Some(LogTarget::Stderr),
            Some(("syslog", _)) => syslog_output(cx, &mut tab, &path).map(LogTarget::Syslog),
            Some((p, span)) => {
                if !p.starts_with('/') {
                    cx.err(
                        span,
                        format!(
                            "`{path}.output` is \"stdout\", \"stderr\", \"syslog\" or an absolute file path, not `{p}`"
                        ),
                    );
                }
                Some(LogTarget::File(p.into()))
            }
        };
        if !is_syslog {
            reject_keys(
                cx,
                &mut tab,
                &path,
                SYSLOG_KEYS,
                &[],
                "is only for `output = \"syslog\"`",
            );
        }
        let style = match tab.str(cx, "style") {
            Some(("squid", _)) | None => Style::Squid,
            Some(("haproxy", _)) => Style::Haproxy,
            Some((s, span)) => {
                cx.err(span, format!("`{path}.style` is \"squid\" or \"haproxy\", not `{s}`"));
                Style::Squid
            }
        };
        let format = match tab.str(cx, "format") {
            None => LogFormat::preset("squid"),
            Some((s, span)) => {
                if !s.contains('%') {
                    let p = LogFormat::preset(s);
                    if p.is_none() {
                        cx.err(
                            span,
                            format!(
                                "unknown log format preset `{s}`; presets: {}",
                                LogFormat::preset_names().join(", ")
                            ),
                        );
                    }
                    p
                } else {
                    match LogFormat::parse(s, style) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            cx.err(inner_span(&span, e.offset, 1), format!("log format: {}", e.message));
                            None
                        }
                    }
                }
            }
        };
        let queue_size = tab.uint(cx, "queue_size", 1, 1 << 20).unwrap_or(8192) as usize;
        tab.finish(cx);
        if let (Some(format), Some(target)) = (format, target) {
            out.push(AccessLogConfig {
                target,
                format: Arc::new(format),
                queue_size,
            });
        }
    }
    out
}

/// The `syslog_*` keys of an `output = "syslog"` access log; `None` after an error.
fn syslog_output(cx: &mut Cx, tab: &mut Tab<'_, '_>, path: &str) -> Option<SyslogConfig> {
    use crate::observe::syslog;
    let errors = cx.diags.len();
    let address = match tab.str(cx, "syslog_address") {
        None => SyslogAddress::Unix(syslog::DEFAULT_SOCKET.into()),
        Some((s, span)) => syslog::parse_address(s).unwrap_or_else(|e| {
            cx.err(span, format!("`{path}.syslog_address`: {e}"));
            SyslogAddress::Unix(syslog::DEFAULT_SOCKET.into())
        }),
    };
    let format = match tab.str(cx, "syslog_format") {
        Some(("rfc5424", _)) | None => SyslogFormat::Rfc5424,
        Some(("rfc3164", _)) => SyslogFormat::Rfc3164,
        Some((s, span)) => {
            cx.err(
                span,
                format!("`{path}.syslog_format` is \"rfc5424\" or \"rfc3164\", not `{s}`"),
            );
            SyslogFormat::Rfc5424
        }
    };
    let mut named = |key: &'static str, table: &[(&str, u8)], default: u8, what: &str| match tab.str(cx, key) {
        None => default,
        Some((s, span)) => syslog::code_of(table, s).unwrap_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            cx.err(
                span,
                format!(
                    "`{path}.{key}`: unknown {what} `{s}`; expected one of: {}",
                    names.join(", ")
                ),
            );
            default
        }),
    };
    let facility = named("syslog_facility", syslog::FACILITIES, 16, "facility");
    let severity = named("syslog_severity", syslog::SEVERITIES, 6, "severity");
    let tag = match tab.str(cx, "syslog_tag") {
        None => "sekisho".to_string(),
        Some((s, span)) => {
            if let Err(e) = syslog::check_tag(s) {
                cx.err(span, format!("`{path}.syslog_tag` {e}"));
            }
            s.to_string()
        }
    };
    let hostname = match tab.str(cx, "syslog_hostname") {
        None => syslog::header_hostname(&system_hostname()),
        Some((s, span)) => {
            if let Err(e) = syslog::check_hostname(s) {
                cx.err(span, format!("`{path}.syslog_hostname` {e}"));
            }
            s.to_string()
        }
    };
    let max_length = tab
        .uint(
            cx,
            "syslog_max_length",
            syslog::MIN_MAX_LENGTH as u64,
            syslog::MAX_MAX_LENGTH as u64,
        )
        .map_or_else(|| syslog::default_max_length(&address), |n| n as usize);
    (cx.diags.len() == errors).then_some(SyslogConfig {
        address,
        format,
        facility,
        severity,
        tag,
        hostname,
        max_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match load(src) {
            Ok(_) => vec![],
            Err(d) => d.into_iter().map(|d| d.message).collect(),
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = crate::config::embedded_default();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].bind, "127.0.0.1:3128".parse().unwrap());
        assert_eq!(c.admin.as_ref().unwrap().bind.port(), 8404);
        assert_eq!(c.listeners[0].access.rules.len(), 7);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let e = errors(
            r#"
bogus = 1
[timeouts]
connect = true
[acl]
a = { src = ["10.0.0.300/8"] }
[[listener]]
bind = "127.0.0.1:99999"
access = ["allow nosuch"]
"#,
        );
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e.iter().any(|m| m.contains("unknown key `bogus`")));
        assert!(e.iter().any(|m| m.contains("`timeouts.connect` must be a duration")));
        assert!(e.iter().any(|m| m.contains("not a CIDR")));
        assert!(e.iter().any(|m| m.contains("port 99999 is out of range")));
        assert!(e.iter().any(|m| m.contains("undefined ACL `nosuch`")));
    }

    #[test]
    fn rule_errors_point_inside_the_string() {
        let src = "[[listener]]\nbind = \"127.0.0.1:1\"\naccess = [\"allow all !nope\"]\n";
        let d = load(src).err().unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(&src[d[0].span.clone()], "nope");
    }

    #[test]
    fn duplicate_binds_and_wildcards_collide() {
        let e = errors(
            "[[listener]]\nbind = \"0.0.0.0:3128\"\n[[listener]]\nbind = \"127.0.0.1:3128\"\n[[listener]]\nbind = \"[::1]:3128\"\n",
        );
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("duplicate listener address 127.0.0.1:3128"));
    }

    #[test]
    fn syslog_outputs() {
        let c = load("[[access_log]]\noutput = \"syslog\"\nformat = \"json\"\n")
            .ok()
            .unwrap();
        let LogTarget::Syslog(s) = &c.access_logs[0].target else {
            panic!("not a syslog output")
        };
        assert_eq!(s.address, SyslogAddress::Unix("/dev/log".into()));
        assert_eq!((s.format, s.facility, s.severity), (SyslogFormat::Rfc5424, 16, 6));
        assert_eq!((s.tag.as_str(), s.max_length), ("sekisho", 8192));
        assert!(!s.hostname.is_empty());
        let c = load(
            "[[access_log]]\noutput = \"syslog\"\nsyslog_address = \"udp://[::1]:5514\"\nsyslog_format = \"rfc3164\"\nsyslog_facility = \"daemon\"\nsyslog_severity = \"notice\"\nsyslog_tag = \"gate\"\nsyslog_hostname = \"p1\"\n",
        )
        .ok()
        .unwrap();
        let LogTarget::Syslog(s) = &c.access_logs[0].target else {
            panic!("not a syslog output")
        };
        assert_eq!(s.address.to_string(), "udp://[::1]:5514");
        assert_eq!((s.format, s.facility, s.severity), (SyslogFormat::Rfc3164, 3, 5));
        assert_eq!(
            (s.tag.as_str(), s.hostname.as_str(), s.max_length),
            ("gate", "p1", 2048)
        );
        let e = errors(
            "[[access_log]]\noutput = \"syslog\"\nsyslog_address = \"tcp://h:1\"\nsyslog_format = \"rfc1\"\nsyslog_facility = \"local9\"\nsyslog_severity = \"loud\"\nsyslog_tag = \"a b\"\nsyslog_hostname = \"\"\nsyslog_max_length = 100\nsyslog_port = 1\n[[access_log]]\noutput = \"/var/log/a.log\"\nsyslog_tag = \"x\"\n",
        );
        assert_eq!(e.len(), 9, "{e:#?}");
        for want in [
            "`tcp` transport is not supported",
            "`access_log[0].syslog_format` is \"rfc5424\" or \"rfc3164\"",
            "unknown facility `local9`",
            "unknown severity `loud`",
            "`access_log[0].syslog_tag` may hold",
            "`access_log[0].syslog_hostname` must be 1 to 255",
            "`access_log[0].syslog_max_length` must be between 480 and 65507",
            "unknown key `syslog_port`",
            "`access_log[1].syslog_tag` is only for `output = \"syslog\"`",
        ] {
            assert!(e.iter().any(|m| m.contains(want)), "no `{want}` in {e:#?}");
        }
    }

    #[test]
    fn admin_actions_token() {
        let dir = std::env::temp_dir().join(format!("sekisho-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef-secret\n").unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "tiny\n").unwrap();
        let c = load(&format!("[admin]\nactions_token_file = \"{}\"\n", good.display()))
            .ok()
            .unwrap();
        let t = c.admin.unwrap().actions_token.unwrap();
        assert!(
            t.matches(b"0123456789abcdef-secret"),
            "the trailing newline is not part of it"
        );
        assert!(load("[admin]\n").ok().unwrap().admin.unwrap().actions_token.is_none());
        let src = format!("[admin]\nactions_token_file = \"{}\"\n", short.display());
        let d = load(&src).err().unwrap();
        assert!(d[0].message.contains("at least 16 bytes"), "{:?}", d[0].message);
        assert_eq!(&src[d[0].span.clone()], format!("\"{}\"", short.display()));
        for (src, want) in [
            (
                "[admin]\nactions_token_file = \"relative\"\n".to_string(),
                "must be an absolute path",
            ),
            (
                "[admin]\nactions_token_file = \"/nonexistent/sekisho/token\"\n".to_string(),
                "cannot read",
            ),
            (
                "[admin]\nactions_token_env = \"SEKISHO_TEST_SURELY_UNSET_4242\"\n".to_string(),
                "is not set",
            ),
            (
                format!(
                    "[admin]\nactions_token_file = \"{}\"\nactions_token_env = \"X\"\n",
                    good.display()
                ),
                "not both",
            ),
            (
                "[admin]\nactions_token = \"x\"\n".to_string(),
                "unknown key `actions_token`",
            ),
        ] {
            let e = errors(&src);
            assert_eq!(e.len(), 1, "{src}: {e:?}");
            assert!(e[0].contains(want), "{src}: {e:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_bits_are_an_error() {
        assert!(errors("[acl]\nx = { dst = \"10.1.2.3/8\" }\n")[0].contains("did you mean `10.0.0.0/8`"));
    }
}
