//! The reverse proxy of `http` and `https` listeners: a request is routed by
//! host and path prefix to a pool, a server is chosen (sticky server first,
//! else the pool's algorithm; waiting in the pool's queue when every server
//! is full), and the request goes over a pooled keep-alive connection with
//! the client's identity added (`X-Forwarded-For` & co). Idempotent requests
//! that fail before any response byte are retried on another server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::config::upstream::{HashKey, HttpListener, XffMode};
use crate::egress::connect;
use crate::front::conn::Conn;
use crate::front::error_page;
use crate::front::txn::{ProxyBody, Txn};
use crate::observe::counters::Counters;
use crate::observe::figures::ErrorClass;
use crate::observe::record::ResultCode;
use crate::policy::acl::Facts;
use crate::relay::body::ReqBody;
use crate::relay::headers::strip_hop_by_hop;
use crate::relay::pool::{self, Key, Sender};
use crate::upstream::backend::{Backend, NoServer, Slot, Sticky, source_key};
use crate::upstream::balance::Algorithm;
use tokio::io::AsyncWriteExt;

/// Serves one request of an `http`/`https` listener.
pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let now = Instant::now();
    let head_time = conn.activity.begin(now);
    // built in place on the heap: a record is large and moved once, as a box
    let mut rec = Box::new(conn.record(now));
    rec.method = req.method().clone();
    rec.uri = req.uri().clone();
    rec.version = req.version();
    rec.timers.request = Some(head_time);
    rec.bytes_from_client = head_len(&req);
    rec.tls = conn.tls.clone();
    let txn = Txn::new(conn, rec, now);
    serve(txn, req).await
}

fn head_len<B>(req: &Request<B>) -> u64 {
    let u = req.uri();
    let target = u.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 11;
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (line + headers + 2) as u64
}

/// A page from the proxy itself.
fn page(mut txn: Txn, status: StatusCode, termination: &[u8; 2], detail: &str) -> Response<ProxyBody> {
    let (resp, body) = error_page::render(status, detail, &txn.conn.cfg.visible_hostname);
    txn.rec.status = status.as_u16();
    txn.rec.result = if status == StatusCode::FORBIDDEN {
        ResultCode::TcpDenied
    } else {
        ResultCode::TcpMissError
    };
    txn.rec.termination = *termination;
    txn.rec.content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    txn.rec.bytes_to_client += 60 + body.len() as u64;
    let (parts, ()) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::full(body, txn))
}

/// The request's host, lower case, without port, brackets or trailing dot.
fn request_host(req: &Request<Incoming>) -> String {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port)
            .unwrap_or_default(),
    };
    raw.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The `Host` the servers get: the host (and port) the client addressed,
/// that is the URI's authority (HTTP/2, absolute form) without user info,
/// else the client's own `Host` header.
fn host_for_server(req: &Request<Incoming>) -> Option<HeaderValue> {
    let sent = req.headers().get(header::HOST);
    match req.uri().authority() {
        Some(a) => {
            let a = a.as_str().rsplit('@').next().unwrap_or("");
            match sent {
                Some(h) if h.as_bytes() == a.as_bytes() => Some(h.clone()),
                _ => HeaderValue::from_str(a).ok(),
            }
        }
        None => sent.cloned(),
    }
}

/// `name:port` -> `name`; `[v6]:port` -> `[v6]`.
fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_inclusive(']').next().unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => name,
        _ => h,
    }
}

