//! The one listener of Cove's server: app hosts go through the proxy, everything else to the
//! dashboard/API router.
//!
//! The split happens per request, not per connection, because an HTTP/2 client may reuse a
//! connection for every host its certificate (or, without TLS, its idea of the address) covers.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::affinity::{self, Affinity};
use crate::host::{parse_host, request_host, AppHost};
use crate::linger::Lingering;
use crate::proxy::Proxy;
use crate::rewrite;

/// A client gets this long to send its request headers (slow-loris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after an accept error that is not about one connection (usually out of file
/// descriptors), so the loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves a listener until it fails: each connection speaks HTTP/1.1 (with upgrades) or
/// HTTP/2 with prior knowledge (h2c); requests whose Host (or `:authority`) parses as an app
/// host go to `proxy`, all others to `fallback`, which sees a [`ConnectInfo<SocketAddr>`]
/// extension with the peer address.
///
/// Errors of single connections are logged and do not end the loop; running out of file
/// descriptors is waited out. It returns only when the listener itself is unusable.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, fallback: Router) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => return Err(error),
            Err(error) => {
                tracing::error!(origin = "proxy", %error, "cannot accept connections, retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        tokio::spawn(serve_connection(stream, peer, proxy.clone(), fallback.clone()));
    }
}

/// Errors about one connection that went away before we accepted it.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, fallback: Router) {
    // Small writes (server-sent events, WebSocket frames) should leave at once.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(origin = "client", %peer, %error, "cannot set TCP_NODELAY");
    }
    let affinity = Affinity::default();
    let client = Client {
        peer,
        forwarded_for: rewrite::forwarded_for(peer.ip()),
        affinity: affinity.clone(),
        last_host: Mutex::default(),
    };
    let client = Arc::new(client);
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let fallback = fallback.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(route(request, &client, &proxy, fallback).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(error) = affinity::drive(affinity, connection).await {
        // Clients hang up mid-request all the time; that is not worth more than debug.
        tracing::debug!(origin = "client", %peer, %error, "connection ended with an error");
    }
}

/// What the requests of one client connection share.
struct Client {
    peer: SocketAddr,
    /// `peer` as the value of `X-Forwarded-For`, formatted once per connection.
    forwarded_for: http::HeaderValue,
    affinity: Affinity,
    /// The host the last request named, as sent, and what it parsed as (`None`: not an app
    /// host). Browsers and scripts send the same host on every request of a connection.
    last_host: Mutex<Option<(String, Option<Arc<AppHost>>)>>,
}

impl Client {
    /// [`parse_host`], parsing only a host other than the last one.
    fn app_host(&self, host: &str, apps_domain: &str) -> Option<Arc<AppHost>> {
        let mut last = self.last_host.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some((seen, parsed)) if seen == host => parsed.clone(),
            _ => {
                let parsed = parse_host(host, apps_domain).map(Arc::new);
                *last = Some((host.to_string(), parsed.clone()));
                parsed
            }
        }
    }
}

/// Sends one request to the proxy or to the router, by its host.
async fn route(request: Request<Incoming>, client: &Client, proxy: &Proxy, fallback: Router) -> Response<Body> {
    let peer = client.peer;
    let app_host = request_host(request.uri(), request.headers())
        .and_then(|host| client.app_host(host, &proxy.config().apps_domain));
    match app_host {
        Some(host) => proxy.handle_on(request, peer, &client.forwarded_for, &host, Some(&client.affinity)).await,
        None => {
            // A handler that refuses a request before reading its body leaves the rest to `linger`.
            let mut request = request.map(|body| Body::new(Lingering::new(body)));
            request.extensions_mut().insert(ConnectInfo(peer));
            match fallback.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            }
        }
    }
}
