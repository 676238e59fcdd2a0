//! Parent proxies: which parent to try first, marking a parent down when it
//! refuses or times out (and up again after `parent_retry_after` or a good
//! active check), connecting to it (optionally over TLS), and opening a
//! CONNECT tunnel through it.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::Config;
use crate::config::egress::{Parent, ParentSelect};
use crate::egress::connect::{self, AttemptError};
use crate::egress::outgoing::{self, StickyKeys};
use crate::policy::acl::Facts;
use crate::relay::pool::{Key, Route, Sender};
use crate::runtime::State;

/// Milliseconds since the first call (a monotonic clock for down marks).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Parent {
    /// Whether the parent is marked down right now.
    pub fn is_down(&self) -> bool {
        self.down_until.load(Relaxed) > now_ms()
    }

    /// Skips the parent for `retry_after`. Returns whether it was up before.
    pub fn mark_down(&self, retry_after: Duration) -> bool {
        let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
        let until = now_ms().saturating_add(ms);
        self.down_until.swap(until, Relaxed) <= now_ms()
    }

    /// Returns whether it was down before.
    pub fn mark_up(&self) -> bool {
        self.down_until.swap(0, Relaxed) > now_ms()
    }
}

/// The parents to try, in order: those that are up by the selection policy,
/// then those marked down (a last resort rather than no answer at all).
pub fn order(cfg: &Config, host: &str) -> Vec<usize> {
    let parents = &cfg.egress.parents;
    let n = parents.len();
    let mut idx: Vec<usize> = (0..n).collect();
    match cfg.egress.parent_select {
        ParentSelect::FirstUp => {}
        ParentSelect::RoundRobin => {
            // the turn goes round the parents that are up, so a down one does
            // not hand its share to its neighbour
            let up = parents.iter().filter(|p| !p.is_down()).count();
            if up > 0 {
                let k = cfg.egress.parent_next.fetch_add(1, Relaxed) % up;
                let (mut live, down): (Vec<usize>, Vec<usize>) = idx.into_iter().partition(|&i| !parents[i].is_down());
                live.rotate_left(k);
                live.extend(down);
                return live;
            }
        }
        ParentSelect::Hash => {
            // rendezvous hashing over the names: a host keeps its parent, and
            // when that one is down the next in its own ranking takes over
            idx.sort_by_key(|&i| {
                let mut h = std::hash::DefaultHasher::new();
                host.hash(&mut h);
                parents[i].name.hash(&mut h);
                std::cmp::Reverse(h.finish())
            });
        }
    }
    idx.sort_by_key(|&i| parents[i].is_down());
    idx
}

/// A connection to a parent, in clear or over TLS.
pub type ParentStream = crate::relay::stream::Stream<TlsStream<TcpStream>>;

impl ParentStream {
    /// The local address of the underlying TCP connection.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            ParentStream::Plain(s) => s.local_addr().ok(),
            ParentStream::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }
}

/// A connection to a parent, from the pool or new.
pub enum Dialed {
    Pooled {
        key: Key,
        tx: Sender,
        local: Option<SocketAddr>,
    },
    Fresh {
        key: Key,
        stream: ParentStream,
    },
}

