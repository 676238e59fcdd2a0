//! Session stickiness: a bounded stick table and stateless inserted cookies.
//!
//! Two mechanisms, after HAProxy's:
//!
//! * [`StickTable`] — `stick-table type string len N size S expire E` with
//!   `stick store-response res.cook(X)` / `stick on req.cook(X)`: an
//!   application's session key (a byte string, truncated to `key_len` bytes)
//!   maps to a server index. The table is bounded: when full, the least
//!   recently touched entry *of the shard the new key falls in* is evicted.
//!   Entries expire `expire` after their last store or match.
//! * [`CookieCodec`] — `cookie SRV insert nocache dynamic` with
//!   `dynamic-cookie-key`, `maxidle`, `maxlife`: the cookie value names the
//!   server by a keyed hash of its address, so balancers sharing the key and
//!   the server set agree on values with no shared state, and the value tells
//!   a client nothing about the server. Date stamps, when configured, are
//!   authenticated so a client cannot extend its own stickiness.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

// ---------------------------------------------------------------------------
// Stick table
// ---------------------------------------------------------------------------

/// Most shards a table is split into (a power of two).
const MAX_SHARDS: usize = 16;
/// Fewest entries per shard before a table gets more than one shard: with
/// small shards, per-shard LRU would be a poor stand-in for a global one.
const MIN_PER_SHARD: usize = 64;
/// Longest expiry honoured; longer values are clamped (keeps `Instant`
/// arithmetic from overflowing).
const MAX_EXPIRE: Duration = Duration::from_secs(100 * 365 * 86_400);
/// End of a slot list.
const NIL: usize = usize::MAX;

/// A bounded, sharded map from session keys to server indexes.
///
/// * Keys are truncated to `key_len` bytes, so two keys equal in their first
///   `key_len` bytes are the same entry (as in HAProxy's `len`).
/// * At most `size` entries are held. The table is split into up to 16 shards
///   (fewer for small tables, so that every shard holds at least 64 entries
///   when it can); shard capacities add up to exactly `size`. A store of a new
///   key into a full shard evicts that shard's least recently touched entry,
///   which is an approximation of a global LRU that keeps locks short.
/// * An entry expires `expire` after it was last stored or matched. Expired
///   entries are never returned; they are dropped on lookup, when a full shard
///   needs room (expired entries are always the least recently touched), or by
///   [`StickTable::purge`].
/// * Each operation locks one shard for a hash-map probe and a few pointer
///   updates. A hit allocates nothing; only storing a new key allocates (one
///   shared copy of the key).
pub struct StickTable {
    shards: Box<[Mutex<Shard>]>,
    /// `shards.len() - 1`; the count is a power of two.
    mask: usize,
    /// Sum of the shards' capacities.
    size: usize,
    hasher: RandomState,
    expire: Duration,
    key_len: usize,
}

impl fmt::Debug for StickTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickTable")
            .field("shards", &self.shards.len())
            .field("size", &self.size)
            .field("expire", &self.expire)
            .field("key_len", &self.key_len)
            .finish_non_exhaustive()
    }
}

impl StickTable {
    /// A table of at most `size` entries (at least 1), each expiring `expire`
    /// after its last store or match, with keys cut to `key_len` bytes (at
    /// least 1).
    pub fn new(size: usize, expire: Duration, key_len: usize) -> StickTable {
        let size = size.max(1);
        let wanted = (size / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        // Round down to a power of two so a shard is picked with a mask.
        let shards = 1usize << (usize::BITS - 1 - wanted.leading_zeros());
        Self::with_shards(size, expire, key_len, shards)
    }

    /// As [`StickTable::new`] with a given number of shards (rounded down to
    /// a power of two, at most `size`).
    fn with_shards(size: usize, expire: Duration, key_len: usize, shards: usize) -> StickTable {
        let size = size.max(1);
        let shards = shards.clamp(1, size);
        let shards = 1usize << (usize::BITS - 1 - shards.leading_zeros());
        let (base, extra) = (size / shards, size % shards);
        let shards: Box<[Mutex<Shard>]> = (0..shards)
            .map(|i| Mutex::new(Shard::new(base + usize::from(i < extra))))
            .collect();
        StickTable {
            mask: shards.len() - 1,
            shards,
            size,
            hasher: RandomState::new(),
            expire: expire.min(MAX_EXPIRE),
            key_len: key_len.max(1),
        }
    }

    /// The server stored for this key, if present and not expired (refreshes
    /// its expiry and makes it the most recently used).
    pub fn lookup(&self, key: &[u8]) -> Option<u32> {
        self.lookup_at(key, Instant::now())
    }

    /// Stores (or replaces) key -> server.
    pub fn store(&self, key: &[u8], server: u32) {
        self.store_at(key, server, Instant::now())
    }

    /// Forgets a key (its server went away / the entry is rewritten).
    pub fn remove(&self, key: &[u8]) {
        let key = self.cut(key);
        self.shard(key).remove(key);
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether the table holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries; returns how many are left (for a periodic sweep).
    pub fn purge(&self) -> usize {
        self.purge_at(Instant::now())
    }

    /// Most entries the table holds (the `size` it was made with, at least 1).
    pub fn capacity(&self) -> usize {
        self.size
    }

    /// [`StickTable::lookup`] at a given time.
    pub fn lookup_at(&self, key: &[u8], now: Instant) -> Option<u32> {
        let key = self.cut(key);
        let deadline = self.deadline(now);
        self.shard(key).lookup(key, now, deadline)
    }

    /// [`StickTable::store`] at a given time.
    pub fn store_at(&self, key: &[u8], server: u32, now: Instant) {
        let key = self.cut(key);
        let deadline = self.deadline(now);
        self.shard(key).store(key, server, now, deadline)
    }

    /// [`StickTable::purge`] at a given time.
    pub fn purge_at(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut s = lock(s);
                s.purge(now);
                s.map.len()
            })
            .sum()
    }

