//! A transaction in progress and the response body that carries it. The
//! transaction's log record is written exactly once, when it is dropped:
//! after the last byte of the response, or when the client goes away.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::front::conn::Conn;
use crate::observe::counters::Counters;
use crate::observe::record::{Record, ResultCode};
use crate::relay::pool::Sender;

pub struct Txn {
    pub conn: Arc<Conn>,
    /// Boxed: a transaction moves through several futures and the response
    /// body, and the record is most of its size.
    pub rec: Box<Record>,
    pub started: Instant,
    /// Request body bytes, counted while they stream upstream.
    pub req_body: Option<Arc<AtomicU64>>,
    /// The server slot a load-balanced request holds until it ends.
    pub slot: Option<crate::upstream::backend::Slot>,
    /// Whether this transaction holds the connection's in-flight mark.
    in_flight: bool,
    /// When it ended, if the clock was read for it already.
    ended: Option<Instant>,
}

impl Txn {
    /// A transaction that began at `started`.
    pub fn new(conn: Arc<Conn>, rec: Box<Record>, started: Instant) -> Txn {
        Txn {
            conn,
            rec,
            started,
            req_body: None,
            slot: None,
            in_flight: true,
            ended: None,
        }
    }

    /// A tunnel outlives the HTTP connection; it no longer counts as its request.
    pub fn detach(&mut self) {
        self.detach_at(Instant::now());
    }

    fn detach_at(&mut self, now: Instant) {
        if self.in_flight {
            self.in_flight = false;
            self.conn.activity.end(now);
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let now = self.ended.unwrap_or_else(Instant::now);
        self.detach_at(now);
        let conn = &self.conn;
        let rec = &mut *self.rec;
        if rec.status == 0 && rec.termination == *b"--" {
            // the client went away before any answer: during the connect or the wait for headers
            rec.termination = if rec.upstream.is_some() { *b"CH" } else { *b"CC" };
            if rec.result == ResultCode::None && rec.hierarchy == crate::observe::record::Hierarchy::Direct {
                rec.result = ResultCode::TcpMissAborted;
            }
        }
        rec.active = now.saturating_duration_since(self.started);
        rec.total = now.saturating_duration_since(conn.session.accepted);
        if let Some(c) = &self.req_body {
            rec.bytes_from_client += c.load(Relaxed);
        }
        if let Some(slot) = &self.slot {
            let b = &slot.backend;
            let s = slot.server();
            rec.counts = Some([
                conn.state.counters.active.load(Relaxed) as u32,
                conn.cfg.listeners[conn.session.listener].stats.current.load(Relaxed),
                b.active.load(Relaxed),
                s.active.load(Relaxed),
                0,
                b.queued.load(Relaxed),
            ]);
        }
        let counters = &conn.state.counters;
        Counters::inc(&counters.transactions);
        match rec.result {
            ResultCode::TcpDenied => Counters::inc(&counters.denied),
            ResultCode::TcpMissError | ResultCode::None => Counters::inc(&counters.errors),
            _ => {}
        }
        conn.state.finish(&conn.cfg, rec);
    }
}

/// The body of every response the forward proxy sends.
pub enum ProxyBody {
    /// A page made by the proxy (errors), or nothing.
    Full { data: Option<Bytes>, txn: Option<Txn> },
    /// The origin's body, streamed; the upstream connection goes back to the
    /// pool after its last byte.
    Upstream {
        inner: Incoming,
        txn: Option<Txn>,
        upstream: Option<(crate::relay::pool::Key, Sender)>,
    },
}

impl ProxyBody {
    pub fn full(data: Bytes, txn: Txn) -> ProxyBody {
        ProxyBody::Full {
            data: Some(data),
            txn: Some(txn),
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full { data: None, txn: None }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full { data, txn } => match data.take() {
                Some(d) => {
                    if let Some(t) = txn {
                        t.rec.bytes_to_client += d.len() as u64;
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                None => {
                    txn.take();
                    Poll::Ready(None)
                }
            },
            ProxyBody::Upstream { inner, txn, upstream } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(t), Some(d)) = (txn.as_mut(), frame.data_ref()) {
                        t.rec.bytes_to_client += d.len() as u64;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    upstream.take();
                    if let Some(t) = txn.as_mut() {
                        t.rec.termination = *b"SD";
                        t.rec.result = ResultCode::TcpMissAborted;
                    }
                    txn.take();
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    finish(txn, upstream);
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data, .. } => data.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data, .. } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// The response is complete: the upstream connection is reusable.
fn finish(txn: &mut Option<Txn>, upstream: &mut Option<(crate::relay::pool::Key, Sender)>) {
    // one reading of the clock: the connection is idle from the moment the
    // transaction ends
    let now = Instant::now();
    if let Some(t) = txn.as_mut() {
        t.ended = Some(now);
        if let Some((key, tx)) = upstream.take() {
            t.conn.state.pool.checkin(key, tx, t.rec.upstream_local, now);
        }
    }
    txn.take();
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Upstream { inner, txn, upstream } = self
            && txn.is_some()
        {
            if inner.is_end_stream() {
                // a bodiless response hyper never polled
                finish(txn, upstream);
            } else if let Some(t) = txn.as_mut() {
                // the client went away before the end of the response
                t.rec.termination = *b"CD";
                t.rec.result = ResultCode::TcpMissAborted;
            }
        }
    }
}
