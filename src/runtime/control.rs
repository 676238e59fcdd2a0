//! The control socket: a Unix stream socket (mode 0600) on which a running
//! sekisho takes one-line commands.
//!
//! - `reload`: reload the configuration; the answer is `ok generation N` or
//!   `error: ...` with the reason (what `sekisho reload` prints).
//! - `takeover`: a binary upgrade. The answer lists the listening sockets
//!   (`KIND ADDRESS` lines, then `end N`), followed by one byte that carries
//!   their descriptors (`SCM_RIGHTS`). The new process starts on them and
//!   writes `ready`; only then does this process stop accepting and drain.
//!   Both accept on the same sockets meanwhile, so no connection is refused.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{Kind, Sock, State};

/// Descriptors passed in one message at most (the kernel's `SCM_MAX_FD` is 253).
const MAX_FDS: usize = 250;

/// Binds the control socket. A socket file left by a process that is gone is
/// replaced; one a running sekisho answers on is an error, unless `replace`
/// (this process is taking over from it).
pub fn bind(path: &Path, replace: bool) -> Result<tokio::net::UnixListener, String> {
    let p = path.display();
    if path.exists() {
        if !replace && StdStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {p}: another sekisho is running on it (use `sekisho run --takeover {p}` to replace it)"
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("control socket {p}: cannot remove the old one: {e}"))?;
    }
    let l = StdListener::bind(path).map_err(|e| format!("cannot bind the control socket {p}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control socket {p}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("control socket {p}: {e}"))?;
    tokio::net::UnixListener::from_std(l).map_err(|e| format!("control socket {p}: {e}"))
}

/// Answers commands until shutdown; `taken` becomes true once a new process
/// has taken the sockets over and is ready.
pub async fn serve(state: Arc<State>, listener: tokio::net::UnixListener, taken: watch::Sender<bool>) {
    let taken = Arc::new(taken);
    let mut stop = state.shutdown_signal();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let st = state.clone();
        let taken = taken.clone();
        tokio::spawn(async move {
            if let Err(e) = command(st, stream, taken).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn command(state: Arc<State>, stream: tokio::net::UnixStream, taken: Arc<watch::Sender<bool>>) -> io::Result<()> {
    let std = stream.into_std()?;
    std.set_nonblocking(false)?;
    std.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    let mut reader = BufReader::new(std.try_clone()?);
    let std2 = std.try_clone()?;
    let cmd = tokio::task::spawn_blocking(move || reader.by_ref().take(256).read_line(&mut line).map(|_| line))
        .await
        .map_err(io::Error::other)??;
    let mut out = std2;
    match cmd.trim() {
        "reload" => {
            let answer = match state.reload().await {
                Ok(g) => format!("ok generation {g}\n"),
                Err(e) => format!("error: {e}\n"),
            };
            tokio::task::spawn_blocking(move || out.write_all(answer.as_bytes()))
                .await
                .map_err(io::Error::other)??;
        }
        "takeover" => {
            let socks = state.listening();
            let ready = tokio::task::spawn_blocking(move || hand_over(&mut out, &socks))
                .await
                .map_err(io::Error::other)??;
            if ready {
                tracing::info!("binary upgrade: the new process is ready; this one stops accepting and drains");
                taken.send_replace(true);
            } else {
                tracing::warn!("binary upgrade: the new process went away before it was ready; carrying on");
            }
        }
        other => {
            let answer = format!(
                "error: unknown command `{}` (reload, takeover)\n",
                other.escape_default()
            );
            tokio::task::spawn_blocking(move || out.write_all(answer.as_bytes()))
                .await
                .map_err(io::Error::other)??;
        }
    }
    Ok(())
}

/// Sends the socket list and descriptors, then waits (a minute at most) for `ready`.
fn hand_over(out: &mut StdStream, socks: &[(Kind, SocketAddr, RawFd)]) -> io::Result<bool> {
    if socks.len() > MAX_FDS {
        out.write_all(format!("error: {} sockets is more than one message carries\n", socks.len()).as_bytes())?;
        return Ok(false);
    }
    let mut text = String::new();
    for (k, a, _) in socks {
        text.push_str(&format!("{} {a}\n", k.name()));
    }
    text.push_str(&format!("end {}\n", socks.len()));
    out.write_all(text.as_bytes())?;
    let fds: Vec<RawFd> = socks.iter().map(|s| s.2).collect();
    send_fds(out.as_raw_fd(), &fds)?;
    out.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = String::new();
    BufReader::new(out.try_clone()?).take(64).read_line(&mut line)?;
    Ok(line.trim() == "ready")
}

/// The connection to the process being replaced, kept until this one is ready.
static TAKING_OVER: Mutex<Option<StdStream>> = Mutex::new(None);

/// Asks the sekisho behind `path` for its listening sockets.
pub async fn take_over(path: &Path) -> Result<Vec<(Kind, SocketAddr, Sock)>, String> {
    let p = path.to_path_buf();
    let got = tokio::task::spawn_blocking(move || receive(&p))
        .await
        .map_err(|e| e.to_string())?;
    let (stream, list) = got.map_err(|e| format!("takeover through {}: {e}", path.display()))?;
    if let Ok(mut t) = TAKING_OVER.lock() {
        *t = Some(stream);
    }
    let mut out = Vec::new();
    for (kind, addr, fd) in list {
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let sock = unsafe {
            match kind {
                Kind::Udp => {
                    let s = std::net::UdpSocket::from_raw_fd(fd);
                    s.set_nonblocking(true)
                        .and_then(|_| tokio::net::UdpSocket::from_std(s))
                        .map(|s| Sock::Udp(Arc::new(s)))
                }
                Kind::Tcp | Kind::Admin => {
                    let s = std::net::TcpListener::from_raw_fd(fd);
                    s.set_nonblocking(true)
                        .and_then(|_| tokio::net::TcpListener::from_std(s))
                        .map(|s| Sock::Tcp(Arc::new(s)))
                }
            }
        }
        .map_err(|e| format!("takeover: socket {addr}: {e}"))?;
        out.push((kind, addr, sock));
    }
    tracing::info!("took over {} listening socket(s) from {}", out.len(), path.display());
    Ok(out)
}

/// A listening socket as the control protocol names it: kind, address, descriptor.
pub type Listed = (Kind, SocketAddr, RawFd);

fn receive(path: &Path) -> io::Result<(StdStream, Vec<Listed>)> {
    let mut s = StdStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"takeover\n")?;
    // read the list byte by byte: the descriptors travel with the byte after it
    let mut list = Vec::new();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let count = loop {
        if s.read(&mut b)? == 0 {
            return Err(io::Error::other("the running sekisho closed the connection"));
        }
        if b[0] != b'\n' {
            line.push(b[0]);
            if line.len() > 200 {
                return Err(io::Error::other("answer line too long"));
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line).to_string();
        line.clear();
        if let Some(n) = text.strip_prefix("end ") {
            break n.trim().parse::<usize>().map_err(|_| io::Error::other("bad answer"))?;
        }
        if let Some(e) = text.strip_prefix("error: ") {
            return Err(io::Error::other(e.to_string()));
        }
        let (k, a) = text
            .split_once(' ')
            .ok_or_else(|| io::Error::other(format!("bad answer line `{text}`")))?;
        let kind = Kind::parse(k).ok_or_else(|| io::Error::other(format!("bad socket kind `{k}`")))?;
        let addr: SocketAddr = a.parse().map_err(|_| io::Error::other(format!("bad address `{a}`")))?;
        list.push((kind, addr));
    };
    if count != list.len() {
        return Err(io::Error::other("socket count does not match the list"));
    }
    let fds = recv_fds(s.as_raw_fd(), count)?;
    if fds.len() != count {
        for fd in fds {
            // SAFETY: received descriptors are ours to close.
            unsafe { libc::close(fd) };
        }
        return Err(io::Error::other("fewer descriptors than sockets listed"));
    }
    Ok((s, list.into_iter().zip(fds).map(|((k, a), fd)| (k, a, fd)).collect()))
}

/// Tells the process taken over from that this one is ready.
pub async fn taken_over(path: &Path) {
    let s = TAKING_OVER.lock().ok().and_then(|mut t| t.take());
    if let Some(mut s) = s
        && let Err(e) = s.write_all(b"ready\n")
    {
        tracing::warn!("takeover through {}: cannot tell the old process: {e}", path.display());
    }
}

/// Sends one byte carrying `fds`.
fn send_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    let byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let data_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one byte and up to `max` descriptors with it (close-on-exec).
fn recv_fds(sock: RawFd, max: usize) -> io::Result<Vec<RawFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let data_len = max.max(1) * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut out = Vec::new();
    // SAFETY: as in send_fds; the kernel writes at most msg_controllen bytes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::other("the running sekisho closed the connection"));
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    out.push(std::ptr::read_unaligned(data.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(out)
}

/// `sekisho reload`: through the control socket (printing the answer), or by
/// SIGHUP to the process named in the pid file.
pub fn request_reload(control: Option<&Path>, pid_file: Option<&Path>) -> Result<String, String> {
    if let Some(path) = control {
        let mut s = StdStream::connect(path).map_err(|e| format!("cannot reach {}: {e}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"reload\n").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        let answer = answer.trim_end().to_string();
        return match answer.strip_prefix("error: ") {
            Some(e) => Err(e.to_string()),
            None if answer.is_empty() => Err("no answer from the running sekisho".into()),
            None => Ok(answer),
        };
    }
    let Some(pf) = pid_file else {
        return Err("no `control_socket` or `pid_file` in the configuration: nothing names the running sekisho".into());
    };
    let text = std::fs::read_to_string(pf).map_err(|e| format!("cannot read the pid file {}: {e}", pf.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("the pid file {} does not hold a process id", pf.display()))?;
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(format!("cannot signal process {pid}: {}", io::Error::last_os_error()));
    }
    Ok(format!("SIGHUP sent to process {pid}; the outcome is in its log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_cross_a_socket_pair() {
        let (a, b) = StdStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        send_fds(a.as_raw_fd(), &[l.as_raw_fd()]).unwrap();
        let fds = recv_fds(b.as_raw_fd(), 1).unwrap();
        assert_eq!(fds.len(), 1);
        // SAFETY: the descriptor was just received.
        let got = unsafe { std::net::TcpListener::from_raw_fd(fds[0]) };
        assert_eq!(got.local_addr().unwrap(), addr);
    }
}
