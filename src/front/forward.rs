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
use tokio::io::AsyncWriteExt;

use crate::config::egress::ParentSelect;
use crate::config::{Config, ForwardedFor};
use crate::egress::connect::{self, AttemptError};
use crate::egress::outgoing::{self, StickyKeys};
use crate::egress::parent::{self, ParentStream};
use crate::front::conn::{ClientStream, Conn, UpgradeIo};
use crate::front::error_page;
use crate::front::txn::{ProxyBody, Txn};
use crate::observe::counters::Counters;
use crate::observe::record::{Hierarchy, ResultCode};
use crate::policy::acl::{Facts, Verdict};
use crate::policy::auth::{self, Outcome};
use crate::relay::body::ReqBody;
use crate::relay::headers::strip_hop_by_hop;
use crate::relay::pool::{self, Key, Route, Sender};
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
    let now = Instant::now();
    let head_time = conn.activity.begin(now);
    // built in place on the heap: a record is large and moved once, as a box
    let mut rec = Box::new(conn.record(now));
    rec.method = req.method().clone();
    rec.uri = req.uri().clone();
    rec.version = req.version();
    rec.timers.request = Some(head_time);
    rec.timers.queue = Some(Duration::ZERO);
    rec.bytes_from_client = request_head_len(&req);
    let txn = Txn::new(conn, rec, now);
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

/// An authority without its `user@` part.
fn without_userinfo(auth: &str) -> &str {
    match auth.bytes().rposition(|b| b == b'@') {
        Some(i) => &auth[i + 1..],
        None => auth,
    }
}

/// The host (an IPv6 literal keeps its brackets) and the port of an
/// authority that `http` has validated, in one pass: what
/// `Authority::host` and `port_u16` give, without their two searches each.
fn host_port(auth: &str) -> (&str, Option<u16>) {
    let hp = without_userinfo(auth);
    let end = if hp.starts_with('[') {
        hp.bytes().position(|b| b == b']').map_or(hp.len(), |i| i + 1)
    } else {
        hp.bytes().position(|b| b == b':').unwrap_or(hp.len())
    };
    let (host, rest) = hp.split_at(end);
    (host, rest.strip_prefix(':').and_then(|p| p.parse().ok()))
}

/// Lower case, without brackets or a trailing dot.
fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let mut h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    while let Some(rest) = h.strip_suffix('.') {
        h = rest;
    }
    // most names arrive in lower case already: no copy for those
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        h.to_ascii_lowercase().into()
    } else {
        h.into()
    }
}

/// What the access rules decided, and what was learnt on the way.
struct Admitted {
    /// The verified user, when a rule asked for one.
    user: Option<Arc<str>>,
    /// The destination addresses the rules allow, when a rule needed them
    /// (else resolved later, and only when the request goes direct).
    addrs: Option<Vec<SocketAddr>>,
}

/// Checks the access rules (and the credentials, when a rule asks for a
/// user); resolves the destination when a rule tests its address.
async fn admit(txn: &mut Txn, credentials: Option<&HeaderValue>, host: &str, port: u16) -> Result<Admitted, Refusal> {
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
    if verdict != Verdict::NeedDst {
        return Ok(Admitted { user, addrs: None });
    }
    let ips = resolve(txn, host).await?;
    let mut allowed = Vec::with_capacity(ips.len());
    for ip in ips {
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
        if v.is_allow() {
            allowed.push(SocketAddr::new(ip, port));
        }
    }
    if allowed.is_empty() {
        return Err(denied(format!(
            "Access to {host}:{port} is denied by this proxy's access rules (destination address)."
        )));
    }
    Ok(Admitted {
        user,
        addrs: Some(allowed),
    })
}

async fn resolve(txn: &Txn, host: &str) -> Result<Vec<std::net::IpAddr>, Refusal> {
    txn.conn.state.resolver.load_full().resolve(host).await.map_err(|e| {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"SC",
            format!("DNS lookup failed: {e}."),
        )
    })
}

/// Where a request goes: straight to the origin, or through the parents
/// (and straight when none of them can be reached, unless `never_direct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Parents { then_direct: bool },
}

