//! `tcp` listeners: each client connection is balanced over the listener's
//! pool (the same servers, algorithms, health, `maxconn` and queue as HTTP),
//! connected with failover to the next server when a connect fails (nothing
//! was sent yet), optionally with a PROXY header and TLS to the server, and
//! relayed both ways (buffers or splice(2), `tunnel.relay`) until both sides
//! close or nothing moves for `timeouts.tunnel_idle`. One log record per
//! connection: bytes each way, queue/connect/total times, termination state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::egress::connect;
use crate::front::conn::ClientStream;
use crate::listen::Session;
use crate::observe::record::{Record, ResultCode};
use crate::relay::park;
use crate::relay::pump;
use crate::relay::tunnel::{self, End};
use crate::runtime::State;
use crate::upstream::backend::{NoServer, Slot, source_key};

/// The server side of a TCP session.
type ServerStream = crate::relay::stream::Stream<tokio_rustls::client::TlsStream<TcpStream>>;

/// What a TCP session's log record holds beyond its [`Session`]; the
/// record is built when the session ends.
struct Facts {
    kept: Kept,
    result: ResultCode,
    termination: [u8; 2],
    backend: Option<Arc<str>>,
    server: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
}

/// Writes the session's log record and counts the transaction.
fn finish(state: &State, cfg: &crate::config::Config, session: &Session, f: Facts, counts: Option<[u32; 6]>) {
    let listener = &cfg.listeners[session.listener];
    let mut rec = Record::new(
        session.accept_time,
        session.client,
        session.local,
        listener.name.clone(),
    );
    rec.request_time = f.kept.request_time;
    rec.relayed = session.relayed.clone();
    rec.tls = f.kept.tls;
    rec.method = http::Method::from_bytes(b"TCP").unwrap_or(http::Method::GET);
    rec.uri = http::Uri::from_static("/");
    rec.result = f.result;
    rec.termination = f.termination;
    rec.backend = f.backend;
    rec.server = f.server;
    rec.upstream = f.upstream;
    rec.upstream_local = f.kept.upstream_local;
    rec.timers.queue = f.kept.queue;
    rec.timers.connect = f.kept.connect;
    rec.retries = f.kept.retries;
    rec.bytes_from_client = f.kept.up;
    rec.bytes_to_client = f.kept.down;
    rec.counts = counts;
    rec.active = f.kept.started.elapsed();
    rec.total = session.accepted.elapsed();
    crate::observe::counters::Counters::inc(&state.counters.transactions);
    state.finish(cfg, &rec);
}

/// What keeps a connection counted (against `maxconn` and for the graceful
/// shutdown) for as long as its session lasts, parked or not.
pub struct Guards {
    pub _open: crate::runtime::Open,
    pub _busy: crate::runtime::Busy,
}

/// A `tcp` session between two plain sockets, while it is parked.
pub struct Quiet {
    cfg: Arc<crate::config::Config>,
    session: Session,
    slot: Slot,
    kept: Kept,
    _guards: Guards,
}

/// What a connected session keeps for its log record beyond its session and
/// its slot (which name the pool, the server and its address).
struct Kept {
    request_time: SystemTime,
    started: Instant,
    tls: Option<Arc<crate::listen::tls::Negotiated>>,
    upstream_local: Option<SocketAddr>,
    queue: Option<Duration>,
    connect: Option<Duration>,
    retries: u32,
    up: u64,
    down: u64,
}

impl Quiet {
    fn new(cfg: Arc<crate::config::Config>, session: Session, f: Facts, slot: Slot, guards: Guards) -> Quiet {
        Quiet {
            cfg,
            session,
            slot,
            kept: f.kept,
            _guards: guards,
        }
    }
}

