//! A pool at run time: its servers with their live counters and health, the
//! balancer, the queue for requests waiting for a free server slot, and the
//! stickiness state.
//!
//! A request takes a [`Slot`] on a server (counted against `maxconn`); when
//! every eligible server is full it waits in the pool's queue (bounded by
//! `maxqueue` and `queue_timeout`). Dropping the slot frees it and wakes one
//! waiter. No lock is held across I/O: counters are atomics, the queue is a
//! `Notify`, the balancer's round-robin state a short mutex.
//!
//! An operator can put a server in `drain` (no new requests but those that
//! stick to it) or `maint` (no traffic at all; health checks go on) and
//! change its weight at run time (the admin server's actions); both live in
//! the `Arc<Server>`, so they survive a reload that leaves the server as it is.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::upstream::{PoolConfig, ServerConfig, StickConfig};
use crate::observe::stats::{PoolStats, ServerStats};
use crate::upstream::balance::Balancer;
use crate::upstream::stick::{CookieCodec, StickTable};

/// Milliseconds since the process started (monotonic).
fn now_ms() -> u64 {
    crate::egress::parent::now_ms()
}

/// What an operator allows a server to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminState {
    /// Normal.
    Ready,
    /// No new requests, except those that stick to it (HAProxy's drain).
    Drain,
    /// No traffic at all; health checks still run.
    Maint,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

/// One server and its live state.
pub struct Server {
    pub cfg: ServerConfig,
    /// Requests in progress (`%sc`), counted against `maxconn`.
    pub active: AtomicU32,
    /// The weight in use (the configured one until an operator changes it).
    pub weight: AtomicU32,
    /// Active-check verdict: up until checks say otherwise.
    pub check_up: AtomicBool,
    /// Consecutive check results in the direction of a change.
    pub check_streak: AtomicU32,
    /// Passive health: failures seen in the current window, its start, and
    /// until when the server is out.
    fails: AtomicU32,
    fail_window: AtomicU64,
    out_until: AtomicU64,
    /// Requests sent (for stats).
    pub requests: AtomicU64,
    /// The last health change, for diagnostics.
    pub last_reason: std::sync::Mutex<String>,
    /// The operator's [`AdminState`] (as `u8`).
    admin: AtomicU8,
    /// Figures for the stats page and `/metrics`.
    pub stats: Arc<ServerStats>,
}

impl Server {
    fn new(cfg: ServerConfig) -> Server {
        Server {
            weight: AtomicU32::new(cfg.weight),
            cfg,
            active: AtomicU32::new(0),
            check_up: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            fail_window: AtomicU64::new(0),
            out_until: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_reason: std::sync::Mutex::new(String::new()),
            admin: AtomicU8::new(AdminState::Ready as u8),
            stats: Arc::default(),
        }
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Relaxed))
    }

    pub fn set_admin_state(&self, a: AdminState) {
        self.admin.store(a as u8, Relaxed);
    }

    /// Whether a request that sticks to this server may still go to it:
    /// up and not in maintenance (a draining server keeps its sticky clients).
    pub fn takes_sticky(&self) -> bool {
        self.is_up() && self.admin_state() != AdminState::Maint
    }

    /// A try on this server failed and the request moved on to another
    /// server: counted in this server's figures (its record names the last
    /// server only).
    pub fn tried_in_vain(&self, class: crate::observe::figures::ErrorClass) {
        self.stats.figures.count_error(class);
    }

    /// What the stats show: `maint`, `down`, `draining` or `up`.
    pub fn shown_state(&self) -> &'static str {
        match self.admin_state() {
            AdminState::Maint => "maint",
            _ if !self.is_up() => "down",
            AdminState::Drain => "draining",
            AdminState::Ready => "up",
        }
    }

    /// Up by the active checks and not taken out by passive health.
    pub fn is_up(&self) -> bool {
        self.check_up.load(Relaxed) && self.out_until.load(Relaxed) <= now_ms()
    }

    fn has_room(&self) -> bool {
        self.cfg.maxconn == 0 || self.active.load(Relaxed) < self.cfg.maxconn
    }

    /// A failure seen on real traffic; returns true when it took the server out.
    pub fn failed(&self, max_fails: u32, fail_timeout: Duration, why: &str) -> bool {
        if max_fails == 0 {
            return false;
        }
        let now = now_ms();
        let window = fail_timeout.as_millis() as u64;
        let start = self.fail_window.load(Relaxed);
        if now.saturating_sub(start) > window {
            self.fail_window.store(now, Relaxed);
            self.fails.store(0, Relaxed);
        }
        let n = self.fails.fetch_add(1, Relaxed) + 1;
        if n >= max_fails && self.out_until.load(Relaxed) <= now {
            self.out_until.store(now + window, Relaxed);
            self.fails.store(0, Relaxed);
            if let Ok(mut r) = self.last_reason.lock() {
                *r = format!("{n} failure(s): {why}");
            }
            return true;
        }
        false
    }
}