/// Everything the egress choices look at, gathered once per request.
struct Ctx<'a> {
    cfg: Arc<Config>,
    host: &'a str,
    port: u16,
    method: Method,
    client: std::net::IpAddr,
    user: Option<Arc<str>>,
    /// The name from `Proxy-Authorization` (verified or not), split into
    /// the user part and a session key.
    presented: Option<String>,
}

impl Ctx<'_> {
    fn facts(&self) -> Facts<'_> {
        Facts {
            src: self.client,
            method: &self.method,
            host: self.host,
            port: self.port,
            dst: None,
            user: self.user.as_deref(),
        }
    }

    fn keys(&self) -> StickyKeys<'_> {
        let (name, session) = match self.presented.as_deref() {
            Some(n) => {
                let (u, s) = outgoing::split_session(n);
                (Some(u), s)
            }
            None => (None, None),
        };
        StickyKeys {
            user: self.user.as_deref().or(name),
            session,
            host: self.host,
            client: self.client,
        }
    }

    fn path(&self) -> Path {
        let e = &self.cfg.egress;
        if e.parents.is_empty() {
            return Path::Direct;
        }
        let facts = self.facts();
        let matched =
            |rules: &crate::policy::acl::Rules| matches!(rules.check(&self.cfg.acls, &facts), Verdict::Allow(Some(_)));
        if matched(&e.always_direct) {
            return Path::Direct;
        }
        Path::Parents {
            then_direct: !matched(&e.never_direct),
        }
    }

    fn hierarchy(&self) -> Hierarchy {
        match self.cfg.egress.parent_select {
            ParentSelect::FirstUp => Hierarchy::FirstUpParent,
            ParentSelect::RoundRobin => Hierarchy::RoundRobinParent,
            ParentSelect::Hash => Hierarchy::Carp,
        }
    }
}

/// The destination addresses (resolved now when the access rules did not
/// need them), filtered and ordered by the family of the outgoing rule.
async fn direct_addrs(txn: &Txn, ctx: &Ctx<'_>, addrs: Option<Vec<SocketAddr>>) -> Result<Vec<SocketAddr>, Refusal> {
    let mut addrs = match addrs {
        Some(a) => a,
        // an address literal needs no resolver (and no second list)
        None if let Ok(ip) = ctx.host.parse::<std::net::IpAddr>() => vec![SocketAddr::new(ip, ctx.port)],
        None => resolve(txn, ctx.host)
            .await?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, ctx.port))
            .collect(),
    };
    outgoing::arrange(&ctx.cfg, &ctx.facts(), &mut addrs);
    if addrs.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"SC",
            format!("{} has no address of the family the outgoing rule asks for.", ctx.host),
        ));
    }
    Ok(addrs)
}

/// Forgets what an earlier path (a parent that failed) wrote into the record.
fn clear_upstream(txn: &mut Txn) {
    let r = &mut txn.rec;
    r.upstream = None;
    r.upstream_local = None;
    r.parent = None;
    r.timers.connect = None;
    r.timers.response = None;
}

/// A connection to the origin.
enum Dialed {
    Pooled(Key, Sender),
    Fresh(Key, tokio::net::TcpStream),
}

