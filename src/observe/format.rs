//! The access-log format engine: compiles a format string once and renders
//! [`Record`]s into a reused buffer on the hot path.
//!
//! Two dialects are understood:
//!
//! * [`Style::Squid`], after Squid's `logformat`: `%`, then optionally and in
//!   this order an encoding, `-`, `0`, a width, `.max` and `{arg}`, then the
//!   code, e.g. `%6tr`, `%03>Hs`, `%[un`, `%{%Y/%m/%d %H:%M:%S}tl`.
//!   Encodings: `"` quoted with backslash escapes, `[` `%XX` for whitespace,
//!   controls, non-ASCII and `"[]%`, `#` URL encoding, `'` raw. Without one,
//!   control characters become `%XX` (and user names are URL-encoded, as
//!   Squid does). Zero padding only applies to numbers, `.max` only to text.
//!   Absent values are `-` (never padded nor quoted).
//!
//!   Codes: `ts` `tu` `tl` `tg` (request time), `tr` (active ms), `>a` `>p`
//!   (client), `la` `lp` `>la` `>lp` (local), `<a` `<p` (upstream), `Ss` `Sh`
//!   `>Hs` `<st` `>st` `st` `rm` `ru` `rp` `rv` `un` `ul` `mt` `ft` (listener),
//!   `>pa` `>pp` (the balancer that sent a PROXY header; the client without
//!   one), `{TYPE}pt` (a PROXY v2 TLV, e.g. `%{0x02}pt` the authority).
//!
//! * [`Style::Haproxy`], after HAProxy's `log-format`: `%`, optional
//!   `{flags}`, then a name, where name is the longest run of letters.
//!   Flags, comma-separated: `+Q`/`-Q` (quote text), `+E` (backslash-escape
//!   `"`, `\`, `]`), `+X` (hexadecimal IPv4 addresses, ports and `%Ts`);
//!   `%{...}o` sets the flags of every later variable. Text has controls and
//!   `"` encoded as `#XX`; absent values are `-` (`""` when quoted).
//!
//!   Variables: `ci` `cp` `pi` `pp` (PROXY balancer) `fi` `fp` `si` `sp` `ft` `b` (always `-`) `s`
//!   (upstream `ip:port` or `<NOSRV>`) `t` `tr` (dates with ms) `Ts` `ms`
//!   (accept time) `TR` `Tw` `Tc` `Tr` (`-1` when not run) `Ta` `Tt` `ST`
//!   (`-1` when no status was sent) `B` `U` `HM` `HU` `HP` (path) `HQ`
//!   (`?query`) `HV` `r` `ts` `tsc` `u` (user) `pid`.
//!
//! Besides custom strings there are named presets (see [`LogFormat::preset`]),
//! one of which (`json`) is a dedicated JSON-lines renderer.
//!
//! Rendering does not allocate (only the output `Vec` may grow), and never
//! panics whatever the record holds: values that cannot be shown (a time
//! outside years 0..=9999, no upstream, no user) render as `-` (or `null`).
//! IPv4-mapped IPv6 addresses are shown as IPv4.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::format::{DelayedFormat, Fixed, Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, Offset, TimeZone, Utc};
use http::Version;

use crate::observe::record::Record;

/// The dialect of a custom format string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Squid `logformat` codes (`%>a`, `%Ss/%03>Hs`, ...).
    Squid,
    /// HAProxy `log-format` variables (`%ci`, `%ST`, `%{+Q}r`, ...).
    Haproxy,
}

/// A compiled access-log format.
#[derive(Clone, Debug)]
pub struct LogFormat {
    kind: Kind,
}

/// A format string that could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// Byte offset in the format string where the problem is.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for FormatError {}

const PRESET_SQUID: &str = "%{%Y/%m/%d %H:%M:%S}tl %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt";
const PRESET_COMMON: &str = "%>a - %[un [%tl] \"%rm %ru HTTP/%rv\" %>Hs %<st %Ss:%Sh";
const PRESET_HTTPLOG: &str =
    "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r";
/// The HAProxy line of the TLS-statistics seed: timers, counts, captures and the TLS version and cipher.
const PRESET_HTTPLOG_TLS: &str = "%ci:%cp [%t] %ft %b/%s %Tq/%Tw/%Tc/%Tr/%Tt %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs SSL:{%sslv,%sslc} %{+Q}r";

/// HAProxy's `option tcplog` line, for `tcp` listeners.
const PRESET_TCPLOG: &str = "%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq";

const PRESET_NAMES: &[&str] = &["squid", "common", "httplog", "httplog-tls", "tcplog", "json"];

/// Default strftime pattern of Squid's `%tl`/`%tg`.
const SQUID_DATE: &str = "%d/%b/%Y:%H:%M:%S %z";
/// HAProxy's accept/request date (`%t`, `%tr`): `10/Oct/2000:13:55:36.345`.
const HAPROXY_DATE: &str = "%d/%b/%Y:%H:%M:%S%.3f";
/// RFC 3339 with milliseconds, for the JSON `time` key.
const JSON_DATE: &str = "%Y-%m-%dT%H:%M:%S%.3f%:z";

/// Largest accepted field width / max width; keeps a typo from padding every
/// line with megabytes of spaces.
const MAX_WIDTH: usize = 4096;

impl LogFormat {
    /// Named presets: `squid`, `common`, `httplog`, `json`. Returns `None` for
    /// unknown names.
    pub fn preset(name: &str) -> Option<LogFormat> {
        match name {
            "squid" => LogFormat::parse(PRESET_SQUID, Style::Squid).ok(),
            "common" => LogFormat::parse(PRESET_COMMON, Style::Squid).ok(),
            "httplog" => LogFormat::parse(PRESET_HTTPLOG, Style::Haproxy).ok(),
            "httplog-tls" => LogFormat::parse(PRESET_HTTPLOG_TLS, Style::Haproxy).ok(),
            "tcplog" => LogFormat::parse(PRESET_TCPLOG, Style::Haproxy).ok(),
            "json" => Some(LogFormat {
                kind: Kind::Json(DateFmt::new(JSON_DATE, false).ok()?),
            }),
            _ => None,
        }
    }