    fn cut<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        &key[..key.len().min(self.key_len)]
    }

    fn deadline(&self, now: Instant) -> Instant {
        now.checked_add(self.expire).unwrap_or(now)
    }

    fn shard_index(&self, key: &[u8]) -> usize {
        // Only the shard's choice uses this hash; the shard's map has its own
        // keyed hasher, so crafted keys cannot collide there on purpose.
        (self.hasher.hash_one(key) as usize) & self.mask
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.shard_index(key)])
    }
}

/// Locks a shard. A panic while one was held cannot leave it half updated in
/// a way that matters more than stopping every later request, so a poisoned
/// lock is used as is.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One entry, a node of the shard's recency list.
struct Slot {
    key: Arc<[u8]>,
    server: u32,
    expires: Instant,
    /// Towards the most recently touched end.
    prev: usize,
    /// Towards the least recently touched end.
    next: usize,
}

/// A map to slots plus a doubly linked list of the slots by recency (an LRU).
///
/// Every touch sets `expires` to at least the head's, so the list is also in
/// expiry order: the tail expires first.
struct Shard {
    map: HashMap<Arc<[u8]>, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Most recently touched.
    head: usize,
    /// Least recently touched.
    tail: usize,
    cap: usize,
    /// Key of unused slots (shared, so freeing a slot allocates nothing).
    empty: Arc<[u8]>,
}

impl Shard {
    fn new(cap: usize) -> Shard {
        Shard {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            cap,
            empty: Arc::from(&[][..]),
        }
    }

    fn lookup(&mut self, key: &[u8], now: Instant, deadline: Instant) -> Option<u32> {
        let i = *self.map.get(key)?;
        if self.slots[i].expires <= now {
            self.drop_slot(i);
            return None;
        }
        self.touch(i, deadline);
        Some(self.slots[i].server)
    }

    fn store(&mut self, key: &[u8], server: u32, now: Instant, deadline: Instant) {
        if let Some(&i) = self.map.get(key) {
            self.slots[i].server = server;
            self.touch(i, deadline);
            return;
        }
        // Expired entries first (they sit at the tail), then the least
        // recently touched one if still full.
        self.purge(now);
        if self.map.len() >= self.cap && self.tail != NIL {
            self.drop_slot(self.tail);
        }
        let key: Arc<[u8]> = Arc::from(key);
        let slot = Slot {
            key: key.clone(),
            server,
            expires: deadline,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.map.insert(key, i);
        self.push_front(i, deadline);
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(&i) = self.map.get(key) {
            self.drop_slot(i);
        }
    }

    /// Drops expired entries from the tail.
    fn purge(&mut self, now: Instant) {
        while self.tail != NIL && self.slots[self.tail].expires <= now {
            self.drop_slot(self.tail);
        }
    }

    /// Moves a slot to the head with a new expiry.
    fn touch(&mut self, i: usize, deadline: Instant) {
        self.unlink(i);
        self.push_front(i, deadline);
    }

    fn push_front(&mut self, i: usize, deadline: Instant) {
        // Keep the list in expiry order even if callers' clocks were read a
        // little out of order before they got the lock.
        let expires = match self.head {
            NIL => deadline,
            h => deadline.max(self.slots[h].expires),
        };
        let s = &mut self.slots[i];
        s.expires = expires;
        s.prev = NIL;
        s.next = self.head;
        if self.head != NIL {
            self.slots[self.head].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        if prev != NIL {
            self.slots[prev].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    /// Removes a slot from the list and the map and frees it.
    fn drop_slot(&mut self, i: usize) {
        self.unlink(i);
        let key = std::mem::replace(&mut self.slots[i].key, self.empty.clone());
        self.map.remove(&*key);
        self.free.push(i);
    }
}

// ---------------------------------------------------------------------------
// Inserted cookies with a dynamic key
// ---------------------------------------------------------------------------

/// Separator between the parts of a stamped value. `|` (0x7C) is a
/// cookie-octet in RFC 6265 (§4.1.1: %x5D-7E), unlike `,` `;` `"` `\` and
/// space; and it cannot occur in the hex and base36 parts.
const SEP: char = '|';
/// Hex characters of a server's identity part (8 bytes).
const ID_HEX: usize = 16;
/// Hex characters of a stamped value's tag (8 bytes).
const TAG_HEX: usize = 16;
/// How far in the future a date stamp may lie (clock skew between balancers
/// sharing a key); beyond it the value is refused.
const MAX_SKEW: u64 = 86_400;
/// Longest base36 form of a u64 (`3w5e11264sgsf`).
const B36_MAX: usize = 13;

/// Makes and reads the values of an inserted stickiness cookie.
///
/// Value forms (all characters are RFC 6265 cookie-octets: `0-9a-z|`):
///
/// * without `maxidle`/`maxlife`: `<id>`, the server's identity, 16 hex;
/// * with either: `<id>|<first_seen>|<last_seen>|<tag>`, the times in unix
///   seconds, base36, and `tag` = HMAC-SHA-256(key, `"t|" <id> "|" <first>
///   "|" <last>`) truncated to 8 bytes, 16 hex. The tag keeps a client from
///   moving its own dates (and so from outliving `maxidle`/`maxlife`).
///
/// `<id>` = HMAC-SHA-256(key, `"<ip>|<port>"`) truncated to 8 bytes, with the
/// ip in its standard text form (`192.0.2.1`, `2001:db8::1`): the same for
/// every balancer with the same key, and unrelated to the address for anyone
/// without it.
#[derive(Clone)]
pub struct CookieCodec {
    /// HMAC keyed once; cloned per use.
    mac: Hmac<Sha256>,
    maxidle: Option<u64>,
    maxlife: Option<u64>,
}

impl fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CookieCodec")
            .field("maxidle", &self.maxidle)
            .field("maxlife", &self.maxlife)
            .finish_non_exhaustive()
    }
}

/// The `dynamic-cookie-key` was shorter than [`CookieCodec::MIN_KEY`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTooShort {
    /// Length given.
    pub len: usize,
}

impl fmt::Display for KeyTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dynamic cookie key is {} bytes, at least {} are needed",
            self.len,
            CookieCodec::MIN_KEY
        )
    }
}