/// Per address in order: the outgoing rule's settings are chosen once (so a
/// pool rotates once per connection), a pooled connection made with the same
/// address, source and rule is taken when `reuse` allows, else a new one is
/// made; an address that fails moves on to the next.
async fn dial_direct(txn: &mut Txn, ctx: &Ctx<'_>, addrs: &[SocketAddr], reuse: bool) -> Result<Dialed, Refusal> {
    // the clock is read when the first connect starts: a pooled connection needs none
    let mut t0 = None;
    let state = txn.conn.state.clone();
    let timeout = ctx.cfg.timeouts.connect;
    let facts = ctx.facts();
    let keys = ctx.keys();
    let mut errors = Vec::new();
    for &addr in addrs {
        let via = match outgoing::choose(&ctx.cfg, &facts, &keys, addr.ip()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("outgoing connection to {addr} not possible: {e}");
                errors.push(AttemptError {
                    addr,
                    failure: connect::Failure::Local(e.to_string()),
                });
                continue;
            }
        };
        let key = Key {
            dst: addr,
            src: via.source,
            route: via.rule.map_or(Route::Direct, Route::Outgoing),
            generation: if via.rule.is_some() {
                txn.conn.cfg.live.generation
            } else {
                0
            },
        };
        if reuse && let Some((tx, local)) = state.pool.checkout(key, txn.started) {
            Counters::inc(&state.counters.upstream_reused);
            txn.rec.timers.connect = Some(Duration::ZERO);
            txn.rec.upstream = Some(addr);
            txn.rec.upstream_local = local;
            return Ok(Dialed::Pooled(key, tx));
        }
        let started = *t0.get_or_insert_with(Instant::now);
        match connect::connect_via(addr, &via, timeout).await {
            Ok(stream) => {
                Counters::inc(&state.counters.upstream_connects);
                txn.rec.timers.connect = Some(started.elapsed());
                txn.rec.upstream = Some(addr);
                txn.rec.upstream_local = stream.local_addr().ok();
                return Ok(Dialed::Fresh(key, stream));
            }
            Err(e) => {
                if let connect::Failure::Local(m) = &e.failure {
                    tracing::warn!("outgoing connection to {addr} not possible: {m}");
                } else {
                    tracing::debug!("connect failed, trying the next address: {e}");
                }
                errors.push(e);
            }
        }
    }
    txn.rec.timers.connect = Some(t0.map_or(Duration::ZERO, |t| t.elapsed()));
    Err(unreachable(ctx.host, ctx.port, &errors))
}

/// An HTTP sender to the origin, pooled or new; `true` when it was pooled.
async fn sender(
    txn: &mut Txn,
    ctx: &Ctx<'_>,
    addrs: &[SocketAddr],
    reuse: bool,
) -> Result<(Key, Sender, bool), Refusal> {
    match dial_direct(txn, ctx, addrs, reuse).await? {
        Dialed::Pooled(key, tx) => Ok((key, tx, true)),
        Dialed::Fresh(key, stream) => {
            let tx = pool::handshake(stream).await.map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    ResultCode::TcpMissError,
                    b"SC",
                    format!("Cannot talk to {}: {e}.", key.dst),
                )
            })?;
            Ok((key, tx, false))
        }
    }
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

/// A response on its way back, with the connection it came on.
struct Sent {
    resp: Response<Incoming>,
    key: Key,
    tx: Sender,
}

/// Why sending through the parents did not work out.
enum ParentsFailed {
    /// No parent could be used and nothing was sent: the request (if there
    /// is one to send) comes back.
    Untried(Option<Box<Request<ReqBody>>>, String),
    /// An answer for the client.
    Refused(Refusal),
}

