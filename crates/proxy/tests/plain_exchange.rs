//! Bodiless GET/HEAD/OPTIONS requests, which the proxy writes and reads itself (not through
//! hyper's client), against an app that answers with hand-written bytes: every way RFC 9112
//! delimits a response body, interim responses, heads split across reads, connections the
//! app closes, and answers that are not HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the hand-written app saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    heads: Mutex<Vec<String>>,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> String {
        self.heads.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

/// An app that answers each path with fixed bytes, written a few at a time.
async fn scripted_app() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let app_seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            app_seen.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_script(stream, app_seen.clone()));
        }
    });
    (addr, seen)
}

/// Reads one request head; `None` when the proxy closed the connection.
async fn read_head(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = pending.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8(pending.drain(..end + 4).collect()).unwrap();
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `bytes` in pieces of `piece` bytes, each flushed on its own.
async fn write_in_pieces(stream: &mut TcpStream, bytes: &[u8], piece: usize) {
    for part in bytes.chunks(piece) {
        stream.write_all(part).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_script(mut stream: TcpStream, seen: Arc<Seen>) {
    stream.set_nodelay(true).unwrap();
    let mut pending = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut pending).await {
        seen.heads.lock().unwrap().push(head.clone());
        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
        let path = path.split('?').next().unwrap_or_default();
        match path {
            "/chunked" => {
                let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
                    5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
                write_in_pieces(&mut stream, response, 3).await;
            }
            "/length" => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\nhello").await.unwrap()
            }
            "/slow-length" => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                stream.write_all(b"-last").await.unwrap();
            }
            "/until-close" => {
                write_in_pieces(&mut stream, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", 7)
                    .await;
                return;
            }
            "/head" => stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n").await.unwrap(),
            "/not-modified" => stream
                .write_all(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\n")
                .await
                .unwrap(),
            "/early-hints" => stream
                .write_all(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                )
                .await
                .unwrap(),
            "/close" => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye")
                    .await
                    .unwrap();
                return;
            }
            // As an app whose keep-alive timeout just ran out: answers, then closes without saying so.
            "/then-idle-close" => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                return;
            }
            "/big-head" => {
                let big = "b".repeat(40 * 1024);
                let response = format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 3\r\n\r\nbig");
                write_in_pieces(&mut stream, response.as_bytes(), 8 * 1024).await;
            }
            "/extra" => stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").await.unwrap(),
            "/truncated" => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort").await.unwrap();
                return;
            }
            "/bad-chunk" => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await.unwrap();
                return;
            }
            "/garbage" => {
                stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
                return;
            }
            "/silent-close" => return,
            "/huge-head" => {
                let huge = "h".repeat(300 * 1024);
                let response = format!("HTTP/1.1 200 OK\r\nX-Huge: {huge}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
                return;
            }
            "/switch" => {
                stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
                return;
            }
            _ => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await.unwrap(),
        }
    }
}

/// One client connection to the proxy, as a browser keeps one.
async fn client(proxy: &TestProxy) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// Status, headers and the body (or the error that ended it) of one request.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    proxy: &TestProxy,
    method: Method,
    path: &str,
) -> (StatusCode, http::HeaderMap, Result<Bytes, hyper::Error>) {
    sender.ready().await.unwrap();
    let request = Request::builder().method(method).uri(path).header("host", proxy.app_host());
    let response = sender.send_request(request.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.map(|collected| collected.to_bytes()))
}

async fn setup() -> (TestProxy, Arc<Seen>) {
    let (addr, seen) = scripted_app().await;
    (TestProxy::start(Arc::new(TestGate::new(addr))).await, seen)
}