/// The pool a request goes to.
fn route(h: &HttpListener, host: &str, path: &str) -> Option<usize> {
    h.routes
        .iter()
        .find(|r| r.host.as_ref().is_none_or(|p| p.matches(host)) && path.starts_with(&r.path_prefix))
        .map(|r| r.pool)
        .or(h.default_pool)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn request_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The value of cookie `name` set by a response's `Set-Cookie` headers.
fn response_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

fn truncate(s: &str, len: usize) -> String {
    let mut end = s.len().min(len);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What stickiness decided before balancing.
struct StickyChoice {
    /// The server the request sticks to, if any.
    server: Option<usize>,
    /// The learnt/source key to store after the response.
    key: Option<Vec<u8>>,
    /// Inserted cookie: first-seen time carried in the request's cookie.
    first_seen: Option<u64>,
    /// The request's cookie status (HAProxy's third termination character).
    req_state: u8,
}

fn sticky_choice(b: &Backend, req: &Request<Incoming>, client: std::net::IpAddr) -> StickyChoice {
    let mut c = StickyChoice {
        server: None,
        key: None,
        first_seen: None,
        req_state: b'-',
    };
    match &b.sticky {
        None => {}
        Some(Sticky::Learn { cookie, table }) => {
            c.req_state = b'N';
            if let Some(v) = request_cookie(req.headers(), cookie) {
                c.key = Some(v.as_bytes().to_vec());
                match table.lookup(v.as_bytes()) {
                    Some(s) => {
                        c.server = Some(s as usize);
                        c.req_state = b'V';
                    }
                    None => c.req_state = b'I',
                }
            }
        }
        Some(Sticky::Insert {
            cookie, codec, values, ..
        }) => {
            c.req_state = b'N';
            if let Some(v) = request_cookie(req.headers(), cookie) {
                match codec.decode(v, unix_now()) {
                    Some((part, first)) => {
                        c.first_seen = first;
                        match values.iter().position(|v| crate::upstream::stick::value_eq(part, v)) {
                            Some(i) => {
                                c.server = Some(i);
                                c.req_state = b'V';
                            }
                            None => c.req_state = b'I',
                        }
                    }
                    None => c.req_state = b'E',
                }
            }
        }
        Some(Sticky::Source(table)) => {
            let k = source_key(client);
            c.server = table.lookup(&k).map(|s| s as usize);
            c.key = Some(k);
        }
    }
    if let Some(s) = c.server
        && !b.servers.get(s).is_some_and(|s| s.takes_sticky())
    {
        // the sticky server is down (or in maintenance): balance, and the
        // stickiness is rewritten
        c.req_state = b'D';
    }
    c
}

/// The bytes the pool's algorithm hashes.
fn hash_key(b: &Backend, req: &Request<Incoming>, client: std::net::IpAddr, host: &str) -> Vec<u8> {
    match b.balancer.algorithm() {
        Algorithm::Source => source_key(client),
        Algorithm::Uri => req
            .uri()
            .path_and_query()
            .map_or(b"/".to_vec(), |p| p.as_str().as_bytes().to_vec()),
        Algorithm::Hash => match &b.cfg.hash_key {
            HashKey::Source => source_key(client),
            HashKey::Uri => req
                .uri()
                .path_and_query()
                .map_or(b"/".to_vec(), |p| p.as_str().as_bytes().to_vec()),
            HashKey::Host => host.as_bytes().to_vec(),
            HashKey::Header(h) => req.headers().get(h).map_or(Vec::new(), |v| v.as_bytes().to_vec()),
            HashKey::Cookie(c) => request_cookie(req.headers(), c).map_or(Vec::new(), |v| v.as_bytes().to_vec()),
        },
        _ => Vec::new(),
    }
}

/// Whether a request may be sent again after a failure (RFC 9110 idempotent methods).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Adds the client-identity headers after hop-by-hop removal, so a
/// `Connection` header naming them cannot strip them.
fn add_identity(h: &mut HeaderMap, l: &HttpListener, conn: &Conn, host: &str) {
    let client = conn.session.client.ip();
    let f = &l.forwarding;
    let facts = Facts {
        src: client,
        method: &Method::GET,
        host: "",
        port: 0,
        dst: None,
        user: None,
    };
    let trusted = !f.trusted.rules.is_empty() && f.trusted.check(&conn.cfg.acls, &facts).is_allow();
    let proto = if conn.tls.is_some() { "https" } else { "http" };
    let xff = HeaderName::from_static("x-forwarded-for");
    match f.xff {
        XffMode::Off => {}
        XffMode::Replace => {
            h.insert(&xff, conn.client_ip.clone());
        }
        XffMode::Append => {
            // the addresses a trusted proxy passed on, then the client's
            let mut joined = Vec::new();
            if trusted {
                for old in h.get_all(&xff) {
                    joined.extend_from_slice(old.as_bytes());
                    joined.extend_from_slice(b", ");
                }
            }
            let v = if joined.is_empty() {
                conn.client_ip.clone()
            } else {
                joined.extend_from_slice(conn.client_ip.as_bytes());
                HeaderValue::from_bytes(&joined).unwrap_or_else(|_| conn.client_ip.clone())
            };
            h.insert(&xff, v);
        }
    }
    if f.x_forwarded_proto {
        h.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(proto),
        );
    }
    if f.x_real_ip {
        h.insert(HeaderName::from_static("x-real-ip"), conn.client_ip.clone());
    }
    if f.forwarded {
        let ip = conn.client_ip.as_bytes();
        let mut v = Vec::with_capacity(ip.len() + host.len() + 32);
        if trusted {
            for old in h.get_all(header::FORWARDED).iter() {
                v.extend_from_slice(old.as_bytes());
                v.extend_from_slice(b", ");
            }
        }
        v.extend_from_slice(b"for=");
        if client.is_ipv6() {
            v.extend_from_slice(b"\"[");
            v.extend_from_slice(ip);
            v.extend_from_slice(b"]\"");
        } else {
            v.extend_from_slice(ip);
        }
        v.extend_from_slice(b";proto=");
        v.extend_from_slice(proto.as_bytes());
        if !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b)) {
            v.extend_from_slice(b";host=");
            v.extend_from_slice(host.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            h.insert(header::FORWARDED, v);
        }
    }
}

