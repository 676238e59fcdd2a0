//! TLS termination for `https` listeners (HAProxy's `bind ... ssl crt ...
//! no-tlsv10 no-tlsv11 ciphers ... alpn h2,http/1.1`).
//!
//! [`server_config`] turns [`Settings`] into a rustls server configuration:
//! certificates loaded and checked, one chosen per handshake by SNI
//! ([`SniResolver`]), protocol versions, cipher suites and ALPN applied.
//! [`negotiated`] reports what a finished handshake settled, spelled the way
//! HAProxy's `%sslv` and `%sslc` print it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring as ring_provider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, InconsistentKeys, ProtocolVersion, SignatureScheme, SupportedCipherSuite};

/// TLS protocol versions sekisho can speak (rustls: 1.2 and 1.3 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    /// `1.2`, `TLSv1.2`, `tls1.2`, `TLSv1_2` (any case) and the same for 1.3.
    /// SSLv3, TLS 1.0 and 1.1 are errors: sekisho never speaks them, so they
    /// are always refused (what `no-sslv3 no-tlsv10 no-tlsv11` ask for).
    pub fn parse(s: &str) -> Result<Version, String> {
        let lower = s.trim().to_ascii_lowercase();
        if lower.starts_with("ssl") {
            return Err(format!(
                "TLS version `{s}`: sekisho never speaks SSL (only TLS 1.2 and 1.3), so it is always refused"
            ));
        }
        let t = lower.strip_prefix("tls").unwrap_or(&lower);
        let t = t.strip_prefix('v').unwrap_or(t).trim_start_matches(['_', '-', ' ']);
        match t.replace('_', ".").as_str() {
            "1.2" => Ok(Version::Tls12),
            "1.3" => Ok(Version::Tls13),
            "1" | "1.0" | "1.1" => Err(format!(
                "TLS version `{s}`: sekisho never speaks TLS 1.0 or 1.1 (only 1.2 and 1.3), so they are always refused"
            )),
            _ => Err(format!("unknown TLS version `{s}` (expected 1.2 or 1.3, e.g. TLSv1.2)")),
        }
    }

    /// HAProxy's `%sslv` spelling: `TLSv1.2`, `TLSv1.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        }
    }

    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            Version::Tls12 => &rustls::version::TLS12,
            Version::Tls13 => &rustls::version::TLS13,
        }
    }

    fn of(v: ProtocolVersion) -> Option<Version> {
        match v {
            ProtocolVersion::TLSv1_2 => Some(Version::Tls12),
            ProtocolVersion::TLSv1_3 => Some(Version::Tls13),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One certificate chain and its key (PEM files; they may be the same file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate, then its intermediates, in PEM.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC) in PEM.
    pub key: PathBuf,
}

/// How a TLS listener terminates TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Certificates; the one for a handshake is chosen by SNI against each
    /// certificate's DNS names (subjectAltName; exact names and `*.example.com`
    /// wildcards matching one label), case-insensitive.
    pub certs: Vec<CertFiles>,
    /// Index into `certs` used when there is no SNI or no certificate matches.
    pub default_cert: usize,
    pub min_version: Version,
    pub max_version: Version,
    /// Cipher suites allowed, by OpenSSL name (`ECDHE-RSA-AES128-GCM-SHA256`,
    /// `TLS_AES_128_GCM_SHA256`) or IANA/rustls name
    /// (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, `TLS13_AES_128_GCM_SHA256`),
    /// case-insensitive; an entry may also be an OpenSSL-style `a:b:c` list.
    /// The list applies to both versions: a version none of whose suites is
    /// listed is not offered. The list order is the server's preference.
    /// `None`: rustls defaults (all suites below), client's preference.
    pub ciphers: Option<Vec<String>>,
    /// ALPN protocols offered, in order of preference (e.g. `["h2", "http/1.1"]`);
    /// empty: no ALPN.
    pub alpn: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            certs: Vec::new(),
            default_cert: 0,
            min_version: Version::Tls12,
            max_version: Version::Tls13,
            ciphers: None,
            alpn: Vec::new(),
        }
    }
}

