//! A byte tunnel between two plain sockets, polled by hand so that an open
//! tunnel costs little memory: its state is the two sockets, one timer and
//! a few words per direction; no waiter futures, no buffer while idle.
//!
//! Per direction, small bursts pass through the thread's buffer; a burst that
//! fills it is bulk, and the direction takes a buffer of its own for what
//! follows: a pipe (`splice`) or a user-space buffer (`copy`, `tunnel.buffer`
//! bytes). A direction that moved nothing for [`BULK_IDLE`] gives it back, so
//! an idle or chatty tunnel holds only its two sockets.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::relay::splice::Pipe;
use crate::relay::tunnel::{End, Method, Outcome};

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

/// Reads a direction makes in one poll before the other direction (and the
/// runtime's other tasks, through tokio's budget) get their turn.
const ROUNDS: usize = 16;

thread_local! {
    /// The buffer small bursts pass through: one per thread, used only
    /// between a read and the write that follows it, within one poll.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SMALL]);
}

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

/// Bytes read and not yet written.
enum Pending {
    None,
    /// What the destination could not take of a small burst: `[at..]`.
    Spill(Vec<u8>, usize),
    /// `[at..len]` of the bulk buffer.
    Buf(usize, usize),
    /// This many bytes in the pipe.
    Pipe(usize),
}

/// One direction: from `src` to `dst`.
struct Dir {
    bulk: Option<Bulk>,
    pending: Pending,
    /// Bytes written to `dst`.
    moved: u64,
    /// When bytes last moved (for giving the bulk buffer back).
    last: Instant,
    /// `src` ended and `dst`'s sending half was shut down.
    ended: bool,
}

impl Dir {
    fn new(now: Instant) -> Dir {
        Dir {
            bulk: None,
            pending: Pending::None,
            moved: 0,
            last: now,
            ended: false,
        }
    }

    /// Writes some of the pending bytes; the count written.
    fn write_pending(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let m = match (&mut self.pending, &self.bulk) {
            (Pending::Spill(v, at), _) => {
                let m = dst.try_write(&v[*at..])?;
                *at += m;
                if *at == v.len() {
                    self.pending = Pending::None;
                }
                m
            }
            (Pending::Buf(at, len), Some(Bulk::Buf(b))) => {
                let m = dst.try_write(&b[*at..*len])?;
                *at += m;
                if *at == *len {
                    self.pending = Pending::None;
                }
                m
            }
            (Pending::Pipe(left), Some(Bulk::Pipe(p))) => {
                let m = dst.try_io(Interest::WRITABLE, || p.drain(dst.as_raw_fd(), *left))?;
                *left -= m;
                if *left == 0 {
                    self.pending = Pending::None;
                }
                m
            }
            // pending bytes always sit in the bulk buffer they were read into
            _ => unreachable!("pending bytes without their buffer"),
        };
        self.moved += m as u64;
        Ok(m)
    }