/// Whether the request asks to switch to WebSocket (passed through), as
/// opposed to any other upgrade (h2c, which is never turned into a tunnel).
fn websocket(h: &HeaderMap) -> bool {
    let conn_upgrade = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    conn_upgrade
        && h.get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

async fn serve(mut txn: Txn, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let conn = txn.conn.clone();
    let cfg = conn.cfg.clone();
    let listener = &cfg.listeners[conn.session.listener];
    let Some(lh) = listener.http.clone() else {
        return page(
            txn,
            StatusCode::INTERNAL_SERVER_ERROR,
            b"PR",
            "This listener has no routes.",
        );
    };
    if req.method() == Method::CONNECT {
        return page(
            txn,
            StatusCode::METHOD_NOT_ALLOWED,
            b"PR",
            "CONNECT is for forward proxies; this is a web server.",
        );
    }
    let host = request_host(&req);
    let facts = Facts {
        src: conn.session.client.ip(),
        method: req.method(),
        host: &host,
        port: listener.bind.port(),
        dst: None,
        user: None,
    };
    if !listener.access.check(&cfg.acls, &facts).is_allow() {
        return page(
            txn,
            StatusCode::FORBIDDEN,
            b"PR",
            "Access is denied by this server's rules.",
        );
    }
    for c in &lh.capture_request {
        let v = req.headers().get(&c.name).and_then(|v| v.to_str().ok()).unwrap_or("");
        txn.rec.captures_request.push(truncate(v, c.len));
    }
    if let Some((name, len)) = &lh.capture_cookie
        && let Some(v) = request_cookie(req.headers(), name)
    {
        txn.rec.cookie_request = Some(truncate(&format!("{name}={v}"), *len));
    }
    let Some(pool_index) = route(&lh, &host, req.uri().path()) else {
        return page(
            txn,
            StatusCode::NOT_FOUND,
            b"PR",
            "No service is configured for this address.",
        );
    };
    let backend = conn.cfg.live.backends[pool_index].clone();
    txn.rec.backend = Some(backend.cfg.name.clone());
    let client = conn.session.client.ip();
    let sticky = sticky_choice(&backend, &req, client);
    let key = hash_key(&backend, &req, client, &host);
    let upgrade = websocket(req.headers()).then(|| hyper::upgrade::on(&mut req));

    // the request as the servers get it
    let method = req.method().clone();
    let http2 = req.version() == Version::HTTP_2;
    let host_header = host_for_server(&req);
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().cloned();
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    let ws_upgrade = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    // the server gets the host the request was routed by, as the client wrote it
    if let Some(v) = host_header
        && parts.headers.get(header::HOST) != Some(&v)
    {
        parts.headers.insert(header::HOST, v);
    }
    if http2 {
        // HTTP/2 splits cookies over several fields; an HTTP/1.1 server wants one
        let cookies: Vec<String> = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if cookies.len() > 1
            && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
        {
            parts.headers.insert(header::COOKIE, v);
        }
    }
    parts.headers.remove(HeaderName::from_static("http2-settings"));
    if let (Some(_), Some(u)) = (&upgrade, ws_upgrade) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u);
    }
    add_identity(&mut parts.headers, &lh, &conn, &host);
    parts.version = Version::HTTP_11;
    let (body, counter) = ReqBody::new(body);
    txn.req_body = counter;
    let mut out = Request::from_parts(parts, body);

    let retries_allowed = if idempotent(&method) { backend.cfg.retries } else { 0 };
    let mut exclude: Vec<usize> = Vec::new();
    let response_timeout = cfg.timeouts.server_response;
    let (resp, slot, key_used, tx) = loop {
        let prefer = sticky.server.filter(|s| !exclude.contains(s));
        let slot = match backend.acquire(prefer, &key, &exclude).await {
            Ok(s) => s,
            Err((e, waited)) => {
                let (t, detail) = match e {
                    NoServer::Down => (b"SC", "No server of this service is available."),
                    NoServer::QueueFull => (b"sQ", "Every server is busy and the queue is full."),
                    NoServer::QueueTimeout => (b"sQ", "Every server stayed busy for the whole queue timeout."),
                };
                txn.rec.timers.queue = Some(txn.rec.timers.queue.unwrap_or_default() + waited);
                return page(txn, StatusCode::SERVICE_UNAVAILABLE, t, detail);
            }
        };
        txn.rec.timers.queue = Some(txn.rec.timers.queue.unwrap_or_default() + slot.queued);
        txn.rec.server = Some(slot.server().cfg.name.clone());
        let addr = slot.server().cfg.addr;
        txn.rec.upstream = Some(addr);
        match send_once(&mut txn, &backend, &slot, addr, out, response_timeout).await {
            Ok((resp, key, tx)) => break (resp, slot, key, tx),
            Err((failed, m)) => {
                let why = failed.why();
                if !matches!(failed, Failed::NotCounted(_))
                    && slot
                        .server()
                        .failed(backend.cfg.max_fails, backend.cfg.fail_timeout, &why)
                {
                    tracing::warn!(pool = %backend.cfg.name, server = %slot.server().cfg.name, "server taken out for {} s: {why}", backend.cfg.fail_timeout.as_secs_f64());
                }
                match (m, failed) {
                    (Some(m), Failed::Connect(_) | Failed::Handshake(_)) if txn.rec.retries < retries_allowed => {
                        slot.server().tried_in_vain(ErrorClass::Connect);
                        txn.rec.retries += 1;
                        exclude.push(slot.server);
                        out = m;
                        continue;
                    }
                    (_, Failed::Timeout) => {
                        return page(
                            txn,
                            StatusCode::GATEWAY_TIMEOUT,
                            b"sH",
                            &format!("The server did not answer in time ({why})."),
                        );
                    }
                    (_, Failed::Connect(_) | Failed::Handshake(_)) => {
                        return page(
                            txn,
                            StatusCode::SERVICE_UNAVAILABLE,
                            b"SC",
                            &format!("The server could not be reached ({why})."),
                        );
                    }
                    (_, Failed::Response(_) | Failed::NotCounted(_)) => {
                        return page(
                            txn,
                            StatusCode::BAD_GATEWAY,
                            b"SH",
                            &format!("The server failed ({why})."),
                        );
                    }
                }
            }
        }
    };

    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    if status.is_server_error() && backend.cfg.fail_on_5xx {
        slot.server().failed(
            backend.cfg.max_fails,
            backend.cfg.fail_timeout,
            &format!("status {status}"),
        );
    }
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
    if !switching {
        strip_hop_by_hop(&mut parts.headers);
    }
    stick_response(&mut txn, &backend, &slot, &sticky, &mut parts.headers, &lh);
    for c in &lh.capture_response {
        let v = parts.headers.get(&c.name).and_then(|v| v.to_str().ok()).unwrap_or("");
        txn.rec.captures_response.push(truncate(v, c.len));
    }
    if let Some((name, len)) = &lh.capture_cookie
        && let Some(v) = response_cookie(&parts.headers, name)
    {
        txn.rec.cookie_response = Some(truncate(&format!("{name}={v}"), *len));
    }
    parts.version = Version::HTTP_11;
    txn.rec.status = status.as_u16();
    txn.rec.result = ResultCode::TcpMiss;
    txn.rec.content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    txn.rec.bytes_to_client += 17
        + parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
            .sum::<u64>();

    if switching && let Some(client_side) = upgrade {
        // WebSocket: both sides switch; the bytes are relayed until either closes
        let server_side = hyper::upgrade::on(Response::from_parts(parts.clone(), body));
        txn.slot = Some(slot);
        txn.detach();
        tokio::spawn(async move {
            let mut txn = txn;
            match tokio::try_join!(client_side, server_side) {
                Ok((c, s)) => {
                    let c = hyper_util::rt::TokioIo::new(c);
                    let s = hyper_util::rt::TokioIo::new(s);
                    let idle = txn.conn.cfg.timeouts.tunnel_idle;
                    let outcome = crate::relay::tunnel::relay_io(c, s, &[], idle).await;
                    txn.rec.bytes_from_client += outcome.up;
                    txn.rec.bytes_to_client += outcome.down;
                    txn.rec.termination = match outcome.end {
                        crate::relay::tunnel::End::Closed => *b"--",
                        crate::relay::tunnel::End::ClientError => *b"CD",
                        crate::relay::tunnel::End::ServerError => *b"SD",
                        crate::relay::tunnel::End::Idle => *b"cD",
                    };
                }
                Err(e) => {
                    tracing::debug!("upgrade failed: {e}");
                    txn.rec.termination = *b"CD";
                }
            }
            drop(txn);
        });
        drop(tx);
        return Response::from_parts(parts, ProxyBody::empty());
    }
    txn.slot = Some(slot);
    let upstream = if backend.cfg.proxy_protocol.is_some() {
        None
    } else {
        Some((key_used, tx))
    };
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            inner: body,
            txn: Some(txn),
            upstream,
        },
    )
}

