//! Sharing on a workspace's page: the users it is shared with (they may open its apps and
//! terminal), a form to share it with a user by name, and Remove. The API's handlers in
//! [`crate::access`] decide who may (the owner and admins).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::{Form, Router};
use cove_core::Workspace;
use serde::Deserialize;

use super::{csrf_field, error_page, message_page, see_other, Session};
use crate::access;
use crate::error::ApiError;
use crate::pages::escape;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/w/{key}/shares", post(add)).route("/w/{key}/shares/remove", post(remove))
}

/// The section; empty for people who may not share the workspace.
pub async fn section(state: &AppState, session: &Session, ws: &Workspace, k: &str) -> String {
    let listed = access::list_shares(State(state.clone()), session.caller(), Path(ws.id.to_string())).await;
    let Ok(axum::Json(users)) = listed else {
        return String::new();
    };
    let csrf = csrf_field(session);
    let list = if users.is_empty() {
        "<p class=\"empty\">Not shared: only its owner and admins can open it.</p>".to_string()
    } else {
        let items: String = users
            .iter()
            .map(|u| {
                format!(
                    "<li data-share=\"{user}\">{user} <form method=\"post\" action=\"/w/{k}/shares/remove\" class=\"inline\" \
data-confirm=\"Stop sharing {name} with {user}?\">{csrf}<input type=\"hidden\" name=\"user\" value=\"{user}\">\
<button type=\"submit\" class=\"danger\">Remove<span class=\"sr-only\"> {user}</span></button></form></li>",
                    user = escape(&u.user),
                    name = escape(ws.name.as_str()),
                )
            })
            .collect();
        format!("<ul class=\"shares\">{items}</ul>")
    };
    format!(
        "<section aria-labelledby=\"h-sharing\" id=\"sharing\"><h2 id=\"h-sharing\">Sharing</h2>\
<p class=\"hint\">People it is shared with can open its apps and terminal; only the owner and admins can change or delete it.</p>{list}\
<form method=\"post\" action=\"/w/{k}/shares\">{csrf}<label for=\"share-user\">Share with user</label>\
<input id=\"share-user\" name=\"user\" required maxlength=\"64\" autocomplete=\"off\" placeholder=\"their user name\">\
<p><button type=\"submit\">Share</button></p></form></section>"
    )
}

#[derive(Deserialize)]
struct UserForm {
    #[serde(default)]
    user: String,
}

fn done(session: &Session, key_: &str, word: &str, result: Result<impl Sized, ApiError>) -> Response {
    match result {
        Ok(_) => see_other(&format!("/w/{}?done={word}#sharing", cove_core::percent_encode(key_))),
        // "no user named x" is worth saying; a missing workspace stays the one "not found" page.
        Err(ApiError::NotFound(m)) if !m.starts_with("workspace ") => {
            message_page(session, StatusCode::NOT_FOUND, "Cannot do that", &m)
        }
        Err(e) => error_page(session, &e),
    }
}

async fn add(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<UserForm>,
) -> Response {
    let user = form.user.trim().to_string();
    if user.is_empty() {
        return error_page(&session, &ApiError::InvalidRequest("give the name of a user to share it with".into()));
    }
    let result = access::add_share(State(state), session.caller(), Path((key_.clone(), user))).await;
    done(&session, &key_, "shared", result)
}

async fn remove(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<UserForm>,
) -> Response {
    let result = access::remove_share(State(state), session.caller(), Path((key_.clone(), form.user))).await;
    done(&session, &key_, "unshared", result)
}
