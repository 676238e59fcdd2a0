//! Connecting to an upstream address, and trying the next one when it fails.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why one connection attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Refused, unreachable, reset: the address answered no.
    Refused(io::Error),
    /// Nothing answered within the connect timeout.
    Timeout,
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
