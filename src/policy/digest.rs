//! Digest proxy authentication (RFC 7616): MD5, SHA-256 and their `-sess`
//! variants with `qop=auth`.
//!
//! A nonce is `issue time | serial | HMAC-SHA-256(secret, issue time | serial)`,
//! so it cannot be guessed or forged and only this process accepts it. The
//! server keeps state only for nonces that have been used successfully: how
//! often, and which nonce counts were seen (to refuse replays). Entries whose
//! nonce has expired are removed by [`DigestAuth::collect_garbage`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::policy::credentials::{DigestSecrets, Users};

/// A Digest algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Sha256,
        Algorithm::Sha256Sess,
        Algorithm::Md5,
        Algorithm::Md5Sess,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s))
    }

    fn sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    fn sha256(self) -> bool {
        matches!(self, Algorithm::Sha256 | Algorithm::Sha256Sess)
    }

    /// Lower-case hex of the hash of `parts` joined by `:`.
    fn h(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex(&d.finalize())
        }
        if self.sha256() {
            run::<Sha256>(parts)
        } else {
            run::<Md5>(parts)
        }
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize]);
        s.push(DIGITS[(b & 15) as usize]);
    }
    String::from_utf8(s).unwrap_or_default()
}

/// The stored HA1 of a user for an algorithm family, as hex.
fn stored_ha1(secrets: &DigestSecrets, alg: Algorithm) -> Option<String> {
    if alg.sha256() {
        secrets.sha256.map(|h| hex(&h))
    } else {
        secrets.md5.map(|h| hex(&h))
    }
}

/// The parameters of a `Digest` credentials header.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
    pub userhash: bool,
}

/// Parses `k=v, k="v", ...` (the part after `Digest `).
pub fn parse_params(s: &str) -> Result<Params, String> {
    let mut p = Params::default();
    let b = s.as_bytes();
    let mut i = 0;
    let mut have = (false, false, false, false, false);
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[start..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            return Err(format!("parameter `{key}` has no value"));
        }
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err(format!("unterminated quoted value for `{key}`")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        v.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| format!("`{key}` is not UTF-8"))?
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            s[start..i].trim().to_string()
        };
        match key.as_str() {
            "username" => (p.username, have.0) = (value, true),
            "realm" => (p.realm, have.1) = (value, true),
            "nonce" => (p.nonce, have.2) = (value, true),
            "uri" => (p.uri, have.3) = (value, true),
            "response" => (p.response, have.4) = (value, true),
            "algorithm" => p.algorithm = Some(value),
            "cnonce" => p.cnonce = Some(value),
            "nc" => p.nc = Some(value),
            "qop" => p.qop = Some(value),
            "opaque" => p.opaque = Some(value),
            "userhash" => p.userhash = value.eq_ignore_ascii_case("true"),
            "username*" => return Err("`username*` (RFC 5987 encoding) is not supported".into()),
            _ => {}
        }
    }
    for (ok, name) in [
        (have.0, "username"),
        (have.1, "realm"),
        (have.2, "nonce"),
        (have.3, "uri"),
        (have.4, "response"),
    ] {
        if !ok {
            return Err(format!("missing `{name}`"));
        }
    }
    Ok(p)
}

/// HA1 = H(user:realm:password) as hex (what an htdigest line stores).
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.h(&[user.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The request-digest of RFC 7616 section 3.4.1, given HA1 as hex.
#[allow(clippy::too_many_arguments)]
pub fn response(
    alg: Algorithm,
    ha1_hex: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
) -> String {
    let ha1 = if alg.sess() {
        alg.h(&[ha1_hex.as_bytes(), nonce.as_bytes(), cnonce.as_bytes()])
    } else {
        ha1_hex.to_string()
    };
    let ha2 = alg.h(&[method.as_bytes(), uri.as_bytes()]);
    alg.h(&[
        ha1.as_bytes(),
        nonce.as_bytes(),
        nc.as_bytes(),
        cnonce.as_bytes(),
        qop.as_bytes(),
        ha2.as_bytes(),
    ])
}

/// Digest settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub realm: String,
    /// Offered in this order (one challenge each).
    pub algorithms: Vec<Algorithm>,
    pub nonce_max_duration: Duration,
    /// Successful uses of one nonce; 0 = unlimited.
    pub nonce_max_count: u32,
    pub nonce_garbage_interval: Duration,
    /// How far below the highest nonce count seen an unused count is still
    /// accepted (for clients that send on several connections at once); 0 =
    /// every count must be higher than the last.
    pub nonce_count_window: u32,
}

const SHARDS: usize = 16;
/// issue time (8) + serial (8)
const ID_LEN: usize = 16;
const MAC_LEN: usize = 16;

#[derive(Debug)]
struct NonceState {
    issued: u64,
    uses: u32,
    highest: u32,
    /// Bit i set: count `highest - i` was used.
    seen: u128,
}

/// Why a Digest response was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The credentials are wrong or unusable: ask for them again.
    Credentials(String),
    /// The credentials are right but the nonce cannot be used (again): `stale=true`.
    Stale(String),
}

