//! Where an app listens: a TCP address in the container network, or a UNIX socket on the
//! host (the in-workspace agent serves its named apps on one), and how to connect to either.
//!
//! The pooled client keys connections by URI authority, so each upstream gets an authority
//! of its own: the address for TCP, the socket path hex-encoded into a host name for UNIX
//! sockets. The connector turns that authority back into the upstream. Hex keeps any path
//! (spaces, colons, non-UTF-8 bytes) a valid host name and needs no shared registry.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The suffix of the host names that stand for UNIX sockets (`.invalid` is reserved, RFC 2606:
/// it can never be a real upstream).
const UNIX_HOST_SUFFIX: &str = ".unix.invalid";

/// Where an admitted request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// An address in the container network (an app's port).
    Tcp(SocketAddr),
    /// A UNIX socket on this host (the in-workspace agent's).
    Unix(PathBuf),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Tcp(addr) => write!(f, "{addr}"),
            Upstream::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Upstream {
    /// Connects once and hangs up: whether something accepts connections there now.
    pub async fn probe(&self) -> io::Result<()> {
        connect(self).await.map(drop)
    }

    /// The authority of requests to this upstream in the pooled client.
    pub(crate) fn authority(&self) -> Result<Authority, http::Error> {
        match self {
            Upstream::Tcp(addr) => Ok(Authority::try_from(addr.to_string())?),
            Upstream::Unix(path) => {
                let mut host = String::with_capacity(path.as_os_str().len() * 2 + UNIX_HOST_SUFFIX.len());
                for byte in path.as_os_str().as_bytes() {
                    host.push(char::from(HEX[usize::from(byte >> 4)]));
                    host.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
                host.push_str(UNIX_HOST_SUFFIX);
                Ok(Authority::try_from(host)?)
            }
        }
    }

    /// The inverse of [`Upstream::authority`].
    fn from_uri(uri: &Uri) -> Option<Upstream> {
        let authority = uri.authority()?.as_str();
        if let Some(hex) = authority.strip_suffix(UNIX_HOST_SUFFIX) {
            let bytes = hex
                .as_bytes()
                .chunks(2)
                .map(|pair| match pair {
                    [high, low] => Some(nibble(*high)? << 4 | nibble(*low)?),
                    _ => None,
                })
                .collect::<Option<Vec<u8>>>()?;
            return Some(Upstream::Unix(PathBuf::from(OsString::from_vec(bytes))));
        }
        authority.parse().ok().map(Upstream::Tcp)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Connects to `upstream`, giving up after `timeout`.
pub(crate) async fn connect_with_timeout(upstream: &Upstream, timeout: Duration) -> io::Result<UpstreamStream> {
    match tokio::time::timeout(timeout, connect(upstream)).await {
        Ok(connected) => connected,
        Err(_elapsed) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

async fn connect(upstream: &Upstream) -> io::Result<UpstreamStream> {
    match upstream {
        Upstream::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            // Small writes (server-sent events, WebSocket frames) should leave at once.
            stream.set_nodelay(true)?;
            Ok(UpstreamStream::Tcp(stream))
        }
        Upstream::Unix(path) => Ok(UpstreamStream::Unix(UnixStream::connect(path).await?)),
    }
}

/// The pooled client's connector: opens a connection to the upstream a URI's authority names.
#[derive(Clone)]
pub(crate) struct Connector {
    pub timeout: Duration,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            let upstream = Upstream::from_uri(&uri).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no upstream in the request URI {uri}"))
            })?;
            connect_with_timeout(&upstream, timeout).await.map(TokioIo::new)
        })
    }
}

/// A connection to an upstream, either kind.
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            UpstreamStream::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            UpstreamStream::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            UpstreamStream::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Tcp(stream) => stream.is_write_vectored(),
            UpstreamStream::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            UpstreamStream::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            UpstreamStream::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(upstream: Upstream) {
        let uri = Uri::builder().scheme("http").authority(upstream.authority().unwrap()).path_and_query("/").build();
        assert_eq!(Upstream::from_uri(&uri.unwrap()), Some(upstream));
    }

    #[test]
    fn authorities_name_their_upstream() {
        round_trip(Upstream::Tcp("10.88.0.5:8080".parse().unwrap()));
        round_trip(Upstream::Tcp("[fd00::5]:3000".parse().unwrap()));
        round_trip(Upstream::Unix("/var/lib/cove/run/0123/agent.sock".into()));
        round_trip(Upstream::Unix("/tmp/a dir:with@odd/chars.sock".into()));
        let odd = OsString::from_vec(b"/tmp/\xff\x00.sock".to_vec());
        round_trip(Upstream::Unix(odd.into()));
    }
}