/// Connects to a parent: resolves its name, and per address (in order)
/// chooses the outgoing rule's settings once, takes a pooled connection made
/// with the same address, source and rule when `reuse` allows, else connects
/// (and does the TLS handshake when configured).
pub async fn dial(
    state: &State,
    cfg: &Config,
    idx: usize,
    facts: &Facts<'_>,
    keys: &StickyKeys<'_>,
    reuse: bool,
) -> Result<Dialed, String> {
    let parent = &cfg.egress.parents[idx];
    let timeout = cfg.timeouts.connect;
    let ips = state
        .resolver
        .load_full()
        .resolve(&parent.host)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", parent.host))?;
    let mut errors: Vec<AttemptError> = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(ip, parent.port);
        let via = match outgoing::choose(cfg, facts, keys, ip) {
            Ok(v) => v,
            Err(e) => {
                errors.push(AttemptError {
                    addr,
                    failure: connect::Failure::Local(e.to_string()),
                });
                continue;
            }
        };
        let key = Key {
            dst: addr,
            src: via.source,
            route: Route::Parent(idx, via.rule),
            generation: cfg.live.generation,
        };
        if reuse && let Some((tx, local)) = state.pool.checkout(key, Instant::now()) {
            return Ok(Dialed::Pooled { key, tx, local });
        }
        let tcp = match connect::connect_via(addr, &via, timeout).await {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let Some(tls) = &parent.tls else {
            return Ok(Dialed::Fresh {
                key,
                stream: ParentStream::Plain(tcp),
            });
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        return match tokio::time::timeout(timeout, connector.connect(tls.server_name.clone(), tcp)).await {
            Ok(Ok(s)) => Ok(Dialed::Fresh {
                key,
                stream: ParentStream::Tls(Box::new(s)),
            }),
            Ok(Err(e)) => Err(format!("TLS handshake with {addr} failed: {e}")),
            Err(_) => Err(format!("TLS handshake with {addr} timed out")),
        };
    }
    let list = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
    Err(format!("cannot connect: {list}"))
}

/// How a CONNECT through a parent failed.
#[derive(Debug)]
pub enum TunnelError {
    /// The parent itself failed (closed, timed out, spoke no HTTP): try the next one.
    Parent(String),
    /// The parent answered, but not with 2xx: the answer goes to the client.
    Answer { status: u16, reason: String },
}

/// Largest CONNECT response head accepted from a parent.
const MAX_HEAD: usize = 16 * 1024;

/// Sends `CONNECT authority` and reads the parent's answer. On success,
/// returns the bytes the parent sent after its response head (already from
/// the origin).
pub async fn open_tunnel(
    stream: &mut ParentStream,
    authority: &str,
    authorization: Option<&http::HeaderValue>,
    timeout: Duration,
) -> Result<Vec<u8>, TunnelError> {
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(a) = authorization {
        req.extend_from_slice(b"Proxy-Authorization: ");
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let exchange = async {
        stream
            .write_all(&req)
            .await
            .map_err(|e| TunnelError::Parent(format!("sending CONNECT failed: {e}")))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| TunnelError::Parent(format!("reading the CONNECT answer failed: {e}")))?;
            if n == 0 {
                return Err(TunnelError::Parent(
                    "closed the connection instead of answering CONNECT".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                match parse_answer(&buf) {
                    // an interim answer (100 Continue, 103): the real one follows
                    Err(TunnelError::Answer { status, .. }) if (100..200).contains(&status) => buf = rest,
                    r => return r.map(|()| rest),
                }
            }
            if buf.len() > MAX_HEAD {
                return Err(TunnelError::Parent("sent an oversized CONNECT answer".into()));
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(TunnelError::Parent(format!(
            "did not answer CONNECT within {} s",
            timeout.as_secs_f64()
        ))),
    }
}

/// `HTTP/1.x 200 ...` is success; any other status is passed to the client.
fn parse_answer(head: &[u8]) -> Result<(), TunnelError> {
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(s) if version.starts_with("HTTP/1.") && (200..300).contains(&s) => Ok(()),
        Some(s) if version.starts_with("HTTP/1.") && (100..600).contains(&s) => Err(TunnelError::Answer {
            status: s,
            reason: parts.next().unwrap_or("").to_string(),
        }),
        _ => Err(TunnelError::Parent(format!("answered CONNECT with `{line}`, not HTTP"))),
    }
}

/// Active checks: every `interval`, a TCP connection to each parent (and the
/// TLS handshake for TLS parents) marks it up or down.
pub async fn check_loop(state: Arc<State>, interval: Duration, mut retired: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = retired.wait_for(|r| *r) => return,
        }
        let cfg = state.config.load_full();
        for (idx, p) in cfg.egress.parents.iter().enumerate() {
            // no client: outgoing rules that test the client or user do not hold here
            let facts = Facts {
                src: std::net::Ipv4Addr::UNSPECIFIED.into(),
                method: &http::Method::OPTIONS,
                host: &p.host,
                port: p.port,
                dst: None,
                user: None,
            };
            let keys = StickyKeys {
                user: None,
                session: None,
                host: &p.host,
                client: facts.src,
            };
            match dial(&state, &cfg, idx, &facts, &keys, false).await {
                Ok(_) => {
                    if p.mark_up() {
                        tracing::info!(parent = %p.name, "parent is up again (active check)");
                    }
                }
                Err(e) => {
                    if p.mark_down(cfg.egress.parent_retry_after.max(interval)) {
                        tracing::warn!(parent = %p.name, "parent is down (active check): {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers() {
        assert!(parse_answer(b"HTTP/1.1 200 Connection established\r\n\r\n").is_ok());
        assert!(parse_answer(b"HTTP/1.0 200 OK\r\n\r\n").is_ok());
        match parse_answer(b"HTTP/1.1 403 Forbidden\r\nX: y\r\n\r\n") {
            Err(TunnelError::Answer { status: 403, reason }) => assert_eq!(reason, "Forbidden"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_answer(b"SSH-2.0-x\r\n\r\n"),
            Err(TunnelError::Parent(_))
        ));
    }

    #[test]
    fn order_puts_down_parents_last_and_hash_is_stable() {
        let text = r#"
[[parent]]
name = "p1"
address = "192.0.2.1:3128"
[[parent]]
name = "p2"
address = "192.0.2.2:3128"
[[parent]]
name = "p3"
address = "192.0.2.3:3128"
[egress]
parent_select = "hash"
"#;
        let cfg = crate::config::load_str("t", text).unwrap_or_else(|d| panic!("{d}"));
        let a = order(&cfg, "example.com");
        assert_eq!(a, order(&cfg, "example.com"));
        let spread: std::collections::HashSet<usize> = (0..50).map(|i| order(&cfg, &format!("h{i}.test"))[0]).collect();
        assert_eq!(spread.len(), 3, "50 hosts use all three parents");
        cfg.egress.parents[a[0]].mark_down(Duration::from_secs(60));
        let b = order(&cfg, "example.com");
        assert_eq!(b[..2], a[1..], "the rest keep their ranking");
        assert_eq!(b[2], a[0], "the down parent is tried last");
        assert!(cfg.egress.parents[a[0]].mark_up());
    }

    #[test]
    fn round_robin_shares_among_the_parents_that_are_up() {
        let text = r#"
[[parent]]
address = "192.0.2.1:3128"
[[parent]]
address = "192.0.2.2:3128"
[[parent]]
address = "192.0.2.3:3128"
[egress]
parent_select = "round-robin"
"#;
        let cfg = crate::config::load_str("t", text).unwrap_or_else(|d| panic!("{d}"));
        let firsts: Vec<usize> = (0..6).map(|_| order(&cfg, "h")[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        cfg.egress.parents[0].mark_down(Duration::from_secs(60));
        let firsts: Vec<usize> = (0..4).map(|_| order(&cfg, "h")[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 2, "{firsts:?}");
        assert_eq!(firsts.iter().filter(|&&i| i == 2).count(), 2, "{firsts:?}");
        assert_eq!(order(&cfg, "h")[2], 0, "the down parent is last");
        // a retry-after too long for the clock saturates instead of wrapping
        cfg.egress.parents[1].mark_down(Duration::MAX);
        assert!(cfg.egress.parents[1].is_down());
    }
}
