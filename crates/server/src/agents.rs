//! The control plane's side of the in-workspace agents.
//!
//! Each workspace has a run directory on the host, bind-mounted into its container (see
//! `cove_core::agent`). Here the server listens on one control socket per workspace — the
//! socket a request arrives on says which workspace is talking, so agents need no
//! credentials of their own — and talks to each agent over the agent's socket with the
//! secret the agent wrote next to it at its start.
//!
//! A sync loop keeps one listener per existing workspace (made before the container is,
//! removed with the workspace) and follows every state the reconciler writes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use cove_core::agent::{self as contract, ActivityReport, AgentState, StateReport, WorkspaceInfo};
use cove_core::{DesiredState, WorkspaceId};
use serde::Serialize;
use tokio::net::UnixListener;

use crate::AppState;

/// How often the listeners are checked against the workspaces when nothing changes.
const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// What an agent last said about itself and its sessions.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    pub state: AgentState,
    pub message: Option<String>,
    pub version: String,
    pub reported_at: DateTime<Utc>,
    /// Open sessions by kind, e.g. {"ssh": 1}: what keeps the workspace in use.
    pub sessions: BTreeMap<String, u32>,
}

pub struct Agents {
    /// `None` when workspaces get no agent (the fake backend of unit tests).
    run_root: Option<PathBuf>,
    status: Mutex<HashMap<WorkspaceId, AgentStatus>>,
    listeners: Mutex<HashMap<WorkspaceId, tokio::task::JoinHandle<()>>>,
}

impl Agents {
    pub fn new(run_root: Option<PathBuf>) -> Self {
        Self { run_root, status: Mutex::default(), listeners: Mutex::default() }
    }

    pub fn run_dir(&self, id: WorkspaceId) -> Option<PathBuf> {
        Some(self.run_root.as_ref()?.join(id.to_string()))
    }

    pub fn status(&self, id: WorkspaceId) -> Option<AgentStatus> {
        lock(&self.status).get(&id).cloned()
    }

    /// Forgets what the agent said: its container stopped or is being replaced.
    pub fn clear(&self, id: WorkspaceId) {
        lock(&self.status).remove(&id);
    }

    /// The agent's socket and this start's secret, if the agent is up.
    pub fn endpoint(&self, id: WorkspaceId) -> Option<(PathBuf, String)> {
        let dir = self.run_dir(id)?;
        let secret = std::fs::read_to_string(dir.join(contract::SECRET_FILE)).ok()?;
        Some((dir.join(contract::AGENT_SOCKET), secret.trim().to_string()))
    }

    /// One listener per workspace that exists (and is not being deleted); none for others.
    async fn sync(&self, state: &AppState) {
        let Some(run_root) = &self.run_root else { return };
        let workspaces = match state.store.workspace_list_all().await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list workspaces for their agents' sockets");
                return;
            }
        };
        let mut listeners = lock(&self.listeners);
        let wanted: HashMap<WorkspaceId, bool> =
            workspaces.iter().map(|w| (w.id, w.desired != DesiredState::Terminated)).collect();
        listeners.retain(|id, task| {
            let keep = wanted.get(id).copied().unwrap_or(false) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, keep) in &wanted {
            if *keep && !listeners.contains_key(id) {
                match listen(run_root, *id, state.clone()) {
                    Ok(task) => {
                        listeners.insert(*id, task);
                    }
                    Err(e) => tracing::warn!(workspace = %id, error = %e, "cannot open the agent's control socket"),
                }
            }
        }
        drop(listeners);
        // Run directories of workspaces that are gone (deleted while we were down, too).
        if let Ok(entries) = std::fs::read_dir(run_root) {
            for entry in entries.flatten() {
                let gone = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<WorkspaceId>().ok())
                    .is_some_and(|id| !wanted.contains_key(&id));
                if gone {
                    let _ = std::fs::remove_dir_all(entry.path());
                    if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                        self.clear(id);
                    }
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the control sockets in step with the workspaces until the runtime shuts down.
pub fn spawn_sync(state: AppState) {
    let mut changes = state.reconciler.changes();
    tokio::spawn(async move {
        loop {
            state.agents.sync(&state).await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { tokio::time::sleep(SYNC_INTERVAL).await },
                _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            }
        }
    });
}

/// Binds `<run_root>/<id>/control.sock` (replacing a stale one) and serves it.
fn listen(run_root: &Path, id: WorkspaceId, state: AppState) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_root.join(id.to_string());
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let path = dir.join(contract::CONTROL_SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let app = control_router(ControlState { state, workspace: id });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(workspace = %id, error = %e, "the agent's control socket failed");
        }
    }))
}

