//! Idle keep-alive connections to origins, keyed by the exact address
//! connected to, so a reused connection always goes where the access rules
//! allowed. The map is behind a mutex held only for a push or a pop.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
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

type Map = Mutex<HashMap<Key, Vec<Idle>, Seeded>>;

/// The pool map's hasher: a key is a handful of machine words, looked up
/// twice per request, so each word is mixed with one wide multiply
/// (SipHash spent more on these keys than the rest of the pool). The seed is
/// random per process, so clients choosing destinations cannot aim at one
/// bucket.
#[derive(Clone)]
struct Seeded(u64);

impl Default for Seeded {
    fn default() -> Seeded {
        Seeded(std::hash::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl BuildHasher for Seeded {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(self.0)
    }
}

struct Mix(u64);

/// The high and low halves of the 128-bit product, folded together.
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }
    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = fold(self.0 ^ x, 0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        fold(self.0, 0xd6e8_feb8_6659_fd93)
    }
}

#[derive(Default)]
pub struct Pool {
    idle: Arc<Map>,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    /// A ready idle connection for `key`, most recently used first, with its
    /// local address; one idle for [`IDLE_TTL`] by `now` is not taken.
    pub fn checkout(&self, key: Key, now: Instant) -> Option<(Sender, Option<SocketAddr>)> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(&key)?;
        while let Some(i) = list.pop() {
            if !i.tx.is_closed() && i.tx.is_ready() && now.saturating_duration_since(i.since) < IDLE_TTL {
                return Some((i.tx, i.local));
            }
        }
        None
    }

    /// Gives a connection back once its response is complete. One that is not
    /// ready yet is put back when it becomes ready (or dropped if it closes).
    /// `now` is when the response ended: the connection is idle from then.
    pub fn checkin(&self, key: Key, mut tx: Sender, local: Option<SocketAddr>, now: Instant) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            put(&self.idle, key, tx, local, now);
            return;
        }
        let idle = self.idle.clone();
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), tx.ready()).await {
                put(&idle, key, tx, local, Instant::now());
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

fn put(idle: &Map, key: Key, tx: Sender, local: Option<SocketAddr>, since: Instant) {
    if let Ok(mut map) = idle.lock() {
        let list = map.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_ADDR {
            list.remove(0);
        }
        list.push(Idle { tx, local, since });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: [u8; 4], port: u16, route: Route) -> Key {
        Key {
            dst: SocketAddr::from((ip, port)),
            src: None,
            route,
            generation: 0,
        }
    }

    #[test]
    fn keys_that_differ_anywhere_hash_apart_and_spread_over_buckets() {
        let s = Seeded::default();
        let base = key([10, 0, 0, 1], 80, Route::Direct);
        let others = [
            key([10, 0, 0, 2], 80, Route::Direct),
            key([10, 0, 0, 1], 81, Route::Direct),
            key([10, 0, 0, 1], 80, Route::Outgoing(0)),
            key([10, 0, 0, 1], 80, Route::Pool(0)),
            Key {
                src: Some("192.0.2.1".parse().unwrap()),
                ..base
            },
            Key { generation: 1, ..base },
        ];
        for k in others {
            assert_ne!(s.hash_one(base), s.hash_one(k), "{k:?}");
        }
        assert_eq!(s.hash_one(base), s.hash_one(key([10, 0, 0, 1], 80, Route::Direct)));
        // destinations that differ only in their port (the common case for one
        // origin host) fill the low bits (buckets) and the top seven (hashbrown's tags)
        let mut low = [0u32; 256];
        let mut tags = std::collections::HashSet::new();
        for port in 0..8192u16 {
            let h = s.hash_one(key([127, 0, 0, 1], port, Route::Direct));
            low[(h & 255) as usize] += 1;
            tags.insert(h >> 57);
        }
        assert!(low.iter().all(|&n| (8..=64).contains(&n)), "{low:?}");
        assert_eq!(tags.len(), 128);
        // and another seed puts them elsewhere
        assert_ne!(Seeded::default().hash_one(base), s.hash_one(base));
    }
}