/// Sends an absolute-form request through the parents in order. A parent
/// that cannot be reached is marked down and the next one is tried; the
/// request is retried only when it was never sent.
async fn send_via_parents(txn: &mut Txn, ctx: &Ctx<'_>, mut out: Request<ReqBody>) -> Result<Sent, ParentsFailed> {
    let cfg = &ctx.cfg;
    let state = txn.conn.state.clone();
    let response_timeout = cfg.timeouts.server_response;
    let facts = ctx.facts();
    let keys = ctx.keys();
    let mut errors = Vec::new();
    for idx in parent::order(cfg, ctx.host) {
        let p = &cfg.egress.parents[idx];
        match &p.authorization {
            Some(a) => {
                out.headers_mut().insert(header::PROXY_AUTHORIZATION, a.clone());
            }
            None => {
                out.headers_mut().remove(header::PROXY_AUTHORIZATION);
            }
        }
        let mut reuse = true;
        loop {
            clear_upstream(txn);
            let t0 = Instant::now();
            let (key, mut tx, reused) = match parent::dial(&state, cfg, idx, &facts, &keys, reuse).await {
                Ok(parent::Dialed::Pooled { key, tx, local }) => {
                    Counters::inc(&state.counters.upstream_reused);
                    txn.rec.timers.connect = Some(Duration::ZERO);
                    txn.rec.upstream = Some(key.dst);
                    txn.rec.upstream_local = local;
                    (key, tx, true)
                }
                Ok(parent::Dialed::Fresh { key, stream }) => {
                    txn.rec.timers.connect = Some(t0.elapsed());
                    txn.rec.upstream = Some(key.dst);
                    txn.rec.upstream_local = stream.local_addr();
                    match pool::handshake(stream).await {
                        Ok(tx) => {
                            Counters::inc(&state.counters.upstream_connects);
                            (key, tx, false)
                        }
                        Err(e) => {
                            parent_failed(cfg, p, &format!("HTTP handshake failed: {e}"));
                            errors.push(format!("{}: {e}", p.name));
                            break;
                        }
                    }
                }
                Err(e) => {
                    parent_failed(cfg, p, &e);
                    errors.push(format!("{}: {e}", p.name));
                    break;
                }
            };
            txn.rec.parent = Some(p.name.clone());
            txn.rec.hierarchy = ctx.hierarchy();
            let t1 = Instant::now();
            match tokio::time::timeout(response_timeout, tx.try_send_request(out)).await {
                Ok(Ok(resp)) => {
                    txn.rec.timers.response = Some(t1.elapsed());
                    p.mark_up();
                    return Ok(Sent { resp, key, tx });
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // never sent: a pooled connection closed meanwhile goes
                    // again on a new one; a new one that failed means the parent
                    Some(m) => {
                        out = m;
                        if reused {
                            reuse = false;
                            continue;
                        }
                        parent_failed(cfg, p, &format!("closed the connection: {}", e.error()));
                        errors.push(format!("{}: {}", p.name, e.error()));
                        break;
                    }
                    // sent, at least in part: not repeated, and not held
                    // against the parent (the client's body may have failed)
                    None => {
                        return Err(ParentsFailed::Refused(Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            ResultCode::TcpMissError,
                            b"SH",
                            format!(
                                "The parent proxy {} closed the connection or sent an invalid response ({}).",
                                p.name,
                                e.error()
                            ),
                        )));
                    }
                },
                Err(_) => {
                    return Err(ParentsFailed::Refused(Refusal::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        ResultCode::TcpMissError,
                        b"sH",
                        format!(
                            "The parent proxy {} did not answer within {} s.",
                            p.name,
                            response_timeout.as_secs_f64()
                        ),
                    )));
                }
            }
        }
    }
    out.headers_mut().remove(header::PROXY_AUTHORIZATION);
    Err(ParentsFailed::Untried(Some(Box::new(out)), errors.join("; ")))
}

/// Marks a parent down for `parent_retry_after`, logging the change once.
fn parent_failed(cfg: &Config, p: &crate::config::egress::Parent, why: &str) {
    let retry = cfg.egress.parent_retry_after;
    if p.mark_down(retry) {
        tracing::warn!(
            parent = %p.name,
            "parent proxy is down ({why}); skipped for {} s",
            retry.as_secs_f64()
        );
    } else {
        tracing::debug!(parent = %p.name, "parent proxy failed again: {why}");
    }
}

/// No parent could be used and going direct is not allowed.
fn no_parent(detail: &str) -> Refusal {
    Refusal::new(
        StatusCode::BAD_GATEWAY,
        ResultCode::TcpMissError,
        b"SC",
        format!("No parent proxy could be reached ({detail})."),
    )
}

