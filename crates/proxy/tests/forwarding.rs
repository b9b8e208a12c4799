//! Requests through the proxy: headers, HTTP/2, the fallback router, gate verdicts, upstreams
//! that are not (yet) there, activity and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::*;
use cove_core::WorkspaceId;
use cove_proxy::{ActivityKind, AppHost, Gate, Verdict};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Headers = BTreeMap<String, Vec<String>>;

/// Sends exactly these headers over HTTP/1.1 (reqwest would tidy some of them up).
async fn send_raw(addr: SocketAddr, request: Request<Empty<Bytes>>) -> (http::response::Parts, Bytes) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

fn values<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers.get(name).map(|values| values.iter().map(String::as_str).collect()).unwrap_or_default()
}

#[tokio::test]
async fn forwarded_headers() {
    let (_upstream, gate, proxy) = setup_with(|gate| gate.strip_authorization = true).await;
    // Host as sent, mixed case and all.
    let host = format!("8080--API--alice.localhost:{}", proxy.addr.port());
    let request = Request::get("/headers")
        .header("host", &host)
        .header("connection", "X-Secret, keep-alive")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("upgrade", "foo/1")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "gopher")
        .header("cookie", "theme=dark; cove_app=secret")
        .header("cookie", "lang=en")
        .header("authorization", "Bearer cove_secret")
        .header("user-agent", "tests/1")
        .body(Empty::new())
        .unwrap();
    let (response, body) = send_raw(proxy.addr, request).await;
    assert_eq!(response.status, StatusCode::OK);
    let seen: Headers = serde_json::from_slice(&body).unwrap();

    assert_eq!(values(&seen, "host"), [host.as_str()]);
    assert_eq!(values(&seen, "x-forwarded-for"), ["203.0.113.7, 127.0.0.1"]);
    assert_eq!(values(&seen, "x-forwarded-host"), [host.as_str()]);
    assert_eq!(values(&seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&seen, "cookie"), ["theme=dark; lang=en"]);
    assert_eq!(values(&seen, "user-agent"), ["tests/1"]);
    for gone in ["authorization", "x-secret", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"]
    {
        assert!(!seen.contains_key(gone), "{gone} reached the app: {seen:?}");
    }
    // `connection` may be the upstream hop's own; it must not be the client's.
    assert!(!values(&seen, "connection").iter().any(|v| v.to_ascii_lowercase().contains("x-secret")), "{seen:?}");

    // And the way back: the app's hop-by-hop headers stay behind.
    assert_eq!(response.headers["x-app"], "kept");
    for gone in ["x-up-secret", "keep-alive", "proxy-authenticate"] {
        assert!(!response.headers.contains_key(gone), "{gone} reached the client: {:?}", response.headers);
    }
    assert_eq!(gate.hosts.lock().unwrap()[0].host, host.to_ascii_lowercase());
}

#[tokio::test]
async fn connect_is_refused_before_the_gate() {
    let (_upstream, gate, proxy) = setup().await;
    let request = Request::connect(proxy.app_host()).header("host", proxy.app_host()).body(Empty::new()).unwrap();
    let (response, _body) = send_raw(proxy.addr, request).await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(gate.hosts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn authorization_kept_unless_asked_and_lone_app_cookie_dropped() {
    let (_upstream, _gate, proxy) = setup().await;
    let response = proxy
        .http1()
        .get(proxy.app_url("/headers"))
        .header("authorization", "Basic YXBwOnVzZXI=")
        .header("cookie", "cove_app=secret")
        .send()
        .await
        .unwrap();
    let seen: Headers = response.json().await.unwrap();
    assert_eq!(values(&seen, "authorization"), ["Basic YXBwOnVzZXI="]);
    assert!(!seen.contains_key("cookie"), "{seen:?}");
}

#[tokio::test]
async fn http2_prior_knowledge_through_the_proxy() {
    let (_upstream, _gate, proxy) = setup().await;
    let client = proxy.http2();

    let response = client.get(proxy.app_url("/headers")).header("cookie", "a=1; cove_app=x").send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()["x-app"], "kept");
    let seen: Headers = response.json().await.unwrap();
    // :authority became Host for the HTTP/1.1 app.
    assert_eq!(values(&seen, "host"), [proxy.app_host().as_str()]);
    assert_eq!(values(&seen, "x-forwarded-host"), [proxy.app_host().as_str()]);
    assert_eq!(values(&seen, "cookie"), ["a=1"]);

    let len = 1024 * 1024 + 7;
    let response =
        client.post(proxy.app_url("/echo")).body(reqwest::Body::wrap_stream(pattern_stream(len))).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len() as u64, len);
    let mut checksum = Checksum::default();
    checksum.update(&body);
    assert_eq!(checksum.0, pattern_checksum(len));
}

#[tokio::test]
async fn fallback_router_serves_other_hosts() {
    let (_upstream, gate, proxy) = setup().await;
    for (client, version) in [(proxy.http1(), "HTTP/1.1"), (proxy.http2(), "HTTP/2.0")] {
        let base = format!("http://127.0.0.1:{}", proxy.addr.port());
        let hello = client.get(format!("{base}/api/hello")).send().await.unwrap();
        assert_eq!(hello.status(), StatusCode::OK);
        assert_eq!(hello.text().await.unwrap(), DASHBOARD);
        let seen_version = client.get(format!("{base}/api/version")).send().await.unwrap().text().await.unwrap();
        assert_eq!(seen_version, version);
    }
    assert!(gate.hosts.lock().unwrap().is_empty(), "the gate saw a dashboard request");
}

