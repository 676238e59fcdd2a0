//! Live figures of a listener, a pool or a server: what the stats page,
//! `/stats.json` and `/metrics` show.
//!
//! Every transaction ends in one log [`Record`]; [`account`] adds it to the
//! figures of its listener, its pool and its server, next to the record's
//! submission to the access log. Everything on that path is a relaxed atomic
//! add (no lock, no allocation): counts, bytes, status classes, error classes
//! and a fixed-size log-bucketed [`Histogram`] of response times.
//!
//! Rates and history come from a sampler (one task per process, see
//! [`crate::observe::stats::sample_loop`]) that reads the counters every
//! [`SAMPLE_EVERY`] and keeps the last [`HISTORY_POINTS`] samples (ten
//! minutes) in a ring behind a mutex only it and the admin server touch.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::observe::record::{Record, ResultCode};

/// How often the sampler reads the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes at [`SAMPLE_EVERY`].
pub const HISTORY_POINTS: usize = 300;

/// Sub-buckets per power of two in the response-time histogram (2^4): a
/// value is reported within 1/32 (about 3 %) of its bucket's bounds.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values (microseconds) up to 2^40 (about 12.7 days); larger ones are
/// counted in the last bucket.
const TOP_BIT: u32 = 40;
/// Buckets: exact below [`SUB`] µs, then [`SUB`] per power of two.
const BUCKETS: usize = SUB + (TOP_BIT - SUB_BITS) as usize * SUB;

/// A fixed-size histogram of durations in microseconds, log-bucketed: exact
/// below 16 µs, then 16 buckets per power of two up to 2^40 µs. Recording
/// is two relaxed atomic adds and a `fetch_max`; 4.7 KiB per histogram.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum of the recorded values (µs), for the Prometheus summary's `_sum`.
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

/// The bucket of `v` microseconds.
fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let top = 63 - v.leading_zeros();
    if top >= TOP_BIT {
        return BUCKETS - 1;
    }
    let shift = top - SUB_BITS;
    SUB + (shift as usize) * SUB + ((v >> shift) as usize & (SUB - 1))
}

/// The bounds `[low, high)` of bucket `i`, in microseconds.
fn bounds_of(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64 + 1);
    }
    let shift = ((i - SUB) / SUB) as u32;
    let m = ((i - SUB) % SUB) as u64;
    let low = (SUB as u64 + m) << shift;
    (low, low + (1u64 << shift))
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(us, Relaxed);
        self.max.fetch_max(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The sum of every recorded value, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum.load(Relaxed) as f64 / 1e6
    }

    /// Nearest-rank quantiles `qs` (each in (0, 1]) in milliseconds, from
    /// one pass over the buckets; `None` when nothing was recorded. A value
    /// is its bucket's middle (exact below 16 µs), never above the maximum.
    pub fn quantiles_ms<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let mut out = [None; N];
        if total == 0 {
            return out;
        }
        let max = self.max.load(Relaxed);
        for (k, q) in qs.iter().enumerate() {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0u64;
            for (i, &n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    let (lo, hi) = bounds_of(i);
                    let mid = if hi - lo == 1 { lo } else { lo + (hi - lo) / 2 };
                    out[k] = Some(mid.min(max) as f64 / 1000.0);
                    break;
                }
            }
        }
        out
    }
}

