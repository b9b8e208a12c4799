//! Lingering reads: a request refused before its body was read (no credentials, an unknown
//! host, a workspace that cannot start) still has a client sending that body. Were the
//! connection closed with it unread, the client's next write would fail with a broken pipe
//! or a reset, and an HTTP client that sees that fails the whole request without reading
//! the refusal that already arrived: the user would see "connection reset" instead of what
//! to fix. So the rest of such a body is read and dropped by a task of its own, for a
//! bounded time, while the response goes out (nginx's lingering close).

use std::time::Duration;

/// How long the rest of a refused body is read before the connection is given up.
pub const LINGER: Duration = Duration::from_secs(10);

/// Reads `body` to its end (or for [`LINGER`]) and drops what it reads, in a task of its
/// own; a body already at its end costs nothing. Call it from within a Tokio runtime.
pub fn linger<B>(body: B)
where
    B: hyper::body::Body + Send + 'static,
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
