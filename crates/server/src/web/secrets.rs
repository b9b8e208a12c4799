//! Secrets: the Secrets page (the user's own, and the instance's for admins) and each
//! workspace's own secrets, frozen set and "Refresh secrets" on its page. Every action is
//! the API's handler in [`crate::secrets_api`]; pages list names, kinds, scopes and times,
//! and a value typed into a form is never sent back, not even when the form is refused.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use cove_core::Workspace;
use cove_store::SecretKind;
use serde::Deserialize;

use super::{alert, csrf_field, error_page, message_page, page_with_status, see_other, when, Session};
use crate::api::ApiJson;
use crate::error::ApiError;
use crate::pages::escape;
use crate::secrets_api::{self, FrozenView, ScopeQuery, SecretView, SetBody};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/secrets", get(list).post(set))
        .route("/secrets/delete", post(remove))
        .route("/w/{key}/secrets", post(set_workspace))
        .route("/w/{key}/secrets/delete", post(remove_workspace))
        .route("/w/{key}/secrets/refresh", post(refresh))
}

fn scope_query(scope: &str) -> Result<Query<ScopeQuery>, axum::extract::rejection::QueryRejection> {
    Ok(Query(ScopeQuery { scope: Some(scope.to_string()) }))
}

/// A table of secrets with a delete button each; `action` takes `name` (and `scope`).
fn table(session: &Session, secrets: &[SecretView], action: &str, scope: Option<&str>, empty: &str) -> String {
    if secrets.is_empty() {
        return format!("<p class=\"empty\">{}</p>", escape(empty));
    }
    let scope_field =
        scope.map(|s| format!("<input type=\"hidden\" name=\"scope\" value=\"{}\">", escape(s))).unwrap_or_default();
    let rows: String = secrets
        .iter()
        .map(|s| {
            format!(
                "<tr data-secret=\"{name}\"><td data-label=\"Name\"><code>{name}</code></td><td data-label=\"Kind\">{kind}</td>\
<td data-label=\"Created\">{created}</td><td data-label=\"Updated\">{updated}</td><td>\
<form method=\"post\" action=\"{action}\" class=\"inline\" data-confirm=\"Delete secret {name}? Workspaces keep their frozen copy until refreshed.\">\
{csrf}{scope_field}<input type=\"hidden\" name=\"name\" value=\"{name}\">\
<button type=\"submit\" class=\"danger\">Delete<span class=\"sr-only\"> {name}</span></button></form></td></tr>",
                name = escape(&s.name),
                kind = kind_text(s.kind),
                created = when(s.created_at),
                updated = when(s.updated_at),
                csrf = csrf_field(session),
            )
        })
        .collect();
    format!(
        "<table class=\"list\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Kind</th><th scope=\"col\">Created</th>\
<th scope=\"col\">Updated</th><th scope=\"col\"><span class=\"sr-only\">Delete</span></th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

fn kind_text(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Env => "environment variable",
        SecretKind::File => "file in /run/cove/secrets",
    }
}

/// The two forms that set a secret (an environment variable, a file), posting to `action`.
/// `scopes` offers a choice of scope (admins on the Secrets page). `name` is what was typed
/// before a refusal; the value never is.
fn set_forms(session: &Session, action: &str, id: &str, scopes: bool, name: &str) -> String {
    let scope_select = |which: &str| {
        if scopes {
            format!(
                "<label for=\"{id}-{which}-scope\">Scope</label><select id=\"{id}-{which}-scope\" name=\"scope\">\
<option value=\"user\" selected>yours: your workspaces</option><option value=\"instance\">instance: every user's workspaces</option></select>"
            )
        } else {
            String::new()
        }
    };
    let csrf = csrf_field(session);
    let name = escape(name);
    format!(
        "<div class=\"forms\"><form method=\"post\" action=\"{action}\" id=\"{id}-env\"><fieldset><legend>Environment variable</legend>{csrf}\
<input type=\"hidden\" name=\"kind\" value=\"env\">\
<label for=\"{id}-env-name\">Name</label><input id=\"{id}-env-name\" name=\"name\" required maxlength=\"128\" autocomplete=\"off\" \
pattern=\"[A-Za-z_][A-Za-z0-9_]*\" value=\"{name}\" aria-describedby=\"{id}-env-hint\">\
<p class=\"hint\" id=\"{id}-env-hint\">Letters, digits and <code>_</code>, not starting with a digit.</p>\
<label for=\"{id}-env-value\">Value</label><input id=\"{id}-env-value\" name=\"value\" type=\"password\" autocomplete=\"new-password\" required>\
{env_scope}<p><button type=\"submit\" class=\"primary\">Set variable</button></p></fieldset></form>\
<form method=\"post\" action=\"{action}\" id=\"{id}-file\"><fieldset><legend>File</legend>{csrf}\
<input type=\"hidden\" name=\"kind\" value=\"file\">\
<label for=\"{id}-file-name\">File name</label><input id=\"{id}-file-name\" name=\"name\" required maxlength=\"128\" autocomplete=\"off\" \
aria-describedby=\"{id}-file-hint\"><p class=\"hint\" id=\"{id}-file-hint\">It appears as /run/cove/secrets/NAME; letters, digits, <code>.</code> <code>_</code> <code>-</code>.</p>\
<label for=\"{id}-file-value\">Content</label><textarea id=\"{id}-file-value\" name=\"value\" rows=\"4\" autocomplete=\"off\" spellcheck=\"false\" required></textarea>\
{file_scope}<p><button type=\"submit\" class=\"primary\">Set file</button></p></fieldset></form></div>\
<p class=\"hint\">Values are encrypted and never shown again. A workspace gets the secrets as they were when it was created; \
refresh it on its page to take the current ones.</p>",
        env_scope = scope_select("env"),
        file_scope = scope_select("file"),
    )
}

async fn list(State(state): State<AppState>, session: Session) -> Response {
    secrets_page(&state, &session, None, None, StatusCode::OK).await
}

async fn secrets_page(
    state: &AppState,
    session: &Session,
    done: Option<&str>,
    error: Option<(&str, &str)>,
    status: StatusCode,
) -> Response {
    let mine = match secrets_api::list(State(state.clone()), session.caller(), scope_query("user")).await {
        Ok(axum::Json(l)) => l,
        Err(e) => return error_page(session, &e),
    };
    let admin = session.is_admin();
    let instance = if admin {
        match secrets_api::list(State(state.clone()), session.caller(), scope_query("instance")).await {
            Ok(axum::Json(l)) => format!(
                "<section aria-labelledby=\"h-instance\"><h2 id=\"h-instance\">Instance secrets</h2>\
<p class=\"hint\">Every user's workspaces get these, unless the user or the workspace has one of the same name.</p>{}</section>",
                table(session, &l, "/secrets/delete", Some("instance"), "No instance secrets.")
            ),
            Err(e) => return error_page(session, &e),
        }
    } else {
        String::new()
    };
    let notice = done.map(|d| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(d))).unwrap_or_default();
    let (error, typed) = error.map_or((String::new(), ""), |(message, name)| (alert(Some(message)), name));
    let body = format!(
        "<h1>Secrets</h1>{notice}{error}<p>Environment variables and files your workspaces get at start, in your shell, \
terminals and editor (files under <code>/run/cove/secrets</code>, a tmpfs). A workspace's own secrets override yours, \
and yours override the instance's, by name.</p>\
<section aria-labelledby=\"h-mine\"><h2 id=\"h-mine\">Your secrets</h2>{mine}</section>{instance}\
<section aria-labelledby=\"h-set\"><h2 id=\"h-set\">Set a secret</h2>{forms}</section>",
        mine = table(
            session,
            &mine,
            "/secrets/delete",
            Some("user"),
            "You have no secrets yet. Set one below, or with `cove secrets set NAME`."
        ),
        forms = set_forms(session, "/secrets", "secret", admin, typed),
    );
    page_with_status(status, session, "Secrets", &body)
}

