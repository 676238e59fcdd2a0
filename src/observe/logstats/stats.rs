//! Aggregation of parsed lines: counters keyed by what the report shows.
//!
//! Memory grows with the number of distinct keys (TLS versions, ciphers,
//! hosts, client addresses), never with the number of lines: response
//! times go into a [`Histogram`] of fixed size.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::parse::{Entry, Preset, Tls};

/// Response times below this many milliseconds are counted exactly.
const EXACT: usize = 1024;
/// Ratio between the bounds of consecutive buckets above [`EXACT`]. A value
/// is reported as its bucket's harmonic mean of the bounds, rounded to a
/// millisecond: at most (γ-1)/(γ+1) + 0.5/1024 ≈ 0.99 % away from it.
const GAMMA: f64 = 1.019;

/// A histogram of millisecond values: exact below 1024 ms, log-spaced
/// buckets above (under 2,000 buckets cover all of `u64`), so a quantile
/// is within 1 % of the true value while memory stays fixed.
#[derive(Clone, Debug)]
pub struct Histogram {
    exact: Vec<u64>,
    log: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            exact: vec![0; EXACT],
            log: Vec::new(),
            count: 0,
            max: 0,
        }
    }
}

/// Lower bound of log bucket `k`.
fn lower(k: usize) -> f64 {
    EXACT as f64 * GAMMA.powi(i32::try_from(k).unwrap_or(i32::MAX))
}

/// The log bucket of `v` (`v >= EXACT`).
fn bucket(v: u64) -> usize {
    let x = v as f64;
    let mut k = ((x / EXACT as f64).ln() / GAMMA.ln()).floor().max(0.0) as usize;
    // the logarithm may land one bucket off near a bound: settle on the bounds themselves
    while k > 0 && x < lower(k) {
        k -= 1;
    }
    while x >= lower(k + 1) {
        k += 1;
    }
    k
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.count += 1;
        self.max = self.max.max(v);
        match usize::try_from(v) {
            Ok(i) if i < EXACT => self.exact[i] += 1,
            _ => {
                let k = bucket(v);
                if self.log.len() <= k {
                    self.log.resize(k + 1, 0);
                }
                self.log[k] += 1;
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (exact).
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// The nearest-rank quantile `q` (0 < q <= 1): the smallest recorded
    /// value with at least `ceil(q * count)` values at or below it; exact
    /// below 1024 ms and for the last rank (the maximum), within 1 % above.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return Some(self.max);
        }
        let mut seen = 0u64;
        for (v, &n) in self.exact.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(v as u64);
            }
        }
        for (k, &n) in self.log.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = (lower(k), lower(k + 1));
                // `as` saturates at u64::MAX
                let mid = (2.0 * lo * hi / (lo + hi)).round() as u64;
                return Some(mid.min(self.max).max(EXACT as u64));
            }
        }
        Some(self.max)
    }
}

/// Requests and distinct clients under one TLS version.
#[derive(Debug, Default)]
struct TlsCount {
    requests: u64,
    clients: HashSet<IpAddr>,
    /// Requests by cipher (`-` when the line names none).
    ciphers: HashMap<Box<str>, u64>,
}

impl TlsCount {
    fn add(&mut self, client: IpAddr, cipher: Option<&str>) {
        self.requests += 1;
        self.clients.insert(client);
        if let Some(c) = cipher {
            bump(&mut self.ciphers, c);
        }
    }
}

fn bump(map: &mut HashMap<Box<str>, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.into(), 1);
        }
    }
}

/// Status classes, in report order.
pub const STATUS_CLASSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other", "none"];

/// Everything counted so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines read, blank lines left out.
    pub lines: u64,
    /// Lines understood: one request (or TCP connection) each.
    pub requests: u64,
    pub not_understood: u64,
    presets: [u64; 6],
    versions: HashMap<Box<str>, TlsCount>,
    /// Lines whose format records TLS and says none was used.
    plain: TlsCount,
    /// Lines whose format does not record TLS.
    unknown: TlsCount,
    status: [u64; 7],
    hosts: HashMap<Box<str>, u64>,
    no_host: u64,
    clients: HashMap<IpAddr, u64>,
    durations: Histogram,
}

impl Stats {
    /// Counts one understood line.
    pub fn add(&mut self, e: &Entry<'_>) {
        self.lines += 1;
        self.requests += 1;
        self.presets[e.preset.index()] += 1;
        match &e.tls {
            Tls::Unknown => self.unknown.add(e.client, None),
            Tls::Plain => self.plain.add(e.client, None),
            Tls::Version(v, c) => {
                let cipher = Some(c.as_deref().unwrap_or("-"));
                match self.versions.get_mut(v.as_ref()) {
                    Some(t) => t.add(e.client, cipher),
                    None => {
                        let mut t = TlsCount::default();
                        t.add(e.client, cipher);
                        self.versions.insert(v.as_ref().into(), t);
                    }
                }
            }
        }
        let class = match e.status {
            None => 6,
            Some(s @ 100..=599) => usize::from(s / 100) - 1,
            Some(_) => 5,
        };
        self.status[class] += 1;
        match &e.host {
            Some(h) if h.bytes().any(|b| b.is_ascii_uppercase()) => bump(&mut self.hosts, &h.to_ascii_lowercase()),
            Some(h) => bump(&mut self.hosts, h),
            None => self.no_host += 1,
        }
        *self.clients.entry(e.client).or_insert(0) += 1;
        if let Some(d) = e.duration_ms {
            self.durations.record(d);
        }
    }

