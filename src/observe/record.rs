//! The access-log record: one per transaction (an HTTP exchange or a tunnel).
//!
//! The front fills a record as the transaction progresses; the record is
//! rendered once, when the transaction ends, by every configured log output.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderValue, Method, Uri, Version};

/// Squid-style result code (`%Ss`): how the transaction was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultCode {
    /// Forwarded to the origin and answered.
    TcpMiss,
    /// Forwarded, but the client went away before the reply was complete.
    TcpMissAborted,
    /// Refused by the access rules.
    TcpDenied,
    /// A CONNECT tunnel.
    TcpTunnel,
    /// The proxy could not reach or hear from the origin; the status is an error page.
    TcpMissError,
    /// The request never reached the point of choosing an origin (bad request, shutdown).
    None,
}

impl ResultCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultCode::TcpMiss => "TCP_MISS",
            ResultCode::TcpMissAborted => "TCP_MISS_ABORTED",
            ResultCode::TcpDenied => "TCP_DENIED",
            ResultCode::TcpTunnel => "TCP_TUNNEL",
            ResultCode::TcpMissError => "TCP_MISS",
            ResultCode::None => "NONE",
        }
    }
}

/// Squid-style hierarchy code (`%Sh`): where the request was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// Straight to the origin.
    Direct,
    /// Through the first parent that is up (`parent_select = "first-up"`).
    FirstUpParent,
    /// Through a parent chosen in turn.
    RoundRobinParent,
    /// Through the parent a hash of the destination host chose.
    Carp,
    /// Nowhere (denied, error before choosing).
    None,
}

impl Hierarchy {
    pub fn as_str(self) -> &'static str {
        match self {
            Hierarchy::Direct => "HIER_DIRECT",
            Hierarchy::FirstUpParent => "FIRSTUP_PARENT",
            Hierarchy::RoundRobinParent => "ROUNDROBIN_PARENT",
            Hierarchy::Carp => "CARP",
            Hierarchy::None => "HIER_NONE",
        }
    }
}

/// Timers in the HAProxy sense, each `None` when the phase never happened
/// (rendered as `-1` by the HAProxy codes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timers {
    /// `%TR`: from the first byte of the request to its complete header block.
    pub request: Option<Duration>,
    /// `%Tw`: time spent waiting in queues (no queues in the forward proxy: zero).
    pub queue: Option<Duration>,
    /// `%Tc`: time to establish the upstream TCP connection (zero when a pooled one was reused).
    pub connect: Option<Duration>,
    /// `%Tr`: from sending the request upstream to receiving the response header block.
    pub response: Option<Duration>,
}

/// Everything a log line can show about one transaction.
#[derive(Clone, Debug)]
pub struct Record {
    /// Wall-clock time the client connection was accepted (`%t`).
    pub accept_time: SystemTime,
    /// Wall-clock time the request started (`%tr` HAProxy, `%ts`/`%tu`/`%tl` Squid).
    pub request_time: SystemTime,
    /// Time from the request's start to the end of the transaction (`%Ta`, Squid `%tr`).
    pub active: Duration,
    /// Time from accept to the end of the transaction (`%Tt`).
    pub total: Duration,
    pub timers: Timers,
    /// Address and port of the client (`%>a`/`%>p`, `%ci`/`%cp`).
    pub client: SocketAddr,
    /// Address and port the client connected to (`%la`/`%lp`, `%fi`/`%fp`).
    pub local: SocketAddr,
    /// Name of the listener (`%ft`).
    pub listener: Arc<str>,
    /// HTTP status sent to the client (`%>Hs`, `%ST`); 0 when none was sent.
    pub status: u16,
    pub result: ResultCode,
    pub hierarchy: Hierarchy,
    /// Bytes sent to the client, headers included (`%<st`, `%B`).
    pub bytes_to_client: u64,
    /// Bytes received from the client, headers included (`%>st`, `%U`).
    pub bytes_from_client: u64,
    pub method: Method,
    /// The request target as the client sent it (`%ru`, `%HU`).
    pub uri: Uri,
    pub version: Version,
    /// The authenticated user, when there is one (`%un`).
    pub user: Option<Arc<str>>,
    /// The upstream address actually connected to (`%<a`/`%<p`, `%si`/`%sp`).
    pub upstream: Option<SocketAddr>,
    /// The local (source) address of the upstream connection (`%<la`/`%<lp`, `%bi`/`%bp`).
    pub upstream_local: Option<SocketAddr>,
    /// The parent proxy the request went through (`%<A`; the upstream address when direct).
    pub parent: Option<Arc<str>>,
    /// Load balancing: the pool (`%b`) and server (`%s`) names, and how many
    /// times the request was tried again on another server (`%rc`).
    pub backend: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub retries: u32,
    /// Connection counts when the record was written: process, listener,
    /// pool, server (`%ac %fc %bc %sc`), then the server and pool queues (`%sq %bq`).
    pub counts: Option<[u32; 6]>,
    /// Captured request and response headers (`%hr`, `%hs`), in configured order.
    pub captures_request: Vec<String>,
    pub captures_response: Vec<String>,
    /// Captured cookie `NAME=value` from the request and the response (`%CC`, `%CS`).
    pub cookie_request: Option<String>,
    pub cookie_response: Option<String>,
    /// The persistence cookie's state on the request and the response (the
    /// last two characters of `%tsc`; `--` without cookie persistence).
    pub cookie_state: [u8; 2],
    /// What the TLS handshake settled (`%sslv`, `%sslc`), on `https` listeners.
    pub tls: Option<Arc<crate::listen::tls::Negotiated>>,
    /// The response's Content-Type (`%mt`).
    pub content_type: Option<HeaderValue>,
    /// HAProxy termination state (`%ts`, two characters: who ended it, in which phase).
    pub termination: [u8; 2],
    /// The PROXY header the connection came with: the balancer's address
    /// (`%>pa`/`%>pp`, `%pi`/`%pp`) and the header's TLVs (`%{TYPE}pt`).
    pub relayed: Option<Arc<crate::listen::Relayed>>,
}

