//! Reading one access-log line back: which preset wrote it and the fields
//! the statistics need (client, status, TLS, host, total time).
//!
//! Each preset of [`crate::observe::format`] has its own reader ([`read`]
//! picks one). They are
//! strict about the shape (a reader accepts only lines its preset can
//! write) so that detection per line is unambiguous, and lenient about
//! values that cannot be known (`-`, `-1`, `null`). No reader panics or
//! allocates for a plain line; JSON string values are borrowed unless they
//! carry escapes.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

/// The presets of [`crate::observe::format::LogFormat::preset`] that can be read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    Squid,
    Common,
    Httplog,
    HttplogTls,
    Tcplog,
    Json,
}

impl Preset {
    /// Every preset, in the order lines are tried when none is known yet.
    pub const ALL: [Preset; 6] = [
        Preset::Json,
        Preset::HttplogTls,
        Preset::Httplog,
        Preset::Tcplog,
        Preset::Squid,
        Preset::Common,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Squid => "squid",
            Preset::Common => "common",
            Preset::Httplog => "httplog",
            Preset::HttplogTls => "httplog-tls",
            Preset::Tcplog => "tcplog",
            Preset::Json => "json",
        }
    }

    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    pub(super) fn index(self) -> usize {
        match self {
            Preset::Json => 0,
            Preset::HttplogTls => 1,
            Preset::Httplog => 2,
            Preset::Tcplog => 3,
            Preset::Squid => 4,
            Preset::Common => 5,
        }
    }
}

/// What a line says about TLS on the client side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls<'a> {
    /// The format does not record TLS (`squid`, `common`, `httplog`, `tcplog`).
    Unknown,
    /// The format records TLS and the client used none.
    Plain,
    /// Version (`TLSv1.2`) and cipher (`None` when the line shows `-`).
    Version(Cow<'a, str>, Option<Cow<'a, str>>),
}

/// The fields of one line the statistics use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub preset: Preset,
    pub client: IpAddr,
    /// The status sent to the client; `None` when none was sent or the
    /// record is not an HTTP exchange (`tcplog`).
    pub status: Option<u16>,
    pub tls: Tls<'a>,
    /// The host the request was for, as logged (case kept, no port).
    pub host: Option<Cow<'a, str>>,
    /// The preset's total-time field in milliseconds: `%Tt` (`httplog-tls`,
    /// `tcplog`), `%Ta` (`httplog`), `%tr` (`squid`), `duration_ms`
    /// (`json`); `None` for `common` and for timers that did not run.
    pub duration_ms: Option<u64>,
}

/// Options that change how fields are read.
#[derive(Clone, Copy, Debug)]
pub struct ParseOptions {
    /// For `httplog`/`httplog-tls` lines whose request target has no host:
    /// the 1-based position of the Host header among the `%hr` captures
    /// (0: never look there).
    pub host_capture: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { host_capture: 1 }
    }
}

/// Reads `line` with `preset`'s reader; `None` when the line does not have
/// that preset's shape.
pub fn parse_as<'a>(preset: Preset, line: &'a str, opts: &ParseOptions) -> Option<Entry<'a>> {
    match preset {
        Preset::Json => parse_json(line),
        Preset::HttplogTls => parse_httplog(line, true, opts),
        Preset::Httplog => parse_httplog(line, false, opts),
        Preset::Tcplog => parse_tcplog(line),
        Preset::Squid => parse_squid(line),
        Preset::Common => parse_common(line),
    }
}

/// Reads `line` with the reader of the preset that wrote it, trying `first`
/// before the others (the previous line's preset is a good guess).
pub fn detect<'a>(line: &'a str, first: Option<Preset>, opts: &ParseOptions) -> Option<Entry<'a>> {
    if line.starts_with('{') {
        return parse_json(line);
    }
    if let Some(p) = first
        && p != Preset::Json
        && let Some(e) = parse_as(p, line, opts)
    {
        return Some(e);
    }
    Preset::ALL
        .into_iter()
        .filter(|&p| p != Preset::Json && Some(p) != first)
        .find_map(|p| parse_as(p, line, opts))
}

