//! `udp` listeners: datagrams balanced over a pool in sessions keyed by the
//! client's address and port (NGINX's `proxy_responses` / `proxy_timeout`).
//!
//! A new client gets a server slot and its own socket connected to that
//! server; its datagrams go out on it and the server's answers come back
//! through the listener's socket. With `responses = N` (N > 0), a datagram
//! with no answer within `timeout` counts as a failure for passive health and
//! is sent again to another server (up to the pool's `retries`). Once the
//! answers to its last datagram are all in, a session waits 200 ms (at most
//! `timeout`) for its client's next datagram, so a client sending query after
//! query from one port reuses its socket while one that uses a port per query
//! holds none for long; otherwise it ends after `timeout` of silence. The
//! session table is bounded by `max_sessions`. One log record per session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::upstream::SourceMode;
use crate::config::{Config, UdpOptions};
use crate::observe::record::{Record, ResultCode};
use crate::runtime::State;
use crate::upstream::backend::{Backend, Slot, source_key};

/// Largest datagram accepted.
const MAX_DATAGRAM: usize = 65_535;
/// How long a session whose answers are all in waits for its client's next datagram.
const LINGER: Duration = Duration::from_millis(200);
/// Datagrams queued per session before the next ones are dropped.
const SESSION_QUEUE: usize = 64;

/// Receives on one UDP socket until the daemon stops or the socket is no
/// longer configured (`stop`). A new session is served by the listener that
/// the configuration in force binds to this address; sessions keep the
/// configuration they started with.
pub async fn serve(
    state: Arc<State>,
    bind: SocketAddr,
    socket: Arc<UdpSocket>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut sessions: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut shutdown = state.shutdown_signal();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("udp receive failed: {e}");
                    continue;
                }
            },
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(tx) = sessions.get(&client) {
            match tx.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    crate::observe::counters::Counters::inc(&state.counters.errors);
                    continue;
                }
                // the session ended: this datagram starts a new one
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    sessions.remove(&client);
                    start(&state, bind, &socket, &mut sessions, client, d);
                }
            }
        } else {
            start(&state, bind, &socket, &mut sessions, client, datagram);
        }
    }
}

fn start(
    state: &Arc<State>,
    bind: SocketAddr,
    socket: &Arc<UdpSocket>,
    sessions: &mut HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    client: SocketAddr,
    first: Bytes,
) {
    let cfg = state.config.load_full();
    let Some(index) = cfg
        .listeners
        .iter()
        .position(|l| l.mode == crate::config::Mode::Udp && l.bind == bind)
    else {
        return;
    };
    let Some(opts) = cfg.listeners[index].udp else { return };
    if sessions.len() >= opts.max_sessions {
        sessions.retain(|_, tx| !tx.is_closed());
        if sessions.len() >= opts.max_sessions {
            crate::observe::counters::Counters::inc(&state.counters.errors);
            tracing::debug!(%client, "udp session table full ({}); datagram dropped", opts.max_sessions);
            return;
        }
    }
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let _ = tx.try_send(first);
    sessions.insert(client, tx);
    tokio::spawn(session(state.clone(), cfg, index, socket.clone(), client, rx, opts));
}

