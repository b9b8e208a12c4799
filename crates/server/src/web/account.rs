//! The user's API tokens: list, create (the secret shown once), revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use cove_core::TokenScope;
use serde::Deserialize;

use super::{alert, csrf_field, error_page, page_with_status, see_other, when, Session};
use crate::pages::escape;
use crate::views::CreateToken;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/tokens", get(list).post(create)).route("/tokens/{id}/revoke", post(revoke))
}

async fn list(State(state): State<AppState>, session: Session) -> Response {
    tokens_page(&state, &session, None, None, StatusCode::OK).await
}

async fn tokens_page(
    state: &AppState,
    session: &Session,
    created: Option<(&str, &str)>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let tokens = match state.store.token_list_by_user(session.user.id).await {
        Ok(t) => t,
        Err(e) => return error_page(session, &e.into()),
    };
    let now = chrono::Utc::now();
    let rows: String = tokens
        .iter()
        .map(|t| {
            let this = if t.id == session.token.id { " <span class=\"badge\">this browser</span>" } else { "" };
            let expires = match t.expires_at {
                Some(at) if at <= now => format!("expired {}", when(at)),
                Some(at) => when(at),
                None => "never".into(),
            };
            let used = t.last_used_at.map(when).unwrap_or_else(|| "never".into());
            format!(
                "<tr><td data-label=\"Name\">{name}{this}</td><td data-label=\"Scope\">{scope}</td><td data-label=\"Created\">{created}</td>\
<td data-label=\"Expires\">{expires}</td><td data-label=\"Last used\">{used}</td><td>\
<form method=\"post\" action=\"/tokens/{id}/revoke\" class=\"inline\" data-confirm=\"Revoke token {name}? Whatever uses it stops working.\">{csrf}\
<button type=\"submit\" class=\"danger\">Revoke<span class=\"sr-only\"> {name}</span></button></form></td></tr>",
                name = escape(&t.name),
                scope = t.scope,
                created = when(t.created_at),
                id = t.id,
                csrf = csrf_field(session),
            )
        })
        .collect();
    let table = if tokens.is_empty() {
        "<p class=\"empty\">No tokens.</p>".to_string()
    } else {
        format!(
            "<table class=\"list\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Scope</th><th scope=\"col\">Created</th>\
<th scope=\"col\">Expires</th><th scope=\"col\">Last used</th><th scope=\"col\"><span class=\"sr-only\">Revoke</span></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let shown = created
        .map(|(name, secret)| {
            format!(
                "<div class=\"notice\" role=\"status\"><p>Token <strong>{}</strong> created. Copy it now: it is not shown again.</p>\
<p><code id=\"new-token\" class=\"secret\">{}</code></p></div>",
                escape(name),
                escape(secret)
            )
        })
        .unwrap_or_default();
    let admin_option = if session.is_admin() { "<option value=\"admin\">admin</option>" } else { "" };
    let body = format!(
        "<h1>API tokens</h1>{shown}{error}<p>Tokens let scripts and AI agents use Cove's API and CLI (<code>COVE_TOKEN=…</code>). \
Only a hash is kept.</p>{table}<h2>New token</h2><form method=\"post\" action=\"/tokens\">{csrf}\
<label for=\"token-name\">Name</label><input id=\"token-name\" name=\"name\" required maxlength=\"64\">\
<label for=\"token-scope\">Scope</label><select id=\"token-scope\" name=\"scope\"><option value=\"read\">read: look only</option>\
<option value=\"write\" selected>write: manage your workspaces</option>{admin_option}</select>\
<label for=\"token-expiry\">Expires after</label><select id=\"token-expiry\" name=\"expires_in_days\">\
<option value=\"7\">7 days</option><option value=\"30\" selected>30 days</option><option value=\"90\">90 days</option>\
<option value=\"365\">a year</option><option value=\"\">never</option></select>\
<p><button type=\"submit\" class=\"primary\">Create token</button></p></form>",
        error = alert(error),
        csrf = csrf_field(session),
    );
    page_with_status(status, session, "API tokens", &body)
}

#[derive(Deserialize)]
struct NewToken {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    expires_in_days: String,
}

async fn create(State(state): State<AppState>, session: Session, Form(form): Form<NewToken>) -> Response {
    let scope = match form.scope.as_str() {
        "read" => TokenScope::Read,
        "" | "write" => TokenScope::Write,
        "admin" => TokenScope::Admin,
        _ => return tokens_page(&state, &session, None, Some("Choose a scope."), StatusCode::BAD_REQUEST).await,
    };
    let expires_in_days = match form.expires_in_days.trim() {
        "" => None,
        d => match d.parse() {
            Ok(d) => Some(d),
            Err(_) => {
                return tokens_page(&state, &session, None, Some("Choose an expiry."), StatusCode::BAD_REQUEST).await
            }
        },
    };
    let body = CreateToken { name: form.name.clone(), expires_in_days, scope: Some(scope) };
    match crate::api::token_create(&state, &session.caller(), body).await {
        Ok((secret, token)) => {
            tokens_page(&state, &session, Some((&token.name, &secret)), None, StatusCode::CREATED).await
        }
        Err(e) => tokens_page(&state, &session, None, Some(&e.to_string()), e.status()).await,
    }
}

async fn revoke(State(state): State<AppState>, session: Session, Path(id): Path<String>) -> Response {
    let not_found = crate::error::ApiError::NotFound(format!("token {id} not found"));
    let Ok(token_id) = id.parse() else {
        return error_page(&session, &not_found);
    };
    let deleted = state.store.token_delete(session.user.id, token_id).await;
    if deleted.is_ok() {
        state.access.invalidate();
    }
    match deleted {
        // Revoking this browser's own token logs it out.
        Ok(()) if token_id == session.token.id => see_other("/login"),
        Ok(()) => see_other("/tokens"),
        Err(cove_store::StoreError::NotFound) => error_page(&session, &not_found),
        Err(e) => error_page(&session, &e.into()),
    }
}
