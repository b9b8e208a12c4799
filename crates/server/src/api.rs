//! `/api/v1`: parse, authorize, call the application layer, shape the answer.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{Duration, Utc};
use cove_core::{Name, Role, TokenScope};
use cove_runtime::{ExecEvent, ExecRequest, LogOptions};
use cove_store::NewUser;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::views::*;
use crate::{openapi, tunnel, workspaces, AppState};

/// Large enough for any request this API takes; anything bigger is a mistake or an attack.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_EXEC_ARGS_BYTES: usize = 32 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(openapi_doc))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/handoff-key", get(handoff_key))
        .route("/api/v1/status", get(status))
        .route("/api/v1/users", post(create_user))
        .route("/api/v1/users/{id}", axum::routing::patch(patch_user))
        .route("/api/v1/admin/audit", get(audit_list))
        .route("/api/v1/admin/audit.jsonl", get(audit_export))
        .route("/api/v1/admin/quotas", get(get_quotas).put(set_quotas))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(delete_token))
        .route("/api/v1/git-tokens", get(list_git_tokens))
        .route("/api/v1/git-tokens/{host}", axum::routing::put(set_git_token).delete(delete_git_token))
        .route("/api/v1/workspaces", get(list_workspaces).post(create_workspace))
        .route("/api/v1/workspaces/{ws}", get(get_workspace).patch(patch_workspace).delete(delete_workspace))
        .route("/api/v1/workspaces/{ws}/exec", post(exec))
        .route("/api/v1/workspaces/{ws}/logs", get(logs))
        .route("/api/v1/workspaces/{ws}/apps", get(list_apps))
        .route("/api/v1/workspaces/{ws}/apps/{app}", axum::routing::put(share_app))
        .route("/api/v1/workspaces/{ws}/ssh", get(ssh))
        .route("/api/v1/workspaces/{ws}/tcp/{port}", get(tcp))
        .route("/api/v1/workspaces/{ws}/ports", get(ports))
        .merge(crate::secrets_api::routes())
        .merge(crate::access::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Pushes stream archives of any size (checked as they are read): no body limit.
        .merge(crate::files::router().layer(DefaultBodyLimit::disable()))
        .merge(crate::devcontainers::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::audit::layer))
        .with_state(state)
}

/// `Json` whose rejections speak the API's error format.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::InvalidRequest("send the body as JSON with Content-Type: application/json".into())
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::InvalidRequest(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(e.body_text()),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(format!("request body is larger than {MAX_BODY_BYTES} bytes"))
        }
        other => ApiError::InvalidRequest(other.body_text()),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| ApiError::InvalidRequest(e.body_text()))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no API route {method} {}", uri.path()))
}

