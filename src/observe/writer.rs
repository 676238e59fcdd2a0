//! Access-log outputs, each with its own writer thread, and never waited on
//! by the request path: an output with too many records waiting drops new
//! ones and counts them.
//!
//! Line outputs (stdout, stderr, files): the request path renders the record
//! into the output's buffer (lines stay in the order transactions ended); the
//! writer takes the buffer when it holds 64 KiB, and also every 20 ms while
//! records come, and sleeps while none do. Files get whole lines in batches,
//! so a line is never split. Syslog outputs get the record itself and send
//! one datagram per record (see [`crate::observe::syslog`]).
//!
//! [`AccessLog::reopen`] (SIGUSR1) makes file outputs open their path again
//! between two batches, for log rotation: every line lands whole in the old
//! file or in the new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{AccessLogConfig, LogTarget};
use crate::observe::format::LogFormat;
use crate::observe::record::Record;
use crate::observe::syslog::{self, Sent};

/// What travels to a writer thread: a record (syslog), word that the
/// buffer is full (take it now) or that lines wait after a quiet spell (take
/// them in a moment), a wake-up to reopen files, or the order to finish.
enum Msg {
    Record(Arc<Record>),
    Full,
    Wake,
    Reopen,
    Close,
}

/// Lines rendered on the request path, not yet taken by the writer.
#[derive(Default)]
struct Buffer {
    buf: Vec<u8>,
    records: u64,
    /// The writer was told the buffer is full and has not taken it yet.
    told: bool,
    /// Set when the output closed: later records are dropped and counted.
    closed: bool,
}

/// The shared side of a line output. One buffer, so lines stay in the
/// order their transactions ended, whichever thread served them.
struct Lines {
    format: Arc<LogFormat>,
    buffer: Mutex<Buffer>,
    /// Records rendered and not yet written.
    pending: AtomicU64,
    /// `queue_size`: more records waiting than this are dropped.
    limit: u64,
    /// The writer found the buffer empty and waits for a wake-up.
    idle: AtomicBool,
}

/// An output's counters, shared by the request path and its writer thread.
#[derive(Default)]
struct Counts {
    written: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicU64,
    /// Set by [`AccessLog::reopen`], taken by the writer at a batch boundary.
    reopen: AtomicBool,
}

struct Output {
    name: String,
    is_file: bool,
    tx: SyncSender<Msg>,
    counts: Arc<Counts>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Line outputs: where the request path renders; `None` for syslog.
    lines: Option<Arc<Lines>>,
}

/// All configured access-log outputs.
pub struct AccessLog {
    outputs: Vec<Output>,
}

/// What one output has done so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFigures {
    /// `stdout`, `stderr`, the file's path, or `syslog udp://HOST:PORT` /
    /// `syslog unix:///PATH`.
    pub name: String,
    /// Records written (sent, for syslog).
    pub written: u64,
    /// Records lost: the queue was full, a write failed, or the syslog
    /// socket could not take them.
    pub dropped: u64,
    /// Records sent cut to `syslog_max_length` (counted in `written` too).
    pub truncated: u64,
}

/// A buffer this full goes to the writer at once.
const BATCH: usize = 64 * 1024;
/// A record waits at most about this long for others to share its write.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Messages waiting for one line writer (at most a few at a time).
const MESSAGES_QUEUED: usize = 64;

/// Where a line output writes.
enum LineSink {
    Stream(Box<dyn Write + Send>),
    File { path: PathBuf, file: File },
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LineSink {
    fn write_batch(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            LineSink::Stream(w) => w.write_all(buf).and_then(|_| w.flush()),
            LineSink::File { file, .. } => file.write_all(buf),
        }
    }

    /// Opens a file output's path again; on failure the old descriptor stays.
    fn reopen(&mut self) {
        let LineSink::File { path, file } = self else {
            return;
        };
        match open_append(path) {
            Ok(f) => {
                *file = f;
                tracing::info!("access log {} reopened", path.display());
            }
            Err(e) => tracing::error!(
                "cannot reopen access log {}: {e}; still writing to the file opened before",
                path.display()
            ),
        }
    }
}

