//! Runtime: the shared state of a running daemon, startup, reload, signals,
//! the binary upgrade and the graceful shutdown.
//!
//! The configuration in force is one `Arc<Config>` in an `ArcSwap`; a
//! connection takes it at accept and keeps it to its end. A reload builds a
//! new one beside it (binding only the addresses that are new), hands over
//! what must survive (server health, stick tables, listener counters) and
//! swaps it in; the old one is then *retired*: its keep-alive connections
//! close after their current request, its tunnels run to their end.
//! Listening sockets belong to the runtime, not to a configuration, so an
//! unchanged address keeps its socket (and its backlog) across reloads.

pub mod control;
pub mod notify;
pub mod privileges;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::config::{Config, Mode};
use crate::egress::resolve::Resolver;
use crate::observe::counters::Counters;
use crate::observe::writer::AccessLog;
use crate::relay::pool::Pool;

/// Where the configuration comes from, to read it again on reload.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    fn load(&self) -> Result<Config, String> {
        match self {
            Source::File(p) => crate::config::load_file(p).map_err(|d| d.to_string()),
            Source::Embedded => Ok(crate::config::embedded_default()),
        }
    }
}

/// What kind of socket a listening address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A TCP listener of any mode but `udp`.
    Tcp,
    Udp,
    /// The admin server.
    Admin,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "tcp" => Some(Kind::Tcp),
            "udp" => Some(Kind::Udp),
            "admin" => Some(Kind::Admin),
            _ => None,
        }
    }
}

/// A bound listening socket.
pub enum Sock {
    Tcp(Arc<tokio::net::TcpListener>),
    Udp(Arc<tokio::net::UdpSocket>),
}

impl Sock {
    pub fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(l) => l.as_raw_fd(),
            Sock::Udp(u) => u.as_raw_fd(),
        }
    }
}

/// A listening socket owned by the runtime, with the signal that stops its loop.
struct Bound {
    kind: Kind,
    addr: SocketAddr,
    sock: Sock,
    stop: watch::Sender<bool>,
}

/// What the last reloads did, for the admin server.
#[derive(Default)]
pub struct ReloadInfo {
    /// Successful reloads since start.
    pub count: AtomicU64,
    /// Reloads refused (an invalid file, an address that cannot be bound).
    pub failed: AtomicU64,
    /// The error of the last refused reload, until one succeeds.
    pub last_error: Mutex<Option<String>>,
}

/// Everything the connection handlers share. A connection takes one `Arc` of
/// the current config at accept and keeps it to the end.
pub struct State {
    pub config: ArcSwap<Config>,
    pub counters: Counters,
    pub log: ArcSwap<AccessLog>,
    /// Access-log figures of outputs replaced by reloads: (written, dropped).
    log_retired: (AtomicU64, AtomicU64),
    pub resolver: ArcSwap<Resolver>,
    pub pool: Pool,
    pub reloads: ReloadInfo,
    source: Source,
    /// Client connections open now over all listeners (for the global `maxconn`).
    open: AtomicU32,
    /// Woken when a connection closes while an accept loop waits for room.
    room: Notify,
    /// Accept loops waiting for room.
    room_waiters: AtomicU32,
    sockets: Mutex<Vec<Bound>>,
    /// Set when a new process took the sockets over: connections accepted
    /// here still get their first request served while this one drains.
    pub handed_over: std::sync::atomic::AtomicBool,
    /// Serialises reloads (SIGHUP and the control socket).
    reloading: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    drained: Notify,
    /// Quiet `tcp` sessions taken out of the runtime (none when the kernel
    /// gave no epoll set: sessions then stay in their tasks).
    pub parked: Option<crate::relay::park::Lot<crate::front::tcp::Quiet>>,
}

/// Held by every client connection and tunnel; the shutdown waits for the
/// last one to be dropped.
pub struct Busy {
    state: Arc<State>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.state.counters.active.fetch_sub(1, Relaxed) == 1 {
            self.state.drained.notify_waiters();
        }
    }
}

