//! `tcp` listeners: each client connection is balanced over the listener's
//! pool (the same servers, algorithms, health, `maxconn` and queue as HTTP),
//! connected with failover to the next server when a connect fails (nothing
//! was sent yet), optionally with a PROXY header and TLS to the server, and
//! relayed both ways (buffers or splice(2), `tunnel.relay`) until both sides
//! close or nothing moves for `timeouts.tunnel_idle`. One log record per
//! connection: bytes each way, queue/connect/total times, termination state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::egress::connect;
use crate::front::conn::ClientStream;
use crate::listen::Session;
use crate::observe::record::{Record, ResultCode};
use crate::relay::tunnel::{self, End};
use crate::runtime::State;
use crate::upstream::backend::{NoServer, source_key};

/// The server side of a TCP session.
enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
    let mut rec = Record::new(
        session.accept_time,
        session.client,
        session.local,
        listener.name.clone(),
    );
    rec.relayed = session.relayed.clone();
    rec.tls = tls;
    rec.method = http::Method::from_bytes(b"TCP").unwrap_or(http::Method::GET);
    rec.uri = http::Uri::from_static("/");
    rec.result = ResultCode::TcpTunnel;
    let started = Instant::now();
    let finish = |mut rec: Record| {
        rec.active = started.elapsed();
        rec.total = session.accepted.elapsed();
        crate::observe::counters::Counters::inc(&state.counters.transactions);
        state.finish(&cfg, &rec);
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
        rec.result = ResultCode::TcpDenied;
        rec.termination = *b"PR";
        crate::observe::counters::Counters::inc(&state.counters.denied);
        finish(rec);
        return;
    }
    let Some(backend) = listener.tcp_pool.and_then(|i| cfg.live.backends.get(i)).cloned() else {
        rec.termination = *b"PR";
        finish(rec);
        return;
    };
    rec.backend = Some(backend.cfg.name.clone());
    let key = source_key(session.client.ip());
    let mut exclude = Vec::new();
    let mut queued = Duration::ZERO;
    let timeout = cfg.timeouts.connect;
    let (slot, server) = loop {
        let slot = match backend.acquire(None, &key, &exclude).await {
            Ok(s) => s,
            Err((e, waited)) => {
                queued += waited;
                rec.timers.queue = Some(queued);
                rec.termination = match e {
                    NoServer::Down => *b"SC",
                    NoServer::QueueFull | NoServer::QueueTimeout => *b"sQ",
                };
                tracing::debug!(client = %session.client, pool = %backend.cfg.name, "no server: {e:?}");
                finish(rec);
                return;
            }
        };
        queued += slot.queued;
        rec.timers.queue = Some(queued);
        let s = slot.server();
        rec.server = Some(s.cfg.name.clone());
        rec.upstream = Some(s.cfg.addr);
        let t0 = Instant::now();
        match Box::pin(open(&backend, s.cfg.addr, &session, timeout)).await {
            Ok(server) => {
                rec.timers.connect = Some(t0.elapsed());
                crate::observe::counters::Counters::inc(&state.counters.upstream_connects);
                break (slot, server);
            }
            Err(why) => {
                rec.timers.connect = Some(t0.elapsed());
                if s.failed(backend.cfg.max_fails, backend.cfg.fail_timeout, &why) {
                    tracing::warn!(pool = %backend.cfg.name, server = %s.cfg.name, "server taken out for {} s: {why}", backend.cfg.fail_timeout.as_secs_f64());
                }
                // nothing was sent: the next server is always safe to try
                if rec.retries < backend.cfg.retries {
                    s.tried_in_vain(crate::observe::figures::ErrorClass::Connect);
                    rec.retries += 1;
                    exclude.push(slot.server);
                    continue;
                }
                rec.termination = *b"SC";
                finish(rec);
                return;
            }
        }
    };
    let idle = cfg.timeouts.tunnel_idle;
    let outcome = match (client, server) {
        (ClientStream::Plain(c), ServerStream::Plain(s)) => {
            rec.upstream_local = s.local_addr().ok();
            Box::pin(tunnel::relay(c, s, &early, idle, cfg.tunnel_relay)).await
        }
        (c, ServerStream::Plain(s)) => {
            rec.upstream_local = s.local_addr().ok();
            Box::pin(tunnel::relay_io(c, s, &early, idle)).await
        }
        (c, ServerStream::Tls(s)) => {
            rec.upstream_local = s.get_ref().0.local_addr().ok();
            Box::pin(tunnel::relay_io(c, s, &early, idle)).await
        }
    };
    rec.bytes_from_client = outcome.up;
    rec.bytes_to_client = outcome.down;
    rec.termination = match outcome.end {
        End::Closed => *b"--",
        End::ClientError => *b"CD",
        End::ServerError => *b"SD",
        End::Idle => *b"cD",
    };
    rec.counts = Some([
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
    finish(rec);
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