impl AccessLog {
    /// Opens every output (files in append mode, syslog sockets connected)
    /// and starts its writer.
    pub fn start(cfgs: &[AccessLogConfig]) -> io::Result<AccessLog> {
        enum Sink {
            Lines(LineSink),
            Syslog(syslog::Sender),
        }
        let mut outputs = Vec::with_capacity(cfgs.len());
        for (i, c) in cfgs.iter().enumerate() {
            let (name, sink) = match &c.target {
                LogTarget::Stdout => (
                    "stdout".to_string(),
                    Sink::Lines(LineSink::Stream(Box::new(io::stdout()))),
                ),
                LogTarget::Stderr => (
                    "stderr".to_string(),
                    Sink::Lines(LineSink::Stream(Box::new(io::stderr()))),
                ),
                LogTarget::File(p) => {
                    let file = open_append(p).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot open access log {}: {e}", p.display()))
                    })?;
                    (
                        p.display().to_string(),
                        Sink::Lines(LineSink::File { path: p.clone(), file }),
                    )
                }
                LogTarget::Syslog(s) => (
                    format!("syslog {}", s.address),
                    Sink::Syslog(syslog::Sender::connect(s)?),
                ),
            };
            let is_file = matches!(c.target, LogTarget::File(_));
            let counts = Arc::new(Counts::default());
            let format = c.format.clone();
            let k = counts.clone();
            let (tx, lines, thread) = match sink {
                Sink::Lines(sink) => {
                    let (tx, rx) = mpsc::sync_channel(MESSAGES_QUEUED);
                    let lines = Arc::new(Lines {
                        format,
                        buffer: Mutex::new(Buffer::default()),
                        pending: AtomicU64::new(0),
                        limit: c.queue_size as u64,
                        idle: AtomicBool::new(false),
                    });
                    let l = lines.clone();
                    let thread = std::thread::Builder::new()
                        .name(format!("access-log-{i}"))
                        .spawn(move || line_loop(rx, &l, sink, &k))?;
                    (tx, Some(lines), thread)
                }
                Sink::Syslog(sender) => {
                    let (tx, rx) = mpsc::sync_channel(c.queue_size);
                    let thread = std::thread::Builder::new()
                        .name(format!("access-log-{i}"))
                        .spawn(move || syslog_loop(rx, format, sender, k))?;
                    (tx, None, thread)
                }
            };
            outputs.push(Output {
                name,
                is_file,
                tx,
                counts,
                thread: Mutex::new(Some(thread)),
                lines,
            });
        }
        Ok(AccessLog { outputs })
    }

    /// Hands a finished transaction's record to every output, without waiting.
    pub fn submit(&self, rec: &Record) {
        let mut whole = false;
        for o in &self.outputs {
            match &o.lines {
                Some(lines) => lines.put(o, rec),
                None => whole = true,
            }
        }
        if !whole {
            return;
        }
        let rec = Arc::new(rec.clone());
        for o in self.outputs.iter().filter(|o| o.lines.is_none()) {
            if o.tx.try_send(Msg::Record(rec.clone())).is_err() {
                o.dropped(1);
            }
        }
    }

    /// Asks every file output to close its file and open its path again
    /// (appending, created if missing) before its next batch, for log
    /// rotation. Returns how many file outputs were asked.
    pub fn reopen(&self) -> usize {
        let mut n = 0;
        for o in self.outputs.iter().filter(|o| o.is_file) {
            o.counts.reopen.store(true, Relaxed);
            // wakes an idle writer; a full queue means it is busy and will
            // see the flag at its next batch anyway
            let _ = o.tx.try_send(Msg::Reopen);
            n += 1;
        }
        n
    }

    /// Records dropped (queue full, or lost by the output), over all outputs.
    pub fn dropped(&self) -> u64 {
        self.outputs.iter().map(|o| o.counts.dropped.load(Relaxed)).sum()
    }

    /// Records written, over all outputs.
    pub fn written(&self) -> u64 {
        self.outputs.iter().map(|o| o.counts.written.load(Relaxed)).sum()
    }

    /// Each output's name and counts, in configuration order.
    pub fn figures(&self) -> Vec<OutputFigures> {
        self.outputs
            .iter()
            .map(|o| OutputFigures {
                name: o.name.clone(),
                written: o.counts.written.load(Relaxed),
                dropped: o.counts.dropped.load(Relaxed),
                truncated: o.counts.truncated.load(Relaxed),
            })
            .collect()
    }

    /// Writes everything still queued and stops the writers.
    /// Records submitted after this are dropped and counted.
    pub fn close(&self) {
        for o in &self.outputs {
            if let Some(lines) = &o.lines
                && let Ok(mut b) = lines.buffer.lock()
            {
                b.closed = true;
            }
            let _ = o.tx.send(Msg::Close);
            let handle = o.thread.lock().map(|mut h| h.take()).unwrap_or(None);
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        for f in self.figures().iter().filter(|f| f.dropped > 0) {
            tracing::warn!(
                "access log {}: {} records were dropped (queue full or output unavailable)",
                f.name,
                f.dropped
            );
        }
    }
}

