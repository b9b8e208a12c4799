//! Stage 4, forward: one request to an app host, end to end.
//!
//! [`Proxy::handle`] runs the stages in order — admit, rewrite, forward, respond — each a
//! function below. Failures say where they came from (the client, the upstream, or us), both
//! in the logs and in the status the client gets.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::account::{AccountedBody, Exchange, RequestTally, TalliedBody};
use crate::affinity::Affinity;
use crate::gate::{ActivityKind, Admitted, Gate, Verdict};
use crate::h1;
use crate::host::AppHost;
use crate::metrics::Metrics;
use crate::rewrite::{self, Forwarding};
use crate::tunnel;
use crate::upstream::{self, Connector, Upstream};

/// How often a refused connection is retried while the upstream may still be starting.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// How long one connection attempt may take. Containers are on the same host, so a connect
/// that hangs this long means a black hole, not a slow network.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle upstream connections are closed after this; apps usually keep theirs a bit longer.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle upstream connections kept per app. Below the number of concurrent clients, the
/// surplus is closed after every response and opened again for the next: a handshake per
/// request. Idle sockets are cheap and expire after `POOL_IDLE_TIMEOUT`.
const POOL_MAX_IDLE_PER_UPSTREAM: usize = 256;

/// What the proxy needs to know about the deployment.
pub struct Config {
    /// The domain under which app hosts live (`localhost`, `apps.example.com`).
    pub apps_domain: String,
    /// Scheme the client used, for X-Forwarded-Proto ("http" unless TLS is terminated in front).
    pub forwarded_proto: String,
}

/// The forwarding engine: the gate, the configuration, one pool of upstream connections
/// shared by all requests, and the metrics.
pub struct Proxy {
    config: Config,
    /// `config.forwarded_proto` as a header value, made once.
    forwarded_proto: HeaderValue,
    gate: Arc<dyn Gate>,
    metrics: Arc<Metrics>,
    client: Client<Connector, Body>,
}

/// A response body from the app, however it was read (hyper's client or `h1`).
trait AppBody:
    hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Into<axum::BoxError>> + Send + Unpin + 'static
{
}

impl<B> AppBody for B where
    B: hyper::body::Body<Data = Bytes, Error: std::fmt::Display + Into<axum::BoxError>> + Send + Unpin + 'static
{
}

