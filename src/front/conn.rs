//! One client connection: the HTTP/1.1 server loop around the forward proxy,
//! with the client header and idle keep-alive deadlines and the graceful stop.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{Config, Mode, Timeouts};
use crate::front::forward;
use crate::listen::Session;
use crate::observe::record::Record;
use crate::runtime::State;

/// Where a connection is between requests.
const IDLE: u8 = 0;
/// The first bytes of a request have arrived; its header block is not complete.
const HEAD: u8 = 1;
/// A request is being served.
const BUSY: u8 = 2;

/// The connection's phase, kept in atomics so the IO wrapper, the request
/// handler and the deadline loop can all see it.
pub struct Activity {
    base: Instant,
    phase: AtomicU8,
    /// Microseconds after `base` when the phase began.
    since: AtomicU64,
    in_flight: AtomicU32,
    /// Responses completed on the connection.
    served: AtomicU32,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            served: AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.micros(Instant::now())
    }

    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64
    }

    fn on_bytes(&self) {
        if self.phase.load(Relaxed) == IDLE {
            self.since.store(self.now(), Relaxed);
            self.phase.store(HEAD, Relaxed);
        }
    }

    /// A request's header block is complete at `now`; returns how long it took to arrive.
    pub fn begin(&self, now: Instant) -> Duration {
        self.in_flight.fetch_add(1, Relaxed);
        let head = if self.phase.load(Relaxed) == HEAD {
            Duration::from_micros(self.micros(now).saturating_sub(self.since.load(Relaxed)))
        } else {
            Duration::ZERO
        };
        self.phase.store(BUSY, Relaxed);
        head
    }

    /// A response is complete (or abandoned) at `now`.
    pub fn end(&self, now: Instant) {
        self.served.fetch_add(1, Relaxed);
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.since.store(self.micros(now), Relaxed);
            self.phase.store(IDLE, Relaxed);
        }
    }

    /// When to look at the deadlines again: never later than the real deadline
    /// of this phase or of any phase the connection can move to before then,
    /// so the request path itself never has to touch a timer.
    fn next_check(&self, t: &Timeouts) -> Instant {
        let step = t.client_idle.min(t.client_header);
        let now = Instant::now();
        match self.deadline(t) {
            Some(d) => d.min(now + step),
            None => now + step,
        }
    }

    /// When the current phase runs out, if it can.
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        let since = self.base + Duration::from_micros(self.since.load(Relaxed));
        match self.phase.load(Relaxed) {
            IDLE => Some(since + t.client_idle),
            HEAD => Some(since + t.client_header),
            _ => None,
        }
    }
}

/// What every request on a connection shares.
pub struct Conn {
    pub state: Arc<State>,
    pub cfg: Arc<Config>,
    pub session: Session,
    pub activity: Activity,
    /// What the TLS handshake settled, on `https` listeners.
    pub tls: Option<Arc<crate::listen::tls::Negotiated>>,
    /// The client's address as text, made once for the headers that carry it.
    pub client_ip: http::HeaderValue,
}