/// A client connection counted against the limits of its listener and of the
/// daemon (`maxconn`) while it lives.
pub struct Open {
    state: Arc<State>,
    stats: Arc<crate::observe::stats::ListenerStats>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.close();
        self.state.open.fetch_sub(1, Relaxed);
        // only an accept loop stopped by a limit needs waking
        if self.state.room_waiters.load(Relaxed) > 0 {
            self.state.room.notify_waiters();
        }
    }
}

impl State {
    fn new(mut config: Config, log: AccessLog, source: Source) -> Arc<State> {
        let resolver = Resolver::new(&config.resolver);
        let (shutdown, _) = watch::channel(false);
        config.live.generation = 1;
        config.live.backends = crate::upstream::backend::build(&config.pools, &[]);
        Arc::new(State {
            config: ArcSwap::from_pointee(config),
            counters: Counters::default(),
            log: ArcSwap::from_pointee(log),
            log_retired: Default::default(),
            resolver: ArcSwap::from_pointee(resolver),
            pool: Pool::new(),
            reloads: ReloadInfo::default(),
            source,
            open: AtomicU32::new(0),
            room: Notify::new(),
            room_waiters: AtomicU32::new(0),
            sockets: Mutex::new(Vec::new()),
            handed_over: Default::default(),
            reloading: tokio::sync::Mutex::new(()),
            shutdown,
            drained: Notify::new(),
            parked: crate::relay::park::Lot::new()
                .inspect_err(|e| tracing::warn!("quiet tcp sessions stay in their tasks: epoll: {e}"))
                .ok(),
        })
    }