/// Why a request could not be forwarded, by whose doing.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    /// Nothing accepted a connection at the upstream address (within the patience).
    #[error("nothing accepted a connection")]
    Unreachable(#[source] Box<dyn StdError + Send + Sync>),
    /// The client's request body broke off while it was being sent upstream.
    #[error("the client broke off its request")]
    Client(#[source] Box<dyn StdError + Send + Sync>),
    /// The app accepted the connection but did not answer properly.
    #[error("the app did not answer properly")]
    Upstream(#[source] Box<dyn StdError + Send + Sync>),
    /// We could not build a valid request from the client's one.
    #[error("could not build the upstream request")]
    Proxy(#[source] http::Error),
}

impl Proxy {
    pub fn new(config: Config, gate: Arc<dyn Gate>, metrics: Arc<Metrics>) -> Self {
        let connector = Connector { timeout: CONNECT_TIMEOUT };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_UPSTREAM)
            .pool_timer(TokioTimer::new())
            // The rewrite always sets Host to what the client sent, never to the upstream address.
            .set_host(false)
            .build(connector);
        let forwarded_proto =
            HeaderValue::from_str(&config.forwarded_proto).unwrap_or_else(|_| HeaderValue::from_static("http"));
        Self { config, forwarded_proto, gate, metrics, client }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// One request to an app host, end to end. Never fails: errors become 4xx/5xx responses.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr, host: AppHost) -> Response<Body> {
        self.handle_on(request, peer, &rewrite::forwarded_for(peer.ip()), &host, None).await
    }

    /// [`Proxy::handle`] for a request that came on an HTTP/1.1 client connection with
    /// upstream connections of its own (see `affinity`).
    pub(crate) async fn handle_on(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        forwarded_for: &HeaderValue,
        host: &AppHost,
        affinity: Option<&Affinity>,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            // A tunnel to wherever the client likes is not an app request; apps get plain HTTP
            // and WebSocket upgrades.
            crate::linger(body);
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "cove does not forward CONNECT requests\n".into());
        }
        let admitted = match self.admit(&parts, host, peer).await {
            Verdict::Forward(admitted) => admitted,
            Verdict::Respond(response) => {
                crate::linger(body);
                return response;
            }
        };
        let started = Instant::now();
        // A busy connection reports its activity once a second, not once a request.
        if rewrite::is_user_activity(&parts.headers)
            && affinity.is_none_or(|affinity| affinity.activity_due(admitted.workspace, started))
        {
            self.gate.activity(admitted.workspace, ActivityKind::Http);
        }

        let tally = Arc::new(RequestTally::default());
        let websocket = rewrite::is_websocket_upgrade(&parts);
        // The handle to the client's side of an upgrade lives in the request's extensions,
        // which do not travel upstream.
        let client_upgrade = if websocket { parts.extensions.remove::<OnUpgrade>() } else { None };
        // An upgraded connection outlives the client connection's HTTP phase, and HTTP/2
        // streams run in tasks of their own: those go through the shared pool.
        let affinity = affinity.filter(|_| !websocket && version_is_http1(parts.version));
        let forwarding = Forwarding {
            upstream: None,
            peer: forwarded_for,
            host: &host.host,
            proto: &self.forwarded_proto,
            strip_authorization: admitted.strip_authorization,
            websocket,
            headers: &admitted.headers,
        };
        match affinity {
            Some(affinity) if h1::applies(&parts.method, &body) => {
                let head_only = parts.method == Method::HEAD;
                let outcome = match rewrite::encode_request_head(&parts, &forwarding) {
                    Ok(request) => self.forward_plain(&request, head_only, &admitted, affinity).await,
                    Err(error) => Err(ForwardError::Proxy(error)),
                };
                self.finish(outcome, started, tally, &admitted, None)
            }
            affinity => {
                let body = Body::new(TalliedBody::new(body, tally.clone()));
                // The pool needs the upstream's authority; a connection of its own does not.
                let upstream = match affinity {
                    Some(_) => Ok(None),
                    None => admitted.upstream.authority().map(Some),
                };
                let request = upstream.and_then(|upstream| {
                    rewrite::upstream_request(parts, body, &Forwarding { upstream, ..forwarding })
                });
                let outcome = match request {
                    Ok(request) => self.forward(request, &admitted, &tally, affinity).await,
                    Err(error) => Err(ForwardError::Proxy(error)),
                };
                self.finish(outcome, started, tally, &admitted, client_upgrade)
            }
        }
    }

    /// Records the exchange and answers the client: the app's response, or the failure.
    fn finish<B: AppBody>(
        &self,
        outcome: Result<Response<B>, ForwardError>,
        started: Instant,
        tally: Arc<RequestTally>,
        admitted: &Admitted,
        client_upgrade: Option<OnUpgrade>,
    ) -> Response<Body> {
        let exchange = Exchange {
            metrics: self.metrics.clone(),
            label: admitted.label.clone(),
            status: 0,
            request: tally,
            latency: started.elapsed(),
            bytes_out: 0,
        };
        match outcome {
            Ok(response) => self.respond(response, exchange, admitted, client_upgrade),
            Err(error) => self.fail(error, exchange, admitted),
        }
    }

    async fn admit(&self, parts: &Parts, host: &AppHost, peer: SocketAddr) -> Verdict {
        self.gate.admit(parts, host, peer).await
    }

    /// Sends the request once. The body cannot be replayed once part of it went out, so the
    /// patience is spent before sending: on waiting until the upstream accepts connections.
    async fn forward(
        &self,
        request: Request<Body>,
        admitted: &Admitted,
        tally: &RequestTally,
        affinity: Option<&Affinity>,
    ) -> Result<Response<Incoming>, ForwardError> {
        await_patience(admitted).await?;
        if let Some(affinity) = affinity {
            return forward_on(request, &admitted.upstream, tally, affinity).await;
        }
        self.client.request(request).await.map_err(|error| {
            if error.is_connect() {
                ForwardError::Unreachable(error.into())
            } else {
                exchange_error(error.into(), tally)
            }
        })
    }

    /// Sends a bodiless request with a safe method on the client connection's own upstream
    /// connection, written and read by the proxy itself.
    async fn forward_plain(
        &self,
        request: &[u8],
        head_only: bool,
        admitted: &Admitted,
        affinity: &Affinity,
    ) -> Result<Response<h1::UpstreamBody>, ForwardError> {
        await_patience(admitted).await?;
        let sent = h1::send(request, head_only, &admitted.upstream, CONNECT_TIMEOUT, affinity).await;
        sent.map_err(|error| match error {
            h1::ExchangeError::Connect(error) => ForwardError::Unreachable(error.into()),
            error => ForwardError::Upstream(error.into()),
        })
    }

    /// Passes the app's response to the client: hop-by-hop headers out, the body streamed and
    /// counted, and for a `101 Switching Protocols` the two upgraded connections joined.
    fn respond<B: AppBody>(
        &self,
        response: Response<B>,
        mut exchange: Exchange,
        admitted: &Admitted,
        client_upgrade: Option<OnUpgrade>,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let (Some(client), Some(upstream)) = (client_upgrade, parts.extensions.remove::<OnUpgrade>()) else {
                let error = "the app switched protocols without being asked to".into();
                return self.fail(ForwardError::Upstream(error), exchange, admitted);
            };
            tunnel::spawn(client, upstream, self.gate.clone(), self.metrics.clone(), admitted.clone());
        }
        rewrite::response_headers(&mut parts.headers, switching);

        exchange.status = parts.status.as_u16();
        // A fresh response: the upstream's extensions are about the upstream connection.
        let mut out = Response::new(Body::new(AccountedBody::new(body, exchange)));
        *out.status_mut() = parts.status;
        *out.headers_mut() = parts.headers;
        out
    }

    /// Logs a failed exchange by origin and answers the client.
    fn fail(&self, error: ForwardError, mut exchange: Exchange, admitted: &Admitted) -> Response<Body> {
        let workspace = &admitted.label;
        let place = match &admitted.upstream {
            Upstream::Tcp(addr) => format!("on port {}", addr.port()),
            Upstream::Unix(_) => "on its socket".to_string(),
        };
        let cause = causes(&error);
        let (status, message) = match &error {
            ForwardError::Unreachable(_) => {
                tracing::warn!(origin = "upstream", %workspace, upstream = %admitted.upstream, %cause, "app unreachable");
                self.gate.upstream_failed(admitted.workspace);
                (StatusCode::BAD_GATEWAY, format!("workspace {workspace}: nothing answers {place}\n"))
            }
            ForwardError::Upstream(_) => {
                tracing::warn!(origin = "upstream", %workspace, upstream = %admitted.upstream, %cause, "app failed");
                (StatusCode::BAD_GATEWAY, format!("workspace {workspace}: the app {place} did not answer properly\n"))
            }
            ForwardError::Client(_) => {
                tracing::debug!(origin = "client", %workspace, %cause, "client broke off");
                (StatusCode::BAD_REQUEST, "the request body broke off before it was complete\n".to_string())
            }
            ForwardError::Proxy(_) => {
                tracing::error!(origin = "proxy", %workspace, %cause, "cannot forward");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("workspace {workspace}: cove could not forward this request\n"),
                )
            }
        };
        exchange.status = status.as_u16();
        let response = text_response(status, message);
        response.map(|body| Body::new(AccountedBody::new(body, exchange)))
    }
}

