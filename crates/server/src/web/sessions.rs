//! The user's login sessions (password and single sign-on), from the API's own list, with
//! Revoke; revoking the session this browser uses logs it out.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::{csrf_field, error_page, page, see_other, when, Session};
use crate::access;
use crate::pages::escape;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/sessions", get(list)).route("/sessions/{id}/revoke", post(revoke))
}

async fn list(State(state): State<AppState>, session: Session) -> Response {
    // The browser's session is its cookie, not a bearer token: marked by its id here.
    let sessions = match access::list_sessions(State(state), session.caller(), HeaderMap::new()).await {
        Ok(axum::Json(s)) => s,
        Err(e) => return error_page(&session, &e),
    };
    let this = session.token.id.to_string();
    let rows: String = sessions
        .iter()
        .map(|s| {
            let current = s.id == this;
            let badge = if current { " <span class=\"badge\">this session</span>" } else { "" };
            let confirm = if current {
                "Revoke this session? You will be logged out.".to_string()
            } else {
                "Revoke this session? Whoever uses it is logged out at once.".to_string()
            };
            format!(
                "<tr data-session=\"{id}\"><td data-label=\"Created\">{created}{badge}</td><td data-label=\"Last used\">{used}</td>\
<td data-label=\"Address\">{address}</td><td data-label=\"User agent\">{agent}</td><td>\
<form method=\"post\" action=\"/sessions/{id}/revoke\" class=\"inline\" data-confirm=\"{confirm}\">{csrf}\
<button type=\"submit\" class=\"danger\">Revoke<span class=\"sr-only\"> the session created {created_text} ({agent})</span></button></form></td></tr>",
                id = escape(&s.id),
                created = when(s.created_at),
                created_text = s.created_at.format("%Y-%m-%d %H:%M UTC"),
                used = s.last_used_at.map(when).unwrap_or_else(|| "never".into()),
                address = escape(s.address.as_deref().unwrap_or("unknown")),
                agent = escape(s.user_agent.as_deref().unwrap_or("unknown")),
                csrf = csrf_field(&session),
            )
        })
        .collect();
    let table = if sessions.is_empty() {
        "<p class=\"empty\">No login sessions.</p>".to_string()
    } else {
        format!(
            "<table class=\"list\"><thead><tr><th scope=\"col\">Created</th><th scope=\"col\">Last used</th>\
<th scope=\"col\">Address</th><th scope=\"col\">User agent</th><th scope=\"col\"><span class=\"sr-only\">Revoke</span></th></tr></thead>\
<tbody>{rows}</tbody></table>"
        )
    };
    let body = format!(
        "<h1>Sessions</h1><p>Where you are logged in (the dashboard and <code>cove login</code>). \
Revoke one you do not recognise: it stops working at once. API tokens are on <a href=\"/tokens\">their own page</a>.</p>{table}"
    );
    page(&session, "Sessions", &body)
}

async fn revoke(State(state): State<AppState>, session: Session, Path(id): Path<String>) -> Response {
    let current = id == session.token.id.to_string();
    match access::revoke_session(State(state), session.caller(), Path(id)).await {
        Ok(_) if current => see_other("/login"),
        Ok(_) => see_other("/sessions"),
        Err(e) => error_page(&session, &e),
    }
}
