//! Access-log outputs. The request path hands a finished record to each
//! output's bounded queue and never waits: a full queue drops the record and
//! counts it. One writer thread per output renders records into a reused
//! buffer: stdout, stderr and files get whole lines written in batches, so a
//! line is never split; syslog outputs send one datagram per record
//! (see [`crate::observe::syslog`]).
//!
//! [`AccessLog::reopen`] (SIGUSR1) makes file outputs open their path again
//! between two batches, for log rotation: every line lands whole in the old
//! file or in the new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{AccessLogConfig, LogTarget};
use crate::observe::format::LogFormat;
use crate::observe::record::Record;
use crate::observe::syslog::{self, Sent};

/// What travels to a writer thread: a record, a wake-up to reopen files, or
/// the order to finish.
enum Msg {
    Record(Arc<Record>),
    Reopen,
    Close,
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

/// Largest batch written in one call.
const BATCH: usize = 64 * 1024;
/// A record waits at most this long for others to share its write.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// How long the writer sleeps between looks at its queue while gathering.
const GATHER_PAUSE: Duration = Duration::from_millis(2);

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
            let (tx, rx) = mpsc::sync_channel(c.queue_size);
            let counts = Arc::new(Counts::default());
            let format = c.format.clone();
            let k = counts.clone();
            let thread = std::thread::Builder::new()
                .name(format!("access-log-{i}"))
                .spawn(move || match sink {
                    Sink::Lines(sink) => line_loop(rx, format, sink, k),
                    Sink::Syslog(sender) => syslog_loop(rx, format, sender, k),
                })?;
            outputs.push(Output {
                name,
                is_file,
                tx,
                counts,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(AccessLog { outputs })
    }

    /// Queues a finished transaction's record on every output, without waiting.
    pub fn submit(&self, rec: Record) {
        if self.outputs.is_empty() {
            return;
        }
        let rec = Arc::new(rec);
        for o in &self.outputs {
            match o.tx.try_send(Msg::Record(rec.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    if o.counts.dropped.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!(
                            "access log {}: queue full, records are being dropped (counted in log_dropped)",
                            o.name
                        );
                    }
                }
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

fn line_loop(rx: Receiver<Msg>, format: Arc<LogFormat>, mut sink: LineSink, counts: Arc<Counts>) {
    let mut buf = Vec::with_capacity(BATCH * 2);
    let mut open = true;
    while open {
        // block only while there is nothing at all; then gather for a moment, so
        // a busy proxy hands over records without waking this thread each time
        let rec = match rx.recv() {
            Ok(Msg::Record(rec)) => rec,
            Ok(Msg::Reopen) => {
                if counts.reopen.swap(false, Relaxed) {
                    sink.reopen();
                }
                continue;
            }
            Ok(Msg::Close) | Err(_) => break,
        };
        let mut n = 1;
        format.render(&rec, &mut buf);
        buf.push(b'\n');
        let flush_at = Instant::now() + FLUSH_AFTER;
        'gather: loop {
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(Msg::Record(rec)) => {
                        format.render(&rec, &mut buf);
                        buf.push(b'\n');
                        n += 1;
                    }
                    // taken at the batch boundary below
                    Ok(Msg::Reopen) => {}
                    Ok(Msg::Close) | Err(TryRecvError::Disconnected) => {
                        open = false;
                        break 'gather;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if buf.len() >= BATCH || Instant::now() >= flush_at {
                break;
            }
            std::thread::sleep(GATHER_PAUSE);
        }
        if counts.reopen.swap(false, Relaxed) {
            sink.reopen();
        }
        if let Err(e) = sink.write_batch(&buf) {
            tracing::error!("access log write failed, {n} records lost: {e}");
            counts.dropped.fetch_add(n, Relaxed);
        } else {
            counts.written.fetch_add(n, Relaxed);
        }
        buf.clear();
    }
}

fn syslog_loop(rx: Receiver<Msg>, format: Arc<LogFormat>, mut sender: syslog::Sender, counts: Arc<Counts>) {
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
            Ok(Msg::Reopen) => {}
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

    #[test]
    fn reopen_moves_later_lines_to_a_new_file() {
        let dir = std::env::temp_dir().join(format!("sekisho-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::start(&[cfg(LogTarget::File(path.clone()))]).unwrap();
        log.submit(record("/1"));
        log.submit(record("/2"));
        wait_for("two lines", || log.figures()[0].written == 2);
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        assert_eq!(log.reopen(), 1);
        wait_for("the new file", || path.exists());
        log.submit(record("/3"));
        // a failed reopen keeps the old descriptor: the moved file gets the line
        std::fs::rename(&path, dir.join("access.log.2")).unwrap();
        std::fs::create_dir(&path).unwrap();
        log.reopen();
        log.submit(record("/4"));
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
        log.submit(record("/short"));
        log.submit(record(&format!("/{}", "x".repeat(600))));
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
        log.submit(record("/late"));
        let f = &log.figures()[0];
        assert_eq!(
            f.name,
            format!("syslog udp://127.0.0.1:{}", rx.local_addr().unwrap().port())
        );
        assert_eq!((f.written, f.truncated, f.dropped), (2, 1, 1));
    }
}