/// What a control-socket handler knows: everything, and which workspace is talking.
#[derive(Clone)]
pub struct ControlState {
    pub state: AppState,
    pub workspace: WorkspaceId,
}

/// The routes agents call. Bodies are small; anything else is refused.
pub fn control_router(control: ControlState) -> Router {
    Router::new()
        .route("/v1/state", post(report_state))
        .route("/v1/activity", post(report_activity))
        .route("/v1/workspace", axum::routing::get(describe_workspace))
        .route("/v1/git-credential", axum::routing::get(git_credential))
        .route("/v1/devcontainer", post(crate::devcontainers::agent_question))
        .route("/v1/secrets", axum::routing::get(workspace_secrets))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(control)
}

async fn report_state(State(c): State<ControlState>, Json(report): Json<StateReport>) -> Response {
    tracing::info!(workspace = %c.workspace, state = ?report.state, message = ?report.message, "agent reported");
    let mut all = lock(&c.state.agents.status);
    let sessions = all.get(&c.workspace).map(|s| s.sessions.clone()).unwrap_or_default();
    all.insert(
        c.workspace,
        AgentStatus {
            state: report.state,
            message: report.message,
            version: report.version,
            reported_at: Utc::now(),
            sessions: if report.state == AgentState::Starting { BTreeMap::new() } else { sessions },
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn report_activity(State(c): State<ControlState>, Json(report): Json<ActivityReport>) -> Response {
    for kind in &report.kinds {
        c.state.activity.record(c.workspace, activity_kind(kind));
    }
    if let Some(status) = lock(&c.state.agents.status).get_mut(&c.workspace) {
        status.sessions = report.sessions;
    }
    StatusCode::NO_CONTENT.into_response()
}

/// What the agent needs to know about its workspace: its names and where its code comes from.
async fn describe_workspace(State(c): State<ControlState>) -> Response {
    match c.state.store.workspace_get(c.workspace).await {
        Ok(ws) => {
            Json(WorkspaceInfo { name: ws.name.to_string(), owner: ws.owner_name.to_string(), source: ws.source })
                .into_response()
        }
        Err(cove_store::StoreError::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(workspace = %c.workspace, error = %e, "cannot read a workspace for its agent");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct CredentialQuery {
    #[serde(default)]
    protocol: String,
    host: String,
}

/// git's credential question, from the agent: the workspace owner's token for that host.
async fn git_credential(
    State(c): State<ControlState>,
    axum::extract::Query(q): axum::extract::Query<CredentialQuery>,
) -> Response {
    let not_found = |message: String| {
        (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": {"code": "not_found", "message": message}})))
            .into_response()
    };
    let host = match crate::api::git_host(&q.host) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let workspace = match c.state.store.workspace_get(c.workspace).await {
        Ok(w) => w,
        Err(_) => return not_found(format!("workspace {} is gone", c.workspace)),
    };
    match crate::secrets::git_token_for(c.state.store.as_ref(), &c.state.config.data_dir, workspace.owner, &host).await
    {
        Ok(Some((username, password))) => {
            tracing::info!(workspace = %workspace.name, host = %host, protocol = %q.protocol, "git credential handed to the agent");
            Json(serde_json::json!({ "username": username, "password": password })).into_response()
        }
        Ok(None) => not_found(format!("no Git token for {host}; store one with `cove git-token set {host}`")),
        Err(e) => {
            tracing::error!(workspace = %workspace.name, host = %host, error = %e, "cannot answer a git credential question");
            e.into_response()
        }
    }
}

/// The workspace's frozen secrets, in clear: only ever over its own control socket.
async fn workspace_secrets(State(c): State<ControlState>) -> Response {
    match crate::secrets::delivered(c.state.store.as_ref(), &c.state.config.data_dir, c.workspace).await {
        Ok(set) => {
            tracing::info!(workspace = %c.workspace, secrets = set.len(), "secrets handed to the agent");
            Json(set).into_response()
        }
        Err(e) => {
            tracing::error!(workspace = %c.workspace, error = ?e, "cannot hand the workspace's secrets to its agent");
            e.into_response()
        }
    }
}

/// The activity kinds the store records; anything else an agent says is "agent".
fn activity_kind(kind: &str) -> &'static str {
    match kind {
        "terminal" => "terminal",
        "ssh" => "ssh",
        "editor" => "editor",
        "tunnel" => "tunnel",
        _ => "agent",
    }
}