/// Reads one line: with the forced preset, else with the one that fits
/// (trying `last` first). A line that syslog stored with a header ending in
/// `TAG[PID]: ` (`Nov 21 17:25:27 lb1 haproxy[1234]: ...`) is read without
/// that header, so HAProxy logs in the seed's format are read too.
pub fn read<'a>(line: &'a str, forced: Option<Preset>, last: Option<Preset>, opts: &ParseOptions) -> Option<Entry<'a>> {
    let once = |l: &'a str| match forced {
        Some(p) => parse_as(p, l, opts),
        None => detect(l, last, opts),
    };
    once(line).or_else(|| once(syslog_message(line)?))
}

/// What follows the first `]: ` in the first 200 bytes of `line`.
fn syslog_message(line: &str) -> Option<&str> {
    let head = &line.as_bytes()[..line.len().min(200)];
    let i = head.windows(3).position(|w| w == b"]: ")?;
    line.get(i + 3..)
}

// ---------------------------------------------------------------------------
// Shared pieces

/// `%ci:%cp`: an address (IPv6 unbracketed, as the format engine writes it) and a port.
fn client_port(tok: &str) -> Option<IpAddr> {
    let (ip, port) = tok.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse().ok()
}

/// A HAProxy status: `-1` is none sent.
fn hap_status(tok: &str) -> Option<Option<u16>> {
    let n: i64 = tok.parse().ok()?;
    match n {
        -1 => Some(None),
        0..=999 => Some(Some(n as u16)),
        _ => None,
    }
}

/// A Squid status (`%03>Hs`, `%>Hs`): `0` is none sent.
fn squid_status(tok: &str) -> Option<Option<u16>> {
    let n: u16 = tok.parse().ok()?;
    match n {
        0 => Some(None),
        1..=999 => Some(Some(n)),
        _ => None,
    }
}

/// A millisecond timer: `-1` (did not run) is `None`.
fn millis(tok: &str) -> Option<Option<u64>> {
    let n: i64 = tok.parse().ok()?;
    Some(u64::try_from(n).ok())
}

/// `n` slash-separated integers (`-1` allowed), e.g. `%ac/%fc/%bc/%sc/%rc`.
fn slashed_ints(tok: &str, n: usize) -> Option<Vec<Option<u64>>> {
    let parts: Vec<&str> = tok.split('/').collect();
    if parts.len() != n {
        return None;
    }
    parts.into_iter().map(millis).collect()
}

fn is_uint(tok: &str) -> bool {
    !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit())
}

/// A token of the form `name/name` (`%b/%s`, `%Ss/%03>Hs`, `%Sh/%<a`).
fn pair(tok: &str) -> Option<(&str, &str)> {
    tok.split_once('/')
}

/// The host of a request target: the authority of an absolute URI, or the
/// host of an authority-form target (`host:port`, CONNECT); `None` for an
/// origin-form target (`/path`) or anything else. The port and user info
/// are dropped; IPv6 literals lose their brackets.
pub fn host_of(target: &str) -> Option<&str> {
    let authority = match target.find("://") {
        Some(i)
            if i > 0
                && target[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            let rest = &target[i + 3..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let a = &rest[..end];
            a.rsplit_once('@').map_or(a, |(_, h)| h)
        }
        Some(_) => return None,
        None => {
            // authority form: host:port with a numeric port
            let (h, p) = target.rsplit_once(':')?;
            if !is_uint(p) || h.contains('/') {
                return None;
            }
            target
        }
    };
    let host = if let Some(v6) = authority.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if is_uint(p) || p.is_empty() => h,
            Some(_) => return None,
            None => authority,
        }
    };
    looks_like_host(host).then_some(host)
}

/// A host name or address: letters, digits, `-`, `.`, `_`, `:` (IPv6).
fn looks_like_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

