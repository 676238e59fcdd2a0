//! Load-balancing algorithms of a pool (`balance`): which server gets the
//! next connection or request.
//!
//! Pure logic, no I/O, on the hot path. A [`Balancer`] is built once per pool
//! (from the servers' stable identities and configured weights) and shared;
//! [`Balancer::pick`] asks the caller, through closures, which servers are
//! eligible right now, their current weights and their active connection
//! counts, so the run-time state stays where the caller keeps it.
//!
//! | algorithm | choice | cost of a pick (n servers) |
//! | --- | --- | --- |
//! | `round-robin` | smooth weighted round robin (NGINX's) | O(n) under a short lock |
//! | `leastconn` | fewest active/weight, ties rotate | O(n), one atomic |
//! | `random` | power of two weighted random choices | O(n), no lock, no syscall |
//! | `source`, `uri`, `hash` | consistent hash ring | O(len(key)) + O(1) expected |
//!
//! No pick allocates.
//!
//! # Consistent hashing
//!
//! Each server with a configured weight `w > 0` owns `w * 1024` points on a
//! 64-bit ring (scaled down proportionally when the pool would exceed 2^18
//! points; every weighted server keeps at least one). A key maps to the
//! first point at or after [`hash64`]`(key)`, wrapping around. When that
//! point's server is not eligible, the walk goes on to the next point whose
//! server is, so only the keys of unavailable servers move, and they spread
//! over the others in proportion to their points. Adding or removing one of n
//! servers moves about 1/n of the keys.
//!
//! The ring depends only on the ids and weights, never on their order nor on
//! the host: every node of a cluster built from the same servers picks the
//! same server for the same key. A point is
//! `fmix64(fnv1a64(id ‖ 0xFF ‖ replica as u32 little-endian))` (see
//! [`hash64`]; `0xFF` never occurs in UTF-8, so it cannot merge an id with
//! its replica number); equal points, a 2^-64 event, are ordered by id.
//! Ids are expected to be unique within a pool: two servers with the same id
//! share the same points and the first one listed takes all their keys.
//!
//! The ring uses the *configured* weights; the run-time `weight(i)` passed to
//! [`Balancer::pick`] only excludes a server when it is 0 (rebuilding the ring
//! on every weight change would move keys).
//!
//! Keys: `source` hashes the client address's octets (4 bytes for IPv4, 16
//! for IPv6, as `IpAddr::octets` gives them, without the port); `uri` the
//! request's path and query as received; `hash` whatever the caller extracted
//! (a header's value, a cookie's...).

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// `balance` of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin (NGINX's): over time each server gets weight/total of the picks, interleaved.
    RoundRobin,
    /// Fewest active connections relative to weight (active/weight, compared by cross-multiplication); ties broken by round robin.
    LeastConn,
    /// Consistent hash of the client address (the key passed in).
    Source,
    /// Consistent hash of the request URI (path and query, the key passed in).
    Uri,
    /// Two random eligible servers (weighted by weight), the one with fewer active connections relative to weight wins.
    Random,
    /// Consistent hash of a configured key (the caller extracts it: a header, a cookie...).
    Hash,
}

