//! Test fixtures: an upstream app, a gate that admits everything to it, and a running proxy,
//! all on loopback ports chosen by the kernel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use cove_core::WorkspaceId;
use cove_proxy::{ActivityKind, Admitted, AppHost, Config, Gate, Metrics, Proxy, Upstream as UpstreamAddr, Verdict};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

pub const APPS_DOMAIN: &str = "localhost";
/// The app host name every test uses (the proxy's port follows it).
pub const APP_HOST_NAME: &str = "8080--api--alice.localhost";
pub const LABEL: &str = "alice/api";
/// What the fallback router answers.
pub const DASHBOARD: &str = "cove dashboard";

/// The byte at `index` of test payloads: a pattern with a period (251) that is not a power of
/// two, so a lost or repeated chunk changes the checksum.
pub fn pattern_byte(index: u64) -> u8 {
    (index % 251) as u8
}

/// FNV-1a, enough to tell payloads apart.
#[derive(Clone, Copy)]
pub struct Checksum(pub u64);

impl Default for Checksum {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        for byte in data {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A stream of `len` pattern bytes in 64 KiB chunks.
pub fn pattern_stream(len: u64) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    const CHUNK: u64 = 64 * 1024;
    futures::stream::unfold(0u64, move |sent| async move {
        if sent >= len {
            return None;
        }
        let size = CHUNK.min(len - sent);
        let chunk: Vec<u8> = (sent..sent + size).map(pattern_byte).collect();
        Some((Ok(Bytes::from(chunk)), sent + size))
    })
}

/// The checksum of `len` pattern bytes, computed in small pieces (the memory test is watching).
pub fn pattern_checksum(len: u64) -> u64 {
    let mut checksum = Checksum::default();
    let mut start = 0;
    while start < len {
        let end = len.min(start + 64 * 1024);
        let piece: Vec<u8> = (start..end).map(pattern_byte).collect();
        checksum.update(&piece);
        start = end;
    }
    checksum.0
}

/// The test app behind the proxy.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `/sse` sends its second and third event only after a permit each.
    pub sse_permits: Arc<Semaphore>,
}

#[derive(Clone)]
struct UpstreamState {
    sse_permits: Arc<Semaphore>,
}

pub async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_upstream(listener).await
}

/// Serves the test app on a listener the test bound itself (for a late start).
pub async fn serve_upstream(listener: TcpListener) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let (app, sse_permits) = upstream_app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream { addr, sse_permits }
}

/// The test app's routes, for serving on any listener; with the `/sse` permits.
pub fn upstream_app() -> (Router, Arc<Semaphore>) {
    let sse_permits = Arc::new(Semaphore::new(0));
    let app = Router::new()
        .route("/big", get(big))
        .route("/echo", post(echo))
        .route("/sse", get(sse))
        .route("/headers", get(headers))
        .route("/ws", get(ws))
        .route("/ws-bye", get(ws_bye))
        .route("/close", get(close))
        .with_state(UpstreamState { sse_permits: sse_permits.clone() });
    (app, sse_permits)
}

async fn big(Query(query): Query<BTreeMap<String, u64>>) -> Body {
    Body::from_stream(pattern_stream(query.get("bytes").copied().unwrap_or(0)))
}

async fn echo(body: Body) -> Body {
    body
}