/// Sends a request over the client connection's own upstream connection: the kept one if it
/// is still open, else a new one, which the client connection's task then drives.
async fn forward_on(
    mut request: Request<Body>,
    upstream: &Upstream,
    tally: &RequestTally,
    affinity: &Affinity,
) -> Result<Response<Incoming>, ForwardError> {
    if let Some(mut sender) = affinity.take(upstream) {
        // The last response has ended (HTTP/1.1 clients wait for it), so this returns as soon
        // as the connection has noticed; or an error if the app closed it meanwhile.
        if sender.ready().await.is_ok() {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    affinity.keep(upstream.clone(), sender);
                    return Ok(response);
                }
                // The app closed the idle connection before the request went out: nothing was
                // sent, so it is safe to send on a new one.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(exchange_error(error.into_error().into(), tally)),
                },
            }
        }
    }
    let connection = upstream::connect_with_timeout(upstream, CONNECT_TIMEOUT)
        .await
        .map_err(|error| ForwardError::Unreachable(error.into()))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(connection))
        .await
        .map_err(|error| ForwardError::Upstream(error.into()))?;
    affinity.adopt(async move {
        if let Err(error) = connection.await {
            tracing::debug!(origin = "upstream", %error, "upstream connection ended with an error");
        }
    });
    let response = sender.send_request(request).await.map_err(|error| exchange_error(error.into(), tally))?;
    affinity.keep(upstream.clone(), sender);
    Ok(response)
}

/// An exchange failed after the connection was made: the client's doing if its request body
/// broke off, else the app's.
fn exchange_error(error: Box<dyn StdError + Send + Sync>, tally: &RequestTally) -> ForwardError {
    if tally.failed() {
        ForwardError::Client(error)
    } else {
        ForwardError::Upstream(error)
    }
}

fn version_is_http1(version: Version) -> bool {
    version == Version::HTTP_11 || version == Version::HTTP_10
}

fn text_response(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Right after a wake the app may not listen yet: waits for it, as long as the gate allows.
async fn await_patience(admitted: &Admitted) -> Result<(), ForwardError> {
    if admitted.connect_patience.is_zero() {
        return Ok(());
    }
    await_listener(&admitted.upstream, admitted.connect_patience)
        .await
        .map_err(|error| ForwardError::Unreachable(error.into()))
}

/// Waits until something accepts connections at `upstream`, for at most `patience`.
/// The probe connection is dropped at once; the request then goes through the pool.
async fn await_listener(upstream: &Upstream, patience: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = tokio::time::timeout_at(deadline, upstream.probe()).await;
        let error = match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_elapsed) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(error);
        }
        tokio::time::sleep_until((now + CONNECT_RETRY_INTERVAL).min(deadline)).await;
    }
}

/// An error and its sources, "a: b: c", for one log field.
fn causes(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
