//! SSH and TCP tunnels into workspaces, for `cove ssh` and `cove port-forward`, and the list
//! of listening ports.
//!
//! The user's side is a WebSocket on the API (bearer token, like every other API call),
//! so no port beyond the server's own is opened to the world. The workspace's side is the
//! agent's socket: an HTTP/1.1 upgrade to `/ssh` (the agent's SSH server) or `/tcp/{port}`
//! (a pipe to that port inside the workspace), carrying the agent's secret. A stopped
//! workspace is woken first, as a request to one of its apps would wake it.

use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use cove_core::agent::SECRET_HEADER;
use cove_core::{ActualState, DesiredState, Workspace, WorkspaceId};
use cove_store::{StoreError, WorkspacePatch};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ApiError;
use crate::AppState;

/// A byte stream to the agent, already switched to the tunnel's protocol.
pub type AgentStream = TokioIo<hyper::upgrade::Upgraded>;

/// How often activity from one tunnel is recorded at most (it is kept in memory anyway).
const ACTIVITY_EVERY: Duration = Duration::from_secs(1);

/// Makes sure the workspace runs (waking it if stopped), then asks its agent for `path`
/// (`/ssh`, `/tcp/{port}`) as an upgrade to `protocol`. Waits up to the server's wake wait.
pub async fn open(state: &AppState, ws: &Workspace, path: &str, protocol: &str) -> Result<AgentStream, ApiError> {
    match call(state, ws, path, Some(protocol)).await? {
        Answer::Switched(stream) => Ok(stream),
        Answer::Json(_) => Err(ApiError::internal("agent upgrade", "the agent answered without switching")),
    }
}

/// Like [`open`], for a plain `GET` answered with JSON (`/ports`).
pub async fn get_json(state: &AppState, ws: &Workspace, path: &str) -> Result<serde_json::Value, ApiError> {
    match call(state, ws, path, None).await? {
        Answer::Json(value) => Ok(value),
        Answer::Switched(_) => Err(ApiError::internal("agent request", "the agent switched protocols unasked")),
    }
}

/// The same `GET` to a running workspace's agent without waking it or waiting for it
/// (the dashboard's look at its ports): `None` unless it runs and its agent answers.
pub async fn peek_json(state: &AppState, ws: &Workspace, path: &str) -> Option<serde_json::Value> {
    if ws.actual != ActualState::Running || ws.desired != DesiredState::Running {
        return None;
    }
    let (socket, secret) = state.agents.endpoint(ws.id)?;
    match request(&socket, &secret, path, None).await {
        Ok(Reply::Answer(Answer::Json(value))) => Some(value),
        _ => None,
    }
}

async fn call(state: &AppState, ws: &Workspace, path: &str, protocol: Option<&str>) -> Result<Answer, ApiError> {
    let deadline = Instant::now() + state.config.wake_wait.max(Duration::from_secs(5));
    wake(state, ws).await?;
    loop {
        let fresh = state.store.workspace_get(ws.id).await?;
        if fresh.desired != DesiredState::Running && fresh.desired != DesiredState::RestartRequested {
            return Err(ApiError::Conflict(format!(
                "workspace {} is being stopped or deleted; start it with `cove start {}`",
                ws.name, ws.name
            )));
        }
        let last_error = if fresh.actual == ActualState::Running {
            match state.agents.endpoint(ws.id) {
                Some((socket, secret)) => match request(&socket, &secret, path, protocol).await {
                    Ok(Reply::Answer(answer)) => return Ok(answer),
                    // The agent answered with its reason (for a port nobody listens on).
                    Ok(Reply::Refused(message)) => return Err(ApiError::Unavailable(message)),
                    Err(e) => format!("its agent is not answering yet ({e})"),
                },
                None => "its agent has not started yet".into(),
            }
        } else {
            format!("it is {:?}", fresh.actual)
        };
        if Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "cannot reach workspace {}: {last_error}; see `cove show {}` and `cove logs {}`",
                ws.name, ws.name, ws.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets a stopped workspace's desire to Running (guarded by generation, so racing wakes
/// write once) and pokes the reconciler.
async fn wake(state: &AppState, ws: &Workspace) -> Result<(), ApiError> {
    let fresh = state.store.workspace_get(ws.id).await?;
    if fresh.desired != DesiredState::Stopped {
        return Ok(());
    }
    let _permit = crate::quotas::check_running(state, fresh.owner, Some(fresh.id)).await?;
    let patch = WorkspacePatch { desired: Some(DesiredState::Running), ..Default::default() };
    match state.store.workspace_patch(ws.id, patch, Some(fresh.generation)).await {
        Ok(_) => {
            tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "waking workspace for a tunnel");
            state.routes.invalidate();
            state.reconciler.poke();
            Ok(())
        }
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

enum Answer {
    Switched(AgentStream),
    Json(serde_json::Value),
}

enum Reply {
    Answer(Answer),
    Refused(String),
}

async fn request(socket: &std::path::Path, secret: &str, path: &str, protocol: Option<&str>) -> anyhow::Result<Reply> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut request = http::Request::get(path).header(http::header::HOST, "agent").header(SECRET_HEADER, secret);
    if let Some(protocol) = protocol {
        request = request.header(http::header::CONNECTION, "upgrade").header(http::header::UPGRADE, protocol);
    }
    let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
    let status = response.status();
    if status == http::StatusCode::SWITCHING_PROTOCOLS && protocol.is_some() {
        return Ok(Reply::Answer(Answer::Switched(TokioIo::new(hyper::upgrade::on(response).await?))));
    }
    if status == http::StatusCode::UNAUTHORIZED {
        // A secret left by the previous start; the new agent writes its own shortly.
        anyhow::bail!("the agent refused the secret");
    }
    let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status.is_success() && protocol.is_none() {
        return Ok(Reply::Answer(Answer::Json(value)));
    }
    let message =
        value["error"]["message"].as_str().map_or_else(|| format!("the agent answered {status}"), str::to_string);
    Ok(Reply::Refused(message))
}

/// What client traffic on a tunnel counts as, if anything.
#[derive(Clone, Copy)]
pub enum Activity {
    /// Not counted here: the SSH server in the agent reports keystrokes and transfers, and
    /// SSH's own keepalives (client traffic too) must not keep a workspace awake.
    None,
    Kind(&'static str),
}

/// Joins a WebSocket (binary frames) and the agent's stream until either side ends.
pub async fn pipe<S>(state: AppState, id: WorkspaceId, socket: WebSocket, stream: S, activity: Activity)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let upstream = async {
        let mut last = None::<Instant>;
        while let Some(Ok(message)) = ws_rx.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Text(text) => Bytes::from(text.as_str().to_owned()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if let Activity::Kind(kind) = activity {
                if last.is_none_or(|t| t.elapsed() >= ACTIVITY_EVERY) {
                    state.activity.record(id, kind);
                    last = Some(Instant::now());
                }
            }
            if writer.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    // The tunnel ends when the agent's side ends; the client's end of input only half-closes.
    tokio::pin!(upstream, downstream);
    tokio::select! {
        () = &mut downstream => {}
        () = &mut upstream => downstream.await,
    }
}
