//! Credential files: htpasswd-style (`user:HASH`, bcrypt or SHA-512-crypt) for
//! Basic, htdigest-style (`user:realm:HA1`) for Digest.
//!
//! A file is opened once when the configuration is loaded and the descriptor
//! is kept, so that after the daemon drops its privileges a reload can still
//! read a file only root may open: the path is tried first (it picks up a file
//! replaced by `sekisho passwd`), the kept descriptor second.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// A password hash from an htpasswd file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2a$`, `$2b$`, `$2y$`
    Bcrypt(String),
    /// `$6$`
    Sha512Crypt(String),
}

impl PasswordHash {
    /// Classifies a hash; anything else (plain text, `$apr1$`, `{SHA}`, DES crypt) is refused.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if ["$2a$", "$2b$", "$2y$", "$2x$"].iter().any(|p| s.starts_with(p)) {
            if s.len() != 60 {
                return Err("malformed bcrypt hash (expected 60 characters)".into());
            }
            return Ok(PasswordHash::Bcrypt(s.to_string()));
        }
        if s.starts_with("$6$") {
            if s.split('$').count() < 4 {
                return Err("malformed SHA-512-crypt hash".into());
            }
            return Ok(PasswordHash::Sha512Crypt(s.to_string()));
        }
        let what = if s.starts_with("$apr1$") || s.starts_with("$1$") {
            "an MD5-crypt hash"
        } else if s.starts_with("$5$") {
            "a SHA-256-crypt hash"
        } else if s.starts_with("{SHA}") {
            "an unsalted SHA-1 hash"
        } else {
            "plain text or an unsupported hash"
        };
        Err(format!(
            "the password is {what}; only bcrypt ($2y$) and SHA-512-crypt ($6$) are accepted \
             (create entries with `sekisho passwd`)"
        ))
    }

    /// Checks a password (slow on purpose: run it off the async threads).
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            PasswordHash::Sha512Crypt(h) => {
                use sha_crypt::PasswordVerifier;
                sha_crypt::ShaCrypt::default()
                    .verify_password(password, h.as_str())
                    .is_ok()
            }
        }
    }
}

/// The HA1 values of one user in one realm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestSecrets {
    /// MD5(user:realm:password), 16 bytes.
    pub md5: Option<[u8; 16]>,
    /// SHA-256(user:realm:password), 32 bytes.
    pub sha256: Option<[u8; 32]>,
}

/// The parsed content of a credential file.
#[derive(Debug, Default)]
pub enum Users {
    #[default]
    Empty,
    Passwd(HashMap<String, PasswordHash>),
    /// Keyed by (user, realm).
    Digest(HashMap<(String, String), DigestSecrets>),
}

/// Which format a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Passwd,
    Digest,
}

/// The entry lines of a credential file with their line numbers: `#`
/// comments and blank lines skipped, CRLF endings accepted.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
}

