//! Syslog outputs of the access log: the RFC 5424 and RFC 3164 headers, and
//! the sender that puts one record in one datagram, over UDP or a Unix
//! datagram socket (`/dev/log`).
//!
//! A record never spans two datagrams: one longer than `syslog_max_length`
//! is cut at a character boundary and ends with [`MARKER`]. A Unix socket that
//! goes away (the syslog daemon restarted) is connected again every
//! [`RETRY`]; records sent meanwhile are dropped and counted by the caller.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Local, Offset, TimeZone, Timelike, Utc};

/// Ends a record cut to fit the datagram size.
pub const MARKER: &[u8] = b"[truncated]";
/// How often a lost Unix socket is connected again.
pub const RETRY: Duration = Duration::from_secs(2);
/// A send that waits longer than this (the receiver's queue is full) drops the record.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The socket of a syslog output when `syslog_address` is not set.
pub const DEFAULT_SOCKET: &str = "/dev/log";
/// Default largest datagram over UDP: what RFC 5424 and 5426 ask every receiver to accept.
pub const DEFAULT_MAX_UDP: usize = 2048;
/// Default largest datagram over a Unix socket: local syslog daemons take at
/// least this much, and there is no network path to fragment it.
pub const DEFAULT_MAX_UNIX: usize = 8192;
/// Smallest `syslog_max_length`: RFC 5424 receivers accept at least this.
pub const MIN_MAX_LENGTH: usize = 480;
/// Largest `syslog_max_length`: the largest UDP payload over IPv4.
pub const MAX_MAX_LENGTH: usize = 65_507;
/// Longest `syslog_tag` (RFC 3164's TAG; RFC 5424's APP-NAME allows 48).
pub const MAX_TAG: usize = 32;
/// Longest `syslog_hostname` (RFC 5424's HOSTNAME).
pub const MAX_HOSTNAME: usize = 255;

/// The header a syslog output writes before each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyslogFormat {
    /// `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`.
    Rfc5424,
    /// `<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG` (BSD syslog).
    Rfc3164,
}

/// Where a syslog output sends its datagrams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyslogAddress {
    /// A host name or address (IPv6 without brackets) and a port, resolved at start.
    Udp { host: String, port: u16 },
    /// A Unix datagram socket.
    Unix(PathBuf),
}

impl fmt::Display for SyslogAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyslogAddress::Udp { host, port } if host.contains(':') => write!(f, "udp://[{host}]:{port}"),
            SyslogAddress::Udp { host, port } => write!(f, "udp://{host}:{port}"),
            SyslogAddress::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// One `output = "syslog"` access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    pub address: SyslogAddress,
    pub format: SyslogFormat,
    /// 0 (`kern`) to 23 (`local7`).
    pub facility: u8,
    /// 0 (`emerg`) to 7 (`debug`).
    pub severity: u8,
    /// APP-NAME (RFC 5424) or TAG (RFC 3164).
    pub tag: String,
    pub hostname: String,
    /// Largest datagram, header included.
    pub max_length: usize,
}

/// Facility names and codes (RFC 5424, section 6.2.1; the names of syslog.h
/// where it has them).
pub const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("clock", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// Severity names and codes (RFC 5424, section 6.2.1), with `error` and
/// `warn` as other spellings of `err` and `warning`.
pub const SEVERITIES: &[(&str, u8)] = &[
    ("emerg", 0),
    ("alert", 1),
    ("crit", 2),
    ("err", 3),
    ("error", 3),
    ("warning", 4),
    ("warn", 4),
    ("notice", 5),
    ("info", 6),
    ("debug", 7),
];

/// The code of a name in [`FACILITIES`] or [`SEVERITIES`].
pub fn code_of(table: &[(&str, u8)], name: &str) -> Option<u8> {
    table.iter().find(|(n, _)| *n == name).map(|&(_, c)| c)
}

/// Reads `syslog_address`: `udp://HOST:PORT` (IPv6 in brackets, port 514
/// when left out), `unix:///PATH` or an absolute path.
pub fn parse_address(s: &str) -> Result<SyslogAddress, String> {
    if let Some(rest) = s.strip_prefix("udp://") {
        let (host, port) = split_host_port(rest)?;
        return Ok(SyslogAddress::Udp {
            host: host.to_string(),
            port,
        });
    }
    let path = s.strip_prefix("unix://").unwrap_or(s);
    if path.starts_with('/') {
        return Ok(SyslogAddress::Unix(PathBuf::from(path)));
    }
    if s.starts_with("unix://") {
        return Err(format!(
            "`{s}`: the socket path must be absolute, as in \"unix:///dev/log\""
        ));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "the `{scheme}` transport is not supported; use \"udp://HOST:PORT\" or \"unix:///PATH\""
        ));
    }
    Err(format!(
        "`{s}` is not \"udp://HOST:PORT\", \"unix:///PATH\" or an absolute socket path"
    ))
}

fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("`udp://{s}`: `[` without its `]`"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`udp://{s}`: `{host}` is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            p if p.starts_with(':') => (host, Some(&p[1..])),
            _ => return Err(format!("`udp://{s}`: unexpected `{after}` after the address")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "`udp://{s}`: write an IPv6 address in brackets, as in udp://[::1]:514"
                ));
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.chars().any(char::is_whitespace) {
        return Err(format!("`udp://{s}` has no valid host"));
    }
    let port = match port {
        None => 514,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("`udp://{s}`: `{p}` is not a port (1-65535)")),
        },
    };
    Ok((host, port))
}

/// `syslog_tag`: 1 to 32 letters, digits, `.`, `_`, `-` or `/`, valid in both headers.
pub fn check_tag(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_TAG {
        return Err(format!("must be 1 to {MAX_TAG} characters long, not {}", s.len()));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        Some(c) => Err(format!("may hold letters, digits, `.`, `_`, `-` and `/`, not {c:?}")),
        None => Ok(()),
    }
}

/// `syslog_hostname`: 1 to 255 printable ASCII characters, no spaces.
pub fn check_hostname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_HOSTNAME {
        return Err(format!("must be 1 to {MAX_HOSTNAME} characters long, not {}", s.len()));
    }
    match s.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => Err(format!("may hold printable ASCII characters without spaces, not {c:?}")),
        None => Ok(()),
    }
}

/// The host's name made fit for a syslog header: characters a header cannot
/// hold become `_`, and it is cut to 255 bytes.
pub fn header_hostname(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(MAX_HOSTNAME)
        .collect();
    if s.is_empty() {
        s.push_str("localhost");
    }
    s
}

/// The default `syslog_max_length` for an address.
pub fn default_max_length(a: &SyslogAddress) -> usize {
    match a {
        SyslogAddress::Udp { .. } => DEFAULT_MAX_UDP,
        SyslogAddress::Unix(_) => DEFAULT_MAX_UNIX,
    }
}

// ---------------------------------------------------------------------------
// Headers

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Builds the header of each datagram. Everything but the time is fixed at
/// start; the date part is rendered once per second.
pub struct Header {
    format: SyslogFormat,
    /// `<PRI>1 ` or `<PRI>`.
    before: Vec<u8>,
    /// ` HOST APP PROCID - - ` or ` HOST TAG[PID]: `.
    after: Vec<u8>,
    /// The second `stamp` shows.
    second: Option<i64>,
    /// RFC 5424: `YYYY-MM-DDThh:mm:ss` and `offset` (`Z` or `+hh:mm`);
    /// RFC 3164: `Mmm dd hh:mm:ss`. Empty when the time cannot be shown.
    stamp: Vec<u8>,
    offset: Vec<u8>,
}

impl Header {
    pub fn new(format: SyslogFormat, facility: u8, severity: u8, hostname: &str, tag: &str, pid: u32) -> Header {
        let pri = u16::from(facility.min(23)) * 8 + u16::from(severity.min(7));
        let (before, after) = match format {
            SyslogFormat::Rfc5424 => (
                format!("<{pri}>1 "),
                format!(" {} {} {pid} - - ", nil_if_empty(hostname), nil_if_empty(tag)),
            ),
            SyslogFormat::Rfc3164 => (format!("<{pri}>"), format!(" {hostname} {tag}[{pid}]: ")),
        };
        Header {
            format,
            before: before.into_bytes(),
            after: after.into_bytes(),
            second: None,
            stamp: Vec::new(),
            offset: Vec::new(),
        }
    }