impl std::error::Error for KeyTooShort {}

impl CookieCodec {
    /// Fewest key bytes accepted.
    pub const MIN_KEY: usize = 16;

    /// `key`: the secret (at least [`CookieCodec::MIN_KEY`] bytes);
    /// `maxidle`/`maxlife`: None = no date stamps in the value (whole
    /// seconds are used).
    ///
    /// # Panics
    ///
    /// When the key is shorter than [`CookieCodec::MIN_KEY`]; configuration
    /// checks it first (or use [`CookieCodec::try_new`]).
    pub fn new(key: &[u8], maxidle: Option<Duration>, maxlife: Option<Duration>) -> CookieCodec {
        match Self::try_new(key, maxidle, maxlife) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`CookieCodec::new`], with a short key as an error.
    pub fn try_new(
        key: &[u8],
        maxidle: Option<Duration>,
        maxlife: Option<Duration>,
    ) -> Result<CookieCodec, KeyTooShort> {
        if key.len() < Self::MIN_KEY {
            return Err(KeyTooShort { len: key.len() });
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        Ok(CookieCodec {
            mac,
            maxidle: maxidle.map(|d| d.as_secs()),
            maxlife: maxlife.map(|d| d.as_secs()),
        })
    }

    /// Whether values carry date stamps (`maxidle` or `maxlife` is set).
    pub fn stamped(&self) -> bool {
        self.maxidle.is_some() || self.maxlife.is_some()
    }

    /// The server's identity part: HMAC-SHA-256(key, "ip|port") truncated to
    /// 8 bytes, as 16 lower-case hex characters.
    pub fn server_value(&self, addr: SocketAddr) -> String {
        let id = self.id_hex(addr);
        // Hex digits are ASCII.
        id.iter().map(|&b| char::from(b)).collect()
    }

    /// Whether a value's identity part (from [`CookieCodec::decode`]) names
    /// this server; constant time in the value's content.
    ///
    /// This computes an HMAC; with many servers, compute each
    /// [`CookieCodec::server_value`] once and compare with [`value_eq`].
    pub fn matches(&self, value_part: &str, addr: SocketAddr) -> bool {
        value_part.as_bytes().ct_eq(&self.id_hex(addr)).into()
    }

    /// The full value to send in Set-Cookie for this server: the identity
    /// part alone, or with `maxidle`/`maxlife` set the stamped form with
    /// `first_seen` (carried over from the request's valid cookie, else
    /// `now_unix`) and `last_seen` = `now_unix`.
    pub fn encode(&self, addr: SocketAddr, first_seen: Option<u64>, now_unix: u64) -> String {
        let id = self.id_hex(addr);
        let mut out = String::with_capacity(ID_HEX + 2 * B36_MAX + TAG_HEX + 3);
        out.extend(id.iter().map(|&b| char::from(b)));
        if !self.stamped() {
            return out;
        }
        // A first sighting after now (a peer's clock ahead) is kept as now.
        let first = first_seen.unwrap_or(now_unix).min(now_unix);
        out.push(SEP);
        push_b36(&mut out, first);
        out.push(SEP);
        push_b36(&mut out, now_unix);
        let tag = self.tag(&out);
        out.push(SEP);
        out.extend(tag.iter().map(|&b| char::from(b)));
        out
    }

    /// Parses a request's cookie value: `Some((identity part, first_seen))`
    /// when well formed, authentic and not expired by `maxidle` (now -
    /// last_seen > maxidle) or `maxlife` (now - first_seen > maxlife); None
    /// otherwise (the caller then balances normally and rewrites the cookie).
    ///
    /// The identity part is not checked against servers here (see
    /// [`CookieCodec::matches`]). With stamps configured, an unstamped value
    /// is refused (it could never expire); without, a stamped value with a
    /// good tag is accepted (a configuration just changed) and its dates are
    /// not checked. Dates more than a day ahead of `now_unix` are refused.
    pub fn decode<'a>(&self, value: &'a str, now_unix: u64) -> Option<(&'a str, Option<u64>)> {
        let b = value.as_bytes();
        if b.len() == ID_HEX {
            return (!self.stamped() && is_lower_hex(b)).then_some((value, None));
        }
        // <id>|<first>|<last>|<tag>; all ASCII, so byte indexes are char
        // boundaries once the separators are found.
        if b.len() < ID_HEX + 3 + 2 + TAG_HEX || b.len() > ID_HEX + 3 + 2 * B36_MAX + TAG_HEX {
            return None;
        }
        let (signed, tag) = value.split_at_checked(value.len() - TAG_HEX)?;
        let signed = signed.strip_suffix(SEP)?;
        let id = signed.get(..ID_HEX)?;
        let dates = signed.get(ID_HEX..)?.strip_prefix(SEP)?;
        let (first, last) = dates.split_once(SEP)?;
        if !is_lower_hex(id.as_bytes()) || !is_lower_hex(tag.as_bytes()) {
            return None;
        }
        let first = parse_b36(first)?;
        let last = parse_b36(last)?;
        let good: bool = self.tag(signed).ct_eq(tag.as_bytes()).into();
        if !good || first > last {
            return None;
        }
        if self.stamped() {
            if last > now_unix.saturating_add(MAX_SKEW) {
                return None;
            }
            if let Some(idle) = self.maxidle
                && now_unix.saturating_sub(last) > idle
            {
                return None;
            }
            if let Some(life) = self.maxlife
                && now_unix.saturating_sub(first) > life
            {
                return None;
            }
        }
        Some((id, Some(first)))
    }

