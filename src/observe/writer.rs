//! Access-log outputs. The request path hands a finished record to each
//! output's bounded queue and never waits: a full queue drops the record and
//! counts it. One writer thread per output renders records into a reused
//! buffer and writes whole lines in batches, so a line is never split.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{AccessLogConfig, LogTarget};
use crate::observe::format::LogFormat;
use crate::observe::record::Record;

/// What travels to a writer thread: a record, or the order to finish.
enum Msg {
    Record(Arc<Record>),
    Close,
}

struct Output {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// All configured access-log outputs.
pub struct AccessLog {
    outputs: Vec<Output>,
}

/// Largest batch written in one call.
const BATCH: usize = 64 * 1024;
/// A record waits at most this long for others to share its write.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// How long the writer sleeps between looks at its queue while gathering.
const GATHER_PAUSE: Duration = Duration::from_millis(2);

impl AccessLog {
    /// Opens every output (files in append mode) and starts its writer.
    pub fn start(cfgs: &[AccessLogConfig]) -> io::Result<AccessLog> {
        let mut outputs = Vec::with_capacity(cfgs.len());
        for (i, c) in cfgs.iter().enumerate() {
            let sink: Box<dyn Write + Send> = match &c.target {
                LogTarget::Stdout => Box::new(io::stdout()),
                LogTarget::Stderr => Box::new(io::stderr()),
                LogTarget::File(p) => {
                    Box::new(OpenOptions::new().create(true).append(true).open(p).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot open access log {}: {e}", p.display()))
                    })?)
                }
            };
            let (tx, rx) = mpsc::sync_channel(c.queue_size);
            let written = Arc::new(AtomicU64::new(0));
            let format = c.format.clone();
            let w = written.clone();
            let thread = std::thread::Builder::new()
                .name(format!("access-log-{i}"))
                .spawn(move || writer_loop(rx, format, sink, w))?;
            outputs.push(Output {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                written,
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
                    if o.dropped.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!("access log queue full: records are being dropped (counted in log_dropped)");
                    }
                }
            }
        }
    }

    /// Records dropped because a queue was full, over all outputs.
    pub fn dropped(&self) -> u64 {
        self.outputs.iter().map(|o| o.dropped.load(Relaxed)).sum()
    }

    /// Records written, over all outputs.
    pub fn written(&self) -> u64 {
        self.outputs.iter().map(|o| o.written.load(Relaxed)).sum()
    }

    /// Writes everything still queued and stops the writers.
    /// Records submitted after this are dropped and counted.
    pub fn close(&self) {
        let dropped = self.dropped();
        for o in &self.outputs {
            let _ = o.tx.send(Msg::Close);
            let handle = o.thread.lock().map(|mut h| h.take()).unwrap_or(None);
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        if dropped > 0 {
            tracing::warn!("{dropped} access log records were dropped because a queue was full");
        }
    }
}

fn writer_loop(rx: Receiver<Msg>, format: Arc<LogFormat>, mut sink: Box<dyn Write + Send>, written: Arc<AtomicU64>) {
    let mut buf = Vec::with_capacity(BATCH * 2);
    let mut open = true;
    while open {
        // block only while there is nothing at all; then gather for a moment, so
        // a busy proxy hands over records without waking this thread each time
        let Ok(Msg::Record(rec)) = rx.recv() else { break };
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
        if let Err(e) = sink.write_all(&buf).and_then(|_| sink.flush()) {
            tracing::error!("access log write failed, {n} records lost: {e}");
        } else {
            written.fetch_add(n, Relaxed);
        }
        buf.clear();
    }
}