/// Bytes already read from a socket, served before the socket's own.
pub struct Prefixed {
    prefix: Vec<u8>,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    // passed on, so TLS records queued together leave in one write (one
    // segment for a handshake flight, not one per record)
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client's byte stream: the socket itself, or TLS over it.
pub type ClientStream = crate::relay::stream::Stream<tokio_rustls::server::TlsStream<Prefixed>>;

/// An address as a header value (`192.0.2.1`, `2001:db8::1`).
pub fn ip_value(ip: std::net::IpAddr) -> http::HeaderValue {
    http::HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

impl Conn {
    pub fn listener_name(&self) -> Arc<str> {
        self.cfg.listeners[self.session.listener].name.clone()
    }

    /// A record for a transaction that starts at `now`.
    pub fn record(&self, now: Instant) -> Record {
        let s = &self.session;
        let mut r = Record::starting(
            s.accept_time,
            crate::observe::record::wall_time(now),
            s.client,
            s.local,
            self.listener_name(),
        );
        r.relayed = s.relayed.clone();
        r
    }
}

/// The client socket as hyper sees it: notes the first bytes of each request.
pub struct ClientIo {
    pub stream: ClientStream,
    conn: Arc<Conn>,
    /// Bytes read before hyper took over (after a PROXY header), served first.
    prefix: Vec<u8>,
}

impl ClientIo {
    /// Bytes read from the client that hyper has not consumed yet.
    pub fn take_prefix(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.prefix)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            self.conn.activity.on_bytes();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.activity.on_bytes();
        }
        r
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The IO type behind an upgraded (CONNECT) request, for taking the socket back.
pub type UpgradeIo = TokioIo<ClientIo>;

/// Logs an error that ended a connection outside any request (`NONE error:...`).
fn log_connection_error(
    state: &State,
    cfg: &Config,
    mut rec: Record,
    session: &Session,
    status: u16,
    uri: &'static str,
    termination: &[u8; 2],
) {
    rec.status = status;
    rec.method = http::Method::from_bytes(b"NONE").unwrap_or(http::Method::GET);
    rec.uri = http::Uri::from_static(uri);
    rec.termination = *termination;
    rec.active = Duration::ZERO;
    rec.total = session.accepted.elapsed();
    crate::observe::counters::Counters::inc(&state.counters.errors);
    state.finish(cfg, &rec);
}

/// A connection closed before its first request because of its PROXY header.
fn refuse_connection(
    state: &State,
    cfg: &Config,
    session: &Session,
    uri: &'static str,
    termination: &[u8; 2],
    why: &str,
) {
    let name = cfg.listeners[session.listener].name.clone();
    tracing::debug!(client = %session.client, listener = %name, "{why}; connection closed");
    let rec = Record::new(session.accept_time, session.client, session.local, name);
    log_connection_error(state, cfg, rec, session, 0, uri, termination);
}

/// Reads the PROXY header a listener expects; `None` when the connection is refused.
async fn proxy_handshake(
    state: &State,
    cfg: &Config,
    session: &mut Session,
    stream: &mut TcpStream,
) -> Option<Vec<u8>> {
    use crate::listen::proxy_protocol::{self, ReadError};
    let pp = cfg.listeners[session.listener].proxy_protocol.as_ref()?;
    let peer = session.client;
    let facts = crate::policy::acl::Facts {
        src: peer.ip(),
        method: &http::Method::GET,
        host: "",
        port: 0,
        dst: None,
        user: None,
    };
    let trusted = pp.trusted.check(&cfg.acls, &facts).is_allow();
    let (header, rest) = match proxy_protocol::read(stream, pp.timeout).await {
        Ok(r) => r,
        Err(e) => {
            let (uri, why) = match e {
                ReadError::Timeout => (
                    "error:proxy-header-timeout",
                    "no complete PROXY header in time".to_string(),
                ),
                // an empty connection (a port probe, a balancer's TCP check) is no transaction
                ReadError::Closed(0) => return None,
                ReadError::Closed(n) => (
                    "error:proxy-header-invalid",
                    format!("closed after {n} bytes of an incomplete PROXY header"),
                ),
                ReadError::Invalid(m) => ("error:proxy-header-invalid", format!("invalid PROXY header: {m}")),
                ReadError::Io(m) => ("error:proxy-header-invalid", format!("reading the PROXY header: {m}")),
            };
            refuse_connection(state, cfg, session, uri, b"CR", &why);
            return None;
        }
    };
    match header {
        Some(_) if !trusted => {
            refuse_connection(
                state,
                cfg,
                session,
                "error:proxy-header-untrusted",
                b"PR",
                &format!("PROXY header from untrusted source {}", peer.ip()),
            );
            None
        }
        None if pp.require => {
            refuse_connection(
                state,
                cfg,
                session,
                "error:proxy-header-missing",
                b"CR",
                "the listener requires a PROXY header",
            );
            None
        }
        None => Some(rest),
        Some(h) => {
            if let Some((src, dst)) = h.addrs {
                session.client = src;
                session.local = dst;
            }
            session.relayed = Some(Arc::new(crate::listen::Relayed { peer, header: h }));
            Some(rest)
        }
    }
}

/// Serves one accepted client connection to the end.
pub async fn serve(
    state: Arc<State>,
    cfg: Arc<Config>,
    mut session: Session,
    mut stream: TcpStream,
    open: crate::runtime::Open,
) {
    let busy = state.busy();
    let prefix = if cfg.listeners[session.listener].proxy_protocol.is_some() {
        match Box::pin(proxy_handshake(&state, &cfg, &mut session, &mut stream)).await {
            Some(rest) => rest,
            None => return,
        }
    } else {
        Vec::new()
    };
    let timeouts = cfg.timeouts;
    let listener = &cfg.listeners[session.listener];
    let mode = listener.mode;
    let _source = match SourcePlace::take(&cfg, &session) {
        Ok(p) => p,
        Err(limit) => {
            Box::pin(refuse_over_limit(&state, &cfg, &session, &mut stream, limit)).await;
            return;
        }
    };
    let mut prefix = prefix;
    let (stream, tls) = match listener.tls.clone() {
        None => (ClientStream::Plain(stream), None),
        Some(tls_cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_cfg);
            let io = Prefixed {
                prefix: std::mem::take(&mut prefix),
                inner: stream,
            };
            // boxed, like every phase below: a connection's task holds only the phase it is in
            match Box::pin(tokio::time::timeout(timeouts.client_header, acceptor.accept(io))).await {
                Ok(Ok(s)) => {
                    let n = crate::listen::tls::negotiated(s.get_ref().1);
                    (ClientStream::Tls(Box::new(s)), Some(Arc::new(n)))
                }
                // a connection closed before any handshake (a port probe, a
                // balancer's TCP check) is no transaction
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
                Ok(Err(e)) => {
                    refuse_connection(
                        &state,
                        &cfg,
                        &session,
                        "error:tls-handshake",
                        b"CR",
                        &format!("TLS handshake failed: {e}"),
                    );
                    return;
                }
                Err(_) => {
                    refuse_connection(
                        &state,
                        &cfg,
                        &session,
                        "error:tls-handshake",
                        b"cR",
                        "no TLS handshake in time",
                    );
                    return;
                }
            }
        }
    };
    if mode == Mode::Tcp {
        // bytes read past a PROXY header go to the server first
        // the session's guards go with it: a parked session outlives this task
        let guards = crate::front::tcp::Guards {
            _open: open,
            _busy: busy,
        };
        Box::pin(crate::front::tcp::serve(
            state.clone(),
            cfg.clone(),
            session,
            stream,
            tls,
            prefix,
            guards,
        ))
        .await;
        return;
    }
    Box::pin(serve_http(state, cfg, session, stream, tls, prefix)).await;
}

/// The HTTP part of a connection (forward, http, https listeners): HTTP/1.1
/// or HTTP/2 served by hyper until the client leaves or the configuration is retired.
async fn serve_http(
    state: Arc<State>,
    cfg: Arc<Config>,
    session: Session,
    stream: ClientStream,
    tls: Option<Arc<crate::listen::tls::Negotiated>>,
    mut prefix: Vec<u8>,
) {
    let timeouts = cfg.timeouts;
    let listener = &cfg.listeners[session.listener];
    let mode = listener.mode;
    let h2 = match (&tls, &stream) {
        (Some(n), _) => n.alpn.as_deref() == Some("h2"),
        (None, ClientStream::Plain(s)) if listener.http.as_ref().is_some_and(|h| h.h2c) => {
            sniff_h2c(s, &mut prefix, timeouts.client_header).await
        }
        _ => false,
    };
    let client_ip = ip_value(session.client.ip());
    let conn = Arc::new(Conn {
        state: state.clone(),
        cfg,
        session,
        activity: Activity::new(),
        tls,
        client_ip,
    });
    // the accept itself starts the clock for the first request
    conn.activity.since.store(0, Relaxed);
    conn.activity.phase.store(HEAD, Relaxed);
    let io = TokioIo::new(ClientIo {
        stream,
        conn: conn.clone(),
        prefix,
    });
    let c2 = conn.clone();
    let svc = service_fn(move |req| {
        let c = c2.clone();
        async move {
            Ok::<_, Infallible>(match mode {
                Mode::Forward => forward::handle(c, req).await,
                _ => crate::front::http::handle(c, req).await,
            })
        }
    });
    if h2 {
        Box::pin(serve_h2(&conn, io, svc, &timeouts)).await;
        return;
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(conn.cfg.http.max_header_size.max(8192))
        .max_headers(conn.cfg.http.max_headers);
    let mut served = Box::pin(builder.serve_connection(io, svc).with_upgrades());
    // a reload or the shutdown retires this configuration: finish the
    // request in progress, then close
    let retired = &conn.cfg.live.retired;
    let mut stop = retired.subscribe();
    // a connection retired by a reload before it answered anything serves its
    // first request first: its client sent it to a listener that accepted it
    let mut stopping = false;
    let mut pending = *stop.borrow();
    // the connection's future is polled about twice per request; the timer and
    // the retirement are polled once to register this task's waker, and on
    // later polls only looked at (the timer's state, the channel's version)
    // until they fire, which wakes this task
    let seen = retired.subscribe();
    let changed = stop.changed();
    tokio::pin!(changed);
    let mut stop_armed = false;
    let check = tokio::time::sleep_until(conn.activity.next_check(&timeouts).into());
    tokio::pin!(check);
    let mut check_armed = false;
    enum Event<T> {
        Served(T),
        Check,
        Retired,
        Nap,
    }
    loop {
        if pending && !stopping && (conn.activity.served.load(Relaxed) > 0 || conn.state.is_stopping_hard()) {
            stopping = true;
            served.as_mut().graceful_shutdown();
        }
        // while the retirement waits on a first request, look again every 50 ms
        let mut nap = (pending && !stopping).then(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = served.as_mut().poll(cx) {
                return Poll::Ready(Event::Served(r));
            }
            if !check_armed || check.is_elapsed() {
                if poll_registering(check.as_mut(), cx).is_ready() {
                    return Poll::Ready(Event::Check);
                }
                check_armed = true;
            }
            if !pending && (!stop_armed || seen.has_changed().unwrap_or(true)) {
                if poll_registering(changed.as_mut(), cx).is_ready() {
                    return Poll::Ready(Event::Retired);
                }
                stop_armed = true;
            }
            if let Some(n) = nap.as_mut()
                && n.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::Nap);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Served(r) => {
                if let Err(e) = r {
                    bad_request(&conn, &e);
                }
                break;
            }
            Event::Check => {
                if conn.activity.deadline(&timeouts).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(client = %conn.session.client, "client connection timed out while {}",
                        if conn.activity.phase.load(Relaxed) == IDLE { "idle" } else { "sending its request header" });
                    break;
                }
                check.as_mut().reset(conn.activity.next_check(&timeouts).into());
                // a fired timer gives its waker up: set again, it is polled
                // once more to hold one
                check_armed = false;
            }
            Event::Retired => pending = true,
            Event::Nap => {}
        }
    }
}