/// Sends an origin-form request straight to the origin: over a pooled
/// connection when there is one for the address and egress chosen, else a new one.
async fn send_direct(
    txn: &mut Txn,
    ctx: &Ctx<'_>,
    addrs: Option<Vec<SocketAddr>>,
    mut out: Request<ReqBody>,
) -> Result<Sent, Refusal> {
    clear_upstream(txn);
    txn.rec.hierarchy = Hierarchy::Direct;
    let addrs = direct_addrs(txn, ctx, addrs).await?;
    let (mut key, mut tx, mut is_reused) = sender(txn, ctx, &addrs, true).await?;
    let response_timeout = txn.conn.cfg.timeouts.server_response;
    let mut t0 = Instant::now();
    loop {
        match tokio::time::timeout_at((t0 + response_timeout).into(), tx.try_send_request(out)).await {
            Ok(Ok(resp)) => {
                txn.rec.timers.response = Some(t0.elapsed());
                return Ok(Sent { resp, key, tx });
            }
            Ok(Err(mut e)) => {
                // a pooled connection the origin closed meanwhile: the request was
                // not sent, so it goes again on a fresh connection
                if is_reused && let Some(m) = e.take_message() {
                    out = m;
                    (key, tx, is_reused) = sender(txn, ctx, &addrs, false).await?;
                    // the server's time to answer counts from the request sent anew
                    t0 = Instant::now();
                    continue;
                }
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    ResultCode::TcpMissError,
                    b"SH",
                    format!(
                        "The origin {} closed the connection or sent an invalid response ({}).",
                        key.dst,
                        e.error()
                    ),
                ));
            }
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ResultCode::TcpMissError,
                    b"sH",
                    format!(
                        "The origin {} did not answer within {} s.",
                        key.dst,
                        response_timeout.as_secs_f64()
                    ),
                ));
            }
        }
    }
}

/// The request target in origin form (`/path?query`).
fn origin_form(uri: &Uri) -> Uri {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

async fn forward(mut txn: Txn, req: Request<Incoming>) -> Response<ProxyBody> {
    let authority = match req.uri().scheme_str() {
        Some("http") => match req.uri().authority() {
            Some(a) => a.clone(),
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
    let (host, port) = host_port(authority.as_str());
    let (host, port) = (normalize_host(host), port.unwrap_or(80));
    let credentials = req.headers().get(header::PROXY_AUTHORIZATION);
    let presented = credentials.and_then(|c| auth::presented_name(Some(c)));
    let admitted = match admit(&mut txn, credentials, &host, port).await {
        Ok(a) => a,
        Err(r) => return refuse(txn, r),
    };
    let ctx = Ctx {
        cfg: txn.conn.cfg.clone(),
        host: &host,
        port,
        method: txn.rec.method.clone(),
        client: txn.conn.session.client.ip(),
        user: admitted.user,
        presented,
    };
    let path = ctx.path();
    let (out, counter) = outgoing_request(&txn, req, &authority, path != Path::Direct);
    txn.req_body = counter;
    let sent = match path {
        Path::Direct => send_direct(&mut txn, &ctx, admitted.addrs, out).await,
        Path::Parents { then_direct } => match send_via_parents(&mut txn, &ctx, out).await {
            Ok(s) => Ok(s),
            Err(ParentsFailed::Refused(r)) => Err(r),
            Err(ParentsFailed::Untried(Some(mut out), why)) if then_direct => {
                tracing::debug!("no parent reachable ({why}); going direct");
                *out.uri_mut() = origin_form(out.uri());
                send_direct(&mut txn, &ctx, admitted.addrs, *out).await
            }
            Err(ParentsFailed::Untried(_, why)) => Err(no_parent(&why)),
        },
    };
    let Sent { resp, key, tx } = match sent {
        Ok(s) => s,
        Err(r) => return refuse(txn, r),
    };
    if resp.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED
        && let Some(name) = txn.rec.parent.clone()
    {
        // the parent's login is this proxy's business, not the client's
        let r = Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"SH",
            format!("The parent proxy {name} refused this proxy's credentials (407)."),
        );
        return refuse(txn, r);
    }
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
            upstream: Some((key, tx)),
        },
    )
}

/// The request as it goes to the origin (origin-form target) or to a parent
/// (absolute form): Host from the URL, hop-by-hop headers removed, Via and X-Forwarded-For as configured.
fn outgoing_request(
    txn: &Txn,
    req: Request<Incoming>,
    authority: &Authority,
    absolute: bool,
) -> (Request<ReqBody>, Option<Arc<AtomicU64>>) {
    let cfg = &txn.conn.cfg;
    let (mut parts, body) = req.into_parts();
    if !absolute {
        parts.uri = origin_form(&parts.uri);
    }
    let client_version = parts.version;
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    let host = without_userinfo(authority.as_str());
    // clients mostly send the URL's authority as Host already
    if h.get(header::HOST).is_none_or(|v| v.as_bytes() != host.as_bytes())
        && let Ok(v) = HeaderValue::from_str(host)
    {
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
        ForwardedFor::On => append_header(h, xff, &txn.conn.client_ip),
        ForwardedFor::Off => append_header(h, xff, &HeaderValue::from_static("unknown")),
    }
    let (body, counter) = ReqBody::new(body);
    (Request::from_parts(parts, body), counter)
}