async fn no_method(method: Method, uri: Uri) -> Response {
    let mut response = ApiError::InvalidRequest(format!("{} does not accept {method}", uri.path())).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn openapi_doc() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn login(
    State(state): State<AppState>,
    audit: Option<axum::Extension<crate::audit::AuditSlot>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<impl IntoResponse, ApiError> {
    let origin = crate::access::Origin::of(&headers, peer.map(|axum::Extension(c)| c.0));
    let token_name = body.token_name.clone().unwrap_or_else(|| "cli".into());
    let result = crate::access::password_login(&state, &body.username, body.password, &origin, &token_name).await;
    if let Some(axum::Extension(slot)) = &audit {
        // Only a well-formed name is recorded: a password typed into the name field is not.
        match (&result, Name::parse(&body.username)) {
            (Ok((user, _, _)), _) => slot.set(Some(user.id), user.name.as_str()),
            (Err(_), Ok(name)) => slot.set(None, name.as_str()),
            (Err(_), Err(_)) => {}
        }
    }
    let (user, secret, token) = result?;
    tracing::info!(user = %user.name, token = %token.id, "logged in");
    Ok((StatusCode::CREATED, Json(json!({ "token": secret, "user": UserView::from(&user) }))))
}

async fn me(Caller(mut user, access): Caller) -> Json<UserView> {
    user.role = access.role;
    Json(UserView::from(&user))
}

async fn status(State(state): State<AppState>, _caller: Caller) -> Json<serde_json::Value> {
    let engine = match state.backend.ping().await {
        Ok(info) => json!(info),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Json(json!({ "instance": state.instance, "engine": engine, "reconciler": state.reconciler.status() }))
}

async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    let user = user_create(&state, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// An admin makes a user (the API's `POST /users` and the dashboard's form).
pub async fn user_create(state: &AppState, caller: &Caller, body: CreateUser) -> Result<cove_core::User, ApiError> {
    caller.require_admin()?;
    let name = Name::parse(&body.username).map_err(|e| ApiError::InvalidRequest(format!("invalid username: {e}")))?;
    if body.password.chars().count() < 12 {
        return Err(ApiError::InvalidRequest("password must be at least 12 characters".into()));
    }
    let password = body.password;
    let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("password hash", e))??;
    Ok(state.store.user_create(NewUser { name, role: body.role.unwrap_or(Role::Member), password_hash }).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub since: Option<chrono::DateTime<Utc>>,
    pub limit: Option<u32>,
}

const AUDIT_DEFAULT_LIMIT: u32 = 100;
const AUDIT_MAX_LIMIT: u32 = 10_000;

async fn audit_entries(state: &AppState, q: AuditQuery) -> Result<Vec<cove_store::AuditEntry>, ApiError> {
    let limit = q.limit.unwrap_or(AUDIT_DEFAULT_LIMIT);
    if limit == 0 || limit > AUDIT_MAX_LIMIT {
        return Err(ApiError::InvalidRequest(format!("limit must be from 1 to {AUDIT_MAX_LIMIT}")));
    }
    Ok(state.store.audit_list(q.since, limit).await?)
}

/// The newest entries (`?limit=`, default 100) from `?since=` (RFC 3339), oldest first.
async fn audit_list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<cove_store::AuditEntry>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(audit_entries(&state, query(q)?).await?))
}

/// The same as JSON lines, for log pipelines; up to 10000 entries unless `?limit=`.
pub async fn audit_export(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let mut q = query(q)?;
    q.limit = Some(q.limit.unwrap_or(AUDIT_MAX_LIMIT));
    let mut body = Vec::new();
    for entry in audit_entries(&state, q).await? {
        serde_json::to_writer(&mut body, &entry).map_err(|e| ApiError::internal("audit export", e))?;
        body.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

async fn get_quotas(State(state): State<AppState>, caller: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    Ok(Json(crate::quotas::view(&state.store.quota_get().await?)))
}

/// Replaces every quota: a field left out (or null) is no limit.
async fn set_quotas(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SetQuotas>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(crate::quotas::view(&quotas_set(&state, &caller, body).await?)))
}

/// An admin replaces every quota (the API's `PUT /admin/quotas` and the dashboard's form).
pub async fn quotas_set(state: &AppState, caller: &Caller, body: SetQuotas) -> Result<cove_store::Quotas, ApiError> {
    caller.require_admin()?;
    let max_cpus_milli = match body.max_cpus {
        Some(cpus) if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) => {
            return Err(ApiError::InvalidRequest("max_cpus must be a number of CPUs above 0 (such as 4 or 0.5)".into()))
        }
        // In range by the check above, so the cast cannot truncate.
        Some(cpus) => Some((cpus * 1000.0).round() as u32),
        None => None,
    };
    let max_memory_bytes = match body.max_memory {
        Some(Size::Bytes(b)) => Some(b),
        Some(Size::Text(t)) => Some(
            cove_core::parse_size(&t)
                .map_err(|e| ApiError::InvalidRequest(format!("max_memory: {e}; write it like 8g or 512m")))?,
        ),
        None => None,
    };
    if max_memory_bytes == Some(0) || max_cpus_milli == Some(0) {
        return Err(ApiError::InvalidRequest(
            "max_cpus and max_memory must be above 0; leave one out for no limit".into(),
        ));
    }
    let quotas = cove_store::Quotas {
        max_workspaces: body.max_workspaces,
        max_running: body.max_running,
        max_cpus_milli,
        max_memory_bytes,
    };
    state.store.quota_set(quotas).await?;
    tracing::info!(admin = %caller.0.name, ?quotas, "quotas set");
    Ok(quotas)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

/// Admins disable or enable a user (their tokens stop or start working at once) or set a
/// new password. `{id}` is the user's id or name.
async fn patch_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<PatchUser>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(UserView::from(&user_patch(&state, &caller, &key, body).await?)))
}

/// An admin disables, enables or sets the password of a user, by id or name.
pub async fn user_patch(
    state: &AppState,
    caller: &Caller,
    key: &str,
    body: PatchUser,
) -> Result<cove_core::User, ApiError> {
    caller.require_admin()?;
    let not_found = || ApiError::NotFound(format!("user {key} not found"));
    let user = if let Ok(id) = key.parse::<cove_core::UserId>() {
        match state.store.user_get(id).await {
            Err(cove_store::StoreError::NotFound) => return Err(not_found()),
            other => other?,
        }
    } else {
        let name = Name::parse(key).map_err(|_| not_found())?;
        state.store.user_get_by_name_with_password(&name).await?.ok_or_else(not_found)?.0
    };
    if body.disabled.is_none() && body.password.is_none() {
        return Err(ApiError::InvalidRequest("nothing to change; give disabled or password".into()));
    }
    if body.disabled == Some(true) && user.id == caller.0.id {
        return Err(ApiError::Conflict("you cannot disable yourself; ask another admin".into()));
    }
    let password_hash = match body.password {
        Some(p) if p.chars().count() < 12 => {
            return Err(ApiError::InvalidRequest("password must be at least 12 characters".into()))
        }
        Some(p) => Some(
            tokio::task::spawn_blocking(move || auth::hash_password(&p))
                .await
                .map_err(|e| ApiError::internal("password hash", e))??,
        ),
        None => None,
    };
    let patch = cove_store::UserPatch { disabled: body.disabled, password_hash };
    let user = state.store.user_patch(user.id, patch).await?;
    // A disabled user's tokens and app cookies stop working at once in the proxy too.
    state.access.invalidate();
    tracing::info!(admin = %caller.0.name, user = %user.name, disabled = user.disabled, "user changed");
    Ok(user)
}

async fn list_tokens(State(state): State<AppState>, Caller(user, _): Caller) -> Result<Json<Vec<TokenView>>, ApiError> {
    let tokens = state.store.token_list_by_user(user.id).await?;
    Ok(Json(tokens.iter().map(TokenView::from).collect()))
}

async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    let (secret, token) = token_create(&state, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(json!({ "token": secret, "info": TokenView::from(&token) }))))
}

