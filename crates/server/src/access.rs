//! Who may get in, and to what: password logins with their rate limits, the login sessions
//! they make (listable and revocable), and workspaces shared with named users.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use cove_core::{ApiToken, Name, Role, TokenId, TokenScope, User, Workspace};
use cove_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::{workspaces, AppState};

/// Failed logins an account may have in [`WINDOW`] before it is refused for a while.
pub const ACCOUNT_FAILURES: usize = 5;
/// Failed logins one address may make in [`WINDOW`] (for any accounts).
pub const ADDRESS_FAILURES: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Bounds the memory a flood of made-up names can take: older keys are dropped first.
const MAX_KEYS: usize = 10_000;

/// Failed password logins per account and per address, in memory (a restart forgets them,
/// which costs an attacker a restart per 25 guesses).
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    fn keys(account: &str, address: Option<IpAddr>) -> [(Option<String>, usize); 2] {
        [
            (Some(format!("account:{}", account.trim().to_ascii_lowercase())), ACCOUNT_FAILURES),
            (address.map(|a| format!("address:{a}")), ADDRESS_FAILURES),
        ]
    }

    /// `Err(seconds)` to wait when the account or the address has used up its failures.
    pub fn check(&self, account: &str, address: Option<IpAddr>, now: Instant) -> Result<(), (&'static str, u64)> {
        let mut all = lock(&self.failures);
        for (i, (key, limit)) in Self::keys(account, address).into_iter().enumerate() {
            let Some(key) = key else { continue };
            let Some(times) = all.get_mut(&key) else { continue };
            while times.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                times.pop_front();
            }
            if times.len() >= limit {
                let oldest = times.front().copied().unwrap_or(now);
                let wait = WINDOW.saturating_sub(now.duration_since(oldest)).as_secs().max(1);
                return Err((if i == 0 { "this account" } else { "this address" }, wait));
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, account: &str, address: Option<IpAddr>, now: Instant) {
        let mut all = lock(&self.failures);
        if all.len() >= MAX_KEYS {
            all.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
            if all.len() >= MAX_KEYS {
                all.clear();
            }
        }
        for (key, _) in Self::keys(account, address) {
            if let Some(key) = key {
                all.entry(key).or_default().push_back(now);
            }
        }
    }

    /// A correct password clears the account's failures (not the address's).
    pub fn record_success(&self, account: &str) {
        let [(Some(key), _), _] = Self::keys(account, None) else { return };
        lock(&self.failures).remove(&key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a login came from, as the session list shows it.
pub struct Origin {
    pub peer: Option<SocketAddr>,
    pub user_agent: Option<String>,
}

impl Origin {
    pub fn of(headers: &HeaderMap, peer: Option<SocketAddr>) -> Self {
        let user_agent = headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect::<String>());
        Self { peer, user_agent }
    }
}

/// A password login, rate-limited per account and per address: the user and a new session
/// token (the secret is returned once). Refused logins tell nothing about the account.
pub async fn password_login(
    state: &AppState,
    username: &str,
    password: String,
    origin: &Origin,
    token_name: &str,
) -> Result<(User, String, ApiToken), ApiError> {
    let address = origin.peer.map(|p| p.ip());
    if let Err((what, seconds)) = state.logins.check(username, address, Instant::now()) {
        tracing::warn!(address = ?address, "login refused: too many failed attempts from {what}");
        let minutes = seconds.div_ceil(60);
        return Err(ApiError::TooManyRequests(
            format!("too many failed logins for {what}; try again in {minutes} minute(s)"),
            seconds,
        ));
    }
    let Some(user) = auth::check_password(state.store.as_ref(), username, password).await? else {
        state.logins.record_failure(username, address, Instant::now());
        return Err(ApiError::Unauthenticated("invalid username or password".into()));
    };
    state.logins.record_success(username);
    let (secret, token) = start_session(state, &user, origin, token_name).await?;
    Ok((user, secret, token))
}

/// A new login session for `user` (password or single sign-on): a token with all its user
/// may do, recorded with where it came from. The secret is returned once.
pub async fn start_session(
    state: &AppState,
    user: &User,
    origin: &Origin,
    token_name: &str,
) -> Result<(String, ApiToken), ApiError> {
    let scope = TokenScope::widest_for(user.role);
    let (secret, token) = auth::issue_token(state.store.as_ref(), user, token_name, scope, None).await?;
    let peer = origin.peer.map(|p| p.ip().to_string());
    state.store.session_record(token.id, peer.as_deref(), origin.user_agent.as_deref()).await?;
    Ok((secret, token))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}", delete(revoke_session))
        .route("/api/v1/workspaces/{ws}/shares", get(list_shares))
        .route("/api/v1/workspaces/{ws}/shares/{user}", axum::routing::put(add_share).delete(remove_share))
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SessionView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub address: Option<String>,
    pub user_agent: Option<String>,
    /// The session this request came with.
    pub current: bool,
}

/// The id of the token this request carries, if it is one of `sessions`.
fn bearer_hash(headers: &HeaderMap) -> Option<String> {
    let header = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    Some(cove_core::hash_token(header.strip_prefix("Bearer ")?.trim()))
}

pub async fn list_sessions(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    headers: HeaderMap,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let current = match bearer_hash(&headers) {
        Some(hash) => state.store.token_authenticate(&hash, Utc::now()).await?.map(|(t, _)| t.id),
        None => None,
    };
    let sessions = state.store.session_list_by_user(user.id).await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| SessionView {
                id: s.token.id.to_string(),
                name: s.token.name.clone(),
                created_at: s.token.created_at,
                last_used_at: s.token.last_used_at,
                address: s.peer,
                user_agent: s.user_agent,
                current: Some(s.token.id) == current,
            })
            .collect(),
    ))
}