/// A cipher suite sekisho knows: OpenSSL name, IANA name, rustls name.
struct SuiteName {
    openssl: &'static str,
    iana: &'static str,
    rustls: &'static str,
    suite: CipherSuite,
}

/// Every suite the rustls *ring* provider implements, in its default order.
const SUITES: &[SuiteName] = &[
    SuiteName {
        openssl: "TLS_AES_256_GCM_SHA384",
        iana: "TLS_AES_256_GCM_SHA384",
        rustls: "TLS13_AES_256_GCM_SHA384",
        suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
    },
    SuiteName {
        openssl: "TLS_AES_128_GCM_SHA256",
        iana: "TLS_AES_128_GCM_SHA256",
        rustls: "TLS13_AES_128_GCM_SHA256",
        suite: CipherSuite::TLS13_AES_128_GCM_SHA256,
    },
    SuiteName {
        openssl: "TLS_CHACHA20_POLY1305_SHA256",
        iana: "TLS_CHACHA20_POLY1305_SHA256",
        rustls: "TLS13_CHACHA20_POLY1305_SHA256",
        suite: CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    },
    SuiteName {
        openssl: "ECDHE-ECDSA-AES256-GCM-SHA384",
        iana: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        rustls: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    },
    SuiteName {
        openssl: "ECDHE-ECDSA-AES128-GCM-SHA256",
        iana: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        rustls: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    },
    SuiteName {
        openssl: "ECDHE-ECDSA-CHACHA20-POLY1305",
        iana: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        rustls: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    },
    SuiteName {
        openssl: "ECDHE-RSA-AES256-GCM-SHA384",
        iana: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        rustls: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        suite: CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    },
    SuiteName {
        openssl: "ECDHE-RSA-AES128-GCM-SHA256",
        iana: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        rustls: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        suite: CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    },
    SuiteName {
        openssl: "ECDHE-RSA-CHACHA20-POLY1305",
        iana: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        rustls: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        suite: CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    },
];

/// The OpenSSL spelling of a cipher suite (HAProxy's `%sslc`).
pub fn cipher_name(suite: CipherSuite) -> Option<&'static str> {
    SUITES
        .iter()
        .find(|n| n.suite == suite)
        .map(|n| n.openssl)
        .or_else(|| suite.as_str())
}

/// The suites a `ciphers` list names, in its order, without repeats.
fn select_ciphers(names: &[String]) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut out: Vec<SupportedCipherSuite> = Vec::new();
    for name in names
        .iter()
        .flat_map(|n| n.split(':'))
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let Some(known) = SUITES.iter().find(|k| {
            [k.openssl, k.iana, k.rustls]
                .iter()
                .any(|spelling| spelling.eq_ignore_ascii_case(name))
        }) else {
            let list: Vec<&str> = SUITES.iter().map(|k| k.openssl).collect();
            return Err(format!(
                "unknown cipher `{name}`; known (OpenSSL names, or the IANA/rustls TLS_*/TLS13_* names): {}",
                list.join(", ")
            ));
        };
        let Some(supported) = ring_provider::ALL_CIPHER_SUITES
            .iter()
            .find(|s| s.suite() == known.suite)
        else {
            return Err(format!("cipher `{name}` is not available in this build"));
        };
        if !out.iter().any(|s| s.suite() == known.suite) {
            out.push(*supported);
        }
    }
    if out.is_empty() {
        return Err("the cipher list is empty".to_string());
    }
    Ok(out)
}

