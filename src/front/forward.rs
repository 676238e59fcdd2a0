//! The HTTP forward proxy: absolute-form requests are checked against the
//! listener's rules, resolved, sent to the origin over a pooled keep-alive
//! connection and streamed back; CONNECT requests become byte tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::config::ForwardedFor;
use crate::egress::connect::{self, AttemptError};
use crate::front::conn::{Conn, UpgradeIo};
use crate::front::error_page;
use crate::front::txn::{ProxyBody, Txn};
use crate::observe::counters::Counters;
use crate::observe::record::{Hierarchy, ResultCode};
use crate::policy::acl::{Facts, Verdict};
use crate::policy::auth::Outcome;
use crate::relay::body::ReqBody;
use crate::relay::headers::strip_hop_by_hop;
use crate::relay::pool::{self, Sender};
use crate::relay::tunnel::{self, End};

/// Why the proxy answers a request itself.
struct Refusal {
    status: StatusCode,
    result: ResultCode,
    termination: [u8; 2],
    detail: String,
    /// A 407: send the authentication challenges (`stale=true` when set).
    challenge: Option<bool>,
}

impl Refusal {
    fn new(status: StatusCode, result: ResultCode, termination: &[u8; 2], detail: impl Into<String>) -> Refusal {
        Refusal {
            status,
            result,
            termination: *termination,
            detail: detail.into(),
            challenge: None,
        }
    }

    fn login(stale: bool) -> Refusal {
        Refusal {
            challenge: Some(stale),
            ..Refusal::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                ResultCode::TcpDenied,
                b"PR",
                "This proxy requires you to log in first.",
            )
        }
    }
}

/// Serves one request.
pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let head_time = conn.activity.begin();
    let mut rec = conn.record();
    rec.method = req.method().clone();
    rec.uri = req.uri().clone();
    rec.version = req.version();
    rec.timers.request = Some(head_time);
    rec.timers.queue = Some(Duration::ZERO);
    rec.bytes_from_client = request_head_len(&req);
    let txn = Txn::new(conn, rec);
    if req.method() == Method::CONNECT {
        tunnel(txn, req).await
    } else {
        forward(txn, req).await
    }
}

/// Answers with a proxy page; the transaction is logged when the page is sent.
fn refuse(mut txn: Txn, r: Refusal) -> Response<ProxyBody> {
    let (mut resp, body) = error_page::render(r.status, &r.detail, &txn.conn.cfg.visible_hostname);
    if let (Some(stale), Some(auth)) = (r.challenge, &txn.conn.cfg.auth) {
        for v in auth.challenges(stale) {
            resp.headers_mut().append(header::PROXY_AUTHENTICATE, v);
        }
    }
    txn.rec.status = r.status.as_u16();
    txn.rec.result = r.result;
    txn.rec.termination = r.termination;
    txn.rec.content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    txn.rec.bytes_to_client += response_head_len(r.status, resp.headers());
    let (parts, ()) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::full(body, txn))
}

