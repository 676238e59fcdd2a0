//! Process-wide counters: plain atomics, bumped on the request path without locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Counters {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Client connections open now (tunnels included).
    pub active: AtomicU64,
    /// Transactions (requests and tunnels) finished.
    pub transactions: AtomicU64,
    /// Requests refused by the access rules.
    pub denied: AtomicU64,
    /// Transactions answered with a proxy error page (400, 5xx).
    pub errors: AtomicU64,
    /// Upstream connections opened.
    pub upstream_connects: AtomicU64,
    /// Requests sent on a reused (pooled) upstream connection.
    pub upstream_reused: AtomicU64,
    /// CONNECT tunnels established.
    pub tunnels: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}
