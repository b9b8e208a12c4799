//! Stage 5, account: counting bytes while bodies stream, and recording each exchange once.
//!
//! Bodies are never buffered, so sizes are only known once they have gone through. The
//! request body counts into a shared [`RequestTally`]; the response body carries the
//! [`Exchange`] record, which reaches [`Metrics`] when the body is dropped: after its last
//! frame, or when the client went away mid-stream — either way exactly once.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::Metrics;

/// What the client's request body did so far.
#[derive(Default)]
pub(crate) struct RequestTally {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl RequestTally {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The client's body ended with an error: when the exchange fails, it was the client's doing.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The client's request body on its way up, counted.
pub(crate) struct TalliedBody<B> {
    inner: B,
    tally: Arc<RequestTally>,
}

impl<B> TalliedBody<B> {
    pub fn new(inner: B, tally: Arc<RequestTally>) -> Self {
        Self { inner, tally }
    }
}

impl<B> Body for TalliedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.tally.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                this.tally.failed.store(true, Ordering::Relaxed);
                tracing::debug!(origin = "client", %error, "the client broke off its request body");
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One exchange, recorded into the metrics when dropped.
pub(crate) struct Exchange {
    pub metrics: Arc<Metrics>,
    pub label: Arc<str>,
    pub status: u16,
    pub request: Arc<RequestTally>,
    pub latency: Duration,
    pub bytes_out: u64,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.metrics.record_request(&self.label, self.status, self.request.bytes(), self.bytes_out, self.latency);
    }
}

/// A response body on its way to the client, counted; records its [`Exchange`] when dropped.
pub(crate) struct AccountedBody<B> {
    inner: B,
    exchange: Exchange,
}

impl<B> AccountedBody<B> {
    pub fn new(inner: B, exchange: Exchange) -> Self {
        Self { inner, exchange }
    }
}

impl<B> Body for AccountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(
                    origin = "upstream",
                    workspace = %this.exchange.label,
                    %error,
                    "the app broke off its response body"
                );
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