/// Builds the server config: loads and checks every certificate and key,
/// extracts each certificate's DNS names for SNI, applies versions, ciphers
/// and ALPN.
pub fn server_config(s: &Settings) -> Result<Arc<rustls::ServerConfig>, String> {
    if s.certs.is_empty() {
        return Err("no certificate configured".to_string());
    }
    if s.default_cert >= s.certs.len() {
        return Err(format!(
            "default certificate #{} does not exist ({} configured)",
            s.default_cert,
            s.certs.len()
        ));
    }
    if s.min_version > s.max_version {
        return Err(format!(
            "minimum TLS version {} is above the maximum {}",
            s.min_version, s.max_version
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [Version::Tls13, Version::Tls12]
        .into_iter()
        .filter(|v| (s.min_version..=s.max_version).contains(v))
        .map(Version::rustls)
        .collect();

    let mut provider = ring_provider::default_provider();
    if let Some(names) = &s.ciphers {
        provider.cipher_suites = select_ciphers(names)?;
        let usable = provider
            .cipher_suites
            .iter()
            .any(|c| Version::of(c.version().version).is_some_and(|v| (s.min_version..=s.max_version).contains(&v)));
        if !usable {
            return Err(format!(
                "none of the ciphers ({}) can be used with TLS {}..{}",
                names.join(", "),
                s.min_version,
                s.max_version
            ));
        }
    }
    let provider = Arc::new(provider);

    let mut entries = Vec::with_capacity(s.certs.len());
    for files in &s.certs {
        entries.push(load_cert(files, &provider)?);
    }
    let resolver = SniResolver::new(entries, s.default_cert);

    let mut alpn = Vec::with_capacity(s.alpn.len());
    for p in &s.alpn {
        if p.is_empty() || p.len() > 255 {
            return Err(format!("ALPN protocol `{p}` must be 1 to 255 bytes long"));
        }
        alpn.push(p.as_bytes().to_vec());
    }

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn;
    // With an explicit list its order is the preference (OpenSSL's cipher
    // server preference, HAProxy's default).
    config.ignore_client_order = s.ciphers.is_some();
    Ok(Arc::new(config))
}

/// Reads a certificate chain and its key, checks that they belong together.
fn load_cert(files: &CertFiles, provider: &CryptoProvider) -> Result<(Vec<String>, Arc<CertifiedKey>), String> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let pem_text = read(&files.cert, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate file {cert_path}: bad PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "certificate file {cert_path}: holds no certificate (no BEGIN CERTIFICATE block)"
        ));
    };
    let names = cert_names(leaf);

    let key_text = if files.key == files.cert {
        pem_text.clone()
    } else {
        read(&files.key, "key")?
    };
    let key = match PrivateKeyDer::from_pem_slice(&key_text) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(format!(
                "key file {key_path}: holds no private key (no BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"
            ));
        }
        Err(e) => return Err(format!("key file {key_path}: bad PEM: {e}")),
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key file {key_path}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "key file {key_path} does not match the certificate in {cert_path}"
            ));
        }
        Err(e) => return Err(format!("certificate file {cert_path}: invalid certificate: {e}")),
    }
    Ok((names, Arc::new(certified)))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} file {}: cannot read: {e}", path.display()))
}

/// Chooses the certificate for a handshake by SNI.
#[derive(Debug)]
pub struct SniResolver {
    /// Each certificate's DNS names (lowercase) and the certificate.
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    default: usize,
}

impl SniResolver {
    /// `entries`: each certificate with its DNS names (as [`cert_names`]
    /// gives them); `default`: the index used without SNI or a match.
    ///
    /// # Panics
    /// If `default` is out of range.
    pub fn new(entries: Vec<(Vec<String>, Arc<CertifiedKey>)>, default: usize) -> SniResolver {
        assert!(default < entries.len(), "default certificate out of range");
        let entries = entries
            .into_iter()
            .map(|(names, key)| {
                let names = names
                    .iter()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .collect();
                (names, key)
            })
            .collect();
        SniResolver { entries, default }
    }