/// The host of a quoted request line `METHOD TARGET VERSION`.
fn host_of_request_line(r: &str) -> Option<&str> {
    let mut it = r.split(' ');
    let _method = it.next()?;
    host_of(it.next()?)
}

// ---------------------------------------------------------------------------
// HAProxy style: httplog, httplog-tls, tcplog

/// The part every HAProxy-style preset begins with: `%ci:%cp [date] %ft %b/%s`,
/// returning the client and the rest of the line after the `%b/%s` token.
fn hap_head(line: &str) -> Option<(IpAddr, &str)> {
    let (cp, rest) = line.split_once(" [")?;
    let client = client_port(cp)?;
    let (date, rest) = rest.split_once("] ")?;
    if date.is_empty() || date.contains(['[', '"']) {
        return None;
    }
    let mut it = rest.splitn(3, ' ');
    let ft = it.next()?;
    let bs = it.next()?;
    if ft.is_empty() {
        return None;
    }
    pair(bs)?;
    Some((client, it.next()?))
}

/// `%hr %hs` and, for httplog-tls, `SSL:{v,c}`. sekisho writes `-` for a
/// block without captures; HAProxy leaves such a block out, so zero, one
/// (taken as the request's) or two blocks are accepted. Returns the request
/// captures' text (without braces) and the TLS part.
fn hap_captures(mid: &str, tls: bool) -> Option<(Option<&str>, Tls<'_>)> {
    let ssl = mid.rfind("SSL:{").filter(|&i| i == 0 || mid.as_bytes()[i - 1] == b' ');
    let (caps, tls_part) = match (tls, ssl) {
        (true, Some(i)) => (mid[..i].trim_end(), Tls::from_ssl(&mid[i..])?),
        (true, None) => return None,
        (false, Some(i)) if !mid[i..].contains(' ') => return None,
        (false, _) => (mid, Tls::Unknown),
    };
    let block = |b: &str| b == "-" || (b.starts_with('{') && b.ends_with('}'));
    // the values inside a block may hold spaces: the second block, if any,
    // is `-` or starts at the last ` {`
    let split = if caps.starts_with("- ") {
        Some(1)
    } else if caps.ends_with(" -") {
        Some(caps.len() - 2)
    } else {
        caps.rfind(" {").filter(|&i| block(&caps[..i]))
    };
    let hr = match split {
        Some(i) if block(&caps[i + 1..]) => &caps[..i],
        Some(_) => return None,
        None if caps.is_empty() => "-",
        None if block(caps) => caps,
        None => return None,
    };
    if !block(hr) {
        return None;
    }
    Some((hr.strip_prefix('{').and_then(|b| b.strip_suffix('}')), tls_part))
}