/// Makes a token for the caller, no wider than the caller's own; the secret is returned
/// once.
pub async fn token_create(
    state: &AppState,
    Caller(user, access): &Caller,
    body: CreateToken,
) -> Result<(String, cove_core::ApiToken), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::InvalidRequest("token name must be 1-64 characters".into()));
    }
    let expires_at = match body.expires_in_days {
        Some(0) => return Err(ApiError::InvalidRequest("expires_in_days must be at least 1".into())),
        Some(days) => Some(Utc::now() + Duration::days(i64::from(days.min(3650)))),
        None => None,
    };
    let scope = body.scope.unwrap_or(TokenScope::Write);
    if scope > TokenScope::widest_for(access.role) {
        return Err(ApiError::Forbidden(format!(
            "only admins may hold {scope} tokens; ask for --scope write or --scope read"
        )));
    }
    // Else a leaked write token could mint itself an admin one.
    if scope > access.scope {
        return Err(ApiError::Forbidden(format!(
            "this token's scope is {}; it cannot make a {scope} token (log in again with `cove login` for that)",
            access.scope
        )));
    }
    auth::issue_token(state.store.as_ref(), user, name, scope, expires_at).await
}

/// A Git host as git's credential protocol names it: a DNS name or address, with a port
/// when it is not the protocol's default (`github.com`, `127.0.0.1:8080`). Lowercase.
pub fn git_host(raw: &str) -> Result<String, ApiError> {
    let host = raw.trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(ApiError::InvalidRequest(format!(
            "{raw:?} is not a Git host: give a host name or address, with :port if not the default (github.com, 127.0.0.1:8080)"
        )));
    }
    Ok(host)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetGitToken {
    token: String,
    username: Option<String>,
}

async fn list_git_tokens(
    State(state): State<AppState>,
    Caller(user, _): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens = state.store.git_token_list(user.id).await?;
    let views: Vec<_> =
        tokens.iter().map(|t| json!({ "host": t.host, "username": t.username, "created_at": t.created_at })).collect();
    Ok(Json(json!(views)))
}

async fn set_git_token(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(host): Path<String>,
    ApiJson(body): ApiJson<SetGitToken>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let host = git_host(&host)?;
    let token = body.token.trim();
    if token.is_empty() || token.len() > 4096 || token.contains(['\n', '\r', '\0']) {
        return Err(ApiError::InvalidRequest("token must be 1-4096 characters on one line".into()));
    }
    // git's own convention for token-only hosts: any non-empty user name works.
    let username = body.username.as_deref().map(str::trim).filter(|u| !u.is_empty()).unwrap_or("x-access-token");
    if username.len() > 256 || username.contains(['\n', '\r', '\0']) {
        return Err(ApiError::InvalidRequest("username must be at most 256 characters on one line".into()));
    }
    let stored =
        crate::secrets::git_token_store(state.store.as_ref(), &state.config.data_dir, user.id, &host, username, token)
            .await?;
    Ok(Json(json!({ "host": stored.host, "username": stored.username, "created_at": stored.created_at })))
}

