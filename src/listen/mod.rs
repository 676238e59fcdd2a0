//! Listen: bind the configured addresses and accept connections, each turned
//! into a [`Session`] (who connected, through which listener) and handed to
//! the listener's front.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::front;
use crate::runtime::State;

pub mod proxy_protocol;
pub mod tls;

/// What a trusted PROXY protocol header said about a connection.
#[derive(Clone, Debug)]
pub struct Relayed {
    /// The balancer: the TCP peer that sent the header.
    pub peer: SocketAddr,
    pub header: proxy_protocol::Header,
}

/// Who connected, where, and when.
#[derive(Clone, Debug)]
pub struct Session {
    /// The client: the TCP peer, or the source a trusted PROXY header named.
    pub client: SocketAddr,
    /// The address the client connected to (from the PROXY header, when there is one).
    pub local: SocketAddr,
    /// Set when the connection came with a trusted PROXY header.
    pub relayed: Option<Arc<Relayed>>,
    /// Index of the listener in the config.
    pub listener: usize,
    pub accept_time: SystemTime,
    pub accepted: Instant,
}

/// Binds a TCP listening socket (SO_REUSEADDR, a deep backlog).
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Binds a UDP socket (SO_REUSEADDR, non-blocking).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Accepts on one listening socket until the daemon stops or the socket is
/// no longer configured (`stop`). Each connection is served by the listener
/// that the configuration in force binds to this address, and counted
/// against its limits; while they are reached, connections wait in the backlog.
pub async fn accept_loop(
    state: Arc<State>,
    bind: SocketAddr,
    listener: Arc<TcpListener>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = state.shutdown_signal();
    loop {
        tokio::select! {
            room = state.room_for(bind, &mut stop) => if !room { break },
            _ = shutdown.changed() => break,
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
        };
        match accepted {
            Ok((stream, client)) => {
                let cfg = state.config.load_full();
                let Some(index) = cfg
                    .listeners
                    .iter()
                    .position(|l| l.mode != crate::config::Mode::Udp && l.bind == bind)
                else {
                    break;
                };
                let _ = stream.set_nodelay(true);
                let local = stream
                    .local_addr()
                    .unwrap_or_else(|_| listener.local_addr().unwrap_or(bind));
                crate::observe::counters::Counters::inc(&state.counters.connections);
                let open = state.open(&cfg.listeners[index].stats);
                let session = Session {
                    client,
                    local,
                    relayed: None,
                    listener: index,
                    accept_time: SystemTime::now(),
                    accepted: Instant::now(),
                };
                tokio::spawn(front::conn::serve(state.clone(), cfg, session, stream, open));
            }
            Err(e) => {
                // out of descriptors or memory: back off instead of spinning
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
