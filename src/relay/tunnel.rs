//! Byte tunnels (CONNECT, `tcp` listeners): both directions relayed until
//! each side has closed its half, or until nothing moves for the idle
//! timeout. Between two plain sockets bulk bytes move through user-space
//! buffers (`copy`, the default) or through pipes with splice(2).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::relay::pump::{self, Failed};

/// Relay buffer per direction between streams that are not plain sockets.
const BUF: usize = 32 * 1024;

/// How a tunnel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their half.
    Closed,
    /// An error on the client side (reset, broken pipe).
    ClientError,
    /// An error on the server side.
    ServerError,
    /// No byte in either direction for the idle timeout.
    Idle,
}

/// Byte counts and the way the tunnel ended.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
    pub end: End,
}

/// How tunnel bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Kernel to kernel through a pipe (splice(2)).
    Splice,
    /// Read into and write from a user-space buffer of this many bytes per
    /// bulk direction (the default).
    Copy(usize),
}

impl Method {
    /// The `copy` buffer unless configured. Measured on loopback (BENCHMARKS.md):
    /// a CONNECT download reached ~80 % of a direct one with 32 KiB and 90-94 %
    /// with 256-512 KiB; an iperf3 stream moved about as much with 32 and
    /// 256 KiB and ~7 % less with 1 MiB; 64 KiB was the slowest of all.
    pub const BUFFER: usize = 256 * 1024;
}

/// Relays between `client` and `server`; `initial` is what the client already
/// sent past the CONNECT request, forwarded first.
pub async fn relay(client: TcpStream, server: TcpStream, initial: &[u8], idle: Duration, method: Method) -> Outcome {
    pump::relay(client, server, initial, idle, method).await
}

/// Runs both directions (client to server, server to client) until they end
/// or nothing moved for `idle`.
async fn watch_idle<F>(both: F, last: &AtomicU64, base: Instant, idle: Duration) -> End
where
    F: std::future::Future<Output = (Result<(), Failed>, Result<(), Failed>)>,
{
    tokio::pin!(both);
    loop {
        let since = Duration::from_millis(last.load(Relaxed));
        let deadline = tokio::time::Instant::from_std(base + since + idle);
        tokio::select! {
            r = &mut both => {
                return match r {
                    (Ok(()), Ok(())) => End::Closed,
                    // reading from or writing to the client failed
                    (Err(Failed::Read(e)), _) | (_, Err(Failed::Write(e))) => {
                        tracing::debug!("tunnel: client side: {e}");
                        End::ClientError
                    }
                    (Err(Failed::Write(e)), _) | (_, Err(Failed::Read(e))) => {
                        tracing::debug!("tunnel: server side: {e}");
                        End::ServerError
                    }
                };
            }
            _ = tokio::time::sleep_until(deadline) => {
                if base.elapsed() >= Duration::from_millis(last.load(Relaxed)) + idle {
                    return End::Idle;
                }
            }
        }
    }
}

/// Relays between any two byte streams (a TLS connection to a parent proxy,
/// an upgraded WebSocket connection), through user-space buffers.
pub async fn relay_io<C: AsyncRead + AsyncWrite + Unpin, S: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    mut server: S,
    initial: &[u8],
    idle: Duration,
) -> Outcome {
    if !initial.is_empty() && server.write_all(initial).await.is_err() {
        return Outcome {
            up: 0,
            down: 0,
            end: End::ServerError,
        };
    }
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let up = AtomicU64::new(initial.len() as u64);
    let down = AtomicU64::new(0);
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let both = async { tokio::join!(copy(cr, sw, &up, &last, base), copy(sr, cw, &down, &last, base)) };
    let end = watch_idle(both, &last, base, idle).await;
    Outcome {
        up: up.load(Relaxed),
        down: down.load(Relaxed),
        end,
    }
}

async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    last: &AtomicU64,
    base: Instant,
) -> Result<(), Failed> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                // half-close: pass the FIN on and keep the other direction going
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(Failed::Read(e)),
        };
        w.write_all(&buf[..n]).await.map_err(Failed::Write)?;
        count.fetch_add(n as u64, Relaxed);
        last.store(base.elapsed().as_millis() as u64, Relaxed);
    }
}