    /// Reads what `src` has: 0 at its end. A small burst is written to `dst`
    /// at once, what it cannot take kept pending; bulk stays pending in its buffer.
    fn read(&mut self, src: &TcpStream, dst: &TcpStream, method: Method) -> Result<usize, Failed> {
        match &self.bulk {
            None => {
                let (n, sent) = BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    let n = src.try_read(&mut b[..]).map_err(Failed::Read)?;
                    if n == 0 {
                        return Ok((0, 0));
                    }
                    let sent = match dst.try_write(&b[..n]) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(Failed::Write(e)),
                    };
                    if sent < n {
                        self.pending = Pending::Spill(b[sent..n].to_vec(), 0);
                    }
                    Ok((n, sent))
                })?;
                self.moved += sent as u64;
                if n == SMALL {
                    self.bulk = Bulk::new(method);
                }
                Ok(n)
            }
            Some(Bulk::Buf(_)) => {
                let Some(Bulk::Buf(b)) = &mut self.bulk else {
                    unreachable!()
                };
                let n = src.try_read(b).map_err(Failed::Read)?;
                if n > 0 {
                    self.pending = Pending::Buf(0, n);
                }
                Ok(n)
            }
            Some(Bulk::Pipe(p)) => {
                let n = src
                    .try_io(Interest::READABLE, || p.fill(src.as_raw_fd()))
                    .map_err(Failed::Read)?;
                if n > 0 {
                    self.pending = Pending::Pipe(n);
                }
                Ok(n)
            }
        }
    }

    /// Moves bytes until `src` or `dst` would block, `src` ends (then
    /// `dst`'s sending half is shut down, passing the half-close on) or the
    /// direction had its turn. True in `moved` when bytes moved.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        method: Method,
        moved: &mut bool,
    ) -> Poll<Result<(), Failed>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..ROUNDS {
            while !matches!(self.pending, Pending::None) {
                ready!(dst.poll_write_ready(cx)).map_err(Failed::Write)?;
                match self.write_pending(dst) {
                    Ok(_) => *moved = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(Failed::Write(e))),
                }
            }
            ready!(src.poll_read_ready(cx)).map_err(Failed::Read)?;
            match self.read(src, dst, method) {
                Ok(0) => {
                    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
                    self.ended = true;
                    self.bulk = None;
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => *moved = true,
                Err(Failed::Read(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // its turn is over: come back after the other direction had one
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// When this direction should give its bulk buffer back, if it holds one
    /// (one that is overdue is blocked on its destination: look again later).
    fn release_at(&self, now: Instant) -> Option<Instant> {
        self.bulk.as_ref()?;
        let at = self.last + BULK_IDLE;
        Some(if at > now { at } else { now + BULK_IDLE })
    }
}

/// How [`relay_or_park`] stopped.
pub enum Relayed {
    Ended(Outcome),
    /// Nothing moved for the parking time, no bytes wait and neither side
    /// has closed: the caller may take the tunnel out of the runtime.
    Quiet {
        up: u64,
        down: u64,
        client: TcpStream,
        server: TcpStream,
        /// When bytes last moved.
        last: Instant,
    },
}

/// Relays between `client` and `server` until each side has closed its
/// half, a side fails, or nothing moved for `idle`; `initial` (what the
/// client sent past its request) goes to the server first.
pub async fn relay(client: TcpStream, server: TcpStream, initial: &[u8], idle: Duration, method: Method) -> Outcome {
    match relay_or_park(client, server, initial, Instant::now(), idle, method, None).await {
        Relayed::Ended(o) => o,
        // not asked to park: cannot happen
        Relayed::Quiet { up, down, .. } => Outcome {
            up,
            down,
            end: End::Idle,
        },
    }
}

/// [`relay`], counting idleness from `last`, and stopping once the tunnel
/// has been quiet for `park_after` when that is given.
pub async fn relay_or_park(
    client: TcpStream,
    server: TcpStream,
    initial: &[u8],
    mut last: Instant,
    idle: Duration,
    method: Method,
    park_after: Option<Duration>,
) -> Relayed {
    let start = Instant::now();
    let mut up = Dir::new(start);
    if !initial.is_empty() {
        up.pending = Pending::Spill(initial.to_vec(), 0);
    }
    let mut down = Dir::new(start);
    let mut down_first = false;
    // when to look at the tunnel again: its idle end, a bulk buffer to give
    // back, the time to park
    let wake_at = |up: &Dir, down: &Dir, last: Instant, now: Instant| {
        let park = park_after.filter(|_| !up.ended && !down.ended).map(|p| {
            let at = last + p;
            if at > now { at } else { now + p }
        });
        [up.release_at(now), down.release_at(now), park]
            .into_iter()
            .flatten()
            .fold(last + idle, Instant::min)
    };
    // the first look comes by the time to park too: a tunnel where nothing
    // ever moves is parked like one that went quiet
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at(&up, &down, last, start)));
    tokio::pin!(sleep);
    let end = std::future::poll_fn(|cx| {
        let mut moved = [false; 2];
        // alternate which direction goes first, so neither starves the other
        down_first = !down_first;
        let (r_up, r_down) = if down_first {
            let d = down.poll(cx, &server, &client, method, &mut moved[1]);
            (up.poll(cx, &client, &server, method, &mut moved[0]), d)
        } else {
            let u = up.poll(cx, &client, &server, method, &mut moved[0]);
            (u, down.poll(cx, &server, &client, method, &mut moved[1]))
        };
        match (r_up, r_down) {
            // reading from or writing to the client failed
            (Poll::Ready(Err(Failed::Read(e))), _) | (_, Poll::Ready(Err(Failed::Write(e)))) => {
                tracing::debug!("tunnel: client side: {e}");
                return Poll::Ready(Some(End::ClientError));
            }
            (Poll::Ready(Err(Failed::Write(e))), _) | (_, Poll::Ready(Err(Failed::Read(e)))) => {
                tracing::debug!("tunnel: server side: {e}");
                return Poll::Ready(Some(End::ServerError));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Some(End::Closed)),
            _ => {}
        }
        let mut moved_now = moved[0] || moved[1];
        if moved_now {
            last = Instant::now();
            for (d, m) in [(&mut up, moved[0]), (&mut down, moved[1])] {
                if m {
                    d.last = last;
                }
            }
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                // armed. Bytes that just moved (`last` is now) may call for
                // an earlier look: a bulk buffer taken, a time to park.
                // Without movement the deadline set when it last fired holds.
                if moved_now {
                    moved_now = false;
                    let t = tokio::time::Instant::from_std(wake_at(&up, &down, last, last));
                    if t < sleep.deadline() {
                        sleep.as_mut().reset(t);
                        continue;
                    }
                }
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= last + idle {
                return Poll::Ready(Some(End::Idle));
            }
            for d in [&mut up, &mut down] {
                if d.bulk.is_some() && matches!(d.pending, Pending::None) && now >= d.last + BULK_IDLE {
                    d.bulk = None;
                }
            }
            let quiet = |d: &Dir| d.bulk.is_none() && matches!(d.pending, Pending::None) && !d.ended;
            if park_after.is_some_and(|p| now >= last + p) && quiet(&up) && quiet(&down) {
                return Poll::Ready(None);
            }
            sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(wake_at(&up, &down, last, now)));
        }
    })
    .await;
    match end {
        Some(end) => Relayed::Ended(Outcome {
            up: up.moved,
            down: down.moved,
            end,
        }),
        None => Relayed::Quiet {
            up: up.moved,
            down: down.moved,
            client,
            server,
            last,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair of sockets: (the end the test holds, the end the relay gets).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// 6 MiB each way at once, one side reading only after a pause (so the
    /// relay's writes block and bytes wait in its buffers), then half-closes
    /// each way: every byte arrives in order, the counts are right and the
    /// tunnel ends as closed.
    #[test]
    fn both_ways_with_a_slow_reader_and_half_closes() {
        for method in [Method::Copy(Method::BUFFER), Method::Copy(4096), Method::Splice] {
            let rt = runtime();
            rt.block_on(async move {
                let (mut client, client_end) = pair().await;
                let (mut server, server_end) = pair().await;
                let relay = tokio::spawn(relay(client_end, server_end, b"early", Duration::from_secs(30), method));
                let up = pattern(6 << 20, 1);
                let down = pattern(6 << 20, 2);
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up_sent = up.clone();
                let down_sent = down.clone();
                let ((), (), got_up, got_down) = tokio::join!(
                    async {
                        cw.write_all(&up_sent).await.unwrap();
                        cw.shutdown().await.unwrap();
                    },
                    async {
                        sw.write_all(&down_sent).await.unwrap();
                        sw.shutdown().await.unwrap();
                    },
                    async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let mut v = Vec::new();
                        sr.read_to_end(&mut v).await.unwrap();
                        v
                    },
                    async {
                        let mut v = Vec::new();
                        cr.read_to_end(&mut v).await.unwrap();
                        v
                    }
                );
                assert_eq!(&got_up[..5], b"early", "{method:?}");
                assert!(got_up[5..] == up[..], "{method:?}: client to server intact");
                assert!(got_down == down, "{method:?}: server to client intact");
                let out = relay.await.unwrap();
                assert_eq!(out.end, End::Closed, "{method:?}");
                assert_eq!(out.up, up.len() as u64 + 5, "{method:?}");
                assert_eq!(out.down, down.len() as u64, "{method:?}");
            });
        }
    }

    /// The server stops reading for 2.5 s while bulk waits in the relay's
    /// buffer: the relay waits too (it neither spins nor gives the buffer
    /// back with bytes in it), then delivers everything. Run on a thread of
    /// its own, so that a relay spinning in its poll fails the test instead
    /// of hanging it.
    #[test]
    fn a_destination_stalled_for_seconds_is_waited_for() {
        for method in [Method::Copy(Method::BUFFER), Method::Splice] {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = runtime();
                let cpu0 = thread_cpu();
                let r = rt.block_on(async move {
                    let (mut client, client_end) = pair().await;
                    let (mut server, server_end) = pair().await;
                    let relay = tokio::spawn(relay(client_end, server_end, b"", Duration::from_secs(30), method));
                    let sent = pattern(16 << 20, 3);
                    let expect = sent.clone();
                    let writer = tokio::spawn(async move {
                        client.write_all(&sent).await.unwrap();
                        client.shutdown().await.unwrap();
                        client
                    });
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    let mut got = Vec::new();
                    server.read_to_end(&mut got).await.unwrap();
                    drop(server);
                    drop(writer.await.unwrap());
                    (got == expect, relay.await.unwrap())
                });
                let _ = tx.send((r.0, r.1, thread_cpu() - cpu0));
            });
            let (intact, out, cpu) = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{method:?}: the relay never let the stalled reader run"));
            assert!(intact, "{method:?}: bytes intact");
            assert_eq!(out.up, 16 << 20, "{method:?}");
            // moving 16 MiB takes milliseconds; a relay that kept waking
            // itself during the stall would burn most of the 2.5 s
            assert!(
                cpu < Duration::from_millis(800),
                "{method:?}: {cpu:?} of CPU while waiting"
            );
        }
    }

    /// A single-threaded runtime with I/O and timers, as a relay runs on.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Nothing moves for the idle time: the tunnel ends as idle, and a
    /// reset on one side ends it as that side's error.
    #[test]
    fn idle_and_errors_end_the_tunnel() {
        let rt = runtime();
        rt.block_on(async {
            let (_client, client_end) = pair().await;
            let (_server, server_end) = pair().await;
            let out = relay(
                client_end,
                server_end,
                b"",
                Duration::from_millis(200),
                Method::Copy(4096),
            )
            .await;
            assert_eq!(out.end, End::Idle);

            let (client, client_end) = pair().await;
            let (_server, server_end) = pair().await;
            let relay = tokio::spawn(relay(
                client_end,
                server_end,
                b"",
                Duration::from_secs(30),
                Method::Copy(4096),
            ));
            // an abortive close: RST instead of FIN
            socket2::SockRef::from(&client)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(client);
            assert_eq!(relay.await.unwrap().end, End::ClientError);
        });
    }

    /// An open tunnel's state stays small: no waiter futures, no buffer (712
    /// bytes when written; the relay built on `join!` of two readiness-future
    /// loops was 2,840).
    #[test]
    fn an_open_tunnel_is_small() {
        let rt = runtime();
        rt.block_on(async {
            let (_a, a) = pair().await;
            let (_b, b) = pair().await;
            let f = relay_or_park(a, b, b"", Instant::now(), Duration::from_secs(1), Method::Splice, None);
            let size = std::mem::size_of_val(&f);
            assert!(size <= 768, "the relay's state is {size} bytes");
        });
    }
}