/// Why no server could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// No server is up (or none is left after failed tries).
    Down,
    /// Every server is full and the queue is full too.
    QueueFull,
    /// Waited `queue_timeout` in the queue.
    QueueTimeout,
}

/// A request's claim on a server; freed (and a waiter woken) on drop.
pub struct Slot {
    pub backend: Arc<Backend>,
    pub server: usize,
    /// Time spent in the queue (`%Tw`).
    pub queued: Duration,
}

impl Slot {
    pub fn server(&self) -> &Server {
        &self.backend.servers[self.server]
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.backend.servers[self.server].active.fetch_sub(1, Relaxed);
        self.backend.active.fetch_sub(1, Relaxed);
        if self.backend.queued.load(Relaxed) > 0 {
            // every waiter looks again: the first that can use the freed
            // server takes it (one that cannot, a backup or an excluded one,
            // must not swallow the wake-up)
            self.backend.room.notify_waiters();
        }
    }
}

/// Stickiness state of a pool.
pub enum Sticky {
    /// A learnt application cookie -> server.
    Learn { cookie: String, table: Arc<StickTable> },
    /// An inserted cookie naming the server by a keyed hash.
    Insert {
        cookie: String,
        codec: CookieCodec,
        nocache: bool,
        /// Each server's identity value, computed once (index = server).
        values: Vec<String>,
    },
    /// Client address -> server.
    Source(Arc<StickTable>),
}

/// A pool at run time.
pub struct Backend {
    /// Index of the pool in the configuration.
    pub index: usize,
    pub cfg: PoolConfig,
    /// Shared with the previous configuration's pool of the same name when
    /// the server is unchanged, so health and counters survive a reload.
    pub servers: Vec<Arc<Server>>,
    pub balancer: Balancer,
    pub sticky: Option<Sticky>,
    /// Requests holding a slot (`%bc`).
    pub active: AtomicU32,
    /// Requests waiting in the queue (`%bq`).
    pub queued: AtomicU32,
    room: Notify,
    /// Figures for the stats page and `/metrics`, carried by pool name.
    pub stats: Arc<PoolStats>,
}

impl Backend {
    pub fn new(index: usize, cfg: PoolConfig) -> Backend {
        let ids: Vec<String> = cfg.servers.iter().map(|s| s.addr.to_string()).collect();
        let weights: Vec<u32> = cfg.servers.iter().map(|s| s.weight).collect();
        let balancer = Balancer::new(cfg.balance, &ids, &weights);
        let sticky = cfg.stick.as_ref().map(|s| match s {
            StickConfig::Learn {
                cookie,
                size,
                expire,
                key_len,
            } => Sticky::Learn {
                cookie: cookie.clone(),
                table: Arc::new(StickTable::new(*size, *expire, *key_len)),
            },
            StickConfig::Insert {
                cookie,
                key,
                nocache,
                maxidle,
                maxlife,
            } => {
                let codec = CookieCodec::new(key, *maxidle, *maxlife);
                Sticky::Insert {
                    cookie: cookie.clone(),
                    values: cfg.servers.iter().map(|s| codec.server_value(s.addr)).collect(),
                    codec,
                    nocache: *nocache,
                }
            }
            StickConfig::Source { size, expire } => Sticky::Source(Arc::new(StickTable::new(*size, *expire, 16))),
        });
        Backend {
            index,
            servers: cfg.servers.iter().cloned().map(|s| Arc::new(Server::new(s))).collect(),
            cfg,
            balancer,
            sticky,
            active: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            room: Notify::new(),
            stats: Arc::default(),
        }
    }