/// Polls `f` outside the task's cooperative budget: tokio's timers and
/// channels answer Pending without looking when the budget is spent, and a
/// Pending here must mean that `f` holds this task's waker.
fn poll_registering<F: Future + ?Sized>(f: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    Pin::new(&mut tokio::task::unconstrained(f)).poll(cx)
}

/// A place under the listener's `maxconn_per_source`, given back on drop.
struct SourcePlace(Arc<crate::observe::stats::ListenerStats>, std::net::IpAddr);

impl SourcePlace {
    /// Takes a place for the session's client; the limit when it has none left.
    fn take(cfg: &Config, session: &Session) -> Result<Option<SourcePlace>, u32> {
        let l = &cfg.listeners[session.listener];
        if l.maxconn_per_source == 0 {
            return Ok(None);
        }
        let ip = session.client.ip();
        if l.stats.enter_source(ip, l.maxconn_per_source) {
            Ok(Some(SourcePlace(l.stats.clone(), ip)))
        } else {
            Err(l.maxconn_per_source)
        }
    }
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        self.0.leave_source(self.1);
    }
}

/// A client over its per-source limit: HTTP listeners without TLS answer
/// 429 at once (the request is not read), the others close the connection.
async fn refuse_over_limit(state: &State, cfg: &Config, session: &Session, stream: &mut TcpStream, limit: u32) {
    let l = &cfg.listeners[session.listener];
    let why = format!(
        "{} already holds {limit} connection(s) (maxconn_per_source)",
        session.client.ip()
    );
    let speaks_http = l.tls.is_none() && matches!(l.mode, Mode::Forward | Mode::Http);
    let name = l.name.clone();
    tracing::debug!(client = %session.client, listener = %name, "{why}; connection refused");
    let rec = Record::new(session.accept_time, session.client, session.local, name);
    if speaks_http {
        let body = "Too many connections from your address.\n";
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(answer.as_bytes())).await;
        log_connection_error(state, cfg, rec, session, 429, "error:too-many-connections", b"PR");
    } else {
        log_connection_error(state, cfg, rec, session, 0, "error:too-many-connections", b"PR");
    }
}