/// The wall-clock time at the monotonic instant `now`, without a second clock
/// read: each thread keeps one reading of both clocks and takes it again once
/// a second (or when `now` is older), so a step of the system clock shows
/// within a second.
pub fn wall_time(now: Instant) -> SystemTime {
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|a| {
        if let Some((at, wall)) = a.get()
            && let Some(d) = now.checked_duration_since(at)
            && d < Duration::from_secs(1)
        {
            return wall + d;
        }
        let wall = SystemTime::now();
        a.set(Some((now, wall)));
        wall
    })
}

impl Record {
    /// A record for a transaction that starts now on a connection accepted at `accept_time`.
    pub fn new(accept_time: SystemTime, client: SocketAddr, local: SocketAddr, listener: Arc<str>) -> Record {
        Record::starting(accept_time, SystemTime::now(), client, local, listener)
    }

    /// A record for a transaction that starts at `request_time`.
    pub fn starting(
        accept_time: SystemTime,
        request_time: SystemTime,
        client: SocketAddr,
        local: SocketAddr,
        listener: Arc<str>,
    ) -> Record {
        Record {
            accept_time,
            request_time,
            active: Duration::ZERO,
            total: Duration::ZERO,
            timers: Timers::default(),
            client,
            local,
            listener,
            status: 0,
            result: ResultCode::None,
            hierarchy: Hierarchy::None,
            bytes_to_client: 0,
            bytes_from_client: 0,
            method: Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            user: None,
            upstream: None,
            upstream_local: None,
            parent: None,
            backend: None,
            server: None,
            retries: 0,
            counts: None,
            captures_request: Vec::new(),
            captures_response: Vec::new(),
            cookie_request: None,
            cookie_response: None,
            cookie_state: *b"--",
            tls: None,
            content_type: None,
            termination: *b"--",
            relayed: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_follows_the_monotonic_clock_for_a_second_at_most() {
        let now = Instant::now();
        let w = wall_time(now);
        let sys = SystemTime::now();
        let apart = sys.duration_since(w).unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_millis(100), "{apart:?} from the system clock");
        // within the second of the reading, differences are the monotonic clock's
        let w250 = wall_time(now + Duration::from_millis(250));
        assert_eq!(w250.duration_since(w).ok(), Some(Duration::from_millis(250)));
        // a second or more later, the system clock is read again, not extrapolated
        let w5 = wall_time(now + Duration::from_secs(5));
        let apart = w5.duration_since(sys).unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_secs(1), "{apart:?} from the system clock");
        // an instant before the reading is not extrapolated backwards either
        let before = wall_time(now);
        let apart = before.duration_since(sys).unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_millis(100), "{apart:?} from the system clock");
    }
}