    /// Whether `i` can take a new (not sticky) request now, given whether
    /// any primary is up.
    fn eligible(&self, i: usize, primaries_up: bool, exclude: &[usize]) -> bool {
        let s = &self.servers[i];
        s.cfg.backup != primaries_up
            && s.admin_state() == AdminState::Ready
            && s.is_up()
            && s.has_room()
            && !exclude.contains(&i)
    }

    /// Whether a primary server can take new requests (up, ready, with a weight).
    fn primaries_up(&self, exclude: &[usize]) -> bool {
        self.servers.iter().enumerate().any(|(i, s)| {
            !s.cfg.backup
                && s.admin_state() == AdminState::Ready
                && s.is_up()
                && s.weight.load(Relaxed) > 0
                && !exclude.contains(&i)
        })
    }

    /// Whether some server could take this request once it has room: a
    /// ready one that is up, or the preferred (sticky) one while it drains.
    fn any_up(&self, prefer: Option<usize>, exclude: &[usize]) -> bool {
        self.servers.iter().enumerate().any(|(i, s)| {
            let admitted = match s.admin_state() {
                AdminState::Ready => true,
                AdminState::Drain => prefer == Some(i),
                AdminState::Maint => false,
            };
            admitted && s.is_up() && !exclude.contains(&i)
        })
    }

    /// Tries to claim `i` (it must still have room when counted).
    fn claim(self: &Arc<Self>, i: usize, queued: Duration) -> Option<Slot> {
        let s = &self.servers[i];
        let n = s.active.fetch_add(1, Relaxed);
        if s.cfg.maxconn != 0 && n >= s.cfg.maxconn {
            s.active.fetch_sub(1, Relaxed);
            return None;
        }
        s.stats.max_active.fetch_max(n + 1, Relaxed);
        let pool = self.active.fetch_add(1, Relaxed) + 1;
        self.stats.max_active.fetch_max(pool, Relaxed);
        s.requests.fetch_add(1, Relaxed);
        Some(Slot {
            backend: self.clone(),
            server: i,
            queued,
        })
    }

    /// One attempt without waiting: the preferred (sticky) server when it can
    /// take the request, else the balancer's choice.
    fn try_pick(
        self: &Arc<Self>,
        prefer: Option<usize>,
        key: &[u8],
        exclude: &[usize],
        queued: Duration,
    ) -> Option<Slot> {
        let primaries = self.primaries_up(exclude);
        if let Some(p) = prefer
            && p < self.servers.len()
            && self.servers[p].takes_sticky()
            && self.servers[p].has_room()
            && !exclude.contains(&p)
            && let Some(slot) = self.claim(p, queued)
        {
            return Some(slot);
        }
        for _ in 0..4 {
            let i = self.balancer.pick(
                &|i| self.eligible(i, primaries, exclude),
                &|i| self.servers[i].weight.load(Relaxed),
                &|i| self.servers[i].active.load(Relaxed),
                key,
            )?;
            if let Some(slot) = self.claim(i, queued) {
                return Some(slot);
            }
        }
        None
    }

