//! The dashboard: server-rendered pages on the control plane's origin, for people who
//! would rather click than type. Every page calls the same application functions as the
//! JSON API (`workspaces::*`, `api::user_create`, ...), so the rules (validation, roles,
//! quotas) cannot drift apart; only the shape of the answer differs.
//!
//! Sessions are the `cove_session` cookie (HttpOnly, SameSite=Lax, Secure over HTTPS).
//! Every state-changing form carries a CSRF token in a hidden `csrf` field, derived from
//! the session's secret (which script on another origin cannot read), and `csrf::layer`
//! refuses any POST on this origin outside the API without it. Pages send a
//! Content-Security-Policy of `'self'`: the small scripts and styles are files served by
//! Cove (`/assets/...`), never inline, and nothing comes from a CDN.

mod account;
mod admin;
pub mod csrf;
mod secrets;
mod sessions;
mod sharing;
pub mod usage;
mod workspaces;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use cove_core::{hash_token, ApiToken, Role, TokenScope, User};

use crate::auth::{Access, Caller};
use crate::error::ApiError;
use crate::pages::escape;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/assets/dashboard.css",
            get(|| asset("text/css; charset=utf-8", include_str!("../../assets/dashboard.css"))),
        )
        .route(
            "/assets/dashboard.js",
            get(|| asset("text/javascript; charset=utf-8", include_str!("../../assets/dashboard.js"))),
        )
        .merge(workspaces::router())
        .merge(account::router())
        .merge(admin::router())
        .merge(usage::router())
        .merge(secrets::router())
        .merge(sessions::router())
        .merge(sharing::router())
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// A logged-in browser: the user, the session's token and its CSRF token.
pub struct Session {
    pub user: User,
    pub token: ApiToken,
    pub csrf: String,
    /// The session token's hash, to check later that it still stands (the event stream).
    pub token_hash: String,
}

impl Session {
    /// The session as the API's `Caller`, with the same scope rules as a bearer token.
    pub fn caller(&self) -> Caller {
        let scope = self.token.scope.min(TokenScope::widest_for(self.user.role));
        let mut user = self.user.clone();
        if scope < TokenScope::Admin {
            user.role = Role::Member;
        }
        Caller(user, Access { scope, role: self.user.role })
    }

    pub fn is_admin(&self) -> bool {
        self.caller().require_admin().is_ok()
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let login = || {
            let here = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            crate::pages::redirect(&format!("/login?next={}", cove_core::percent_encode(here)))
        };
        let Some(secret) = crate::gate::cookie(&parts.headers, crate::dashboard::SESSION_COOKIE) else {
            return Err(login());
        };
        let token_hash = hash_token(secret);
        let found = state.store.token_authenticate(&token_hash, Utc::now()).await;
        let Ok(Some((token, user))) = found else {
            return Err(login());
        };
        if let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>() {
            slot.set(Some(user.id), user.name.as_str());
        }
        Ok(Session { csrf: csrf::token_for(secret), user, token, token_hash })
    }
}

/// One dashboard page: the navigation, then `body` (already HTML).
pub fn page(session: &Session, title: &str, body: &str) -> Response {
    page_with_status(StatusCode::OK, session, title, body)
}

pub fn page_with_status(status: StatusCode, session: &Session, title: &str, body: &str) -> Response {
    let admin = if session.is_admin() {
        "<li><a href=\"/admin/users\">Users</a></li><li><a href=\"/admin/quotas\">Quotas</a></li>\
<li><a href=\"/admin/audit\">Audit log</a></li><li><a href=\"/admin/settings\">Settings</a></li>"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title} · Cove</title>\
<link rel=\"stylesheet\" href=\"/assets/dashboard.css\"><script src=\"/assets/dashboard.js\" defer></script></head>\
<body><a class=\"skip\" href=\"#main\">Skip to content</a><header><nav aria-label=\"Main\"><a class=\"brand\" href=\"/\">Cove</a><ul>\
<li><a href=\"/\">Workspaces</a></li><li><a href=\"/new\">New workspace</a></li><li><a href=\"/secrets\">Secrets</a></li><li><a href=\"/tokens\">API tokens</a></li><li><a href=\"/sessions\">Sessions</a></li>\
<li><a href=\"/usage\">Usage</a></li>{admin}</ul>\
<form method=\"post\" action=\"/logout\" class=\"inline\">{csrf}<span class=\"muted\">Logged in as {user}.</span> \
<button type=\"submit\">Log out</button></form></nav></header><main id=\"main\">{body}</main></body></html>",
        title = escape(title),
        csrf = csrf_field(session),
        user = escape(session.user.name.as_str()),
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    secure_headers(&mut response);
    response
}

/// No framing by other sites, no scripts or styles but Cove's own, no caching of pages
/// that show tokens and state.
pub fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(session: &Session) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", escape(&session.csrf))
}

/// An error from the application layer as a page: the same words the API would send.
/// "Not found" is one fixed page, so a workspace of another user and one that does not
/// exist look the same.
pub fn error_page(session: &Session, e: &ApiError) -> Response {
    match e {
        ApiError::NotFound(_) => not_found(session),
        ApiError::Internal(detail) => {
            tracing::error!("{detail}");
            message_page(session, e.status(), "Something went wrong", "Cove could not do this; try again.")
        }
        other => message_page(session, other.status(), "Cannot do that", &other.to_string()),
    }
}

pub fn not_found(session: &Session) -> Response {
    message_page(session, StatusCode::NOT_FOUND, "Not found", "There is nothing at this address.")
}

pub fn message_page(session: &Session, status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p role=\"alert\" class=\"error\">{}</p><p><a href=\"/\">Back to your workspaces</a></p>",
        escape(title),
        escape(message)
    );
    page_with_status(status, session, title, &body)
}

/// The notice for `?done=WORD` after a form on a workspace's page; unknown words show nothing.
pub fn done_notice(word: &str) -> Option<String> {
    let text = match word {
        "secrets-refreshed" => "Secrets refreshed: the workspace gets the current set at its next start.",
        "secret-set" => "Secret set. The workspace gets it after a refresh and its next start.",
        "secret-deleted" => "Secret deleted. The workspace keeps its frozen copy until refreshed.",
        "rebuilding" => "Rebuilding: Cove reads its devcontainer.json again; its state shows how it goes.",
        "shared" => "Shared.",
        "unshared" => "No longer shared with that user.",
        _ => return None,
    };
    Some(format!("<p class=\"notice\" role=\"status\">{text}</p>"))
}

/// An error shown above a form that is shown again.
pub fn alert(message: Option<&str>) -> String {
    message.map(|m| format!("<p role=\"alert\" class=\"error\">{}</p>", escape(m))).unwrap_or_default()
}

/// After a successful POST: back to a page (303, so a reload does not post again).
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// A time as people read it, in UTC.
pub fn when(t: chrono::DateTime<Utc>) -> String {
    format!("<time datetime=\"{}\">{}</time>", t.to_rfc3339(), t.format("%Y-%m-%d %H:%M UTC"))
}
