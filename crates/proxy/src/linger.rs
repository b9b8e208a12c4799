//! Lingering reads: a request refused before its body was read (no credentials, an unknown
//! host or workspace, a bad `cove push` target, a bad archive entry halfway through) still
//! has a client sending that body. Were the connection closed with it unread, the client's
//! next write would fail with a broken pipe or a reset, and an HTTP client that sees that
//! fails the whole request without reading the refusal that already arrived: the user would
//! see "connection reset" instead of what to fix. So the rest of such a body is read and
//! dropped by a task of its own, for a bounded time, while the response goes out (nginx's
//! lingering close). The proxy calls [`linger`] for what the gate answers itself; the
//! router's requests get a [`Lingering`] body, which does it when a handler drops it early.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long the rest of a refused body is read before the connection is given up.
pub const LINGER: Duration = Duration::from_secs(10);

/// Reads `body` to its end (or for [`LINGER`]) and drops what it reads, in a task of its
/// own; a body already at its end costs nothing. Call it from within a Tokio runtime.
pub fn linger<B>(body: B)
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let drain = async { while let Some(Ok(_)) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// A request body handed to [`linger`] if it is dropped before its end.
pub(crate) struct Lingering(Option<Incoming>);

impl Lingering {
    pub fn new(body: Incoming) -> Self {
        Lingering(Some(body))
    }
}

impl Body for Lingering {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.0.as_mut() else { return Poll::Ready(None) };
        let frame = Pin::new(body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.0 = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.as_ref().map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let Some(body) = self.0.take() {
            linger(body);
        }
    }
}
