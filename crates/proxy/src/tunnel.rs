//! WebSocket pass-through: after both sides agreed to switch protocols, the proxy stops
//! speaking HTTP and copies bytes both ways until either side closes.
//!
//! The frames are not changed: the app and the client speak WebSocket to each other. Data from
//! the client is user activity and keeps the workspace awake, a chatty socket at most once
//! a second. For apps whose idle clients send keep-alives ([`WebSocketActivity`]), the
//! client's frame headers are followed (never the payloads) to tell small frames from real
//! ones.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::gate::{ActivityKind, Admitted, Gate, WebSocketActivity};
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
    /// Follows the client's frames when only some of them count.
    frames: Option<(FrameScanner, u64)>,
    read: u64,
    written: u64,
}

impl<T> ClientSide<T> {
    fn new(io: T, gate: Arc<dyn Gate>, admitted: &Admitted) -> Self {
        let frames = match admitted.websocket_activity {
            WebSocketActivity::AnyData => None,
            WebSocketActivity::FramesLargerThan(bytes) => Some((FrameScanner::default(), bytes)),
        };
        Self { io, gate, workspace: admitted.workspace, last_activity: None, frames, read: 0, written: 0 }
    }

    fn note_data(&mut self, data: &[u8]) {
        let counts = match &mut self.frames {
            None => true,
            Some((scanner, min)) => scanner.feed(data, *min),
        };
        if counts {
            self.note_activity();
        }
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
                this.note_data(&buf.filled()[before..]);
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

/// Follows a client's WebSocket frames (RFC 6455 section 5.2) across reads: headers are
/// parsed, payloads skipped. A stream that is not WebSocket at all just yields nonsense
/// lengths, which only decide what counts as activity.
#[derive(Default)]
struct FrameScanner {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
}

impl FrameScanner {
    /// Consumes `data`; true if a frame began in it that counts as activity: a data frame
    /// (opcode 0, 1 or 2) with more than `min` bytes of payload.
    fn feed(&mut self, mut data: &[u8], min: u64) -> bool {
        let mut counts = false;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).unwrap_or(usize::MAX).min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            let Some(needed) = self.header_len() else { continue };
            if self.have < needed {
                continue;
            }
            let opcode = self.header[0] & 0x0f;
            let len7 = u64::from(self.header[1] & 0x7f);
            let len = match len7 {
                126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(b)
                }
                n => n,
            };
            counts |= opcode <= 2 && len > min;
            self.skip = len;
            self.have = 0;
        }
        counts
    }

    /// The whole header's length, once its first two bytes are in.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }
}

#[allow(clippy::unwrap_used)]
#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame: opcode, payload length (the payload is zeros).
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    #[test]
    fn only_data_frames_above_the_threshold_count() {
        let check = |frames: &[Vec<u8>], expected: bool| {
            let bytes: Vec<u8> = frames.concat();
            assert_eq!(FrameScanner::default().feed(&bytes, 13), expected, "{frames:?}");
            // The same bytes one at a time: headers and payloads split across reads.
            let mut scanner = FrameScanner::default();
            let split = bytes.iter().fold(false, |acc, b| scanner.feed(&[*b], 13) | acc);
            assert_eq!(split, expected, "byte by byte: {frames:?}");
        };
        check(&[frame(2, 13)], false); // a keep-alive: header only
        check(&[frame(2, 13), frame(2, 13), frame(2, 5)], false);
        check(&[frame(2, 14)], true);
        check(&[frame(1, 200)], true);
        check(&[frame(0, 300)], true); // a continuation carries data too
        check(&[frame(9, 100), frame(10, 100), frame(8, 2)], false); // ping, pong, close
        check(&[frame(2, 13), frame(2, 70_000)], true); // 64-bit length
        check(&[frame(2, 10), frame(2, 300), frame(2, 2)], true);
        // A payload that looks like a big frame header is skipped, not parsed.
        let mut tricky = frame(2, 13);
        let n = tricky.len();
        tricky[n - 13] = 0x82;
        tricky[n - 12] = 0xfe;
        check(&[tricky, frame(2, 4)], false);
    }
}