    /// Appends the header of a message sent at `t`, in local time.
    pub fn write(&mut self, t: SystemTime, out: &mut Vec<u8>) {
        let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(_) => (i64::MIN, 0),
        };
        if self.second != Some(secs) {
            let offset = DateTime::<Utc>::from_timestamp(secs, 0)
                .map(|utc| Local.offset_from_utc_datetime(&utc.naive_utc()).fix().local_minus_utc())
                .unwrap_or(0);
            self.set_second(secs, offset);
        }
        self.write_at(nanos, out);
    }

    /// Renders the date part for second `secs` (since the epoch) at `offset`
    /// seconds east of UTC.
    fn set_second(&mut self, secs: i64, offset: i32) {
        use std::io::Write;
        self.second = Some(secs);
        self.stamp.clear();
        self.offset.clear();
        let Some(local) = secs
            .checked_add(i64::from(offset))
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .filter(|d| (0..=9999).contains(&d.year()))
        else {
            return;
        };
        let (h, m, s) = (local.hour(), local.minute(), local.second());
        match self.format {
            SyslogFormat::Rfc5424 => {
                let _ = write!(
                    self.stamp,
                    "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}",
                    local.year(),
                    local.month(),
                    local.day()
                );
                if offset == 0 {
                    self.offset.push(b'Z');
                } else {
                    let sign = if offset < 0 { '-' } else { '+' };
                    let minutes = offset.unsigned_abs() / 60;
                    let _ = write!(self.offset, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
                }
            }
            SyslogFormat::Rfc3164 => {
                let month = MONTHS[local.month0() as usize % 12];
                let _ = write!(self.stamp, "{month} {:>2} {h:02}:{m:02}:{s:02}", local.day());
            }
        }
    }

    /// Appends the header with the date of the last [`Header::set_second`]
    /// and `nanos` past that second.
    fn write_at(&self, nanos: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.before);
        match self.format {
            SyslogFormat::Rfc5424 if self.stamp.is_empty() => out.push(b'-'),
            SyslogFormat::Rfc5424 => {
                out.extend_from_slice(&self.stamp);
                let micros = (nanos / 1000).min(999_999);
                out.push(b'.');
                let mut digits = [b'0'; 6];
                let mut n = micros;
                for d in digits.iter_mut().rev() {
                    *d = b'0' + (n % 10) as u8;
                    n /= 10;
                }
                out.extend_from_slice(&digits);
                out.extend_from_slice(&self.offset);
            }
            SyslogFormat::Rfc3164 if self.stamp.is_empty() => out.extend_from_slice(b"Jan  1 00:00:00"),
            SyslogFormat::Rfc3164 => out.extend_from_slice(&self.stamp),
        }
        out.extend_from_slice(&self.after);
    }
}