impl<'a> Tls<'a> {
    /// `SSL:{%sslv,%sslc}`.
    fn from_ssl(tok: &'a str) -> Option<Tls<'a>> {
        let inner = tok.strip_prefix("SSL:{")?.strip_suffix('}')?;
        let (v, c) = inner.split_once(',')?;
        Some(match (v, c) {
            ("-", _) => Tls::Plain,
            (v, "-") => Tls::Version(Cow::Borrowed(v), None),
            (v, c) => Tls::Version(Cow::Borrowed(v), Some(Cow::Borrowed(c))),
        })
    }
}

/// `httplog`: `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc
/// %ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r`; `httplog-tls` has
/// `%Tq/%Tw/%Tc/%Tr/%Tt` and ` SSL:{%sslv,%sslc}` before the request.
fn parse_httplog<'a>(line: &'a str, tls: bool, opts: &ParseOptions) -> Option<Entry<'a>> {
    let (client, rest) = hap_head(line)?;
    // the quoted request line closes the line; `"` inside any field is escaped
    let q = rest.find('"')?;
    let request = rest[q..].strip_prefix('"')?.strip_suffix('"')?;
    if request.contains('"') {
        return None;
    }
    let fields = rest[..q].strip_suffix(' ')?;
    let mut it = fields.splitn(4, ' ');
    let timers = slashed_ints(it.next()?, 5)?;
    let status = hap_status(it.next()?)?;
    if !is_uint(it.next()?) {
        return None;
    }
    // `%CC %CS %tsc` may hold spaces (cookie values): find the counts instead,
    // the first `a/b/c/d/e` token followed by an `a/b` token
    let tail = it.next()?;
    let toks: Vec<&str> = tail.split(' ').collect();
    let at = (3..toks.len().saturating_sub(1))
        .find(|&i| slashed_ints(toks[i], 5).is_some() && slashed_ints(toks[i + 1], 2).is_some())?;
    let offset: usize = toks[..at + 2].iter().map(|t| t.len() + 1).sum();
    let mid = tail.get(offset..).unwrap_or("");
    let (captures, tls_part) = hap_captures(mid, tls)?;
    let host = host_of_request_line(request).or_else(|| {
        let n = opts.host_capture.checked_sub(1)?;
        let value = captures?.split('|').nth(n)?;
        let h = match value.strip_prefix('[') {
            Some(v6) => &v6[..v6.find(']')?],
            None => value
                .rsplit_once(':')
                .filter(|(_, p)| is_uint(p))
                .map_or(value, |(h, _)| h),
        };
        looks_like_host(h).then_some(h)
    });
    Some(Entry {
        preset: if tls { Preset::HttplogTls } else { Preset::Httplog },
        client,
        status,
        tls: tls_part,
        host: host.map(Cow::Borrowed),
        duration_ms: timers[4],
    })
}

/// `tcplog`: `%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq`.
fn parse_tcplog(line: &str) -> Option<Entry<'_>> {
    let (client, rest) = hap_head(line)?;
    let t: Vec<&str> = rest.split(' ').collect();
    if t.len() != 5 || !is_uint(t[1]) || t[2].len() != 2 {
        return None;
    }
    let timers = slashed_ints(t[0], 3)?;
    slashed_ints(t[3], 5)?;
    slashed_ints(t[4], 2)?;
    Some(Entry {
        preset: Preset::Tcplog,
        client,
        status: None,
        tls: Tls::Unknown,
        host: None,
        duration_ms: timers[2],
    })
}

// ---------------------------------------------------------------------------
// Squid style: squid, common

/// `squid`: `%{%Y/%m/%d %H:%M:%S}tl %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru
/// %[un %Sh/%<a %mt`. Squid's own native line (without the leading date) is
/// read too.
fn parse_squid(line: &str) -> Option<Entry<'_>> {
    let mut t: Vec<&str> = line.split_ascii_whitespace().collect();
    // the date and time the preset puts first (absent: `-`)
    let dated = t
        .first()
        .is_some_and(|d| d.len() == 10 && d.as_bytes().get(4) == Some(&b'/'));
    if dated {
        if t.len() < 2 || !(t[1].len() == 8 && t[1].as_bytes()[2] == b':') {
            return None;
        }
        t.drain(..2);
    } else if t.first() == Some(&"-") && t.get(1).is_some_and(|s| s.contains('.')) {
        t.remove(0);
    }
    if t.len() < 10 {
        return None;
    }
    let (secs, ms) = t[0].split_once('.')?;
    if !(is_uint(secs.trim_start_matches('-')) && is_uint(ms)) {
        return None;
    }
    let duration = millis(t[1])?;
    let client: IpAddr = t[2].parse().ok()?;
    let (result, status) = pair(t[3])?;
    if result.is_empty() || !result.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return None;
    }
    let status = squid_status(status)?;
    if !is_uint(t[4]) {
        return None;
    }
    pair(t[8])?;
    Some(Entry {
        preset: Preset::Squid,
        client,
        status,
        tls: Tls::Unknown,
        host: host_of(t[6]).map(Cow::Borrowed),
        duration_ms: duration,
    })
}