    /// A server for a request: the sticky one if it can serve, else balanced;
    /// waits in the queue when every eligible server is full.
    /// On failure, also how long the request waited.
    pub async fn acquire(
        self: &Arc<Self>,
        prefer: Option<usize>,
        key: &[u8],
        exclude: &[usize],
    ) -> Result<Slot, (NoServer, Duration)> {
        // newcomers wait behind requests already queued
        if self.queued.load(Relaxed) == 0
            && let Some(s) = self.try_pick(prefer, key, exclude, Duration::ZERO)
        {
            return Ok(s);
        }
        if !self.any_up(prefer, exclude) {
            return Err((NoServer::Down, Duration::ZERO));
        }
        let max = self.cfg.maxqueue;
        if max != 0 && self.queued.load(Relaxed) >= max {
            return Err((NoServer::QueueFull, Duration::ZERO));
        }
        let waiting = self.queued.fetch_add(1, Relaxed) + 1;
        self.stats.max_queued.fetch_max(waiting, Relaxed);
        let _unqueue = Unqueue(self);
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.cfg.queue_timeout;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(s) = self.try_pick(prefer, key, exclude, start.elapsed()) {
                return Ok(s);
            }
            if !self.any_up(prefer, exclude) {
                return Err((NoServer::Down, start.elapsed()));
            }
            // woken by a freed slot, or a periodic look (servers come back up)
            let step = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(deadline.min(step), room).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Err((NoServer::QueueTimeout, start.elapsed()));
            }
        }
    }

    /// The index of the server with this address, if any.
    pub fn server_by_addr(&self, addr: std::net::SocketAddr) -> Option<usize> {
        self.servers.iter().position(|s| s.cfg.addr == addr)
    }
}

/// Leaves the queue however the wait ends.
struct Unqueue<'a>(&'a Backend);

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Relaxed);
    }
}

/// The bytes a source-address table keys on.
pub fn source_key(ip: IpAddr) -> Vec<u8> {
    match crate::policy::acl::canonical(ip) {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Every pool of the config, at run time. A pool of the same name in
/// `previous` (the configuration being replaced) hands over what should
/// survive a reload: its figures; an unchanged server keeps its live state
/// (health, counters, figures, an operator's weight and admin state); a
/// changed one at the same address starts with the old health verdict, admin
/// state and figures (its weight is the file's new one); stick tables are
/// kept when the stickiness and the server list are unchanged (their entries
/// name servers by position).
pub fn build(pools: &[PoolConfig], previous: &[Arc<Backend>]) -> Vec<Arc<Backend>> {
    pools
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, p)| {
            let mut b = Backend::new(i, p);
            if let Some(old) = previous.iter().find(|o| o.cfg.name == b.cfg.name) {
                b.adopt(old);
            }
            Arc::new(b)
        })
        .collect()
}