/// How a transaction went wrong, from its termination state and result
/// (HAProxy's two characters: who ended it, in which phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The server could not be connected to (`SC`, `sC`).
    Connect,
    /// The server failed or closed while answering (`SH`, `SD`).
    Response,
    /// The server did not answer in time (`sH`, `sD`).
    Timeout,
    /// The client went away or timed out (`C?`, `c?`).
    Client,
    /// No server slot: the queue was full or its timeout passed (`sQ`).
    Queue,
    /// Refused by the access rules.
    Denied,
    /// Anything else the proxy ended (`P?`, `R?`, `I?`...): a bad request, a
    /// refused connection, no route.
    Proxy,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Connect,
        ErrorClass::Response,
        ErrorClass::Timeout,
        ErrorClass::Client,
        ErrorClass::Queue,
        ErrorClass::Denied,
        ErrorClass::Proxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Response => "response",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Client => "client",
            ErrorClass::Queue => "queue",
            ErrorClass::Denied => "denied",
            ErrorClass::Proxy => "proxy",
        }
    }

    /// Whether the class says something about the service (it counts in the
    /// error rate); client aborts and denied requests do not.
    pub fn is_failure(self) -> bool {
        !matches!(self, ErrorClass::Client | ErrorClass::Denied)
    }

    /// The class of a finished transaction, `None` when it ended normally.
    pub fn of(rec: &Record) -> Option<ErrorClass> {
        if rec.result == ResultCode::TcpDenied {
            return Some(ErrorClass::Denied);
        }
        let [who, phase] = rec.termination;
        Some(match (who, phase) {
            (b'-', _) => return None,
            (b's', b'Q') | (b'S', b'Q') => ErrorClass::Queue,
            (b'S' | b's', b'C') => ErrorClass::Connect,
            (b'S', _) => ErrorClass::Response,
            (b's', _) => ErrorClass::Timeout,
            (b'C' | b'c', _) => ErrorClass::Client,
            _ => ErrorClass::Proxy,
        })
    }
}

/// The counters at one sample, to turn the next one into rates.
#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    at: Option<Instant>,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
    failures: u64,
}

/// One point of history: rates over the sample's interval and the
/// sessions open when it was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point {
    pub requests: f32,
    pub bytes_in: f32,
    pub bytes_out: f32,
    pub errors: f32,
    pub sessions: u32,
}

/// The last [`HISTORY_POINTS`] samples, oldest first, and the last reading.
#[derive(Debug)]
struct History {
    last: Reading,
    /// Unix time (seconds) of the newest point.
    end: u64,
    points: VecDeque<Point>,
}

/// A snapshot of the history for the admin server.
#[derive(Clone, Debug, Default)]
pub struct HistoryView {
    /// Unix time (seconds) of the newest point; 0 when there is none yet.
    pub end: u64,
    pub points: Vec<Point>,
}

