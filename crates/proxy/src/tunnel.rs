//! WebSocket pass-through: after both sides agreed to switch protocols, the proxy stops
//! speaking HTTP and copies bytes both ways until either side closes.
//!
//! The frames are not parsed: the app and the client speak WebSocket to each other. Data from
//! the client is user activity and keeps the workspace awake, a chatty socket at most once
//! a second.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::gate::{ActivityKind, Admitted, Gate};
use crate::metrics::Metrics;

/// How long one direction of a tunnel may go on after the other one ended.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// At most one activity report per connection per this long.
const ACTIVITY_INTERVAL: Duration = Duration::from_secs(1);

/// Joins the client's and the app's upgraded connections in a task of their own; the 101
/// response must reach the client before its side of the upgrade completes.
pub(crate) fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    gate: Arc<dyn Gate>,
    metrics: Arc<Metrics>,
    admitted: Admitted,
) {
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, upstream);
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!(origin = "client", workspace = %admitted.label, %error, "websocket upgrade failed");
                return;
            }
        };
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::warn!(origin = "upstream", workspace = %admitted.label, %error, "websocket upgrade failed");
                return;
            }
        };
        let client = ClientSide::new(TokioIo::new(client), gate, &admitted);
        let (client, result) = pipe(client, TokioIo::new(upstream)).await;
        if let Err(error) = result {
            tracing::debug!(workspace = %admitted.label, %error, "websocket ended with an error");
        }
        metrics.record_bytes(&admitted.label, client.read, client.written);
    });
}

/// Copies both ways until the tunnel is done, and hands the client's side back.
///
/// An end of stream on one side is passed on as a write shutdown to the other. After that the
/// other direction gets [`CLOSE_GRACE`] to finish: by then a WebSocket's closing handshake is
/// over, and a peer that never closes its half must not keep the tunnel (and the app's
/// connection) open forever. An error in either direction ends both at once.
async fn pipe<C, U>(client: C, upstream: U) -> (C, io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let result = {
        let mut up = pin!(copy_half(&mut client_read, &mut upstream_write));
        let mut down = pin!(copy_half(&mut upstream_read, &mut client_write));
        tokio::select! {
            first = &mut up => finish(first, down).await,
            first = &mut down => finish(first, up).await,
        }
    };
    (client_read.unsplit(client_write), result)
}

async fn copy_half<R, W>(from: &mut R, to: &mut W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tokio::io::copy(from, to).await?;
    to.shutdown().await
}

async fn finish(first: io::Result<()>, other: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    first?;
    // Past the grace, the tunnel ends here all the same: dropping it closes both connections.
    tokio::time::timeout(CLOSE_GRACE, other).await.unwrap_or(Ok(()))
}

/// The client's side of a tunnel: counts bytes and reports activity for what the client sends.
struct ClientSide<T> {
    io: T,
    gate: Arc<dyn Gate>,
    workspace: cove_core::WorkspaceId,
    last_activity: Option<Instant>,
    read: u64,
    written: u64,
}

impl<T> ClientSide<T> {
    fn new(io: T, gate: Arc<dyn Gate>, admitted: &Admitted) -> Self {
        Self { io, gate, workspace: admitted.workspace, last_activity: None, read: 0, written: 0 }
    }

    fn note_activity(&mut self) {
        let now = Instant::now();
        if self.last_activity.is_none_or(|last| now.duration_since(last) >= ACTIVITY_INTERVAL) {
            self.last_activity = Some(now);
            self.gate.activity(self.workspace, ActivityKind::WebSocket);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientSide<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            if read > 0 {
                this.read += read as u64;
                this.note_activity();
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientSide<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            this.written += written as u64;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