/// A relay quiet for this long leaves the runtime (see `relay::park`); bytes
/// or a close on either socket bring it back. Equal to the time after which
/// a direction gives its bulk buffer back, so a parked session held none.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Serves one client connection of a `tcp` listener to its end.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    state: Arc<State>,
    cfg: Arc<crate::config::Config>,
    session: Session,
    client: ClientStream,
    tls: Option<Arc<crate::listen::tls::Negotiated>>,
    early: Vec<u8>,
    guards: Guards,
) {
    let listener = &cfg.listeners[session.listener];
    let mut f = Facts {
        kept: Kept {
            request_time: SystemTime::now(),
            started: Instant::now(),
            tls,
            upstream_local: None,
            queue: None,
            connect: None,
            retries: 0,
            up: 0,
            down: 0,
        },
        result: ResultCode::TcpTunnel,
        termination: *b"--",
        backend: None,
        server: None,
        upstream: None,
    };
    let facts = crate::policy::acl::Facts {
        src: session.client.ip(),
        method: &http::Method::GET,
        host: "",
        port: listener.bind.port(),
        dst: None,
        user: None,
    };
    if !listener.access.check(&cfg.acls, &facts).is_allow() {
        f.result = ResultCode::TcpDenied;
        f.termination = *b"PR";
        crate::observe::counters::Counters::inc(&state.counters.denied);
        finish(&state, &cfg, &session, f, None);
        return;
    }
    let Some(backend) = listener.tcp_pool.and_then(|i| cfg.live.backends.get(i)).cloned() else {
        f.termination = *b"PR";
        finish(&state, &cfg, &session, f, None);
        return;
    };
    f.backend = Some(backend.cfg.name.clone());
    // the connect phase's state is freed before the relay starts
    let Some((slot, server)) = Box::pin(connect_to_server(&state, &cfg, &session, &backend, &mut f)).await else {
        finish(&state, &cfg, &session, f, None);
        return;
    };
    let idle = cfg.timeouts.tunnel_idle;
    let outcome = match (client, server) {
        (ClientStream::Plain(c), ServerStream::Plain(s)) => {
            f.kept.upstream_local = s.local_addr().ok();
            let quiet = Quiet::new(cfg, session, f, slot, guards);
            Box::pin(relay_plain(state, quiet, c, s, &early, Instant::now())).await;
            return;
        }
        (c, ServerStream::Plain(s)) => {
            f.kept.upstream_local = s.local_addr().ok();
            Box::pin(tunnel::relay_io(c, s, &early, idle)).await
        }
        (c, ServerStream::Tls(s)) => {
            f.kept.upstream_local = s.get_ref().0.local_addr().ok();
            Box::pin(tunnel::relay_io(c, s, &early, idle)).await
        }
    };
    f.kept.up = outcome.up;
    f.kept.down = outcome.down;
    let q = Quiet::new(cfg, session, f, slot, guards);
    end_session(&state, q, outcome.end);
}

/// Relays a session between two plain sockets; parks it when it goes quiet,
/// or ends it and writes its log record.
async fn relay_plain(state: Arc<State>, mut q: Quiet, c: TcpStream, s: TcpStream, early: &[u8], last: Instant) {
    let idle = q.cfg.timeouts.tunnel_idle;
    let mut park = state.parked.as_ref().map(|_| PARK_AFTER);
    let (mut c, mut s, mut early, mut last) = (c, s, early, last);
    loop {
        let (up, down, client, server, quiet_since) =
            match pump::relay_or_park(c, s, early, last, idle, q.cfg.tunnel_relay, park).await {
                pump::Relayed::Ended(o) => {
                    q.kept.up += o.up;
                    q.kept.down += o.down;
                    end_session(&state, q, o.end);
                    return;
                }
                pump::Relayed::Quiet {
                    up,
                    down,
                    client,
                    server,
                    last,
                } => (up, down, client, server, last),
            };
        q.kept.up += up;
        q.kept.down += down;
        let (Ok(client), Ok(server)) = (client.into_std(), server.into_std()) else {
            // a socket the runtime would not let go of: end the session
            end_session(&state, q, End::ServerError);
            return;
        };
        let Some(lot) = &state.parked else {
            end_session(&state, q, End::ServerError);
            return;
        };
        let p = park::Parked {
            client,
            server,
            deadline: quiet_since + idle,
            state: q,
        };
        let Err(p) = lot.park(p) else { return };
        // not parked (the kernel would not watch the sockets, or the lot
        // stopped): relay on in this task, and do not try again
        q = p.state;
        match (TcpStream::from_std(p.client), TcpStream::from_std(p.server)) {
            (Ok(client), Ok(server)) => (c, s) = (client, server),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("a tcp session could not go back to the runtime: {e}");
                end_session(&state, q, End::ServerError);
                return;
            }
        }
        park = None;
        early = &[];
        last = quiet_since;
    }
}

/// Writes a session's log record (its bytes already counted) and lets its slot go.
fn end_session(state: &State, q: Quiet, end: End) {
    let Quiet {
        cfg,
        session,
        slot,
        kept: k,
        _guards,
    } = q;
    let backend = &slot.backend;
    let server = slot.server();
    let f = Facts {
        kept: k,
        result: ResultCode::TcpTunnel,
        termination: match end {
            End::Closed => *b"--",
            End::ClientError => *b"CD",
            End::ServerError => *b"SD",
            End::Idle => *b"cD",
        },
        backend: Some(backend.cfg.name.clone()),
        server: Some(server.cfg.name.clone()),
        upstream: Some(server.cfg.addr),
    };
    let counts = [
        state.counters.active.load(std::sync::atomic::Ordering::Relaxed) as u32,
        cfg.listeners[session.listener]
            .stats
            .current
            .load(std::sync::atomic::Ordering::Relaxed),
        backend.active.load(std::sync::atomic::Ordering::Relaxed),
        server.active.load(std::sync::atomic::Ordering::Relaxed),
        0,
        backend.queued.load(std::sync::atomic::Ordering::Relaxed),
    ];
    drop(slot);
    finish(state, &cfg, &session, f, Some(counts));
    // counted until its record is written: the shutdown waits for both
    drop(_guards);
}