    /// Marks one more client connection (or tunnel) as in progress.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.counters.active.fetch_add(1, Relaxed);
        Busy { state: self.clone() }
    }

    /// Counts an accepted connection against its listener and the daemon.
    pub fn open(self: &Arc<Self>, stats: &Arc<crate::observe::stats::ListenerStats>) -> Open {
        stats.open();
        self.open.fetch_add(1, Relaxed);
        Open {
            state: self.clone(),
            stats: stats.clone(),
        }
    }

    /// Client connections open now over all listeners.
    pub fn open_connections(&self) -> u32 {
        self.open.load(Relaxed)
    }

    /// A receiver that sees `true` once shutdown has begun.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stopping for good (not handing over to a new process): a connection
    /// that has not sent a request yet is closed at once.
    pub fn is_stopping_hard(&self) -> bool {
        self.is_shutting_down() && !self.handed_over.load(Relaxed)
    }

    /// Stops accepting, asks connections to finish, and waits for them up to
    /// `deadline`. Returns how many were still open at the deadline.
    pub async fn shut_down(&self, deadline: Duration) -> u64 {
        let _ = self.shutdown.send(true);
        self.config.load().live.retired.send_replace(true);
        // the loops drop their handles as they stop: the sockets close (a new
        // process that took them over holds its own)
        if let Ok(mut s) = self.sockets.lock() {
            s.clear();
        }
        let wait = async {
            loop {
                let notified = self.drained.notified();
                if self.counters.active.load(Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.counters.active.load(Relaxed)
    }

    /// Ends a transaction: its figures go to its listener, pool and server in
    /// `cfg` (the configuration it ran on) and its record to the access log.
    /// Every record passes here exactly once.
    pub fn finish(&self, cfg: &Config, rec: &crate::observe::record::Record) {
        crate::observe::figures::account(cfg, rec);
        self.log.load().submit(rec);
    }

    /// Access-log records written and dropped since start, over every output.
    pub fn log_figures(&self) -> (u64, u64) {
        let log = self.log.load();
        (
            log.written() + self.log_retired.0.load(Relaxed),
            log.dropped() + self.log_retired.1.load(Relaxed),
        )
    }

    /// The listening sockets, for a binary upgrade: (kind, address, descriptor).
    pub fn listening(&self) -> Vec<(Kind, SocketAddr, RawFd)> {
        self.sockets
            .lock()
            .map(|s| s.iter().map(|b| (b.kind, b.addr, b.sock.fd())).collect())
            .unwrap_or_default()
    }

    /// Reads the configuration again and, when it is valid and every new
    /// address can be bound, puts it in force. On error nothing changes.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, String> {
        let _one = self.reloading.lock().await;
        notify::send(&format!("RELOADING=1\nMONOTONIC_USEC={}", notify::monotonic_usec()));
        let r = self.try_reload();
        notify::send("READY=1");
        match &r {
            Ok(g) => {
                self.reloads.count.fetch_add(1, Relaxed);
                if let Ok(mut e) = self.reloads.last_error.lock() {
                    *e = None;
                }
                tracing::info!("configuration reloaded: generation {g}");
            }
            Err(e) => {
                self.reloads.failed.fetch_add(1, Relaxed);
                if let Ok(mut last) = self.reloads.last_error.lock() {
                    *last = Some(e.clone());
                }
                tracing::error!("reload refused, the running configuration stays: {e}");
            }
        }
        r
    }

    fn try_reload(self: &Arc<Self>) -> Result<u64, String> {
        if self.is_shutting_down() {
            return Err("the daemon is stopping".into());
        }
        let mut new = self.source.load()?;
        default_maxconn(&mut new);
        let old = self.config.load_full();
        if new.run_as != old.run_as {
            return Err("`user` and `group` cannot change on reload: restart sekisho".into());
        }
        if new.threads != old.threads {
            return Err("`threads` cannot change on reload: restart sekisho (or upgrade with --takeover)".into());
        }
        if new.pid_file != old.pid_file || new.control_socket != old.control_socket {
            return Err(
                "`pid_file` and `control_socket` cannot change on reload: restart sekisho (or upgrade with --takeover)"
                    .into(),
            );
        }
        check_transparency(&new)?;
        // bind what is new before anything changes
        let wanted = wanted_sockets(&new);
        let mut fresh = Vec::new();
        {
            let have = self.sockets.lock().map_err(|_| "socket table poisoned")?;
            for (kind, addr, name) in &wanted {
                if have.iter().any(|b| b.kind == *kind && b.addr == *addr) {
                    continue;
                }
                let sock = bind(*kind, *addr).map_err(|e| format!("cannot bind {name} on {addr}: {e}"))?;
                fresh.push((*kind, *addr, sock));
            }
        }
        let log = AccessLog::start(&new.access_logs).map_err(|e| e.to_string())?;
        // hand over what survives
        new.live.generation = old.live.generation + 1;
        new.live.backends = crate::upstream::backend::build(&new.pools, &old.live.backends);
        for l in new.listeners.iter_mut() {
            if let Some(o) = old.listeners.iter().find(|o| o.name == l.name) {
                l.stats = o.stats.clone();
            }
        }
        for p in &new.egress.parents {
            if let Some(o) = old.egress.parents.iter().find(|o| o.name == p.name) {
                p.down_until.store(o.down_until.load(Relaxed), Relaxed);
            }
        }
        if new.resolver != old.resolver {
            self.resolver.store(Arc::new(Resolver::new(&new.resolver)));
        }
        let generation = new.live.generation;
        let new = Arc::new(new);
        self.config.store(new.clone());
        old.live.retired.send_replace(true);
        let old_log = self.log.swap(Arc::new(log));
        let state = self.clone();
        // records of requests that took the old output a moment ago still land
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tokio::task::spawn_blocking(move || {
                old_log.close();
                state.log_retired.0.fetch_add(old_log.written(), Relaxed);
                state.log_retired.1.fetch_add(old_log.dropped(), Relaxed);
            })
            .await;
        });
        // sockets: stop the removed ones, start the new ones
        {
            let mut have = self.sockets.lock().map_err(|_| "socket table poisoned")?;
            have.retain(|b| {
                let keep = wanted.iter().any(|(k, a, _)| *k == b.kind && *a == b.addr);
                if !keep {
                    tracing::info!("{} socket on {} closed: no longer configured", b.kind.name(), b.addr);
                    b.stop.send_replace(true);
                }
                keep
            });
        }
        for (kind, addr, sock) in fresh {
            self.adopt_socket(kind, addr, sock);
        }
        start_generation(self, &new);
        Ok(generation)
    }

    /// Takes a bound socket into the table and starts its loop.
    fn adopt_socket(self: &Arc<Self>, kind: Kind, addr: SocketAddr, sock: Sock) {
        let (stop, rx) = watch::channel(false);
        match &sock {
            Sock::Tcp(l) if kind == Kind::Admin => {
                tokio::spawn(crate::observe::admin::serve(self.clone(), l.clone(), rx));
            }
            Sock::Tcp(l) => {
                tokio::spawn(crate::listen::accept_loop(self.clone(), addr, l.clone(), rx));
            }
            Sock::Udp(u) => {
                tokio::spawn(crate::front::udp::serve(self.clone(), addr, u.clone(), rx));
            }
        }
        if let Ok(mut s) = self.sockets.lock() {
            s.push(Bound { kind, addr, sock, stop });
        }
    }

    /// Waits until the limits leave room for one more connection on the
    /// listener bound to `addr`; false when that listener is gone.
    pub async fn room_for(&self, addr: SocketAddr, stop: &mut watch::Receiver<bool>) -> bool {
        // below the limits (the usual case) this is two loads, no lock
        match self.has_room(addr) {
            Some(true) => return true,
            None => return false,
            Some(false) => {}
        }
        self.room_waiters.fetch_add(1, Relaxed);
        let _left = WaiterGone(&self.room_waiters);
        loop {
            let woken = self.room.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.has_room(addr) {
                Some(true) => return true,
                None => return false,
                Some(false) => {}
            }
            tokio::select! {
                _ = &mut woken => {}
                // a reload may raise the limits
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Whether the listener bound to `addr` and the daemon are under their
    /// `maxconn`; `None` when no listener is bound there any more.
    fn has_room(&self, addr: SocketAddr) -> Option<bool> {
        let cfg = self.config.load();
        let l = cfg.listeners.iter().find(|l| l.mode != Mode::Udp && l.bind == addr)?;
        let global = cfg.maxconn == 0 || self.open.load(Relaxed) < cfg.maxconn;
        let local = l.maxconn == 0 || l.stats.current.load(Relaxed) < l.maxconn;
        Some(global && local)
    }
}

/// Counts an accept loop out of the waiters for room, however its wait ends.
struct WaiterGone<'a>(&'a AtomicU32);

impl Drop for WaiterGone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Every socket a configuration needs: (kind, address, what it is for).
fn wanted_sockets(cfg: &Config) -> Vec<(Kind, SocketAddr, String)> {
    let mut out: Vec<(Kind, SocketAddr, String)> = cfg
        .listeners
        .iter()
        .map(|l| {
            let kind = if l.mode == Mode::Udp { Kind::Udp } else { Kind::Tcp };
            (kind, l.bind, format!("listener `{}`", l.name))
        })
        .collect();
    if let Some(a) = &cfg.admin {
        out.push((Kind::Admin, a.bind, "the admin server".into()));
    }
    out
}

fn bind(kind: Kind, addr: SocketAddr) -> std::io::Result<Sock> {
    Ok(match kind {
        Kind::Udp => Sock::Udp(Arc::new(tokio::net::UdpSocket::from_std(crate::listen::bind_udp(
            addr,
        )?)?)),
        Kind::Tcp | Kind::Admin => Sock::Tcp(Arc::new(tokio::net::TcpListener::from_std(crate::listen::bind_tcp(
            addr,
        )?)?)),
    })
}

/// Starts what belongs to one configuration: its health checks and parent checks.
fn start_generation(state: &Arc<State>, cfg: &Arc<Config>) {
    crate::upstream::health::start(cfg);
    if let Some(a) = cfg.auth.clone()
        && let Some(every) = a.garbage_interval()
    {
        let mut retired = cfg.live.retired.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = retired.wait_for(|r| *r) => return,
                }
                let left = a.collect_garbage();
                tracing::debug!("Digest nonces: {left} in use after garbage collection");
            }
        });
    }
    if let Some(every) = cfg.egress.parent_check_interval {
        tokio::spawn(crate::egress::parent::check_loop(
            state.clone(),
            every,
            cfg.live.retired.subscribe(),
        ));
    }
}