async fn delete_git_token(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(host): Path<String>,
) -> Result<StatusCode, ApiError> {
    let host = git_host(&host)?;
    match state.store.git_token_delete(user.id, &host).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(cove_store::StoreError::NotFound) => {
            Err(ApiError::NotFound(format!("no Git token for {host}; list yours with `cove git-token ls`")))
        }
        Err(e) => Err(e.into()),
    }
}

async fn delete_token(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("token {id} not found; list yours with `cove tokens ls`"));
    let token_id = id.parse().map_err(|_| not_found())?;
    match state.store.token_delete(user.id, token_id).await {
        Ok(()) => {
            state.access.invalidate();
            Ok(StatusCode::NO_CONTENT)
        }
        Err(cove_store::StoreError::NotFound) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_workspaces(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<WorkspaceView>>, ApiError> {
    let q = query(q)?;
    let list = if q.all {
        caller.require_admin()?;
        state.store.workspace_list_all().await?
    } else {
        let mut own = state.store.workspace_list_by_owner(caller.0.id).await?;
        own.extend(state.store.workspace_list_shared_with(caller.0.id).await?);
        own
    };
    Ok(Json(list.iter().map(|w| workspaces::view(&state, w)).collect()))
}

async fn create_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    ApiJson(body): ApiJson<CreateWorkspace>,
) -> Result<impl IntoResponse, ApiError> {
    let ws = workspaces::create(&state, &user, body).await?;
    Ok((StatusCode::CREATED, Json(workspaces::view(&state, &ws))))
}

async fn get_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let ws = crate::access::resolve_shared(&state, &user, &key).await?;
    crate::devcontainers::maybe_check(&state, &ws);
    let mut view = workspaces::view(&state, &ws);
    // The hand-off (its webhook) is the owner's business, not of those it is shared with.
    if ws.owner == user.id || user.role == Role::Admin {
        view.handoff = state.store.handoff_get(ws.id).await?;
    }
    Ok(Json(view))
}

/// The key the caller's hand-off webhooks are signed with (HMAC-SHA256).
async fn handoff_key(State(state): State<AppState>, Caller(user, _): Caller) -> Json<serde_json::Value> {
    Json(json!({
        "key": crate::handoff::key_for(&state, user.id),
        "algorithm": "HMAC-SHA256 of the request body, hex, in X-Cove-Signature: sha256=<hex>",
    }))
}

async fn patch_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<PatchWorkspace>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let ws = workspaces::resolve(&state, &user, &key).await?;
    let ws = workspaces::patch(&state, ws, body).await?;
    Ok(Json(workspaces::view(&state, &ws)))
}

async fn delete_workspace(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ws = match workspaces::resolve(&state, &user, &key).await {
        Ok(ws) => ws,
        Err(ApiError::NotFound(m)) => match crate::access::resolve_shared(&state, &user, &key).await {
            Ok(shared) => {
                return Err(ApiError::Forbidden(format!(
                    "only the owner of workspace {} ({}) or an admin may delete it",
                    shared.name, shared.owner_name
                )))
            }
            Err(_) => return Err(ApiError::NotFound(m)),
        },
        Err(e) => return Err(e),
    };
    let ws = workspaces::delete(&state, ws).await?;
    Ok((StatusCode::ACCEPTED, Json(workspaces::view(&state, &ws))))
}