impl Backend {
    fn adopt(&mut self, old: &Backend) {
        self.stats = old.stats.clone();
        for s in self.servers.iter_mut() {
            let Some(o) = old.servers.iter().find(|o| o.cfg.name == s.cfg.name) else {
                continue;
            };
            if o.cfg == s.cfg {
                *s = o.clone();
            } else if o.cfg.addr == s.cfg.addr {
                if let Some(fresh) = Arc::get_mut(s) {
                    fresh.stats = o.stats.clone();
                }
                s.set_admin_state(o.admin_state());
                s.check_up.store(o.check_up.load(Relaxed), Relaxed);
                s.out_until.store(o.out_until.load(Relaxed), Relaxed);
                if let (Ok(mut r), Ok(or)) = (s.last_reason.lock(), o.last_reason.lock()) {
                    *r = or.clone();
                }
            }
        }
        let same_servers = old.servers.len() == self.servers.len()
            && old
                .servers
                .iter()
                .zip(&self.servers)
                .all(|(a, b)| a.cfg.addr == b.cfg.addr);
        if !same_servers {
            return;
        }
        match (&mut self.sticky, &old.sticky, &self.cfg.stick, &old.cfg.stick) {
            (Some(Sticky::Learn { table, .. }), Some(Sticky::Learn { table: ot, .. }), Some(n), Some(o))
            | (Some(Sticky::Source(table)), Some(Sticky::Source(ot)), Some(n), Some(o))
                if n == o =>
            {
                *table = ot.clone();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balance::Algorithm;

    fn pool(n: usize) -> Arc<Backend> {
        let servers = (0..n)
            .map(|i| ServerConfig {
                name: format!("s{i}").into(),
                addr: format!("127.0.0.1:{}", 8000 + i).parse().unwrap(),
                weight: 1,
                backup: false,
                maxconn: 0,
            })
            .collect();
        let cfg = PoolConfig {
            name: "p".into(),
            servers,
            balance: Algorithm::RoundRobin,
            hash_key: crate::config::upstream::HashKey::Source,
            maxqueue: 0,
            queue_timeout: Duration::from_millis(200),
            retries: 0,
            max_fails: 0,
            fail_timeout: Duration::from_secs(1),
            fail_on_5xx: false,
            check: None,
            stick: None,
            proxy_protocol: None,
            tls: None,
            source: Default::default(),
        };
        Arc::new(Backend::new(0, cfg))
    }

    /// Servers picked by `n` requests, each freed before the next.
    fn picks(b: &Arc<Backend>, prefer: Option<usize>, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                b.try_pick(prefer, b"", &[], Duration::ZERO)
                    .map_or(usize::MAX, |s| s.server)
            })
            .collect()
    }

    #[test]
    fn drain_keeps_sticky_requests_and_maint_takes_none() {
        let b = pool(2);
        assert_eq!(picks(&b, None, 4), [0, 1, 0, 1]);
        b.servers[0].set_admin_state(AdminState::Drain);
        assert_eq!(b.servers[0].shown_state(), "draining");
        assert_eq!(picks(&b, None, 3), [1, 1, 1], "no new requests on a draining server");
        assert_eq!(picks(&b, Some(0), 2), [0, 0], "sticky requests still go");
        b.servers[0].set_admin_state(AdminState::Maint);
        assert_eq!(b.servers[0].shown_state(), "maint");
        assert_eq!(picks(&b, Some(0), 2), [1, 1], "nothing for a server in maintenance");
        b.servers[1].set_admin_state(AdminState::Drain);
        assert!(!b.any_up(None, &[]), "nothing left for new requests");
        assert!(
            b.any_up(Some(1), &[]),
            "the draining server still takes its sticky client"
        );
        assert_eq!(picks(&b, None, 1), [usize::MAX]);
        b.servers[0].set_admin_state(AdminState::Ready);
        b.servers[1].set_admin_state(AdminState::Ready);
        assert_eq!(picks(&b, None, 2).len(), 2);
        assert_eq!(b.servers[0].shown_state(), "up");
    }

    #[test]
    fn a_changed_weight_takes_effect_at_once() {
        let b = pool(2);
        b.servers[0].weight.store(3, Relaxed);
        let p = picks(&b, None, 8);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 6, "{p:?}");
        b.servers[0].weight.store(0, Relaxed);
        assert_eq!(picks(&b, None, 3), [1, 1, 1]);
    }

    #[test]
    fn operator_state_and_figures_survive_a_reload() {
        let old = pool(2);
        old.servers[0].set_admin_state(AdminState::Maint);
        old.servers[1].weight.store(7, Relaxed);
        old.stats.max_queued.store(3, Relaxed);
        let kept = build(std::slice::from_ref(&old.cfg), std::slice::from_ref(&old));
        assert!(
            Arc::ptr_eq(&kept[0].servers[0], &old.servers[0]),
            "an unchanged server is shared"
        );
        assert_eq!(kept[0].servers[1].weight.load(Relaxed), 7);
        assert!(Arc::ptr_eq(&kept[0].stats, &old.stats), "pool figures go by name");
        // a changed server at the same address keeps its operator state and figures
        let mut cfg = old.cfg.clone();
        cfg.servers[0].maxconn = 5;
        let changed = build(&[cfg], std::slice::from_ref(&old));
        let s = &changed[0].servers[0];
        assert!(!Arc::ptr_eq(s, &old.servers[0]));
        assert_eq!(s.admin_state(), AdminState::Maint);
        assert!(Arc::ptr_eq(&s.stats, &old.servers[0].stats));
    }
}