    /// The names [`LogFormat::preset`] accepts.
    pub fn preset_names() -> &'static [&'static str] {
        PRESET_NAMES
    }

    /// Compile a custom format string in the given style.
    pub fn parse(fmt: &str, style: Style) -> Result<LogFormat, FormatError> {
        let toks = match style {
            Style::Squid => parse_squid(fmt)?,
            Style::Haproxy => parse_haproxy(fmt)?,
        };
        Ok(LogFormat {
            kind: Kind::Tokens(toks),
        })
    }

    /// Append one rendered line (without trailing newline) to `out`.
    pub fn render(&self, rec: &Record, out: &mut Vec<u8>) {
        match &self.kind {
            Kind::Tokens(toks) => {
                let mut split = Split::default();
                for tok in toks {
                    match tok {
                        // the separators are mostly one byte: no call to memcpy for those
                        Tok::Lit(s) if s.len() == 1 => out.push(s[0]),
                        Tok::Lit(s) => out.extend_from_slice(s),
                        Tok::Squid(f) => f.render(rec, &mut split, out),
                        Tok::Hap(f) => f.render(rec, &mut split, out),
                    }
                }
            }
            Kind::Json(date) => render_json(date, rec, out),
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Tokens(Vec<Tok>),
    Json(DateFmt),
}

#[derive(Clone, Debug)]
enum Tok {
    Lit(Box<[u8]>),
    Squid(SquidField),
    Hap(HapField),
}

// ---------------------------------------------------------------------------
// Values shared by both dialects

/// Which wall-clock time of the record.
#[derive(Clone, Copy, Debug)]
enum When {
    Accept,
    Request,
}

/// Which duration of the record, in milliseconds.
#[derive(Clone, Copy, Debug)]
enum Span {
    Active,
    Total,
    Request,
    Queue,
    Connect,
    Response,
}

#[derive(Clone, Debug)]
enum Code {
    /// Epoch seconds.
    Epoch(When),
    /// Millisecond part of the time, unpadded (Squid `%tu`).
    SubMillis(When),
    /// Millisecond part of the time, three digits (HAProxy `%ms`).
    SubMillis3(When),
    Date(When, Box<DateFmt>),
    /// Milliseconds; `-1` for a timer that never ran.
    Millis(Span),
    ClientIp,
    ClientPort,
    /// The balancer that sent a PROXY header (the client when there was none).
    PeerIp,
    PeerPort,
    /// A PROXY v2 TLV value by type.
    Tlv(u8),
    LocalIp,
    LocalPort,
    UpstreamIp,
    UpstreamPort,
    /// Source address and port of the upstream connection.
    UpstreamLocalIp,
    UpstreamLocalPort,
    /// The parent's name, else the upstream address (Squid `%<A`).
    UpstreamName,
    /// HAProxy `%s`: `ip:port` of the upstream, `<NOSRV>` when none.
    Server,
    Result,
    Hierarchy,
    /// Status as a number (0 when none was sent).
    Status,
    /// Status as a number, `-1` when none was sent (HAProxy).
    StatusHap,
    BytesToClient,
    BytesFromClient,
    BytesTotal,
    Method,
    Uri,
    /// Path and query (Squid `%rp`).
    PathQuery,
    /// Path only (HAProxy `%HP`).
    Path,
    /// Query with its leading `?` (HAProxy `%HQ`).
    Query,
    /// `1.1`
    VersionNum,
    /// `HTTP/1.1`
    VersionHttp,
    /// `GET http://x/ HTTP/1.1`
    RequestLine,
    User,
    ContentType,
    Listener,
    /// Always absent (HAProxy `%b`: sekisho has no backends yet).
    Absent,
    Termination,
    /// Termination state plus the two persistence-cookie characters.
    TermCookie,
    /// Load balancing: pool name (`%b`), retries (`%rc`), a connection or
    /// queue count (`%ac %fc %bc %sc %sq %bq`, by index).
    Backend,
    Retries,
    Count(usize),
    /// Captured headers `{a|b}` (`%hr`, `%hs`) and cookies (`%CC`, `%CS`).
    CapturedRequest,
    CapturedResponse,
    CookieRequest,
    CookieResponse,
    /// TLS: version, cipher, SNI, ALPN.
    TlsVersion,
    TlsCipher,
    TlsSni,
    TlsAlpn,
    Pid(u32),
}

impl Code {
    /// Values written by sekisho itself from letters, digits, `.`, `:` and
    /// `_` only (addresses, result and hierarchy codes): nothing in them can
    /// need a control-character escape.
    fn is_plain_text(&self) -> bool {
        matches!(
            self,
            Code::ClientIp
                | Code::PeerIp
                | Code::LocalIp
                | Code::UpstreamIp
                | Code::UpstreamLocalIp
                | Code::Result
                | Code::Hierarchy
        )
    }

    /// Parts of the request line: a method, URI and version as the `http`
    /// types hold them never contain a control byte (they are rejected when
    /// parsed or built), so the default Squid escaping has nothing to do.
    fn is_request_token(&self) -> bool {
        matches!(
            self,
            Code::Method
                | Code::Uri
                | Code::PathQuery
                | Code::Path
                | Code::Query
                | Code::VersionNum
                | Code::VersionHttp
                | Code::RequestLine
        )
    }

    fn is_numeric(&self) -> bool {
        matches!(
            self,
            Code::Epoch(_)
                | Code::SubMillis(_)
                | Code::SubMillis3(_)
                | Code::Millis(_)
                | Code::ClientPort
                | Code::PeerPort
                | Code::LocalPort
                | Code::UpstreamPort
                | Code::UpstreamLocalPort
                | Code::Status
                | Code::StatusHap
                | Code::BytesToClient
                | Code::BytesFromClient
                | Code::BytesTotal
                | Code::Pid(_)
                | Code::Retries
                | Code::Count(_)
        )
    }

    /// Append the raw value; append nothing when the value is absent.
    fn write(&self, rec: &Record, split: &mut Split, out: &mut Vec<u8>) {
        match self {
            Code::Epoch(w) => {
                if let Some((s, _)) = split.of(rec, *w) {
                    push_i64(out, s);
                }
            }
            Code::SubMillis(w) => {
                if let Some((_, n)) = split.of(rec, *w) {
                    push_u64(out, u64::from(n / 1_000_000));
                }
            }
            Code::SubMillis3(w) => {
                if let Some((_, n)) = split.of(rec, *w) {
                    push_3digits(out, n / 1_000_000);
                }
            }
            Code::Date(w, d) => {
                d.write_split(time_of(rec, *w), split.of(rec, *w), out);
            }
            Code::Millis(span) => push_i64(out, span_ms(rec, *span)),
            Code::ClientIp => push_ip(out, rec.client.ip()),
            Code::ClientPort => push_u64(out, u64::from(rec.client.port())),
            Code::PeerIp => push_ip(out, rec.relayed.as_ref().map_or(rec.client, |r| r.peer).ip()),
            Code::PeerPort => push_u64(
                out,
                u64::from(rec.relayed.as_ref().map_or(rec.client, |r| r.peer).port()),
            ),
            Code::Tlv(t) => {
                if let Some((_, v)) = rec
                    .relayed
                    .as_ref()
                    .and_then(|r| r.header.tlvs.iter().find(|(k, _)| k == t))
                {
                    out.extend_from_slice(v);
                }
            }
            Code::LocalIp => push_ip(out, rec.local.ip()),
            Code::LocalPort => push_u64(out, u64::from(rec.local.port())),
            Code::UpstreamIp => {
                if let Some(up) = rec.upstream {
                    push_ip(out, up.ip());
                }
            }
            Code::UpstreamPort => {
                if let Some(up) = rec.upstream {
                    push_u64(out, u64::from(up.port()));
                }
            }
            Code::UpstreamLocalIp => {
                if let Some(a) = rec.upstream_local {
                    push_ip(out, a.ip());
                }
            }
            Code::UpstreamLocalPort => {
                if let Some(a) = rec.upstream_local {
                    push_u64(out, u64::from(a.port()));
                }
            }
            Code::UpstreamName => match (&rec.parent, rec.upstream) {
                (Some(p), _) => out.extend_from_slice(p.as_bytes()),
                (None, Some(up)) => push_ip(out, up.ip()),
                (None, None) => {}
            },
            Code::Server if rec.server.is_some() => {
                if let Some(n) = &rec.server {
                    out.extend_from_slice(n.as_bytes());
                }
            }
            Code::Backend => {
                if let Some(b) = &rec.backend {
                    out.extend_from_slice(b.as_bytes());
                }
            }
            Code::Retries => push_u64(out, u64::from(rec.retries)),
            Code::Count(i) => push_u64(out, u64::from(rec.counts.map_or(0, |c| c[*i]))),
            Code::CapturedRequest => captured(out, &rec.captures_request),
            Code::CapturedResponse => captured(out, &rec.captures_response),
            Code::CookieRequest => {
                if let Some(c) = &rec.cookie_request {
                    out.extend_from_slice(c.as_bytes());
                }
            }
            Code::CookieResponse => {
                if let Some(c) = &rec.cookie_response {
                    out.extend_from_slice(c.as_bytes());
                }
            }
            Code::TlsVersion => {
                if let Some(v) = rec.tls.as_ref().and_then(|t| t.version) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            Code::TlsCipher => {
                if let Some(v) = rec.tls.as_ref().and_then(|t| t.cipher) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            Code::TlsSni => {
                if let Some(v) = rec.tls.as_ref().and_then(|t| t.sni.as_deref()) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            Code::TlsAlpn => {
                if let Some(v) = rec.tls.as_ref().and_then(|t| t.alpn.as_deref()) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            Code::Server => match rec.upstream {
                Some(up) => push_sockaddr(out, up.ip(), up.port()),
                None => out.extend_from_slice(b"<NOSRV>"),
            },
            Code::Result => out.extend_from_slice(rec.result.as_str().as_bytes()),
            Code::Hierarchy => out.extend_from_slice(rec.hierarchy.as_str().as_bytes()),
            Code::Status => push_u64(out, u64::from(rec.status)),
            Code::StatusHap => {
                if rec.status == 0 {
                    out.extend_from_slice(b"-1");
                } else {
                    push_u64(out, u64::from(rec.status));
                }
            }
            Code::BytesToClient => push_u64(out, rec.bytes_to_client),
            Code::BytesFromClient => push_u64(out, rec.bytes_from_client),
            Code::BytesTotal => push_u64(out, rec.bytes_to_client.saturating_add(rec.bytes_from_client)),
            Code::Method => out.extend_from_slice(rec.method.as_str().as_bytes()),
            Code::Uri => {
                push_uri(out, &rec.uri);
            }
            Code::PathQuery => match rec.uri.path_and_query() {
                Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
                None => out.extend_from_slice(rec.uri.path().as_bytes()),
            },
            Code::Path => out.extend_from_slice(rec.uri.path().as_bytes()),
            Code::Query => {
                if let Some(q) = rec.uri.query() {
                    out.push(b'?');
                    out.extend_from_slice(q.as_bytes());
                }
            }
            Code::VersionNum => {
                if let Some(v) = version_str(rec.version) {
                    out.extend_from_slice(&v.as_bytes()[5..]);
                }
            }
            Code::VersionHttp => {
                if let Some(v) = version_str(rec.version) {
                    out.extend_from_slice(v.as_bytes());
                }
            }
            Code::RequestLine => {
                out.extend_from_slice(rec.method.as_str().as_bytes());
                out.push(b' ');
                push_uri(out, &rec.uri);
                out.push(b' ');
                out.extend_from_slice(version_str(rec.version).unwrap_or("-").as_bytes());
            }
            Code::User => {
                if let Some(u) = &rec.user {
                    out.extend_from_slice(u.as_bytes());
                }
            }
            Code::ContentType => {
                if let Some(ct) = &rec.content_type {
                    out.extend_from_slice(ct.as_bytes());
                }
            }
            Code::Listener => out.extend_from_slice(rec.listener.as_bytes()),
            Code::Absent => {}
            Code::Termination => out.extend_from_slice(&rec.termination),
            Code::TermCookie => {
                out.extend_from_slice(&rec.termination);
                out.extend_from_slice(&rec.cookie_state);
            }
            Code::Pid(pid) => push_u64(out, u64::from(*pid)),
        }
    }
}

/// HAProxy's captured-header block: `{first|second}`; nothing without captures.
fn captured(out: &mut Vec<u8>, values: &[String]) {
    if values.is_empty() {
        return;
    }
    out.push(b'{');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b'|');
        }
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'}');
}

fn time_of(rec: &Record, w: When) -> SystemTime {
    match w {
        When::Accept => rec.accept_time,
        When::Request => rec.request_time,
    }
}

fn span_ms(rec: &Record, span: Span) -> i64 {
    let d = match span {
        Span::Active => Some(rec.active),
        Span::Total => Some(rec.total),
        Span::Request => rec.timers.request,
        Span::Queue => rec.timers.queue,
        Span::Connect => rec.timers.connect,
        Span::Response => rec.timers.response,
    };
    d.map_or(-1, duration_ms)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn version_str(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => return None,
    })
}

/// The record's times as [`split_time`] gives them, each worked out at
/// most once per line however many fields show it.
#[derive(Default)]
struct Split {
    accept: Option<Option<(i64, u32)>>,
    request: Option<Option<(i64, u32)>>,
}

impl Split {
    fn of(&mut self, rec: &Record, w: When) -> Option<(i64, u32)> {
        let slot = match w {
            When::Accept => &mut self.accept,
            When::Request => &mut self.request,
        };
        *slot.get_or_insert_with(|| split_time(time_of(rec, w)))
    }
}

/// Seconds since the epoch (floored) and the nanoseconds past them; `None`
/// when the seconds do not fit an `i64`.
fn split_time(t: SystemTime) -> Option<(i64, u32)> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Some((i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).ok()?;
            match d.subsec_nanos() {
                0 => Some((-s, 0)),
                n => Some((-s - 1, 1_000_000_000 - n)),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Dates

/// The second last rendered (epoch seconds) and its text.
/// The second last rendered, its text, and where in that text the
/// milliseconds go (for a pattern with one `%.3f`; else the text's end).
type SecondCache = (i64, Vec<u8>, usize);

/// A pre-parsed strftime pattern, rendered in UTC or in local time.
#[derive(Clone, Debug)]
struct DateFmt {
    utc: bool,
    items: Box<[Item<'static>]>,
    /// For patterns that show nothing finer than a second, or nothing finer
    /// than one `%.3f`: the last second rendered and its text, so a busy log
    /// formats the date once a second (and writes the milliseconds itself).
    cache: Option<Arc<Mutex<SecondCache>>>,
    /// Which item is that `%.3f`.
    millis: Option<usize>,
    /// The pattern has no control byte: its output needs no escaping.
    plain: bool,
}

/// An offset whose name prints as nothing: `DelayedFormat` stringifies the
/// offset's name on every call, which would allocate. `%Z` is rewritten at
/// compile time so the name is never needed.
#[derive(Clone, Debug)]
struct Unnamed(FixedOffset);

impl Offset for Unnamed {
    fn fix(&self) -> FixedOffset {
        self.0
    }
}

impl fmt::Display for Unnamed {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: outside these, times are
/// shown as absent (keeps chrono's time zone code well inside its range).
const MIN_DATE_SECS: i64 = -62_167_219_200;
const MAX_DATE_SECS: i64 = 253_402_300_799;

impl DateFmt {
    /// Compile `pattern`; the error is a message, the caller knows the offset.
    fn new(pattern: &str, utc: bool) -> Result<DateFmt, String> {
        let items = StrftimeItems::new(pattern)
            .parse_to_owned()
            .map_err(|e| format!("invalid strftime pattern {pattern:?}: {e}"))?;
        let items = items
            .into_iter()
            .map(|item| match item {
                Item::Fixed(Fixed::TimezoneName) if utc => Item::Literal("UTC"),
                Item::Fixed(Fixed::TimezoneName) => Item::Fixed(Fixed::TimezoneOffsetColon),
                other => other,
            })
            .collect();
        let mut d = DateFmt {
            utc,
            items,
            cache: None,
            millis: None,
            plain: pattern.bytes().all(|b| b >= 0x20 && b != 0x7f),
        };
        // Some items parse but cannot be formatted (`%#z`): try once now.
        let mut probe = Vec::new();
        if !d.write(UNIX_EPOCH, &mut probe) {
            return Err(format!("strftime pattern {pattern:?} cannot be used for output"));
        }
        // two instants of one second that render alike: the pattern has no sub-second part
        let alike = |items: &[Item<'static>]| {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            d.write_items(items, UNIX_EPOCH + Duration::from_millis(1), &mut a);
            d.write_items(items, UNIX_EPOCH + Duration::from_millis(998), &mut b);
            a == b
        };
        let three = |i: &Item<'_>| matches!(i, Item::Fixed(Fixed::Nanosecond3));
        let cacheable = if alike(&d.items) {
            true
        } else if let Some(k) = d.items.iter().position(three)
            && alike(&[&d.items[..k], &d.items[k + 1..]].concat())
        {
            // the one part finer than a second is `%.3f` (HAProxy's and the JSON dates)
            d.millis = Some(k);
            true
        } else {
            false
        };
        if cacheable {
            d.cache = Some(Arc::new(Mutex::new((i64::MIN, Vec::new(), 0))));
        }
        Ok(d)
    }

    /// Append `t` formatted; on failure append nothing and return false.
    fn write(&self, t: SystemTime, out: &mut Vec<u8>) -> bool {
        self.write_split(t, split_time(t), out)
    }

    /// [`DateFmt::write`] with `split` the caller's `split_time(t)`.
    fn write_split(&self, t: SystemTime, split: Option<(i64, u32)>, out: &mut Vec<u8>) -> bool {
        let (Some(cache), Some((secs, nanos))) = (&self.cache, split) else {
            return self.write_items(&self.items, t, out);
        };
        let Ok(mut cached) = cache.lock() else {
            return self.write_items(&self.items, t, out);
        };
        if cached.0 != secs {
            let (_, text, at) = &mut *cached;
            text.clear();
            let ok = match self.millis {
                None => self.write_items(&self.items, t, text),
                Some(k) => {
                    let ok = self.write_items(&self.items[..k], t, text);
                    *at = text.len();
                    ok && self.write_items(&self.items[k + 1..], t, text)
                }
            };
            if !ok {
                cached.0 = i64::MIN;
                return false;
            }
            if self.millis.is_none() {
                cached.2 = cached.1.len();
            }
            cached.0 = secs;
        }
        let (_, text, at) = &*cached;
        out.extend_from_slice(&text[..*at]);
        if self.millis.is_some() {
            out.push(b'.');
            push_3digits(out, nanos / 1_000_000);
        }
        out.extend_from_slice(&text[*at..]);
        true
    }

    /// Append `t` formatted with `items`; on failure append nothing and return false.
    fn write_items(&self, items: &[Item<'static>], t: SystemTime, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let ok = self.write_inner(items, t, out).is_some();
        if !ok {
            out.truncate(start);
        }
        ok
    }

    fn write_inner(&self, items: &[Item<'static>], t: SystemTime, out: &mut Vec<u8>) -> Option<()> {
        let (secs, nanos) = split_time(t)?;
        if !(MIN_DATE_SECS..=MAX_DATE_SECS).contains(&secs) {
            return None;
        }
        let utc: NaiveDateTime = DateTime::<Utc>::from_timestamp(secs, nanos)?.naive_utc();
        let offset = if self.utc {
            FixedOffset::east_opt(0)?
        } else {
            Local.offset_from_utc_datetime(&utc)
        };
        let local = utc.checked_add_offset(offset)?;
        DelayedFormat::new_with_offset(Some(local.date()), Some(local.time()), &Unnamed(offset), items.iter())
            .write_to(&mut VecWriter(out))
            .ok()
    }
}

// ---------------------------------------------------------------------------
// Output helpers

struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    // short numbers (octets, statuses, milliseconds) as fixed-size copies,
    // which compile to plain stores instead of a call to memmove
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    if n < 1000 {
        push_3digits(out, n as u32);
        return;
    }
    // longer ones (epoch seconds, byte counts) two digits per division
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let d = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if n >= 10 {
        let d = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

/// "00" to "99", two bytes each.
const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// `n` (< 1000) as exactly three digits.
fn push_3digits(out: &mut Vec<u8>, n: u32) {
    let n = n % 1000;
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => push_v4(out, v4),
        IpAddr::V6(v6) => {
            let _ = write!(VecWriter(out), "{v6}");
        }
    }
}

/// Dotted decimal, as `Ipv4Addr`'s `Display` writes it: each octet is one
/// four-byte copy from [`OCTETS`], built on the stack and appended at once.
fn push_v4(out: &mut Vec<u8>, a: std::net::Ipv4Addr) {
    let mut buf = [0u8; 16];
    let mut n = 0;
    for o in a.octets() {
        let (text, len) = OCTETS[usize::from(o)];
        buf[n..n + 4].copy_from_slice(&text);
        n += usize::from(len);
    }
    // the last octet's dot is left out
    out.extend_from_slice(&buf[..n - 1]);
}

/// Each octet's digits followed by a dot (zero-filled to four bytes), and
/// how many of those bytes count.
const OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        let mut text = [0u8; 4];
        let mut n = 0;
        if o >= 100 {
            text[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            text[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        text[n] = b'0' + o % 10;
        text[n + 1] = b'.';
        t[i] = (text, n as u8 + 2);
        i += 1;
    }
    t
};

/// A request target as `Uri`'s `Display` writes it: scheme, authority,
/// path, query.
fn push_uri(out: &mut Vec<u8>, u: &http::Uri) {
    if let Some(s) = u.scheme_str() {
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"://");
    }
    if let Some(a) = u.authority() {
        out.extend_from_slice(a.as_str().as_bytes());
    }
    out.extend_from_slice(u.path().as_bytes());
    if let Some(q) = u.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
}

fn push_sockaddr(out: &mut Vec<u8>, ip: IpAddr, port: u16) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            push_v4(out, v4);
            out.push(b':');
            push_u64(out, u64::from(port));
        }
        IpAddr::V6(v6) => {
            let _ = write!(VecWriter(out), "[{v6}]:{port}");
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// How the bytes of a rendered value are made safe for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    /// Nothing escaped.
    Raw,
    /// Control characters (and DEL) as `%XX`.
    Ctrl,
    /// Squid `"`: `\"`, `\\`, `\n`, `\r`, `\t`, other controls as `\xHH`
    /// (the caller wraps the value in double quotes).
    Quote,
    /// Squid `[`: whitespace, controls, non-ASCII, `"`, `[`, `]`, `%` as `%XX`.
    Bracket,
    /// Squid `#`: URL encoding of everything RFC 1738 calls unsafe.
    Url,
    /// As `Url` but leaves `%` alone (Squid's default for user names).
    UrlKeepPercent,
    /// HAProxy default: controls, DEL and `"` as `#XX`.
    Hash,
    /// HAProxy `+E`: `"`, `\` and `]` prefixed with `\`; controls as `#XX`.
    Backslash,
    /// JSON string contents (ASCII escapes only; the input is valid UTF-8).
    Json,
}

/// Every escape style, in the order of [`PLAIN`]'s rows.
const STYLES: [Esc; 9] = [
    Esc::Raw,
    Esc::Ctrl,
    Esc::Quote,
    Esc::Bracket,
    Esc::Url,
    Esc::UrlKeepPercent,
    Esc::Hash,
    Esc::Backslash,
    Esc::Json,
];

/// For each escape style, which bytes stay as they are.
static PLAIN: [[bool; 256]; 9] = {
    let mut t = [[false; 256]; 9];
    let mut s = 0;
    while s < STYLES.len() {
        assert!(STYLES[s] as usize == s);
        let mut b = 0;
        while b < 256 {
            t[s][b] = STYLES[s].keeps(b as u8);
            b += 1;
        }
        s += 1;
    }
    t
};

impl Esc {
    /// Whether `b` is written as it is (what [`Esc::escape`] does, as a table).
    #[cfg(test)]
    fn plain(self, b: u8) -> bool {
        PLAIN[self as usize][usize::from(b)]
    }

    /// Whether `b` is written as it is, for building [`PLAIN`].
    const fn keeps(self, b: u8) -> bool {
        let ctrl = b < 0x20 || b == 0x7f;
        match self {
            Esc::Raw => true,
            Esc::Ctrl => !ctrl,
            Esc::Quote => !ctrl && b != b'"' && b != b'\\',
            Esc::Bracket => !ctrl && b < 0x80 && !matches!(b, b' ' | b'"' | b'[' | b']' | b'%'),
            Esc::Url | Esc::UrlKeepPercent => {
                let unsafe_char = matches!(
                    b,
                    b' ' | b'"' | b'#' | b'<' | b'>' | b'[' | b'\\' | b']' | b'^' | b'`' | b'{' | b'|' | b'}' | b'~'
                ) || (b == b'%' && matches!(self, Esc::Url));
                !(ctrl || b >= 0x80 || unsafe_char)
            }
            Esc::Hash => !ctrl && b != b'"',
            Esc::Backslash => !ctrl && !matches!(b, b'"' | b'\\' | b']'),
            Esc::Json => b >= 0x20 && b != b'"' && b != b'\\',
        }
    }

    /// Write the escaped form of `b` into `buf`, return its length.
    fn escape(self, b: u8, buf: &mut [u8; 6]) -> usize {
        let is_ctrl = b < 0x20 || b == 0x7f;
        let hex = |buf: &mut [u8; 6], lead: u8| {
            buf[0] = lead;
            buf[1] = HEX[usize::from(b >> 4)];
            buf[2] = HEX[usize::from(b & 15)];
            3
        };
        let one = |buf: &mut [u8; 6]| {
            buf[0] = b;
            1
        };
        match self {
            Esc::Raw => one(buf),
            Esc::Ctrl => {
                if is_ctrl {
                    hex(buf, b'%')
                } else {
                    one(buf)
                }
            }
            Esc::Quote => {
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'\n' => b'n',
                    b'\r' => b'r',
                    b'\t' => b't',
                    _ if is_ctrl => {
                        buf[0] = b'\\';
                        buf[1] = b'x';
                        buf[2] = HEX[usize::from(b >> 4)];
                        buf[3] = HEX[usize::from(b & 15)];
                        return 4;
                    }
                    _ => return one(buf),
                };
                buf[0] = b'\\';
                buf[1] = c;
                2
            }
            Esc::Bracket => {
                if is_ctrl || b >= 0x80 || matches!(b, b' ' | b'"' | b'[' | b']' | b'%') {
                    hex(buf, b'%')
                } else {
                    one(buf)
                }
            }
            Esc::Url | Esc::UrlKeepPercent => {
                let unsafe_char = matches!(
                    b,
                    b' ' | b'"' | b'#' | b'<' | b'>' | b'[' | b'\\' | b']' | b'^' | b'`' | b'{' | b'|' | b'}' | b'~'
                ) || (b == b'%' && self == Esc::Url);
                if is_ctrl || b >= 0x80 || unsafe_char {
                    hex(buf, b'%')
                } else {
                    one(buf)
                }
            }
            Esc::Hash => {
                if is_ctrl || b == b'"' {
                    hex(buf, b'#')
                } else {
                    one(buf)
                }
            }
            Esc::Backslash => {
                if is_ctrl {
                    hex(buf, b'#')
                } else if matches!(b, b'"' | b'\\' | b']') {
                    buf[0] = b'\\';
                    buf[1] = b;
                    2
                } else {
                    one(buf)
                }
            }
            Esc::Json => {
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'\n' => b'n',
                    b'\r' => b'r',
                    b'\t' => b't',
                    _ if b < 0x20 => {
                        buf.copy_from_slice(b"\\u00..");
                        buf[4] = HEX[usize::from(b >> 4)];
                        buf[5] = HEX[usize::from(b & 15)];
                        return 6;
                    }
                    _ => return one(buf),
                };
                buf[0] = b'\\';
                buf[1] = c;
                2
            }
        }
    }
}

/// Whether `esc` leaves every byte of `bytes` as it is.
fn all_plain(bytes: &[u8], esc: Esc) -> bool {
    if esc == Esc::Ctrl {
        // eight bytes at a time: a byte below 0x20 leaves the top bit of its
        // lane set in `x - 0x20…` while clear in `x`; 0x7f does the same in
        // `d - 0x01…` once `d = x ^ 0x7f…` turned it into zero. The borrow
        // between lanes only reaches lanes above one that is already caught.
        const ONES: u64 = u64::from_le_bytes([1; 8]);
        let lanes = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            let x = u64::from_le_bytes(w);
            let d = x ^ (ONES * 0x7f);
            (x.wrapping_sub(ONES * 0x20) & !x) | (d.wrapping_sub(ONES) & !d)
        };
        let n = bytes.len();
        if n < 8 {
            let mut bad = 0u8;
            for &b in bytes {
                bad |= u8::from(b < 0x20) | u8::from(b == 0x7f);
            }
            return bad == 0;
        }
        let mut bad = 0u64;
        let mut at = 0;
        while at + 8 <= n {
            bad |= lanes(at);
            at += 8;
        }
        // the last bytes as one more word, overlapping the one before
        if at < n {
            bad |= lanes(n - 8);
        }
        bad & (ONES * 0x80) == 0
    } else {
        let row = &PLAIN[esc as usize];
        bytes.iter().fold(true, |ok, &b| ok & row[usize::from(b)])
    }
}

/// Escape `out[start..]` in place with `esc`, wrapping it in `quote` when
/// given. Works backwards from the end so no temporary buffer is needed.
fn escape_tail(out: &mut Vec<u8>, start: usize, esc: Esc, quote: Option<u8>) {
    // most values need no escape at all; finding out is one pass without
    // branches (eight bytes per step in the default style)
    if quote.is_none() && (esc == Esc::Raw || all_plain(&out[start..], esc)) {
        return;
    }
    escape_rest(out, start, esc, quote);
}

fn escape_rest(out: &mut Vec<u8>, start: usize, esc: Esc, quote: Option<u8>) {
    let end = out.len();
    let mut extra = if quote.is_some() { 2 } else { 0 };
    if esc != Esc::Raw && !all_plain(&out[start..end], esc) {
        let mut buf = [0u8; 6];
        for &b in &out[start..end] {
            extra += esc.escape(b, &mut buf) - 1;
        }
    }
    if extra == 0 {
        return;
    }
    let mut buf = [0u8; 6];
    out.resize(end + extra, 0);
    let mut w = out.len();
    if let Some(q) = quote {
        w -= 1;
        out[w] = q;
    }
    for r in (start..end).rev() {
        let n = esc.escape(out[r], &mut buf);
        w -= n;
        out[w..w + n].copy_from_slice(&buf[..n]);
    }
    if let Some(q) = quote {
        w -= 1;
        out[w] = q;
    }
    debug_assert_eq!(w, start);
}

/// Pad `out[start..]` to `width` bytes with `fill`, on the right when `left`.
fn pad_tail(out: &mut Vec<u8>, start: usize, width: usize, left: bool, fill: u8) {
    let len = out.len() - start;
    if len >= width {
        return;
    }
    let n = width - len;
    let end = out.len();
    out.resize(end + n, fill);
    if !left {
        // values are short: moved byte by byte, without memmove and memset calls
        for i in (start..end).rev() {
            out[i + n] = out[i];
        }
        for b in &mut out[start..start + n] {
            *b = fill;
        }
    }
}

/// Cut `out[start..]` to at most `max` bytes without splitting a UTF-8 sequence.
fn truncate_tail(out: &mut Vec<u8>, start: usize, max: usize) {
    if out.len() - start <= max {
        return;
    }
    let mut cut = start + max;
    while cut > start && (out[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    out.truncate(cut);
}

// ---------------------------------------------------------------------------
// Squid dialect

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SquidEnc {
    /// No modifier: controls escaped, user names URL-escaped (as Squid).
    Default,
    Quote,
    Bracket,
    Url,
    Raw,
}

#[derive(Clone, Debug)]
struct SquidField {
    code: Code,
    left: bool,
    zero: bool,
    width: usize,
    max: Option<usize>,
    // decided once, when the format is read
    numeric: bool,
    esc: Esc,
    quote: Option<u8>,
    /// Written as the code gives it: no width, limit, escaping or quotes.
    bare: bool,
}

impl SquidField {
    fn new(code: Code, enc: SquidEnc, left: bool, zero: bool, width: usize, max: Option<usize>) -> SquidField {
        let numeric = code.is_numeric();
        let (esc, quote) = match enc {
            SquidEnc::Default => match &code {
                Code::User => (Esc::UrlKeepPercent, None),
                // numbers, the codes sekisho writes itself and the parts of
                // the request line (checked by the HTTP parser) are left as
                // they are, and so is a date whose pattern has no control byte
                _ if numeric || code.is_plain_text() || code.is_request_token() => (Esc::Raw, None),
                Code::Date(_, d) if d.plain => (Esc::Raw, None),
                _ => (Esc::Ctrl, None),
            },
            SquidEnc::Quote => (Esc::Quote, Some(b'"')),
            SquidEnc::Bracket => (Esc::Bracket, None),
            SquidEnc::Url => (Esc::Url, None),
            SquidEnc::Raw => (Esc::Raw, None),
        };
        let max = if numeric { None } else { max };
        SquidField {
            code,
            left,
            zero,
            width,
            max,
            numeric,
            esc,
            quote,
            bare: width == 0 && max.is_none() && esc == Esc::Raw && quote.is_none(),
        }
    }

    fn render(&self, rec: &Record, split: &mut Split, out: &mut Vec<u8>) {
        let start = out.len();
        self.code.write(rec, split, out);
        if out.len() == start {
            out.push(b'-');
            return;
        }
        if self.bare {
            return;
        }
        if self.width > 0 && self.numeric && self.zero {
            // a zero-padded number is as wide as the field and never escaped
            pad_tail(out, start, self.width, false, b'0');
            if self.quote.is_some() {
                escape_tail(out, start, self.esc, self.quote);
            }
            return;
        }
        if self.esc != Esc::Raw || self.quote.is_some() {
            escape_tail(out, start, self.esc, self.quote);
        }
        if let Some(max) = self.max {
            truncate_tail(out, start, max);
        }
        if self.width > out.len() - start {
            pad_tail(out, start, self.width, self.left, b' ');
        }
    }
}

/// Squid codes, matched longest first.
const SQUID_CODES: &[&str] = &[
    ">Hs", "<st", ">st", ">la", ">lp", ">pa", ">pp", "<la", "<lp", "<A", "pt", "ts", "tu", "tl", "tg", "tr", ">a",
    ">p", "la", "lp", "<a", "<p", "Ss", "Sh", "st", "rm", "ru", "rp", "rv", "un", "ul", "mt", "ft",
];

fn squid_code(name: &str) -> Code {
    match name {
        "ts" => Code::Epoch(When::Request),
        "tu" => Code::SubMillis(When::Request),
        "tr" => Code::Millis(Span::Active),
        ">a" => Code::ClientIp,
        ">p" => Code::ClientPort,
        ">pa" => Code::PeerIp,
        ">pp" => Code::PeerPort,
        "la" | ">la" => Code::LocalIp,
        "lp" | ">lp" => Code::LocalPort,
        "<a" => Code::UpstreamIp,
        "<p" => Code::UpstreamPort,
        "<la" => Code::UpstreamLocalIp,
        "<lp" => Code::UpstreamLocalPort,
        "<A" => Code::UpstreamName,
        "Ss" => Code::Result,
        "Sh" => Code::Hierarchy,
        ">Hs" => Code::Status,
        "<st" => Code::BytesToClient,
        ">st" => Code::BytesFromClient,
        "st" => Code::BytesTotal,
        "rm" => Code::Method,
        "ru" => Code::Uri,
        "rp" => Code::PathQuery,
        "rv" => Code::VersionNum,
        "un" | "ul" => Code::User,
        "mt" => Code::ContentType,
        "ft" => Code::Listener,
        // `tl`/`tg` are built by the caller (they take an argument).
        _ => Code::Absent,
    }
}

fn err(offset: usize, message: impl Into<String>) -> FormatError {
    FormatError {
        offset,
        message: message.into(),
    }
}

/// A short excerpt of `rest` for error messages.
fn snippet(rest: &str) -> String {
    rest.chars()
        .take_while(|c| !c.is_whitespace() && *c != '%')
        .take(8)
        .collect()
}

fn parse_number(fmt: &str, i: &mut usize) -> Result<Option<usize>, FormatError> {
    let b = fmt.as_bytes();
    let begin = *i;
    let mut n: usize = 0;
    while *i < b.len() && b[*i].is_ascii_digit() {
        n = n.saturating_mul(10).saturating_add(usize::from(b[*i] - b'0'));
        *i += 1;
    }
    if *i == begin {
        return Ok(None);
    }
    if n > MAX_WIDTH {
        return Err(err(
            begin,
            format!("field width {n} is too large (at most {MAX_WIDTH})"),
        ));
    }
    Ok(Some(n))
}

fn flush_lit(lit: &mut Vec<u8>, toks: &mut Vec<Tok>) {
    if !lit.is_empty() {
        toks.push(Tok::Lit(std::mem::take(lit).into_boxed_slice()));
    }
}

fn parse_squid(fmt: &str) -> Result<Vec<Tok>, FormatError> {
    let b = fmt.as_bytes();
    let mut toks = Vec::new();
    let mut lit = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            lit.push(b[i]);
            i += 1;
            continue;
        }
        let pct = i;
        i += 1;
        if i >= b.len() {
            return Err(err(pct, "'%' at the end of the format needs a code"));
        }
        if b[i] == b'%' {
            lit.push(b'%');
            i += 1;
            continue;
        }
        let enc = match b[i] {
            b'"' => SquidEnc::Quote,
            b'[' => SquidEnc::Bracket,
            b'#' => SquidEnc::Url,
            b'\'' => SquidEnc::Raw,
            _ => SquidEnc::Default,
        };
        if enc != SquidEnc::Default {
            i += 1;
        }
        let left = i < b.len() && b[i] == b'-';
        if left {
            i += 1;
        }
        let zero = i < b.len() && b[i] == b'0';
        if zero {
            i += 1;
        }
        let width = parse_number(fmt, &mut i)?.unwrap_or(0);
        let mut max = None;
        if i < b.len() && b[i] == b'.' {
            let dot = i;
            i += 1;
            max = Some(parse_number(fmt, &mut i)?.ok_or_else(|| err(dot, "'.' must be followed by a maximum width"))?);
        }
        let mut arg = None;
        if i < b.len() && b[i] == b'{' {
            let open = i;
            let close = fmt[open..]
                .find('}')
                .ok_or_else(|| err(open, "unterminated '{' (missing '}')"))?;
            arg = Some((open, &fmt[open + 1..open + close]));
            i = open + close + 1;
        }
        let rest = &fmt[i..];
        let Some(name) = SQUID_CODES
            .iter()
            .filter(|c| rest.starts_with(**c))
            .max_by_key(|c| c.len())
        else {
            let what = snippet(rest);
            let message = if what.is_empty() {
                "'%' is not followed by a format code".to_string()
            } else {
                format!("unknown format code %{what}")
            };
            return Err(err(pct, message));
        };
        i += name.len();
        let code = match *name {
            "tl" | "tg" => {
                let utc = *name == "tg";
                let (off, pattern) = match arg {
                    Some((open, p)) if !p.is_empty() => (open + 1, p),
                    _ => (pct, SQUID_DATE),
                };
                let d = DateFmt::new(pattern, utc).map_err(|m| err(off, m))?;
                Code::Date(When::Request, Box::new(d))
            }
            "pt" => {
                let Some((open, t)) = arg else {
                    return Err(err(pct, "%pt needs the TLV type, e.g. %{0x02}pt"));
                };
                let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(h) => u8::from_str_radix(h, 16),
                    None => t.parse::<u8>(),
                };
                match parsed {
                    Ok(n) => Code::Tlv(n),
                    Err(_) => return Err(err(open + 1, format!("`{t}` is not a TLV type (0-255 or 0x00-0xff)"))),
                }
            }
            other => {
                if let Some((open, _)) = arg {
                    return Err(err(open, format!("%{other} takes no {{argument}}")));
                }
                squid_code(other)
            }
        };
        flush_lit(&mut lit, &mut toks);
        toks.push(Tok::Squid(SquidField::new(code, enc, left, zero, width, max)));
    }
    flush_lit(&mut lit, &mut toks);
    Ok(toks)
}

// ---------------------------------------------------------------------------
// HAProxy dialect

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HapOpts {
    quote: bool,
    escape: bool,
    hex: bool,
}

#[derive(Clone, Debug)]
struct HapField {
    code: Code,
    opts: HapOpts,
}

impl HapField {
    fn render(&self, rec: &Record, split: &mut Split, out: &mut Vec<u8>) {
        if self.opts.hex && self.write_hex(rec, split, out) {
            return;
        }
        let start = out.len();
        self.code.write(rec, split, out);
        if self.code.is_numeric() {
            // Numbers are never quoted nor escaped (as HAProxy).
            if out.len() == start {
                out.push(b'-');
            }
            return;
        }
        if out.len() == start {
            out.extend_from_slice(if self.opts.quote { b"\"\"" } else { b"-" });
            return;
        }
        if !self.opts.quote && self.code.is_plain_text() {
            return;
        }
        let esc = if self.opts.escape { Esc::Backslash } else { Esc::Hash };
        escape_tail(out, start, esc, self.opts.quote.then_some(b'"'));
    }

    /// `+X`: IPv4 addresses, ports and `%Ts` in hexadecimal. Returns false
    /// when the code has no hexadecimal form (rendered normally then).
    fn write_hex(&self, rec: &Record, split: &mut Split, out: &mut Vec<u8>) -> bool {
        let ip = |ip: IpAddr| match ip.to_canonical() {
            IpAddr::V4(v4) => Some(u32::from(v4)),
            IpAddr::V6(_) => None,
        };
        let mut w = VecWriter(out);
        let _ = match self.code {
            Code::ClientIp => match ip(rec.client.ip()) {
                Some(v) => write!(w, "{v:08X}"),
                None => return false,
            },
            Code::LocalIp => match ip(rec.local.ip()) {
                Some(v) => write!(w, "{v:08X}"),
                None => return false,
            },
            Code::UpstreamIp => match rec.upstream.and_then(|u| ip(u.ip())) {
                Some(v) => write!(w, "{v:08X}"),
                None => return false,
            },
            Code::ClientPort => write!(w, "{:04X}", rec.client.port()),
            Code::LocalPort => write!(w, "{:04X}", rec.local.port()),
            Code::UpstreamPort => match rec.upstream {
                Some(u) => write!(w, "{:04X}", u.port()),
                None => return false,
            },
            Code::Epoch(when) => match split.of(rec, when) {
                Some((s, _)) if s >= 0 => write!(w, "{s:08X}"),
                _ => return false,
            },
            _ => return false,
        };
        true
    }
}

fn haproxy_code(name: &str) -> Result<Code, String> {
    let date = |when| -> Result<Code, String> { Ok(Code::Date(when, Box::new(DateFmt::new(HAPROXY_DATE, false)?))) };
    Ok(match name {
        "ci" => Code::ClientIp,
        "cp" => Code::ClientPort,
        "pi" => Code::PeerIp,
        "pp" => Code::PeerPort,
        "fi" => Code::LocalIp,
        "fp" => Code::LocalPort,
        "si" => Code::UpstreamIp,
        "sp" => Code::UpstreamPort,
        "bi" => Code::UpstreamLocalIp,
        "bp" => Code::UpstreamLocalPort,
        "ft" => Code::Listener,
        "b" => Code::Backend,
        "s" => Code::Server,
        "rc" => Code::Retries,
        "ac" => Code::Count(0),
        "fc" => Code::Count(1),
        "bc" => Code::Count(2),
        "sc" => Code::Count(3),
        "sq" => Code::Count(4),
        "bq" => Code::Count(5),
        "hr" => Code::CapturedRequest,
        "hs" => Code::CapturedResponse,
        "CC" => Code::CookieRequest,
        "CS" => Code::CookieResponse,
        "sslv" => Code::TlsVersion,
        "sslc" => Code::TlsCipher,
        "Tq" => Code::Millis(Span::Request),
        "t" => date(When::Accept)?,
        "tr" => date(When::Request)?,
        "Ts" => Code::Epoch(When::Accept),
        "ms" => Code::SubMillis3(When::Accept),
        "TR" => Code::Millis(Span::Request),
        "Tw" => Code::Millis(Span::Queue),
        "Tc" => Code::Millis(Span::Connect),
        "Tr" => Code::Millis(Span::Response),
        "Ta" => Code::Millis(Span::Active),
        "Tt" => Code::Millis(Span::Total),
        "ST" => Code::StatusHap,
        "B" => Code::BytesToClient,
        "U" => Code::BytesFromClient,
        "HM" => Code::Method,
        "HU" => Code::Uri,
        "HP" => Code::Path,
        "HQ" => Code::Query,
        "HV" => Code::VersionHttp,
        "r" => Code::RequestLine,
        "ts" => Code::Termination,
        "tsc" => Code::TermCookie,
        "u" => Code::User,
        "pid" => Code::Pid(std::process::id()),
        _ => return Err(format!("unknown log-format variable %{name}")),
    })
}

/// Parse `+Q,-E`-style flags (commas optional) starting at byte `base`.
fn parse_hap_flags(flags: &str, base: usize, opts: &mut HapOpts) -> Result<(), FormatError> {
    let b = flags.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b',' | b' ' => i += 1,
            sign @ (b'+' | b'-') => {
                let on = sign == b'+';
                let Some(&letter) = b.get(i + 1) else {
                    return Err(err(base + i, "flag sign without a flag letter"));
                };
                match letter {
                    b'Q' => opts.quote = on,
                    b'E' => opts.escape = on,
                    b'X' => opts.hex = on,
                    _ => {
                        return Err(err(
                            base + i + 1,
                            format!("unknown flag {:?} (expected Q, E or X)", snippet(&flags[i + 1..])),
                        ));
                    }
                }
                i += 2;
            }
            _ => {
                return Err(err(
                    base + i,
                    "flags must look like +Q or -Q (Q, E or X), separated by commas",
                ));
            }
        }
    }
    Ok(())
}