/// `common`: `%>a - %[un [%tl] "%rm %ru HTTP/%rv" %>Hs %<st %Ss:%Sh`
/// (the Common Log Format with Squid's result and hierarchy appended; plain
/// CLF lines without them are read too).
fn parse_common(line: &str) -> Option<Entry<'_>> {
    let (who, rest) = line.split_once(" [")?;
    let mut w = who.split(' ');
    let client: IpAddr = w.next()?.parse().ok()?;
    let (_ident, _user) = (w.next()?, w.next()?);
    if w.next().is_some() {
        return None;
    }
    let (_date, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.rsplit_once("\" ")?;
    let mut t = rest.split(' ');
    let status = squid_status(t.next()?)?;
    let bytes = t.next()?;
    if !(is_uint(bytes) || bytes == "-") {
        return None;
    }
    if let Some(codes) = t.next()
        && (!codes.contains(':') || t.next().is_some())
    {
        return None;
    }
    Some(Entry {
        preset: Preset::Common,
        client,
        status,
        tls: Tls::Unknown,
        host: host_of_request_line(request).map(Cow::Borrowed),
        duration_ms: None,
    })
}

// ---------------------------------------------------------------------------
// JSON

/// The keys of the `json` preset that the statistics read (the line has
/// more: `time`, `epoch`, `client_port`, `local_ip`, `local_port`,
/// `listener`, `method`, `version`, `result`, `hierarchy`, `bytes_sent`,
/// `bytes_received`, `user`, `upstream`, `backend`, `server`, `retries`,
/// `alpn`, `source`, `parent`, `content_type`, `termination`, `timers`).
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    client_ip: Cow<'a, str>,
    status: i64,
    #[serde(default)]
    duration_ms: Option<i64>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tls_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tls_cipher: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sni: Option<Cow<'a, str>>,
}

