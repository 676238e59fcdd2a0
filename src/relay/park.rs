//! Parked tunnels: a tunnel idle for a while leaves the runtime. Its two
//! sockets go to one epoll set shared by every parked tunnel, its state into
//! one table, and its task ends; the first event on either socket (bytes, a
//! close, an error) or its idle deadline gives it back to a new task. An
//! idle tunnel then costs its table entry (a few hundred bytes) instead of a
//! task, its futures and the runtime's registration of two sockets.

use std::io;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tokio::io::unix::AsyncFd;

/// A tunnel taken out of the runtime.
pub struct Parked<T> {
    pub client: StdTcpStream,
    pub server: StdTcpStream,
    /// When it ends as idle unless bytes move first.
    pub deadline: Instant,
    pub state: T,
}

struct Slot<T> {
    /// Told apart from the slot's earlier tenants: an event for one of them
    /// that is still in flight must not wake this one.
    generation: u32,
    parked: Option<Parked<T>>,
}

/// The table of parked tunnels and their epoll set.
pub struct Lot<T> {
    epoll: AsyncFd<OwnedFd>,
    slots: Mutex<Table<T>>,
    /// Tunnels parked since the last look (for giving freed memory back).
    parked_since: AtomicU64,
    /// False once [`Lot::run`] has stopped: nothing would wake a tunnel then.
    running: AtomicBool,
    /// What deadlines count from.
    base: Instant,
}

struct Table<T> {
    slots: Vec<Slot<T>>,
    /// Each slot's deadline in milliseconds since `base` (`u64::MAX` when
    /// empty): the expiry sweep reads 8 bytes per slot, not the slots.
    deadlines: Vec<u64>,
    free: Vec<u32>,
    len: usize,
}

/// Why a parked tunnel comes back.
pub enum Back<T> {
    /// Something happened on one of its sockets.
    Woken(Parked<T>),
    /// Nothing happened before its deadline.
    Expired(Parked<T>),
}