/// Digest state: the secret, the serial counter and the used-nonce table.
pub struct DigestAuth {
    pub settings: Settings,
    secret: [u8; 32],
    opaque: String,
    serial: AtomicU64,
    nonces: [Mutex<HashMap<[u8; ID_LEN], NonceState>>; SHARDS],
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl DigestAuth {
    pub fn new(settings: Settings) -> DigestAuth {
        let mut secret = [0u8; 32];
        if getrandom::fill(&mut secret).is_err() {
            // no entropy source: still unpredictable enough to differ per process
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            secret[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
            secret[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        let mut serial = [0u8; 8];
        let _ = getrandom::fill(&mut serial);
        let mut d = DigestAuth {
            settings,
            secret,
            opaque: String::new(),
            serial: AtomicU64::new(u64::from_le_bytes(serial)),
            nonces: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        };
        d.opaque = URL_SAFE_NO_PAD.encode(&d.mac(b"opaque")[..12]);
        d
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// A fresh nonce.
    pub fn nonce(&self) -> String {
        self.nonce_at(now_secs())
    }

    fn nonce_at(&self, issued: u64) -> String {
        let mut raw = [0u8; ID_LEN + MAC_LEN];
        raw[..8].copy_from_slice(&issued.to_be_bytes());
        raw[8..16].copy_from_slice(&self.serial.fetch_add(1, Relaxed).to_be_bytes());
        let mac = self.mac(&raw[..ID_LEN]);
        raw[ID_LEN..].copy_from_slice(&mac[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce's identity and issue time, if this process made it.
    fn open_nonce(&self, nonce: &str) -> Option<([u8; ID_LEN], u64)> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if raw.len() != ID_LEN + MAC_LEN {
            return None;
        }
        let mac = self.mac(&raw[..ID_LEN]);
        if !bool::from(mac[..MAC_LEN].ct_eq(&raw[ID_LEN..])) {
            return None;
        }
        let id: [u8; ID_LEN] = raw[..ID_LEN].try_into().ok()?;
        let issued = u64::from_be_bytes(raw[..8].try_into().ok()?);
        Some((id, issued))
    }

    /// One `Proxy-Authenticate` value per configured algorithm.
    pub fn challenges(&self, stale: bool) -> Vec<String> {
        let nonce = self.nonce();
        self.settings
            .algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", qop=\"auth\", algorithm={}, nonce=\"{nonce}\", opaque=\"{}\"{}",
                    quote(&self.settings.realm),
                    a.name(),
                    self.opaque,
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks a `Digest` credentials header for a request; returns the user.
    /// `targets` are the request-target forms accepted as `uri`.
    pub fn verify(&self, users: &Users, p: &Params, method: &str, targets: &[&str]) -> Result<String, Failure> {
        let bad = |m: &str| Err(Failure::Credentials(m.to_string()));
        let alg = match &p.algorithm {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::parse(a) {
                Some(a) => a,
                None => return bad("unsupported algorithm"),
            },
        };
        if !self.settings.algorithms.contains(&alg) {
            return bad("algorithm not offered");
        }
        if p.realm != self.settings.realm {
            return bad("wrong realm");
        }
        if p.userhash {
            return bad("userhash is not offered");
        }
        let (Some(qop), Some(nc), Some(cnonce)) = (&p.qop, &p.nc, &p.cnonce) else {
            return bad("qop=auth with nc and cnonce is required");
        };
        if qop != "auth" {
            return bad("only qop=auth is supported");
        }
        let Some(count) = (nc.len() == 8).then(|| u32::from_str_radix(nc, 16).ok()).flatten() else {
            return bad("nc must be 8 hexadecimal digits");
        };
        if !targets.contains(&p.uri.as_str()) {
            return bad("uri does not match the request");
        }
        let secrets = match users {
            Users::Digest(m) => m.get(&(p.username.clone(), p.realm.clone())),
            _ => None,
        };
        // an unknown user costs the same as a wrong password
        let stored = secrets.and_then(|s| stored_ha1(s, alg));
        let known = stored.is_some();
        let ha1 = stored.unwrap_or_else(|| "0".repeat(if alg.sha256() { 64 } else { 32 }));
        let expected = response(alg, &ha1, &p.nonce, nc, cnonce, qop, method, &p.uri);
        // RFC 7616: the response is lower-case hex
        let matches = expected.as_bytes().ct_eq(p.response.as_bytes());
        if !known || !bool::from(matches) {
            return bad("wrong user name or password");
        }

        // the credentials are right; now the nonce
        let Some((id, issued)) = self.open_nonce(&p.nonce) else {
            return Err(Failure::Stale("nonce not issued by this server".into()));
        };
        let now = now_secs();
        if now.saturating_sub(issued) >= self.settings.nonce_max_duration.as_secs().max(1) || issued > now + 60 {
            return Err(Failure::Stale("nonce expired".into()));
        }
        let shard = &self.nonces[id[15] as usize % SHARDS];
        let mut table = shard.lock().unwrap_or_else(|e| e.into_inner());
        let st = table.entry(id).or_insert(NonceState {
            issued,
            uses: 0,
            highest: 0,
            seen: 0,
        });
        let max = self.settings.nonce_max_count;
        if max > 0 && st.uses >= max {
            return Err(Failure::Stale(format!("nonce used {max} times")));
        }
        let window = self.settings.nonce_count_window.min(127);
        if count == 0 {
            return Err(Failure::Stale("nonce count 0".into()));
        }
        if count > st.highest {
            let shift = count - st.highest;
            st.seen = if shift >= 128 { 0 } else { st.seen << shift };
            st.seen |= 1;
            st.highest = count;
        } else {
            let back = st.highest - count;
            if back > window || back >= 128 {
                return Err(Failure::Stale(format!(
                    "nonce count {count:08x} is not above the last one ({:08x})",
                    st.highest
                )));
            }
            if st.seen & (1u128 << back) != 0 {
                return Err(Failure::Stale(format!("nonce count {count:08x} replayed")));
            }
            st.seen |= 1u128 << back;
        }
        st.uses += 1;
        Ok(p.username.clone())
    }

    /// Used nonces currently remembered.
    pub fn tracked(&self) -> usize {
        self.nonces
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Forgets used nonces that have expired; returns how many are left.
    pub fn collect_garbage(&self) -> usize {
        let now = now_secs();
        let max = self.settings.nonce_max_duration.as_secs().max(1);
        let mut left = 0;
        for shard in &self.nonces {
            let mut t = shard.lock().unwrap_or_else(|e| e.into_inner());
            t.retain(|_, st| now.saturating_sub(st.issued) < max);
            left += t.len();
        }
        left
    }
}

/// Escapes `"` and `\` for a quoted-string.
pub fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    /// RFC 7616 section 3.9.1.
    #[test]
    fn rfc7616_vectors() {
        let md5_ha1 = Algorithm::Md5.h(&[b"Mufasa", b"http-auth@example.org", b"Circle of Life"]);
        let sha_ha1 = Algorithm::Sha256.h(&[b"Mufasa", b"http-auth@example.org", b"Circle of Life"]);
        assert_eq!(
            response(
                Algorithm::Md5,
                &md5_ha1,
                NONCE,
                "00000001",
                CNONCE,
                "auth",
                "GET",
                "/dir/index.html"
            ),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        assert_eq!(
            response(
                Algorithm::Sha256,
                &sha_ha1,
                NONCE,
                "00000001",
                CNONCE,
                "auth",
                "GET",
                "/dir/index.html"
            ),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn header_parameters() {
        let p = parse_params(
            r#"username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256,
               nonce="7ypf", nc=00000001, cnonce="f2/w", qop=auth, response="7539", opaque="FQhe", x="a\"b""#,
        )
        .unwrap();
        assert_eq!(p.username, "Mufasa");
        assert_eq!(p.algorithm.as_deref(), Some("SHA-256"));
        assert_eq!(p.nc.as_deref(), Some("00000001"));
        assert_eq!(p.qop.as_deref(), Some("auth"));
        assert!(
            parse_params(r#"username="a", realm="b""#)
                .unwrap_err()
                .contains("nonce")
        );
        assert!(parse_params(r#"username="a"#).is_err());
    }

    fn auth(window: u32, max: u32) -> (DigestAuth, Users) {
        let d = DigestAuth::new(Settings {
            realm: "r".into(),
            algorithms: Algorithm::ALL.to_vec(),
            nonce_max_duration: Duration::from_secs(60),
            nonce_max_count: max,
            nonce_garbage_interval: Duration::from_secs(60),
            nonce_count_window: window,
        });
        let mut m = HashMap::new();
        let md5 = Algorithm::Md5.h(&[b"u", b"r", b"pw"]);
        let sha = Algorithm::Sha256.h(&[b"u", b"r", b"pw"]);
        let un = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        m.insert(
            ("u".to_string(), "r".to_string()),
            DigestSecrets {
                md5: Some(un(&md5).try_into().unwrap()),
                sha256: Some(un(&sha).try_into().unwrap()),
            },
        );
        (d, Users::Digest(m))
    }

    fn params(alg: Algorithm, nonce: &str, nc: u32, pw: &str) -> Params {
        let ha1 = alg.h(&[b"u", b"r", pw.as_bytes()]);
        let nc = format!("{nc:08x}");
        Params {
            username: "u".into(),
            realm: "r".into(),
            nonce: nonce.into(),
            uri: "http://h/".into(),
            response: response(alg, &ha1, nonce, &nc, "cn", "auth", "GET", "http://h/"),
            algorithm: Some(alg.name().into()),
            cnonce: Some("cn".into()),
            nc: Some(nc),
            qop: Some("auth".into()),
            opaque: None,
            userhash: false,
        }
    }

    #[test]
    fn every_algorithm_verifies_and_wrong_passwords_do_not() {
        let (d, users) = auth(0, 0);
        for alg in Algorithm::ALL {
            let n = d.nonce();
            assert_eq!(
                d.verify(&users, &params(alg, &n, 1, "pw"), "GET", &["http://h/"]),
                Ok("u".into())
            );
            assert!(matches!(
                d.verify(&users, &params(alg, &n, 2, "bad"), "GET", &["http://h/"]),
                Err(Failure::Credentials(_))
            ));
        }
    }

    #[test]
    fn replays_lower_counts_overuse_and_expiry_are_stale() {
        let (d, users) = auth(0, 3);
        let v = |n: &str, nc| d.verify(&users, &params(Algorithm::Md5, n, nc, "pw"), "GET", &["http://h/"]);
        let n = d.nonce();
        assert!(v(&n, 5).is_ok());
        assert!(matches!(v(&n, 5), Err(Failure::Stale(m)) if m.contains("replayed")));
        assert!(matches!(v(&n, 3), Err(Failure::Stale(m)) if m.contains("not above")));
        assert!(v(&n, 6).is_ok());
        assert!(v(&n, 7).is_ok());
        assert!(matches!(v(&n, 8), Err(Failure::Stale(m)) if m.contains("used 3 times")));
        let old = d.nonce_at(now_secs() - 61);
        assert!(matches!(v(&old, 1), Err(Failure::Stale(m)) if m.contains("expired")));
        // a forged nonce (flipped MAC bit) is not ours
        let mut raw = URL_SAFE_NO_PAD.decode(d.nonce()).unwrap();
        raw[20] ^= 1;
        assert!(matches!(v(&URL_SAFE_NO_PAD.encode(raw), 1), Err(Failure::Stale(m)) if m.contains("not issued")));
        // garbage collection drops the expired entries only
        assert_eq!(d.collect_garbage(), 1);
    }

    #[test]
    fn a_window_accepts_late_counts_once() {
        let (d, users) = auth(8, 0);
        let n = d.nonce();
        let v = |nc| d.verify(&users, &params(Algorithm::Sha256, &n, nc, "pw"), "GET", &["http://h/"]);
        assert!(v(10).is_ok());
        assert!(v(7).is_ok());
        assert!(matches!(v(7), Err(Failure::Stale(m)) if m.contains("replayed")));
        assert!(matches!(v(1), Err(Failure::Stale(_))));
        assert!(v(9).is_ok());
    }
}