/// Lower case, without brackets or a trailing dot.
fn normalize_host(host: &str) -> String {
    let h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks the access rules (and the credentials, when a rule asks for a
/// user) and resolves the destination; returns the addresses the rules
/// allow, in the order to try them.
async fn admit(
    txn: &mut Txn,
    credentials: Option<&HeaderValue>,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Refusal> {
    let conn = txn.conn.clone();
    let cfg = &conn.cfg;
    let rules = &cfg.listeners[conn.session.listener].access;
    let method = txn.rec.method.clone();
    let base = Facts {
        src: conn.session.client.ip(),
        method: &method,
        host,
        port,
        dst: None,
        user: None,
    };
    // credentials are checked the first time a rule that could decide asks
    // for the user, whether before or after the destination is known
    let mut user: Option<Arc<str>> = None;
    let mut verdict = rules.check(&cfg.acls, &base);
    if verdict == Verdict::NeedAuth {
        user = Some(login(txn, credentials).await?);
        verdict = rules.check(
            &cfg.acls,
            &Facts {
                user: user.as_deref(),
                ..base
            },
        );
    }
    let denied = |detail: String| Refusal::new(StatusCode::FORBIDDEN, ResultCode::TcpDenied, b"PR", detail);
    if let Verdict::Deny(_) = verdict {
        return Err(denied(format!(
            "Access to {host}:{port} is denied by this proxy's access rules."
        )));
    }
    let ips = conn.state.resolver.resolve(host).await.map_err(|e| {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"SC",
            format!("DNS lookup failed: {e}."),
        )
    })?;
    let mut allowed = Vec::with_capacity(ips.len());
    for ip in ips {
        if verdict == Verdict::NeedDst {
            let mut v = rules.check(
                &cfg.acls,
                &Facts {
                    dst: Some(ip),
                    user: user.as_deref(),
                    ..base
                },
            );
            if v == Verdict::NeedAuth && user.is_none() {
                user = Some(login(txn, credentials).await?);
                v = rules.check(
                    &cfg.acls,
                    &Facts {
                        dst: Some(ip),
                        user: user.as_deref(),
                        ..base
                    },
                );
            }
            if !v.is_allow() {
                continue;
            }
        }
        allowed.push(SocketAddr::new(ip, port));
    }
    if allowed.is_empty() {
        return Err(denied(format!(
            "Access to {host}:{port} is denied by this proxy's access rules (destination address)."
        )));
    }
    Ok(allowed)
}

/// Checks the request's credentials: the user, or a 407 to send.
async fn login(txn: &mut Txn, credentials: Option<&HeaderValue>) -> Result<Arc<str>, Refusal> {
    let outcome = match &txn.conn.cfg.auth {
        Some(a) => a.authenticate(credentials, &txn.rec.method, &txn.rec.uri).await,
        None => Outcome::Absent,
    };
    match outcome {
        Outcome::User(u) => {
            txn.rec.user = Some(u.clone());
            Ok(u)
        }
        Outcome::Absent => Err(Refusal::login(false)),
        Outcome::Failed { stale, reason } => {
            tracing::debug!(client = %txn.conn.session.client, "proxy authentication failed: {reason}");
            Err(Refusal::login(stale))
        }
    }
}

/// A refusal for a set of failed connection attempts: 504 when every one timed out.
fn unreachable(host: &str, port: u16, errors: &[AttemptError]) -> Refusal {
    let list = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
    if connect::all_timed_out(errors) {
        Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            ResultCode::TcpMissError,
            b"sC",
            format!("No address of {host}:{port} answered in time ({list})."),
        )
    } else {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"SC",
            format!("Cannot connect to {host}:{port} ({list})."),
        )
    }
}

/// Opens a new upstream connection, trying each address in turn.
async fn connect_new(
    txn: &mut Txn,
    addrs: &[SocketAddr],
    host: &str,
    port: u16,
) -> Result<(SocketAddr, tokio::net::TcpStream), Refusal> {
    let t0 = Instant::now();
    let timeout = txn.conn.cfg.timeouts.connect;
    match connect::connect_any(addrs, timeout).await {
        Ok((stream, addr, _failed)) => {
            Counters::inc(&txn.conn.state.counters.upstream_connects);
            txn.rec.timers.connect = Some(t0.elapsed());
            txn.rec.upstream = Some(addr);
            Ok((addr, stream))
        }
        Err(errors) => {
            txn.rec.timers.connect = Some(t0.elapsed());
            Err(unreachable(host, port, &errors))
        }
    }
}

async fn new_sender(
    txn: &mut Txn,
    addrs: &[SocketAddr],
    host: &str,
    port: u16,
) -> Result<(SocketAddr, Sender), Refusal> {
    let (addr, stream) = connect_new(txn, addrs, host, port).await?;
    let tx = pool::handshake(stream).await.map_err(|e| {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"SC",
            format!("Cannot talk to {addr}: {e}."),
        )
    })?;
    Ok((addr, tx))
}