/// How one try failed.
enum Failed {
    Connect(String),
    Handshake(String),
    Timeout,
    Response(String),
    /// Failed after sending, but not in a way that says the server is unwell.
    NotCounted(String),
}

impl Failed {
    fn why(&self) -> String {
        match self {
            Failed::Connect(e) => format!("connect: {e}"),
            Failed::Handshake(e) => format!("handshake: {e}"),
            Failed::Timeout => "no response in time".into(),
            Failed::Response(e) | Failed::NotCounted(e) => format!("response: {e}"),
        }
    }
}

type Attempt = Result<(Response<Incoming>, Key, Sender), (Failed, Option<Request<ReqBody>>)>;

/// One try on one server: a pooled connection (a closed one is replaced
/// once, transparently), else a new one with the PROXY header when configured.
async fn send_once(
    txn: &mut Txn,
    backend: &Backend,
    slot: &Slot,
    addr: SocketAddr,
    mut out: Request<ReqBody>,
    response_timeout: Duration,
) -> Attempt {
    let state = txn.conn.state.clone();
    // a transparent pool's connections carry the client's address: reused only for that client
    let transparent = backend.cfg.source != crate::config::upstream::SourceMode::Local;
    let key = Key {
        dst: addr,
        src: transparent.then(|| txn.conn.session.client.ip()),
        route: crate::relay::pool::Route::Pool(backend.index),
        generation: txn.conn.cfg.live.generation,
    };
    let pooled = if backend.cfg.proxy_protocol.is_none() {
        state.pool.checkout(key, txn.started)
    } else {
        None
    };
    let _ = slot;
    let (mut tx, mut reused) = match pooled {
        Some((tx, local)) => {
            Counters::inc(&state.counters.upstream_reused);
            txn.rec.timers.connect = Some(Duration::ZERO);
            txn.rec.upstream_local = local;
            (tx, true)
        }
        None => match fresh(txn, backend, addr).await {
            Ok(tx) => (tx, false),
            Err(f) => return Err((f, Some(out))),
        },
    };
    loop {
        let t0 = Instant::now();
        match tokio::time::timeout_at((t0 + response_timeout).into(), tx.try_send_request(out)).await {
            Ok(Ok(resp)) => {
                txn.rec.timers.response = Some(t0.elapsed());
                return Ok((resp, key, tx));
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(m) if reused => {
                    out = m;
                    reused = false;
                    tx = match fresh(txn, backend, addr).await {
                        Ok(tx) => tx,
                        Err(f) => return Err((f, Some(out))),
                    };
                }
                Some(m) => return Err((Failed::Handshake(e.error().to_string()), Some(m))),
                // a kept-alive connection the server closed as the request went
                // out, or the client's own body failing, is not the server's fault
                None if reused || e.error().is_user() || e.error().is_body_write_aborted() => {
                    return Err((Failed::NotCounted(e.error().to_string()), None));
                }
                None => return Err((Failed::Response(e.error().to_string()), None)),
            },
            Err(_) => return Err((Failed::Timeout, None)),
        }
    }
}

