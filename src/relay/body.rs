//! The request body on its way upstream, counted as it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A client's request body streamed to the origin; never buffered whole.
pub struct ReqBody {
    inner: Incoming,
    /// Bytes passed on so far, shared with the transaction's log record.
    counter: Option<Arc<AtomicU64>>,
}

impl ReqBody {
    pub fn new(inner: Incoming) -> (ReqBody, Option<Arc<AtomicU64>>) {
        let counter = if inner.is_end_stream() {
            None
        } else {
            Some(Arc::new(AtomicU64::new(0)))
        };
        (
            ReqBody {
                inner,
                counter: counter.clone(),
            },
            counter,
        )
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(c)) = (&r, &this.counter)
            && let Some(d) = f.data_ref()
        {
            c.fetch_add(d.len() as u64, Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
