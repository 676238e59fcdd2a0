//! The PROXY protocol (versions 1 and 2) a load balancer puts in front of a
//! connection to say who the real client is.
//!
//! [`parse`] is a pure function over the bytes read so far; [`read`] drives it
//! over a socket with a deadline and hands back the bytes that followed the
//! header (the start of the client's request).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
/// Largest v2 header accepted (fixed part plus addresses and TLVs).
const V2_MAX: usize = 16 + 4096;

/// What a header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// `LOCAL` (v2): the balancer speaking for itself, e.g. a health check.
    pub local: bool,
    /// Source and destination of the client's connection, when the header
    /// carries TCP over IPv4 or IPv6 (not for `UNKNOWN`, `LOCAL` or other families).
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// Type-length-value extensions (v2), in order; unknown types are kept as bytes.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to decide.
    Incomplete,
    /// The bytes do not start a PROXY header.
    Absent,
    Invalid(String),
    /// A header of `len` bytes.
    Done(Header, usize),
}

fn invalid(m: impl Into<String>) -> Parsed {
    Parsed::Invalid(m.into())
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if buf.len() < 16 {
            Parsed::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if buf.len() < 6 {
            Parsed::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    Parsed::Absent
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            invalid("v1 header longer than 107 bytes")
        } else if buf.contains(&b'\n') {
            invalid("v1 header not ended by CRLF")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return invalid("v1 header longer than 107 bytes");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..end]) else {
        return invalid("v1 header is not text");
    };
    let f: Vec<&str> = line.split(' ').collect();
    let header = |addrs| Header {
        version: 1,
        local: false,
        addrs,
        tlvs: Vec::new(),
    };
    match f[0] {
        "UNKNOWN" => Parsed::Done(header(None), len),
        "TCP4" | "TCP6" => {
            if f.len() != 5 {
                return invalid(format!("v1 {} needs 4 fields, got {}", f[0], f.len() - 1));
            }
            let v6 = f[0] == "TCP6";
            let ip = |s: &str| -> Option<IpAddr> {
                if v6 {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                } else {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                }
            };
            let port = |s: &str| -> Option<u16> {
                (!s.is_empty()
                    && s.len() <= 5
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0')))
                .then(|| s.parse().ok())
                .flatten()
            };
            match (ip(f[1]), ip(f[2]), port(f[3]), port(f[4])) {
                (Some(s), Some(d), Some(sp), Some(dp)) => {
                    Parsed::Done(header(Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp)))), len)
                }
                _ => invalid(format!("v1 {} addresses or ports are malformed", f[0])),
            }
        }
        other => invalid(format!(
            "v1 protocol `{}` is not TCP4, TCP6 or UNKNOWN",
            other.escape_debug()
        )),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return invalid(format!("v2 version {} is not 2", ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return invalid(format!("v2 command {c} is neither LOCAL nor PROXY")),
    };
    let fam = buf[13];
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > V2_MAX {
        return invalid(format!("v2 header of {len} bytes is too long"));
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let b = &buf[16..len];
    let (addrs, addr_len) = match fam {
        0x11 if b.len() >= 12 => {
            let s = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let d = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            let sp = u16::from_be_bytes([b[8], b[9]]);
            let dp = u16::from_be_bytes([b[10], b[11]]);
            (Some((SocketAddr::new(s.into(), sp), SocketAddr::new(d.into(), dp))), 12)
        }
        0x21 if b.len() >= 36 => {
            let s: [u8; 16] = b[0..16].try_into().expect("16 bytes");
            let d: [u8; 16] = b[16..32].try_into().expect("16 bytes");
            let sp = u16::from_be_bytes([b[32], b[33]]);
            let dp = u16::from_be_bytes([b[34], b[35]]);
            (
                Some((
                    SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv6Addr::from(d).into(), dp),
                )),
                36,
            )
        }
        0x11 | 0x21 => return invalid("v2 address block too short"),
        // UNSPEC, UDP, unix sockets: no TCP client address to use
        0x00 => (None, 0),
        0x12 => (None, 12.min(b.len())),
        0x22 => (None, 36.min(b.len())),
        0x31 | 0x32 => (None, 216.min(b.len())),
        f => return invalid(format!("v2 address family 0x{f:02x} is unknown")),
    };
    let mut tlvs = Vec::new();
    let mut rest = &b[addr_len..];
    // LOCAL and UNSPEC carry no meaningful addresses; their TLVs are still read
    while !rest.is_empty() {
        if rest.len() < 3 {
            return invalid("v2 TLV truncated");
        }
        let t = rest[0];
        let l = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < 3 + l {
            return invalid(format!("v2 TLV 0x{t:02x} runs past the header"));
        }
        tlvs.push((t, rest[3..3 + l].to_vec()));
        rest = &rest[3 + l..];
    }
    Parsed::Done(
        Header {
            version: 2,
            local,
            addrs: if local { None } else { addrs },
            tlvs,
        },
        len,
    )
}

/// Why a connection's PROXY header was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    Timeout,
    /// The client closed after sending this many bytes (0: an empty connection).
    Closed(usize),
    Invalid(String),
    Io(String),
}