fn parse_haproxy(fmt: &str) -> Result<Vec<Tok>, FormatError> {
    let b = fmt.as_bytes();
    let mut toks = Vec::new();
    let mut lit = Vec::new();
    let mut global = HapOpts::default();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            lit.push(b[i]);
            i += 1;
            continue;
        }
        let pct = i;
        i += 1;
        if i >= b.len() {
            return Err(err(pct, "'%' at the end of the format needs a variable"));
        }
        if b[i] == b'%' {
            lit.push(b'%');
            i += 1;
            continue;
        }
        let mut opts = global;
        if b[i] == b'{' {
            let open = i;
            let close = fmt[open..]
                .find('}')
                .ok_or_else(|| err(open, "unterminated '{' (missing '}')"))?;
            parse_hap_flags(&fmt[open + 1..open + close], open + 1, &mut opts)?;
            i = open + close + 1;
        }
        if i < b.len() && b[i] == b'[' {
            let close = fmt[i..]
                .find(']')
                .ok_or_else(|| err(i, "unterminated '[' (missing ']')"))?;
            let code = match fmt[i + 1..i + close].trim() {
                "ssl_fc_sni" => Code::TlsSni,
                "ssl_fc_alpn" => Code::TlsAlpn,
                "ssl_fc_protocol" => Code::TlsVersion,
                "ssl_fc_cipher" => Code::TlsCipher,
                other => {
                    return Err(err(
                        pct,
                        format!(
                            "sample expression %[{other}] is not supported; supported: ssl_fc_sni, ssl_fc_alpn, ssl_fc_protocol, ssl_fc_cipher"
                        ),
                    ));
                }
            };
            i += close + 1;
            flush_lit(&mut lit, &mut toks);
            toks.push(Tok::Hap(HapField { code, opts }));
            continue;
        }
        let name_len = b[i..].iter().take_while(|c| c.is_ascii_alphabetic()).count();
        if name_len == 0 {
            return Err(err(pct, "'%' is not followed by a variable name"));
        }
        let name = &fmt[i..i + name_len];
        i += name_len;
        if name == "o" {
            global = opts;
            continue;
        }
        let code = haproxy_code(name).map_err(|m| err(pct, m))?;
        flush_lit(&mut lit, &mut toks);
        toks.push(Tok::Hap(HapField { code, opts }));
    }
    flush_lit(&mut lit, &mut toks);
    Ok(toks)
}