    /// The index of the certificate for a server name and the signature
    /// schemes the client accepts: certificates naming it exactly first, then
    /// wildcard matches, else the default. Among several matches of the same
    /// kind, the first whose key can sign for the client (e.g. an ECDSA and an
    /// RSA certificate for the same names).
    pub fn choose(&self, sni: Option<&str>, schemes: &[SignatureScheme]) -> usize {
        if let Some(sni) = sni {
            let host = sni.trim_end_matches('.').to_ascii_lowercase();
            let exact = |n: &String| *n == host;
            let wild = |n: &String| wildcard_matches(n, &host);
            for test in [&exact as &dyn Fn(&String) -> bool, &wild] {
                let found: Vec<usize> = (0..self.entries.len())
                    .filter(|&i| self.entries[i].0.iter().any(test))
                    .collect();
                if let Some(&first) = found.first() {
                    return found
                        .iter()
                        .copied()
                        .find(|&i| schemes.is_empty() || self.entries[i].1.key.choose_scheme(schemes).is_some())
                        .unwrap_or(first);
                }
            }
        }
        self.default
    }
}

/// `*.example.com` matches `www.example.com` (one label), not `example.com`
/// nor `a.b.example.com`. Both lowercase.
fn wildcard_matches(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match host.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest == suffix,
        None => false,
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.choose(hello.server_name(), hello.signature_schemes());
        Some(self.entries[i].1.clone())
    }
}

/// What a handshake settled, for the access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1.2` / `TLSv1.3` (HAProxy's `%sslv` spelling).
    pub version: Option<&'static str>,
    /// OpenSSL spelling as HAProxy's `%sslc` prints it:
    /// `ECDHE-RSA-AES128-GCM-SHA256`, `TLS_AES_256_GCM_SHA384`.
    pub cipher: Option<&'static str>,
    pub sni: Option<String>,
    pub alpn: Option<String>,
}

/// What a (finished) handshake settled.
pub fn negotiated(conn: &rustls::ServerConnection) -> Negotiated {
    Negotiated {
        version: conn.protocol_version().and_then(Version::of).map(Version::as_str),
        cipher: conn.negotiated_cipher_suite().and_then(|s| cipher_name(s.suite())),
        sni: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
    }
}

/// The DNS names (subjectAltName dNSName entries) of a DER certificate, as
/// written in it; empty when it has none or cannot be read.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    san_dns_names(der).unwrap_or_default()
}

/// OID 2.5.29.17, subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
/// TBSCertificate ::= SEQUENCE { [0] version, serial, signature, issuer,
///     validity, subject, spki, [1] issuerUID, [2] subjectUID, [3] extensions }
/// Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
/// GeneralNames ::= SEQUENCE OF GeneralName; dNSName is [2] IA5String.
fn san_dns_names(cert: &[u8]) -> Option<Vec<String>> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der(cert)? else {
        return None;
    };
    let exts = loop {
        let (tag, body, rest) = der(tbs)?;
        if tag == 0xa3 {
            break body;
        }
        tbs = rest;
    };
    let (0x30, mut list, _) = der(exts)? else {
        return None;
    };
    while !list.is_empty() {
        let (tag, ext, rest) = der(list)?;
        list = rest;
        if tag != 0x30 {
            continue;
        }
        let (0x06, oid, ext) = der(ext)? else {
            continue;
        };
        if oid != OID_SAN {
            continue;
        }
        let (mut tag, mut value, rest) = der(ext)?;
        if tag == 0x01 {
            (tag, value, _) = der(rest)?;
        }
        if tag != 0x04 {
            return None;
        }
        let (0x30, mut names, _) = der(value)? else {
            return None;
        };
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, name, rest) = der(names)?;
            names = rest;
            if tag == 0x82
                && let Ok(name) = std::str::from_utf8(name)
                && !name.is_empty()
                && name.is_ascii()
            {
                out.push(name.to_string());
            }
        }
        return Some(out);
    }
    None
}

