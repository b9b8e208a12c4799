//! WebSocket upgrades pass through: echo both ways, activity, and a clean end whichever side
//! closes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use cove_proxy::ActivityKind;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `path` on the app host, through the proxy.
async fn connect(proxy: &TestProxy, path: &str) -> Socket {
    let mut request = format!("ws://{}{path}", proxy.addr).into_client_request().unwrap();
    request.headers_mut().insert("host", proxy.app_host().parse().unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (socket, response) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await.unwrap();
    assert_eq!(response.status(), 101);
    socket
}

async fn next(socket: &mut Socket) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("no message in time").map(|m| m.unwrap())
}

/// Polls until the tunnel's bytes were recorded, which happens when the tunnel task ends.
async fn await_tunnel_end(proxy: &TestProxy) {
    let series = format!("cove_proxy_bytes_total{{workspace=\"{LABEL}\",direction=\"in\"}}");
    let ended = eventually(|| metric(&proxy.metrics.render(), &series).filter(|bytes| *bytes > 0.0)).await;
    assert!(ended.is_some(), "the tunnel did not end:\n{}", proxy.metrics.render());
}

#[tokio::test]
async fn websocket_echo_and_client_close() {
    let (_upstream, gate, proxy) = setup().await;
    let mut socket = connect(&proxy, "/ws").await;

    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut socket).await, Some(Message::text("hello")));
    let large: Vec<u8> = (0..1024 * 1024).map(pattern_byte).collect();
    socket.send(Message::binary(large.clone())).await.unwrap();
    assert_eq!(next(&mut socket).await, Some(Message::binary(large)));

    assert!(gate.activity().contains(&ActivityKind::Http), "the upgrade request is activity");
    let websocket_activity = eventually(|| gate.activity().contains(&ActivityKind::WebSocket).then_some(())).await;
    assert!(websocket_activity.is_some(), "{:?}", gate.activity());
    // Throttled: the messages above came within a second, so they were reported once or twice, not per read.
    let reports = gate.activity().iter().filter(|kind| **kind == ActivityKind::WebSocket).count();
    assert!(reports <= 2, "{reports} reports");

    socket.close(None).await.unwrap();
    while let Some(message) = next(&mut socket).await {
        assert!(message.is_close(), "unexpected {message:?}");
    }
    // After the app closed, the client closes its end, as browsers do.
    drop(socket);
    await_tunnel_end(&proxy).await;
}

#[tokio::test]
async fn websocket_closed_by_the_app() {
    let (_upstream, _gate, proxy) = setup().await;
    let mut socket = connect(&proxy, "/ws-bye").await;
    assert_eq!(next(&mut socket).await, Some(Message::text("bye")));
    assert!(next(&mut socket).await.unwrap().is_close());
    // tungstenite replies to the close on the next read, then sees the end of the stream.
    assert_eq!(next(&mut socket).await, None);
    // The client keeps its end open: the tunnel ends anyway, once the grace after the app's
    // close has passed.
    await_tunnel_end(&proxy).await;
    drop(socket);
}

/// VS Code's rule: an idle tab's keep-alives (header-only protocol messages) and pings pass
/// through but are not activity; a message with a body is.
#[tokio::test]
async fn keep_alive_frames_are_not_activity_for_code_server() {
    let (_upstream, gate, proxy) =
        setup_with(|g| g.websocket_activity = cove_proxy::WebSocketActivity::code_server()).await;
    let mut socket = connect(&proxy, "/ws").await;
    let keep_alive = vec![9u8; cove_proxy::CODE_SERVER_CONTROL_MESSAGE_BYTES as usize];
    for _ in 0..5 {
        socket.send(Message::binary(keep_alive.clone())).await.unwrap();
        // Echoed: it went through the tunnel both ways.
        assert_eq!(next(&mut socket).await, Some(Message::binary(keep_alive.clone())));
    }
    assert!(!gate.activity().contains(&ActivityKind::WebSocket), "keep-alives counted: {:?}", gate.activity());

    socket.send(Message::text("{\"type\":\"keystroke\",\"text\":\"x\",\"line\":12}")).await.unwrap();
    next(&mut socket).await;
    let counted = eventually(|| gate.activity().contains(&ActivityKind::WebSocket).then_some(())).await;
    assert!(counted.is_some(), "a real message was not activity: {:?}", gate.activity());
    socket.close(None).await.unwrap();
}