impl Output {
    fn dropped(&self, n: u64) {
        if self.counts.dropped.fetch_add(n, Relaxed) == 0 {
            tracing::warn!(
                "access log {}: queue full, records are being dropped (counted in log_dropped)",
                self.name
            );
        }
    }
}

impl Lines {
    /// Renders a record into the buffer; a full buffer is taken by the
    /// writer at once, and a sleeping writer is woken.
    fn put(&self, o: &Output, rec: &Record) {
        if self.pending.fetch_add(1, Relaxed) >= self.limit {
            self.pending.fetch_sub(1, Relaxed);
            o.dropped(1);
            return;
        }
        let full = {
            let Ok(mut b) = self.buffer.lock() else {
                self.pending.fetch_sub(1, Relaxed);
                o.dropped(1);
                return;
            };
            if b.closed {
                drop(b);
                self.pending.fetch_sub(1, Relaxed);
                o.dropped(1);
                return;
            }
            self.format.render(rec, &mut b.buf);
            b.buf.push(b'\n');
            b.records += 1;
            let full = b.buf.len() >= BATCH && !b.told;
            b.told |= full;
            full
        };
        if full {
            let _ = o.tx.try_send(Msg::Full);
        } else if self.idle.load(Relaxed) && self.idle.swap(false, SeqCst) {
            let _ = o.tx.try_send(Msg::Wake);
        }
    }

    /// Takes what the buffer holds, and how many records.
    fn take(&self) -> Option<(Vec<u8>, u64)> {
        let mut b = self.buffer.lock().ok()?;
        if b.records == 0 {
            return None;
        }
        let n = std::mem::take(&mut b.records);
        b.told = false;
        // the next lines get room for as many as these at once
        let room = Vec::with_capacity(b.buf.len().next_power_of_two());
        Some((std::mem::replace(&mut b.buf, room), n))
    }
}

/// Makes the calling writer thread a batch thread (`SCHED_BATCH`): when
/// woken it waits for the next scheduling point instead of preempting the
/// proxy's runtime thread on the same CPU, and keeps its fair share of CPU
/// time. A log line may wait a few milliseconds more; no request does.
fn run_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: applies to the calling thread only; `param` is a valid
    // sched_param, and SCHED_BATCH needs no privilege
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(
            "access-log writer stays a normal thread: {}",
            io::Error::last_os_error()
        );
    }
}