#[tokio::test]
async fn every_body_framing_arrives_whole_and_the_connection_is_reused_when_it_may_be() {
    let (proxy, seen) = setup().await;
    let mut sender = client(&proxy).await;

    let (status, headers, body) = exchange(&mut sender, &proxy, Method::GET, "/length?x=1").await;
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("hello")));
    assert_eq!(headers["x-app"], "1");
    assert_eq!(headers["content-length"], "5");
    let head = seen.last_head();
    assert!(head.starts_with("GET /length?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("host: {}\r\n", proxy.app_host())), "{head}");
    assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection:"), "{head}");

    // Chunked, in 3-byte pieces, with an extension and a trailer: decoded; the bogus
    // Content-Length next to Transfer-Encoding does not reach the client.
    let (status, headers, body) = exchange(&mut sender, &proxy, Method::GET, "/chunked").await;
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("hello world")));
    assert_ne!(headers.get("content-length").map(|v| v.as_bytes()), Some(&b"99"[..]));

    let (_, _, body) = exchange(&mut sender, &proxy, Method::GET, "/slow-length").await;
    assert_eq!(body.unwrap(), Bytes::from("first-last"));

    let (status, headers, body) = exchange(&mut sender, &proxy, Method::HEAD, "/head").await;
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::new()));
    assert_eq!(headers["content-length"], "1000");

    let (status, headers, body) = exchange(&mut sender, &proxy, Method::GET, "/not-modified").await;
    assert_eq!((status, body.unwrap()), (StatusCode::NOT_MODIFIED, Bytes::new()));
    assert_eq!(headers["etag"], "\"x\"");

    let (status, _, body) = exchange(&mut sender, &proxy, Method::GET, "/early-hints").await;
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("ok")));

    let (status, headers, body) = exchange(&mut sender, &proxy, Method::OPTIONS, "/big-head").await;
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("big")));
    assert_eq!(headers["x-big"].len(), 40 * 1024);
    assert_eq!(seen.connections(), 1, "all of the above on one upstream connection");

    // A body that ends when the app closes: whole, and the next request needs a new connection.
    let (status, _, body) = exchange(&mut sender, &proxy, Method::GET, "/until-close").await;
    assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("until close")));
    let (_, _, body) = exchange(&mut sender, &proxy, Method::GET, "/close").await;
    assert_eq!(body.unwrap(), Bytes::from("bye"));
    assert_eq!(seen.connections(), 2);
    let (_, _, body) = exchange(&mut sender, &proxy, Method::GET, "/extra").await;
    assert_eq!(body.unwrap(), Bytes::from("ok"), "bytes after the body are not part of it");
    let (_, _, body) = exchange(&mut sender, &proxy, Method::GET, "/length").await;
    assert_eq!(body.unwrap(), Bytes::from("hello"));
    assert_eq!(seen.connections(), 4, "neither a closed connection nor one that sent too much is reused");
}

#[tokio::test]
async fn a_kept_connection_the_app_closed_is_replaced_without_failing_the_request() {
    let (proxy, seen) = setup().await;
    let mut sender = client(&proxy).await;
    for round in 1..=3 {
        let (status, _, body) = exchange(&mut sender, &proxy, Method::GET, "/then-idle-close").await;
        assert_eq!((status, body.unwrap()), (StatusCode::OK, Bytes::from("ok")), "round {round}");
        // Let the app's close arrive, so that the next request finds the kept connection dead.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(seen.connections(), 3);
}

#[tokio::test]
async fn broken_answers_are_502_or_a_broken_off_body() {
    let (proxy, _seen) = setup().await;
    for path in ["/garbage", "/silent-close", "/huge-head", "/switch"] {
        let mut sender = client(&proxy).await;
        let (status, _, body) = exchange(&mut sender, &proxy, Method::GET, path).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}");
        let text = body.unwrap();
        assert!(String::from_utf8_lossy(&text).contains("did not answer properly"), "{path}: {text:?}");
    }
    // The status line came before the body broke: the client's connection is cut (before or
    // after the head reached it), never a short success.
    for path in ["/truncated", "/bad-chunk"] {
        let mut sender = client(&proxy).await;
        sender.ready().await.unwrap();
        let request = Request::get(path).header("host", proxy.app_host()).body(Empty::new()).unwrap();
        match sender.send_request(request).await {
            Ok(response) => {
                let body = response.into_body().collect().await;
                assert!(body.is_err(), "{path}: a whole body {body:?}");
            }
            Err(error) => assert!(!error.is_user(), "{path}: {error}"),
        }
    }
    // The proxy is still fine afterwards.
    let mut sender = client(&proxy).await;
    let (_, _, body) = exchange(&mut sender, &proxy, Method::GET, "/length").await;
    assert_eq!(body.unwrap(), Bytes::from("hello"));
}
