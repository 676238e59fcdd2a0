//! Configuration: the TOML file schema turned into a validated runtime model.
//!
//! [`load_file`] / [`load_str`] read a file, check every key, and return either
//! a [`Config`] or [`Diagnostics`] listing every problem with its line and
//! column. Nothing in the rest of the daemon reads TOML.

mod diag;
pub mod egress;
mod load;
pub mod upstream;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

pub use diag::{Diag, Diagnostics, line_col};
pub use load::schema;

use crate::observe::format::LogFormat;
use crate::policy::acl::{Acl, Rules};

/// The configuration used by `sekisho run` when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// The validated runtime configuration.
pub struct Config {
    /// Name shown on error pages and in `Via`.
    pub visible_hostname: String,
    pub timeouts: Timeouts,
    pub resolver: ResolverConfig,
    /// Every ACL, built-ins first; rules refer to them by index.
    pub acls: Arc<[Acl]>,
    pub http: HttpOptions,
    /// How CONNECT tunnel and `tcp` listener bytes are moved.
    pub tunnel_relay: crate::relay::tunnel::Method,
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub access_logs: Vec<AccessLogConfig>,
    /// Proxy authentication, when a `[auth]` scheme is configured.
    pub auth: Option<Arc<crate::policy::auth::Authenticator>>,
    /// The user (and group) to run as after binding the listeners.
    pub run_as: Option<RunAs>,
    /// Outgoing addresses, parents, uplinks, the PAC file.
    pub egress: egress::Egress,
    /// `[pool.NAME]`: server pools of the load balancer.
    pub pools: Vec<upstream::PoolConfig>,
    /// Where the daemon writes its process id (for `sekisho reload`).
    pub pid_file: Option<PathBuf>,
    /// The control socket (`sekisho reload`, binary upgrade).
    pub control_socket: Option<PathBuf>,
    /// Connections accepted at once over all listeners (0: no limit).
    pub maxconn: u32,
    /// Threads that serve connections (0: one per CPU sekisho may run on);
    /// with one, the runtime is single-threaded.
    pub threads: usize,
    /// The run-time side of this configuration: its generation number, its
    /// pools' live state, and the signal that it was replaced.
    pub live: Live,
}

/// What a configuration carries at run time, set up when it is installed.
pub struct Live {
    /// 1 for the configuration read at start, one more for each reload.
    pub generation: u64,
    /// The load balancer's pools at run time, by config index.
    pub backends: Vec<Arc<crate::upstream::backend::Backend>>,
    /// Becomes `true` when a newer configuration (or the shutdown) replaced
    /// this one: its keep-alive connections close after their current
    /// request, its health checks stop.
    pub retired: tokio::sync::watch::Sender<bool>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            generation: 0,
            backends: Vec::new(),
            retired: tokio::sync::watch::channel(false).0,
        }
    }
}

/// `user` / `group`: who the daemon becomes after binding its sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
}

/// Every timeout the daemon applies.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Per address attempt when connecting upstream.
    pub connect: Duration,
    /// For a client to send a complete request header block.
    pub client_header: Duration,
    /// For a keep-alive client connection to sit idle between requests.
    pub client_idle: Duration,
    /// From sending a request upstream to the response header block.
    pub server_response: Duration,
    /// For a tunnel with no byte in either direction.
    pub tunnel_idle: Duration,
    /// For in-flight transactions to finish after SIGTERM/SIGINT.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            client_header: Duration::from_secs(30),
            client_idle: Duration::from_secs(60),
            server_response: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(600),
            shutdown: Duration::from_secs(30),
        }
    }
}

/// Name resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolverConfig {
    /// Static names (lower case), consulted before DNS.
    pub hosts: HashMap<String, Vec<IpAddr>>,
    /// Name servers; `None` uses the system's `/etc/resolv.conf`.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Entries kept in the DNS cache.
    pub cache_size: usize,
    /// Per DNS query.
    pub timeout: Duration,
}

/// What to do with `X-Forwarded-For` (Squid's `forwarded_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedFor {
    /// Append the client's address.
    On,
    /// Append `unknown`.
    Off,
    /// Remove the header.
    Delete,
    /// Pass it on untouched.
    Transparent,
}

/// How HTTP requests are rewritten on their way out.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Add a `Via` header naming `visible_hostname`.
    pub via: bool,
    pub forwarded_for: ForwardedFor,
    /// Request headers removed before forwarding.
    pub request_header_delete: Vec<HeaderName>,
    /// The `Via` entry this proxy adds (`1.1 visible_hostname`), when `via` is on.
    pub via_value: Option<http::HeaderValue>,
    /// The `anonymous` switch: changes the defaults of the keys above.
    pub anonymous: bool,
    /// Largest request header block read from a client, in bytes (431 beyond).
    pub max_header_size: usize,
    /// Most header fields in a client's request (431 beyond).
    pub max_headers: usize,
}