/// `json`: one object per line; `client_ip` and `status` are required.
fn parse_json(line: &str) -> Option<Entry<'_>> {
    let j: JsonLine<'_> = serde_json::from_str(line).ok()?;
    let client: IpAddr = j.client_ip.parse().ok()?;
    let status = match j.status {
        0 => None,
        1..=999 => Some(j.status as u16),
        _ => return None,
    };
    let tls = match j.tls_version {
        Some(v) => Tls::Version(v, j.tls_cipher),
        None => Tls::Plain,
    };
    let host = match j.uri {
        Some(Cow::Borrowed(u)) => host_of(u).map(Cow::Borrowed),
        Some(Cow::Owned(u)) => host_of(&u).map(|h| Cow::Owned(h.to_string())),
        None => None,
    }
    .or_else(|| j.sni.filter(|s| looks_like_host(s)));
    Some(Entry {
        preset: Preset::Json,
        client,
        status,
        tls,
        host,
        duration_ms: j.duration_ms.and_then(|d| u64::try_from(d).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::tls::Negotiated;
    use crate::observe::format::LogFormat;
    use crate::observe::record::{Hierarchy, Record, ResultCode, Timers};
    use http::{HeaderValue, Method, Uri};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn opts() -> ParseOptions {
        ParseOptions::default()
    }

    fn record() -> Record {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_345);
        let mut r = Record::new(
            at,
            "192.0.2.10:51234".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
            Arc::from("front"),
        );
        r.request_time = at;
        r.active = Duration::from_millis(42);
        r.total = Duration::from_millis(50);
        r.timers = Timers {
            request: Some(Duration::from_millis(1)),
            queue: Some(Duration::ZERO),
            connect: Some(Duration::from_millis(5)),
            response: Some(Duration::from_millis(30)),
        };
        r.status = 200;
        r.result = ResultCode::TcpMiss;
        r.hierarchy = Hierarchy::Direct;
        r.bytes_to_client = 1234;
        r.method = Method::GET;
        r.uri = Uri::from_static("http://Example.com:8080/a/b?x=1");
        r.upstream = Some("93.184.216.34:80".parse().unwrap());
        r.content_type = Some(HeaderValue::from_static("text/html; charset=utf-8"));
        r
    }

    fn tls(r: &mut Record) {
        r.tls = Some(Arc::new(Negotiated {
            version: Some("TLSv1.3"),
            cipher: Some("TLS_AES_128_GCM_SHA256"),
            sni: Some("sni.example".into()),
            alpn: None,
        }));
    }

    fn render(preset: &str, r: &Record) -> String {
        let mut out = Vec::new();
        LogFormat::preset(preset).unwrap().render(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Every preset's line, as the format engine writes it, reads back with
    /// the fields it holds, both forced and detected.
    #[test]
    fn every_preset_reads_back() {
        let mut r = record();
        tls(&mut r);
        let cases = [
            ("squid", Tls::Unknown, Some(42)),
            ("common", Tls::Unknown, None),
            ("httplog", Tls::Unknown, Some(42)),
            (
                "httplog-tls",
                Tls::Version("TLSv1.3".into(), Some("TLS_AES_128_GCM_SHA256".into())),
                Some(50),
            ),
            (
                "json",
                Tls::Version("TLSv1.3".into(), Some("TLS_AES_128_GCM_SHA256".into())),
                Some(42),
            ),
        ];
        for (name, want_tls, dur) in cases {
            let line = render(name, &r);
            let p = Preset::from_name(name).unwrap();
            let want = Entry {
                preset: p,
                client: "192.0.2.10".parse().unwrap(),
                status: Some(200),
                tls: want_tls,
                host: Some("Example.com".into()),
                duration_ms: dur,
            };
            assert_eq!(parse_as(p, &line, &opts()).as_ref(), Some(&want), "{name}: {line}");
            assert_eq!(detect(&line, None, &opts()).as_ref(), Some(&want), "{name}: {line}");
            for other in Preset::ALL {
                if other != p {
                    assert_eq!(
                        parse_as(other, &line, &opts()),
                        None,
                        "{name} read as {}: {line}",
                        other.name()
                    );
                    // a wrong guess does not stop detection
                    assert_eq!(detect(&line, Some(other), &opts()).as_ref(), Some(&want), "{name}");
                }
            }
        }
        let line = render("tcplog", &r);
        let e = parse_as(Preset::Tcplog, &line, &opts()).unwrap();
        assert_eq!(
            (e.status, e.tls, e.host, e.duration_ms),
            (None, Tls::Unknown, None, Some(50))
        );
        assert_eq!(detect(&line, None, &opts()).unwrap().preset, Preset::Tcplog);
        for other in Preset::ALL.into_iter().filter(|&p| p != Preset::Tcplog) {
            assert_eq!(parse_as(other, &line, &opts()), None, "{}: {line}", other.name());
        }
    }

    /// Absent values: no status, no TLS, timers that did not run, a bare
    /// record with an origin-form target.
    #[test]
    fn absent_values() {
        let mut r = Record::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            "[2001:db8::7]:40000".parse().unwrap(),
            "[::1]:3128".parse().unwrap(),
            Arc::from("fwd"),
        );
        r.request_time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for name in ["squid", "common", "httplog", "httplog-tls", "json", "tcplog"] {
            let line = render(name, &r);
            let e = detect(&line, None, &opts()).unwrap_or_else(|| panic!("{name}: {line}"));
            assert_eq!(e.preset.name(), name, "{line}");
            assert_eq!(e.client, "2001:db8::7".parse::<IpAddr>().unwrap(), "{line}");
            assert_eq!(e.status, None, "{name}: {line}");
            assert_eq!(e.host, None, "{name}: {line}");
            let want_tls = match name {
                "httplog-tls" | "json" => Tls::Plain,
                _ => Tls::Unknown,
            };
            assert_eq!(e.tls, want_tls, "{name}: {line}");
        }
        let line = render("httplog", &r);
        let e = parse_as(Preset::Httplog, &line, &opts()).unwrap();
        assert_eq!(e.duration_ms, Some(0), "%Ta is 0 for a bare record");
    }

    #[test]
    fn hosts_from_targets() {
        let cases = [
            ("http://example.com/a", Some("example.com")),
            ("https://user:pw@Example.COM:8443/?q", Some("Example.COM")),
            ("http://[2001:db8::1]:80/", Some("2001:db8::1")),
            ("http://example.com", Some("example.com")),
            ("http://example.com?x", Some("example.com")),
            ("example.com:443", Some("example.com")),
            ("[2001:db8::2]:443", Some("2001:db8::2")),
            ("/index.html", None),
            ("*", None),
            ("error:invalid-request", None),
            ("http://", None),
            ("http:///x", None),
            ("://x/", None),
            ("http://a b/", None),
            ("http://[::1/", None),
            ("", None),
        ];
        for (t, want) in cases {
            assert_eq!(host_of(t), want, "{t}");
        }
    }

    #[test]
    fn host_from_captures() {
        let mut r = record();
        r.uri = Uri::from_static("/a");
        r.captures_request = vec!["a.test:8443".into(), "http://referrer.example/".into()];
        r.captures_response = vec!["JSESSIONID=xyz; Path=/".into()];
        r.cookie_request = Some("JSESSIONID=a b".into());
        tls(&mut r);
        let line = render("httplog-tls", &r);
        let e = parse_as(Preset::HttplogTls, &line, &opts()).unwrap();
        assert_eq!(e.host.as_deref(), Some("a.test"), "{line}");
        assert_eq!(e.status, Some(200));
        let second = ParseOptions { host_capture: 2 };
        assert_eq!(
            parse_as(Preset::HttplogTls, &line, &second).unwrap().host,
            None,
            "not a host"
        );
        let off = ParseOptions { host_capture: 0 };
        assert_eq!(parse_as(Preset::HttplogTls, &line, &off).unwrap().host, None);
        let line = render("httplog", &r);
        assert_eq!(
            parse_as(Preset::Httplog, &line, &opts()).unwrap().host.as_deref(),
            Some("a.test")
        );
        r.captures_request.clear();
        let line = render("httplog", &r);
        assert_eq!(parse_as(Preset::Httplog, &line, &opts()).unwrap().host, None, "{line}");
    }

    #[test]
    fn json_escapes_and_sni() {
        let line = r#"{"client_ip":"10.0.0.9","status":503,"duration_ms":7,"uri":"/p","tls_version":"TLS\u00761.2","tls_cipher":null,"sni":"Sni.Example"}"#;
        let e = parse_json(line).unwrap();
        assert_eq!(e.tls, Tls::Version("TLSv1.2".into(), None));
        assert_eq!(e.host.as_deref(), Some("Sni.Example"));
        assert_eq!((e.status, e.duration_ms), (Some(503), Some(7)));
        let line = r#"{"client_ip":"10.0.0.9","status":200,"uri":"http://h\u002eexample/x"}"#;
        let e = parse_json(line).unwrap();
        assert_eq!(e.host.as_deref(), Some("h.example"));
        assert_eq!((e.tls, e.duration_ms), (Tls::Plain, None));
        for bad in [
            r#"{"status":200}"#,
            r#"{"client_ip":"not-an-ip","status":200}"#,
            r#"{"client_ip":"10.0.0.1","status":"200"}"#,
            r#"{"client_ip":"10.0.0.1","status":1000}"#,
            r#"{"client_ip":"10.0.0.1","status":200"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(parse_json(bad), None, "{bad}");
        }
    }

    /// The HAProxy lines of the TLS-statistics seed, as syslog stored them:
    /// an `httplog` line of the plain frontend and an `httplog-tls` one.
    #[test]
    fn seed_haproxy_lines_through_syslog() {
        let plain = "Sep 18 00:00:01 service-lb01 haproxy[39217]: 1.2.3.4:63421 [18/Sep/2019:00:00:01.762] ServiceHTTP ServiceHTTP/<NOSRV> 0/-1/-1/-1/0 301 93 - - LR-- 4/1/0/0/0 0/0 {|} \"GET / HTTP/1.0\"";
        let tls = "Sep 18 00:00:02 service-lb01 haproxy[39217]: 2.3.4.5:41930 [18/Sep/2019:00:00:01.895] ServiceHTTPS-merged~ ServiceHTTPS_ipvANY/app-server01 511/0/2/4/519 200 37991 - - --NI 4/4/0/1/0 0/0 {service1.example.jp|} SSL:{TLSv1.2,ECDHE-RSA-AES256-GCM-SHA384} \"GET /my/url HTTP/1.1\"";
        assert_eq!(detect(plain, None, &opts()), None, "not without the prefix removed");
        let e = read(plain, None, None, &opts()).unwrap();
        assert_eq!(e.preset, Preset::Httplog);
        assert_eq!(
            (e.client, e.status, e.host, e.duration_ms),
            ("1.2.3.4".parse().unwrap(), Some(301), None, Some(0))
        );
        let e = read(tls, None, Some(Preset::Httplog), &opts()).unwrap();
        assert_eq!(
            e,
            Entry {
                preset: Preset::HttplogTls,
                client: "2.3.4.5".parse().unwrap(),
                status: Some(200),
                tls: Tls::Version("TLSv1.2".into(), Some("ECDHE-RSA-AES256-GCM-SHA384".into())),
                host: Some("service1.example.jp".into()),
                duration_ms: Some(519),
            }
        );
        assert_eq!(read(tls, Some(Preset::HttplogTls), None, &opts()), Some(e));
        assert_eq!(read(tls, Some(Preset::Httplog), None, &opts()), None);
        let msg = tls.split_once("]: ").unwrap().1;
        let rfc5424 = format!("<134>1 2019-09-18T00:00:02+09:00 service-lb01 haproxy 39217 - - {msg}");
        assert_eq!(read(&rfc5424, None, None, &opts()), None, "no `]: ` before the message");
        let journald = format!("2019-09-18T00:00:02+0900 service-lb01 haproxy[39217]: {msg}");
        assert_eq!(read(&journald, None, None, &opts()).unwrap().preset, Preset::HttplogTls);
    }

    #[test]
    fn squid_native_and_common_without_codes() {
        let native = "1700000000.345     42 192.0.2.10 TCP_MISS/200 1234 GET http://example.com/ - HIER_DIRECT/93.184.216.34 text/html";
        let e = parse_as(Preset::Squid, native, &opts()).unwrap();
        assert_eq!((e.status, e.duration_ms), (Some(200), Some(42)));
        let clf = r#"192.0.2.10 - - [14/Nov/2023:22:13:20 +0000] "GET http://example.com/ HTTP/1.1" 404 -"#;
        let e = parse_as(Preset::Common, clf, &opts()).unwrap();
        assert_eq!((e.status, e.host.as_deref()), (Some(404), Some("example.com")));
    }

    /// Mangled lines are refused, never a panic.
    #[test]
    fn garbage_is_refused() {
        let mut r = record();
        tls(&mut r);
        let mut lines: Vec<String> = [
            "",
            " ",
            "{",
            "}",
            "[",
            "\"",
            "-",
            "garbage here",
            "1.2.3.4:5 [",
            "a:b [x] y z/w",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for name in LogFormat::preset_names() {
            let line = render(name, &r);
            // every prefix and a few single-byte changes
            for cut in 0..line.len() {
                if line.is_char_boundary(cut) {
                    lines.push(line[..cut].to_string());
                }
            }
            for (i, c) in line.char_indices().step_by(3) {
                let mut s = line.clone();
                s.replace_range(i..i + c.len_utf8(), if c == ' ' { "x" } else { " " });
                lines.push(s);
            }
        }
        for l in &lines {
            for p in Preset::ALL {
                let _ = parse_as(p, l, &opts());
            }
            let _ = detect(l, None, &opts());
        }
        for l in ["", "garbage here", "{", "1.2.3.4:5 ["] {
            assert_eq!(detect(l, None, &opts()), None, "{l}");
        }
    }
}
