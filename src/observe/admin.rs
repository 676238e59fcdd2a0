//! The admin server, for localhost by default:
//!
//! - `GET /healthz`: 200 `ok`, 503 while stopping;
//! - `GET /stats`: the stats page (one self-contained HTML page that
//!   refreshes itself from `/stats.json`);
//! - `GET /stats.json`: counters, listeners, pools and servers with their
//!   figures and history, access-log outputs (`?history=0` leaves the
//!   history arrays out);
//! - `GET /metrics`: the Prometheus text exposition ([`super::metrics`]);
//! - `POST /stats/action`: operator actions on servers ([`super::actions`]);
//! - `GET /proxy.pac`, `/wpad.dat`: the PAC file (its own access rules).
//!
//! The `admin.access` rules are checked first, for every path but the PAC file.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::observe::actions;
use crate::observe::figures::{ErrorClass, Figures, SAMPLE_EVERY};
use crate::policy::acl::Facts;
use crate::runtime::State;

/// Accepts admin connections until shutdown begins or the admin address
/// changes on reload (`stop`).
pub async fn serve(state: Arc<State>, listener: Arc<TcpListener>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut shutdown = state.shutdown_signal();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
            _ = shutdown.changed() => break,
        };
        let st = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(route(&st, peer, req).await) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!("admin connection from {peer}: {e}");
            }
        });
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON answer.
fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut body = v.to_string();
    body.push('\n');
    text(status, "application/json", body)
}

/// A refused action: `{"ok":false,"error":...}` with its status.
fn refusal(r: actions::Refusal) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = json_response(status, &json!({"ok": false, "error": r.message}));
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sekisho admin\""),
        );
    }
    resp
}

async fn route(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let cfg = state.config.load_full();
    let Some(admin) = &cfg.admin else {
        return text(StatusCode::NOT_FOUND, "text/plain", "admin server disabled\n".into());
    };
    let facts = Facts {
        src: peer.ip(),
        method: req.method(),
        host: "",
        port: 0,
        dst: None,
        user: None,
    };
    let path = req.uri().path().to_string();
    let pac = matches!(path.as_str(), "/proxy.pac" | "/wpad.dat");
    let rules = if pac { &cfg.egress.pac.access } else { &admin.access };
    if !rules.check(&cfg.acls, &facts).is_allow() {
        return text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "access to the admin server is denied\n".into(),
        );
    }
    if path == "/stats/action" {
        if req.method() != Method::POST {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only POST: pool, server, action (drain, disable, enable, weight) and weight, as a form or JSON\n"
                    .into(),
            );
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let token = admin.actions_token.clone();
        return action(state, token.as_ref(), peer, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path.as_str() {
        "/proxy.pac" | "/wpad.dat" => text(
            StatusCode::OK,
            crate::egress::pac::CONTENT_TYPE,
            crate::egress::pac::render(&cfg.egress.pac),
        ),
        "/healthz" => {
            if state.is_shutting_down() {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n".into())
            } else {
                text(StatusCode::OK, "text/plain", "ok\n".into())
            }
        }
        "/stats.json" => {
            let history = !req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "history=0"));
            json_response(StatusCode::OK, &stats_json(state, &cfg, history))
        }
        "/stats" | "/stats/" => {
            let mut r = text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::observe::stats_page::render(&stats_json(state, &cfg, true)),
            );
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(crate::observe::stats_page::CSP),
            );
            r.headers_mut()
                .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            r
        }
        "/metrics" => text(
            StatusCode::OK,
            crate::observe::metrics::CONTENT_TYPE,
            crate::observe::metrics::render(state, &cfg),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /stats, /stats.json, /metrics, /healthz or /proxy.pac\n".into(),
        ),
    }
}