/// The admin HTTP server (`/healthz`, `/stats`, `/stats.json`, `/metrics`,
/// the operator actions, the PAC file).
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub access: Rules,
    /// The bearer token operator actions need; `None`: actions are refused.
    pub actions_token: Option<crate::observe::actions::Token>,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An HTTP forward proxy (absolute-form requests and CONNECT).
    Forward,
    /// A reverse proxy / load balancer for HTTP.
    Http,
    /// The same behind TLS termination.
    Https,
    /// TCP connections balanced over a pool (optionally behind TLS termination).
    Tcp,
    /// UDP datagrams balanced over a pool, in sessions per client address and port.
    Udp,
}

impl Mode {
    /// The name `mode` takes in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::Http => "http",
            Mode::Https => "https",
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
        }
    }
}

/// The options of a `udp` listener.
#[derive(Clone, Copy, Debug)]
pub struct UdpOptions {
    /// Datagrams expected back per datagram sent (`None`: any number, `Some(0)`: none).
    pub responses: Option<u32>,
    /// Wait for an answer, and idle time after which a session ends.
    pub timeout: Duration,
    /// Sessions kept at once; datagrams of new clients beyond it are dropped (and counted).
    pub max_sessions: usize,
}

/// One listening socket.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub mode: Mode,
    pub access: Rules,
    /// Whether (and from whom) a PROXY protocol header is expected.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// Routes, forwarding headers and captures of `http`/`https` listeners.
    pub http: Option<Arc<upstream::HttpListener>>,
    /// TLS termination of `https` listeners (and `tcp` ones with `[listener.tls]`).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The pool a `tcp` or `udp` listener balances over.
    pub tcp_pool: Option<usize>,
    /// `udp` listeners: responses, timeout, session bound.
    pub udp: Option<UdpOptions>,
    /// Connections this listener serves at once (0: no limit); more wait in the backlog.
    pub maxconn: u32,
    /// Connections one client address may hold open at once (0: no limit).
    pub maxconn_per_source: u32,
    /// Live counters, kept across reloads for a listener of the same name.
    pub stats: Arc<crate::observe::stats::ListenerStats>,
}

/// `[listener.proxy_protocol]`: the PROXY protocol (v1 and v2) in front of the listener.
#[derive(Clone, Debug)]
pub struct ProxyProtocolConfig {
    /// A connection from a trusted source without a header is refused.
    pub require: bool,
    /// Sources whose header is believed (rules of `src`-type ACLs).
    pub trusted: Rules,
    /// For the header to arrive.
    pub timeout: Duration,
}

/// Where an access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
    Syslog(crate::observe::syslog::SyslogConfig),
}

/// One access-log output.
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub format: Arc<LogFormat>,
    /// Records queued for the writer before new ones are dropped (and counted).
    pub queue_size: usize,
}

/// The pools a listener sends to: its routes and default pool (`http`,
/// `https`), or its one pool (`tcp`, `udp`).
pub fn pools_of(http: Option<&upstream::HttpListener>, pool: Option<usize>) -> Vec<usize> {
    match (http, pool) {
        (Some(h), _) => h.routes.iter().map(|r| r.pool).chain(h.default_pool).collect(),
        (None, Some(p)) => vec![p],
        _ => Vec::new(),
    }
}

impl ListenerConfig {
    /// The pools this listener sends to.
    pub fn pools(&self) -> Vec<usize> {
        pools_of(self.http.as_deref(), self.tcp_pool)
    }
}

/// Reads and validates a configuration file.
pub fn load_file(path: &std::path::Path) -> Result<Config, Diagnostics> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&name, &src),
        Err(e) => Err(Diagnostics {
            file: name,
            source: String::new(),
            items: vec![Diag {
                span: 0..0,
                message: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// Validates configuration text; `name` is used in error messages.
pub fn load_str(name: &str, src: &str) -> Result<Config, Diagnostics> {
    load::load(src).map_err(|items| {
        let mut items = items;
        items.sort_by_key(|d| d.span.start);
        Diagnostics {
            file: name.to_string(),
            source: src.to_string(),
            items,
        }
    })
}

/// The embedded default configuration, validated.
pub fn embedded_default() -> Config {
    match load_str("<embedded default>", EMBEDDED_DEFAULT) {
        Ok(c) => c,
        Err(d) => panic!("the embedded default configuration is invalid:\n{d}"),
    }
}