/// Ends a session at once: its token stops working on the next request.
pub async fn revoke_session(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("no session {id}; list yours with `cove sessions ls`"));
    let id: TokenId = id.parse().map_err(|_| not_found())?;
    let sessions = state.store.session_list_by_user(user.id).await?;
    if !sessions.iter().any(|s| s.token.id == id) {
        return Err(not_found());
    }
    match state.store.token_delete(user.id, id).await {
        Ok(()) => {
            state.access.invalidate();
            tracing::info!(user = %user.name, session = %id, "session revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::NotFound) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// A workspace the caller owns, administers or has been given (`OWNER/NAME` names one
/// shared with them; a bare name is their own).
pub async fn resolve_shared(state: &AppState, caller: &User, key: &str) -> Result<Workspace, ApiError> {
    let not_found = || ApiError::NotFound(format!("workspace {key} not found; list yours with `cove ls`"));
    if let Some((owner, name)) = key.split_once('/') {
        let owner = Name::parse(owner).map_err(|_| not_found())?;
        let name = Name::parse(name).map_err(|_| not_found())?;
        let Some((owner, _)) = state.store.user_get_by_name_with_password(&owner).await? else {
            return Err(not_found());
        };
        let ws = match state.store.workspace_get_by_name(owner.id, &name).await {
            Ok(ws) => ws,
            Err(StoreError::NotFound) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        return allowed(state, caller, ws).await?.ok_or_else(not_found);
    }
    match workspaces::resolve(state, caller, key).await {
        Ok(ws) => Ok(ws),
        Err(ApiError::NotFound(m)) => match key.parse() {
            Ok(id) => match state.store.workspace_get(id).await {
                Ok(ws) => allowed(state, caller, ws).await?.ok_or(ApiError::NotFound(m)),
                Err(_) => Err(ApiError::NotFound(m)),
            },
            Err(_) => Err(ApiError::NotFound(m)),
        },
        Err(e) => Err(e),
    }
}

async fn allowed(state: &AppState, caller: &User, ws: Workspace) -> Result<Option<Workspace>, ApiError> {
    if ws.owner == caller.id || caller.role == Role::Admin {
        return Ok(Some(ws));
    }
    let shared = state.store.workspace_share_list(ws.id).await?;
    Ok(shared.iter().any(|(id, _)| *id == caller.id).then_some(ws))
}

async fn owned(state: &AppState, caller: &User, key: &str) -> Result<Workspace, ApiError> {
    let ws = workspaces::resolve(state, caller, key).await?;
    if ws.owner != caller.id && caller.role != Role::Admin {
        return Err(ApiError::Forbidden(format!("only the owner of workspace {} may share it", ws.name)));
    }
    Ok(ws)
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ShareView {
    pub user: String,
}

async fn share_views(state: &AppState, ws: &Workspace) -> Result<Vec<ShareView>, ApiError> {
    Ok(state
        .store
        .workspace_share_list(ws.id)
        .await?
        .into_iter()
        .map(|(_, n)| ShareView { user: n.to_string() })
        .collect())
}

pub async fn list_shares(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path(key): Path<String>,
) -> Result<Json<Vec<ShareView>>, ApiError> {
    let ws = owned(&state, &user, &key).await?;
    Ok(Json(share_views(&state, &ws).await?))
}

async fn named_user(state: &AppState, name: &str) -> Result<User, ApiError> {
    let not_found = || ApiError::NotFound(format!("no user named {name}"));
    let name = Name::parse(name).map_err(|_| not_found())?;
    match state.store.user_get_by_name_with_password(&name).await? {
        Some((user, _)) => Ok(user),
        None => Err(not_found()),
    }
}

pub async fn add_share(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path((key, name)): Path<(String, String)>,
) -> Result<Json<Vec<ShareView>>, ApiError> {
    let ws = owned(&state, &user, &key).await?;
    let with = named_user(&state, &name).await?;
    if with.id == ws.owner {
        return Err(ApiError::InvalidRequest(format!(
            "{} owns workspace {}; share it with someone else",
            with.name, ws.name
        )));
    }
    state.store.workspace_share_add(ws.id, with.id).await?;
    state.routes.invalidate();
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, with = %with.name, "workspace shared");
    Ok(Json(share_views(&state, &ws).await?))
}

pub async fn remove_share(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    Path((key, name)): Path<(String, String)>,
) -> Result<Json<Vec<ShareView>>, ApiError> {
    let ws = owned(&state, &user, &key).await?;
    let with = named_user(&state, &name).await?;
    match state.store.workspace_share_remove(ws.id, with.id).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => {
            return Err(ApiError::NotFound(format!("workspace {} is not shared with {}", ws.name, with.name)))
        }
        Err(e) => return Err(e.into()),
    }
    state.routes.invalidate();
    Ok(Json(share_views(&state, &ws).await?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_account_and_per_address() {
        let limiter = LoginLimiter::default();
        let t0 = Instant::now();
        let here: Option<IpAddr> = "10.0.0.1".parse().ok();
        let there: Option<IpAddr> = "10.0.0.2".parse().ok();
        for _ in 0..ACCOUNT_FAILURES {
            assert!(limiter.check("ada", here, t0).is_ok());
            limiter.record_failure("ada", here, t0);
        }
        // The account is locked from anywhere, any spelling of its name.
        let (what, wait) = limiter.check("ADA", there, t0).unwrap_err();
        assert_eq!(what, "this account");
        assert_eq!(wait, WINDOW.as_secs());
        // Another account from the same address still may try.
        assert!(limiter.check("bob", here, t0).is_ok());
        // The window passes.
        assert!(limiter.check("ada", here, t0 + WINDOW).is_ok());
        // An address guessing many names is stopped at its own limit.
        let limiter = LoginLimiter::default();
        for i in 0..ADDRESS_FAILURES {
            limiter.record_failure(&format!("user{i}"), here, t0);
        }
        assert_eq!(limiter.check("newname", here, t0).unwrap_err().0, "this address");
        assert!(limiter.check("newname", there, t0).is_ok());
        // Success clears the account's failures.
        let limiter = LoginLimiter::default();
        for _ in 0..ACCOUNT_FAILURES - 1 {
            limiter.record_failure("ada", here, t0);
        }
        limiter.record_success("ada");
        limiter.record_failure("ada", here, t0);
        assert!(limiter.check("ada", here, t0).is_ok());
    }
}