fn key(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl<T> Lot<T> {
    /// A new, empty lot; needs a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Lot<T>> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and is owned here alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd is a valid descriptor that stays open and the
        // same for as long as the AsyncFd owns it.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Lot {
            epoll,
            slots: Mutex::new(Table {
                slots: Vec::new(),
                deadlines: Vec::new(),
                free: Vec::new(),
                len: 0,
            }),
            parked_since: AtomicU64::new(0),
            running: AtomicBool::new(true),
            base: Instant::now(),
        })
    }

    /// Tunnels parked now.
    pub fn len(&self) -> usize {
        self.table().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ctl(&self, op: libc::c_int, fd: &StdTcpStream, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: data,
        };
        // SAFETY: epoll_ctl on descriptors owned by this lot and the tunnel.
        if unsafe { libc::epoll_ctl(self.epoll.get_ref().as_raw_fd(), op, fd.as_raw_fd(), &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Parks a tunnel; it comes back through [`Lot::run`]. On failure (the
    /// kernel refused to watch a socket) the tunnel is handed back.
    pub fn park(&self, p: Parked<T>) -> Result<(), Parked<T>> {
        let mut t = self.table();
        // read under the lock: `hand_all_back` stops the lot under it too
        if !self.running.load(Relaxed) {
            return Err(p);
        }
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                t.slots.push(Slot {
                    generation: 0,
                    parked: None,
                });
                t.deadlines.push(u64::MAX);
                (t.slots.len() - 1) as u32
            }
        };
        let slot = &mut t.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let k = key(index, slot.generation);
        // watched while the table is locked: an event cannot overtake the entry
        let added = self.ctl(libc::EPOLL_CTL_ADD, &p.client, k).and_then(|()| {
            self.ctl(libc::EPOLL_CTL_ADD, &p.server, k).inspect_err(|_| {
                let _ = self.ctl(libc::EPOLL_CTL_DEL, &p.client, 0);
            })
        });
        if added.is_err() {
            t.free.push(index);
            return Err(p);
        }
        t.deadlines[index as usize] = p.deadline.saturating_duration_since(self.base).as_millis() as u64;
        t.slots[index as usize].parked = Some(p);
        t.len += 1;
        self.parked_since.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The table; a panic elsewhere while it was held leaves it consistent
    /// (every change is one step), so a poisoned lock is taken as it is.
    fn table(&self) -> std::sync::MutexGuard<'_, Table<T>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops parking and hands every parked tunnel back as woken.
    fn hand_all_back(&self, back: &impl Fn(Back<T>)) {
        let all: Vec<Parked<T>> = {
            let mut t = self.table();
            self.running.store(false, Relaxed);
            (0..t.slots.len() as u32)
                .filter_map(|i| Self::take(&mut t, self, i, None))
                .collect()
        };
        for p in all {
            back(Back::Woken(p));
        }
    }

    /// Takes a tunnel out of the table and its sockets out of the epoll set.
    fn take(t: &mut Table<T>, lot: &Lot<T>, index: u32, generation: Option<u32>) -> Option<Parked<T>> {
        let slot = t.slots.get_mut(index as usize)?;
        if generation.is_some_and(|g| g != slot.generation) {
            return None;
        }
        let p = slot.parked.take()?;
        t.deadlines[index as usize] = u64::MAX;
        let _ = lot.ctl(libc::EPOLL_CTL_DEL, &p.client, 0);
        let _ = lot.ctl(libc::EPOLL_CTL_DEL, &p.server, 0);
        t.free.push(index);
        t.len -= 1;
        Some(p)
    }

    /// Hands every tunnel that is woken or expires to `back`, for ever.
    /// Memory freed by parking is given back to the system once parking
    /// pauses (glibc keeps freed heap pages otherwise).
    pub async fn run(&self, back: impl Fn(Back<T>)) {
        /// Marks the lot stopped however `run` ends.
        struct Stopped<'a>(&'a AtomicBool);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                self.0.store(false, Relaxed);
            }
        }
        let _stopped = Stopped(&self.running);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut last_seen = 0;
        let mut trimmed = 0;
        loop {
            tokio::select! {
                guard = self.epoll.readable() => {
                    let Ok(mut guard) = guard else {
                        tracing::error!("parked tunnels: the epoll set failed; no longer parking");
                        self.hand_all_back(&back);
                        return;
                    };
                    loop {
                        let got = guard.try_io(|fd| {
                            // SAFETY: epoll_wait fills at most `events.len()` entries.
                            let n = unsafe {
                                libc::epoll_wait(fd.get_ref().as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, 0)
                            };
                            match n {
                                n if n < 0 => Err(io::Error::last_os_error()),
                                0 => Err(io::ErrorKind::WouldBlock.into()),
                                n => Ok(n as usize),
                            }
                        });
                        let n = match got {
                            Ok(Ok(n)) => n,
                            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Ok(Err(e)) => {
                                tracing::error!("parked tunnels: epoll_wait: {e}; no longer parking");
                                self.hand_all_back(&back);
                                return;
                            }
                            Err(_would_block) => break,
                        };
                        let woken: Vec<Parked<T>> = {
                            let mut t = self.table();
                            events[..n]
                                .iter()
                                .filter_map(|e| {
                                    let data = e.u64;
                                    Self::take(&mut t, self, data as u32, Some((data >> 32) as u32))
                                })
                                .collect()
                        };
                        for p in woken {
                            back(Back::Woken(p));
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = self.base.elapsed().as_millis() as u64;
                    let expired: Vec<Parked<T>> = {
                        let mut t = self.table();
                        let due: Vec<u32> = t
                            .deadlines
                            .iter()
                            .enumerate()
                            .filter(|&(_, &d)| d <= now)
                            .map(|(i, _)| i as u32)
                            .collect();
                        due.into_iter().filter_map(|i| Self::take(&mut t, self, i, None)).collect()
                    };
                    for p in expired {
                        back(Back::Expired(p));
                    }
                    let seen = self.parked_since.load(Relaxed);
                    if seen != last_seen {
                        // still parking: look again at the next tick
                        last_seen = seen;
                    } else if seen != trimmed {
                        trimmed = seen;
                        // each runtime thread gives its free pages back when it is next idle
                        crate::runtime::release_memory();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// A connected pair: (the end the test holds, the end that is parked).
    fn pair() -> (StdTcpStream, StdTcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = StdTcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, &'static str)>,
    ) -> (&'static str, &'static str) {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[test]
    fn parked_tunnels_come_back_on_an_event_or_at_their_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lot = std::sync::Arc::new(Lot::<&'static str>::new().unwrap());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let runner = lot.clone();
            tokio::spawn(async move {
                runner
                    .run(move |b| {
                        let _ = tx.send(match b {
                            Back::Woken(p) => ("woken", p.state),
                            Back::Expired(p) => ("expired", p.state),
                        });
                    })
                    .await
            });
            let far = Instant::now() + Duration::from_secs(60);
            let (mut a_client, a) = pair();
            let (_a_server, a2) = pair();
            let (_b_client, b) = pair();
            let (b_server, b2) = pair();
            let (_c_client, c) = pair();
            let (_c_server, c2) = pair();
            for (client, server, deadline, state) in [
                (a, a2, far, "a"),
                (b, b2, far, "b"),
                (c, c2, Instant::now() + Duration::from_millis(300), "c"),
            ] {
                assert!(
                    lot.park(Parked {
                        client,
                        server,
                        deadline,
                        state
                    })
                    .is_ok()
                );
            }
            assert_eq!(lot.len(), 3);
            // bytes on a client socket, a close on a server socket, a deadline
            a_client.write_all(b"x").unwrap();
            assert_eq!(next(&mut rx).await, ("woken", "a"));
            b_server.shutdown(std::net::Shutdown::Both).unwrap();
            assert_eq!(next(&mut rx).await, ("woken", "b"));
            assert_eq!(next(&mut rx).await, ("expired", "c"));
            assert_eq!(lot.len(), 0);
            // a slot taken again is a new tenant: an old event does not wake it
            let (mut d_client, d) = pair();
            let (_d_server, d2) = pair();
            assert!(
                lot.park(Parked {
                    client: d,
                    server: d2,
                    deadline: far,
                    state: "d"
                })
                .is_ok()
            );
            assert_eq!(lot.len(), 1);
            assert!(
                tokio::time::timeout(Duration::from_millis(300), rx.recv())
                    .await
                    .is_err()
            );
            d_client.write_all(b"y").unwrap();
            assert_eq!(next(&mut rx).await, ("woken", "d"));
        });
    }
}