#[derive(Deserialize)]
struct SetForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    scope: String,
}

impl SetForm {
    fn body(self) -> Result<(String, SetBody), ApiError> {
        let kind: SecretKind = match self.kind.as_str() {
            "" => SecretKind::Env,
            k => k.parse().map_err(ApiError::InvalidRequest)?,
        };
        Ok((self.name.trim().to_string(), SetBody { value: self.value, kind: Some(kind) }))
    }
}

fn scope_name(scope: &str) -> &str {
    if scope.is_empty() {
        "user"
    } else {
        scope
    }
}

async fn set(State(state): State<AppState>, session: Session, Form(form): Form<SetForm>) -> Response {
    let scope = scope_name(&form.scope).to_string();
    let typed = form.name.clone();
    let result = match form.body() {
        Ok((name, body)) => {
            secrets_api::set(State(state.clone()), session.caller(), Path(name), scope_query(&scope), ApiJson(body))
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((_, axum::Json(v))) => {
            let done = format!("Secret {} set ({} scope).", v.name, v.scope);
            secrets_page(&state, &session, Some(&done), None, StatusCode::OK).await
        }
        Err(e @ ApiError::Internal(_)) => error_page(&session, &e),
        Err(e) => secrets_page(&state, &session, None, Some((&e.to_string(), &typed)), e.status()).await,
    }
}

#[derive(Deserialize)]
struct NameForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    scope: String,
}

