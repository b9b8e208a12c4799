//! An upstream on a UNIX socket (how the in-workspace agent serves its named apps): plain
//! requests, streamed bodies, WebSocket upgrades and connection reuse work as over TCP, and
//! the gate's extra headers arrive, replacing whatever the client sent under their names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use common::*;
use cove_proxy::Upstream;
use futures::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::net::{TcpStream, UnixListener};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

const SECRET_HEADER: &str = "x-cove-agent-secret";

struct UnixSetup {
    _dir: tempfile::TempDir,
    /// Connections the app accepted.
    accepted: Arc<AtomicUsize>,
    proxy: TestProxy,
}

/// The test app on `agent.sock` in a temp dir, and a proxy whose gate sends everything there
/// with the secret header.
async fn setup_unix() -> UnixSetup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = UnixListener::bind(&path).unwrap().tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let (app, _sse_permits) = upstream_app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut gate = TestGate::to(Upstream::Unix(path));
    gate.headers = vec![(HeaderName::from_static(SECRET_HEADER), HeaderValue::from_static("agent-secret"))];
    let proxy = TestProxy::start(Arc::new(gate)).await;
    UnixSetup { _dir: dir, accepted, proxy }
}

#[tokio::test]
async fn get_over_a_unix_socket_with_extra_headers() {
    let setup = setup_unix().await;
    let proxy = &setup.proxy;
    let client = proxy.http1();
    let response = client
        .get(proxy.app_url("/headers"))
        .header(SECRET_HEADER, "forged-1")
        .header(SECRET_HEADER, "forged-2")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen: BTreeMap<String, Vec<String>> = response.json().await.unwrap();
    assert_eq!(seen[SECRET_HEADER], ["agent-secret"], "{seen:?}");
    assert_eq!(seen["x-other"], ["kept"], "{seen:?}");
    assert_eq!(seen["host"], [proxy.app_host()], "{seen:?}");

    // Sequential requests go over pooled connections, not one connection each.
    for _ in 0..9 {
        let response = client.get(proxy.app_url("/headers")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
    }
    let accepted = setup.accepted.load(Ordering::SeqCst);
    assert!(accepted < 10, "the app accepted {accepted} connections for 10 sequential requests");
}

#[tokio::test]
async fn streamed_post_over_a_unix_socket() {
    const LEN: u64 = 8 * 1024 * 1024;
    let setup = setup_unix().await;
    let proxy = &setup.proxy;
    let mut response = proxy
        .http1()
        .post(proxy.app_url("/echo"))
        .body(reqwest::Body::wrap_stream(pattern_stream(LEN)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut checksum = Checksum::default();
    let mut len = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        len += chunk.len() as u64;
        checksum.update(&chunk);
    }
    assert_eq!((len, checksum.0), (LEN, pattern_checksum(LEN)));
    let w = format!("workspace=\"{LABEL}\"");
    proxy.await_metric(&format!("cove_proxy_bytes_total{{{w},direction=\"in\"}} {LEN}")).await;
}

type Socket = tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn next(socket: &mut Socket) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("no message in time")
}

#[tokio::test]
async fn websocket_echo_over_a_unix_socket() {
    let setup = setup_unix().await;
    let proxy = &setup.proxy;
    let mut request = format!("ws://{}/ws", proxy.addr).into_client_request().unwrap();
    request.headers_mut().insert("host", proxy.app_host().parse().unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
    assert_eq!(response.status(), 101);

    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut socket).await.unwrap().unwrap(), Message::text("hello"));
    let large: Vec<u8> = (0..256 * 1024).map(pattern_byte).collect();
    socket.send(Message::binary(large.clone())).await.unwrap();
    assert_eq!(next(&mut socket).await.unwrap().unwrap(), Message::binary(large));
    socket.close(None).await.unwrap();
    while let Some(message) = next(&mut socket).await {
        assert!(message.unwrap().is_close());
    }
}

#[tokio::test]
async fn socket_appearing_late_is_served_within_patience() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let mut gate = TestGate::to(Upstream::Unix(path.clone()));
    gate.patience = Duration::from_secs(10);
    let gate = Arc::new(gate);
    let proxy = TestProxy::start(gate.clone()).await;
    let client = proxy.http1();
    let url = proxy.app_url("/headers");
    let request = tokio::spawn(async move { client.get(url).send().await.unwrap() });

    // The agent creates its socket 300 ms after the request arrived, like one still starting.
    gate.admitted.notified().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (app, _sse_permits) = upstream_app();
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let response = request.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(gate.failed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn missing_socket_is_502() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(TestGate::to(Upstream::Unix(dir.path().join("nobody.sock"))));
    let proxy = TestProxy::start(gate.clone()).await;
    let response = proxy.http1().get(proxy.app_url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("workspace {LABEL}: nothing answers on its socket")), "{body}");
    assert_eq!(*gate.failed.lock().unwrap(), [gate.workspace]);
}