    /// Counts one line that no reader understood.
    pub fn add_not_understood(&mut self) {
        self.lines += 1;
        self.not_understood += 1;
    }

    /// The figures to show, with the `top` largest hosts and clients.
    pub fn report(&self, top: usize) -> Report {
        let presets = Preset::ALL
            .into_iter()
            .map(|p| (p.name(), self.presets[p.index()]))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut versions: Vec<(&str, &TlsCount)> = self.versions.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        versions.sort_by(|a, b| a.0.cmp(b.0));
        for (name, t) in [("none", &self.plain), ("unknown", &self.unknown)] {
            if t.requests > 0 {
                versions.push((name, t));
            }
        }
        let tls = versions
            .iter()
            .map(|(v, t)| TlsRow {
                version: v.to_string(),
                requests: t.requests,
                clients: t.clients.len() as u64,
            })
            .collect();
        let mut ciphers = Vec::new();
        for (v, t) in &versions {
            let mut cs: Vec<(&str, u64)> = t.ciphers.iter().map(|(c, n)| (c.as_ref(), *n)).collect();
            cs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            ciphers.extend(cs.into_iter().map(|(c, n)| CipherRow {
                version: v.to_string(),
                cipher: c.to_string(),
                requests: n,
            }));
        }
        let top_hosts = top_n(self.hosts.iter().map(|(h, n)| (h.as_ref(), *n)), top)
            .into_iter()
            .map(|(h, n)| (h.to_string(), n))
            .collect();
        let top_clients = top_n(self.clients.iter().map(|(c, n)| (*c, *n)), top)
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        let d = &self.durations;
        Report {
            inputs: Vec::new(),
            lines: self.lines,
            requests: self.requests,
            not_understood: self.not_understood,
            presets,
            distinct_clients: self.clients.len() as u64,
            distinct_hosts: self.hosts.len() as u64,
            requests_without_host: self.no_host,
            tls,
            ciphers,
            status: STATUS_CLASSES.iter().copied().zip(self.status).collect(),
            top,
            top_hosts,
            top_clients,
            durations: Durations {
                count: d.count(),
                p50: d.quantile(0.50),
                p90: d.quantile(0.90),
                p99: d.quantile(0.99),
                max: d.max(),
            },
        }
    }
}