impl Algorithm {
    /// Every algorithm, in the order of the documentation.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::Source,
        Algorithm::Uri,
        Algorithm::Random,
        Algorithm::Hash,
    ];

    /// The algorithm named `s` in the configuration (`"round-robin"`,
    /// `"leastconn"`, `"source"`, `"uri"`, `"random"`, `"hash"`).
    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s {
            "round-robin" => Algorithm::RoundRobin,
            "leastconn" => Algorithm::LeastConn,
            "source" => Algorithm::Source,
            "uri" => Algorithm::Uri,
            "random" => Algorithm::Random,
            "hash" => Algorithm::Hash,
            _ => return None,
        })
    }

    /// The configuration name, as [`Algorithm::parse`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConn => "leastconn",
            Algorithm::Source => "source",
            Algorithm::Uri => "uri",
            Algorithm::Random => "random",
            Algorithm::Hash => "hash",
        }
    }

    /// Whether [`Balancer::pick`] uses its `key` (the consistent-hash algorithms).
    pub fn uses_key(self) -> bool {
        matches!(self, Algorithm::Source | Algorithm::Uri | Algorithm::Hash)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ring points per unit of configured weight. With p points a server's share
/// of the keys deviates from its weight's share by about 1/sqrt(p): ~3% here
/// (NGINX's 160 gives ~8%).
const POINTS_PER_WEIGHT: u64 = 1024;
/// Upper bound of a ring's points (12 bytes each, plus the bucket index).
const MAX_RING_POINTS: u64 = 1 << 18;

/// The load balancer of one pool. `Send + Sync`: share it (e.g. in an `Arc`).
pub struct Balancer {
    algo: Algorithm,
    n: usize,
    /// Smooth WRR: each server's current weight (only used by `RoundRobin`).
    current: Mutex<Vec<i64>>,
    /// LeastConn: where the next scan starts (one past the last pick), so ties rotate.
    next: AtomicUsize,
    /// The consistent-hash ring (empty unless the algorithm uses a key).
    ring: Ring,
}

impl Balancer {
    /// `ids` are stable server identities (e.g. "10.0.0.11:80"), `weights` their configured weights (0 = never picked);
    /// the consistent-hash ring is built here from ids and weights (only for the algorithms that use a key).
    ///
    /// `weights` should be as long as `ids`; a missing weight counts as 0.
    pub fn new(algo: Algorithm, ids: &[String], weights: &[u32]) -> Balancer {
        debug_assert_eq!(ids.len(), weights.len(), "one weight per server");
        let n = ids.len();
        let ring = if algo.uses_key() {
            Ring::build(ids, weights)
        } else {
            Ring::empty(n)
        };
        let current = if algo == Algorithm::RoundRobin {
            vec![0; n]
        } else {
            Vec::new()
        };
        Balancer {
            algo,
            n,
            current: Mutex::new(current),
            next: AtomicUsize::new(0),
            ring,
        }
    }

    /// The pool's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// How many servers the balancer picks among (`ids.len()`).
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the pool has no server at all.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Picks a server index among 0..n (n == ids.len()).
    /// `eligible(i)`: the server is up, not draining, not full, not excluded by a failed try (the caller decides).
    /// `weight(i)`: its current weight (may differ from the configured one at run time; 0 = skip).
    /// `active(i)`: its current active connection count.
    /// `key`: the hash key for Source/Uri/Hash (ignored by the others).
    /// Returns None when no server is eligible with a weight > 0 (for the
    /// hash algorithms, also a configured weight > 0: only those are on the ring).
    pub fn pick(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        weight: &dyn Fn(usize) -> u32,
        active: &dyn Fn(usize) -> u32,
        key: &[u8],
    ) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        match self.algo {
            Algorithm::RoundRobin => self.pick_round_robin(eligible, weight),
            Algorithm::LeastConn => self.pick_least_conn(eligible, weight, active),
            Algorithm::Random => self.pick_random(eligible, weight, active),
            Algorithm::Source | Algorithm::Uri | Algorithm::Hash => self.pick_hash(eligible, weight, key),
        }
    }

    /// Smooth weighted round robin: every eligible server's current weight
    /// grows by its weight, the largest wins (the first on a tie) and loses
    /// the total. Weights 5,1,1 give a a b a c a a, then again.
    fn pick_round_robin(&self, eligible: &dyn Fn(usize) -> bool, weight: &dyn Fn(usize) -> u32) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        let mut best_current = i64::MIN;
        for (i, c) in current.iter_mut().enumerate() {
            if !eligible(i) {
                continue;
            }
            let w = weight(i);
            if w == 0 {
                continue;
            }
            *c += i64::from(w);
            total += i64::from(w);
            if *c > best_current {
                best_current = *c;
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }

    /// The lowest active/weight, compared as `a1 * w2 < a2 * w1` (exact in
    /// u64). The scan starts one past the previous pick and only a strictly
    /// lower load replaces the candidate, so equally loaded servers rotate.
    fn pick_least_conn(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        weight: &dyn Fn(usize) -> u32,
        active: &dyn Fn(usize) -> u32,
    ) -> Option<usize> {
        let n = self.n;
        let start = self.next.load(Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = if start + k >= n { start + k - n } else { start + k };
            if !eligible(i) {
                continue;
            }
            let w = u64::from(weight(i));
            if w == 0 {
                continue;
            }
            let a = u64::from(active(i));
            match best {
                Some((_, ba, bw)) if a * bw >= ba * w => {}
                _ => best = Some((i, a, w)),
            }
        }
        let (b, _, _) = best?;
        self.next.store(if b + 1 == n { 0 } else { b + 1 }, Ordering::Relaxed);
        Some(b)
    }

    /// Power of two choices: two independent draws among the eligible
    /// servers, each with probability weight/total (one pass, a weighted
    /// reservoir of one per draw; the same server may be drawn twice), then
    /// the one with the lower active/weight (the first draw on a tie).
    fn pick_random(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        weight: &dyn Fn(usize) -> u32,
        active: &dyn Fn(usize) -> u32,
    ) -> Option<usize> {
        let mut total: u64 = 0;
        let mut first: Option<(usize, u64)> = None;
        let mut second: Option<(usize, u64)> = None;
        for i in 0..self.n {
            if !eligible(i) {
                continue;
            }
            let w = u64::from(weight(i));
            if w == 0 {
                continue;
            }
            total += w;
            // Keep i with probability w/total, for each draw: one random
            // u64 gives the two 32-bit uniforms.
            let r = next_random();
            if below(r >> 32, total, w) {
                first = Some((i, w));
            }
            if below(r & 0xFFFF_FFFF, total, w) {
                second = Some((i, w));
            }
        }
        let (i1, w1) = first?;
        let Some((i2, w2)) = second else {
            return Some(i1);
        };
        if i1 == i2 {
            return Some(i1);
        }
        let a1 = u64::from(active(i1));
        let a2 = u64::from(active(i2));
        Some(if a2 * w1 < a1 * w2 { i2 } else { i1 })
    }

    /// The first ring point at or after the key's hash whose server is
    /// eligible with a run-time weight > 0.
    fn pick_hash(&self, eligible: &dyn Fn(usize) -> bool, weight: &dyn Fn(usize) -> u32, key: &[u8]) -> Option<usize> {
        let ring = &self.ring;
        let len = ring.points.len();
        if len == 0 {
            return None;
        }
        let usable = |i: usize| eligible(i) && weight(i) > 0;
        let mut pos = ring.find(hash64(key));
        let mut rejected = ring.servers[pos] as usize;
        if usable(rejected) {
            return Some(rejected);
        }
        // Walk only when some server on the ring can take the key, so that a
        // pool with none usable costs O(n), not O(points).
        if !(0..self.n).any(|i| ring.counts[i] > 0 && i != rejected && usable(i)) {
            return None;
        }
        for _ in 1..len {
            pos += 1;
            if pos == len {
                pos = 0;
            }
            let s = ring.servers[pos] as usize;
            if s == rejected {
                continue;
            }
            if usable(s) {
                return Some(s);
            }
            rejected = s;
        }
        None
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("algorithm", &self.algo)
            .field("servers", &self.n)
            .field("ring_points", &self.ring.points.len())
            .finish()
    }
}

/// Whether `x` (uniform in 0..2^32) falls in the first `w` of `total` equal
/// parts: probability w/total (within 2^-32), without a division.
#[inline]
fn below(x: u64, total: u64, w: u64) -> bool {
    ((u128::from(x) * u128::from(total)) >> 32) < u128::from(w)
}

/// A consistent-hash ring: sorted points, their servers, and a bucket index
/// on the points' top bits that makes a lookup O(1) expected.
struct Ring {
    /// Sorted ascending.
    points: Vec<u64>,
    /// `servers[k]` owns `points[k]`.
    servers: Vec<u32>,
    /// Points per server (0: not on the ring).
    counts: Vec<u32>,
    /// `index[j]`: the first position whose point's top bits are >= j;
    /// `index[buckets] == points.len()`.
    index: Vec<u32>,
    /// 64 - the bucket bits.
    shift: u32,
}

impl Ring {
    fn empty(n: usize) -> Ring {
        Ring {
            points: Vec::new(),
            servers: Vec::new(),
            counts: vec![0; n],
            index: Vec::new(),
            shift: 63,
        }
    }

    fn build(ids: &[String], weights: &[u32]) -> Ring {
        let n = ids.len();
        let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(0));
        let total_weight: u64 = (0..n).map(weight).sum();
        let counts: Vec<u32> = (0..n)
            .map(|i| {
                let w = weight(i);
                let p = if w == 0 {
                    0
                } else if total_weight.saturating_mul(POINTS_PER_WEIGHT) <= MAX_RING_POINTS {
                    w * POINTS_PER_WEIGHT
                } else {
                    (w * MAX_RING_POINTS / total_weight).max(1)
                };
                p as u32
            })
            .collect();
        let len: usize = counts.iter().map(|&c| c as usize).sum();
        if len == 0 {
            return Ring::empty(n);
        }
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(len);
        for (i, id) in ids.iter().enumerate() {
            for r in 0..counts[i] {
                entries.push((point_hash(id.as_bytes(), r), i as u32));
            }
        }
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| ids[a.1 as usize].cmp(&ids[b.1 as usize]))
                .then_with(|| a.1.cmp(&b.1))
        });
        let points: Vec<u64> = entries.iter().map(|e| e.0).collect();
        let servers: Vec<u32> = entries.iter().map(|e| e.1).collect();
        drop(entries);

        // About two points per bucket.
        let bits = (usize::BITS - (len - 1).leading_zeros()).saturating_sub(1).max(1);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0;
        for j in 0..buckets {
            let low = (j as u64) << shift;
            while pos < len && points[pos] < low {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(len as u32);
        Ring {
            points,
            servers,
            counts,
            index,
            shift,
        }
    }

    /// The position of the first point >= h, wrapping to 0 past the last.
    #[inline]
    fn find(&self, h: u64) -> usize {
        let j = (h >> self.shift) as usize;
        let low = self.index[j] as usize;
        let high = self.index[j + 1] as usize;
        let pos = low + self.points[low..high].partition_point(|&p| p < h);
        if pos == self.points.len() { 0 } else { pos }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
fn fnv1a64(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// A stable 64-bit hash, the same on every build, architecture and host (so
/// every node of a cluster picks the same server for the same key).
///
/// Definition (a contract: changing it moves every key): FNV-1a 64 over the
/// bytes (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`; per byte
/// `h ^= byte; h *= prime`, wrapping), then MurmurHash3's `fmix64`
/// (`k ^= k >> 33; k *= 0xff51afd7ed558ccd; k ^= k >> 33;
/// k *= 0xc4ceb9fe1a85ec53; k ^= k >> 33`), which spreads FNV's weakly mixed
/// low bits over the whole word. Not keyed: not for tables an attacker fills.
pub fn hash64(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(FNV_OFFSET, bytes))
}

/// The ring point of a server's `replica`-th virtual node:
/// `hash64(id ‖ 0xFF ‖ replica as u32 little-endian)`.
fn point_hash(id: &[u8], replica: u32) -> u64 {
    let h = fnv1a64(FNV_OFFSET, id);
    let h = fnv1a64(h, &[0xFF]);
    fmix64(fnv1a64(h, &replica.to_le_bytes()))
}

thread_local! {
    /// xorshift64* state of this thread; 0 until the first use seeds it.
    static RANDOM: Cell<u64> = const { Cell::new(0) };
}

/// A fast, non-cryptographic random u64 (xorshift64*), per thread, seeded
/// once per thread from the OS (no syscall per pick).
fn next_random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        if x == 0 {
            x = seed();
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

fn seed() -> u64 {
    let s = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the time and this thread's stack address differ
        // between threads and runs, which is enough for balancing.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let marker = 0u8;
        fmix64(nanos ^ (&marker as *const u8 as u64).rotate_left(32))
    });
    if s == 0 { 0x9e37_79b9_7f4a_7c15 } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:80", 11 + i)).collect()
    }

    /// Picks with every server eligible, the configured weights, no load.
    fn pick_all(b: &Balancer, weights: &[u32], key: &[u8]) -> Option<usize> {
        b.pick(&|_| true, &|i| weights[i], &|_| 0, key)
    }

    fn max_run(seq: &[usize]) -> usize {
        let mut best = 0;
        let mut run = 0;
        for (k, s) in seq.iter().enumerate() {
            run = if k > 0 && seq[k - 1] == *s { run + 1 } else { 1 };
            best = best.max(run);
        }
        best
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
            assert_eq!(a.to_string(), a.name());
        }
        assert_eq!(Algorithm::parse("roundrobin"), None);
        assert_eq!(Algorithm::parse(""), None);
        let keyed: Vec<_> = Algorithm::ALL.into_iter().filter(|a| a.uses_key()).collect();
        assert_eq!(keyed, [Algorithm::Source, Algorithm::Uri, Algorithm::Hash]);
    }

    #[test]
    fn hash64_fixed_vectors() {
        // FNV-1a 64 of "" is the offset basis and of "a" 0xaf63dc4c8601ec8c
        // (the published FNV vectors); the finaliser is applied on top.
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(hash64(b""), HASH_EMPTY);
        assert_eq!(hash64(b"a"), HASH_A);
        assert_eq!(hash64(b"/index.html?x=1"), HASH_URI);
        assert_eq!(hash64(&[192, 0, 2, 1]), HASH_IP);
        assert_eq!(point_hash(b"10.0.0.11:80", 0), POINT_0);
        assert_eq!(point_hash(b"10.0.0.11:80", 1), POINT_1);
        assert_eq!(fmix64(0), 0);
    }

    // Computed by an independent implementation of the definition.
    const HASH_EMPTY: u64 = 0xefd0_1f60_ba99_2926;
    const HASH_A: u64 = 0x82a2_a958_a9be_ce5b;
    const HASH_URI: u64 = 0x94d3_284a_be30_759c;
    const HASH_IP: u64 = 0x8039_3182_6a22_88ea;
    const POINT_0: u64 = 0x9655_19c1_bc21_a03a;
    const POINT_1: u64 = 0x21f2_f5f6_f60e_4c05;

    #[test]
    fn round_robin_smooth_sequence() {
        let w = [5, 1, 1];
        let b = Balancer::new(Algorithm::RoundRobin, &ids(3), &w);
        let seq: Vec<usize> = (0..21).map(|_| pick_all(&b, &w, b"").unwrap()).collect();
        let cycle = [0, 0, 1, 0, 2, 0, 0];
        for chunk in seq.chunks(7) {
            assert_eq!(chunk, cycle);
        }
        // Plain (non-smooth) weighted round robin would give a run of 5.
        assert!(max_run(&seq) <= 4, "{seq:?}");
    }

    #[test]
    fn round_robin_interleaves_when_weights_allow() {
        for w in [[1u32, 1, 1].as_slice(), &[2, 1, 1], &[3, 2], &[2, 2, 1, 1]] {
            let b = Balancer::new(Algorithm::RoundRobin, &ids(w.len()), w);
            let total: u32 = w.iter().sum();
            let seq: Vec<usize> = (0..total * 10).map(|_| pick_all(&b, w, b"").unwrap()).collect();
            assert!(max_run(&seq) <= 2, "weights {w:?}: {seq:?}");
            for (i, &wi) in w.iter().enumerate() {
                assert_eq!(seq.iter().filter(|&&s| s == i).count(), (wi * 10) as usize);
            }
        }
    }

    #[test]
    fn round_robin_equal_weights() {
        let w = [1, 1, 1];
        let b = Balancer::new(Algorithm::RoundRobin, &ids(3), &w);
        let mut counts = [0; 3];
        let mut seq = Vec::new();
        for _ in 0..60 {
            let s = pick_all(&b, &w, b"").unwrap();
            counts[s] += 1;
            seq.push(s);
        }
        assert_eq!(counts, [20, 20, 20]);
        assert_eq!(max_run(&seq), 1);
    }

    #[test]
    fn round_robin_skips_ineligible_and_zero_weight() {
        let w = [3, 2, 1, 0];
        let b = Balancer::new(Algorithm::RoundRobin, &ids(4), &w);
        let mut counts = [0; 4];
        for _ in 0..40 {
            let s = b.pick(&|i| i != 1, &|i| w[i], &|_| 0, b"").unwrap();
            counts[s] += 1;
        }
        assert_eq!(counts, [30, 0, 10, 0]);
        // Back in: the proportions of all three come back (over whole cycles).
        let mut counts = [0; 4];
        for _ in 0..60 {
            counts[pick_all(&b, &w, b"").unwrap()] += 1;
        }
        assert!((29..=31).contains(&counts[0]), "{counts:?}");
        assert!((19..=21).contains(&counts[1]), "{counts:?}");
        assert!((9..=11).contains(&counts[2]), "{counts:?}");
        assert_eq!(counts[3], 0);
        // A run-time weight of 0 skips a server with a configured weight.
        for _ in 0..20 {
            let s = b.pick(&|_| true, &|i| if i == 0 { 0 } else { w[i] }, &|_| 0, b"");
            assert_ne!(s, Some(0));
        }
        assert_eq!(b.pick(&|_| false, &|i| w[i], &|_| 0, b""), None);
        assert_eq!(b.pick(&|i| i == 3, &|i| w[i], &|_| 0, b""), None);
        let empty = Balancer::new(Algorithm::RoundRobin, &[], &[]);
        assert_eq!(empty.pick(&|_| true, &|_| 1, &|_| 0, b""), None);
    }

    #[test]
    fn leastconn_lowest_ratio() {
        let b = Balancer::new(Algorithm::LeastConn, &ids(3), &[1, 2, 1]);
        let w = [1, 2, 1];
        // active/weight: 2, 1.5, 1
        let active = [2, 3, 1];
        for _ in 0..5 {
            assert_eq!(b.pick(&|_| true, &|i| w[i], &|i| active[i], b""), Some(2));
        }
        // 5/3 < 2/1: cross-multiplication, not integer division (both 1).
        let w = [3, 1, 1];
        let active = [5, 2, 7];
        for _ in 0..5 {
            assert_eq!(b.pick(&|_| true, &|i| w[i], &|i| active[i], b""), Some(0));
        }
        // The best is ineligible or weightless: the next best.
        assert_eq!(b.pick(&|i| i != 0, &|i| w[i], &|i| active[i], b""), Some(1));
        assert_eq!(
            b.pick(&|_| true, &|i| if i == 0 { 0 } else { w[i] }, &|i| active[i], b""),
            Some(1)
        );
        assert_eq!(b.pick(&|_| false, &|i| w[i], &|i| active[i], b""), None);
        // Extreme values do not overflow.
        let active = [u32::MAX, u32::MAX - 1, u32::MAX];
        let w = [u32::MAX, u32::MAX, 1];
        assert_eq!(b.pick(&|_| true, &|i| w[i], &|i| active[i], b""), Some(1));
    }

    #[test]
    fn leastconn_ties_rotate() {
        let b = Balancer::new(Algorithm::LeastConn, &ids(4), &[1; 4]);
        let seq: Vec<usize> = (0..8).map(|_| pick_all(&b, &[1; 4], b"").unwrap()).collect();
        assert_eq!(seq, [0, 1, 2, 3, 0, 1, 2, 3]);
        // Ties among the least loaded only (1 and 3), with 2 ineligible.
        let active = [4, 1, 0, 1];
        let seq: Vec<usize> = (0..6)
            .map(|_| b.pick(&|i| i != 2, &|_| 1, &|i| active[i], b"").unwrap())
            .collect();
        assert_eq!(seq, [1, 3, 1, 3, 1, 3]);
    }

    #[test]
    fn random_two_choices_spreads_evenly() {
        let b = Balancer::new(Algorithm::Random, &ids(4), &[1; 4]);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[b.pick(&|_| true, &|_| 1, &|_| 3, b"").unwrap()] += 1;
        }
        for c in counts {
            assert!((2250..=2750).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn random_two_choices_avoids_the_loaded() {
        let b = Balancer::new(Algorithm::Random, &ids(4), &[1; 4]);
        let active = [100, 1, 1, 1];
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[b.pick(&|_| true, &|_| 1, &|i| active[i], b"").unwrap()] += 1;
        }
        // Only when both draws are server 0: 1/16 of the picks.
        assert!(counts[0] < 1000, "{counts:?}");
        for c in &counts[1..] {
            assert!(*c > 2700, "{counts:?}");
        }
    }

    #[test]
    fn random_follows_weights_and_eligibility() {
        let b = Balancer::new(Algorithm::Random, &ids(4), &[3, 1, 1, 0]);
        let w = [3, 1, 1, 0];
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            // Equal active/weight: the first draw wins, so picks follow weights.
            let s = b.pick(&|i| i != 2, &|i| w[i], &|i| 2 * w[i], b"").unwrap();
            counts[s] += 1;
        }
        assert_eq!((counts[2], counts[3]), (0, 0));
        assert!((7200..=7800).contains(&counts[0]), "{counts:?}");
        assert_eq!(b.pick(&|i| i == 3, &|i| w[i], &|_| 0, b""), None);
        assert_eq!(b.pick(&|i| i == 1, &|i| w[i], &|_| 0, b""), Some(1));
    }

    fn ip_key(k: u32) -> [u8; 4] {
        Ipv4Addr::from(0x0a00_0000 + k).octets()
    }

    fn owners(b: &Balancer, n: usize, keys: u32) -> Vec<usize> {
        let w = vec![1; n];
        (0..keys).map(|k| pick_all(b, &w, &ip_key(k)).unwrap()).collect()
    }

    #[test]
    fn consistent_same_key_same_server_across_nodes() {
        let list = ids(6);
        let a = Balancer::new(Algorithm::Source, &list, &[1; 6]);
        let b = Balancer::new(Algorithm::Source, &list, &[1; 6]);
        // A node that lists the servers in another order agrees on the id.
        let reversed: Vec<String> = list.iter().rev().cloned().collect();
        let c = Balancer::new(Algorithm::Hash, &reversed, &[1; 6]);
        for k in 0..2000 {
            let key = ip_key(k);
            let x = pick_all(&a, &[1; 6], &key).unwrap();
            assert_eq!(pick_all(&b, &[1; 6], &key), Some(x));
            let y = pick_all(&c, &[1; 6], &key).unwrap();
            assert_eq!(reversed[y], list[x]);
        }
    }

    #[test]
    fn consistent_ineligible_server_moves_only_its_keys() {
        let n = 10;
        let b = Balancer::new(Algorithm::Uri, &ids(n), &[1; 10]);
        let keys: Vec<String> = (0..10_000).map(|k| format!("/item/{k}?v=2")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| pick_all(&b, &[1; 10], k.as_bytes()).unwrap())
            .collect();
        let down = 4;
        let mut moved_to = [0u32; 10];
        for (k, key) in keys.iter().enumerate() {
            let now = b.pick(&|i| i != down, &|_| 1, &|_| 0, key.as_bytes()).unwrap();
            if before[k] == down {
                assert_ne!(now, down);
                moved_to[now] += 1;
            } else {
                assert_eq!(now, before[k], "key {key} moved");
            }
        }
        let moved: u32 = moved_to.iter().sum();
        assert!(moved > 700, "{moved}");
        let receivers = moved_to.iter().filter(|&&c| c > 0).count();
        assert!(receivers >= 8, "{moved_to:?}");
        assert!(moved_to.iter().all(|&c| c < moved / 4), "{moved_to:?}");
        // A run-time weight of 0 works like ineligibility.
        for (k, key) in keys.iter().enumerate().take(2000) {
            let now = b.pick(&|_| true, &|i| u32::from(i != down), &|_| 0, key.as_bytes());
            if before[k] != down {
                assert_eq!(now, Some(before[k]));
            }
        }
        assert_eq!(b.pick(&|_| false, &|_| 1, &|_| 0, b"x"), None);
        // The only eligible server takes every key.
        for key in keys.iter().take(100) {
            assert_eq!(b.pick(&|i| i == 7, &|_| 1, &|_| 0, key.as_bytes()), Some(7));
        }
    }

    #[test]
    fn consistent_removing_a_server_moves_few_keys() {
        let all = ids(10);
        let a = Balancer::new(Algorithm::Source, &all, &[1; 10]);
        let fewer: Vec<String> = all.iter().filter(|id| *id != &all[3]).cloned().collect();
        let b = Balancer::new(Algorithm::Source, &fewer, &[1; 9]);
        let before = owners(&a, 10, 10_000);
        let after = owners(&b, 9, 10_000);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| all[**x] != fewer[**y])
            .count();
        let of_removed = before.iter().filter(|&&x| x == 3).count();
        // Exactly the removed server's keys move.
        assert_eq!(moved, of_removed);
        assert!(moved < 2000, "{moved}");
        // Adding it back (appended last) restores every key's server.
        let mut again = fewer.clone();
        again.push(all[3].clone());
        let c = Balancer::new(Algorithm::Source, &again, &[1; 10]);
        let restored = owners(&c, 10, 10_000);
        for (x, y) in before.iter().zip(&restored) {
            assert_eq!(all[*x], again[*y]);
        }
    }

    #[test]
    fn consistent_distribution_is_even() {
        let b = Balancer::new(Algorithm::Source, &ids(4), &[1; 4]);
        let mut counts = [0u32; 4];
        for s in owners(&b, 4, 100_000) {
            counts[s] += 1;
        }
        for c in counts {
            assert!((22_500..=27_500).contains(&c), "{counts:?}");
        }
        let b = Balancer::new(Algorithm::Uri, &ids(4), &[1; 4]);
        let mut counts = [0u32; 4];
        for k in 0..100_000 {
            counts[pick_all(&b, &[1; 4], format!("/p/{k}").as_bytes()).unwrap()] += 1;
        }
        for c in counts {
            assert!((22_500..=27_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn consistent_follows_weights() {
        let w = [2, 1, 0];
        let b = Balancer::new(Algorithm::Hash, &ids(3), &w);
        let mut counts = [0u32; 3];
        for k in 0..30_000u32 {
            counts[pick_all(&b, &w, &k.to_be_bytes()).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.7..=2.3).contains(&ratio), "{counts:?}");
        // Configured weight 0: not on the ring, even with a run-time weight.
        assert_eq!(b.pick(&|i| i == 2, &|_| 5, &|_| 0, b"k"), None);
    }

    #[test]
    fn ring_is_bounded_and_every_weighted_server_is_on_it() {
        let list = ids(200);
        let mut w = vec![256u32; 200];
        w[7] = 1;
        let b = Balancer::new(Algorithm::Hash, &list, &w);
        assert!(b.ring.points.len() as u64 <= MAX_RING_POINTS);
        assert!(b.ring.counts.iter().all(|&c| c >= 1));
        assert!(b.ring.points.windows(2).all(|p| p[0] <= p[1]));
        // The bucket index agrees with a plain binary search.
        for k in 0..5000u32 {
            let h = hash64(&k.to_le_bytes());
            let expect = b.ring.points.partition_point(|&p| p < h) % b.ring.points.len();
            assert_eq!(b.ring.find(h), expect);
        }
        // Past the last point: wraps to the first.
        assert_eq!(b.ring.find(u64::MAX), 0);
        // Only server 7 eligible: it still gets picked.
        assert_eq!(b.pick(&|i| i == 7, &|_| 1, &|_| 0, b"abc"), Some(7));
        // Non-hash algorithms build no ring.
        let rr = Balancer::new(Algorithm::RoundRobin, &list, &w);
        assert!(rr.ring.points.is_empty());
    }
}