/// Parses an htpasswd file: `user:HASH` per line, `#` comments and blank lines ignored.
pub fn parse_passwd(text: &str) -> Result<HashMap<String, PasswordHash>, Vec<String>> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (n, line) in entries(text) {
        let Some((user, hash)) = line.split_once(':') else {
            errors.push(format!("line {n}: expected `user:hash`"));
            continue;
        };
        if user.is_empty() {
            errors.push(format!("line {n}: empty user name"));
            continue;
        }
        match PasswordHash::parse(hash) {
            Ok(h) => {
                if out.insert(user.to_string(), h).is_some() {
                    errors.push(format!("line {n}: user `{user}` is listed twice"));
                }
            }
            Err(e) => errors.push(format!("line {n}: user `{user}`: {e}")),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses an htdigest file: `user:realm:HA1` per line; a 32-digit HA1 is MD5,
/// a 64-digit one SHA-256 (a user may have one line of each).
pub fn parse_digest(text: &str) -> Result<HashMap<(String, String), DigestSecrets>, Vec<String>> {
    let mut out: HashMap<(String, String), DigestSecrets> = HashMap::new();
    let mut errors = Vec::new();
    for (n, line) in entries(text) {
        // realms may contain ':'; the user cannot and the HA1 is last
        let (Some((user, rest)), Some((_, ha1))) = (line.split_once(':'), line.rsplit_once(':')) else {
            errors.push(format!("line {n}: expected `user:realm:HA1`"));
            continue;
        };
        let Some((realm, _)) = rest.rsplit_once(':') else {
            errors.push(format!("line {n}: expected `user:realm:HA1`"));
            continue;
        };
        if user.is_empty() {
            errors.push(format!("line {n}: empty user name"));
            continue;
        }
        let entry = out.entry((user.to_string(), realm.to_string())).or_default();
        let twice = || format!("line {n}: user `{user}` in realm `{realm}` is listed twice");
        if let Some(h) = unhex::<16>(ha1) {
            if entry.md5.replace(h).is_some() {
                errors.push(twice());
            }
        } else if let Some(h) = unhex::<32>(ha1) {
            if entry.sha256.replace(h).is_some() {
                errors.push(twice());
            }
        } else {
            errors.push(format!(
                "line {n}: user `{user}`: HA1 must be 32 (MD5) or 64 (SHA-256) hexadecimal digits; \
                 plain-text passwords are not accepted (create entries with `sekisho passwd`)"
            ));
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn parse(kind: Kind, text: &str) -> Result<Users, Vec<String>> {
    match kind {
        Kind::Passwd => parse_passwd(text).map(Users::Passwd),
        Kind::Digest => parse_digest(text).map(Users::Digest),
    }
}

/// A credential file, its kept descriptor and its current content.
#[derive(Debug)]
pub struct CredFile {
    pub path: PathBuf,
    pub kind: Kind,
    held: Mutex<File>,
    users: ArcSwap<Users>,
}

fn read_all(f: &mut File) -> io::Result<String> {
    f.seek(SeekFrom::Start(0))?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Credential files in use by the running configuration, found again by a reload.
static OPEN: Mutex<Vec<std::sync::Weak<CredFile>>> = Mutex::new(Vec::new());

impl CredFile {
    /// The file for a configuration: when the running configuration already
    /// has it open, that one is read again (through the descriptor kept from
    /// the start when the path is no longer readable, see [`reload`](Self::reload))
    /// and shared; else it is opened now.
    pub fn open_shared(path: &Path, kind: Kind) -> Result<Arc<CredFile>, String> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|w| w.strong_count() > 0);
        if let Some(f) = open
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|f| f.path == path && f.kind == kind)
        {
            f.reload()?;
            return Ok(f);
        }
        let f = Arc::new(CredFile::open(path, kind)?);
        open.push(Arc::downgrade(&f));
        Ok(f)
    }

    /// Opens and parses the file; the error lists every bad line.
    pub fn open(path: &Path, kind: Kind) -> Result<CredFile, String> {
        let mut f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let text = read_all(&mut f).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let users = parse(kind, &text).map_err(|e| format!("{}: {}", path.display(), e.join("; ")))?;
        Ok(CredFile {
            path: path.to_path_buf(),
            kind,
            held: Mutex::new(f),
            users: ArcSwap::from_pointee(users),
        })
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// Reads the file again (by path, else through the descriptor kept from the
    /// start); on any error the previous content stays in use. Returns the
    /// number of entries now loaded.
    pub fn reload(&self) -> Result<usize, String> {
        let p = self.path.display();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let text = match File::open(&self.path) {
            Ok(mut f) => {
                let t = read_all(&mut f).map_err(|e| format!("cannot read {p}: {e}"))?;
                *held = f;
                t
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                // not readable by the user the daemon now runs as: use the kept
                // descriptor, unless the path now names another file
                let same = match (std::fs::metadata(&self.path), held.metadata()) {
                    (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                };
                if !same {
                    return Err(format!(
                        "cannot open {p} ({e}) and it was replaced since it was first opened; \
                         make it readable by the user sekisho runs as; keeping the previous credentials"
                    ));
                }
                read_all(&mut held).map_err(|e| format!("cannot read {p}: {e}"))?
            }
            Err(e) => return Err(format!("cannot open {p}: {e}; keeping the previous credentials")),
        };
        let users =
            parse(self.kind, &text).map_err(|e| format!("{p}: {}; keeping the previous credentials", e.join("; ")))?;
        let n = match &users {
            Users::Empty => 0,
            Users::Passwd(m) => m.len(),
            Users::Digest(m) => m.len(),
        };
        self.users.store(Arc::new(users));
        Ok(n)
    }
}

/// The new content of a credential file with `user`'s entries (in `realm`
/// for htdigest) replaced by `lines`, kept in place or appended; and whether
/// the user had entries before.
pub fn with_user(old: &str, kind: Kind, user: &str, realm: Option<&str>, lines: &[String]) -> (String, bool) {
    let mut out = String::with_capacity(old.len() + 128);
    let mut placed = false;
    let push_new = |out: &mut String| {
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    };
    for line in old.lines() {
        let mine = match kind {
            Kind::Passwd => line.split_once(':').is_some_and(|(u, _)| u == user),
            Kind::Digest => match (line.split_once(':'), line.rsplit_once(':')) {
                (Some((u, rest)), Some(_)) => u == user && rest.rsplit_once(':').map(|(r, _)| r) == realm,
                _ => false,
            },
        };
        if mine {
            if !placed {
                push_new(&mut out);
                placed = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        push_new(&mut out);
    }
    (out, placed)
}

/// Replaces `path` with `content` atomically: a temporary file (mode 0600,
/// owned like the file it replaces when the caller may do that) renamed over it.
pub fn write_atomic(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        if let Ok(old) = std::fs::metadata(path) {
            // keep the service user's access to a file it was given; only root may do this
            let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
        }
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_weak_hashes_are_refused() {
        let e = parse_passwd("alice:secret\nbob:$apr1$abc$def\ncarol:{SHA}xyz\n").unwrap_err();
        assert_eq!(e.len(), 3);
        assert!(
            e[0].contains("line 1: user `alice`: the password is plain text"),
            "{e:?}"
        );
        assert!(e[1].contains("MD5-crypt"));
        assert!(e[2].contains("unsalted SHA-1"));
    }

    #[test]
    fn bcrypt_and_sha512_crypt_verify() {
        let b = bcrypt::hash("pw1", 4).unwrap();
        let s = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        let users = parse_passwd(&format!("# comment\n\nu1:{b}\nu2:{s}\n")).unwrap();
        assert!(users["u1"].verify(b"pw1"));
        assert!(!users["u1"].verify(b"pw2"));
        // the SHA-crypt specification's example: crypt("Hello world!", "$6$saltstring")
        assert!(users["u2"].verify(b"Hello world!"));
        assert!(!users["u2"].verify(b"Hello world"));
    }

    #[test]
    fn replacing_a_user_keeps_the_others_in_place() {
        let old = "# users\na:$2y$x\nb:$2y$y\n";
        assert_eq!(
            with_user(old, Kind::Passwd, "a", None, &["a:NEW".into()]).0,
            "# users\na:NEW\nb:$2y$y\n"
        );
        assert_eq!(
            with_user(old, Kind::Passwd, "c", None, &["c:N".into()]).0,
            format!("{old}c:N\n")
        );
        let d = "u:r1:aa\nu:r2:bb\nu:r1:cc\n";
        assert_eq!(
            with_user(d, Kind::Digest, "u", Some("r1"), &["u:r1:X".into(), "u:r1:Y".into()]).0,
            "u:r1:X\nu:r1:Y\nu:r2:bb\n"
        );
    }

    #[test]
    fn atomic_write_is_private() {
        let dir = std::env::temp_dir().join(format!("sekisho-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("users");
        write_atomic(&p, b"one\n").unwrap();
        write_atomic(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn htdigest_lines() {
        let m = parse_digest(
            "Mufasa:http-auth@example.org:3d78807defe7de2157e2b0b6573a855f\n\
             Mufasa:http-auth@example.org:7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232\n\
             x:a:b:c:0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        let k = ("Mufasa".to_string(), "http-auth@example.org".to_string());
        assert!(m[&k].md5.is_some() && m[&k].sha256.is_some());
        assert!(m.contains_key(&("x".to_string(), "a:b:c".to_string())));
        let e =
            parse_digest("u:r:secret\nu:r:0123456789abcdef0123456789abcdef\nu:r:0123456789abcdef0123456789abcdef\n")
                .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("plain-text"));
        assert!(e[1].contains("listed twice"));
    }
}