/// The client connection preface of HTTP/2 with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads enough of a clear-text connection to tell HTTP/2 prior knowledge
/// from HTTP/1.x; what was read is kept in `prefix` for the server to see.
async fn sniff_h2c(s: &TcpStream, prefix: &mut Vec<u8>, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    while prefix.len() < H2_PREFACE.len() {
        if !H2_PREFACE.starts_with(prefix) {
            return false;
        }
        let want = H2_PREFACE.len() - prefix.len();
        let ready = tokio::time::timeout_at(deadline, s.readable()).await;
        if !matches!(ready, Ok(Ok(()))) {
            return false;
        }
        match s.try_read(&mut buf[..want]) {
            Ok(0) => return false,
            Ok(n) => prefix.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
    prefix.starts_with(H2_PREFACE)
}

/// Serves an HTTP/2 connection until it ends or the daemon stops.
async fn serve_h2<S>(conn: &Arc<Conn>, io: TokioIo<ClientIo>, svc: S, timeouts: &Timeouts)
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::front::txn::ProxyBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(None)
        .max_header_list_size(u32::try_from(conn.cfg.http.max_header_size).unwrap_or(u32::MAX));
    let served = builder.serve_connection(io, svc);
    tokio::pin!(served);
    let mut stop = conn.cfg.live.retired.subscribe();
    let mut stopping = *stop.borrow();
    if stopping {
        served.as_mut().graceful_shutdown();
    }
    let check = tokio::time::sleep_until(conn.activity.next_check(timeouts).into());
    tokio::pin!(check);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            r = &mut served => {
                if let Err(e) = r {
                    tracing::debug!(client = %conn.session.client, "HTTP/2 connection ended: {e}");
                }
                break;
            }
            _ = &mut check => {
                if closing.is_some_and(|hard| hard <= Instant::now()) {
                    // the client never finished the graceful close
                    break;
                }
                if closing.is_none() && conn.activity.deadline(timeouts).is_some_and(|d| d <= Instant::now()) {
                    served.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + Duration::from_secs(5));
                }
                let next = match closing {
                    Some(hard) => hard,
                    None => conn.activity.next_check(timeouts),
                };
                check.as_mut().reset(next.into());
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A request hyper could not parse gets a log record of its own.
fn bad_request(conn: &Conn, e: &hyper::Error) {
    if !e.is_parse() && !e.is_parse_too_large() {
        tracing::debug!(client = %conn.session.client, "client connection error: {e}");
        return;
    }
    let status = if e.is_parse_too_large() { 431 } else { 400 };
    log_connection_error(
        &conn.state,
        &conn.cfg,
        conn.record(Instant::now()),
        &conn.session,
        status,
        "error:invalid-request",
        b"PR",
    );
}