async fn forward(mut txn: Txn, req: Request<Incoming>) -> Response<ProxyBody> {
    let (host, port, authority) = match req.uri().scheme_str() {
        Some("http") => match req.uri().authority() {
            Some(a) => (normalize_host(a.host()), a.port_u16().unwrap_or(80), a.clone()),
            None => {
                let r = Refusal::new(
                    StatusCode::BAD_REQUEST,
                    ResultCode::None,
                    b"PR",
                    "The request URL has no host.",
                );
                return refuse(txn, r);
            }
        },
        Some(other) => {
            let r = Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                ResultCode::None,
                b"PR",
                format!("The {other}:// scheme is not supported; https:// is reached through CONNECT."),
            );
            return refuse(txn, r);
        }
        None => {
            let r = Refusal::new(
                StatusCode::BAD_REQUEST,
                ResultCode::None,
                b"PR",
                "This is a forward proxy: the request must carry an absolute URL (GET http://host/path HTTP/1.1). \
                 Configure the client to use this address as its HTTP proxy.",
            );
            return refuse(txn, r);
        }
    };
    let addrs = match admit(&mut txn, req.headers().get(header::PROXY_AUTHORIZATION), &host, port).await {
        Ok(a) => a,
        Err(r) => return refuse(txn, r),
    };
    txn.rec.hierarchy = Hierarchy::Direct;

    let (mut out, counter) = outgoing_request(&txn, req, &authority);
    txn.req_body = counter;

    // a pooled connection to an allowed address first, else a new one
    let mut reused = None;
    for &a in &addrs {
        if let Some(tx) = txn.conn.state.pool.checkout(a) {
            reused = Some((a, tx));
            break;
        }
    }
    let (mut addr, mut tx, mut is_reused) = match reused {
        Some((a, tx)) => {
            Counters::inc(&txn.conn.state.counters.upstream_reused);
            txn.rec.timers.connect = Some(Duration::ZERO);
            txn.rec.upstream = Some(a);
            (a, tx, true)
        }
        None => match new_sender(&mut txn, &addrs, &host, port).await {
            Ok((a, tx)) => (a, tx, false),
            Err(r) => return refuse(txn, r),
        },
    };

    let response_timeout = txn.conn.cfg.timeouts.server_response;
    let t0 = Instant::now();
    let resp = loop {
        match tokio::time::timeout(response_timeout, tx.try_send_request(out)).await {
            Ok(Ok(resp)) => break resp,
            Ok(Err(mut e)) => {
                // a pooled connection the origin closed meanwhile: the request was
                // not sent, so it goes again on a fresh connection
                if is_reused && let Some(m) = e.take_message() {
                    out = m;
                    match new_sender(&mut txn, &addrs, &host, port).await {
                        Ok((a, t)) => (addr, tx, is_reused) = (a, t, false),
                        Err(r) => return refuse(txn, r),
                    }
                    continue;
                }
                let r = Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    ResultCode::TcpMissError,
                    b"SH",
                    format!(
                        "The origin {addr} closed the connection or sent an invalid response ({}).",
                        e.error()
                    ),
                );
                return refuse(txn, r);
            }
            Err(_) => {
                let r = Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ResultCode::TcpMissError,
                    b"sH",
                    format!(
                        "The origin {addr} did not answer within {} s.",
                        response_timeout.as_secs_f64()
                    ),
                );
                return refuse(txn, r);
            }
        }
    };
    txn.rec.timers.response = Some(t0.elapsed());

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(v) = &txn.conn.cfg.http.via_value {
        append_header(&mut parts.headers, header::VIA, v);
    }
    parts.version = Version::HTTP_11;
    txn.rec.status = parts.status.as_u16();
    txn.rec.result = ResultCode::TcpMiss;
    txn.rec.content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    txn.rec.bytes_to_client += response_head_len(parts.status, &parts.headers);
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            inner: body,
            txn: Some(txn),
            upstream: Some((addr, tx)),
        },
    )
}

/// The request as it goes to the origin: origin-form target, Host from the
/// URL, hop-by-hop headers removed, Via and X-Forwarded-For as configured.
fn outgoing_request(
    txn: &Txn,
    req: Request<Incoming>,
    authority: &Authority,
) -> (Request<ReqBody>, Option<Arc<AtomicU64>>) {
    let cfg = &txn.conn.cfg;
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    let client_version = parts.version;
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    let host = authority.as_str().rsplit('@').next().unwrap_or("");
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(header::HOST, v);
    }
    for name in &cfg.http.request_header_delete {
        h.remove(name);
    }
    if let Some(v) = &cfg.http.via_value {
        if client_version == Version::HTTP_10 {
            if let Ok(v10) = HeaderValue::from_str(&format!("1.0 {}", cfg.visible_hostname)) {
                append_header(h, header::VIA, &v10);
            }
        } else {
            append_header(h, header::VIA, v);
        }
    }
    let xff = header::HeaderName::from_static("x-forwarded-for");
    match cfg.http.forwarded_for {
        ForwardedFor::Transparent => {}
        ForwardedFor::Delete => {
            h.remove(&xff);
        }
        ForwardedFor::On | ForwardedFor::Off => {
            let me = if cfg.http.forwarded_for == ForwardedFor::On {
                txn.conn.session.client.ip().to_string()
            } else {
                "unknown".to_string()
            };
            if let Ok(v) = HeaderValue::from_str(&me) {
                append_header(h, xff, &v);
            }
        }
    }
    let (body, counter) = ReqBody::new(body);
    (Request::from_parts(parts, body), counter)
}

