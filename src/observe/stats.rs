//! Live figures of listeners, pools and servers, kept across reloads: a
//! listener's by its name, a pool's by its name, a server's with the server
//! (an unchanged server keeps its `Arc<Server>`, a changed one at the same
//! address keeps its figures). Connections open now and at most, accepted,
//! refused by the limits, and the transaction [`Figures`]. Plain atomics; the
//! per-source table is touched only when a listener has a per-source limit.
//!
//! [`sample_loop`] is the one task per process that turns the counters into
//! rates and history.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::observe::figures::{Figures, SAMPLE_EVERY};
use crate::runtime::State;

#[derive(Default, Debug)]
pub struct ListenerStats {
    /// Client connections open now (`%fc`).
    pub current: AtomicU32,
    /// The most open at once since start.
    pub max: AtomicU32,
    /// Connections accepted.
    pub total: AtomicU64,
    /// Connections refused by `maxconn_per_source`.
    pub refused: AtomicU64,
    /// Connections open per client address, for `maxconn_per_source`.
    per_source: Mutex<HashMap<IpAddr, u32>>,
    /// Transactions finished on this listener.
    pub figures: Figures,
}

/// A pool's figures, carried by pool name across reloads.
#[derive(Default, Debug)]
pub struct PoolStats {
    pub figures: Figures,
    /// The most requests holding a server slot at once.
    pub max_active: AtomicU32,
    /// The most requests waiting in the queue at once.
    pub max_queued: AtomicU32,
}

/// A server's figures: they belong to its `Arc<Server>`, and move to the
/// server that replaces it at the same address when its settings change.
#[derive(Default, Debug)]
pub struct ServerStats {
    pub figures: Figures,
    /// The most requests in progress at once.
    pub max_active: AtomicU32,
}

/// Samples every listener, pool and server of the configuration in force
/// every [`SAMPLE_EVERY`] (rates and history) until shutdown. One per process.
pub async fn sample_loop(state: Arc<State>) {
    let mut shutdown = state.shutdown_signal();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let cfg = state.config.load();
        for l in &cfg.listeners {
            l.stats.figures.sample(l.stats.current.load(Relaxed));
        }
        for b in &cfg.live.backends {
            b.stats.figures.sample(b.active.load(Relaxed));
            for s in &b.servers {
                s.stats.figures.sample(s.active.load(Relaxed));
            }
        }
    }
}

impl ListenerStats {
    /// Counts a connection as open; returns the number open now.
    pub fn open(&self) -> u32 {
        let n = self.current.fetch_add(1, Relaxed) + 1;
        self.max.fetch_max(n, Relaxed);
        self.total.fetch_add(1, Relaxed);
        n
    }

    pub fn close(&self) {
        self.current.fetch_sub(1, Relaxed);
    }

    /// Takes one of `limit` places for `ip`; false when it holds them all.
    pub fn enter_source(&self, ip: IpAddr, limit: u32) -> bool {
        let Ok(mut t) = self.per_source.lock() else { return true };
        let n = t.entry(ip).or_insert(0);
        if *n >= limit {
            drop(t);
            self.refused.fetch_add(1, Relaxed);
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a place taken by [`enter_source`](Self::enter_source).
    pub fn leave_source(&self, ip: IpAddr) {
        let Ok(mut t) = self.per_source.lock() else { return };
        if let Some(n) = t.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&ip);
            }
        }
    }

    /// Client addresses with a connection open (per-source limited listeners).
    pub fn sources(&self) -> usize {
        self.per_source.lock().map_or(0, |t| t.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_places_are_counted_and_given_back() {
        let s = ListenerStats::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(s.enter_source(a, 2));
        assert!(s.enter_source(a, 2));
        assert!(!s.enter_source(a, 2));
        assert!(s.enter_source(b, 2));
        assert_eq!(s.refused.load(Relaxed), 1);
        s.leave_source(a);
        assert!(s.enter_source(a, 2));
        s.leave_source(a);
        s.leave_source(a);
        s.leave_source(b);
        assert_eq!(s.sources(), 0);
    }

    #[test]
    fn the_maximum_follows_the_peak() {
        let s = ListenerStats::default();
        s.open();
        s.open();
        s.close();
        s.open();
        assert_eq!(s.max.load(Relaxed), 2);
        assert_eq!(s.total.load(Relaxed), 3);
        assert_eq!(s.current.load(Relaxed), 2);
    }
}