/// Reads until a header is complete or clearly absent. Returns the header (if
/// any) and every byte read after it.
pub async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<(Option<Header>, Vec<u8>), ReadError> {
    let work = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| ReadError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ReadError::Closed(buf.len()));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse(&buf) {
                Parsed::Incomplete => continue,
                Parsed::Absent => return Ok((None, buf)),
                Parsed::Invalid(m) => return Err(ReadError::Invalid(m)),
                Parsed::Done(h, len) => return Ok((Some(h), buf.split_off(len))),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_forms() {
        let b = b"PROXY TCP4 192.0.2.1 198.51.100.2 5555 80\r\nGET /";
        match parse(b) {
            Parsed::Done(h, len) => {
                assert_eq!(h.addrs, Some((sa("192.0.2.1:5555"), sa("198.51.100.2:80"))));
                assert_eq!(&b[len..], b"GET /");
            }
            p => panic!("{p:?}"),
        }
        match parse(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n") {
            Parsed::Done(h, _) => assert_eq!(h.addrs, Some((sa("[2001:db8::1]:1"), sa("[::1]:2")))),
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            parse(b"PROXY UNKNOWN ffff::1 x y z\r\n"),
            Parsed::Done(Header { addrs: None, .. }, 29)
        ));
        assert_eq!(parse(b"PROX"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parsed::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Absent);
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n"), Parsed::Invalid(_)));
        assert!(matches!(
            parse(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(&[b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat()),
            Parsed::Invalid(_)
        ));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v2_forms_and_tlvs() {
        let mut body = vec![192, 0, 2, 1, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];
        body.extend_from_slice(&[0x02, 0, 3, b'a', b'b', b'c']); // authority
        body.extend_from_slice(&[0xe7, 0, 1, 9]); // unknown type: kept, ignored
        let mut b = v2(1, 0x11, &body);
        b.extend_from_slice(b"rest");
        match parse(&b) {
            Parsed::Done(h, len) => {
                assert_eq!(h.addrs, Some((sa("192.0.2.1:8080"), sa("10.0.0.1:80"))));
                assert_eq!(h.tlvs, vec![(0x02, b"abc".to_vec()), (0xe7, vec![9])]);
                assert_eq!(&b[len..], b"rest");
            }
            p => panic!("{p:?}"),
        }
        let mut body6 = [0u8; 36].to_vec();
        body6[15] = 1;
        body6[31] = 2;
        body6[33] = 7;
        match parse(&v2(1, 0x21, &body6)) {
            Parsed::Done(h, _) => assert_eq!(h.addrs, Some((sa("[::1]:7"), sa("[::2]:0")))),
            p => panic!("{p:?}"),
        }
        // LOCAL: the balancer's own connection, addresses ignored
        match parse(&v2(0, 0x11, &body[..12])) {
            Parsed::Done(h, _) => assert!(h.local && h.addrs.is_none()),
            p => panic!("{p:?}"),
        }
        assert!(matches!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Done(Header { local: true, .. }, 16)
        ));
        assert!(matches!(
            parse(&v2(1, 0x00, &[])),
            Parsed::Done(Header { addrs: None, .. }, 16)
        ));
        assert_eq!(parse(&v2(1, 0x11, &body)[..20]), Parsed::Incomplete);
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3])), Parsed::Invalid(_)));
        assert!(matches!(parse(&v2(2, 0x11, &body)), Parsed::Invalid(_)));
        assert!(matches!(
            parse(&v2(1, 0x11, &[&body[..12], &[1, 0, 9, 1]].concat())),
            Parsed::Invalid(_)
        ));
        let mut bad_ver = v2(1, 0x11, &body);
        bad_ver[12] = 0x11;
        assert!(matches!(parse(&bad_ver), Parsed::Invalid(_)));
    }
}

/// The PROXY header (version 1 or 2) sekisho sends to a server for a
/// connection from `src` to `dst`: v1 text (`PROXY TCP4 ...`), or v2 binary
/// with the PROXY command and no TLV. Mixed families become v1 `UNKNOWN` / v2 LOCAL.
pub fn encode(version: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    use crate::policy::acl::canonical;
    let (s, d) = (canonical(src.ip()), canonical(dst.ip()));
    if version == 1 {
        return match (s, d) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                format!("PROXY TCP4 {a} {b} {} {}\r\n", src.port(), dst.port()).into_bytes()
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                format!("PROXY TCP6 {a} {b} {} {}\r\n", src.port(), dst.port()).into_bytes()
            }
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        };
    }
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match (s, d) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
        }
        _ => {
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            return out;
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// A header that names no client (v1 `UNKNOWN`, v2 `LOCAL`), for health checks.
pub fn encode_local(version: u8) -> Vec<u8> {
    if version == 1 {
        return b"PROXY UNKNOWN\r\n".to_vec();
    }
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    #[test]
    fn encoded_headers_parse_back() {
        let src: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let dst: SocketAddr = "198.51.100.2:80".parse().unwrap();
        assert_eq!(
            encode(1, src, dst),
            b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 80\r\n".to_vec()
        );
        for v in [1, 2] {
            for (s, d) in [
                (src, dst),
                ("[2001:db8::1]:1".parse().unwrap(), "[2001:db8::2]:2".parse().unwrap()),
            ] {
                match parse(&encode(v, s, d)) {
                    Parsed::Done(h, _) => assert_eq!(h.addrs, Some((s, d)), "v{v}"),
                    other => panic!("v{v}: {other:?}"),
                }
            }
            match parse(&encode_local(v)) {
                Parsed::Done(h, n) => {
                    assert_eq!(h.addrs, None, "v{v}");
                    assert_eq!(n, encode_local(v).len());
                }
                other => panic!("v{v}: {other:?}"),
            }
        }
    }
}