async fn remove(State(state): State<AppState>, session: Session, Form(form): Form<NameForm>) -> Response {
    let scope = scope_name(&form.scope).to_string();
    match secrets_api::remove(State(state.clone()), session.caller(), Path(form.name.clone()), scope_query(&scope))
        .await
    {
        Ok(_) => {
            let done = format!("Secret {} deleted.", form.name);
            secrets_page(&state, &session, Some(&done), None, StatusCode::OK).await
        }
        Err(e @ ApiError::Internal(_)) => error_page(&session, &e),
        Err(e) => secrets_page(&state, &session, None, Some((&e.to_string(), "")), e.status()).await,
    }
}

/// The workspace page's section: its own secrets, its frozen set and "Refresh secrets".
/// Empty for people who may not manage them.
pub async fn workspace_section(state: &AppState, session: &Session, ws: &Workspace, k: &str) -> String {
    let caller = session.caller();
    let Ok((own, frozen)) = secrets_api::workspace_secrets(state, &caller.0, &ws.id.to_string()).await else {
        return String::new();
    };
    let frozen_html = if frozen.is_empty() {
        "<p class=\"empty\">It has no secrets now.</p>".to_string()
    } else {
        let rows: String = frozen
            .iter()
            .map(|f: &FrozenView| {
                format!(
                    "<tr><td data-label=\"Name\"><code>{}</code></td><td data-label=\"Kind\">{}</td><td data-label=\"From\">{}</td>\
<td data-label=\"Taken\">{}</td></tr>",
                    escape(&f.name),
                    kind_text(f.kind),
                    escape(&f.scope),
                    when(f.frozen_at)
                )
            })
            .collect();
        format!(
            "<table class=\"list\" id=\"frozen\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Kind</th>\
<th scope=\"col\">From scope</th><th scope=\"col\">Taken</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    format!(
        "<section aria-labelledby=\"h-secrets\" id=\"secrets\"><h2 id=\"h-secrets\">Secrets</h2>\
<h3>What it gets</h3><p class=\"hint\">The secrets as they were when it was created or last refreshed.</p>{frozen_html}\
<form method=\"post\" action=\"/w/{k}/secrets/refresh\" class=\"inline\">{csrf}\
<button type=\"submit\" id=\"refresh-secrets\" aria-describedby=\"refresh-hint\">Refresh secrets</button></form>\
<p class=\"hint\" id=\"refresh-hint\">Takes the current instance, user and workspace secrets; they take effect at the workspace's next start.</p>\
<h3>This workspace's own</h3>{own}<details><summary>Set a secret for this workspace</summary>{forms}</details></section>",
        csrf = csrf_field(session),
        own = table(
            session,
            &own,
            &format!("/w/{k}/secrets/delete"),
            None,
            "No secrets of its own; it gets yours and the instance's."
        ),
        forms = set_forms(session, &format!("/w/{k}/secrets"), "ws-secret", false, ""),
    )
}

fn back(key_: &str, done: &str) -> Response {
    see_other(&format!("/w/{}?done={done}#secrets", cove_core::percent_encode(key_)))
}

/// A refused form on a workspace's page: the API's words (a missing workspace stays the
/// one "not found" page).
fn refused(session: &Session, e: &ApiError) -> Response {
    match e {
        ApiError::NotFound(m) if !m.starts_with("workspace ") => {
            message_page(session, StatusCode::NOT_FOUND, "Cannot do that", m)
        }
        e => error_page(session, e),
    }
}

async fn set_workspace(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<SetForm>,
) -> Response {
    let result = match form.body() {
        Ok((name, body)) => {
            secrets_api::set_workspace(State(state), session.caller(), Path((key_.clone(), name)), ApiJson(body)).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => back(&key_, "secret-set"),
        Err(e) => refused(&session, &e),
    }
}

async fn remove_workspace(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<NameForm>,
) -> Response {
    match secrets_api::remove_workspace(State(state), session.caller(), Path((key_.clone(), form.name))).await {
        Ok(_) => back(&key_, "secret-deleted"),
        Err(e) => refused(&session, &e),
    }
}

async fn refresh(State(state): State<AppState>, session: Session, Path(key_): Path<String>) -> Response {
    match secrets_api::refresh(State(state), session.caller(), Path(key_.clone())).await {
        Ok(_) => back(&key_, "secrets-refreshed"),
        Err(e) => refused(&session, &e),
    }
}
