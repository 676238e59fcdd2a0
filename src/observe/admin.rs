//! The admin server: health and counters over HTTP, for localhost by default.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

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
                async move { Ok::<_, Infallible>(route(&st, peer, req)) }
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

fn route(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let cfg = state.config.load();
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
    let path = req.uri().path();
    let pac = matches!(path, "/proxy.pac" | "/wpad.dat");
    let rules = if pac { &cfg.egress.pac.access } else { &admin.access };
    if !rules.check(&cfg.acls, &facts).is_allow() {
        return text(
            StatusCode::FORBIDDEN,
            "text/plain",
            "access to the admin server is denied\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into());
    }
    match path {
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
            let (written, dropped) = state.log_figures();
            let mut body = state.counters.to_json(written, dropped);
            if let Some(a) = &cfg.auth {
                body.pop();
                body.push_str(&format!(
                    ",\"auth_password_checks\":{},\"digest_nonces\":{}}}",
                    a.password_checks(),
                    a.nonces_tracked()
                ));
            }
            {
                use std::sync::atomic::Ordering::Relaxed;
                let r = &state.reloads;
                let last = r.last_error.lock().map(|e| e.clone()).unwrap_or(None);
                body.pop();
                body.push_str(&format!(
                    ",\"generation\":{},\"reloads\":{},\"reloads_failed\":{},\"last_reload_error\":{},\"open_connections\":{},\"maxconn\":{},\"listeners\":[",
                    cfg.live.generation,
                    r.count.load(Relaxed),
                    r.failed.load(Relaxed),
                    last.map_or("null".to_string(), |e| json_string(&e)),
                    state.open_connections(),
                    cfg.maxconn,
                ));
                for (i, l) in cfg.listeners.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        "{{\"name\":{},\"bind\":\"{}\",\"current\":{},\"max\":{},\"total\":{},\"refused\":{}}}",
                        json_string(&l.name),
                        l.bind,
                        l.stats.current.load(Relaxed),
                        l.stats.max.load(Relaxed),
                        l.stats.total.load(Relaxed),
                        l.stats.refused.load(Relaxed),
                    ));
                }
                body.push_str("]}");
            }
            if !cfg.egress.parents.is_empty() {
                body.pop();
                body.push_str(",\"parents\":[");
                for (i, p) in cfg.egress.parents.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        "{{\"name\":\"{}\",\"state\":\"{}\"}}",
                        p.name.escape_default(),
                        if p.is_down() { "down" } else { "up" }
                    ));
                }
                body.push_str("]}");
            }
            body.push('\n');
            text(StatusCode::OK, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /stats.json or /proxy.pac\n".into(),
        ),
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