fn line_loop(rx: Receiver<Msg>, lines: &Lines, mut sink: LineSink, counts: &Counts) {
    run_as_batch();
    let write = |buf: &[u8], n: u64, sink: &mut LineSink| {
        if counts.reopen.swap(false, Relaxed) {
            sink.reopen();
        }
        if let Err(e) = sink.write_batch(buf) {
            tracing::error!("access log write failed, {n} records lost: {e}");
            counts.dropped.fetch_add(n, Relaxed);
        } else {
            counts.written.fetch_add(n, Relaxed);
        }
        lines.pending.fetch_sub(n, Relaxed);
    };
    // while records come, the buffer is looked at every FLUSH_AFTER; when a
    // look finds nothing, the writer sleeps until the request path wakes it
    let mut next_look = Some(Instant::now() + FLUSH_AFTER);
    loop {
        let msg = match next_look {
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Full) => {
                if let Some((buf, n)) = lines.take() {
                    write(&buf, n, &mut sink);
                }
                next_look.get_or_insert_with(|| Instant::now() + FLUSH_AFTER);
            }
            Ok(Msg::Wake) => {
                next_look.get_or_insert_with(|| Instant::now() + FLUSH_AFTER);
            }
            Ok(Msg::Reopen) => {
                if counts.reopen.swap(false, Relaxed) {
                    sink.reopen();
                }
            }
            Ok(Msg::Record(_)) => {}
            Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                if let Some((buf, n)) = lines.take() {
                    write(&buf, n, &mut sink);
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                // idle first, then look: a record put after the look finds
                // the flag set and wakes this thread
                lines.idle.store(true, SeqCst);
                match lines.take() {
                    None => next_look = None,
                    Some((buf, n)) => {
                        lines.idle.store(false, SeqCst);
                        write(&buf, n, &mut sink);
                        next_look = Some(Instant::now() + FLUSH_AFTER);
                    }
                }
            }
        }
    }
}