/// A gate that answers every request itself.
struct RespondGate;

#[async_trait::async_trait]
impl Gate for RespondGate {
    async fn admit(&self, _request: &http::request::Parts, _host: &AppHost, _peer: SocketAddr) -> Verdict {
        let response: Response = (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "https://cove.example/login?next=%2F"), ("set-cookie", "cove_state=1; HttpOnly")],
            Body::from("sign in first"),
        )
            .into_response();
        Verdict::Respond(response)
    }

    fn upstream_failed(&self, _workspace: WorkspaceId) {
        panic!("nothing was forwarded");
    }

    fn activity(&self, _workspace: WorkspaceId, _kind: ActivityKind) {
        panic!("nothing was forwarded");
    }
}

#[tokio::test]
async fn respond_verdict_is_passed_through_unchanged() {
    let proxy = TestProxy::start(Arc::new(RespondGate)).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .resolve(APP_HOST_NAME, proxy.addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(proxy.app_url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.headers()["location"], "https://cove.example/login?next=%2F");
    assert_eq!(response.headers()["set-cookie"], "cove_state=1; HttpOnly");
    assert_eq!(response.text().await.unwrap(), "sign in first");
}

/// An address where nothing listens (bound, then closed).
async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn refused_connection_is_502_after_patience() {
    let dead = closed_port().await;
    let patience = Duration::from_millis(300);
    let (_upstream, gate, proxy) = setup_with(|gate| {
        gate.upstream = cove_proxy::Upstream::Tcp(dead);
        gate.patience = patience;
    })
    .await;
    let started = Instant::now();
    let response = proxy.http1().get(proxy.app_url("/")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("workspace {LABEL}: nothing answers on port {}", dead.port())), "{body}");
    assert!(waited >= patience, "gave up after {waited:?}");
    assert_eq!(*gate.failed.lock().unwrap(), [gate.workspace]);
    proxy.await_metric(&format!("cove_proxy_requests_total{{workspace=\"{LABEL}\",code=\"502\"}} 1")).await;
}

#[tokio::test]
async fn refused_connection_without_patience_fails_at_once() {
    let dead = closed_port().await;
    let (_upstream, gate, proxy) = setup_with(|gate| gate.upstream = cove_proxy::Upstream::Tcp(dead)).await;
    let response = proxy.http1().get(proxy.app_url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(*gate.failed.lock().unwrap(), [gate.workspace]);
}

#[tokio::test]
async fn upstream_starting_late_is_served_within_patience() {
    let late = closed_port().await;
    let (_upstream, gate, proxy) = setup_with(|gate| {
        gate.upstream = cove_proxy::Upstream::Tcp(late);
        gate.patience = Duration::from_secs(10);
    })
    .await;
    let client = proxy.http1();
    let url = proxy.app_url("/headers");
    let request = tokio::spawn(async move { client.get(url).send().await.unwrap() });

    // The app comes up 300 ms after the request arrived, like a container still booting.
    gate.admitted.notified().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    serve_upstream(TcpListener::bind(late).await.unwrap()).await;

    let response = request.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen: Headers = response.json().await.unwrap();
    assert_eq!(values(&seen, "host"), [proxy.app_host().as_str()]);
    assert!(gate.failed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn health_probes_are_not_activity() {
    let (_upstream, gate, proxy) = setup().await;
    let client = proxy.http1();
    for agent in ["kube-probe/1.29", "Prometheus/2.51.0", "cove-probe"] {
        let response = client.get(proxy.app_url("/headers")).header("user-agent", agent).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(gate.activity().is_empty(), "{:?}", gate.activity());
    let response = client.get(proxy.app_url("/headers")).header("user-agent", "Mozilla/5.0").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(gate.activity(), [ActivityKind::Http]);
}

#[tokio::test]
async fn metrics_count_forwarded_requests() {
    let (_upstream, _gate, proxy) = setup().await;
    let client = proxy.http1();
    for _ in 0..2 {
        let body = client.get(proxy.app_url("/big?bytes=1000")).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), 1000);
    }
    let echoed = client.post(proxy.app_url("/echo")).body(vec![7u8; 500]).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(echoed.len(), 500);
    let missing = client.get(proxy.app_url("/missing")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    missing.bytes().await.unwrap();

    let w = format!("workspace=\"{LABEL}\"");
    proxy.await_metric(&format!("cove_proxy_upstream_latency_seconds_count{{{w}}} 4")).await;
    let text = proxy.metrics.render();
    for line in [
        format!("cove_proxy_requests_total{{{w},code=\"200\"}} 3"),
        format!("cove_proxy_requests_total{{{w},code=\"404\"}} 1"),
        format!("cove_proxy_bytes_total{{{w},direction=\"in\"}} 500"),
        format!("cove_proxy_bytes_total{{{w},direction=\"out\"}} 2500"),
        format!("cove_proxy_upstream_latency_seconds_bucket{{{w},le=\"+Inf\"}} 4"),
        "# TYPE cove_proxy_upstream_latency_seconds histogram".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}
