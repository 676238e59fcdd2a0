//! Runtime: the shared state of a running daemon, startup, signals and the
//! graceful shutdown.

pub mod privileges;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::egress::resolve::Resolver;
use crate::observe::counters::Counters;
use crate::observe::writer::AccessLog;
use crate::relay::pool::Pool;

/// Everything the connection handlers share. A connection takes one `Arc` of
/// the current config at accept and keeps it to the end.
pub struct State {
    pub config: ArcSwap<Config>,
    pub counters: Counters,
    pub log: AccessLog,
    pub resolver: Resolver,
    pub pool: Pool,
    /// The load balancer's pools at run time, by config index.
    pub backends: Vec<Arc<crate::upstream::backend::Backend>>,
    /// Client connections open now, per listener (`%fc`).
    listener_conns: Vec<std::sync::atomic::AtomicU32>,
    shutdown: watch::Sender<bool>,
    drained: Notify,
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

impl State {
    pub fn new(config: Config, log: AccessLog) -> Arc<State> {
        let resolver = Resolver::new(&config.resolver);
        let (shutdown, _) = watch::channel(false);
        let backends = crate::upstream::backend::build(&config.pools);
        let listener_conns = config.listeners.iter().map(|_| Default::default()).collect();
        Arc::new(State {
            backends,
            listener_conns,
            config: ArcSwap::from_pointee(config),
            counters: Counters::default(),
            log,
            resolver,
            pool: Pool::new(),
            shutdown,
            drained: Notify::new(),
        })
    }

    /// Marks one more client connection (or tunnel) as in progress.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.counters.active.fetch_add(1, Relaxed);
        Busy { state: self.clone() }
    }

    /// One more (or, with `open = false`, one less) client connection on a listener.
    pub fn listener_conn(&self, listener: usize, open: bool) {
        if let Some(c) = self.listener_conns.get(listener) {
            if open {
                c.fetch_add(1, Relaxed);
            } else {
                c.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Client connections open now on a listener.
    pub fn listener_active(&self, listener: usize) -> u32 {
        self.listener_conns.get(listener).map_or(0, |c| c.load(Relaxed))
    }

    /// A receiver that sees `true` once shutdown has begun.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stops accepting, asks connections to finish, and waits for them up to
    /// `deadline`. Returns how many were still open at the deadline.
    pub async fn shut_down(&self, deadline: Duration) -> u64 {
        let _ = self.shutdown.send(true);
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

/// SIGHUP re-reads the credential files (through the descriptors opened at
/// start when the files are no longer readable by the user the daemon runs as).
/// It never stops the daemon, whether or not there is anything to re-read.
async fn reload_on_sighup(auth: Option<Arc<crate::policy::auth::Authenticator>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGHUP: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let Some(auth) = &auth else {
            tracing::info!("SIGHUP: no credential files to re-read (the configuration itself is read only at start)");
            continue;
        };
        for r in auth.reload_files() {
            match r {
                Ok(m) => tracing::info!("SIGHUP: reloaded {m}"),
                Err(e) => tracing::error!("SIGHUP: {e}"),
            }
        }
    }
}

/// SIGUSR1 makes every file access log open its path again (log rotation:
/// move the file, then signal). The handler is installed before this returns,
/// so the signal never stops the daemon once the future is spawned.
fn reopen_on_sigusr1(state: Arc<State>) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let usr1 = signal(SignalKind::user_defined1());
    async move {
        let mut usr1 = match usr1 {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot watch SIGUSR1: {e}");
                return;
            }
        };
        while usr1.recv().await.is_some() {
            match state.log.reopen() {
                0 => tracing::info!("SIGUSR1: no access log file to reopen"),
                n => tracing::info!("SIGUSR1: reopening {n} access log file(s)"),
            }
        }
    }
}

/// The counter that tracks access-log records, for the admin server.
pub fn log_figures(state: &State) -> (u64, u64) {
    (state.log.written(), state.log.dropped())
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

/// Binds every listener, starts the daemon, and runs until SIGTERM/SIGINT,
/// then drains. Errors that stop the start are returned as one clear line.
pub fn run(cfg: Config) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let state = rt.block_on(start_and_wait(cfg))?;
    // tasks still running at the deadline are dropped here; their records are queued
    rt.shutdown_timeout(Duration::from_secs(1));
    state.log.close();
    tracing::info!("stopped");
    Ok(())
}

async fn start_and_wait(cfg: Config) -> Result<Arc<State>, String> {
    let mut listeners = Vec::new();
    let mut udp_listeners = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let fail = |e: std::io::Error| format!("cannot bind listener `{}` on {}: {e}", l.name, l.bind);
        if l.mode == crate::config::Mode::Udp {
            let sock = crate::listen::bind_udp(l.bind)
                .and_then(tokio::net::UdpSocket::from_std)
                .map_err(fail)?;
            udp_listeners.push((i, sock));
            continue;
        }
        let sock = crate::listen::bind_tcp(l.bind)
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(fail)?;
        listeners.push((i, sock));
    }
    check_transparency(&cfg)?;
    let admin = match &cfg.admin {
        Some(a) => Some(
            crate::listen::bind_tcp(a.bind)
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| format!("cannot bind the admin server on {}: {e}", a.bind))?,
        ),
        None => None,
    };
    let log = AccessLog::start(&cfg.access_logs).map_err(|e| e.to_string())?;
    let shutdown_deadline = cfg.timeouts.shutdown;
    let names: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| format!("{} on {}", l.name, l.bind))
        .collect();
    let admin_addr = cfg.admin.as_ref().map(|a| a.bind);
    let run_as = cfg.run_as.clone();
    let auth = cfg.auth.clone();
    let state = State::new(cfg, log);
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
    if let Some(a) = auth.clone()
        && let Some(every) = a.garbage_interval()
    {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let left = a.collect_garbage();
                tracing::debug!("Digest nonces: {left} in use after garbage collection");
            }
        });
    }
    tokio::spawn(reload_on_sighup(auth));
    tokio::spawn(reopen_on_sigusr1(state.clone()));
    crate::upstream::health::start(&state, &state.backends);
    if let Some(every) = state.config.load().egress.parent_check_interval {
        tokio::spawn(crate::egress::parent::check_loop(state.clone(), every));
    }
    for (i, l) in listeners {
        tokio::spawn(crate::listen::accept_loop(state.clone(), i, l));
    }
    for (i, u) in udp_listeners {
        tokio::spawn(crate::front::udp::serve(state.clone(), i, u));
    }
    if let Some(a) = admin {
        tokio::spawn(crate::observe::admin::serve(state.clone(), a));
    }
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

    let sig = stop_signal().await;
    let open = state.counters.active.load(Relaxed);
    tracing::info!(
        "{sig}: no longer accepting; waiting up to {} s for {open} open connection(s)",
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
    Ok(state)
}
