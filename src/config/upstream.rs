//! The load-balancing part of the runtime model: `[pool.NAME]` (servers,
//! balancing, queue, health checks, stickiness) and what an `http`/`https`
//! listener adds (routes, TLS, the client-identity headers, captures).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::policy::acl::Rules;
use crate::upstream::balance::Algorithm;

/// One upstream server of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Used only when no primary server is up.
    pub backup: bool,
    /// Concurrent requests sent to it (0: no limit); the rest wait in the pool's queue.
    pub maxconn: u32,
}

/// What the `hash` algorithm hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Source,
    Uri,
    Host,
    Header(HeaderName),
    Cookie(String),
}

/// `[pool.NAME.check]`: active health checks.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
}

#[derive(Clone, Debug)]
pub enum CheckKind {
    Tcp,
    /// A datagram sent; any answer (starting with `expect`, when set) is healthy.
    Udp {
        payload: Vec<u8>,
        expect: Option<Vec<u8>>,
    },
    Http {
        method: Method,
        path: String,
        host: Option<String>,
        /// Inclusive status range that counts as healthy.
        expect: (u16, u16),
    },
}

/// `[pool.NAME.stick]`.
#[derive(Clone, Debug, PartialEq)]
pub enum StickConfig {
    /// Learn the application's cookie from responses, match it on requests.
    Learn {
        cookie: String,
        size: usize,
        expire: Duration,
        key_len: usize,
    },
    /// Insert a cookie whose value is a keyed hash of the server's address.
    Insert {
        cookie: String,
        key: Vec<u8>,
        nocache: bool,
        maxidle: Option<Duration>,
        maxlife: Option<Duration>,
    },
    /// The client address, in a table.
    Source { size: usize, expire: Duration },
}

/// `[pool.NAME]`.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: Arc<str>,
    pub servers: Vec<ServerConfig>,
    pub balance: Algorithm,
    pub hash_key: HashKey,
    /// Requests waiting for a server slot (0: no limit).
    pub maxqueue: u32,
    /// How long a request waits in the queue before a 503.
    pub queue_timeout: Duration,
    /// Tries on other servers for idempotent requests that failed before any response byte.
    pub retries: u32,
    /// Passive health: failures within `fail_timeout` that take a server out for `fail_timeout`.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Count 5xx answers as failures.
    pub fail_on_5xx: bool,
    pub check: Option<CheckConfig>,
    pub stick: Option<StickConfig>,
    /// PROXY protocol header sent to the servers (1 or 2).
    pub proxy_protocol: Option<u8>,
    /// TLS to the servers.
    pub tls: Option<UpstreamTls>,
    /// Connections to the servers leave from the client's address (IP transparency).
    pub source: SourceMode,
}

/// Where connections to a pool's servers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SourceMode {
    /// This host's own address.
    #[default]
    Local,
    /// The client's address (`IP_TRANSPARENT`).
    Client,
    /// The client's address and port (UDP direct server return).
    ClientPort,
}

/// TLS from sekisho to a pool's servers.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    pub config: Arc<tokio_rustls::rustls::ClientConfig>,
    /// Sent as SNI and checked against the certificate; the server's IP address when `None`.
    pub server_name: Option<tokio_rustls::rustls::pki_types::ServerName<'static>>,
}

/// A route of an `http`/`https` listener: host and path prefix to a pool.
#[derive(Clone, Debug)]
pub struct Route {
    /// Lower case; `None` matches every host; `.example.com` matches the domain and below.
    pub host: Option<crate::policy::acl::DomainPattern>,
    pub path_prefix: String,
    pub pool: usize,
}

/// What happens to `X-Forwarded-For` on a reverse-proxied request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XffMode {
    /// Keep what a trusted client sent, add the client's address.
    Append,
    /// Replace it with the client's address.
    Replace,
    /// Leave it alone.
    Off,
}

/// The client-identity headers sent to servers.
#[derive(Clone, Debug)]
pub struct Forwarding {
    pub xff: XffMode,
    /// Clients whose `X-Forwarded-For` / `Forwarded` is kept (`append`); others' are replaced.
    pub trusted: Rules,
    pub x_forwarded_proto: bool,
    pub x_real_ip: bool,
    /// RFC 7239 `Forwarded: for=...;proto=...;host=...`.
    pub forwarded: bool,
}

/// A header captured into the log (`%hr` / `%hs`).
#[derive(Clone, Debug)]
pub struct Capture {
    pub name: HeaderName,
    pub len: usize,
}

/// The `http`/`https` parts of a listener.
#[derive(Clone, Debug)]
pub struct HttpListener {
    pub routes: Vec<Route>,
    pub default_pool: Option<usize>,
    pub forwarding: Forwarding,
    pub capture_request: Vec<Capture>,
    pub capture_response: Vec<Capture>,
    /// Cookie captured from requests (`%CC`) and responses (`%CS`): name and length.
    pub capture_cookie: Option<(String, usize)>,
    /// Accept HTTP/2 with prior knowledge on a clear-text listener.
    pub h2c: bool,
}
