//! The dashboard origin's side of [`cove_proxy::linger`]: a request refused before its body
//! was read (an unknown workspace, a bad `cove push` target, a bad archive entry halfway
//! through) gets its refusal, not a broken connection. Every request's body is wrapped so
//! that, dropped before its end, the rest is read and dropped in the background.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use hyper::body::{Frame, SizeHint};

/// Gives every request a body that lingers when dropped unfinished (middleware).
pub async fn layer(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    next.run(request.map(|body| Body::new(Lingering(Some(body))))).await
}

/// A request body handed to [`cove_proxy::linger`] if it is dropped before its end.
struct Lingering(Option<Body>);

impl hyper::body::Body for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.0.as_mut() else { return Poll::Ready(None) };
        let frame = Pin::new(body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.0 = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0.as_ref().map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        if let Some(body) = self.0.take() {
            cove_proxy::linger(body);
        }
    }
}
