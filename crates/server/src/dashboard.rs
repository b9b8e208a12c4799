//! Routes on the dashboard's origin that are pages, not API: logging in with a password
//! (a session cookie that never leaves this origin), handing out tickets for app hosts,
//! and `/metrics`. The dashboard's pages are in `web`.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use chrono::Utc;
use cove_core::{hash_token, ApiToken, User};
use cove_proxy::parse_host;
use serde::Deserialize;

use crate::{pages, AppState};

pub const SESSION_COOKIE: &str = "cove_session";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/auth/app", get(app_ticket))
        .route("/metrics", get(metrics))
        .merge(crate::web::router())
        // Every state-changing form on this origin carries the session's CSRF token.
        .layer(axum::middleware::from_fn(crate::web::csrf::layer))
}

/// The logged-in user and their session's token, from the session cookie.
async fn session_user(state: &AppState, headers: &HeaderMap) -> Option<(User, ApiToken)> {
    let secret = crate::gate::cookie(headers, SESSION_COOKIE)?;
    let (token, user) = state.store.token_authenticate(&hash_token(secret), Utc::now()).await.ok()??;
    Some((user, token))
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    pages::login_form(&q.next.unwrap_or_else(|| "/".into()), None, sso_name(&state))
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = form.next.unwrap_or_else(|| "/".into());
    let origin = crate::access::Origin::of(&headers, peer.map(|axum::Extension(c)| c.0));
    let (user, secret) =
        match crate::access::password_login(&state, &form.username, form.password, &origin, "browser session").await {
            Ok((user, secret, _)) => (user, secret),
            Err(crate::error::ApiError::TooManyRequests(message, seconds)) => {
                let mut response =
                    pages::login_form(&next, Some(&format!("Too many failed logins: {message}.")), sso_name(&state));
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
                return response;
            }
            Err(crate::error::ApiError::Unauthenticated(_)) => {
                return pages::login_form(&next, Some("Invalid username or password."), sso_name(&state))
            }
            Err(_) => {
                return pages::html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Cannot log in",
                    "Cove could not store the session; try again.",
                )
            }
        };
    tracing::info!(user = %user.name, "logged in to the dashboard");
    let mut response = pages::redirect(&safe_next(&next));
    pages::set_cookie(&mut response, SESSION_COOKIE, &secret, state.config.https(), None);
    response
}

/// The OIDC provider's name for the login page's "Sign in with" button, if configured.
fn sso_name(state: &AppState) -> Option<&str> {
    state.oidc.as_ref().map(|o| o.config.display_name.as_str())
}

/// Only paths on this origin and app hosts of this Cove: never an open redirect.
pub(crate) fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") {
        return next.to_string();
    }
    "/".to_string()
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some((user, token)) = session_user(&state, &headers).await {
        let _ = state.store.token_delete(user.id, token.id).await;
        // Its app hosts close with it, now rather than when the gate's cache expires.
        state.access.invalidate();
    }
    let mut response = pages::redirect("/login");
    pages::set_cookie(&mut response, SESSION_COOKIE, "", state.config.https(), Some(0));
    response
}

#[derive(Deserialize)]
struct TicketQuery {
    target: String,
}

/// An app host sent the browser here: if the user is logged in and may open the app,
/// send them back with a one-time ticket for that host alone.
async fn app_ticket(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<TicketQuery>) -> Response {
    let Some((scheme_host, path)) = split_target(&q.target) else {
        return pages::not_found();
    };
    let Some(host) = parse_host(scheme_host.1, &state.config.apps_domain) else {
        return pages::not_found();
    };
    let Some((user, session)) = session_user(&state, &headers).await else {
        let here = format!("/auth/app?target={}", cove_core::percent_encode(&q.target));
        return pages::redirect(&format!("/login?next={}", cove_core::percent_encode(&here)));
    };
    if !may_open(&state, &user, &host).await {
        return pages::not_found();
    }
    let ticket = state.signer.ticket(&host.host, user.id, session.id, path, Utc::now());
    pages::redirect(&format!(
        "{}://{}/__cove/auth?ticket={}",
        scheme_host.0,
        host.host,
        cove_core::percent_encode(&ticket)
    ))
}

/// ("http", "host:port") and the path of an absolute http(s) URL.
fn split_target(target: &str) -> Option<((&str, &str), &str)> {
    let (scheme, rest) = target.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some(((scheme, host), path))
}

/// The same rule the proxy applies, so a ticket is only issued where it will be honoured.
async fn may_open(state: &AppState, user: &User, host: &cove_proxy::AppHost) -> bool {
    let route = crate::gate::lookup(state.store.as_ref(), &host.owner, &host.workspace).await;
    route.ok().flatten().is_some_and(|r| r.allows(&host.app, Some(user.id)))
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}