/// `POST /stats/action`: authenticated, then the body, then the change.
async fn action(
    state: &State,
    token: Option<&actions::Token>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let authorization = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    if let Err(r) = actions::authorize(token, authorization.as_deref()) {
        tracing::info!(client = %peer, "operator action refused: {}", r.message);
        return refusal(r);
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let read = Limited::new(req.into_body(), actions::MAX_BODY).collect();
    let body = match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return refusal(actions::Refusal {
                status: if too_big { 413 } else { 400 },
                message: if too_big {
                    format!("the body is larger than {} bytes", actions::MAX_BODY)
                } else {
                    format!("the body could not be read: {e}")
                },
            });
        }
        Err(_) => {
            return refusal(actions::Refusal {
                status: 408,
                message: "the body did not arrive in time".into(),
            });
        }
    };
    let parsed = match actions::parse(ctype.as_deref(), &body) {
        Ok(p) => p,
        Err(r) => return refusal(r),
    };
    // the configuration in force now, which may be newer than the request's
    let cfg = state.config.load_full();
    match actions::apply(&cfg, &parsed, peer) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(r) => refusal(r),
    }
}

/// Rounds a rate for JSON: two decimals are plenty for a chart.
fn round2(v: f32) -> f64 {
    (f64::from(v) * 100.0).round() / 100.0
}

fn ms(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |x| json!((x * 1000.0).round() / 1000.0))
}