/// Waits for SIGTERM or SIGINT; returns the signal's name.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGINT: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// SIGHUP reloads the configuration (and with it the credential files).
async fn reload_on_sighup(state: Arc<State>, hup: std::io::Result<tokio::signal::unix::Signal>) {
    let mut hup = match hup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGHUP: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = state.reload().await;
    }
}

/// SIGUSR1 makes every file access log open its path again (log rotation:
/// move the file, then signal).
async fn reopen_on_sigusr1(state: Arc<State>, usr1: std::io::Result<tokio::signal::unix::Signal>) {
    let mut usr1 = match usr1 {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGUSR1: {e}");
            return;
        }
    };
    while usr1.recv().await.is_some() {
        match state.log.load().reopen() {
            0 => tracing::info!("SIGUSR1: no access log file to reopen"),
            n => tracing::info!("SIGUSR1: reopening {n} access log file(s)"),
        }
    }
}

/// Pools that send from the client's address need CAP_NET_ADMIN: without
/// it, the start fails naming the listener, instead of every request failing.
fn check_transparency(cfg: &Config) -> Result<(), String> {
    use crate::config::upstream::SourceMode;
    for l in &cfg.listeners {
        for p in l.pools() {
            let pool = &cfg.pools[p];
            if pool.source == SourceMode::Local {
                continue;
            }
            let v6 = l.bind.is_ipv6();
            if let Err(e) = crate::egress::connect::can_be_transparent(v6) {
                return Err(format!(
                    "listener `{}`: pool `{}` sends from the client's address (source = \"{}\"), which needs CAP_NET_ADMIN (or CAP_NET_RAW) for IP_TRANSPARENT: {e}",
                    l.name,
                    pool.name,
                    if pool.source == SourceMode::Client {
                        "client"
                    } else {
                        "client-port"
                    }
                ));
            }
        }
    }
    Ok(())
}