/// A new connection to a server.
async fn fresh(txn: &mut Txn, backend: &Backend, addr: SocketAddr) -> Result<Sender, Failed> {
    let t0 = Instant::now();
    let state = txn.conn.state.clone();
    let timeout = txn.conn.cfg.timeouts.connect;
    let connected = match backend.cfg.source {
        crate::config::upstream::SourceMode::Local => connect::connect(addr, timeout).await,
        _ => {
            let from = SocketAddr::new(txn.conn.session.client.ip(), 0);
            connect::connect_from(addr, from, timeout).await
        }
    };
    let mut stream = connected.map_err(|e| Failed::Connect(e.to_string()))?;
    Counters::inc(&state.counters.upstream_connects);
    txn.rec.timers.connect = Some(t0.elapsed());
    txn.rec.upstream_local = stream.local_addr().ok();
    if let Some(v) = backend.cfg.proxy_protocol {
        let s = &txn.conn.session;
        let header = crate::listen::proxy_protocol::encode(v, s.client, s.local);
        stream
            .write_all(&header)
            .await
            .map_err(|e| Failed::Connect(format!("sending the PROXY header: {e}")))?;
    }
    let Some(tls) = &backend.cfg.tls else {
        return pool::handshake(stream)
            .await
            .map_err(|e| Failed::Handshake(e.to_string()));
    };
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let tls_stream = match tokio::time::timeout(txn.conn.cfg.timeouts.connect, connector.connect(name, stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failed::Connect(format!("TLS handshake with {addr} failed: {e}"))),
        Err(_) => return Err(Failed::Connect(format!("TLS handshake with {addr} timed out"))),
    };
    pool::handshake(tls_stream)
        .await
        .map_err(|e| Failed::Handshake(e.to_string()))
}

