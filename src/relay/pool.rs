//! Idle keep-alive connections to origins, keyed by the exact address
//! connected to, so a reused connection always goes where the access rules
//! allowed. The map is behind a mutex held only for a push or a pop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::relay::body::ReqBody;

pub type Sender = SendRequest<ReqBody>;

/// Idle connections kept per origin address.
const MAX_IDLE_PER_ADDR: usize = 64;
/// An idle connection older than this is closed rather than reused.
pub const IDLE_TTL: Duration = Duration::from_secs(60);

struct Idle {
    tx: Sender,
    /// The connection's local address, for the log of the requests reusing it.
    local: Option<SocketAddr>,
    since: Instant,
}

/// What a pooled connection is interchangeable for: the address connected
/// to, the source address, and the route (the outgoing rule, or the parent)
/// that set its socket up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub dst: SocketAddr,
    pub src: Option<IpAddr>,
    pub route: Route,
    /// The configuration generation whose indices `route` uses (0 for
    /// [`Route::Direct`], which names none): a reload never hands a
    /// connection set up for one rule or pool to another that took its index.
    pub generation: u64,
}

/// How a pooled connection was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Direct, with the system's defaults.
    Direct,
    /// Direct, with the socket settings of this outgoing rule.
    Outgoing(usize),
    /// To this parent proxy (its config index), with the socket settings of
    /// this outgoing rule, if any.
    Parent(usize, Option<usize>),
    /// To a server of this load-balancing pool (its config index), with the
    /// pool's settings (TLS).
    Pool(usize),
}

impl Key {
    pub fn direct(dst: SocketAddr) -> Key {
        Key {
            dst,
            src: None,
            route: Route::Direct,
            generation: 0,
        }
    }
}

type Map = Mutex<HashMap<Key, Vec<Idle>>>;

#[derive(Default)]
pub struct Pool {
    idle: Arc<Map>,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A ready idle connection for `key`, most recently used first, with its local address.
    pub fn checkout(&self, key: Key) -> Option<(Sender, Option<SocketAddr>)> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(&key)?;
        while let Some(i) = list.pop() {
            if !i.tx.is_closed() && i.tx.is_ready() && i.since.elapsed() < IDLE_TTL {
                return Some((i.tx, i.local));
            }
        }
        None
    }

    /// Gives a connection back once its response is complete. One that is not
    /// ready yet is put back when it becomes ready (or dropped if it closes).
    pub fn checkin(&self, key: Key, mut tx: Sender, local: Option<SocketAddr>) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            put(&self.idle, key, tx, local);
            return;
        }
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), tx.ready()).await {
                put(&idle, key, tx, local);
            }
        });
    }

    /// Drops closed and expired connections; run periodically.
    pub fn sweep(&self) {
        if let Ok(mut map) = self.idle.lock() {
            map.retain(|_, list| {
                list.retain(|i| !i.tx.is_closed() && i.since.elapsed() < IDLE_TTL);
                !list.is_empty()
            });
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|m| m.values().map(Vec::len).sum()).unwrap_or(0)
    }
}

fn put(idle: &Map, key: Key, tx: Sender, local: Option<SocketAddr>) {
    if let Ok(mut map) = idle.lock() {
        let list = map.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_ADDR {
            list.remove(0);
        }
        list.push(Idle {
            tx,
            local,
            since: Instant::now(),
        });
    }
}

/// Starts an HTTP/1.1 client connection on a connected socket (or a TLS
/// stream to a parent proxy).
pub async fn handshake<S>(stream: S) -> Result<Sender, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // with upgrades: a 101 answer (WebSocket) hands the socket over
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(tx)
}