/// How `sekisho run` was asked to start.
pub struct Start {
    pub source: Source,
    /// Take the listening sockets over from the sekisho behind this control socket.
    pub takeover: Option<PathBuf>,
}

/// Binds every listener, starts the daemon, and runs until SIGTERM/SIGINT
/// (or until a new process took its sockets over), then drains. Errors that
/// stop the start are returned as one clear line.
pub fn run(cfg: Config, start: Start) -> Result<(), String> {
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // one thread: the single-threaded scheduler, which hands work between a
    // request and its upstream connection without cross-thread queues
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        .enable_all()
        .on_thread_park(on_idle)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let state = rt.block_on(start_and_wait(cfg, start))?;
    // tasks still running at the deadline are dropped here; their records are queued
    rt.shutdown_timeout(Duration::from_secs(1));
    state.log.load().close();
    tracing::info!("stopped");
    Ok(())
}

/// How many times free heap pages were asked back; see [`release_memory`].
static RELEASE: AtomicU64 = AtomicU64::new(0);

/// Asks every runtime thread to give the heap pages it holds free back to
/// the system the next time it has nothing to do (after parked sessions
/// freed theirs). The allocator (mimalloc) keeps free pages per thread, so
/// each thread has to do it for itself.
pub fn release_memory() {
    RELEASE.fetch_add(1, Relaxed);
}