/// Appends to a comma-separated header, keeping one field line.
fn append_header(h: &mut HeaderMap, name: header::HeaderName, value: &HeaderValue) {
    let joined = match h.get(&name) {
        Some(old) => {
            let mut v = Vec::with_capacity(old.len() + 2 + value.len());
            v.extend_from_slice(old.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(value.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(value.clone()),
    };
    if let Some(v) = joined {
        h.insert(name, v);
    }
}

fn headers_len(h: &HeaderMap) -> u64 {
    h.iter().map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64).sum()
}

fn request_head_len<B>(req: &Request<B>) -> u64 {
    let u = req.uri();
    let target = u.scheme_str().map_or(0, |s| s.len() + 3)
        + u.authority().map_or(0, |a| a.as_str().len())
        + u.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 11;
    line as u64 + headers_len(req.headers()) + 2
}

fn response_head_len(status: StatusCode, h: &HeaderMap) -> u64 {
    let line = 13 + status.canonical_reason().map_or(0, str::len) + 2;
    line as u64 + headers_len(h) + 2
}

async fn tunnel(mut txn: Txn, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| Some((normalize_host(a.host()), a.port_u16()?)))
    else {
        let r = Refusal::new(
            StatusCode::BAD_REQUEST,
            ResultCode::None,
            b"PR",
            "CONNECT needs a host:port target.",
        );
        return refuse(txn, r);
    };
    let addrs = match admit(&mut txn, req.headers().get(header::PROXY_AUTHORIZATION), &host, port).await {
        Ok(a) => a,
        Err(r) => return refuse(txn, r),
    };
    txn.rec.hierarchy = Hierarchy::Direct;
    let (_, server) = match connect_new(&mut txn, &addrs, &host, port).await {
        Ok(s) => s,
        Err(r) => return refuse(txn, r),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    txn.rec.status = 200;
    txn.rec.result = ResultCode::TcpTunnel;
    txn.rec.bytes_to_client += response_head_len(StatusCode::OK, &HeaderMap::new()) + 37;
    txn.detach();
    let state = txn.conn.state.clone();
    Counters::inc(&state.counters.tunnels);
    let busy = state.busy();
    let idle = txn.conn.cfg.timeouts.tunnel_idle;
    let method = txn.conn.cfg.tunnel_relay;
    tokio::spawn(async move {
        let _busy = busy;
        match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<UpgradeIo>() {
                Ok(parts) => {
                    let mut io = parts.io.into_inner();
                    // bytes read after a PROXY header that hyper never asked for
                    let prefix = io.take_prefix();
                    let early: std::borrow::Cow<'_, [u8]> = if prefix.is_empty() {
                        std::borrow::Cow::Borrowed(&parts.read_buf)
                    } else {
                        std::borrow::Cow::Owned([&parts.read_buf[..], &prefix].concat())
                    };
                    let outcome = tunnel::relay(io.stream, server, &early, idle, method).await;
                    txn.rec.bytes_from_client += outcome.up;
                    txn.rec.bytes_to_client += outcome.down;
                    txn.rec.termination = match outcome.end {
                        End::Closed => *b"--",
                        End::ClientError => *b"CD",
                        End::ServerError => *b"SD",
                        End::Idle => *b"cD",
                    };
                }
                Err(_) => {
                    tracing::error!("CONNECT: the client connection could not be taken over");
                    txn.rec.termination = *b"ID";
                }
            },
            Err(e) => {
                tracing::debug!("CONNECT: client went away before the tunnel started: {e}");
                txn.rec.termination = *b"CD";
            }
        }
        drop(txn);
    });
    Response::new(ProxyBody::empty())
}