// ---------------------------------------------------------------------------
// JSON

/// A JSON string from bytes that may not be UTF-8 (invalid parts become U+FFFD).
fn json_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        let start = out.len();
        out.extend_from_slice(chunk.valid().as_bytes());
        escape_tail(out, start, Esc::Json, None);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

fn json_key(out: &mut Vec<u8>, first: bool, key: &str) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string of whatever `code` writes, or `null` when it writes nothing.
fn json_code(out: &mut Vec<u8>, rec: &Record, code: &Code) {
    out.push(b'"');
    let start = out.len();
    code.write(rec, &mut Split::default(), out);
    if out.len() == start {
        out.pop();
        out.extend_from_slice(b"null");
        return;
    }
    escape_tail(out, start, Esc::Json, None);
    out.push(b'"');
}

fn render_json(date: &DateFmt, rec: &Record, out: &mut Vec<u8>) {
    out.push(b'{');
    json_key(out, true, "time");
    out.push(b'"');
    if date.write(rec.request_time, out) {
        out.push(b'"');
    } else {
        out.pop();
        out.extend_from_slice(b"null");
    }
    json_key(out, false, "epoch");
    match split_time(rec.request_time) {
        Some((s, n)) => {
            let ms = i128::from(s) * 1000 + i128::from(n / 1_000_000);
            if ms < 0 {
                out.push(b'-');
            }
            let abs = ms.unsigned_abs();
            push_u64(out, u64::try_from(abs / 1000).unwrap_or(u64::MAX));
            out.push(b'.');
            push_3digits(out, (abs % 1000) as u32);
        }
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "duration_ms");
    push_i64(out, duration_ms(rec.active));
    json_key(out, false, "client_ip");
    json_code(out, rec, &Code::ClientIp);
    json_key(out, false, "client_port");
    push_u64(out, u64::from(rec.client.port()));
    json_key(out, false, "local_ip");
    json_code(out, rec, &Code::LocalIp);
    json_key(out, false, "local_port");
    push_u64(out, u64::from(rec.local.port()));
    json_key(out, false, "listener");
    json_bytes(out, rec.listener.as_bytes());
    json_key(out, false, "method");
    json_bytes(out, rec.method.as_str().as_bytes());
    json_key(out, false, "uri");
    json_code(out, rec, &Code::Uri);
    json_key(out, false, "version");
    json_code(out, rec, &Code::VersionHttp);
    json_key(out, false, "status");
    push_u64(out, u64::from(rec.status));
    json_key(out, false, "result");
    json_bytes(out, rec.result.as_str().as_bytes());
    json_key(out, false, "hierarchy");
    json_bytes(out, rec.hierarchy.as_str().as_bytes());
    json_key(out, false, "bytes_sent");
    push_u64(out, rec.bytes_to_client);
    json_key(out, false, "bytes_received");
    push_u64(out, rec.bytes_from_client);
    json_key(out, false, "user");
    match &rec.user {
        Some(u) => json_bytes(out, u.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "upstream");
    match rec.upstream {
        Some(up) => {
            out.push(b'"');
            push_sockaddr(out, up.ip(), up.port());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "backend");
    match &rec.backend {
        Some(b) => json_bytes(out, b.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "server");
    match &rec.server {
        Some(b) => json_bytes(out, b.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "retries");
    push_u64(out, u64::from(rec.retries));
    let tls = rec.tls.as_deref();
    for (k, v) in [
        ("tls_version", tls.and_then(|t| t.version)),
        ("tls_cipher", tls.and_then(|t| t.cipher)),
        ("sni", tls.and_then(|t| t.sni.as_deref())),
        ("alpn", tls.and_then(|t| t.alpn.as_deref())),
    ] {
        json_key(out, false, k);
        match v {
            Some(v) => json_bytes(out, v.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
    }
    json_key(out, false, "source");
    match rec.upstream_local {
        Some(a) => {
            out.push(b'"');
            push_ip(out, a.ip());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "parent");
    match &rec.parent {
        Some(p) => json_bytes(out, p.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "content_type");
    match &rec.content_type {
        Some(ct) => json_bytes(out, ct.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    json_key(out, false, "termination");
    json_bytes(out, &rec.termination);
    json_key(out, false, "timers");
    out.push(b'{');
    for (i, (key, span)) in [
        ("TR", Span::Request),
        ("Tw", Span::Queue),
        ("Tc", Span::Connect),
        ("Tr", Span::Response),
    ]
    .into_iter()
    .enumerate()
    {
        json_key(out, i == 0, key);
        push_i64(out, span_ms(rec, span));
    }
    out.push(b'}');
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_decimal_text_at_every_length() {
        let mut cases = vec![0u64, 9, 10, 99, 100, 999, 1000, 65535, 1_700_000_000, u64::MAX];
        cases.extend((0..2000).step_by(7));
        cases.extend((0..20).map(|e| 10u64.pow(e)).flat_map(|p| [p - 1, p, p + 1]));
        cases.extend((0..3_000_000).step_by(997));
        for n in cases {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
        let mut out = Vec::new();
        push_i64(&mut out, -42);
        assert_eq!(out, b"-42");
        // every octet value in every position, next to short and long ones
        let mut addrs = vec![[0, 0, 0, 0], [255, 255, 255, 255], [127, 0, 0, 1]];
        for o in 0..=255u8 {
            for at in 0..4 {
                let mut a = [1, 22, 200, 9];
                a[at] = o;
                addrs.push(a);
            }
        }
        for a in addrs {
            let ip = std::net::Ipv4Addr::from(a);
            let mut out = Vec::new();
            push_v4(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn the_plain_table_agrees_with_escape() {
        for esc in STYLES {
            for b in 0..=255u8 {
                let mut buf = [0u8; 6];
                let n = esc.escape(b, &mut buf);
                assert_eq!(esc.plain(b), n == 1 && buf[0] == b, "{esc:?} byte {b:#04x}");
                // the one-pass test over a value agrees with the table, wherever
                // the byte sits: in each lane of a word, in the tail, next to
                // UTF-8 bytes and to the style's own edge bytes
                let base = "plain-välue/with.bytes\u{7e}é".as_bytes();
                for at in 0..=base.len() {
                    let mut v = base.to_vec();
                    v.insert(at, b);
                    let want = esc.plain(b) && base.iter().all(|&c| esc.plain(c));
                    assert_eq!(all_plain(&v, esc), want, "{esc:?} byte {b:#04x} at {at}");
                }
            }
        }
    }

    #[test]
    fn the_plain_test_agrees_with_the_table_on_any_bytes() {
        // values drawn from a fixed generator, weighted towards the bytes
        // around the control ranges where the word-wise test could slip
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let edge = [
            0x00, 0x01, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0x9f, 0xa0, 0xff, b'a', b'"', b'%',
        ];
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    match r % 32 {
                        0 => edge[(r >> 8) as usize % edge.len()],
                        1..=3 => (r >> 16) as u8,
                        _ => 0x21 + ((r >> 16) % 0x5e) as u8,
                    }
                })
                .collect();
            for esc in STYLES {
                let want = v.iter().all(|&b| esc.plain(b));
                assert_eq!(all_plain(&v, esc), want, "{esc:?} {v:02x?}");
            }
        }
    }

    #[test]
    fn uris_and_addresses_render_as_their_display() {
        for u in [
            "http://example.com:8080/a/b?x=1&y=%20",
            "http://example.com",
            "/only/path?q",
            "/",
            "*",
            "example.com:443",
            "https://[2001:db8::1]:8443/p",
        ] {
            let uri: http::Uri = u.parse().unwrap();
            let mut out = Vec::new();
            push_uri(&mut out, &uri);
            assert_eq!(String::from_utf8(out).unwrap(), uri.to_string(), "{u}");
        }
        for a in [
            "0.0.0.0",
            "192.168.99.1",
            "255.255.255.255",
            "10.0.10.100",
            "::ffff:10.1.2.3",
            "2001:db8::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_canonical().to_string(), "{a}");
            let mut out = Vec::new();
            push_sockaddr(&mut out, ip, 3128);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                std::net::SocketAddr::new(ip.to_canonical(), 3128).to_string(),
                "{a}"
            );
        }
    }
    use crate::observe::record::{Hierarchy, ResultCode, Timers};
    use http::{HeaderValue, Method, Uri};
    use std::sync::Arc;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    /// 2023-11-14T22:13:20.345Z request, accepted 95 ms earlier.
    fn full() -> Record {
        let mut r = Record::new(
            at(1_700_000_000, 250),
            "192.0.2.10:51234".parse().unwrap(),
            "10.0.0.1:3128".parse().unwrap(),
            Arc::from("main"),
        );
        r.request_time = at(1_700_000_000, 345);
        r.active = Duration::from_micros(42_700);
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
        r.bytes_from_client = 321;
        r.method = Method::GET;
        r.uri = Uri::from_static("http://example.com/a/b?x=1");
        r.version = Version::HTTP_11;
        r.user = Some(Arc::from("john doe"));
        r.upstream = Some("93.184.216.34:80".parse().unwrap());
        r.content_type = Some(HeaderValue::from_static("text/html"));
        r.termination = *b"--";
        r
    }

    /// A record where nothing happened beyond the accept.
    fn bare() -> Record {
        let mut r = Record::new(
            at(1_700_000_000, 250),
            "192.0.2.10:51234".parse().unwrap(),
            "10.0.0.1:3128".parse().unwrap(),
            Arc::from("main"),
        );
        r.request_time = at(1_700_000_000, 345);
        r
    }

    #[test]
    fn values_written_unescaped_are_plain_text() {
        let results = [
            ResultCode::TcpMiss,
            ResultCode::TcpMissAborted,
            ResultCode::TcpDenied,
            ResultCode::TcpTunnel,
            ResultCode::TcpMissError,
            ResultCode::None,
        ];
        let hierarchies = [
            Hierarchy::Direct,
            Hierarchy::FirstUpParent,
            Hierarchy::RoundRobinParent,
            Hierarchy::Carp,
            Hierarchy::None,
        ];
        let f = LogFormat::parse("%>a %>pa %la %<a %<la %Ss %Sh", Style::Squid).unwrap();
        let h = LogFormat::parse("%ci %pi %fi %si %bi", Style::Haproxy).unwrap();
        for (i, result) in results.into_iter().enumerate() {
            let mut r = full();
            r.result = result;
            r.hierarchy = hierarchies[i % hierarchies.len()];
            r.client = "[2001:db8::ff:1]:5".parse().unwrap();
            r.upstream_local = Some("[::ffff:10.1.2.3]:9".parse().unwrap());
            let line = render(&f, &r) + " " + &render(&h, &r);
            assert!(
                line.bytes().all(|b| b.is_ascii_alphanumeric() || b"._: -".contains(&b)),
                "{line}"
            );
        }
    }

    /// The request-line codes skip the default Squid escaping because the
    /// `http` types cannot hold a control byte: if that ever changed, this
    /// test fails, and those codes must be escaped again.
    #[test]
    fn request_line_parts_cannot_hold_control_bytes() {
        for b in (0u8..0x20).chain([0x7f]) {
            let c = char::from(b);
            for uri in [
                format!("http://ho{c}st/p"),
                format!("http://host/a{c}b"),
                format!("http://host/a?q{c}=1"),
                format!("/a{c}b"),
                format!("/a?{c}"),
                format!("ho{c}st:443"),
            ] {
                assert!(http::Uri::try_from(uri.as_str()).is_err(), "{uri:?} parsed");
                assert!(http::Uri::try_from(uri.into_bytes()).is_err());
            }
            assert!(
                http::Method::from_bytes(format!("GE{c}T").as_bytes()).is_err(),
                "method with {b:#04x}"
            );
        }
        // and the fields really are written as they are
        assert_eq!(
            ["%rm", "%ru", "%rp"].map(|c| match &LogFormat::parse(c, Style::Squid).unwrap().kind {
                Kind::Tokens(t) => matches!(&t[0], Tok::Squid(f) if f.bare),
                Kind::Json(_) => false,
            }),
            [true; 3]
        );
    }

    fn render(f: &LogFormat, rec: &Record) -> String {
        let mut out = Vec::new();
        f.render(rec, &mut out);
        String::from_utf8(out).expect("utf-8 line")
    }

    fn sq(fmt: &str, rec: &Record) -> String {
        render(&LogFormat::parse(fmt, Style::Squid).expect(fmt), rec)
    }

    fn hap(fmt: &str, rec: &Record) -> String {
        render(&LogFormat::parse(fmt, Style::Haproxy).expect(fmt), rec)
    }

    /// What chrono renders for `t` in local time, to compare with `%tl` & co.
    fn local(t: SystemTime, pattern: &str) -> String {
        DateTime::<Local>::from(t).format(pattern).to_string()
    }

    fn squid_err(fmt: &str) -> FormatError {
        LogFormat::parse(fmt, Style::Squid).expect_err(fmt)
    }

    fn hap_err(fmt: &str) -> FormatError {
        LogFormat::parse(fmt, Style::Haproxy).expect_err(fmt)
    }

    #[test]
    fn proxy_protocol_codes() {
        let mut r = full();
        // without a PROXY header the peer is the client and TLVs are absent
        assert_eq!(
            sq("%>pa:%>pp %>a %{2}pt", &r),
            format!("{}:{} {} -", r.client.ip(), r.client.port(), r.client.ip())
        );
        r.relayed = Some(Arc::new(crate::listen::Relayed {
            peer: "10.9.8.7:4242".parse().unwrap(),
            header: crate::listen::proxy_protocol::Header {
                version: 2,
                local: false,
                addrs: None,
                tlvs: vec![(0x02, b"example.org".to_vec()), (0xe0, b"a b".to_vec())],
            },
        }));
        assert_eq!(
            sq("%>pa:%>pp %{0x02}pt %{224}pt %{3}pt", &r),
            "10.9.8.7:4242 example.org a b -"
        );
        assert_eq!(hap("%pi:%pp", &r), "10.9.8.7:4242");
        assert_eq!(squid_err("%pt").offset, 0);
        assert_eq!(squid_err("%{x}pt").offset, 2);
        assert_eq!(squid_err("%{256}pt").offset, 2);
    }

    #[test]
    fn per_second_dates_are_reused_only_within_their_second() {
        let mut r = full();
        let whole = LogFormat::parse("%{%H:%M:%S}tg", Style::Squid).unwrap();
        let fine = LogFormat::parse("%tr", Style::Haproxy).unwrap();
        let base = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut seen = Vec::new();
        for ms in [100, 900, 1_000, 1_999, 2_000] {
            r.request_time = base + Duration::from_millis(ms);
            seen.push((render(&whole, &r), render(&fine, &r)));
        }
        let secs: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(secs, ["00:16:40", "00:16:40", "00:16:41", "00:16:41", "00:16:42"]);
        let millis: Vec<&str> = seen.iter().map(|(_, b)| &b[b.len() - 3..]).collect();
        assert_eq!(
            millis,
            ["100", "900", "000", "999", "000"],
            "milliseconds are written for each record"
        );
        // the cached text around `%.3f` is whole-second and stays in order,
        // with a part after it (the JSON date has an offset there)
        let around = LogFormat::parse("%{%S%.3f %z|%H}tg %{%S %f}tg", Style::Squid).unwrap();
        for ms in [5, 999, 1_000, 1_001, 61_250, 61_250, 3_600_007] {
            r.request_time = base + Duration::from_millis(ms);
            let t = DateTime::<Utc>::from(r.request_time);
            let want = format!("{} {}", t.format("%S%.3f %z|%H"), t.format("%S %f"));
            assert_eq!(render(&around, &r), want, "{ms} ms");
        }
        // before 1970 the milliseconds still count up within their second
        r.request_time = UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(hap("%tr", &r), local(r.request_time, "%d/%b/%Y:%H:%M:%S%.3f"));
    }

    #[test]
    fn squid_every_code() {
        let r = full();
        let cases = [
            ("%ts", "1700000000"),
            ("%tu", "345"),
            ("%tg", "14/Nov/2023:22:13:20 +0000"),
            ("%{%Y-%m-%dT%H:%M:%S%.3f %Z}tg", "2023-11-14T22:13:20.345 UTC"),
            ("%tr", "42"),
            ("%>a", "192.0.2.10"),
            ("%>p", "51234"),
            ("%la", "10.0.0.1"),
            ("%lp", "3128"),
            ("%>la", "10.0.0.1"),
            ("%>lp", "3128"),
            ("%<a", "93.184.216.34"),
            ("%<p", "80"),
            ("%Ss", "TCP_MISS"),
            ("%Sh", "HIER_DIRECT"),
            ("%>Hs", "200"),
            ("%<st", "1234"),
            ("%>st", "321"),
            ("%st", "1555"),
            ("%rm", "GET"),
            ("%ru", "http://example.com/a/b?x=1"),
            ("%rp", "/a/b?x=1"),
            ("%rv", "1.1"),
            ("%un", "john%20doe"),
            ("%ul", "john%20doe"),
            ("%mt", "text/html"),
            ("%ft", "main"),
        ];
        for (fmt, want) in cases {
            assert_eq!(sq(fmt, &r), want, "{fmt}");
        }
        assert_eq!(sq("%tl", &r), local(r.request_time, "%d/%b/%Y:%H:%M:%S %z"));
        assert_eq!(
            sq("%{%Y/%m/%d %H:%M:%S}tl", &r),
            local(r.request_time, "%Y/%m/%d %H:%M:%S")
        );
        // %Z in local time is the numeric offset (what chrono prints for Local).
        assert_eq!(sq("%{%Z}tl", &r), local(r.request_time, "%:z"));
    }

    #[test]
    fn squid_absent_values_are_dashes() {
        let r = bare();
        for fmt in [
            "%<a", "%<p", "%un", "%ul", "%mt", "%[un", "%\"un", "%#un", "%'un", "%5<a", "%-5<p",
        ] {
            assert_eq!(sq(fmt, &r), "-", "{fmt}");
        }
        assert_eq!(sq("%03>Hs", &r), "000");
        assert_eq!(sq("%>Hs", &r), "0");
        assert_eq!(sq("%tr %<st %>st %st", &r), "0 0 0 0");
        let mut r = full();
        r.user = Some(Arc::from(""));
        assert_eq!(sq("%un", &r), "-");
        // CONNECT: authority-form target has no path.
        r.method = Method::CONNECT;
        r.uri = Uri::from_static("example.com:443");
        assert_eq!(sq("%rm %ru %rp", &r), "CONNECT example.com:443 -");
    }

    #[test]
    fn squid_modifiers() {
        let mut r = full();
        assert_eq!(sq("%6tr|", &r), "    42|");
        assert_eq!(sq("%-6tr|", &r), "42    |");
        assert_eq!(sq("%06tr|", &r), "000042|");
        assert_eq!(sq("%-06tr|", &r), "000042|");
        assert_eq!(sq("%2tr|", &r), "42|");
        assert_eq!(sq("%05rm|", &r), "  GET|", "zero padding is for numbers");
        assert_eq!(sq("%.4ru|", &r), "http|");
        assert_eq!(sq("%10.4ru|", &r), "      http|");
        assert_eq!(sq("%-10.4ru|", &r), "http      |");
        assert_eq!(sq("%.2tr|", &r), "42|", "max width does not cut numbers");
        assert_eq!(sq("%\"un", &r), "\"john doe\"");
        assert_eq!(sq("%[un", &r), "john%20doe");
        assert_eq!(sq("%'un", &r), "john doe");
        assert_eq!(sq("%#un", &r), "john%20doe");
        assert_eq!(sq("%\"12un|", &r), "  \"john doe\"|");

        r.request_time = at(1_700_000_000, 5);
        assert_eq!(sq("%ts.%03tu", &r), "1700000000.005");
        assert_eq!(sq("%tu", &r), "5");
        assert_eq!(sq("%13ts|%-5tu|", &r), "   1700000000|5    |");
        // a date is left as written unless its own pattern holds a control byte
        assert_eq!(sq("%{%Y-%m %a}tg", &r), "2023-11 Tue");
        assert_eq!(sq("%{%Y\u{1}%m\t}tg", &r), "2023%0111%09");

        r.user = Some(Arc::from("a\"b\\c\n\u{1}"));
        assert_eq!(sq("%\"un", &r), "\"a\\\"b\\\\c\\n\\x01\"");
        r.user = Some(Arc::from("[x] 100%\t\"é"));
        assert_eq!(sq("%[un", &r), "%5Bx%5D%20100%25%09%22%C3%A9");
        assert_eq!(sq("%#un", &r), "%5Bx%5D%20100%25%09%22%C3%A9");
        assert_eq!(sq("%un", &r), "%5Bx%5D%20100%%09%22%C3%A9");
        assert_eq!(sq("%'un", &r), "[x] 100%\t\"é");

        // Default encoding keeps control characters out of the line.
        r.listener = Arc::from("a\nb");
        assert_eq!(sq("%ft", &r), "a%0Ab");
        assert_eq!(sq("%'ft", &r), "a\nb");

        // Max width never splits a UTF-8 sequence.
        r.listener = Arc::from("aé");
        assert_eq!(sq("%.2ft|", &r), "a|");
        assert_eq!(sq("%.3ft|", &r), "aé|");
    }

    #[test]
    fn squid_literals_and_longest_match() {
        let r = full();
        assert_eq!(sq("100%% of %rm!", &r), "100% of GET!");
        assert_eq!(sq("%%%%", &r), "%%");
        assert_eq!(sq("", &r), "");
        assert_eq!(sq("no codes é", &r), "no codes é");
        // `%tsx` is `%ts` followed by a literal `x`; `%>Hs` wins over `%>h`-ish prefixes.
        assert_eq!(sq("%tsx", &r), "1700000000x");
        assert_eq!(sq("%>Hs%st%<st%>st", &r), "20015551234321");
        // render appends to what is already in the buffer
        let f = LogFormat::parse("%rm", Style::Squid).unwrap();
        let mut out = b"prefix ".to_vec();
        f.render(&r, &mut out);
        f.render(&r, &mut out);
        assert_eq!(out, b"prefix GETGET");
    }

    #[test]
    fn squid_preset_line() {
        let f = LogFormat::preset("squid").unwrap();
        let r = full();
        let want = format!(
            "{} 1700000000.345     42 192.0.2.10 TCP_MISS/200 1234 GET \
             http://example.com/a/b?x=1 john%20doe HIER_DIRECT/93.184.216.34 text/html",
            local(r.request_time, "%Y/%m/%d %H:%M:%S")
        );
        assert_eq!(render(&f, &r), want);

        let r = bare();
        let want = format!(
            "{} 1700000000.345      0 192.0.2.10 NONE/000 0 GET / - HIER_NONE/- -",
            local(r.request_time, "%Y/%m/%d %H:%M:%S")
        );
        assert_eq!(render(&f, &r), want);
    }

    #[test]
    fn common_preset_line() {
        let f = LogFormat::preset("common").unwrap();
        let r = full();
        let want = format!(
            "192.0.2.10 - john%20doe [{}] \"GET http://example.com/a/b?x=1 HTTP/1.1\" \
             200 1234 TCP_MISS:HIER_DIRECT",
            local(r.request_time, "%d/%b/%Y:%H:%M:%S %z")
        );
        assert_eq!(render(&f, &r), want);
    }

    #[test]
    fn haproxy_every_code() {
        let r = full();
        let pid = std::process::id().to_string();
        let cases = [
            ("%ci", "192.0.2.10"),
            ("%cp", "51234"),
            ("%fi", "10.0.0.1"),
            ("%fp", "3128"),
            ("%si", "93.184.216.34"),
            ("%sp", "80"),
            ("%ft", "main"),
            ("%b", "-"),
            ("%s", "93.184.216.34:80"),
            ("%Ts", "1700000000"),
            ("%ms", "250"),
            ("%TR", "1"),
            ("%Tw", "0"),
            ("%Tc", "5"),
            ("%Tr", "30"),
            ("%Ta", "42"),
            ("%Tt", "50"),
            ("%ST", "200"),
            ("%B", "1234"),
            ("%U", "321"),
            ("%HM", "GET"),
            ("%HU", "http://example.com/a/b?x=1"),
            ("%HP", "/a/b"),
            ("%HQ", "?x=1"),
            ("%HV", "HTTP/1.1"),
            ("%r", "GET http://example.com/a/b?x=1 HTTP/1.1"),
            ("%ts", "--"),
            ("%tsc", "----"),
            ("%u", "john doe"),
            ("%pid", pid.as_str()),
        ];
        for (fmt, want) in cases {
            assert_eq!(hap(fmt, &r), want, "{fmt}");
        }
        assert_eq!(hap("%t", &r), local(r.accept_time, "%d/%b/%Y:%H:%M:%S%.3f"));
        assert_eq!(hap("%tr", &r), local(r.request_time, "%d/%b/%Y:%H:%M:%S%.3f"));
        assert!(hap("%t", &r).ends_with(".250"));
        assert!(hap("%tr", &r).ends_with(".345"));
    }

    #[test]
    fn haproxy_absent_values() {
        let r = bare();
        let cases = [
            ("%si", "-"),
            ("%sp", "-"),
            ("%s", "<NOSRV>"),
            ("%TR/%Tw/%Tc/%Tr/%Ta/%Tt", "-1/-1/-1/-1/0/0"),
            ("%ST", "-1"),
            ("%u", "-"),
            ("%HQ", "-"),
            ("%{+Q}u", "\"\""),
            ("%{+Q}b", "\"\""),
            ("%{+X}si", "-"),
            ("%{+X}sp", "-"),
        ];
        for (fmt, want) in cases {
            assert_eq!(hap(fmt, &r), want, "{fmt}");
        }
    }

    #[test]
    fn haproxy_flags() {
        let mut r = full();
        assert_eq!(hap("%{+Q}r", &r), "\"GET http://example.com/a/b?x=1 HTTP/1.1\"");
        assert_eq!(
            hap("%{+Q}o%ci %HM %{-Q}HU %ST", &r),
            "\"192.0.2.10\" \"GET\" http://example.com/a/b?x=1 200"
        );
        assert_eq!(hap("%{+X}ci:%{+X}cp", &r), "C000020A:C822");
        assert_eq!(hap("%{+X}Ts", &r), "6553F100");
        assert_eq!(hap("%{+X}HM", &r), "GET", "no hex form: rendered as usual");
        r.user = Some(Arc::from("a\"b]\\c\nd"));
        assert_eq!(hap("%u", &r), "a#22b]\\c#0Ad");
        assert_eq!(hap("%{+Q,+E}u", &r), "\"a\\\"b\\]\\\\c#0Ad\"");
        assert_eq!(hap("%{+Q+E}u", &r), "\"a\\\"b\\]\\\\c#0Ad\"");
        assert_eq!(hap("100%% %{}u", &r), "100% a#22b]\\c#0Ad");
        r.client = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(hap("%{+X}ci %ci", &r), "2001:db8::1 2001:db8::1");
    }

    #[test]
    fn httplog_preset_line() {
        let f = LogFormat::preset("httplog").unwrap();
        let r = full();
        let want = format!(
            "192.0.2.10:51234 [{}] main -/93.184.216.34:80 1/0/5/30/42 200 1234 - - ---- 0/0/0/0/0 0/0 - - \
             \"GET http://example.com/a/b?x=1 HTTP/1.1\"",
            local(r.request_time, "%d/%b/%Y:%H:%M:%S%.3f")
        );
        assert_eq!(render(&f, &r), want);

        let r = bare();
        let want = format!(
            "192.0.2.10:51234 [{}] main -/<NOSRV> -1/-1/-1/-1/0 -1 0 - - ---- 0/0/0/0/0 0/0 - - \
             \"GET / HTTP/1.1\"",
            local(r.request_time, "%d/%b/%Y:%H:%M:%S%.3f")
        );
        assert_eq!(render(&f, &r), want);
    }

    fn json(rec: &Record) -> serde_json::Value {
        let line = render(&LogFormat::preset("json").unwrap(), rec);
        assert!(!line.contains('\n'), "one line: {line}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    #[test]
    fn json_preset() {
        let r = full();
        let v = json(&r);
        assert_eq!(v["time"], local(r.request_time, "%Y-%m-%dT%H:%M:%S%.3f%:z").as_str());
        assert_eq!(v["epoch"].as_f64(), Some(1_700_000_000.345));
        let line = render(&LogFormat::preset("json").unwrap(), &r);
        assert!(line.contains("\"epoch\":1700000000.345,"), "{line}");
        assert_eq!(v["duration_ms"], 42);
        assert_eq!(v["client_ip"], "192.0.2.10");
        assert_eq!(v["client_port"], 51234);
        assert_eq!(v["local_ip"], "10.0.0.1");
        assert_eq!(v["local_port"], 3128);
        assert_eq!(v["listener"], "main");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["uri"], "http://example.com/a/b?x=1");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["result"], "TCP_MISS");
        assert_eq!(v["hierarchy"], "HIER_DIRECT");
        assert_eq!(v["bytes_sent"], 1234);
        assert_eq!(v["bytes_received"], 321);
        assert_eq!(v["user"], "john doe");
        assert_eq!(v["upstream"], "93.184.216.34:80");
        assert_eq!(v["content_type"], "text/html");
        assert_eq!(v["termination"], "--");
        assert_eq!(v["timers"], serde_json::json!({"TR": 1, "Tw": 0, "Tc": 5, "Tr": 30}));
        assert_eq!(v["source"], serde_json::Value::Null);
        assert_eq!(v["parent"], serde_json::Value::Null);
        assert_eq!(v["backend"], serde_json::Value::Null);
        assert_eq!(v["retries"], 0);
        assert_eq!(v["tls_version"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 30);
    }

    #[test]
    fn egress_codes() {
        let mut r = full();
        assert_eq!(sq("%<la|%<lp|%<A", &r), "-|-|93.184.216.34");
        assert_eq!(hap("%bi|%bp", &r), "-|-");
        r.upstream_local = Some("10.1.0.3:40000".parse().unwrap());
        r.parent = Some("p2".into());
        r.hierarchy = Hierarchy::FirstUpParent;
        assert_eq!(sq("%<la %<lp %Sh/%<A", &r), "10.1.0.3 40000 FIRSTUP_PARENT/p2");
        assert_eq!(hap("%bi:%bp", &r), "10.1.0.3:40000");
        let v = json(&r);
        assert_eq!(v["source"], "10.1.0.3");
        assert_eq!(v["parent"], "p2");
    }

    #[test]
    fn json_preset_absent_and_escaping() {
        let v = json(&bare());
        assert_eq!(v["user"], serde_json::Value::Null);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["content_type"], serde_json::Value::Null);
        assert_eq!(v["status"], 0);
        assert_eq!(v["timers"], serde_json::json!({"TR": -1, "Tw": -1, "Tc": -1, "Tr": -1}));

        let mut r = full();
        r.user = Some(Arc::from("q\"b\\s\n\t\u{1}\u{7f}é"));
        r.listener = Arc::from("l\"1");
        r.content_type = Some(HeaderValue::from_bytes(b"text/\xffplain; x=\"y\"").unwrap());
        r.termination = [0xff, b'\\'];
        r.upstream = Some("[2001:db8::2]:8080".parse().unwrap());
        let v = json(&r);
        assert_eq!(v["user"], "q\"b\\s\n\t\u{1}\u{7f}é");
        assert_eq!(v["listener"], "l\"1");
        assert_eq!(v["content_type"], "text/\u{FFFD}plain; x=\"y\"");
        assert_eq!(v["termination"], "\u{FFFD}\\");
        assert_eq!(v["upstream"], "[2001:db8::2]:8080");
    }

    #[test]
    fn parse_errors() {
        let e = squid_err("%rm %zz");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("%zz"), "{e}");
        let e = squid_err("%{User-Agent}>h");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains(">h"), "{e}");
        let e = squid_err("abc %{%Y");
        assert_eq!(e.offset, 5);
        assert!(e.message.contains('{'), "{e}");
        let e = squid_err("ab %{%Q}tl");
        assert_eq!(e.offset, 5);
        assert!(e.message.contains("strftime"), "{e}");
        assert_eq!(squid_err("%{%#z}tg").offset, 2);
        assert_eq!(squid_err("%{%}tg").offset, 2);
        assert_eq!(squid_err("x %").offset, 2);
        assert_eq!(squid_err("%5.xtr").offset, 2);
        assert_eq!(squid_err("%{x}rm").offset, 1);
        assert_eq!(squid_err("%999999999999999999999999tr").offset, 1);
        assert_eq!(squid_err("%-").offset, 0);
        // Display shows offset and message.
        assert!(squid_err("%zz").to_string().contains("at byte 0"));

        let e = hap_err("%ci %foo");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("%foo"), "{e}");
        assert_eq!(hap_err("%tsx").offset, 0);
        assert_eq!(hap_err("ab %{+Q").offset, 4);
        assert_eq!(hap_err("%{+Z}r").offset, 3);
        assert_eq!(hap_err("%{Q}r").offset, 2);
        assert_eq!(hap_err("%{+}r").offset, 2);
        assert_eq!(hap_err("%[src]").offset, 0);
        assert_eq!(hap_err("a % b").offset, 2);
        assert_eq!(hap_err("%").offset, 0);
        assert_eq!(hap_err("%{+Q}").offset, 0);
    }

    #[test]
    fn presets() {
        for name in LogFormat::preset_names() {
            assert!(LogFormat::preset(name).is_some(), "{name}");
        }
        assert!(LogFormat::preset("nope").is_none());
        assert!(LogFormat::preset("Squid").is_none());
        fn send_sync<T: Send + Sync + Clone + fmt::Debug>() {}
        send_sync::<LogFormat>();
        send_sync::<FormatError>();
    }

    /// Every code with every modifier on odd records: no panic, and the
    /// JSON stays parseable.
    #[test]
    fn odd_records_never_panic() {
        let mut odd = Vec::new();
        let mut r = full();
        r.request_time = UNIX_EPOCH - Duration::from_millis(1_500);
        r.accept_time = UNIX_EPOCH - Duration::from_secs(3);
        odd.push(r.clone());
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(i64::MAX as u64)) {
            r.request_time = t;
            r.accept_time = t;
            odd.push(r.clone());
        }
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(300_000_000_000)) {
            r.request_time = t;
            r.accept_time = t;
            odd.push(r.clone());
        }
        r.active = Duration::MAX;
        r.total = Duration::MAX;
        r.timers.response = Some(Duration::MAX);
        r.bytes_to_client = u64::MAX;
        r.bytes_from_client = u64::MAX;
        r.status = u16::MAX;
        r.client = "[::ffff:192.0.2.7]:1".parse().unwrap();
        r.local = "[fe80::1%2]:0".parse().unwrap();
        r.upstream = Some("[2001:db8::9]:65535".parse().unwrap());
        r.version = Version::HTTP_2;
        r.method = Method::from_bytes(b"WEIRD-METHOD").unwrap();
        r.uri = Uri::from_static("example.com:443");
        r.termination = [0, 0xff];
        r.user = Some(Arc::from("\u{0}\u{1b}[31m\"\\%]é"));
        r.listener = Arc::from("");
        r.content_type = Some(HeaderValue::from_bytes(b"\xff\xfe\t").unwrap());
        r.relayed = Some(Arc::new(crate::listen::Relayed {
            peer: "[::ffff:1.2.3.4]:0".parse().unwrap(),
            header: crate::listen::proxy_protocol::Header {
                version: 2,
                local: false,
                addrs: None,
                tlvs: vec![(2, b"\x00\xff\"\n]%".to_vec()), (2, vec![])],
            },
        }));
        odd.push(r);
        odd.push(bare());

        let mut formats = Vec::new();
        for code in SQUID_CODES {
            for m in ["", "\"", "[", "#", "'", "-", "0", "-07", "\"-010.3", "[3.1", "{%s %Z}"] {
                let arg_ok = matches!(*code, "tl" | "tg");
                let f = match (m.starts_with('{'), *code == "pt") {
                    (true, true) => continue,
                    (false, true) => format!("%{m}{{2}}{code}|"),
                    (true, false) if !arg_ok => continue,
                    _ => format!("%{m}{code}|"),
                };
                formats.push(LogFormat::parse(&f, Style::Squid).unwrap());
            }
        }
        formats.push(LogFormat::parse("%tl %tg", Style::Squid).unwrap());
        let hap_codes = [
            "ci", "cp", "pi", "pp", "fi", "fp", "si", "sp", "bi", "bp", "ft", "b", "s", "t", "tr", "Ts", "ms", "TR",
            "Tw", "Tc", "Tr", "Ta", "Tt", "ST", "B", "U", "HM", "HU", "HP", "HQ", "HV", "r", "ts", "tsc", "u", "pid",
        ];
        for code in hap_codes {
            for m in ["", "{+Q}", "{+E}", "{+X}", "{+Q,+E,+X}"] {
                formats.push(LogFormat::parse(&format!("%{m}{code}|"), Style::Haproxy).unwrap());
            }
        }
        for name in LogFormat::preset_names() {
            formats.push(LogFormat::preset(name).unwrap());
        }

        let mut out = Vec::new();
        for rec in &odd {
            for f in &formats {
                out.clear();
                f.render(rec, &mut out);
                assert!(!out.is_empty());
            }
            let v = json(rec);
            assert!(v.is_object());
        }

        // A few exact values on the odd records.
        let before = &odd[0];
        assert_eq!(sq("%ts %tu %03tu", before), "-2 500 500");
        assert_eq!(json(before)["epoch"].as_f64(), Some(-1.5));
        let line = render(&LogFormat::preset("json").unwrap(), before);
        assert!(line.contains("\"epoch\":-1.500,"), "{line}");
        assert_eq!(sq("%tg", before), "31/Dec/1969:23:59:58 +0000");
        let last = &odd[odd.len() - 2];
        assert_eq!(sq("%tl|%tg", last), "-|-");
        assert_eq!(hap("%t|%tr", last), "-|-");
        assert_eq!(json(last)["time"], serde_json::Value::Null);
        assert_eq!(sq("%>a %la %<a", last), "192.0.2.7 fe80::1 2001:db8::9");
        assert_eq!(hap("%s %HV %{+X}ci", last), "[2001:db8::9]:65535 HTTP/2.0 C0000207");
        assert_eq!(sq("%rv %st", last), format!("2.0 {}", u64::MAX));
        assert_eq!(sq("%ft", last), "-");
        assert_eq!(hap("%ft %{+Q}ft", last), "- \"\"");
        assert_eq!(sq("%[un", last), "%00%1B%5B31m%22\\%25%5D%C3%A9");
        assert_eq!(hap("%Ta %Tt %Tr", last), format!("{0} {0} {0}", i64::MAX));
    }
}