/// The figures of one listener, pool or server.
pub struct Figures {
    /// Transactions finished (HTTP requests, TCP connections, UDP sessions).
    pub requests: AtomicU64,
    /// Bytes received from clients and sent to them, headers included.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status: [AtomicU64; 5],
    /// Transactions by [`ErrorClass`] (indexed as [`ErrorClass::ALL`]).
    pub errors: [AtomicU64; 7],
    /// Transactions that failed: a 5xx, or an error class that
    /// [`is_failure`](ErrorClass::is_failure) (the error rate's count).
    pub failures: AtomicU64,
    /// Time from the request's first byte to its end (`%Ta`; the session's
    /// length for TCP and UDP).
    pub times: Histogram,
    history: Mutex<History>,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            requests: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            status: Default::default(),
            errors: Default::default(),
            failures: AtomicU64::new(0),
            times: Histogram::default(),
            history: Mutex::new(History {
                last: Reading {
                    at: Some(Instant::now()),
                    ..Reading::default()
                },
                end: 0,
                points: VecDeque::with_capacity(HISTORY_POINTS),
            }),
        }
    }
}

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Figures")
            .field("requests", &self.requests.load(Relaxed))
            .field("bytes_in", &self.bytes_in.load(Relaxed))
            .field("bytes_out", &self.bytes_out.load(Relaxed))
            .field("failures", &self.failures.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Figures {
    /// Adds one finished transaction (lock-free).
    pub fn add(&self, rec: &Record, class: Option<ErrorClass>) {
        self.requests.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(rec.bytes_from_client, Relaxed);
        self.bytes_out.fetch_add(rec.bytes_to_client, Relaxed);
        if (100..600).contains(&rec.status) {
            self.status[usize::from(rec.status / 100 - 1)].fetch_add(1, Relaxed);
        }
        if let Some(c) = class {
            self.errors[c as usize].fetch_add(1, Relaxed);
        }
        if rec.status >= 500 || class.is_some_and(ErrorClass::is_failure) {
            self.failures.fetch_add(1, Relaxed);
        }
        self.times.record(rec.active);
    }

    /// An error outside any record: a try that failed on a server before
    /// the request moved to another one (the record names the last only).
    pub fn count_error(&self, class: ErrorClass) {
        self.errors[class as usize].fetch_add(1, Relaxed);
        if class.is_failure() {
            self.failures.fetch_add(1, Relaxed);
        }
    }

    /// Responses of status class `n`xx (1-5).
    pub fn status(&self, n: usize) -> u64 {
        self.status[n - 1].load(Relaxed)
    }

    pub fn errors(&self, c: ErrorClass) -> u64 {
        self.errors[c as usize].load(Relaxed)
    }

    /// p50, p90 and p99 of the response times, in milliseconds.
    pub fn percentiles(&self) -> [Option<f64>; 3] {
        self.times.quantiles_ms([0.5, 0.9, 0.99])
    }

    /// Takes a sample: the rates since the previous one and the sessions
    /// open now (the sampler's work; not on the request path).
    pub fn sample(&self, sessions: u32) {
        let now = Reading {
            at: Some(Instant::now()),
            requests: self.requests.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            failures: self.failures.load(Relaxed),
        };
        let Ok(mut h) = self.history.lock() else { return };
        let secs = match (h.last.at, now.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(0.001),
            _ => SAMPLE_EVERY.as_secs_f64(),
        };
        let rate = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs) as f32;
        let p = Point {
            requests: rate(h.last.requests, now.requests),
            bytes_in: rate(h.last.bytes_in, now.bytes_in),
            bytes_out: rate(h.last.bytes_out, now.bytes_out),
            errors: rate(h.last.failures, now.failures),
            sessions,
        };
        h.last = now;
        if h.points.len() == HISTORY_POINTS {
            h.points.pop_front();
        }
        h.points.push_back(p);
        h.end = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    }

    /// The rates of the newest sample (zeros before the first one).
    pub fn rates(&self) -> Point {
        self.history
            .lock()
            .ok()
            .and_then(|h| h.points.back().copied())
            .unwrap_or_default()
    }

    /// The history, oldest point first.
    pub fn history(&self) -> HistoryView {
        self.history
            .lock()
            .map(|h| HistoryView {
                end: h.end,
                points: h.points.iter().copied().collect(),
            })
            .unwrap_or_default()
    }
}

/// Whether two names are the same: the record carries clones of the
/// configuration's `Arc<str>`s, so the pointer usually settles it.
fn same(a: &std::sync::Arc<str>, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || **a == *b
}

/// Adds a finished transaction to the figures of its listener, pool and
/// server in `cfg` (the configuration the transaction ran on). Called once
/// per record, just before it goes to the access log.
pub fn account(cfg: &Config, rec: &Record) {
    let class = ErrorClass::of(rec);
    if let Some(l) = cfg.listeners.iter().find(|l| same(&l.name, &rec.listener)) {
        l.stats.figures.add(rec, class);
    }
    let Some(pool) = &rec.backend else { return };
    let Some(b) = cfg.live.backends.iter().find(|b| same(&b.cfg.name, pool)) else {
        return;
    };
    b.stats.figures.add(rec, class);
    if let Some(server) = &rec.server
        && let Some(s) = b.servers.iter().find(|s| same(&s.cfg.name, server))
    {
        s.stats.figures.add(rec, class);
    }
}

