//! Byte tunnels (CONNECT): both directions relayed with large buffers until
//! each side has closed its half, or until nothing moves for the idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Relay buffer per direction.
const BUF: usize = 64 * 1024;

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

/// Relays between `client` and `server`; `initial` is what the client already
/// sent past the CONNECT request, forwarded first.
pub async fn relay(client: TcpStream, server: TcpStream, initial: &[u8], idle: Duration) -> Outcome {
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let (cr, cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    if !initial.is_empty() {
        if sw.write_all(initial).await.is_err() {
            return Outcome {
                up: 0,
                down: 0,
                end: End::ServerError,
            };
        }
        up.fetch_add(initial.len() as u64, Relaxed);
    }
    let both = async { tokio::join!(copy(cr, sw, &up, &last, base), copy(sr, cw, &down, &last, base)) };
    tokio::pin!(both);
    let end = loop {
        let since = Duration::from_millis(last.load(Relaxed));
        let deadline = tokio::time::Instant::from_std(base + since + idle);
        tokio::select! {
            (a, b) = &mut both => {
                break match (a, b) {
                    (Ok(()), Ok(())) => End::Closed,
                    (Err(Side::Read), _) | (_, Err(Side::Write)) => End::ClientError,
                    _ => End::ServerError,
                };
            }
            _ = tokio::time::sleep_until(deadline) => {
                if base.elapsed() >= Duration::from_millis(last.load(Relaxed)) + idle {
                    break End::Idle;
                }
            }
        }
    };
    Outcome {
        up: up.load(Relaxed),
        down: down.load(Relaxed),
        end,
    }
}

/// Which half of a copy failed: the read (source side) or the write.
#[derive(Debug)]
enum Side {
    Read,
    Write,
}

async fn copy(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    count: &AtomicU64,
    last: &AtomicU64,
    base: Instant,
) -> Result<(), Side> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                // half-close: pass the FIN on and keep the other direction going
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(log_err(Side::Read, e)),
        };
        w.write_all(&buf[..n]).await.map_err(|e| log_err(Side::Write, e))?;
        count.fetch_add(n as u64, Relaxed);
        last.store(base.elapsed().as_millis() as u64, Relaxed);
    }
}

fn log_err(side: Side, e: io::Error) -> Side {
    tracing::debug!("tunnel {side:?} error: {e}");
    side
}