/// Runs on a runtime thread that is about to wait for work.
fn on_idle() {
    thread_local! {
        static DONE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let asked = RELEASE.load(Relaxed);
    DONE.with(|done| {
        if done.get() != asked {
            done.set(asked);
            // SAFETY: mi_collect only returns pages the allocator holds free.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}

/// The global `maxconn` when the file sets none: room for two descriptors per
/// connection under the open-file limit, less a reserve.
static DEFAULT_MAXCONN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

fn default_maxconn(cfg: &mut Config) {
    if cfg.maxconn == 0 {
        cfg.maxconn = DEFAULT_MAXCONN.get().copied().unwrap_or(0);
    }
}

/// Raises the soft limit on open files to the hard one: every proxied
/// connection holds two descriptors.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

async fn start_and_wait(mut cfg: Config, start: Start) -> Result<Arc<State>, String> {
    // the handlers exist before any socket listens: a signal sent as soon as
    // the port answers never finds the default action (which stops the process)
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    let usr1 = signal(SignalKind::user_defined1());
    let nofile = raise_nofile();
    let _ = DEFAULT_MAXCONN.set((nofile.saturating_sub(128) / 2).clamp(64, u32::MAX as u64) as u32);
    default_maxconn(&mut cfg);
    let mut inherited = match &start.takeover {
        Some(path) => control::take_over(path).await?,
        None => Vec::new(),
    };
    let mut bound = Vec::new();
    for (kind, addr, name) in wanted_sockets(&cfg) {
        let sock = match inherited.iter().position(|(k, a, _)| *k == kind && *a == addr) {
            Some(i) => inherited.swap_remove(i).2,
            None => bind(kind, addr).map_err(|e| format!("cannot bind {name} on {addr}: {e}"))?,
        };
        bound.push((kind, addr, sock));
    }
    // descriptors the new configuration does not use are closed here
    drop(inherited);
    check_transparency(&cfg)?;
    let log = AccessLog::start(&cfg.access_logs).map_err(|e| e.to_string())?;
    let control_path = cfg.control_socket.clone();
    let control = match &control_path {
        Some(p) => Some(control::bind(p, start.takeover.is_some())?),
        None => None,
    };
    let pid_file = cfg.pid_file.clone();
    if let Some(p) = &pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write the pid file {}: {e}", p.display()))?;
    }
    let shutdown_deadline = cfg.timeouts.shutdown;
    let names: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| format!("{} on {}", l.name, l.bind))
        .collect();
    let admin_addr = cfg.admin.as_ref().map(|a| a.bind);
    let run_as = cfg.run_as.clone();
    let state = State::new(cfg, log, start.source);
    // every socket is bound and every file open: now drop root, or stop
    if let Some(to) = &run_as {
        privileges::drop_to(to)?;
        tracing::info!(
            "running as user {} (uid {}, gid {})",
            privileges::current_user(),
            to.uid,
            to.gid
        );
    }
    tokio::spawn(reload_on_sighup(state.clone(), hup));
    start_generation(&state, &state.config.load_full());
    for (kind, addr, sock) in bound {
        state.adopt_socket(kind, addr, sock);
    }
    let (taken_tx, mut taken) = watch::channel(false);
    if let Some(c) = control {
        tokio::spawn(control::serve(state.clone(), c, taken_tx));
    }
    tokio::spawn(reopen_on_sigusr1(state.clone(), usr1));
    tokio::spawn(crate::observe::stats::sample_loop(state.clone()));
    let parker = state.clone();
    tokio::spawn(async move {
        if let Some(lot) = &parker.parked {
            lot.run(|back| {
                tokio::spawn(crate::front::tcp::resume(parker.clone(), back));
            })
            .await;
        }
    });
    let sweeper = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            sweeper.pool.sweep();
        }
    });
    tracing::info!(
        "ready: {}{}",
        names.join(", "),
        admin_addr.map(|a| format!("; admin on {a}")).unwrap_or_default()
    );
    if let Some(path) = &start.takeover {
        control::taken_over(path).await;
    }
    notify::send(&format!("READY=1\nMAINPID={}", std::process::id()));

    let why = tokio::select! {
        s = stop_signal() => s,
        _ = taken.wait_for(|t| *t) => "binary upgrade",
    };
    let upgraded = *taken.borrow();
    state.handed_over.store(upgraded, Relaxed);
    if !upgraded {
        notify::send("STOPPING=1");
    }
    let open = state.counters.active.load(Relaxed);
    tracing::info!(
        "{why}: no longer accepting; waiting up to {} s for {open} open connection(s)",
        shutdown_deadline.as_secs_f64()
    );
    let left = tokio::select! {
        n = state.shut_down(shutdown_deadline) => n,
        s = stop_signal() => {
            tracing::warn!("{s} again: stopping at once");
            state.counters.active.load(Relaxed)
        }
    };
    if left > 0 {
        tracing::warn!("{left} connection(s) still open at the shutdown deadline; closing them");
    }
    // a new process owns the names now; remove them only when they are still ours
    if !upgraded {
        if let Some(p) = &pid_file
            && std::fs::read_to_string(p).is_ok_and(|s| s.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(p);
        }
        if let Some(p) = &control_path {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(state)
}
