//! Connecting to an upstream address, and trying the next one when it fails.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

use crate::config::egress::Choice;
use crate::egress::outgoing::Egress;

/// Why one connection attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Refused, unreachable, reset: the address answered no.
    Refused(io::Error),
    /// Nothing answered within the connect timeout.
    Timeout,
    /// The socket could not be set up as the outgoing rule asks (a source
    /// address not on this host, a missing interface, no privilege for a mark).
    Local(String),
}

/// One failed attempt.
#[derive(Debug)]
pub struct AttemptError {
    pub addr: SocketAddr,
    pub failure: Failure,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Refused(e) => write!(f, "{}: {e}", self.addr),
            Failure::Timeout => write!(f, "{}: no answer (connect timeout)", self.addr),
            Failure::Local(m) => write!(f, "{}: {m}", self.addr),
        }
    }
}

/// Connects to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, AttemptError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(AttemptError {
            addr,
            failure: Failure::Refused(e),
        }),
        Err(_) => Err(AttemptError {
            addr,
            failure: Failure::Timeout,
        }),
    }
}

/// Connects to `addr` with the socket settings of an outgoing rule.
pub async fn connect_via(addr: SocketAddr, via: &Egress<'_>, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let Some(choice) = via.choice else {
        return connect(addr, timeout).await;
    };
    let local = |failure: String| AttemptError {
        addr,
        failure: Failure::Local(failure),
    };
    let sock = prepare(addr, choice, via.source).map_err(local)?;
    connect_socket(sock, addr, timeout).await
}

/// Connects a prepared non-blocking socket within `timeout`.
async fn connect_socket(sock: Socket, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(AttemptError {
            addr,
            failure: Failure::Refused(e),
        }),
        Err(_) => Err(AttemptError {
            addr,
            failure: Failure::Timeout,
        }),
    }
}

/// Connects to `addr` from `src`, an address that need not be this host's
/// (`IP_TRANSPARENT`: the client's address for a transparent load balancer).
pub async fn connect_from(addr: SocketAddr, src: SocketAddr, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let local = |failure: String| AttemptError {
        addr,
        failure: Failure::Local(failure),
    };
    let sock = transparent_socket(src, Type::STREAM, Protocol::TCP).map_err(local)?;
    connect_socket(sock, addr, timeout).await
}

/// A non-blocking socket bound to `src` with `IP_TRANSPARENT` (TCP or UDP).
pub fn transparent_socket(src: SocketAddr, ty: Type, proto: Protocol) -> Result<Socket, String> {
    let sock =
        Socket::new(Domain::for_address(src), ty, Some(proto)).map_err(|e| format!("cannot create a socket: {e}"))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
    let r = if src.is_ipv4() {
        sock.set_ip_transparent_v4(true)
    } else {
        sock.set_ip_transparent_v6(true)
    };
    r.map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            " (sending from the client's address needs CAP_NET_ADMIN or CAP_NET_RAW)"
        } else {
            ""
        };
        format!("cannot set IP_TRANSPARENT: {e}{hint}")
    })?;
    let _ = sock.set_reuse_address(true);
    sock.bind(&src.into())
        .map_err(|e| format!("cannot bind the client's address {src}: {e}"))?;
    Ok(sock)
}

/// Whether this process may use `IP_TRANSPARENT` (CAP_NET_ADMIN), for the
/// start-up check of transparent pools.
pub fn can_be_transparent(v6: bool) -> Result<(), std::io::Error> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if v6 {
        sock.set_ip_transparent_v6(true)
    } else {
        sock.set_ip_transparent_v4(true)
    }
}

/// A non-blocking socket with the mark, device and source address set.
fn prepare(addr: SocketAddr, choice: &Choice, source: Option<IpAddr>) -> Result<Socket, String> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("cannot create a socket: {e}"))?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("cannot make the socket non-blocking: {e}"))?;
    if let Some(m) = choice.mark {
        sock.set_mark(m).map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::EPERM) {
                " (setting a mark needs CAP_NET_ADMIN)"
            } else {
                ""
            };
            format!("cannot set firewall mark {m:#x}: {e}{hint}")
        })?;
    }
    if let Some(dev) = &choice.interface {
        sock.bind_device(Some(dev.as_bytes())).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::ENODEV) => " (no such interface on this host)",
                Some(libc::EPERM) => " (binding to a device needs CAP_NET_RAW)",
                _ => "",
            };
            format!("cannot bind to interface `{dev}`: {e}{hint}")
        })?;
    }
    if let Some(src) = source {
        if choice.freebind {
            let r = if src.is_ipv4() {
                sock.set_freebind_v4(true)
            } else {
                sock.set_freebind_v6(true)
            };
            r.map_err(|e| format!("cannot set IP_FREEBIND: {e}"))?;
        }
        sock.bind(&SocketAddr::new(src, 0).into()).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                format!(
                    "source address {src} is not configured on this host (add it to an interface, or set `freebind = true` on the outgoing rule)"
                )
            } else {
                format!("cannot bind source address {src}: {e}")
            }
        })?;
    }
    Ok(sock)
}

/// Tries each address in order; the first that connects wins. Every failure is
/// returned when none does.
pub async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr, Vec<AttemptError>), Vec<AttemptError>> {
    let mut errors = Vec::new();
    for &addr in addrs {
        match connect(addr, timeout).await {
            Ok(s) => return Ok((s, addr, errors)),
            Err(e) => {
                tracing::debug!("connect failed, trying the next address: {e}");
                errors.push(e);
            }
        }
    }
    Err(errors)
}

/// True when every attempt timed out (a gateway timeout rather than a bad gateway).
pub fn all_timed_out(errors: &[AttemptError]) -> bool {
    !errors.is_empty() && errors.iter().all(|e| matches!(e.failure, Failure::Timeout))
}
