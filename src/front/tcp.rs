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
use crate::relay::tunnel::{self, End};
use crate::runtime::State;
use crate::upstream::backend::{NoServer, Slot, source_key};

/// The server side of a TCP session.
enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// What a TCP session's log record holds beyond its [`Session`], kept small
/// while the session is open; the record is built when it ends.
struct Facts {
    request_time: SystemTime,
    started: Instant,
    tls: Option<Arc<crate::listen::tls::Negotiated>>,
    result: ResultCode,
    termination: [u8; 2],
    backend: Option<Arc<str>>,
    server: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    upstream_local: Option<SocketAddr>,
    queue: Option<Duration>,
    connect: Option<Duration>,
    retries: u32,
    up: u64,
    down: u64,
    counts: Option<[u32; 6]>,
}

/// Writes the session's log record and counts the transaction.
fn finish(state: &State, cfg: &crate::config::Config, session: &Session, f: Facts) {
    let listener = &cfg.listeners[session.listener];
    let mut rec = Record::new(
        session.accept_time,
        session.client,
        session.local,
        listener.name.clone(),
    );
    rec.request_time = f.request_time;
    rec.relayed = session.relayed.clone();
    rec.tls = f.tls;
    rec.method = http::Method::from_bytes(b"TCP").unwrap_or(http::Method::GET);
    rec.uri = http::Uri::from_static("/");
    rec.result = f.result;
    rec.termination = f.termination;
    rec.backend = f.backend;
    rec.server = f.server;
    rec.upstream = f.upstream;
    rec.upstream_local = f.upstream_local;
    rec.timers.queue = f.queue;
    rec.timers.connect = f.connect;
    rec.retries = f.retries;
    rec.bytes_from_client = f.up;
    rec.bytes_to_client = f.down;
    rec.counts = f.counts;
    rec.active = f.started.elapsed();
    rec.total = session.accepted.elapsed();
    crate::observe::counters::Counters::inc(&state.counters.transactions);
    state.finish(cfg, &rec);
}

/// Serves one client connection of a `tcp` listener to its end.
pub async fn serve(
    state: Arc<State>,
    cfg: Arc<crate::config::Config>,
    session: Session,
    client: ClientStream,
    tls: Option<Arc<crate::listen::tls::Negotiated>>,
    early: Vec<u8>,
) {
    let listener = &cfg.listeners[session.listener];
    let mut f = Facts {
        request_time: SystemTime::now(),
        started: Instant::now(),
        tls,
        result: ResultCode::TcpTunnel,
        termination: *b"--",
        backend: None,
        server: None,
        upstream: None,
        upstream_local: None,
        queue: None,
        connect: None,
        retries: 0,
        up: 0,
        down: 0,
        counts: None,
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
        finish(&state, &cfg, &session, f);
        return;
    }
    let Some(backend) = listener.tcp_pool.and_then(|i| cfg.live.backends.get(i)).cloned() else {
        f.termination = *b"PR";
        finish(&state, &cfg, &session, f);
        return;
    };
    f.backend = Some(backend.cfg.name.clone());
    // the connect phase's state is freed before the relay starts
    let Some((slot, server)) = Box::pin(connect_to_server(&state, &cfg, &session, &backend, &mut f)).await else {
        finish(&state, &cfg, &session, f);
        return;
    };
    let idle = cfg.timeouts.tunnel_idle;
    let outcome = match (client, server) {
        (ClientStream::Plain(c), ServerStream::Plain(s)) => {
            f.upstream_local = s.local_addr().ok();
            Box::pin(tunnel::relay(c, s, &early, idle, cfg.tunnel_relay)).await
        }
        (c, ServerStream::Plain(s)) => {
            f.upstream_local = s.local_addr().ok();
            Box::pin(tunnel::relay_io(c, s, &early, idle)).await
        }
        (c, ServerStream::Tls(s)) => {
            f.upstream_local = s.get_ref().0.local_addr().ok();
            Box::pin(tunnel::relay_io(c, s, &early, idle)).await
        }
    };
    f.up = outcome.up;
    f.down = outcome.down;
    f.termination = match outcome.end {
        End::Closed => *b"--",
        End::ClientError => *b"CD",
        End::ServerError => *b"SD",
        End::Idle => *b"cD",
    };
    f.counts = Some([
        state.counters.active.load(std::sync::atomic::Ordering::Relaxed) as u32,
        cfg.listeners[session.listener]
            .stats
            .current
            .load(std::sync::atomic::Ordering::Relaxed),
        backend.active.load(std::sync::atomic::Ordering::Relaxed),
        slot.server().active.load(std::sync::atomic::Ordering::Relaxed),
        0,
        backend.queued.load(std::sync::atomic::Ordering::Relaxed),
    ]);
    drop(slot);
    finish(&state, &cfg, &session, f);
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
                f.queue = Some(queued);
                f.termination = match e {
                    NoServer::Down => *b"SC",
                    NoServer::QueueFull | NoServer::QueueTimeout => *b"sQ",
                };
                tracing::debug!(client = %session.client, pool = %backend.cfg.name, "no server: {e:?}");
                return None;
            }
        };
        queued += slot.queued;
        f.queue = Some(queued);
        let s = slot.server();
        f.server = Some(s.cfg.name.clone());
        f.upstream = Some(s.cfg.addr);
        let t0 = Instant::now();
        match Box::pin(open(backend, s.cfg.addr, session, timeout)).await {
            Ok(server) => {
                f.connect = Some(t0.elapsed());
                crate::observe::counters::Counters::inc(&state.counters.upstream_connects);
                return Some((slot, server));
            }
            Err(why) => {
                f.connect = Some(t0.elapsed());
                if s.failed(backend.cfg.max_fails, backend.cfg.fail_timeout, &why) {
                    tracing::warn!(pool = %backend.cfg.name, server = %s.cfg.name, "server taken out for {} s: {why}", backend.cfg.fail_timeout.as_secs_f64());
                }
                // nothing was sent: the next server is always safe to try
                if f.retries < backend.cfg.retries {
                    s.tried_in_vain(crate::observe::figures::ErrorClass::Connect);
                    f.retries += 1;
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