async fn exec(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Response, ApiError> {
    let ws = workspaces::resolve(&state, &user, &key).await?;
    if body.cmd.is_empty() {
        return Err(ApiError::InvalidRequest("cmd must name a program to run".into()));
    }
    let arg_bytes: usize = body.cmd.iter().chain(&body.env).map(String::len).sum();
    if arg_bytes > MAX_EXEC_ARGS_BYTES {
        return Err(ApiError::PayloadTooLarge(format!("command and environment exceed {MAX_EXEC_ARGS_BYTES} bytes")));
    }
    if let Some(bad) = body.env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        return Err(ApiError::InvalidRequest(format!("env entry {bad:?} must look like KEY=value")));
    }
    let cmd = crate::secrets_api::exec_command(&state, &ws, body.cmd, &body.env).await?;
    let request = ExecRequest { cmd, env: body.env, workdir: body.workdir, user: None };
    state.activity.record(ws.id, "exec");
    let events = state.backend.exec(ws.id, request).await.map_err(|e| workspaces::backend_error(&ws, e))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let lines = events.map(move |event| {
        let frame = match event {
            Ok(ExecEvent::Stdout(b)) => ExecFrame::Stdout(b64.encode(b)),
            Ok(ExecEvent::Stderr(b)) => ExecFrame::Stderr(b64.encode(b)),
            Ok(ExecEvent::Exit(code)) => ExecFrame::Exit(code),
            Err(e) => ExecFrame::Error(e.to_string()),
        };
        let mut line = serde_json::to_vec(&frame).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

#[derive(Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    pub tail: Option<u64>,
}

pub async fn logs(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let ws = workspaces::resolve(&state, &user, &key).await?;
    let stream = state
        .backend
        .logs(ws.id, LogOptions { follow: q.follow, tail: q.tail })
        .await
        .map_err(|e| workspaces::backend_error(&ws, e))?;
    // A broken stream ends the response; the client sees it end early.
    let body = stream
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| async { r.ok().map(Ok::<_, Infallible>) });
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], Body::from_stream(body)).into_response())
}

fn app_view(state: &AppState, ws: &cove_core::Workspace, app: String, share: cove_core::ShareLevel) -> AppView {
    let url = state.config.app_url(&app, ws.name.as_str(), ws.owner_name.as_str());
    AppView { app, share, url }
}

async fn list_apps(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<Json<Vec<AppView>>, ApiError> {
    let ws = workspaces::resolve(&state, &user, &key).await?;
    let shares = state.store.app_share_list(ws.id).await?;
    Ok(Json(shares.into_iter().map(|(app, share)| app_view(&state, &ws, app, share)).collect()))
}

pub async fn share_app(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path((key, app)): Path<(String, String)>,
    ApiJson(body): ApiJson<ShareBody>,
) -> Result<Json<AppView>, ApiError> {
    let ws = workspaces::resolve(&state, &user, &key).await?;
    if ws.owner != user.id && user.role != Role::Admin {
        return Err(ApiError::Forbidden(format!("only the owner of workspace {} may share its apps", ws.name)));
    }
    let app = workspaces::app_name(&app)?;
    state.store.app_share_set(ws.id, &app, body.share).await?;
    state.routes.invalidate();
    Ok(Json(app_view(&state, &ws, app, body.share)))
}

/// The caller's own workspace: a shell or a tunnel is for its owner only (admins included:
/// they manage workspaces, they do not get into them).
async fn own_workspace(state: &AppState, user: &cove_core::User, key: &str) -> Result<cove_core::Workspace, ApiError> {
    let ws = workspaces::resolve(state, user, key).await?;
    if ws.owner != user.id {
        return Err(ApiError::NotFound(format!("workspace {key} not found; list yours with `cove ls`")));
    }
    Ok(ws)
}

fn websocket(upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Result<WebSocketUpgrade, ApiError> {
    upgrade.map_err(|_| ApiError::InvalidRequest("open this route as a WebSocket (e.g. with `cove ssh`)".into()))
}

async fn ssh(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = own_workspace(&state, &user, &key).await?;
    let upgrade = websocket(upgrade)?;
    let stream = tunnel::open(&state, &ws, "/ssh", "cove-ssh").await?;
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "ssh tunnel opened");
    let id = ws.id;
    Ok(upgrade.on_upgrade(move |socket| tunnel::pipe(state, id, socket, stream, tunnel::Activity::None)))
}

async fn tcp(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path((key, port)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = own_workspace(&state, &user, &key).await?;
    let port: u16 =
        port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            ApiError::InvalidRequest(format!("{port:?} is not a TCP port; use a number from 1 to 65535"))
        })?;
    let upgrade = websocket(upgrade)?;
    let stream = tunnel::open(&state, &ws, &format!("/tcp/{port}"), "cove-tcp").await?;
    let id = ws.id;
    Ok(upgrade.on_upgrade(move |socket| tunnel::pipe(state, id, socket, stream, tunnel::Activity::Kind("tunnel"))))
}

async fn ports(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ws = own_workspace(&state, &user, &key).await?;
    let mut ports = tunnel::get_json(&state, &ws, "/ports").await?;
    crate::devcontainers::label_ports(&ws, &mut ports);
    Ok(Json(ports))
}