/// Appends to a comma-separated header, keeping one field line.
fn append_header(h: &mut HeaderMap, name: header::HeaderName, value: &HeaderValue) {
    // one look-up of the name, whether it is there or not
    match h.entry(name) {
        header::Entry::Occupied(mut e) => {
            let old = e.get();
            let mut v = Vec::with_capacity(old.len() + 2 + value.len());
            v.extend_from_slice(old.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
        header::Entry::Vacant(e) => {
            e.insert(value.clone());
        }
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
    let Some((host, port)) = req.uri().authority().and_then(|a| {
        let (host, port) = host_port(a.as_str());
        Some((normalize_host(host), port?))
    }) else {
        let r = Refusal::new(
            StatusCode::BAD_REQUEST,
            ResultCode::None,
            b"PR",
            "CONNECT needs a host:port target.",
        );
        return refuse(txn, r);
    };
    let credentials = req.headers().get(header::PROXY_AUTHORIZATION);
    let presented = credentials.and_then(|c| auth::presented_name(Some(c)));
    let admitted = match admit(&mut txn, credentials, &host, port).await {
        Ok(a) => a,
        Err(r) => return refuse(txn, r),
    };
    let ctx = Ctx {
        cfg: txn.conn.cfg.clone(),
        host: &host,
        port,
        method: Method::CONNECT,
        client: txn.conn.session.client.ip(),
        user: admitted.user,
        presented,
    };
    let authority = req
        .uri()
        .authority()
        .map_or_else(String::new, |a| a.as_str().to_string());
    let server = match ctx.path() {
        Path::Direct => connect_direct(&mut txn, &ctx, admitted.addrs).await,
        Path::Parents { then_direct } => match tunnel_via_parents(&mut txn, &ctx, &authority).await {
            Ok(s) => Ok(s),
            Err(ParentsFailed::Refused(r)) => Err(r),
            Err(ParentsFailed::Untried(_, why)) if then_direct => {
                tracing::debug!("no parent reachable ({why}); going direct");
                connect_direct(&mut txn, &ctx, admitted.addrs).await
            }
            Err(ParentsFailed::Untried(_, why)) => Err(no_parent(&why)),
        },
    };
    let server = match server {
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
                    let ClientStream::Plain(client_tcp) = io.stream else {
                        // forward listeners never speak TLS to their clients
                        txn.rec.termination = *b"PD";
                        drop(txn);
                        return;
                    };
                    let outcome = match server {
                        TunnelEnd::Direct(tcp) => tunnel::relay(client_tcp, tcp, &early, idle, method).await,
                        TunnelEnd::Parent(stream, from_parent) => {
                            let mut client = client_tcp;
                            // bytes the parent sent past its answer are the origin's
                            if !from_parent.is_empty() {
                                if client.write_all(&from_parent).await.is_err() {
                                    txn.rec.termination = *b"CD";
                                    drop(txn);
                                    return;
                                }
                                txn.rec.bytes_to_client += from_parent.len() as u64;
                            }
                            match stream {
                                ParentStream::Plain(tcp) => tunnel::relay(client, tcp, &early, idle, method).await,
                                tls => tunnel::relay_io(client, tls, &early, idle).await,
                            }
                        }
                    };
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

/// The server side of a tunnel.
enum TunnelEnd {
    /// Straight to the origin.
    Direct(tokio::net::TcpStream),
    /// Through a parent that accepted the CONNECT, with the bytes it sent past its answer.
    Parent(ParentStream, Vec<u8>),
}

async fn connect_direct(txn: &mut Txn, ctx: &Ctx<'_>, addrs: Option<Vec<SocketAddr>>) -> Result<TunnelEnd, Refusal> {
    clear_upstream(txn);
    txn.rec.hierarchy = Hierarchy::Direct;
    let addrs = direct_addrs(txn, ctx, addrs).await?;
    match dial_direct(txn, ctx, &addrs, false).await? {
        Dialed::Fresh(_, stream) => Ok(TunnelEnd::Direct(stream)),
        // dial_direct pools nothing when not asked to reuse
        Dialed::Pooled(key, _) => Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            ResultCode::TcpMissError,
            b"PC",
            format!("No connection to {} for a tunnel.", key.dst),
        )),
    }
}

/// Opens the tunnel through the first parent that accepts it; a parent that
/// cannot be reached, or fails before answering, is marked down.
async fn tunnel_via_parents(txn: &mut Txn, ctx: &Ctx<'_>, authority: &str) -> Result<TunnelEnd, ParentsFailed> {
    let cfg = &ctx.cfg;
    let state = txn.conn.state.clone();
    let facts = ctx.facts();
    let keys = ctx.keys();
    let mut errors = Vec::new();
    for idx in parent::order(cfg, ctx.host) {
        let p = &cfg.egress.parents[idx];
        clear_upstream(txn);
        let t0 = Instant::now();
        let mut stream = match parent::dial(&state, cfg, idx, &facts, &keys, false).await {
            Ok(parent::Dialed::Fresh { key, stream }) => {
                txn.rec.upstream = Some(key.dst);
                stream
            }
            // dial pools nothing when not asked to reuse
            Ok(parent::Dialed::Pooled { key, .. }) => {
                errors.push(format!("{}: no fresh connection to {}", p.name, key.dst));
                continue;
            }
            Err(e) => {
                parent_failed(cfg, p, &e);
                errors.push(format!("{}: {e}", p.name));
                continue;
            }
        };
        Counters::inc(&state.counters.upstream_connects);
        txn.rec.timers.connect = Some(t0.elapsed());
        txn.rec.upstream_local = stream.local_addr();
        txn.rec.parent = Some(p.name.clone());
        txn.rec.hierarchy = ctx.hierarchy();
        let t1 = Instant::now();
        match parent::open_tunnel(
            &mut stream,
            authority,
            p.authorization.as_ref(),
            cfg.timeouts.server_response,
        )
        .await
        {
            Ok(rest) => {
                txn.rec.timers.response = Some(t1.elapsed());
                p.mark_up();
                return Ok(TunnelEnd::Parent(stream, rest));
            }
            Err(parent::TunnelError::Parent(e)) => {
                parent_failed(cfg, p, &e);
                errors.push(format!("{}: {e}", p.name));
            }
            Err(parent::TunnelError::Answer { status, reason }) => {
                txn.rec.timers.response = Some(t1.elapsed());
                // the parent's own login failing is this proxy's problem, not the client's
                let code = match status {
                    400..=406 | 408..=599 => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    _ => StatusCode::BAD_GATEWAY,
                };
                return Err(ParentsFailed::Refused(Refusal::new(
                    code,
                    ResultCode::TcpMissError,
                    b"SH",
                    format!("The parent proxy {} refused the tunnel: {status} {reason}.", p.name),
                )));
            }
        }
    }
    Err(ParentsFailed::Untried(None, errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_agree_with_the_http_crate() {
        let cases = [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.:80",
            "127.0.0.1:3128",
            "user:pw@example.com:21",
            "a@b@example.com",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]:65535",
            "u@[fe80::1%25eth0]:8",
            "example.com:",
            "example.com:0",
        ];
        for c in cases {
            let a: http::uri::Authority = c.parse().expect(c);
            assert_eq!(host_port(a.as_str()), (a.host(), a.port_u16()), "{c}");
        }
        assert_eq!(without_userinfo("u:p@h:1"), "h:1");
        assert_eq!(normalize_host("[::1]"), "::1");
        assert_eq!(normalize_host("Example.COM.."), "example.com");
    }
}
