//! The few HTML pages Cove serves itself, and small response helpers shared by the
//! dashboard routes and the proxy gate.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cove_core::Workspace;
use serde_json::json;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#1d2430}}\
input,button{{font:inherit;padding:.4rem .6rem;margin:.2rem 0}}label{{display:block;margin-top:.6rem}}.muted{{color:#667}}</style></head>\
<body>{body}</body></html>",
        t = escape(title)
    )
}

pub fn html(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message));
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page(title, &body)).into_response()
}

/// A page whose body is already HTML.
pub fn html_raw(title: &str, body: &str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page(title, body)).into_response()
}

/// The one page for unknown hosts and for workspaces the caller may not see: the same
/// bytes either way, so that nobody learns which workspaces exist.
pub fn not_found() -> Response {
    html(StatusCode::NOT_FOUND, "Not found", "There is nothing at this address.")
}

pub fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Sets a host-only (no Domain), HttpOnly, SameSite=Lax cookie on `response`, Secure over
/// HTTPS. `Some(0)` as `max_age` deletes it.
pub fn set_cookie(response: &mut Response, name: &str, value: &str, secure: bool, max_age: Option<u32>) {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// What a browser sees while a workspace wakes: it follows progress through
/// `/__cove/status` and reloads once the workspace runs.
pub fn starting(ws: &Workspace) -> Response {
    let name = escape(ws.name.as_str());
    let body = format!(
        "<h1 id=\"cove-starting\">Starting {name}…</h1><p class=\"muted\" id=\"cove-state\">{state}</p>\
<script>\
async function poll(){{try{{const r=await fetch('/__cove/status',{{cache:'no-store',credentials:'same-origin'}});\
const s=await r.json();document.getElementById('cove-state').textContent=s.actual_state+(s.message?' — '+s.message:'');\
if(s.ready){{location.reload();return;}}}}catch(e){{}}setTimeout(poll,300);}}setTimeout(poll,300);</script>",
        state = escape(ws.actual.as_str())
    );
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(&format!("Starting {}", ws.name), &body),
    )
        .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// For a script that waited as long as it may: try again shortly.
pub fn still_starting(ws: &Workspace, waited: std::time::Duration) -> Response {
    let message = format!(
        "workspace {} is still {} after {}s{}; try again shortly",
        ws.name,
        ws.actual,
        waited.as_secs(),
        ws.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    );
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    response
}

/// A stopped workspace that may not wake: its owner is at the running quota.
pub fn over_quota(ws: &Workspace, message: &str, browser: bool) -> Response {
    if browser {
        html(
            StatusCode::CONFLICT,
            &format!("{} cannot start", ws.name),
            &format!("Workspace {} is stopped and cannot start: {message}.", ws.name),
        )
    } else {
        json_error(StatusCode::CONFLICT, "conflict", &format!("workspace {} cannot start: {message}", ws.name))
    }
}

/// The login page; `sso` is the OIDC provider's name, which adds a "Sign in with" button.
pub fn login_form(next: &str, error: Option<&str>, sso: Option<&str>) -> Response {
    let error = error.map(|e| format!("<p role=\"alert\" style=\"color:#b00\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "<h1>Log in to Cove</h1>{error}<form method=\"post\" action=\"/login\">\
<label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><p><button type=\"submit\">Log in</button></p></form>{sso}",
        sso = sso.map(|name| sso_button(name, next)).unwrap_or_default(),
        next = escape(next)
    );
    let status = if error.is_empty() { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page("Log in to Cove", &body)).into_response()
}

fn sso_button(provider: &str, next: &str) -> String {
    format!(
        "<p class=\"muted\">or</p><p><a id=\"sso\" role=\"button\" href=\"/auth/oidc/login?next={}\">Sign in with {}</a></p>",
        escape(&cove_core::percent_encode(next)),
        escape(provider)
    )
}

/// A name under a workspace that is neither a port nor an app Cove serves.
pub fn no_such_app(ws: &cove_core::Workspace, app: &str) -> Response {
    html(
        StatusCode::NOT_FOUND,
        "No such app",
        &format!(
            "Workspace {} has no app named {app:?}. Open a port number (8080--{}--{}), code (VS Code) or term (a terminal).",
            ws.name, ws.name, ws.owner_name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        for s in ["http://8080--api--ada.localhost:7080/a b?c=d&e=%", "plain", "", "ü/€"] {
            assert_eq!(decode(&cove_core::percent_encode(s)), s);
        }
        assert_eq!(decode("a+b%2"), "a b%2");
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
