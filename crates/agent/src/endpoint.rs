//! The agent's one HTTP endpoint, for the control plane and its proxy only.
//!
//! It listens on a unix socket in the run directory (root's, mode 0600, reachable from the
//! host through the bind mount and from nowhere else) and refuses every request that does
//! not carry this start's secret in [`SECRET_HEADER`]: a leaked secret dies with the
//! container, and one workspace's secret opens no other workspace's agent.
//!
//! Routes are added by the agent's services (terminal, SSH, ports) through [`router`].
//! Requests for a named app carry [`APP_HEADER`] (set by the control plane's gate, never by
//! the browser, whose value the proxy replaces) and go to that app's router whatever their
//! path: `term` is the web terminal ([`crate::terminal`]).

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cove_core::agent::{self as contract, SECRET_HEADER};
use serde_json::json;
use tokio::net::UnixListener;

use crate::activity::Activity;
use crate::control::Control;
use crate::user::WorkspaceUser;

/// What every service of the agent shares.
#[derive(Clone)]
pub struct Agent {
    pub user: Arc<WorkspaceUser>,
    pub control: Control,
    pub activity: Activity,
    /// The editor's supervisor, when an editor is mounted.
    pub editor: Option<crate::editor::Editor>,
    /// The devcontainer.json environment and `postAttachCommand`, once read.
    pub lifecycle: crate::lifecycle::Lifecycle,
    secret: Arc<str>,
    started_at: std::time::SystemTime,
}

impl Agent {
    pub fn new(user: WorkspaceUser, control: Control, secret: Arc<str>) -> Self {
        Self {
            user: Arc::new(user),
            control,
            activity: Activity::default(),
            editor: None,
            lifecycle: crate::lifecycle::Lifecycle::default(),
            secret,
            started_at: std::time::SystemTime::now(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// Opens the agent's socket (replacing one left by an earlier start) and writes the
/// secret next to it, both for root only.
pub async fn bind(run_dir: &Path, agent: &Agent) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(run_dir)?;
    let secret = run_dir.join(contract::SECRET_FILE);
    let staged = run_dir.join(format!(".{}.new", contract::SECRET_FILE));
    std::fs::write(&staged, agent.secret.as_bytes())?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staged, &secret)?;
    let socket = run_dir.join(contract::AGENT_SOCKET);
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The header naming the app a proxied request is for.
pub const APP_HEADER: &str = "x-cove-app";

/// Every route of the agent, behind the secret check.
pub fn router(agent: Agent) -> Router {
    let apps = Apps { term: crate::terminal::app(agent.clone()) };
    Router::new()
        .route("/health", get(health))
        .merge(crate::tunnel::routes())
        .layer(axum::middleware::from_fn_with_state(apps, dispatch_app))
        .layer(axum::middleware::from_fn_with_state(agent.clone(), require_secret))
        .with_state(agent)
}

/// The agent's named apps, each a router of its own.
#[derive(Clone)]
struct Apps {
    term: Router,
}

async fn dispatch_app(State(apps): State<Apps>, request: Request, next: Next) -> Response {
    let Some(app) = request.headers().get(APP_HEADER) else {
        return next.run(request).await;
    };
    match app.as_bytes() {
        b"term" => {
            use tower::ServiceExt;
            // A router's error type is `Infallible`: every failure is a response.
            match apps.term.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
        _ => {
            let name = String::from_utf8_lossy(app.as_bytes()).chars().take(40).collect::<String>();
            let body = json!({"error": {"code": "not_found", "message": format!("this agent serves no app {name:?}; the apps are: term")}});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// Serves the endpoint until the listener fails.
pub async fn serve(listener: UnixListener, agent: Agent) -> std::io::Result<()> {
    axum::serve(listener, router(agent)).await
}

async fn require_secret(State(agent): State<Agent>, request: Request, next: Next) -> Response {
    let presented = request.headers().get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !constant_time_eq(presented, agent.secret.as_bytes()) {
        let body = json!({"error": {"code": "unauthenticated", "message": "this agent needs its secret in the x-cove-agent-secret header"}});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    next.run(request).await
}

async fn health(State(agent): State<Agent>) -> Json<serde_json::Value> {
    let started = agent.started_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Json(json!({
        "state": "ready",
        "version": crate::VERSION,
        "user": agent.user.name,
        "uid": agent.user.uid,
        "started_at_unix": started,
        "sessions": agent.activity.sessions(),
        "editor": agent.editor.as_ref().map(|e| e.status()),
    }))
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
