//! Zero-copy relay with splice(2): bytes move socket -> pipe -> socket inside
//! the kernel, never through a user-space buffer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked of one splice call (and the pipe size asked for).
const CHUNK: usize = 1 << 20;

/// A non-blocking pipe used as the kernel-side buffer of one direction.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here alone.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // a larger pipe means fewer calls; the default (64 KiB) still works
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Pipe { r, w })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain splice(2) between descriptors owned by the caller; no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Which half of one direction failed: reading its source or writing its destination.
#[derive(Debug)]
pub enum Failed {
    Read(io::Error),
    Write(io::Error),
}

/// A direction with nothing to move for this long gives its pipe back (two
/// descriptors and the kernel's pipe buffer); the next bytes take a new one.
const PIPE_IDLE: Duration = Duration::from_secs(1);

/// Waits until `src` has something to read; a pipe held that long without use is dropped.
async fn readable(src: &TcpStream, pipe: &mut Option<Pipe>) -> Result<(), Failed> {
    if pipe.is_some() {
        match tokio::time::timeout(PIPE_IDLE, src.readable()).await {
            Ok(r) => return r.map_err(Failed::Read),
            Err(_) => *pipe = None,
        }
    }
    src.readable().await.map_err(Failed::Read)
}

/// Bytes read through the thread's buffer before a direction takes a pipe.
const SMALL: usize = 16 * 1024;

thread_local! {
    /// The buffer small bursts pass through: one per thread, used only
    /// between a read and the write that follows it, never across an await.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SMALL]);
}

/// Reads what `src` has (up to [`SMALL`] bytes) through the thread's buffer
/// and writes it all to `dst`; 0 at `src`'s end. What `dst` cannot take at
/// once waits in a buffer of its own.
async fn copy_some(src: &TcpStream, dst: &TcpStream) -> Result<usize, Failed> {
    loop {
        src.readable().await.map_err(Failed::Read)?;
        let got = BUF.with(|b| {
            let mut b = b.borrow_mut();
            let n = match src.try_read(&mut b[..]) {
                Ok(n) => n,
                Err(e) => return Err(e),
            };
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
        let rest = rest.map_err(Failed::Write)?;
        let mut done = 0;
        while done < rest.len() {
            dst.writable().await.map_err(Failed::Write)?;
            match dst.try_write(&rest[done..]) {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Failed::Write(e)),
            }
        }
        return Ok(n);
    }
}

/// Moves bytes from `src` to `dst` until `src` ends, then shuts down `dst`'s
/// sending half (passing the half-close on). Small bursts go through the
/// thread's buffer; a burst that fills it takes a pipe for what follows, given
/// back when the direction goes idle, so an idle or chatty relay holds only
/// its two sockets.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    base: Instant,
) -> Result<(), Failed> {
    let mut pipe: Option<Pipe> = None;
    loop {
        let (n, p) = loop {
            readable(src, &mut pipe).await?;
            let p = match pipe.take() {
                Some(p) => p,
                // no pipe: this burst goes through the thread's buffer; one
                // that fills it is bulk, and the next reads take a pipe (when
                // a descriptor is to be had)
                None => match copy_some(src, dst).await? {
                    0 => {
                        let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
                        return Ok(());
                    }
                    n => {
                        count.fetch_add(n as u64, Relaxed);
                        last.store(base.elapsed().as_millis() as u64, Relaxed);
                        if n == SMALL {
                            pipe = Pipe::new().ok();
                        }
                        continue;
                    }
                },
            };
            match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), p.w.as_raw_fd(), CHUNK)) {
                Ok(n) => break (n, p),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe = Some(p),
                Err(e) => return Err(Failed::Read(e)),
            }
        };
        if n == 0 {
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await.map_err(Failed::Write)?;
            match dst.try_io(Interest::WRITABLE, || splice(p.r.as_raw_fd(), dst.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Failed::Write(e)),
            }
        }
        pipe = Some(p);
        count.fetch_add(n as u64, Relaxed);
        last.store(base.elapsed().as_millis() as u64, Relaxed);
    }
}