/// The `n` entries with the largest counts, largest first, ties by key.
fn top_n<K: Ord + Copy>(items: impl Iterator<Item = (K, u64)>, n: usize) -> Vec<(K, u64)> {
    let mut v: Vec<(K, u64)> = items.collect();
    let order = |a: &(K, u64), b: &(K, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if n == 0 {
        return Vec::new();
    }
    if v.len() > n {
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
    v.sort_by(order);
    v
}

/// One TLS version: `none` (a format that records TLS, none used) and
/// `unknown` (a format that does not record it) come after the versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRow {
    pub version: String,
    pub requests: u64,
    pub clients: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CipherRow {
    pub version: String,
    pub cipher: String,
    pub requests: u64,
}

/// Response-time figures in milliseconds; `None` when no line had a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durations {
    pub count: u64,
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

/// What `sekisho logstats` shows, in every output format.
#[derive(Clone, Debug)]
pub struct Report {
    /// The inputs read (`-` is standard input).
    pub inputs: Vec<String>,
    pub lines: u64,
    pub requests: u64,
    pub not_understood: u64,
    /// Requests by the preset that wrote the line (presets with none left out).
    pub presets: Vec<(&'static str, u64)>,
    pub distinct_clients: u64,
    pub distinct_hosts: u64,
    pub requests_without_host: u64,
    pub tls: Vec<TlsRow>,
    pub ciphers: Vec<CipherRow>,
    /// Every class of [`STATUS_CLASSES`], in that order.
    pub status: Vec<(&'static str, u64)>,
    /// The `--top` asked for.
    pub top: usize,
    pub top_hosts: Vec<(String, u64)>,
    pub top_clients: Vec<(String, u64)>,
    pub durations: Durations,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// A small deterministic generator (xorshift).
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn histogram_is_exact_below_1024_and_within_one_percent_above() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for spread in [1_000u64, 5_000, 100_000, 10_000_000, u64::MAX] {
            let mut h = Histogram::default();
            let mut all = Vec::new();
            for _ in 0..20_000 {
                let v = rng(&mut seed) % spread;
                h.record(v);
                all.push(v);
            }
            all.sort_unstable();
            for q in [0.001, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let want = nearest_rank(&all, q);
                let got = h.quantile(q).unwrap();
                if want < EXACT as u64 {
                    assert_eq!(got, want, "q={q} spread={spread}");
                } else {
                    let err = (got as f64 - want as f64).abs() / want as f64;
                    assert!(err <= 0.01, "q={q} spread={spread}: {got} vs {want} ({err})");
                }
            }
            assert_eq!(h.max(), all.last().copied());
            assert_eq!(h.count(), all.len() as u64);
            assert!(h.log.len() < 2_000, "{} buckets", h.log.len());
        }
    }

    #[test]
    fn histogram_every_value_near_bounds() {
        // each value alone: its estimate is within 1 %
        for k in [0usize, 1, 2, 100, 500, 1_000, 1_900] {
            let b = lower(k);
            for v in [
                b.floor() as u64,
                b.ceil() as u64,
                b.ceil() as u64 + 1,
                (lower(k + 1).ceil() as u64) - 1,
            ] {
                if v < EXACT as u64 || b > 1.8e19 {
                    continue;
                }
                let mut h = Histogram::default();
                h.record(v);
                h.record(u64::MAX);
                let got = h.quantile(0.5).unwrap();
                let err = (got as f64 - v as f64).abs() / v as f64;
                assert!(err <= 0.01, "{v}: {got} ({err})");
            }
        }
        let mut h = Histogram::default();
        assert_eq!((h.quantile(0.5), h.max()), (None, None));
        h.record(u64::MAX);
        assert_eq!(h.quantile(0.99), Some(u64::MAX));
        h.record(0);
        assert_eq!(h.quantile(0.5), Some(0));
    }

    fn entry(client: &str, tls: Tls<'static>, status: Option<u16>, host: Option<&'static str>) -> Entry<'static> {
        Entry {
            preset: Preset::HttplogTls,
            client: client.parse().unwrap(),
            status,
            tls,
            host: host.map(Cow::Borrowed),
            duration_ms: Some(10),
        }
    }

    #[test]
    fn counts_and_report() {
        let mut s = Stats::default();
        let v10 = || Tls::Version("TLSv1.0".into(), Some("AES128-SHA".into()));
        let v13 = |c: &'static str| Tls::Version("TLSv1.3".into(), Some(c.into()));
        s.add(&entry("10.0.0.1", v10(), Some(200), Some("A.example")));
        s.add(&entry("10.0.0.1", v10(), Some(404), Some("a.example")));
        s.add(&entry("10.0.0.2", v10(), Some(503), Some("b.example")));
        s.add(&entry("10.0.0.3", v13("TLS_AES_128_GCM_SHA256"), Some(101), None));
        s.add(&entry("10.0.0.3", v13("TLS_AES_256_GCM_SHA384"), Some(302), None));
        s.add(&entry("10.0.0.4", v13("TLS_AES_256_GCM_SHA384"), Some(700), None));
        s.add(&entry("::1", Tls::Version("TLSv1.2".into(), None), None, None));
        s.add(&entry("10.0.0.5", Tls::Plain, Some(200), Some("b.example")));
        s.add(&entry("10.0.0.5", Tls::Unknown, None, None));
        s.add_not_understood();
        let r = s.report(2);
        assert_eq!((r.lines, r.requests, r.not_understood), (10, 9, 1));
        assert_eq!(r.presets, [("httplog-tls", 9)]);
        let tls: Vec<(&str, u64, u64)> = r
            .tls
            .iter()
            .map(|t| (t.version.as_str(), t.requests, t.clients))
            .collect();
        assert_eq!(
            tls,
            [
                ("TLSv1.0", 3, 2),
                ("TLSv1.2", 1, 1),
                ("TLSv1.3", 3, 2),
                ("none", 1, 1),
                ("unknown", 1, 1)
            ]
        );
        let ciphers: Vec<(&str, &str, u64)> = r
            .ciphers
            .iter()
            .map(|c| (c.version.as_str(), c.cipher.as_str(), c.requests))
            .collect();
        assert_eq!(
            ciphers,
            [
                ("TLSv1.0", "AES128-SHA", 3),
                ("TLSv1.2", "-", 1),
                ("TLSv1.3", "TLS_AES_256_GCM_SHA384", 2),
                ("TLSv1.3", "TLS_AES_128_GCM_SHA256", 1),
            ]
        );
        assert_eq!(
            r.status,
            [
                ("1xx", 1),
                ("2xx", 2),
                ("3xx", 1),
                ("4xx", 1),
                ("5xx", 1),
                ("other", 1),
                ("none", 2)
            ]
        );
        assert_eq!(
            r.top_hosts,
            [("a.example".to_string(), 2), ("b.example".to_string(), 2)]
        );
        assert_eq!((r.distinct_hosts, r.requests_without_host), (2, 5));
        assert_eq!(
            r.top_clients,
            [("10.0.0.1".to_string(), 2), ("10.0.0.3".to_string(), 2)]
        );
        assert_eq!(r.distinct_clients, 6);
        assert_eq!(r.durations.count, 9);
        assert_eq!((r.durations.p50, r.durations.max), (Some(10), Some(10)));
        assert!(s.report(0).top_hosts.is_empty());
        assert_eq!(s.report(100).top_clients.len(), 6);
    }
}