    /// The identity part as lower-case hex bytes.
    fn id_hex(&self, addr: SocketAddr) -> [u8; ID_HEX] {
        let mut m = self.mac.clone();
        // Written straight into the MAC: no allocation.
        let _ = fmt::Write::write_fmt(&mut MacWriter(&mut m), format_args!("{}|{}", addr.ip(), addr.port()));
        hex8(&m.finalize().into_bytes())
    }

    /// The tag of a stamped value's signed part (`<id>|<first>|<last>`).
    fn tag(&self, signed: &str) -> [u8; TAG_HEX] {
        let mut m = self.mac.clone();
        m.update(b"t|");
        m.update(signed.as_bytes());
        hex8(&m.finalize().into_bytes())
    }
}

/// Compares two identity parts in constant time (for callers that keep each
/// server's [`CookieCodec::server_value`]).
pub fn value_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Feeds formatted text into a MAC.
struct MacWriter<'m>(&'m mut Hmac<Sha256>);

impl fmt::Write for MacWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// The first 8 bytes as 16 lower-case hex characters.
fn hex8(bytes: &[u8]) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, &b) in bytes.iter().take(8).enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    out
}

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn push_b36(out: &mut String, mut n: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; B36_MAX];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|&b| char::from(b)));
}

/// Canonical lower-case base36: digits `0-9a-z`, no sign, no leading zero
/// (but `0` itself), no overflow.
fn parse_b36(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > B36_MAX || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    b.iter().try_fold(0u64, |n, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        n.checked_mul(36)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const MIN: Duration = Duration::from_secs(60);

    // ---- stick table -------------------------------------------------

    #[test]
    fn lookup_after_store() {
        let t = StickTable::new(100, 30 * MIN, 32);
        assert_eq!(t.lookup(b"abc"), None);
        t.store(b"abc", 3);
        t.store(b"def", 5);
        assert_eq!(t.lookup(b"abc"), Some(3));
        assert_eq!(t.lookup(b"def"), Some(5));
        assert_eq!(t.lookup(b"xyz"), None);
        t.store(b"abc", 7);
        assert_eq!(t.lookup(b"abc"), Some(7));
        assert_eq!(t.len(), 2);
        t.remove(b"abc");
        assert_eq!(t.lookup(b"abc"), None);
        assert_eq!(t.len(), 1);
        t.remove(b"nothing");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn expiry_and_refresh_on_match() {
        let t = StickTable::new(100, 30 * MIN, 32);
        let t0 = Instant::now();
        t.store_at(b"a", 1, t0);
        t.store_at(b"b", 2, t0);
        // Just before the deadline: still there; the match of "a" refreshes it.
        assert_eq!(t.lookup_at(b"a", t0 + 29 * MIN), Some(1));
        // "b" was not touched: gone at store + expire.
        assert_eq!(t.lookup_at(b"b", t0 + 30 * MIN), None);
        // "a" lives until its last match + expire.
        assert_eq!(t.lookup_at(b"a", t0 + 58 * MIN), Some(1));
        assert_eq!(t.lookup_at(b"a", t0 + 58 * MIN + 30 * MIN), None);
        assert_eq!(t.len(), 0);
        // A store refreshes too.
        t.store_at(b"c", 1, t0);
        t.store_at(b"c", 4, t0 + 20 * MIN);
        assert_eq!(t.lookup_at(b"c", t0 + 45 * MIN), Some(4));
    }

    #[test]
    fn keys_truncated_to_key_len() {
        let t = StickTable::new(100, 30 * MIN, 4);
        t.store(b"abcdXXXX", 1);
        // Same first 4 bytes: the same entry, by design.
        assert_eq!(t.lookup(b"abcdYYYY"), Some(1));
        assert_eq!(t.lookup(b"abcd"), Some(1));
        assert_eq!(t.lookup(b"abc"), None);
        t.store(b"abcdZ", 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(b"abcdXXXX"), Some(2));
        t.remove(b"abcd-anything");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn size_bound_never_exceeded() {
        for size in [1, 7, 16, 100, 1000, 10_000] {
            let t = StickTable::new(size, 30 * MIN, 32);
            assert_eq!(t.capacity(), size);
            for i in 0..10 * size {
                t.store(format!("key-{i}").as_bytes(), i as u32);
                assert!(t.len() <= size, "size {size}: {} after {i}", t.len());
            }
            // Full: every shard filled up.
            assert_eq!(t.len(), size);
            // The last key stored is always there.
            let last = 10 * size - 1;
            assert_eq!(t.lookup(format!("key-{last}").as_bytes()), Some(last as u32));
        }
    }

    #[test]
    fn lru_eviction_in_one_shard() {
        let t = StickTable::with_shards(4, 30 * MIN, 32, 1);
        let t0 = Instant::now();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            t.store_at(*k, i as u32, t0);
        }
        // Touch "a" (match) and "b" (store): "c" is now the oldest.
        assert_eq!(t.lookup_at(b"a", t0 + MIN), Some(0));
        t.store_at(b"b", 9, t0 + MIN);
        t.store_at(b"e", 4, t0 + 2 * MIN);
        assert_eq!(t.len(), 4);
        assert_eq!(t.lookup_at(b"c", t0 + 2 * MIN), None);
        // Then "d".
        t.store_at(b"f", 5, t0 + 3 * MIN);
        assert_eq!(t.lookup_at(b"d", t0 + 3 * MIN), None);
        for (k, v) in [(b"a", 0), (b"b", 9), (b"e", 4), (b"f", 5)] {
            assert_eq!(t.lookup_at(k, t0 + 3 * MIN), Some(v));
        }
    }

    #[test]
    fn recently_used_survive_eviction_sharded() {
        let size = 16 * 64;
        let t = StickTable::new(size, 30 * MIN, 32);
        assert_eq!(t.shards.len(), 16);
        let per_shard = size / 16;
        // Keys that fill every shard exactly, grouped by shard.
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); 16];
        let mut n = 0;
        while by_shard.iter().any(|v| v.len() < per_shard) {
            let k = format!("old-{n}");
            n += 1;
            let s = t.shard_index(k.as_bytes());
            if by_shard[s].len() < per_shard {
                by_shard[s].push(k);
            }
        }
        for keys in &by_shard {
            for k in keys {
                t.store(k.as_bytes(), 1);
            }
        }
        assert_eq!(t.len(), size);
        // The first half of each shard's keys stays in use (matches).
        for keys in &by_shard {
            for k in &keys[..per_shard / 2] {
                assert_eq!(t.lookup(k.as_bytes()), Some(1));
            }
        }
        // Half a shard of new keys into every shard.
        let mut added = [0usize; 16];
        let mut n = 0;
        while added.iter().any(|&a| a < per_shard / 2) {
            let k = format!("new-{n}");
            n += 1;
            let s = t.shard_index(k.as_bytes());
            if added[s] < per_shard / 2 {
                added[s] += 1;
                t.store(k.as_bytes(), 2);
            }
        }
        assert_eq!(t.len(), size);
        // The used half survived, the idle half made room.
        for keys in &by_shard {
            for k in &keys[..per_shard / 2] {
                assert_eq!(t.lookup(k.as_bytes()), Some(1), "hot key {k} evicted");
            }
            for k in &keys[per_shard / 2..] {
                assert_eq!(t.lookup(k.as_bytes()), None, "idle key {k} kept");
            }
        }
    }

    #[test]
    fn purge_drops_expired() {
        let t = StickTable::new(1000, 10 * MIN, 32);
        let t0 = Instant::now();
        for i in 0..100u32 {
            t.store_at(&i.to_be_bytes(), i, t0);
        }
        for i in 0..40u32 {
            t.store_at(&i.to_be_bytes(), i, t0 + 5 * MIN);
        }
        assert_eq!(t.purge_at(t0 + 9 * MIN), 100);
        assert_eq!(t.purge_at(t0 + 10 * MIN), 40);
        assert_eq!(t.len(), 40);
        assert_eq!(t.lookup_at(&50u32.to_be_bytes(), t0 + 10 * MIN), None);
        assert_eq!(t.lookup_at(&5u32.to_be_bytes(), t0 + 10 * MIN), Some(5));
        assert_eq!(t.purge_at(t0 + 60 * MIN), 0);
        assert!(t.is_empty());
        // Slots are reused after a purge.
        t.store_at(b"again", 1, t0 + 61 * MIN);
        assert_eq!(t.lookup_at(b"again", t0 + 61 * MIN), Some(1));
    }

    #[test]
    fn expired_entries_make_room_first() {
        let t = StickTable::with_shards(3, 10 * MIN, 32, 1);
        let t0 = Instant::now();
        t.store_at(b"a", 1, t0);
        t.store_at(b"b", 2, t0 + MIN);
        t.store_at(b"c", 3, t0 + 6 * MIN);
        // "a" and "b" expired: both go, nothing alive is evicted.
        t.store_at(b"d", 4, t0 + 11 * MIN);
        assert_eq!(t.len(), 2);
        for (k, v) in [(b"c", 3), (b"d", 4)] {
            assert_eq!(t.lookup_at(k, t0 + 11 * MIN), Some(v));
        }
    }

    #[test]
    fn concurrent_stores_stay_bounded() {
        let size = 1000;
        let t = StickTable::new(size, 30 * MIN, 32);
        std::thread::scope(|s| {
            for th in 0..8u32 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..10 * size as u32 {
                        let key = format!("{th}-{i}");
                        t.store(key.as_bytes(), th);
                        if i % 3 == 0 {
                            let _ = t.lookup(key.as_bytes());
                        }
                        if i % 97 == 0 {
                            assert!(t.len() <= size);
                        }
                    }
                });
            }
        });
        assert_eq!(t.len(), size);
        assert_eq!(t.purge(), size);
    }

    // ---- cookie codec -----------------------------------------------

    const KEY: &[u8] = b"0123456789abcdef-secret";

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    fn is_cookie_octet(c: char) -> bool {
        // RFC 6265 4.1.1.
        matches!(c as u32, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
    }

    #[test]
    fn short_key_refused() {
        assert_eq!(
            CookieCodec::try_new(b"short", None, None).unwrap_err(),
            KeyTooShort { len: 5 }
        );
        assert!(CookieCodec::try_new(&[7; CookieCodec::MIN_KEY], None, None).is_ok());
        assert!(std::panic::catch_unwind(|| CookieCodec::new(&[7; 15], None, None)).is_err());
        // The key never shows in Debug.
        let c = CookieCodec::new(KEY, None, None);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn server_value_is_keyed_hmac() {
        let a = CookieCodec::new(KEY, None, None);
        let b = CookieCodec::new(KEY, Some(MIN), Some(60 * MIN));
        let c = CookieCodec::new(b"another key of 16+ bytes", None, None);
        let s1 = v4(192, 0, 2, 10, 8080);
        let s2 = v4(192, 0, 2, 11, 8080);
        let s3 = v4(192, 0, 2, 10, 8081);
        assert_eq!(a.server_value(s1), b.server_value(s1));
        assert_ne!(a.server_value(s1), c.server_value(s1));
        assert_ne!(a.server_value(s1), a.server_value(s2));
        assert_ne!(a.server_value(s1), a.server_value(s3));
        // Exactly HMAC-SHA-256(key, "ip|port")[..8] in hex.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).unwrap();
        m.update(b"192.0.2.10|8080");
        let full = m.finalize().into_bytes();
        let want: String = full[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.server_value(s1), want);
        let v6 = SocketAddr::new(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()), 443);
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).unwrap();
        m.update(b"2001:db8::1|443");
        let want: String = m.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a.server_value(v6), want);
        // matches / value_eq.
        assert!(a.matches(&a.server_value(s1), s1));
        assert!(!a.matches(&a.server_value(s1), s2));
        assert!(!a.matches(&c.server_value(s1), s1));
        assert!(!a.matches("", s1));
        assert!(!a.matches(&a.server_value(s1)[..15], s1));
        assert!(value_eq(&a.server_value(s2), &b.server_value(s2)));
        assert!(!value_eq(&a.server_value(s2), &c.server_value(s2)));
    }

    #[test]
    fn value_hides_address() {
        let c = CookieCodec::new(KEY, Some(30 * MIN), Some(600 * MIN));
        for addr in [
            v4(203, 0, 113, 57, 8443),
            v4(198, 51, 100, 77, 9090),
            v4(172, 29, 181, 203, 31337),
        ] {
            let IpAddr::V4(ip) = addr.ip() else { unreachable!() };
            let o = ip.octets();
            let port = addr.port();
            let forbidden = [
                ip.to_string(),
                port.to_string(),
                format!("{:02x}{:02x}{:02x}{:02x}", o[0], o[1], o[2], o[3]),
                format!("{:04x}", port),
                format!("{}", u32::from(ip)),
                format!("{:x}", u32::from(ip)),
                format!("{}{}{}{}", o[0], o[1], o[2], o[3]),
            ];
            for v in [c.server_value(addr), c.encode(addr, None, 1_700_000_000)] {
                for f in &forbidden {
                    assert!(!v.contains(f.as_str()), "{v} contains {f}");
                }
            }
        }
    }

    #[test]
    fn unstamped_round_trip() {
        let c = CookieCodec::new(KEY, None, None);
        let s = v4(10, 1, 2, 3, 80);
        let v = c.encode(s, Some(5), 1_700_000_000);
        assert_eq!(v, c.server_value(s));
        let (id, first) = c.decode(&v, 1_700_000_000).unwrap();
        assert_eq!((id, first), (v.as_str(), None));
        assert!(c.matches(id, s));
        // Upper case or wrong length: not ours.
        assert_eq!(c.decode(&v.to_uppercase(), 0), None);
        assert_eq!(c.decode(&v[..15], 0), None);
        assert_eq!(c.decode(&format!("{v}0"), 0), None);
        // A stamped value from before a configuration change is still read.
        let stamped = CookieCodec::new(KEY, Some(MIN), None).encode(s, None, 1000);
        assert_eq!(c.decode(&stamped, 10_000_000), Some((v.as_str(), Some(1000))));
    }

    #[test]
    fn stamped_round_trip_and_first_seen_carried() {
        let c = CookieCodec::new(KEY, Some(30 * MIN), Some(240 * MIN));
        let s = v4(10, 1, 2, 3, 80);
        let t0 = 1_700_000_000;
        let v0 = c.encode(s, None, t0);
        assert!(v0.starts_with(&c.server_value(s)));
        assert_eq!(v0.matches('|').count(), 3);
        let (id, first) = c.decode(&v0, t0 + 60).unwrap();
        assert!(c.matches(id, s));
        assert_eq!(first, Some(t0));
        // Re-issued ten minutes later: first_seen kept, last_seen moves.
        let v1 = c.encode(s, first, t0 + 600);
        assert_ne!(v0, v1);
        assert_eq!(c.decode(&v1, t0 + 600), Some((id, Some(t0))));
        let parts: Vec<&str> = v1.split('|').collect();
        assert_eq!(parse_b36(parts[1]), Some(t0));
        assert_eq!(parse_b36(parts[2]), Some(t0 + 600));
        // An unstamped value is refused when stamps are required.
        assert_eq!(c.decode(&c.server_value(s), t0), None);
    }

    #[test]
    fn maxidle_and_maxlife() {
        let c = CookieCodec::new(KEY, Some(30 * MIN), Some(120 * MIN));
        let s = v4(10, 1, 2, 3, 80);
        let t0 = 1_700_000_000;
        let v = c.encode(s, None, t0);
        assert!(c.decode(&v, t0 + 1800).is_some());
        assert_eq!(c.decode(&v, t0 + 1801), None, "past maxidle");
        // Kept fresh, it still dies at maxlife.
        let mut first = None;
        let mut now = t0;
        while now + 1000 <= t0 + 7200 {
            let v = c.encode(s, first, now);
            first = c.decode(&v, now + 1000).map(|(_, f)| f.unwrap());
            assert_eq!(first, Some(t0));
            now += 1000;
        }
        let v = c.encode(s, first, t0 + 7000);
        assert!(c.decode(&v, t0 + 7200).is_some());
        assert_eq!(c.decode(&v, t0 + 7201), None, "past maxlife");
        // Only maxlife.
        let l = CookieCodec::new(KEY, None, Some(MIN));
        let v = l.encode(s, None, t0);
        assert!(l.decode(&v, t0 + 60).is_some());
        assert_eq!(l.decode(&v, t0 + 61), None);
        // Only maxidle: no life limit.
        let i = CookieCodec::new(KEY, Some(MIN), None);
        let v = i.encode(s, Some(0), t0);
        assert_eq!(i.decode(&v, t0 + 60).map(|x| x.1), Some(Some(0)));
        // Dates far in the future (a bad clock) are refused.
        let v = c.encode(s, None, t0 + 2 * MAX_SKEW);
        assert_eq!(c.decode(&v, t0), None);
        let v = c.encode(s, None, t0 + 60);
        assert!(c.decode(&v, t0).is_some());
    }

    #[test]
    fn tampered_values_refused() {
        let c = CookieCodec::new(KEY, Some(30 * MIN), Some(240 * MIN));
        let other = CookieCodec::new(b"a different secret key", Some(30 * MIN), Some(240 * MIN));
        let s = v4(10, 1, 2, 3, 80);
        let t0 = 1_700_000_000;
        let v = c.encode(s, Some(t0 - 100), t0);
        assert!(c.decode(&v, t0).is_some());
        // Another key's value.
        assert_eq!(c.decode(&other.encode(s, None, t0), t0), None);
        // Every single-character change.
        let alphabet = "0123456789abcdefz|-A";
        for i in 0..v.len() {
            for r in alphabet.chars() {
                let mut t: Vec<char> = v.chars().collect();
                if t[i] == r {
                    continue;
                }
                t[i] = r;
                let t: String = t.into_iter().collect();
                assert_eq!(c.decode(&t, t0), None, "accepted {t}");
            }
        }
        // A moved date with the old tag.
        let parts: Vec<&str> = v.split('|').collect();
        let mut later = String::new();
        push_b36(&mut later, t0 + 3600);
        let forged = format!("{}|{}|{}|{}", parts[0], parts[1], later, parts[3]);
        assert_eq!(c.decode(&forged, t0 + 3600), None);
        // Another server's id with this tag.
        let forged = format!(
            "{}|{}|{}|{}",
            c.server_value(v4(10, 1, 2, 4, 80)),
            parts[1],
            parts[2],
            parts[3]
        );
        assert_eq!(c.decode(&forged, t0), None);
        // Truncations and extensions.
        for n in 0..v.len() {
            assert_eq!(c.decode(&v[..n], t0), None);
        }
        assert_eq!(c.decode(&format!("{v}0"), t0), None);
        assert_eq!(c.decode(&format!("{v}|"), t0), None);
    }

    #[test]
    fn garbage_never_panics() {
        let c = CookieCodec::new(KEY, Some(30 * MIN), Some(240 * MIN));
        let u = CookieCodec::new(KEY, None, None);
        let mut edge: Vec<String> = [
            "",
            "|",
            "||||",
            "|||",
            "0|0|0|0",
            "0123456789abcdef",
            "0123456789abcdef|",
            "0123456789abcdef||",
            "0123456789abcdef|||",
            "0123456789abcdef|0|0|",
            "0123456789abcdef|0|0|0123456789abcdef",
            "0123456789abcdef|+1|+1|0123456789abcdef",
            "0123456789abcdef|zzzzzzzzzzzzz|zzzzzzzzzzzzz|0123456789abcdef",
            "0123456789abcdef|3w5e11264sgsg|3w5e11264sgsg|0123456789abcdef",
            "0123456789abcdéf|0|0|0123456789abcdef",
            "ééééééééééééééééééééééé",
            "0123456789abcdef|0|0|0123456789abcdé",
            "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Random strings from a small seeded generator, biased towards the
        // characters a value is made of.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let chars: Vec<char> = "0123456789abcdefxyz|; ,\"\\AZé€\u{0}\u{7f}".chars().collect();
        for _ in 0..600 {
            let len = (next() % 60) as usize;
            let s: String = (0..len)
                .map(|_| chars[(next() % chars.len() as u64) as usize])
                .collect();
            edge.push(s);
        }
        // And real values with random bytes changed.
        let v = c.encode(v4(10, 1, 2, 3, 80), None, 1_700_000_000);
        for _ in 0..200 {
            let mut b: Vec<char> = v.chars().collect();
            let i = (next() % b.len() as u64) as usize;
            b[i] = chars[(next() % chars.len() as u64) as usize];
            edge.push(b.into_iter().collect());
        }
        for s in &edge {
            for now in [0, 1_700_000_000, u64::MAX] {
                if let Some((id, _)) = c.decode(s, now) {
                    assert_eq!(s, &v, "accepted {s:?}");
                    assert_eq!(id.len(), 16);
                }
                if let Some((id, _)) = u.decode(s, now) {
                    assert_eq!(id.len(), 16);
                }
            }
        }
    }

    #[test]
    fn encoded_values_are_cookie_octets() {
        let addrs = [
            v4(0, 0, 0, 0, 0),
            v4(255, 255, 255, 255, 65535),
            "[2001:db8::1%3]:8443".parse::<SocketAddr>().unwrap(),
            "[::ffff:192.0.2.1]:80".parse::<SocketAddr>().unwrap(),
        ];
        let codecs = [
            CookieCodec::new(KEY, None, None),
            CookieCodec::new(KEY, Some(MIN), None),
            CookieCodec::new(KEY, Some(MIN), Some(MIN)),
        ];
        for c in &codecs {
            for &a in &addrs {
                for (first, now) in [
                    (None, 0),
                    (Some(0), u64::MAX),
                    (Some(u64::MAX), u64::MAX),
                    (None, 1_700_000_000),
                ] {
                    let v = c.encode(a, first, now);
                    assert!(v.chars().all(is_cookie_octet), "{v}");
                    assert!(v.len() <= 16 + 3 + 2 * B36_MAX + 16);
                    if now == u64::MAX && c.maxlife.is_none() {
                        // Decodes at its own time.
                        assert!(c.decode(&v, now).is_some(), "{v}");
                    }
                }
            }
        }
    }

    #[test]
    fn base36() {
        for n in [0, 1, 35, 36, 1_700_000_000, u64::MAX - 1, u64::MAX] {
            let mut s = String::new();
            push_b36(&mut s, n);
            assert_eq!(parse_b36(&s), Some(n));
            assert_eq!(u64::from_str_radix(&s, 36), Ok(n));
        }
        let mut s = String::new();
        push_b36(&mut s, u64::MAX);
        assert_eq!(s, "3w5e11264sgsf");
        for bad in [
            "",
            "00",
            "01",
            "+1",
            "-1",
            "A",
            "3w5e11264sgsg",
            "zzzzzzzzzzzzz",
            "10000000000000",
            " 1",
        ] {
            assert_eq!(parse_b36(bad), None, "{bad}");
        }
    }
}