fn nil_if_empty(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Cuts the datagram in `buf` (a header of `header_len` bytes, then the
/// message) to `max` bytes when it is longer, ending it with [`MARKER`].
/// The cut never splits a UTF-8 sequence nor the header. Returns whether it cut.
pub fn fit(buf: &mut Vec<u8>, header_len: usize, max: usize) -> bool {
    if buf.len() <= max {
        return false;
    }
    let mut cut = max.saturating_sub(MARKER.len()).max(header_len).min(buf.len());
    while cut > header_len && buf[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    buf.truncate(cut);
    buf.extend_from_slice(MARKER);
    true
}

// ---------------------------------------------------------------------------
// Sending

enum Socket {
    Udp(UdpSocket),
    /// `None` while the socket is gone; connected again after `retry_at`.
    Unix {
        path: PathBuf,
        sock: Option<UnixDatagram>,
        retry_at: Instant,
    },
}

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Whole,
    Truncated,
    Dropped,
}

/// A syslog output's socket and header.
pub struct Sender {
    socket: Socket,
    header: Header,
    max_length: usize,
    address: String,
    buf: Vec<u8>,
    /// Set while sends fail, so a failure is logged once, not per record.
    failing: bool,
}

impl Sender {
    /// Connects the socket. At start a missing Unix socket or an unknown
    /// host is an error naming the address.
    pub fn connect(cfg: &SyslogConfig) -> io::Result<Sender> {
        let address = cfg.address.to_string();
        let named = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot reach the syslog access log at {address}: {e}"),
            )
        };
        let socket = match &cfg.address {
            SyslogAddress::Udp { host, port } => Socket::Udp(connect_udp(host, *port).map_err(named)?),
            SyslogAddress::Unix(path) => Socket::Unix {
                sock: Some(connect_unix(path).map_err(named)?),
                path: path.clone(),
                retry_at: Instant::now(),
            },
        };
        Ok(Sender {
            socket,
            header: Header::new(
                cfg.format,
                cfg.facility,
                cfg.severity,
                &cfg.hostname,
                &cfg.tag,
                std::process::id(),
            ),
            max_length: cfg.max_length,
            address,
            buf: Vec::with_capacity(cfg.max_length + 256),
            failing: false,
        })
    }

    /// Sends one record: the header, then what `render` appends, as one datagram.
    pub fn send(&mut self, render: impl FnOnce(&mut Vec<u8>)) -> Sent {
        self.buf.clear();
        self.header.write(SystemTime::now(), &mut self.buf);
        let header_len = self.buf.len();
        render(&mut self.buf);
        let truncated = fit(&mut self.buf, header_len, self.max_length);
        let result = match &mut self.socket {
            Socket::Udp(s) => match s.send(&self.buf) {
                // an earlier datagram met no listener; this one was not sent yet
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => s.send(&self.buf),
                r => r,
            },
            Socket::Unix { path, sock, retry_at } => {
                if sock.is_none() && Instant::now() >= *retry_at {
                    match connect_unix(path) {
                        Ok(s) => {
                            tracing::info!("syslog access log: connected to {} again", path.display());
                            *sock = Some(s);
                        }
                        Err(_) => *retry_at = Instant::now() + RETRY,
                    }
                }
                match sock {
                    None => return Sent::Dropped,
                    Some(s) => match s.send(&self.buf) {
                        Err(e) if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                            tracing::error!(
                                "syslog access log: {} is gone ({e}); records are dropped (and counted) until it is back, trying again every {} s",
                                path.display(),
                                RETRY.as_secs()
                            );
                            *sock = None;
                            *retry_at = Instant::now() + RETRY;
                            return Sent::Dropped;
                        }
                        r => r,
                    },
                }
            }
        };
        match result {
            Ok(_) => {
                self.failing = false;
                if truncated { Sent::Truncated } else { Sent::Whole }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(
                        "syslog access log: sending to {} failed: {e}; records are dropped (and counted)",
                        self.address
                    );
                }
                Sent::Dropped
            }
        }
    }
}

fn connect_unix(path: &Path) -> io::Result<UnixDatagram> {
    let s = UnixDatagram::unbound()?;
    s.connect(path)?;
    s.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok(s)
}

