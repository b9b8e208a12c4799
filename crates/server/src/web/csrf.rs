//! CSRF protection for the dashboard's forms. The token is a hash of the session's secret
//! (under a label of its own, so it is not the secret and cannot be turned back into it):
//! a page on another origin can neither read the HttpOnly session cookie nor this page,
//! so it cannot know the token. Nothing is stored; logging out ends both.
//!
//! `layer` checks every POST (and any other state-changing method) on the dashboard's
//! origin, except the few routes that run before there is a session, so a new form cannot
//! forget it. SameSite=Lax on the cookie is the second line.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Routes that take a POST before anyone is logged in.
pub const EXEMPT: &[&str] = &["/login"];

/// Forms are small; an upload is not a form.
const MAX_FORM_BYTES: usize = 64 * 1024;

pub fn token_for(session_secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"cove dashboard csrf\0");
    hasher.update(session_secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
pub fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (crate::pages::decode(k) == name).then(|| crate::pages::decode(v))
    })
}

fn refused(message: &str) -> Response {
    crate::pages::html(StatusCode::FORBIDDEN, "Request refused", message)
}

pub async fn layer(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return next.run(request).await;
    }
    let path = request.uri().path();
    if EXEMPT.contains(&path) || path.starts_with("/api/") {
        return next.run(request).await;
    }
    let Some(secret) = crate::gate::cookie(request.headers(), crate::dashboard::SESSION_COOKIE).map(String::from)
    else {
        return refused("Your session has ended. Log in again, then repeat what you did.");
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
    };
    let sent = std::str::from_utf8(&bytes).ok().and_then(|b| form_value(b, "csrf"));
    if !sent.is_some_and(|sent| same(&sent, &token_for(&secret))) {
        tracing::warn!(path = %parts.uri.path(), "dashboard form refused: missing or wrong CSRF token");
        return refused("This form was not sent from a page of this Cove (its security token is missing or stale). Reload the page and try again.");
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_by_session_and_are_not_the_secret() {
        let a = token_for("cove_aaaa");
        assert_eq!(a, token_for("cove_aaaa"));
        assert_ne!(a, token_for("cove_aaab"));
        assert!(!a.contains("aaaa"));
        assert!(same(&a, &token_for("cove_aaaa")));
        assert!(!same(&a, &a[1..]));
    }

    #[test]
    fn form_values() {
        let body = "name=api&csrf=ab%2Bc&x&repo=https%3A%2F%2Fe.com%2Fr.git";
        assert_eq!(form_value(body, "csrf").as_deref(), Some("ab+c"));
        assert_eq!(form_value(body, "repo").as_deref(), Some("https://e.com/r.git"));
        assert_eq!(form_value(body, "x").as_deref(), Some(""));
        assert_eq!(form_value(body, "nope"), None);
    }
}