/// Gives a parked session back to the runtime: woken, it relays again (in a
/// task of its own); expired, it ends as idle.
pub async fn resume(state: Arc<State>, back: park::Back<Quiet>) {
    let p = match back {
        park::Back::Woken(p) => p,
        park::Back::Expired(p) => {
            end_session(&state, p.state, End::Idle);
            return;
        }
    };
    let (client, server) = match (TcpStream::from_std(p.client), TcpStream::from_std(p.server)) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("a parked tcp session could not be resumed: {e}");
            end_session(&state, p.state, End::ServerError);
            return;
        }
    };
    // woken by bytes or a close: that counts as activity (and the runtime
    // has yet to report the sockets' readiness, so no parking before it has)
    Box::pin(relay_plain(state, p.state, client, server, &[], Instant::now())).await;
}

/// Takes a server slot (queueing when the pool is full) and connects,
/// failing over to the next server when a connect fails; `None` when no
/// server could be had (the termination state is set in `f`).
async fn connect_to_server(
    state: &State,
    cfg: &crate::config::Config,
    session: &Session,
    backend: &Arc<crate::upstream::backend::Backend>,
    f: &mut Facts,
) -> Option<(Slot, ServerStream)> {
    let key = source_key(session.client.ip());
    let mut exclude = Vec::new();
    let mut queued = Duration::ZERO;
    let timeout = cfg.timeouts.connect;
    loop {
        let slot = match backend.acquire(None, &key, &exclude).await {
            Ok(s) => s,
            Err((e, waited)) => {
                queued += waited;
                f.kept.queue = Some(queued);
                f.termination = match e {
                    NoServer::Down => *b"SC",
                    NoServer::QueueFull | NoServer::QueueTimeout => *b"sQ",
                };
                tracing::debug!(client = %session.client, pool = %backend.cfg.name, "no server: {e:?}");
                return None;
            }
        };
        queued += slot.queued;
        f.kept.queue = Some(queued);
        let s = slot.server();
        f.server = Some(s.cfg.name.clone());
        f.upstream = Some(s.cfg.addr);
        let t0 = Instant::now();
        match Box::pin(open(backend, s.cfg.addr, session, timeout)).await {
            Ok(server) => {
                f.kept.connect = Some(t0.elapsed());
                crate::observe::counters::Counters::inc(&state.counters.upstream_connects);
                return Some((slot, server));
            }
            Err(why) => {
                f.kept.connect = Some(t0.elapsed());
                if s.failed(backend.cfg.max_fails, backend.cfg.fail_timeout, &why) {
                    tracing::warn!(pool = %backend.cfg.name, server = %s.cfg.name, "server taken out for {} s: {why}", backend.cfg.fail_timeout.as_secs_f64());
                }
                // nothing was sent: the next server is always safe to try
                if f.kept.retries < backend.cfg.retries {
                    s.tried_in_vain(crate::observe::figures::ErrorClass::Connect);
                    f.kept.retries += 1;
                    exclude.push(slot.server);
                    continue;
                }
                f.termination = *b"SC";
                return None;
            }
        }
    }
}

/// A connection to a server: TCP, the PROXY header when the pool sends one,
/// TLS when the pool speaks it.
async fn open(
    backend: &crate::upstream::backend::Backend,
    addr: std::net::SocketAddr,
    session: &Session,
    timeout: Duration,
) -> Result<ServerStream, String> {
    let connected = match backend.cfg.source {
        crate::config::upstream::SourceMode::Local => connect::connect(addr, timeout).await,
        _ => connect::connect_from(addr, std::net::SocketAddr::new(session.client.ip(), 0), timeout).await,
    };
    let mut s = connected.map_err(|e| e.to_string())?;
    if let Some(v) = backend.cfg.proxy_protocol {
        let header = crate::listen::proxy_protocol::encode(v, session.client, session.local);
        s.write_all(&header)
            .await
            .map_err(|e| format!("sending the PROXY header: {e}"))?;
    }
    let Some(tls) = &backend.cfg.tls else {
        return Ok(ServerStream::Plain(s));
    };
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(timeout, connector.connect(name, s)).await {
        Ok(Ok(t)) => Ok(ServerStream::Tls(Box::new(t))),
        Ok(Err(e)) => Err(format!("TLS handshake with {addr} failed: {e}")),
        Err(_) => Err(format!("TLS handshake with {addr} timed out")),
    }
}
#[cfg(test)]
mod tests {
    /// A parked session is one table entry; what it costs is what an idle
    /// `tcp` connection costs (328 bytes when written).
    #[test]
    fn a_parked_session_is_small() {
        let size = std::mem::size_of::<Option<crate::relay::park::Parked<super::Quiet>>>();
        assert!(size <= 384, "a parked session takes {size} bytes");
    }
}
