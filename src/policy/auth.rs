//! Proxy authentication: checks `Proxy-Authorization` (Basic and/or Digest)
//! and builds the `Proxy-Authenticate` challenges of a 407.
//!
//! A Basic password is checked against its bcrypt or SHA-512-crypt hash on
//! the blocking pool (it is slow on purpose); a success is remembered for
//! `credentials_ttl` as a keyed hash of the password, compared in constant
//! time, so a client sending the same credentials on every request costs one
//! HMAC per request instead of one bcrypt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderValue, Method, Uri};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::policy::credentials::{CredFile, PasswordHash, Users};
use crate::policy::digest::{self, DigestAuth, Failure};

/// Basic authentication.
pub struct Basic {
    pub file: Arc<CredFile>,
    pub credentials_ttl: Duration,
    cache_key: [u8; 32],
    cache: RwLock<HashMap<String, ([u8; 32], Instant)>>,
    /// Slow hash checks run (cache misses).
    checks: AtomicU64,
}

/// Digest authentication.
pub struct Digest {
    pub file: Arc<CredFile>,
    pub auth: DigestAuth,
}

/// The authentication schemes of a configuration.
pub struct Authenticator {
    pub realm: String,
    pub basic: Option<Basic>,
    pub digest: Option<Digest>,
}

/// The result of checking a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No `Proxy-Authorization` header (or one for a scheme not enabled).
    Absent,
    User(Arc<str>),
    /// Credentials were given and refused; `stale` when only the nonce was at fault.
    Failed {
        stale: bool,
        reason: String,
    },
}

impl Basic {
    pub fn new(file: Arc<CredFile>, credentials_ttl: Duration) -> Basic {
        let mut cache_key = [0u8; 32];
        let _ = getrandom::fill(&mut cache_key);
        Basic {
            file,
            credentials_ttl,
            cache_key,
            cache: RwLock::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }

    fn tag(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cache_key).expect("any key length");
        m.update(user.as_bytes());
        m.update(&[0]);
        m.update(password);
        m.finalize().into_bytes().into()
    }

    async fn verify(&self, token: &str) -> Outcome {
        let failed = |r: &str| Outcome::Failed {
            stale: false,
            reason: r.to_string(),
        };
        let Ok(raw) = STANDARD.decode(token.trim()) else {
            return failed("Basic credentials are not base64");
        };
        let Some(colon) = raw.iter().position(|&b| b == b':') else {
            return failed("Basic credentials have no `:`");
        };
        let Ok(user) = std::str::from_utf8(&raw[..colon]) else {
            return failed("Basic user name is not UTF-8");
        };
        // `NAME-session-KEY` logs in as NAME; the key only steers source rotation
        let (user, _session) = crate::egress::outgoing::split_session(user);
        let password = &raw[colon + 1..];
        let tag = self.tag(user, password);
        if let Some((cached, until)) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(user)
            && *until > Instant::now()
            && bool::from(cached.ct_eq(&tag))
        {
            return Outcome::User(user.into());
        }
        let users = self.file.users();
        let hash = match &*users {
            Users::Passwd(m) => m.get(user).cloned(),
            _ => None,
        };
        let known = hash.is_some();
        // an unknown user costs one hash check too
        let hash = hash.unwrap_or_else(|| PasswordHash::Bcrypt(DUMMY_BCRYPT.to_string()));
        let pw = password.to_vec();
        self.checks.fetch_add(1, Relaxed);
        let ok = tokio::task::spawn_blocking(move || hash.verify(&pw))
            .await
            .unwrap_or(false);
        if !(ok && known) {
            return failed("wrong user name or password");
        }
        if !self.credentials_ttl.is_zero() {
            let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
            if c.len() >= 65536 {
                let now = Instant::now();
                c.retain(|_, (_, until)| *until > now);
            }
            if c.len() < 65536 {
                c.insert(user.to_string(), (tag, Instant::now() + self.credentials_ttl));
            }
        }
        Outcome::User(user.into())
    }
}

