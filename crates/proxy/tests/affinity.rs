//! Upstream connections tied to the client connection: a keep-alive client's requests reuse
//! one upstream connection, and one the app closed is replaced without failing a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::serve::ListenerExt;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The test app on a loopback port, counting the connections it accepts, and a proxy to it.
async fn setup_counting() -> (Arc<AtomicUsize>, TestProxy) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let (app, _sse_permits) = upstream_app();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let proxy = TestProxy::start(Arc::new(TestGate::new(addr))).await;
    (accepted, proxy)
}

/// `count` GETs of `path`, one after the other on one client connection; their statuses.
async fn sequential_gets(proxy: &TestProxy, path: &str, count: usize) -> Vec<StatusCode> {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut statuses = Vec::new();
    for _ in 0..count {
        sender.ready().await.unwrap();
        let request = Request::get(path).header("host", proxy.app_host()).body(Empty::<Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        statuses.push(response.status());
        response.into_body().collect().await.unwrap();
    }
    statuses
}

#[tokio::test]
async fn a_keep_alive_client_reuses_one_upstream_connection() {
    let (accepted, proxy) = setup_counting().await;
    assert_eq!(sequential_gets(&proxy, "/headers", 5).await, [StatusCode::OK; 5]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_connection_the_app_closed_is_replaced() {
    let (accepted, proxy) = setup_counting().await;
    assert_eq!(sequential_gets(&proxy, "/close", 3).await, [StatusCode::OK; 3]);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