fn connect_udp(host: &str, port: u16) -> io::Result<UdpSocket> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address"));
    for addr in (host, port).to_socket_addrs()? {
        let local: IpAddr = if addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let attempt = UdpSocket::bind(SocketAddr::new(local, 0)).and_then(|s| {
            s.connect(addr)?;
            s.set_write_timeout(Some(SEND_TIMEOUT))?;
            Ok(s)
        });
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(format: SyslogFormat, secs: i64, nanos: u32, offset: i32) -> String {
        let mut h = Header::new(format, 16, 6, "gate.example", "sekisho", 4242);
        h.set_second(secs, offset);
        let mut out = Vec::new();
        h.write_at(nanos, &mut out);
        String::from_utf8(out).unwrap()
    }

    // 2026-11-21T08:25:27Z
    const T: i64 = 1_795_249_527;

    #[test]
    fn rfc5424_header() {
        assert_eq!(
            header(SyslogFormat::Rfc5424, T, 123_456_789, 0),
            "<134>1 2026-11-21T08:25:27.123456Z gate.example sekisho 4242 - - "
        );
        assert_eq!(
            header(SyslogFormat::Rfc5424, T, 5_000, 9 * 3600),
            "<134>1 2026-11-21T17:25:27.000005+09:00 gate.example sekisho 4242 - - "
        );
        assert_eq!(
            header(SyslogFormat::Rfc5424, T, 0, -(3 * 3600 + 30 * 60)),
            "<134>1 2026-11-21T04:55:27.000000-03:30 gate.example sekisho 4242 - - "
        );
    }

    #[test]
    fn rfc3164_header() {
        assert_eq!(
            header(SyslogFormat::Rfc3164, T, 999_999_999, 0),
            "<134>Nov 21 08:25:27 gate.example sekisho[4242]: "
        );
        // one-digit days are padded with a space
        assert_eq!(
            header(SyslogFormat::Rfc3164, T - 20 * 86400, 0, 9 * 3600),
            "<134>Nov  1 17:25:27 gate.example sekisho[4242]: "
        );
    }

    #[test]
    fn priority_and_nil_values() {
        let mut h = Header::new(SyslogFormat::Rfc5424, 0, 0, "", "", 1);
        h.set_second(0, 0);
        let mut out = Vec::new();
        h.write_at(0, &mut out);
        assert_eq!(out, b"<0>1 1970-01-01T00:00:00.000000Z - - 1 - - ");
        let h = Header::new(SyslogFormat::Rfc3164, 23, 7, "h", "t", 1);
        assert!(h.before.starts_with(b"<191>"));
    }

    #[test]
    fn times_out_of_range_never_panic() {
        for secs in [i64::MIN, i64::MAX, -1, 300_000_000_000] {
            for format in [SyslogFormat::Rfc5424, SyslogFormat::Rfc3164] {
                let s = header(format, secs, 1, 50_400);
                assert!(s.starts_with("<134>"), "{s}");
            }
        }
        assert!(header(SyslogFormat::Rfc5424, i64::MAX, 0, 0).starts_with("<134>1 - gate.example"));
        let mut h = Header::new(SyslogFormat::Rfc5424, 16, 6, "h", "t", 1);
        let mut out = Vec::new();
        h.write(UNIX_EPOCH - Duration::from_secs(10), &mut out);
        h.write(SystemTime::now(), &mut out);
    }

    #[test]
    fn long_records_are_cut_with_a_marker() {
        let mut buf = b"<134>1 h ".to_vec();
        buf.extend_from_slice(&[b'x'; 100]);
        assert!(!fit(&mut buf.clone(), 9, 109));
        assert!(fit(&mut buf, 9, 50));
        assert_eq!(buf.len(), 50);
        assert!(buf.ends_with(MARKER));
        // never inside a UTF-8 sequence
        let mut buf = b"<1>".to_vec();
        buf.extend_from_slice("ééééééééééééééééééé".as_bytes());
        fit(&mut buf, 3, 3 + MARKER.len() + 5);
        let text = std::str::from_utf8(&buf).expect("valid UTF-8 after the cut");
        assert_eq!(text, "<1>éé[truncated]");
        // the header is never cut, even when it is all there is room for
        let mut buf = b"<1>header message".to_vec();
        fit(&mut buf, 9, 10);
        assert_eq!(buf, b"<1>header[truncated]");
    }

    #[test]
    fn addresses() {
        let udp = |h: &str, port| SyslogAddress::Udp { host: h.into(), port };
        assert_eq!(parse_address("udp://127.0.0.1:5514"), Ok(udp("127.0.0.1", 5514)));
        assert_eq!(parse_address("udp://logs.example"), Ok(udp("logs.example", 514)));
        assert_eq!(parse_address("udp://[::1]:6514"), Ok(udp("::1", 6514)));
        assert_eq!(parse_address("udp://[::1]"), Ok(udp("::1", 514)));
        assert_eq!(
            parse_address("unix:///dev/log"),
            Ok(SyslogAddress::Unix("/dev/log".into()))
        );
        assert_eq!(
            parse_address("/run/systemd/journal/dev-log"),
            Ok(SyslogAddress::Unix("/run/systemd/journal/dev-log".into()))
        );
        for bad in [
            "udp://",
            "udp://:514",
            "udp://host:0",
            "udp://host:70000",
            "udp://host:x",
            "udp://::1:514",
            "udp://[::1",
            "udp://[nope]:1",
            "udp://[::1]x",
            "unix://dev/log",
            "tcp://host:514",
            "dev/log",
            "",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        assert_eq!(udp("::1", 514).to_string(), "udp://[::1]:514");
        assert_eq!(SyslogAddress::Unix("/dev/log".into()).to_string(), "unix:///dev/log");
    }

    #[test]
    fn names_tags_and_hostnames() {
        assert_eq!(code_of(FACILITIES, "local0"), Some(16));
        assert_eq!(code_of(FACILITIES, "local7"), Some(23));
        assert_eq!(code_of(FACILITIES, "daemon"), Some(3));
        assert_eq!(code_of(FACILITIES, "local8"), None);
        assert_eq!(code_of(SEVERITIES, "info"), Some(6));
        assert_eq!(code_of(SEVERITIES, "warn"), code_of(SEVERITIES, "warning"));
        assert_eq!(code_of(SEVERITIES, "loud"), None);
        assert!(FACILITIES.iter().all(|&(_, c)| c < 24));
        assert!(check_tag("sekisho").is_ok());
        assert!(check_tag("proxy/access_log-1.2").is_ok());
        assert!(check_tag("").is_err());
        assert!(check_tag("with space").is_err());
        assert!(check_tag("tag:").is_err());
        assert!(check_tag(&"x".repeat(33)).is_err());
        assert!(check_hostname("gate.example").is_ok());
        assert!(check_hostname("two words").is_err());
        assert!(check_hostname("näme").is_err());
        assert_eq!(header_hostname("a b\u{e9}"), "a_b_");
        assert_eq!(header_hostname(""), "localhost");
    }

    #[test]
    fn datagrams_over_udp_and_unix_sockets() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let cfg = SyslogConfig {
            address: SyslogAddress::Udp {
                host: "127.0.0.1".into(),
                port: rx.local_addr().unwrap().port(),
            },
            format: SyslogFormat::Rfc5424,
            facility: 16,
            severity: 6,
            tag: "sekisho".into(),
            hostname: "h".into(),
            max_length: 480,
        };
        let mut s = Sender::connect(&cfg).unwrap();
        assert_eq!(s.send(|b| b.extend_from_slice(b"hello")), Sent::Whole);
        assert_eq!(s.send(|b| b.extend_from_slice(&[b'y'; 1000])), Sent::Truncated);
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("<134>1 "), "{text}");
        assert!(
            text.ends_with(&format!(" h sekisho {} - - hello", std::process::id())),
            "{text}"
        );
        assert_eq!(rx.recv(&mut buf).unwrap(), 480);

        let dir = std::env::temp_dir().join(format!("sekisho-syslog-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let cfg = SyslogConfig {
            address: SyslogAddress::Unix(path.clone()),
            format: SyslogFormat::Rfc3164,
            ..cfg
        };
        let err = Sender::connect(&cfg).err().expect("no socket yet");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut s = Sender::connect(&cfg).unwrap();
        assert_eq!(s.send(|b| b.extend_from_slice(b"one")), Sent::Whole);
        let n = rx.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().ends_with("]: one"));
        // the receiver goes away: dropped until it is back and RETRY has passed
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.send(|b| b.extend_from_slice(b"two")), Sent::Dropped);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.send(|b| b.extend_from_slice(b"three")), Sent::Dropped);
        std::thread::sleep(RETRY + Duration::from_millis(100));
        assert_eq!(s.send(|b| b.extend_from_slice(b"four")), Sent::Whole);
        let n = rx.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n]).unwrap().ends_with("]: four"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