/// Stickiness after the response: learn the application's cookie, insert
/// ours, or remember the client's address.
fn stick_response(
    txn: &mut Txn,
    backend: &Backend,
    slot: &Slot,
    sticky: &StickyChoice,
    h: &mut HeaderMap,
    _lh: &HttpListener,
) {
    let server = slot.server as u32;
    let mut resp_state = b'-';
    match &backend.sticky {
        None => {}
        Some(Sticky::Learn { cookie, table }) => {
            resp_state = b'N';
            if let Some(v) = response_cookie(h, cookie) {
                table.store(v.as_bytes(), server);
                resp_state = b'P';
            } else if let Some(k) = &sticky.key
                && sticky.server != Some(slot.server)
                && sticky.req_state == b'D'
            {
                // the request's cookie pointed at a server that is down: it now sticks here
                table.store(k, server);
                resp_state = b'U';
            }
        }
        Some(Sticky::Insert {
            cookie, codec, nocache, ..
        }) => {
            let stamped = codec.encode(slot.server().cfg.addr, sticky.first_seen, unix_now());
            let needs = sticky.server != Some(slot.server) || codec.stamped();
            resp_state = b'N';
            if needs && let Ok(v) = HeaderValue::from_str(&format!("{cookie}={stamped}; Path=/; HttpOnly")) {
                h.append(header::SET_COOKIE, v);
                resp_state = if sticky.server.is_some() { b'U' } else { b'I' };
                if *nocache {
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
                }
            }
        }
        Some(Sticky::Source(table)) => {
            if let Some(k) = &sticky.key {
                table.store(k, server);
            }
        }
    }
    txn.rec.cookie_state = [sticky.req_state, resp_state];
}