/// The user name a request presents in `Proxy-Authorization` (Basic or
/// Digest), whether or not it is verified.
pub fn presented_name(header: Option<&HeaderValue>) -> Option<String> {
    let value = header?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = STANDARD.decode(rest.trim()).ok()?;
        let colon = raw.iter().position(|&b| b == b':')?;
        return String::from_utf8(raw[..colon].to_vec()).ok();
    }
    if scheme.eq_ignore_ascii_case("digest") {
        return digest::parse_params(rest).ok().map(|p| p.username);
    }
    None
}

/// A bcrypt hash of nothing in particular, for timing parity on unknown users.
const DUMMY_BCRYPT: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

impl Authenticator {
    /// Checks the credentials of a request.
    pub async fn authenticate(&self, header: Option<&HeaderValue>, method: &Method, uri: &Uri) -> Outcome {
        let Some(value) = header.and_then(|v| v.to_str().ok()) else {
            return if header.is_some() {
                Outcome::Failed {
                    stale: false,
                    reason: "Proxy-Authorization is not text".into(),
                }
            } else {
                Outcome::Absent
            };
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return match &self.basic {
                Some(b) => b.verify(rest).await,
                None => Outcome::Absent,
            };
        }
        if scheme.eq_ignore_ascii_case("digest") {
            let Some(d) = &self.digest else {
                return Outcome::Absent;
            };
            let p = match digest::parse_params(rest) {
                Ok(p) => p,
                Err(e) => {
                    return Outcome::Failed {
                        stale: false,
                        reason: format!("malformed Digest credentials: {e}"),
                    };
                }
            };
            // the digest-uri is the request-target as sent; for absolute-form
            // requests accept the path form too, which some clients use
            let full = uri.to_string();
            let mut targets = vec![full.as_str()];
            if uri.scheme().is_some()
                && let Some(pq) = uri.path_and_query()
            {
                targets.push(pq.as_str());
            }
            let users = d.file.users();
            return match d.auth.verify(&users, &p, method.as_str(), &targets) {
                Ok(u) => Outcome::User(u.into()),
                Err(Failure::Credentials(reason)) => Outcome::Failed { stale: false, reason },
                Err(Failure::Stale(reason)) => Outcome::Failed { stale: true, reason },
            };
        }
        Outcome::Absent
    }

    /// The `Proxy-Authenticate` values of a 407: Digest (one per algorithm) first, then Basic.
    pub fn challenges(&self, stale: bool) -> Vec<HeaderValue> {
        let mut out: Vec<String> = Vec::new();
        if let Some(d) = &self.digest {
            out.extend(d.auth.challenges(stale));
        }
        if self.basic.is_some() {
            out.push(format!(
                "Basic realm=\"{}\", charset=\"UTF-8\"",
                digest::quote(&self.realm)
            ));
        }
        out.into_iter().filter_map(|s| HeaderValue::from_str(&s).ok()).collect()
    }

    /// Re-reads the credential files; returns one message per file.
    pub fn reload_files(&self) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        if let Some(b) = &self.basic {
            let r = b.file.reload();
            if r.is_ok() {
                b.cache.write().unwrap_or_else(|e| e.into_inner()).clear();
            }
            out.push(r.map(|n| format!("{}: {n} user(s)", b.file.path.display())));
        }
        if let Some(d) = &self.digest {
            out.push(
                d.file
                    .reload()
                    .map(|n| format!("{}: {n} user(s)", d.file.path.display())),
            );
        }
        out
    }

    /// How often [`Authenticator::collect_garbage`] should run.
    pub fn garbage_interval(&self) -> Option<Duration> {
        self.digest.as_ref().map(|d| d.auth.settings.nonce_garbage_interval)
    }

    /// Basic passwords checked against their slow hash (not served from the cache).
    pub fn password_checks(&self) -> u64 {
        self.basic.as_ref().map_or(0, |b| b.checks.load(Relaxed))
    }

    /// Used Digest nonces currently remembered.
    pub fn nonces_tracked(&self) -> usize {
        self.digest.as_ref().map_or(0, |d| d.auth.tracked())
    }

    pub fn collect_garbage(&self) -> usize {
        self.digest.as_ref().map_or(0, |d| d.auth.collect_garbage())
    }
}
