//! One direction of a byte tunnel between two plain sockets. Small bursts
//! pass through the thread's buffer; a burst that fills it is bulk, and the
//! direction takes a buffer of its own for what follows: a pipe (`splice`) or
//! a user-space buffer (`copy`, `tunnel.buffer` bytes). A direction idle for [`BULK_IDLE`] gives it
//! back, so an idle or chatty tunnel holds only its two sockets.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::relay::splice::Pipe;
use crate::relay::tunnel::Method;

/// Which half of one direction failed: reading its source or writing its destination.
#[derive(Debug)]
pub enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// A direction with nothing to move for this long gives its bulk buffer back.
const BULK_IDLE: Duration = Duration::from_secs(1);

/// Bytes read through the thread's buffer before a direction takes a bulk buffer.
const SMALL: usize = 16 * 1024;

/// The buffer a direction in bulk holds.
enum Bulk {
    Pipe(Pipe),
    Buf(Box<[u8]>),
}

impl Bulk {
    /// A buffer for `method`; `None` when no pipe can be had (no descriptor
    /// left), and the direction stays on the thread's buffer.
    fn new(method: Method) -> Option<Bulk> {
        match method {
            Method::Splice => Pipe::new().ok().map(Bulk::Pipe),
            Method::Copy(size) => Some(Bulk::Buf(vec![0u8; size].into_boxed_slice())),
        }
    }
}

thread_local! {
    /// The buffer small bursts pass through: one per thread, used only
    /// between a read and the write that follows it, never across an await.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SMALL]);
}

/// Waits until `src` has something to read; a bulk buffer held that long without use is dropped.
async fn readable(src: &TcpStream, bulk: &mut Option<Bulk>) -> Result<(), Failed> {
    if bulk.is_some() {
        match tokio::time::timeout(BULK_IDLE, src.readable()).await {
            Ok(r) => return r.map_err(Failed::Read),
            Err(_) => *bulk = None,
        }
    }
    src.readable().await.map_err(Failed::Read)
}

/// Reads what `src` has (up to [`SMALL`] bytes) through the thread's buffer
/// and writes it all to `dst`; 0 at `src`'s end. What `dst` cannot take at
/// once waits in a buffer of its own.
async fn copy_some(src: &TcpStream, dst: &TcpStream) -> Result<usize, Failed> {
    loop {
        src.readable().await.map_err(Failed::Read)?;
        let got: io::Result<(usize, io::Result<Vec<u8>>)> = BUF.with(|b| {
            let mut b = b.borrow_mut();
            let n = src.try_read(&mut b[..])?;
            let sent = match dst.try_write(&b[..n]) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Ok((n, Err(e))),
            };
            Ok((n, Ok(b[sent..n].to_vec())))
        });
        let (n, rest) = match got {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Failed::Read(e)),
        };
        write_all(dst, &rest.map_err(Failed::Write)?).await?;
        return Ok(n);
    }
}

/// Writes all of `bytes` to `dst`, waiting while it is full.
async fn write_all(dst: &TcpStream, bytes: &[u8]) -> Result<(), Failed> {
    let mut done = 0;
    while done < bytes.len() {
        match dst.try_write(&bytes[done..]) {
            Ok(m) => done += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await.map_err(Failed::Write)?,
            Err(e) => return Err(Failed::Write(e)),
        }
    }
    Ok(())
}

/// Moves one read's worth from `src` to `dst` through `bulk`: the bytes
/// moved (0 at `src`'s end), or `None` when `src` had nothing after all.
async fn move_bulk(src: &TcpStream, dst: &TcpStream, bulk: &mut Bulk) -> Result<Option<usize>, Failed> {
    match bulk {
        Bulk::Buf(b) => {
            let n = match src.try_read(&mut b[..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(Failed::Read(e)),
            };
            write_all(dst, &b[..n]).await?;
            Ok(Some(n))
        }
        Bulk::Pipe(p) => {
            let n = match src.try_io(Interest::READABLE, || p.fill(src.as_raw_fd())) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(Failed::Read(e)),
            };
            let mut left = n;
            while left > 0 {
                dst.writable().await.map_err(Failed::Write)?;
                match dst.try_io(Interest::WRITABLE, || p.drain(dst.as_raw_fd(), left)) {
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(Failed::Write(e)),
                }
            }
            Ok(Some(n))
        }
    }
}

/// Moves bytes from `src` to `dst` until `src` ends, then shuts down `dst`'s
/// sending half (passing the half-close on). `count` adds up the bytes moved;
/// `last` is when bytes last moved, in milliseconds since `base`.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    method: Method,
    count: &AtomicU64,
    last: &AtomicU64,
    base: Instant,
) -> Result<(), Failed> {
    let mut bulk: Option<Bulk> = None;
    loop {
        readable(src, &mut bulk).await?;
        let n = match bulk.as_mut() {
            Some(b) => match move_bulk(src, dst, b).await? {
                Some(n) => n,
                None => continue,
            },
            None => {
                let n = copy_some(src, dst).await?;
                if n == SMALL {
                    bulk = Bulk::new(method);
                }
                n
            }
        };
        if n == 0 {
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        count.fetch_add(n as u64, Relaxed);
        last.store(base.elapsed().as_millis() as u64, Relaxed);
    }
}
