//! The agent's byte tunnels for the control plane: `GET /ssh` (the SSH server on the
//! upgraded connection) and `GET /tcp/{port}` (a raw pipe to `127.0.0.1:{port}` inside the
//! workspace), both HTTP/1.1 upgrades on the agent's socket, and `GET /ports` (what
//! listens). The control plane carries these to the user over a WebSocket after checking
//! their token; nothing here listens on the network.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::Agent;

/// The `Upgrade` protocol names of the two tunnels.
pub const SSH_PROTOCOL: &str = "cove-ssh";
pub const TCP_PROTOCOL: &str = "cove-tcp";

pub fn routes() -> Router<Agent> {
    Router::new().route("/ssh", get(ssh)).route("/tcp/{port}", get(tcp)).route("/ports", get(ports))
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn switching(protocol: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    if let Ok(value) = header::HeaderValue::from_str(protocol) {
        response.headers_mut().insert(header::UPGRADE, value);
    }
    response
}

fn take_upgrade(request: &mut Request) -> Result<OnUpgrade, Box<Response>> {
    request.extensions_mut().remove::<OnUpgrade>().ok_or_else(|| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send this as an HTTP/1.1 upgrade (Connection: upgrade)".into(),
        ))
    })
}

async fn ssh(State(agent): State<Agent>, mut request: Request) -> Response {
    let upgrade = match take_upgrade(&mut request) {
        Ok(u) => u,
        Err(response) => return *response,
    };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                if let Err(e) = crate::ssh::serve(agent, TokioIo::new(upgraded)).await {
                    tracing::debug!(error = %e, "an SSH connection ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "the SSH upgrade failed"),
        }
    });
    switching(SSH_PROTOCOL)
}

async fn tcp(Path(port): Path<String>, mut request: Request) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", format!("{port:?} is not a TCP port (1-65535)"));
    };
    let upgrade = match take_upgrade(&mut request) {
        Ok(u) => u,
        Err(response) => return *response,
    };
    // Connect before switching, so a closed port is an answer rather than a dead tunnel.
    let connected = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(stream) => Ok(stream),
        Err(_) => tokio::net::TcpStream::connect(("::1", port)).await,
    };
    let mut target = match connected {
        Ok(stream) => stream,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                format!("nothing accepts connections on port {port} in the workspace ({e}); start the server first"),
            )
        }
    };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut target).await;
            }
            Err(e) => tracing::debug!(error = %e, "the TCP tunnel's upgrade failed"),
        }
    });
    switching(TCP_PROTOCOL)
}

async fn ports() -> Json<Vec<crate::ports::ListeningPort>> {
    let ports = tokio::task::spawn_blocking(|| crate::ports::listening(std::path::Path::new("/proc")))
        .await
        .unwrap_or_default();
    Json(ports)
}