/// A peak kept with `fetch_max`.
pub fn raise(peak: &AtomicU32, now: u32) {
    peak.fetch_max(now, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn rec(status: u16, termination: &[u8; 2], ms: u64) -> Record {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut r = Record::new(SystemTime::now(), a, a, "l".into());
        r.status = status;
        r.termination = *termination;
        r.active = Duration::from_millis(ms);
        r.bytes_from_client = 10;
        r.bytes_to_client = 100;
        r
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds_of(i);
            assert_eq!(lo, last, "bucket {i} starts where the previous ended");
            assert!(hi > lo);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            // at most 1/16 wide relative to its start, past the exact part
            if lo >= SUB as u64 {
                assert!((hi - lo) * 16 <= lo, "bucket {i}: {lo}..{hi}");
            }
            last = hi;
        }
        assert_eq!(last, 1 << TOP_BIT);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let h = Histogram::default();
        assert_eq!(h.quantiles_ms([0.5]), [None]);
        // 1..=1000 ms
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let [p50, p90, p99, p100] = h.quantiles_ms([0.5, 0.9, 0.99, 1.0]);
        for (got, want) in [(p50, 500.0), (p90, 900.0), (p99, 990.0), (p100, 1000.0)] {
            let got = got.unwrap();
            assert!((got - want).abs() / want < 0.04, "{got} vs {want}");
        }
        assert_eq!(h.count(), 1000);
        assert!((h.sum_seconds() - 500.5).abs() < 1e-6);
        // tiny values are exact
        let h = Histogram::default();
        h.record(Duration::from_micros(3));
        assert_eq!(h.quantiles_ms([0.5]), [Some(0.003)]);
        // huge values do not overflow
        h.record(Duration::from_secs(u64::MAX / 4));
        assert!(h.quantiles_ms([1.0])[0].unwrap() > 1e9);
    }

    #[test]
    fn termination_states_fall_into_classes() {
        let cases: [(&[u8; 2], Option<ErrorClass>); 10] = [
            (b"--", None),
            (b"SC", Some(ErrorClass::Connect)),
            (b"sC", Some(ErrorClass::Connect)),
            (b"SH", Some(ErrorClass::Response)),
            (b"SD", Some(ErrorClass::Response)),
            (b"sH", Some(ErrorClass::Timeout)),
            (b"sQ", Some(ErrorClass::Queue)),
            (b"CD", Some(ErrorClass::Client)),
            (b"cD", Some(ErrorClass::Client)),
            (b"PR", Some(ErrorClass::Proxy)),
        ];
        for (t, want) in cases {
            assert_eq!(ErrorClass::of(&rec(200, t, 1)), want, "{}", String::from_utf8_lossy(t));
        }
        let mut denied = rec(403, b"PR", 1);
        denied.result = ResultCode::TcpDenied;
        assert_eq!(ErrorClass::of(&denied), Some(ErrorClass::Denied));
    }

    #[test]
    fn figures_count_classes_failures_and_rates() {
        let f = Figures::default();
        for r in [
            rec(200, b"--", 5),
            rec(404, b"--", 5),
            rec(503, b"SC", 5),
            rec(503, b"--", 5),
            rec(200, b"CD", 5),
        ] {
            f.add(&r, ErrorClass::of(&r));
        }
        assert_eq!(f.requests.load(Relaxed), 5);
        assert_eq!((f.status(2), f.status(4), f.status(5)), (2, 1, 2));
        assert_eq!(f.errors(ErrorClass::Connect), 1);
        assert_eq!(f.errors(ErrorClass::Client), 1);
        // the two 5xx; the client abort is not a failure
        assert_eq!(f.failures.load(Relaxed), 2);
        assert_eq!(f.bytes_out.load(Relaxed), 500);
        f.sample(3);
        let p = f.rates();
        assert!(p.requests > 0.0);
        assert_eq!(p.sessions, 3);
        f.sample(0);
        assert_eq!(f.rates().requests, 0.0, "nothing new since the last sample");
        let h = f.history();
        assert_eq!(h.points.len(), 2);
        assert!(h.end > 0);
        for _ in 0..HISTORY_POINTS + 5 {
            f.sample(1);
        }
        assert_eq!(f.history().points.len(), HISTORY_POINTS, "the ring keeps ten minutes");
    }
}
