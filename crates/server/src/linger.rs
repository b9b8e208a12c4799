//! Lingering reads: a request refused before its body was read (an unknown workspace, a bad
//! query, a bad archive halfway through) still has a client sending that body. If the
//! connection closed with it unread, the kernel would answer the client with a reset, and a
//! reset can discard the refusal the client had not read yet: it would see "connection
//! reset" instead of what to fix. So a body dropped before its end is read to its end by a
//! task of its own, for a bounded time, while the response goes out (nginx's lingering close).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};

/// How long the rest of a refused body is read before the connection is given up.
const LINGER: Duration = Duration::from_secs(10);

/// Gives every request a body that lingers when dropped unfinished (middleware).
pub async fn layer(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    next.run(request.map(|body| Body::new(Lingering(Some(body))))).await
}

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
        let Some(mut body) = self.0.take().filter(|body| !body.is_end_stream()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = body.frame().await {} }).await;
        });
    }
}
