//! Active health checks: every `interval`, each server of a pool with a
//! `[pool.NAME.check]` gets a TCP connect or an HTTP request within
//! `timeout`; `rise` successes in a row bring a down server up, `fall`
//! failures in a row take an up server down. Changes are logged with the reason.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::config::upstream::{CheckConfig, CheckKind, UpstreamTls};
use crate::upstream::backend::{Backend, Server};

/// Runs the checks of one pool until its configuration is retired.
pub async fn run(backend: Arc<Backend>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(check) = backend.cfg.check.clone() else { return };
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|r| *r) => return,
        }
        let tls = backend.cfg.tls.as_ref();
        let pp = backend.cfg.proxy_protocol;
        let results = join_all(backend.servers.iter().map(|s| probe(s, &check, tls, pp)).collect()).await;
        for (s, r) in backend.servers.iter().zip(results) {
            record(&backend.cfg.name, s, &check, r);
        }
    }
}

/// Awaits every future concurrently; results in order.
async fn join_all<T, F: std::future::Future<Output = T>>(futs: Vec<F>) -> Vec<T> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none()
                && let std::task::Poll::Ready(v) = f.as_mut().poll(cx)
            {
                *slot = Some(v);
            }
        }
        if out.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Applies one result to the server's state (rise/fall).
fn record(pool: &str, s: &Server, check: &CheckConfig, r: Result<(), String>) {
    let up = s.check_up.load(Relaxed);
    let agrees = r.is_ok() == up;
    if agrees {
        s.check_streak.store(0, Relaxed);
        return;
    }
    let n = s.check_streak.fetch_add(1, Relaxed) + 1;
    let needed = if up { check.fall } else { check.rise };
    if n < needed {
        return;
    }
    s.check_streak.store(0, Relaxed);
    s.check_up.store(!up, Relaxed);
    let reason = match &r {
        Ok(()) => format!("{n} check(s) passed"),
        Err(e) => format!("{n} check(s) failed, last: {e}"),
    };
    if let Ok(mut last) = s.last_reason.lock() {
        *last = reason.clone();
    }
    if up {
        tracing::warn!(pool, server = %s.cfg.name, "server is DOWN: {reason}");
    } else {
        tracing::info!(pool, server = %s.cfg.name, "server is UP: {reason}");
    }
}

/// One check of one server (over TLS for a pool with `tls = true`, after a
/// PROXY `LOCAL` header for a pool that sends PROXY headers).
async fn probe(s: &Server, check: &CheckConfig, tls: Option<&UpstreamTls>, pp: Option<u8>) -> Result<(), String> {
    if let CheckKind::Udp { payload, expect } = &check.kind {
        return match tokio::time::timeout(check.timeout, probe_udp(s, payload, expect.as_deref())).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", check.timeout.as_millis())),
        };
    }
    let run = async {
        let mut stream = TcpStream::connect(s.cfg.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if let Some(v) = pp {
            // a server that wants a PROXY header gets one that names no client
            stream
                .write_all(&crate::listen::proxy_protocol::encode_local(v))
                .await
                .map_err(|e| format!("sending the PROXY header: {e}"))?;
        }
        match tls {
            None => probe_on(stream, s, check).await,
            Some(t) => {
                let name = t
                    .server_name
                    .clone()
                    .unwrap_or_else(|| tokio_rustls::rustls::pki_types::ServerName::IpAddress(s.cfg.addr.ip().into()));
                let stream = tokio_rustls::TlsConnector::from(t.config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                probe_on(stream, s, check).await
            }
        }
    };
    match tokio::time::timeout(check.timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", check.timeout.as_millis())),
    }
}

/// A datagram to the server; healthy when an answer (with the expected start) comes back.
async fn probe_udp(s: &Server, payload: &[u8], expect: Option<&[u8]>) -> Result<(), String> {
    let bind: std::net::SocketAddr = if s.cfg.addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("socket: {e}"))?;
    // unconnected: with direct server return the server's answer may carry
    // the listener's address (its source rewritten), and it still counts
    sock.send_to(payload, s.cfg.addr)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 65_535];
    let (n, _) = sock.recv_from(&mut buf).await.map_err(|e| format!("receive: {e}"))?;
    match expect {
        Some(want) if !buf[..n].starts_with(want) => Err(format!("unexpected answer ({n} bytes)")),
        _ => Ok(()),
    }
}

async fn probe_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    s: &Server,
    check: &CheckConfig,
) -> Result<(), String> {
    let CheckKind::Http {
        method,
        path,
        host,
        expect,
    } = &check.kind
    else {
        return Ok(());
    };
    let host = host.clone().unwrap_or_else(|| s.cfg.addr.to_string());
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sekisho-check\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed without a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 4096 {
            return Err("status line too long".into());
        }
    }
    let line = String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len())]);
    let status = line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: `{}`", line.trim()))?;
    if (expect.0..=expect.1).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}, expected {}-{}", expect.0, expect.1))
    }
}

/// Starts the checks of every pool that has them.
/// Starts the checks of a configuration's pools; they stop when it is retired.
pub fn start(cfg: &Config) {
    for b in &cfg.live.backends {
        if b.cfg.check.is_some() {
            tokio::spawn(run(b.clone(), cfg.live.retired.subscribe()));
        }
    }
}
