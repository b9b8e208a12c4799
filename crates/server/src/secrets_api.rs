//! `/api/v1/secrets` (instance and user scope) and `/api/v1/workspaces/{ws}/secrets`
//! (workspace scope and the frozen set): parse, authorize, call [`crate::secrets`].
//! Answers carry names, kinds, scopes and times, never a value.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use cove_core::{User, Workspace};
use cove_store::{FrozenSecret, Secret, SecretKind, SecretScope};
use serde::{Deserialize, Serialize};

use crate::api::ApiJson;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::{secrets, workspaces, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/secrets", get(list))
        .route("/api/v1/secrets/{name}", put(set).delete(remove))
        .route("/api/v1/workspaces/{ws}/secrets", get(list_workspace))
        .route("/api/v1/workspaces/{ws}/secrets/refresh", post(refresh))
        .route("/api/v1/workspaces/{ws}/secrets/{name}", put(set_workspace).delete(remove_workspace))
        .route("/api/v1/admin/rotate-key", post(rotate_key))
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SecretView {
    pub name: String,
    pub kind: SecretKind,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Secret> for SecretView {
    fn from(s: &Secret) -> Self {
        Self {
            name: s.name.clone(),
            kind: s.kind,
            scope: s.scope.as_str().into(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct FrozenView {
    pub name: String,
    pub kind: SecretKind,
    /// The scope the value was taken from.
    pub scope: String,
    pub frozen_at: DateTime<Utc>,
}

impl From<&FrozenSecret> for FrozenView {
    fn from(s: &FrozenSecret) -> Self {
        Self { name: s.name.clone(), kind: s.kind, scope: s.scope.clone(), frozen_at: s.frozen_at }
    }
}

#[derive(Deserialize)]
pub struct ScopeQuery {
    pub scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    pub value: String,
    #[serde(default)]
    pub kind: Option<SecretKind>,
}

/// `instance` (admins) or `user` (the default: the caller's own).
fn scope_of(caller: &Caller, q: Result<Query<ScopeQuery>, QueryRejection>) -> Result<SecretScope, ApiError> {
    let q = q.map(|Query(q)| q).map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    match q.scope.as_deref().unwrap_or("user") {
        "user" => Ok(SecretScope::User(caller.0.id)),
        "instance" => {
            caller.require_admin()?;
            Ok(SecretScope::Instance)
        }
        "workspace" => Err(ApiError::InvalidRequest(
            "workspace secrets live under /api/v1/workspaces/{ws}/secrets (`cove secrets set NAME --scope workspace --workspace WS`)".into(),
        )),
        other => Err(ApiError::InvalidRequest(format!("unknown scope {other:?}; use instance, user or workspace"))),
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    let scope = scope_of(&caller, q)?;
    Ok(Json(state.store.secret_list(scope).await?.iter().map(SecretView::from).collect()))
}

async fn store_secret(state: &AppState, scope: SecretScope, name: &str, body: SetBody) -> Result<SecretView, ApiError> {
    let kind = body.kind.unwrap_or(SecretKind::Env);
    let secret = secrets::set(state.store.as_ref(), &state.config.data_dir, scope, name, kind, &body.value).await?;
    tracing::info!(scope = scope.as_str(), name = %secret.name, kind = kind.as_str(), "secret stored");
    Ok(SecretView::from(&secret))
}

pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<(StatusCode, Json<SecretView>), ApiError> {
    let scope = scope_of(&caller, q)?;
    Ok((StatusCode::OK, Json(store_secret(&state, scope, &name, body).await?)))
}

async fn remove_from(state: &AppState, scope: SecretScope, name: &str) -> Result<StatusCode, ApiError> {
    match state.store.secret_delete(scope, name).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(cove_store::StoreError::NotFound) => Err(ApiError::NotFound(format!(
            "no {} secret named {name}; list them with `cove secrets ls --scope {}`",
            scope.as_str(),
            scope.as_str()
        ))),
        Err(e) => Err(e.into()),
    }
}

pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    q: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let scope = scope_of(&caller, q)?;
    remove_from(&state, scope, &name).await
}

/// The workspace, for its owner or an admin (people it is shared with do not manage its secrets).
async fn managed_workspace(state: &AppState, user: &User, key: &str) -> Result<Workspace, ApiError> {
    let ws = workspaces::resolve(state, user, key).await?;
    if ws.owner != user.id && user.role != cove_core::Role::Admin {
        return Err(ApiError::Forbidden(format!("only the owner of workspace {} may manage its secrets", ws.name)));
    }
    Ok(ws)
}

/// A workspace's own secrets and its frozen set, for its owner or an admin.
pub async fn workspace_secrets(
    state: &AppState,
    user: &User,
    key: &str,
) -> Result<(Vec<SecretView>, Vec<FrozenView>), ApiError> {
    let ws = managed_workspace(state, user, key).await?;
    let own: Vec<SecretView> =
        state.store.secret_list(SecretScope::Workspace(ws.id)).await?.iter().map(SecretView::from).collect();
    let frozen: Vec<FrozenView> =
        state.store.workspace_secret_list(ws.id).await?.iter().map(FrozenView::from).collect();
    Ok((own, frozen))
}

async fn list_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (own, frozen) = workspace_secrets(&state, &user, &key).await?;
    Ok(Json(serde_json::json!({ "secrets": own, "frozen": frozen })))
}

pub async fn set_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path((key, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<SecretView>, ApiError> {
    let ws = managed_workspace(&state, &user, &key).await?;
    Ok(Json(store_secret(&state, SecretScope::Workspace(ws.id), &name, body).await?))
}

pub async fn remove_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path((key, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let ws = managed_workspace(&state, &user, &key).await?;
    remove_from(&state, SecretScope::Workspace(ws.id), &name).await
}

/// Opts the workspace in to the current values: its agent delivers them at the next start.
pub async fn refresh(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ws = managed_workspace(&state, &user, &key).await?;
    let frozen = secrets::freeze(state.store.as_ref(), &state.config.data_dir, &ws).await?;
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, secrets = frozen.len(), "secrets refreshed");
    let frozen: Vec<FrozenView> = frozen.iter().map(FrozenView::from).collect();
    Ok(Json(serde_json::json!({ "frozen": frozen, "applies": "at the workspace's next start" })))
}

async fn rotate_key(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let count = secrets::rotate_key(state.store.as_ref(), &state.config.data_dir).await?;
    Ok(Json(serde_json::json!({ "reencrypted": count })))
}

/// `cove exec`'s command: the engine starts it, not the agent, so with environment secrets
/// it runs through `cove agent with-secrets`, which reads them from the workspace's tmpfs.
/// Variables the caller set for this exec (`env`, `KEY=value`) win over secrets.
pub async fn exec_command(
    state: &AppState,
    ws: &Workspace,
    cmd: Vec<String>,
    env: &[String],
) -> Result<Vec<String>, ApiError> {
    let has_env = state.store.workspace_secret_list(ws.id).await?.iter().any(|s| s.kind == SecretKind::Env);
    if !has_env || state.agents.run_dir(ws.id).is_none() {
        return Ok(cmd);
    }
    let mut wrapped = cove_runtime::inject::agent_command();
    wrapped.push("with-secrets".into());
    for entry in env {
        if let Some((key, _)) = entry.split_once('=') {
            wrapped.push(format!("--keep={key}"));
        }
    }
    wrapped.push("--".into());
    wrapped.extend(cmd);
    Ok(wrapped)
}