fn syslog_loop(rx: Receiver<Msg>, format: Arc<LogFormat>, mut sender: syslog::Sender, counts: Arc<Counts>) {
    run_as_batch();
    loop {
        match rx.recv() {
            Ok(Msg::Record(rec)) => {
                let counter = match sender.send(|buf| format.render(&rec, buf)) {
                    Sent::Whole => &counts.written,
                    Sent::Truncated => {
                        counts.truncated.fetch_add(1, Relaxed);
                        &counts.written
                    }
                    Sent::Dropped => &counts.dropped,
                };
                counter.fetch_add(1, Relaxed);
            }
            Ok(Msg::Reopen | Msg::Wake | Msg::Full) => {}
            Ok(Msg::Close) | Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::syslog::{SyslogAddress, SyslogConfig, SyslogFormat};
    use std::net::UdpSocket;
    use std::time::SystemTime;

    fn record(path: &str) -> Record {
        let a = "127.0.0.1:1".parse().unwrap();
        let mut r = Record::new(SystemTime::now(), a, a, "t".into());
        r.uri = path.parse().unwrap();
        r
    }

    fn cfg(target: LogTarget) -> AccessLogConfig {
        AccessLogConfig {
            target,
            format: Arc::new(LogFormat::parse("%ru", crate::observe::format::Style::Squid).unwrap()),
            queue_size: 64,
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Scheduling policy of each writer thread of this process (field 41 of
    /// its `stat`): 3 is SCHED_BATCH.
    fn writer_policies() -> Vec<u32> {
        let mut out = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            if comm.starts_with("access-log-")
                && let Some((_, rest)) = stat.rsplit_once(')')
                && let Some(policy) = rest.split_whitespace().nth(38)
            {
                out.push(policy.parse().unwrap());
            }
        }
        out
    }

    #[test]
    fn writers_do_not_preempt_the_proxy() {
        let dir = std::env::temp_dir().join(format!("sekisho-writer-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = AccessLog::start(&[cfg(LogTarget::File(dir.join("access.log")))]).unwrap();
        log.submit(&record("/1"));
        wait_for("the line", || log.figures()[0].written == 1);
        // other tests' writers may be starting too: each turns batch at once
        wait_for("every writer thread to run as SCHED_BATCH", || {
            let p = writer_policies();
            !p.is_empty() && p.iter().all(|&p| p == 3)
        });
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopen_moves_later_lines_to_a_new_file() {
        let dir = std::env::temp_dir().join(format!("sekisho-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::start(&[cfg(LogTarget::File(path.clone()))]).unwrap();
        log.submit(&record("/1"));
        log.submit(&record("/2"));
        wait_for("two lines", || log.figures()[0].written == 2);
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        assert_eq!(log.reopen(), 1);
        wait_for("the new file", || path.exists());
        log.submit(&record("/3"));
        // a failed reopen keeps the old descriptor: the moved file gets the line
        std::fs::rename(&path, dir.join("access.log.2")).unwrap();
        std::fs::create_dir(&path).unwrap();
        log.reopen();
        log.submit(&record("/4"));
        log.close();
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        assert_eq!(read("access.log.1"), "/1\n/2\n");
        assert_eq!(read("access.log.2"), "/3\n/4\n");
        let f = log.figures();
        assert_eq!(
            (f[0].name.as_str(), f[0].written, f[0].dropped),
            (path.to_str().unwrap(), 4, 0)
        );
        assert_eq!((log.written(), log.dropped()), (4, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_from_many_threads_land_whole_and_counted() {
        let dir = std::env::temp_dir().join(format!("sekisho-writer-threads-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let mut c = cfg(LogTarget::File(path.clone()));
        c.queue_size = 1 << 20;
        let log = Arc::new(AccessLog::start(&[c]).unwrap());
        // enough bytes for several full buffers, and a tail left in the
        // buffer for the close to write
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..3001 {
                        log.submit(&record(&format!("/{t}/{i}/{}", "x".repeat(60))));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut next = [0u32; 4];
        for line in text.lines() {
            let mut parts = line.split('/');
            assert_eq!(parts.next(), Some(""), "{line}");
            let key = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
            assert_eq!(parts.next(), Some("x".repeat(60).as_str()), "a whole line: {line}");
            // each thread's lines in the order it submitted them
            let (t, i): (usize, u32) = (key.0.parse().unwrap(), key.1.parse().unwrap());
            assert_eq!(i, next[t], "in order: {line}");
            next[t] += 1;
            assert!(seen.insert(key), "once: {line}");
        }
        assert_eq!(seen.len(), 4 * 3001);
        assert_eq!((log.written(), log.dropped()), (4 * 3001, 0));
        // after the close, records are counted as dropped
        log.submit(&record("/late"));
        assert_eq!((log.written(), log.dropped()), (4 * 3001, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let dir = std::env::temp_dir().join(format!("sekisho-writer-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let mut c = cfg(LogTarget::File(path.clone()));
        c.queue_size = 3;
        // the writer looks at the buffer 20 ms after its start, then every
        // 20 ms: records put before wait there, and more than queue_size of
        // them do not fit
        let t0 = Instant::now();
        let log = AccessLog::start(&[c]).unwrap();
        for i in 0..10 {
            log.submit(&record(&format!("/{i}")));
        }
        let quick = t0.elapsed() < FLUSH_AFTER;
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(log.written() + log.dropped(), 10);
        assert_eq!(text.lines().count() as u64, log.written());
        if quick {
            assert_eq!((log.written(), log.dropped()), (3, 7), "{text}");
            assert_eq!(text, "/0\n/1\n/2\n");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn syslog_output_counts_truncations_and_drops() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let log = AccessLog::start(&[cfg(LogTarget::Syslog(SyslogConfig {
            address: SyslogAddress::Udp {
                host: "127.0.0.1".into(),
                port: rx.local_addr().unwrap().port(),
            },
            format: SyslogFormat::Rfc5424,
            facility: 3,
            severity: 5,
            tag: "t".into(),
            hostname: "h".into(),
            max_length: 480,
        }))])
        .unwrap();
        assert_eq!(log.reopen(), 0, "only file outputs reopen");
        log.submit(&record("/short"));
        log.submit(&record(&format!("/{}", "x".repeat(600))));
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("<29>1 "), "{text}");
        assert!(
            text.ends_with(&format!(" h t {} - - /short", std::process::id())),
            "{text}"
        );
        assert_eq!(rx.recv(&mut buf).unwrap(), 480);
        assert!(buf[..480].ends_with(syslog::MARKER));
        log.close();
        log.submit(&record("/late"));
        let f = &log.figures()[0];
        assert_eq!(
            f.name,
            format!("syslog udp://127.0.0.1:{}", rx.local_addr().unwrap().port())
        );
        assert_eq!((f.written, f.truncated, f.dropped), (2, 1, 1));
    }
}