/// The transaction figures of a listener, pool or server, as JSON fields.
fn figures_json(f: &Figures, history: bool, into: &mut Map<String, Value>) {
    let mut status = Map::new();
    for n in 1..=5 {
        status.insert(format!("{n}xx"), json!(f.status(n)));
    }
    let mut errors = Map::new();
    errors.insert("4xx".into(), json!(f.status(4)));
    errors.insert("5xx".into(), json!(f.status(5)));
    for c in ErrorClass::ALL {
        errors.insert(c.name().into(), json!(f.errors(c)));
    }
    let [p50, p90, p99] = f.percentiles();
    let r = f.rates();
    into.insert("requests".into(), json!(f.requests.load(Relaxed)));
    into.insert("bytes_in".into(), json!(f.bytes_in.load(Relaxed)));
    into.insert("bytes_out".into(), json!(f.bytes_out.load(Relaxed)));
    into.insert("status".into(), Value::Object(status));
    into.insert("errors".into(), Value::Object(errors));
    into.insert("failures".into(), json!(f.failures.load(Relaxed)));
    into.insert("p50_ms".into(), ms(p50));
    into.insert("p90_ms".into(), ms(p90));
    into.insert("p99_ms".into(), ms(p99));
    into.insert(
        "rates".into(),
        json!({
            "requests": round2(r.requests),
            "bytes_in": round2(r.bytes_in),
            "bytes_out": round2(r.bytes_out),
            "errors": round2(r.errors),
        }),
    );
    if history {
        let h = f.history();
        let col = |pick: fn(&crate::observe::figures::Point) -> f32| -> Value {
            Value::Array(h.points.iter().map(|p| json!(round2(pick(p)))).collect())
        };
        into.insert(
            "history".into(),
            json!({
                "interval_s": SAMPLE_EVERY.as_secs(),
                "end": h.end,
                "requests": col(|p| p.requests),
                "bytes_in": col(|p| p.bytes_in),
                "bytes_out": col(|p| p.bytes_out),
                "errors": col(|p| p.errors),
                "sessions": h.points.iter().map(|p| p.sessions).collect::<Vec<_>>(),
            }),
        );
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Everything `/stats.json` shows (and the stats page renders).
pub fn stats_json(state: &State, cfg: &Config, history: bool) -> Value {
    let c = &state.counters;
    let (written, dropped) = state.log_figures();
    let r = &state.reloads;
    let last_error = r.last_error.lock().map(|e| e.clone()).unwrap_or(None);
    let mut out = object(json!({
        "connections": c.connections.load(Relaxed),
        "active_connections": c.active.load(Relaxed),
        "transactions": c.transactions.load(Relaxed),
        "denied": c.denied.load(Relaxed),
        "errors": c.errors.load(Relaxed),
        "upstream_connects": c.upstream_connects.load(Relaxed),
        "upstream_reused": c.upstream_reused.load(Relaxed),
        "tunnels": c.tunnels.load(Relaxed),
        "log_written": written,
        "log_dropped": dropped,
        "generation": cfg.live.generation,
        "reloads": r.count.load(Relaxed),
        "reloads_failed": r.failed.load(Relaxed),
        "last_reload_error": last_error,
        "open_connections": state.open_connections(),
        "maxconn": cfg.maxconn,
        "threads": tokio::runtime::Handle::current().metrics().num_workers(),
        "parked": state.parked.as_ref().map_or(0, |l| l.len()),
        "history_interval_s": SAMPLE_EVERY.as_secs(),
        "actions": cfg.admin.as_ref().is_some_and(|a| a.actions_token.is_some()),
    }));
    if let Some(a) = &cfg.auth {
        out.insert("auth_password_checks".into(), json!(a.password_checks()));
        out.insert("digest_nonces".into(), json!(a.nonces_tracked()));
    }
    let logs: Vec<Value> = state
        .log
        .load()
        .figures()
        .into_iter()
        .map(|f| json!({"name": f.name, "written": f.written, "dropped": f.dropped, "truncated": f.truncated}))
        .collect();
    out.insert("access_logs".into(), Value::Array(logs));

    let listeners: Vec<Value> = cfg
        .listeners
        .iter()
        .map(|l| {
            let s = &l.stats;
            let mut m = object(json!({
                "name": &*l.name,
                "bind": l.bind.to_string(),
                "mode": l.mode.name(),
                "current": s.current.load(Relaxed),
                "max": s.max.load(Relaxed),
                "total": s.total.load(Relaxed),
                "refused": s.refused.load(Relaxed),
                "maxconn": l.maxconn,
            }));
            figures_json(&s.figures, history, &mut m);
            Value::Object(m)
        })
        .collect();
    out.insert("listeners".into(), Value::Array(listeners));

    let pools: Vec<Value> = cfg
        .live
        .backends
        .iter()
        .map(|b| {
            let servers: Vec<Value> = b
                .servers
                .iter()
                .map(|s| {
                    let reason = s.last_reason.lock().map(|r| r.clone()).unwrap_or_default();
                    let mut m = object(json!({
                        "name": &*s.cfg.name,
                        "address": s.cfg.addr.to_string(),
                        "state": s.shown_state(),
                        "reason": if reason.is_empty() { Value::Null } else { json!(reason) },
                        "up": s.is_up(),
                        "admin_state": s.admin_state().name(),
                        "weight": s.weight.load(Relaxed),
                        "configured_weight": s.cfg.weight,
                        "backup": s.cfg.backup,
                        "maxconn": s.cfg.maxconn,
                        "active": s.active.load(Relaxed),
                        "max": s.stats.max_active.load(Relaxed),
                        "attempts": s.requests.load(Relaxed),
                    }));
                    figures_json(&s.stats.figures, history, &mut m);
                    Value::Object(m)
                })
                .collect();
            let mut m = object(json!({
                "name": &*b.cfg.name,
                "balance": b.cfg.balance.name(),
                "active": b.active.load(Relaxed),
                "max_active": b.stats.max_active.load(Relaxed),
                "queued": b.queued.load(Relaxed),
                "max_queued": b.stats.max_queued.load(Relaxed),
                "maxqueue": b.cfg.maxqueue,
            }));
            figures_json(&b.stats.figures, history, &mut m);
            m.insert("servers".into(), Value::Array(servers));
            Value::Object(m)
        })
        .collect();
    out.insert("pools".into(), Value::Array(pools));

    if !cfg.egress.parents.is_empty() {
        let parents: Vec<Value> = cfg
            .egress
            .parents
            .iter()
            .map(|p| json!({"name": &*p.name, "state": if p.is_down() { "down" } else { "up" }}))
            .collect();
        out.insert("parents".into(), Value::Array(parents));
    }
    Value::Object(out)
}