async fn sse(State(state): State<UpstreamState>) -> Response {
    let events = futures::stream::unfold(0u32, move |sent| {
        let permits = state.sse_permits.clone();
        async move {
            if sent == 3 {
                return None;
            }
            if sent > 0 {
                permits.acquire().await.unwrap().forget();
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: event {sent}\n\n"))), sent + 1))
        }
    });
    ([("content-type", "text/event-stream"), ("cache-control", "no-cache")], Body::from_stream(events)).into_response()
}

/// The request headers as JSON (name -> values), with hop-by-hop headers in the response that
/// the proxy must drop.
async fn headers(headers: HeaderMap) -> Response {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        seen.entry(name.to_string()).or_default().push(value.to_str().unwrap_or("<binary>").to_string());
    }
    let mut response = Json(seen).into_response();
    let extra = response.headers_mut();
    extra.insert(HeaderName::from_static("x-up-secret"), HeaderValue::from_static("1"));
    extra.insert(HeaderName::from_static("connection"), HeaderValue::from_static("x-up-secret"));
    extra.insert(HeaderName::from_static("keep-alive"), HeaderValue::from_static("timeout=5"));
    extra.insert(HeaderName::from_static("proxy-authenticate"), HeaderValue::from_static("Basic"));
    extra.insert(HeaderName::from_static("x-app"), HeaderValue::from_static("kept"));
    response
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(text),
            Message::Binary(data) => Message::Binary(data),
            // Keep reading: the next read sends the close reply, then ends the loop.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// Answers, then closes the connection (hyper does on `Connection: close`).
async fn close() -> Response {
    ([("connection", "close")], "closing\n").into_response()
}

/// Says "bye" and closes: a WebSocket the app ends.
async fn ws_bye(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        socket.send(Message::Text("bye".into())).await.unwrap();
        socket.send(Message::Close(None)).await.unwrap();
        // Wait for the client's close reply, which ends the stream.
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

/// A gate that admits everything to one upstream and records what the proxy tells it.
pub struct TestGate {
    pub workspace: WorkspaceId,
    pub upstream: UpstreamAddr,
    /// Extra headers the gate asks the proxy to set upstream.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub strip_authorization: bool,
    pub patience: Duration,
    pub websocket_activity: cove_proxy::WebSocketActivity,
    pub activity: Mutex<Vec<ActivityKind>>,
    pub failed: Mutex<Vec<WorkspaceId>>,
    pub hosts: Mutex<Vec<AppHost>>,
    pub admitted: Notify,
}

impl TestGate {
    pub fn new(upstream: SocketAddr) -> Self {
        Self::to(UpstreamAddr::Tcp(upstream))
    }

    pub fn to(upstream: UpstreamAddr) -> Self {
        Self {
            workspace: WorkspaceId::new_random(),
            upstream,
            headers: Vec::new(),
            strip_authorization: false,
            patience: Duration::ZERO,
            websocket_activity: cove_proxy::WebSocketActivity::AnyData,
            activity: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
            hosts: Mutex::new(Vec::new()),
            admitted: Notify::new(),
        }
    }

    pub fn activity(&self) -> Vec<ActivityKind> {
        self.activity.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Gate for TestGate {
    async fn admit(&self, _request: &http::request::Parts, host: &AppHost, _peer: SocketAddr) -> Verdict {
        self.hosts.lock().unwrap().push(host.clone());
        self.admitted.notify_one();
        Verdict::Forward(Admitted {
            workspace: self.workspace,
            label: LABEL.into(),
            upstream: self.upstream.clone(),
            headers: self.headers.clone(),
            strip_authorization: self.strip_authorization,
            connect_patience: self.patience,
            websocket_activity: self.websocket_activity,
        })
    }

    fn upstream_failed(&self, workspace: WorkspaceId) {
        self.failed.lock().unwrap().push(workspace);
    }

    fn activity(&self, workspace: WorkspaceId, kind: ActivityKind) {
        assert_eq!(workspace, self.workspace);
        self.activity.lock().unwrap().push(kind);
    }
}

/// A running proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
}

impl TestProxy {
    pub async fn start(gate: Arc<dyn Gate>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let config = Config { apps_domain: APPS_DOMAIN.to_string(), forwarded_proto: "https".to_string() };
        let proxy = Arc::new(Proxy::new(config, gate, metrics.clone()));
        let fallback = Router::new().route("/api/hello", get(|| async { DASHBOARD })).route(
            "/api/version",
            get(|request: axum::extract::Request| async move { format!("{:?}", request.version()) }),
        );
        tokio::spawn(async move { cove_proxy::serve(listener, proxy, fallback).await.unwrap() });
        Self { addr, metrics }
    }

    /// The Host of app requests, as a browser would send it.
    pub fn app_host(&self) -> String {
        format!("{APP_HOST_NAME}:{}", self.addr.port())
    }

    pub fn app_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app_host())
    }

    /// An HTTP/1.1 client that finds the app host at the proxy.
    pub fn http1(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    /// An HTTP/2 client with prior knowledge (h2c), which finds the app host at the proxy.
    pub fn http2(&self) -> reqwest::Client {
        self.client_builder().http2_prior_knowledge().build().unwrap()
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().no_proxy().resolve(APP_HOST_NAME, self.addr)
    }

    /// Polls the metrics until `line` shows up: a response is recorded when its body is dropped,
    /// which may be a moment after the client read the last byte.
    pub async fn await_metric(&self, line: &str) -> String {
        let text = eventually(|| {
            let text = self.metrics.render();
            text.lines().any(|l| l == line).then_some(text)
        })
        .await;
        text.unwrap_or_else(|| panic!("no {line:?} in\n{}", self.metrics.render()))
    }
}

/// The value of the sample `series` (name and labels) in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` every 10 ms for up to 10 s.
pub async fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts an upstream, a gate admitting to it, and a proxy.
pub async fn setup() -> (Upstream, Arc<TestGate>, TestProxy) {
    setup_with(|_| {}).await
}

/// Like [`setup`], with a chance to change the gate first.
pub async fn setup_with(configure: impl FnOnce(&mut TestGate)) -> (Upstream, Arc<TestGate>, TestProxy) {
    let upstream = start_upstream().await;
    let mut gate = TestGate::new(upstream.addr);
    configure(&mut gate);
    let gate = Arc::new(gate);
    let proxy = TestProxy::start(gate.clone()).await;
    (upstream, gate, proxy)
}