/// One client's session.
async fn session(
    state: Arc<State>,
    cfg: Arc<Config>,
    index: usize,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    opts: UdpOptions,
) {
    let l = &cfg.listeners[index];
    let local = listener.local_addr().unwrap_or(l.bind);
    let mut rec = Record::new(SystemTime::now(), client, local, l.name.clone());
    rec.method = http::Method::from_bytes(b"UDP").unwrap_or(http::Method::GET);
    rec.result = ResultCode::TcpTunnel;
    let started = Instant::now();
    let _busy = state.busy();
    let facts = crate::policy::acl::Facts {
        src: client.ip(),
        method: &http::Method::GET,
        host: "",
        port: l.bind.port(),
        dst: None,
        user: None,
    };
    let finish = |mut rec: Record| {
        rec.active = started.elapsed();
        rec.total = rec.active;
        crate::observe::counters::Counters::inc(&state.counters.transactions);
        state.finish(&cfg, &rec);
    };
    if !l.access.check(&cfg.acls, &facts).is_allow() {
        rec.result = ResultCode::TcpDenied;
        rec.termination = *b"PR";
        finish(rec);
        return;
    }
    let Some(backend) = l.tcp_pool.and_then(|i| cfg.live.backends.get(i)).cloned() else {
        return;
    };
    rec.backend = Some(backend.cfg.name.clone());
    let key = source_key(client.ip());
    let mut exclude = Vec::new();
    let Some((mut slot, mut up)) = connect(&backend, client, &key, &mut exclude, &mut rec).await else {
        finish(rec);
        return;
    };
    // filled by the kernel only as far as an answer goes: never zeroed
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM);
    // the last datagram sent and the answers still expected for it
    let mut last: Option<Bytes> = None;
    let mut deadline = tokio::time::Instant::now() + opts.timeout;
    let mut answered_any = false;
    // answers seen for the last datagram sent
    let mut answers = 0u32;
    loop {
        tokio::select! {
            d = rx.recv() => {
                let Some(d) = d else { break };
                rec.bytes_from_client += d.len() as u64;
                let sent = if backend.cfg.source == SourceMode::ClientPort {
                    up.send_to(&d, slot.server().cfg.addr).await
                } else {
                    up.send(&d).await
                };
                if sent.is_err() {
                    rec.termination = *b"SD";
                    break;
                }
                last = Some(d);
                answered_any = false;
                answers = 0;
                deadline = tokio::time::Instant::now() + opts.timeout;
                if backend.cfg.source == SourceMode::ClientPort {
                    // direct server return: the answer goes straight to the
                    // client; no state is kept and the socket is freed now
                    break;
                }
            }
            r = { buf.clear(); up.recv_buf(&mut buf) } => {
                let n = match r {
                    Ok(n) => n,
                    // ICMP port unreachable: treated as no answer
                    Err(_) => { tokio::time::sleep_until(deadline).await; 0 }
                };
                if n > 0 {
                    if listener.send_to(&buf[..n], client).await.is_err() {
                        rec.termination = *b"CD";
                        break;
                    }
                    rec.bytes_to_client += n as u64;
                    answered_any = true;
                    answers += 1;
                    // every answer is in: the session waits only a moment for
                    // the client's next datagram (a resolver that uses a new
                    // port per query must not hold a socket for `timeout`)
                    let done = opts.responses.is_some_and(|n| n > 0 && answers >= n);
                    deadline = tokio::time::Instant::now() + if done { opts.timeout.min(LINGER) } else { opts.timeout };
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let expected = opts.responses != Some(0) && last.is_some() && !answered_any;
                if !expected {
                    // silence after the answers (or none expected): the session is over
                    break;
                }
                let why = format!("no answer within {} ms", opts.timeout.as_millis());
                if slot.server().failed(backend.cfg.max_fails, backend.cfg.fail_timeout, &why) {
                    tracing::warn!(pool = %backend.cfg.name, server = %slot.server().cfg.name, "server taken out for {} s: {why}", backend.cfg.fail_timeout.as_secs_f64());
                }
                if rec.retries >= backend.cfg.retries {
                    rec.termination = *b"sD";
                    break;
                }
                slot.server().tried_in_vain(crate::observe::figures::ErrorClass::Timeout);
                rec.retries += 1;
                exclude.push(slot.server);
                drop(slot);
                match connect(&backend, client, &key, &mut exclude, &mut rec).await {
                    Some((s, u)) => {
                        slot = s;
                        up = u;
                    }
                    None => {
                        finish(rec);
                        return;
                    }
                }
                if let Some(d) = &last {
                    let _ = up.send(d).await;
                }
                deadline = tokio::time::Instant::now() + opts.timeout;
            }
        }
    }
    rec.counts = Some([
        0,
        0,
        backend.active.load(std::sync::atomic::Ordering::Relaxed),
        slot.server().active.load(std::sync::atomic::Ordering::Relaxed),
        0,
        0,
    ]);
    drop(slot);
    finish(rec);
}

/// A slot and a socket connected to the chosen server.
async fn connect(
    backend: &Arc<Backend>,
    client: SocketAddr,
    key: &[u8],
    exclude: &mut Vec<usize>,
    rec: &mut Record,
) -> Option<(Slot, UdpSocket)> {
    loop {
        let slot = match backend.acquire(None, key, exclude).await {
            Ok(s) => s,
            Err((_, waited)) => {
                rec.timers.queue = Some(rec.timers.queue.unwrap_or_default() + waited);
                rec.termination = *b"SC";
                return None;
            }
        };
        let addr = slot.server().cfg.addr;
        rec.server = Some(slot.server().cfg.name.clone());
        rec.upstream = Some(addr);
        let opened = match backend.cfg.source {
            SourceMode::Local => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                UdpSocket::bind(bind).await.map_err(|e| e.to_string())
            }
            // from the client's address (and port, for direct server return)
            mode => {
                let port = if mode == SourceMode::ClientPort {
                    client.port()
                } else {
                    0
                };
                crate::egress::connect::transparent_socket(
                    SocketAddr::new(client.ip(), port),
                    socket2::Type::DGRAM,
                    socket2::Protocol::UDP,
                )
                .and_then(|s| UdpSocket::from_std(s.into()).map_err(|e| e.to_string()))
            }
        };
        let sock = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot open a UDP socket: {e}");
                rec.termination = *b"PC";
                return None;
            }
        };
        // direct server return: an unconnected socket, so the kernel's early
        // demultiplexing can never hand the server's answer (which is on its way
        // to the client) to this socket instead of forwarding it
        if backend.cfg.source == SourceMode::ClientPort {
            rec.upstream_local = sock.local_addr().ok();
            rec.timers.connect = Some(Duration::ZERO);
            return Some((slot, sock));
        }
        match sock.connect(addr).await {
            Ok(()) => {
                rec.upstream_local = sock.local_addr().ok();
                rec.timers.connect = Some(Duration::ZERO);
                return Some((slot, sock));
            }
            Err(e) => {
                slot.server()
                    .failed(backend.cfg.max_fails, backend.cfg.fail_timeout, &e.to_string());
                slot.server()
                    .tried_in_vain(crate::observe::figures::ErrorClass::Connect);
                exclude.push(slot.server);
            }
        }
    }
}