/// One DER element at the start of `input`: tag, contents, what follows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags do not occur in certificates
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite length (not DER), too long, or truncated
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::Command;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConnection};

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("sekisho-tls-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed end-entity certificate made by the openssl command.
    fn gen_cert(dir: &TempDir, name: &str, sans: Option<&str>, rsa: bool) -> CertFiles {
        let conf = dir.0.join(format!("{name}.cnf"));
        let mut text = format!(
            "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n[dn]\nCN = {name}\n[ext]\nbasicConstraints = critical,CA:FALSE\n"
        );
        if let Some(sans) = sans {
            text.push_str(&format!("subjectAltName = {sans}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let files = CertFiles {
            cert: dir.0.join(format!("{name}.crt")),
            key: dir.0.join(format!("{name}.key")),
        };
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-config"]).arg(&conf);
        if rsa {
            cmd.args(["-newkey", "rsa:2048"]);
        } else {
            cmd.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        }
        cmd.args(["-nodes", "-days", "30", "-keyout"])
            .arg(&files.key)
            .arg("-out")
            .arg(&files.cert);
        let out = cmd.output().expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        files
    }

    fn der_of(files: &CertFiles) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&files.cert).unwrap()
    }

    fn settings(certs: &[&CertFiles]) -> Settings {
        Settings {
            certs: certs.iter().map(|c| (*c).clone()).collect(),
            ..Settings::default()
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(ring_provider::default_provider())
    }

    /// A client trusting the given certificates.
    fn client(trust: &[&CertFiles], alpn: &[&str]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        for c in trust {
            roots.add(der_of(c)).unwrap();
        }
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }

    /// Accepts any certificate (still checks the handshake signatures): to
    /// see which certificate a server sends for a name it does not hold.
    fn any_cert_client() -> ClientConfig {
        (*crate::upstream::tls::unverified().unwrap()).clone()
    }

    /// Moves everything `from` has to send into `to` and lets `to` process it.
    fn transfer(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    /// A full handshake in memory; the client's and the server's end.
    fn handshake(
        server: &Arc<rustls::ServerConfig>,
        client: ClientConfig,
        name: &str,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = Connection::from(ClientConnection::new(Arc::new(client), name).unwrap());
        let mut s = Connection::from(ServerConnection::new(server.clone()).unwrap());
        for _ in 0..10 {
            transfer(&mut c, &mut s)?;
            transfer(&mut s, &mut c)?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let (Connection::Client(c), Connection::Server(s)) = (c, s) else {
                    unreachable!()
                };
                return Ok((c, s));
            }
        }
        panic!("the handshake did not finish");
    }

    fn peer_cert(c: &ClientConnection) -> CertificateDer<'static> {
        c.peer_certificates().unwrap()[0].clone().into_owned()
    }

    #[test]
    fn version_parse() {
        for s in ["1.2", "TLSv1.2", "tls1.2", "TLSV1_2", " tlsv1.2 "] {
            assert_eq!(Version::parse(s), Ok(Version::Tls12), "{s}");
        }
        for s in ["1.3", "TLSv1.3", "tls1.3"] {
            assert_eq!(Version::parse(s), Ok(Version::Tls13), "{s}");
        }
        for s in ["1.0", "1.1", "TLSv1", "TLSv1.0", "TLSv1.1", "tls1.1", "SSLv3"] {
            let e = Version::parse(s).unwrap_err();
            assert!(e.contains("never speaks"), "{s}: {e}");
        }
        assert!(Version::parse("2.0").unwrap_err().contains("unknown"));
        assert!(Version::Tls12 < Version::Tls13);
        assert_eq!(Version::Tls13.to_string(), "TLSv1.3");
    }

    #[test]
    fn names_of_certificates() {
        let dir = TempDir::new("names");
        let a = gen_cert(
            &dir,
            "a.test",
            Some("DNS:a.test,DNS:*.b.test,IP:192.0.2.1,DNS:C.Test"),
            false,
        );
        let plain = gen_cert(&dir, "plain.test", None, false);
        assert_eq!(cert_names(&der_of(&a)), ["a.test", "*.b.test", "C.Test"]);
        assert!(cert_names(&der_of(&plain)).is_empty());
        assert!(cert_names(b"").is_empty());
        assert!(cert_names(&[0x30, 0x82, 0xff]).is_empty());
        let full = der_of(&a);
        for cut in [1, 10, full.len() / 2, full.len() - 1] {
            assert!(cert_names(&full[..cut]).is_empty());
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_matches("*.b.test", "x.b.test"));
        assert!(!wildcard_matches("*.b.test", "b.test"));
        assert!(!wildcard_matches("*.b.test", "y.x.b.test"));
        assert!(!wildcard_matches("*.b.test", ".b.test"));
        assert!(!wildcard_matches("a.test", "a.test"));
    }

    #[test]
    fn certificate_by_sni() {
        let dir = TempDir::new("sni");
        let a = gen_cert(&dir, "a.test", Some("DNS:a.test,DNS:*.b.test"), false);
        let c = gen_cert(&dir, "c.test", Some("DNS:c.test,DNS:www.b.test"), false);
        let mut s = settings(&[&a, &c]);
        s.default_cert = 1;
        let server = server_config(&s).unwrap();
        let trust = [&a, &c];

        let (cl, sv) = handshake(&server, client(&trust, &[]), "a.test").unwrap();
        assert_eq!(peer_cert(&cl), der_of(&a));
        assert_eq!(negotiated(&sv).sni.as_deref(), Some("a.test"));
        let (cl, _) = handshake(&server, client(&trust, &[]), "c.test").unwrap();
        assert_eq!(peer_cert(&cl), der_of(&c));
        // Wildcard, and an exact name winning over a wildcard.
        let (cl, _) = handshake(&server, client(&trust, &[]), "x.b.test").unwrap();
        assert_eq!(peer_cert(&cl), der_of(&a));
        let (cl, _) = handshake(&server, client(&trust, &[]), "www.b.test").unwrap();
        assert_eq!(peer_cert(&cl), der_of(&c));

        // No SNI: the default (c); the client still checks the name c.test.
        let mut no_sni = client(&trust, &[]);
        no_sni.enable_sni = false;
        let (cl, sv) = handshake(&server, no_sni, "c.test").unwrap();
        assert_eq!(peer_cert(&cl), der_of(&c));
        assert_eq!(negotiated(&sv).sni, None);
        // Unknown names, and two labels under a one-label wildcard: the default.
        for name in ["unknown.test", "y.x.b.test"] {
            let (cl, sv) = handshake(&server, any_cert_client(), name).unwrap();
            assert_eq!(peer_cert(&cl), der_of(&c), "{name}");
            assert_eq!(negotiated(&sv).sni.as_deref(), Some(name));
        }
        // Without SNI and default 0: a.
        let server = server_config(&settings(&[&a, &c])).unwrap();
        let mut no_sni = client(&trust, &[]);
        no_sni.enable_sni = false;
        let (cl, _) = handshake(&server, no_sni, "a.test").unwrap();
        assert_eq!(peer_cert(&cl), der_of(&a));
    }

    #[test]
    fn resolver_choice() {
        let dir = TempDir::new("choose");
        let ec = gen_cert(&dir, "ec.test", Some("DNS:Same.Test,DNS:*.w.test"), false);
        let rsa = gen_cert(&dir, "rsa.test", Some("DNS:same.test"), true);
        let p = provider();
        let entries = vec![load_cert(&ec, &p).unwrap(), load_cert(&rsa, &p).unwrap()];
        assert_eq!(entries[0].0, ["Same.Test", "*.w.test"]);
        let r = SniResolver::new(entries, 1);
        let ecdsa = [SignatureScheme::ECDSA_NISTP256_SHA256];
        let rsa_only = [SignatureScheme::RSA_PSS_SHA256, SignatureScheme::RSA_PKCS1_SHA256];
        let both = [SignatureScheme::RSA_PSS_SHA256, SignatureScheme::ECDSA_NISTP256_SHA256];
        // Case-insensitive, trailing dot ignored.
        assert_eq!(r.choose(Some("SAME.test."), &both), 0);
        assert_eq!(r.choose(Some("X.W.TEST"), &both), 0);
        // Same name, the key the client can verify.
        assert_eq!(r.choose(Some("same.test"), &rsa_only), 1);
        assert_eq!(r.choose(Some("same.test"), &ecdsa), 0);
        assert_eq!(r.choose(None, &both), 1);
        assert_eq!(r.choose(Some("other.test"), &ecdsa), 1);
    }

    #[test]
    fn alpn_and_versions() {
        let dir = TempDir::new("alpn");
        let a = gen_cert(&dir, "a.test", Some("DNS:a.test"), false);
        let mut s = settings(&[&a]);
        s.alpn = vec!["h2".into(), "http/1.1".into()];
        let server = server_config(&s).unwrap();

        let (_, sv) = handshake(&server, client(&[&a], &["http/1.1", "h2"]), "a.test").unwrap();
        let n = negotiated(&sv);
        assert_eq!(n.alpn.as_deref(), Some("h2"));
        assert_eq!(n.version, Some("TLSv1.3"));
        assert_eq!(n.cipher, Some("TLS_AES_256_GCM_SHA384"));
        let (cl, sv) = handshake(&server, client(&[&a], &["http/1.1"]), "a.test").unwrap();
        assert_eq!(negotiated(&sv).alpn.as_deref(), Some("http/1.1"));
        assert_eq!(cl.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (_, sv) = handshake(&server, client(&[&a], &[]), "a.test").unwrap();
        assert_eq!(negotiated(&sv).alpn, None);

        s.max_version = Version::Tls12;
        let server = server_config(&s).unwrap();
        let (cl, sv) = handshake(&server, client(&[&a], &["h2"]), "a.test").unwrap();
        let n = negotiated(&sv);
        assert_eq!(n.version, Some("TLSv1.2"));
        assert_eq!(cl.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(n.cipher, Some("ECDHE-ECDSA-AES256-GCM-SHA384"));
        assert_eq!(n.alpn.as_deref(), Some("h2"));
        assert_eq!(n.sni.as_deref(), Some("a.test"));

        s.min_version = Version::Tls13;
        assert!(server_config(&s).unwrap_err().contains("above the maximum"));
        s.max_version = Version::Tls13;
        let server = server_config(&s).unwrap();
        let (_, sv) = handshake(&server, client(&[&a], &[]), "a.test").unwrap();
        assert_eq!(negotiated(&sv).version, Some("TLSv1.3"));
    }

    #[test]
    fn cipher_lists() {
        let dir = TempDir::new("ciphers");
        let r = gen_cert(&dir, "r.test", Some("DNS:r.test"), true);
        let mut s = settings(&[&r]);

        // Only a TLS 1.2 suite: 1.3 is not offered.
        s.ciphers = Some(vec!["ECDHE-RSA-AES128-GCM-SHA256".into()]);
        let server = server_config(&s).unwrap();
        let (cl, sv) = handshake(&server, client(&[&r], &[]), "r.test").unwrap();
        let n = negotiated(&sv);
        assert_eq!(n.version, Some("TLSv1.2"));
        assert_eq!(n.cipher, Some("ECDHE-RSA-AES128-GCM-SHA256"));
        assert_eq!(
            cl.negotiated_cipher_suite().map(|c| c.suite()),
            Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        );

        // The list's order wins over the client's (which prefers AES-256).
        s.ciphers = Some(vec![
            "ecdhe-rsa-aes128-gcm-sha256:TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
        ]);
        let server = server_config(&s).unwrap();
        let (_, sv) = handshake(&server, client(&[&r], &[]), "r.test").unwrap();
        assert_eq!(negotiated(&sv).cipher, Some("ECDHE-RSA-AES128-GCM-SHA256"));

        // TLS 1.3 suites by rustls and by OpenSSL name.
        s.ciphers = Some(vec!["TLS13_CHACHA20_POLY1305_SHA256".into()]);
        let server = server_config(&s).unwrap();
        let (_, sv) = handshake(&server, client(&[&r], &[]), "r.test").unwrap();
        let n = negotiated(&sv);
        assert_eq!(n.version, Some("TLSv1.3"));
        assert_eq!(n.cipher, Some("TLS_CHACHA20_POLY1305_SHA256"));
        s.ciphers = Some(vec![
            "TLS_AES_128_GCM_SHA256".into(),
            "ECDHE-RSA-CHACHA20-POLY1305".into(),
        ]);
        let server = server_config(&s).unwrap();
        let (_, sv) = handshake(&server, client(&[&r], &[]), "r.test").unwrap();
        assert_eq!(negotiated(&sv).cipher, Some("TLS_AES_128_GCM_SHA256"));
        s.max_version = Version::Tls12;
        let server = server_config(&s).unwrap();
        let (_, sv) = handshake(&server, client(&[&r], &[]), "r.test").unwrap();
        assert_eq!(negotiated(&sv).cipher, Some("ECDHE-RSA-CHACHA20-POLY1305"));

        // Nothing usable for the versions allowed.
        s.ciphers = Some(vec!["TLS_AES_128_GCM_SHA256".into()]);
        assert!(server_config(&s).unwrap_err().contains("none of the ciphers"));

        s.ciphers = Some(vec!["ECDHE-RSA-AES128-GCM-SHA256".into(), "DES-CBC3-SHA".into()]);
        let e = server_config(&s).unwrap_err();
        assert!(
            e.contains("`DES-CBC3-SHA`") && e.contains("ECDHE-RSA-AES128-GCM-SHA256"),
            "{e}"
        );
        s.ciphers = Some(vec![]);
        assert!(server_config(&s).unwrap_err().contains("empty"));

        for suite in ring_provider::ALL_CIPHER_SUITES {
            assert!(SUITES.iter().any(|n| n.suite == suite.suite()), "{:?}", suite.suite());
        }
    }

    #[test]
    fn bad_files() {
        let dir = TempDir::new("bad");
        let a = gen_cert(&dir, "a.test", Some("DNS:a.test"), false);
        let b = gen_cert(&dir, "b.test", Some("DNS:b.test"), false);
        let err = |files: CertFiles| server_config(&settings(&[&files])).unwrap_err();

        let e = err(CertFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        });
        assert!(
            e.contains(&b.key.display().to_string()) && e.contains("does not match"),
            "{e}"
        );
        let e = err(CertFiles {
            cert: dir.0.join("missing.crt"),
            key: a.key.clone(),
        });
        assert!(e.contains("missing.crt") && e.contains("cannot read"), "{e}");
        let e = err(CertFiles {
            cert: a.cert.clone(),
            key: dir.0.join("missing.key"),
        });
        assert!(e.contains("missing.key") && e.contains("cannot read"), "{e}");
        let e = err(CertFiles {
            cert: a.key.clone(),
            key: a.key.clone(),
        });
        assert!(e.contains("a.test.key") && e.contains("no certificate"), "{e}");
        let e = err(CertFiles {
            cert: a.cert.clone(),
            key: a.cert.clone(),
        });
        assert!(e.contains("a.test.crt") && e.contains("no private key"), "{e}");

        // Certificate and key in one file.
        let both = dir.0.join("both.pem");
        let mut text = std::fs::read(&a.cert).unwrap();
        text.extend(std::fs::read(&a.key).unwrap());
        std::fs::write(&both, text).unwrap();
        assert!(
            server_config(&settings(&[&CertFiles {
                cert: both.clone(),
                key: both
            }]))
            .is_ok()
        );

        let mut s = settings(&[&a]);
        s.default_cert = 1;
        assert!(server_config(&s).unwrap_err().contains("default certificate"));
        assert!(
            server_config(&Settings::default())
                .unwrap_err()
                .contains("no certificate")
        );
        let mut s = settings(&[&a]);
        s.alpn = vec![String::new()];
        assert!(server_config(&s).unwrap_err().contains("ALPN"));
    }
}
