//! Admin pages: users (create, disable, enable, reset password), quotas, the audit log
//! and instance settings (the prices the usage page charges). Each calls the function the
//! API's route calls; `Caller::require_admin` there is the one check.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use cove_core::{format_size, Role};
use serde::Deserialize;

use super::usage::{self, PRICE_CPU_HOUR, PRICE_CURRENCY, PRICE_GB_HOUR};
use super::{alert, csrf_field, error_page, page_with_status, see_other, when, Session};
use crate::api::{self, PatchUser};
use crate::error::ApiError;
use crate::pages::escape;
use crate::views::{CreateUser, SetQuotas, Size};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(users).post(create_user))
        .route("/admin/users/{id}", post(change_user))
        .route("/admin/quotas", get(quotas).post(set_quotas))
        .route("/admin/audit", get(audit))
        .route("/admin/audit.jsonl", get(audit_export))
        .route("/admin/settings", get(settings).post(set_settings))
}

/// Admins only; anyone else gets the plain "not found" page (nothing to learn here).
fn admin_only(session: &Session) -> Result<(), Box<Response>> {
    match session.caller().require_admin() {
        Ok(()) => Ok(()),
        Err(_) => Err(Box::new(super::not_found(session))),
    }
}

async fn users(State(state): State<AppState>, session: Session) -> Response {
    users_page(&state, &session, None, None, StatusCode::OK).await
}

async fn users_page(
    state: &AppState,
    session: &Session,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    if let Err(r) = admin_only(session) {
        return *r;
    }
    let list = match state.store.user_list().await {
        Ok(l) => l,
        Err(e) => return error_page(session, &e.into()),
    };
    let csrf = csrf_field(session);
    let rows: String = list
        .iter()
        .map(|u| {
            let name = escape(u.name.as_str());
            let toggle = if u.disabled {
                format!("<button type=\"submit\" name=\"action\" value=\"enable\">Enable<span class=\"sr-only\"> {name}</span></button>")
            } else if u.id == session.user.id {
                String::new()
            } else {
                format!("<button type=\"submit\" name=\"action\" value=\"disable\" class=\"danger\">Disable<span class=\"sr-only\"> {name}</span></button>")
            };
            format!(
                "<tr><td data-label=\"User\">{name}</td><td data-label=\"Role\">{role}</td><td data-label=\"Status\">{status}</td>\
<td data-label=\"Created\">{created}</td><td data-label=\"Change\"><form method=\"post\" action=\"/admin/users/{id}\" class=\"inline\">{csrf}{toggle}</form>\
<form method=\"post\" action=\"/admin/users/{id}\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"action\" value=\"password\">\
<label class=\"sr-only\" for=\"pw-{id}\">New password for {name}</label>\
<input id=\"pw-{id}\" name=\"password\" type=\"password\" autocomplete=\"new-password\" minlength=\"12\" placeholder=\"new password\" required>\
<button type=\"submit\">Reset password</button></form></td></tr>",
                role = u.role,
                status = if u.disabled { "disabled" } else { "active" },
                created = when(u.created_at),
                id = u.id,
            )
        })
        .collect();
    let notice = notice.map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(n))).unwrap_or_default();
    let body = format!(
        "<h1>Users</h1>{notice}{error}<table class=\"list\"><thead><tr><th scope=\"col\">User</th><th scope=\"col\">Role</th>\
<th scope=\"col\">Status</th><th scope=\"col\">Created</th><th scope=\"col\">Change</th></tr></thead><tbody>{rows}</tbody></table>\
<h2>New user</h2><form method=\"post\" action=\"/admin/users\">{csrf}<label for=\"new-username\">Username</label>\
<input id=\"new-username\" name=\"username\" required autocomplete=\"off\">\
<label for=\"new-password\">Password <span class=\"muted\">(at least 12 characters)</span></label>\
<input id=\"new-password\" name=\"password\" type=\"password\" minlength=\"12\" autocomplete=\"new-password\" required>\
<label for=\"new-role\">Role</label><select id=\"new-role\" name=\"role\"><option value=\"member\">member</option><option value=\"admin\">admin</option></select>\
<p><button type=\"submit\" class=\"primary\">Create user</button></p></form>",
        error = alert(error),
    );
    page_with_status(status, session, "Users", &body)
}

#[derive(Deserialize)]
struct NewUserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
}

async fn create_user(State(state): State<AppState>, session: Session, Form(form): Form<NewUserForm>) -> Response {
    let role = if form.role == "admin" { Role::Admin } else { Role::Member };
    let body = CreateUser { username: form.username.trim().to_string(), password: form.password, role: Some(role) };
    match api::user_create(&state, &session.caller(), body).await {
        Ok(user) => {
            let notice = format!("User {} created ({}).", user.name, user.role);
            users_page(&state, &session, Some(&notice), None, StatusCode::CREATED).await
        }
        Err(e @ ApiError::Forbidden(_)) => error_page(&session, &e),
        Err(e) => users_page(&state, &session, None, Some(&e.to_string()), e.status()).await,
    }
}

#[derive(Deserialize)]
struct ChangeUserForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    password: String,
}

async fn change_user(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<ChangeUserForm>,
) -> Response {
    let patch = match form.action.as_str() {
        "disable" => PatchUser { disabled: Some(true), ..Default::default() },
        "enable" => PatchUser { disabled: Some(false), ..Default::default() },
        "password" => PatchUser { password: Some(form.password), ..Default::default() },
        _ => return users_page(&state, &session, None, Some("Choose what to change."), StatusCode::BAD_REQUEST).await,
    };
    match api::user_patch(&state, &session.caller(), &id, patch).await {
        Ok(user) => {
            let notice = match form.action.as_str() {
                "disable" => format!("{} is disabled: their sessions and tokens stop working.", user.name),
                "enable" => format!("{} is enabled again.", user.name),
                _ => format!("{}'s password is set.", user.name),
            };
            users_page(&state, &session, Some(&notice), None, StatusCode::OK).await
        }
        Err(e @ (ApiError::Forbidden(_) | ApiError::NotFound(_))) => error_page(&session, &e),
        Err(e) => users_page(&state, &session, None, Some(&e.to_string()), e.status()).await,
    }
}

async fn quotas(State(state): State<AppState>, session: Session) -> Response {
    quotas_page(&state, &session, None, None, StatusCode::OK).await
}

async fn quotas_page(
    state: &AppState,
    session: &Session,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    if let Err(r) = admin_only(session) {
        return *r;
    }
    let q = match state.store.quota_get().await {
        Ok(q) => q,
        Err(e) => return error_page(session, &e.into()),
    };
    let field = |id: &str, label: &str, value: String, hint: &str| {
        format!(
            "<label for=\"{id}\">{label}</label><input id=\"{id}\" name=\"{id}\" value=\"{}\" aria-describedby=\"{id}-hint\">\
<p class=\"hint\" id=\"{id}-hint\">{hint}</p>",
            escape(&value)
        )
    };
    let notice = notice.map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(n))).unwrap_or_default();
    let body = format!(
        "<h1>Quotas</h1>{notice}{error}<p>Limits for every user; leave a field empty for no limit. Requests over a limit are \
refused with a message saying which.</p><form method=\"post\" action=\"/admin/quotas\">{csrf}{a}{b}{c}{d}\
<p><button type=\"submit\" class=\"primary\">Save quotas</button></p></form>",
        error = alert(error),
        csrf = csrf_field(session),
        a = field("max_workspaces", "Workspaces per user", q.max_workspaces.map(|v| v.to_string()).unwrap_or_default(), "Any state but being deleted."),
        b = field("max_running", "Running workspaces per user", q.max_running.map(|v| v.to_string()).unwrap_or_default(), "Counted as soon as one is asked to run."),
        c = field("max_cpus", "CPUs per workspace", q.max_cpus_milli.map(|v| (f64::from(v) / 1000.0).to_string()).unwrap_or_default(), "Such as 4 or 0.5."),
        d = field("max_memory", "Memory per workspace", q.max_memory_bytes.map(format_size).unwrap_or_default(), "Such as 8g or 512m."),
    );
    page_with_status(status, session, "Quotas", &body)
}

#[derive(Deserialize)]
struct QuotaForm {
    #[serde(default)]
    max_workspaces: String,
    #[serde(default)]
    max_running: String,
    #[serde(default)]
    max_cpus: String,
    #[serde(default)]
    max_memory: String,
}

async fn set_quotas(State(state): State<AppState>, session: Session, Form(form): Form<QuotaForm>) -> Response {
    fn number<T: std::str::FromStr>(label: &str, s: &str) -> Result<Option<T>, String> {
        match s.trim() {
            "" => Ok(None),
            t => t.parse().map(Some).map_err(|_| format!("{label} must be a number, or empty for no limit")),
        }
    }
    let parsed = (|| {
        Ok::<_, String>(SetQuotas {
            max_workspaces: number("Workspaces per user", &form.max_workspaces)?,
            max_running: number("Running workspaces per user", &form.max_running)?,
            max_cpus: number("CPUs per workspace", &form.max_cpus)?,
            max_memory: Some(form.max_memory.trim().to_string()).filter(|s| !s.is_empty()).map(Size::Text),
        })
    })();
    let body = match parsed {
        Ok(b) => b,
        Err(m) => return quotas_page(&state, &session, None, Some(&m), StatusCode::BAD_REQUEST).await,
    };
    match api::quotas_set(&state, &session.caller(), body).await {
        Ok(_) => quotas_page(&state, &session, Some("Quotas saved."), None, StatusCode::OK).await,
        Err(e @ ApiError::Forbidden(_)) => error_page(&session, &e),
        Err(e) => quotas_page(&state, &session, None, Some(&e.to_string()), e.status()).await,
    }
}

async fn audit(State(state): State<AppState>, session: Session) -> Response {
    if let Err(r) = admin_only(&session) {
        return *r;
    }
    let entries = match state.store.audit_list(None, 200).await {
        Ok(e) => e,
        Err(e) => return error_page(&session, &e.into()),
    };
    let rows: String = entries
        .iter()
        .rev()
        .map(|e| {
            format!(
                "<tr><td data-label=\"When\">{}</td><td data-label=\"Who\">{}</td><td data-label=\"What\"><code>{}</code></td>\
<td data-label=\"Target\"><code>{}</code></td><td data-label=\"Outcome\">{}</td><td data-label=\"From\">{}</td></tr>",
                when(e.at),
                escape(e.actor_name.as_deref().unwrap_or("-")),
                escape(&e.action),
                escape(&e.target),
                escape(&e.outcome),
                escape(e.peer.as_deref().unwrap_or("-")),
            )
        })
        .collect();
    let table = if entries.is_empty() {
        "<p class=\"empty\">Nothing has been changed yet.</p>".to_string()
    } else {
        format!(
            "<table class=\"list\"><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Who</th><th scope=\"col\">What</th>\
<th scope=\"col\">Target</th><th scope=\"col\">Outcome</th><th scope=\"col\">From</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let body = format!(
        "<h1>Audit log</h1><p>The newest 200 state-changing requests, newest first. \
<a href=\"/admin/audit.jsonl\" download>Export everything as JSON lines</a> (also <code>GET /api/v1/admin/audit.jsonl</code>).</p>{table}"
    );
    page_with_status(StatusCode::OK, &session, "Audit log", &body)
}

async fn audit_export(State(state): State<AppState>, session: Session) -> Response {
    let q = api::AuditQuery { since: None, limit: None };
    match api::audit_export(State(state), session.caller(), Ok(Query(q))).await {
        Ok(mut r) => {
            r.headers_mut().insert(
                axum::http::header::CONTENT_DISPOSITION,
                axum::http::HeaderValue::from_static("attachment; filename=\"cove-audit.jsonl\""),
            );
            r
        }
        Err(ApiError::Forbidden(_)) => super::not_found(&session),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct SavedQuery {
    saved: Option<String>,
}

async fn settings(State(state): State<AppState>, session: Session, Query(q): Query<SavedQuery>) -> Response {
    let notice = q.saved.is_some().then_some("Prices saved.");
    settings_page(&state, &session, notice, None, StatusCode::OK).await
}

async fn settings_page(
    state: &AppState,
    session: &Session,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    if let Err(r) = admin_only(session) {
        return *r;
    }
    let p = usage::prices(state.store.as_ref()).await;
    let c = &state.config;
    let notice = notice.map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(n))).unwrap_or_default();
    let body = format!(
        "<h1>Settings</h1>{notice}{error}<h2>Prices</h2><p>What the usage page charges for the hours workspaces run.</p>\
<form method=\"post\" action=\"/admin/settings\">{csrf}\
<label for=\"cpu_hour\">Price per CPU-hour</label><input id=\"cpu_hour\" name=\"cpu_hour\" inputmode=\"decimal\" value=\"{cpu}\" required>\
<label for=\"gb_hour\">Price per GB-hour of memory</label><input id=\"gb_hour\" name=\"gb_hour\" inputmode=\"decimal\" value=\"{gb}\" required>\
<label for=\"currency\">Currency symbol</label><input id=\"currency\" name=\"currency\" maxlength=\"8\" value=\"{cur}\" required>\
<p><button type=\"submit\" class=\"primary\">Save prices</button></p></form>\
<h2>Server</h2><p class=\"hint\">Set when the server starts (<code>cove server --help</code>).</p><dl class=\"facts\">\
<dt>Public address</dt><dd><code>{url}</code></dd><dt>Apps</dt><dd><code>{apps}</code></dd>\
<dt>Default image</dt><dd><code>{image}</code></dd><dt>Instance</dt><dd><code>{instance}</code></dd></dl>",
        error = alert(error),
        csrf = csrf_field(session),
        cpu = p.cpu_hour,
        gb = p.gb_hour,
        cur = escape(&p.currency),
        url = escape(&c.public_url),
        apps = escape(&c.app_url("PORT", "WORKSPACE", "OWNER")),
        image = escape(&c.default_image),
        instance = escape(&state.instance),
    );
    page_with_status(status, session, "Settings", &body)
}

#[derive(Deserialize)]
struct SettingsForm {
    #[serde(default)]
    cpu_hour: String,
    #[serde(default)]
    gb_hour: String,
    #[serde(default)]
    currency: String,
}

async fn set_settings(State(state): State<AppState>, session: Session, Form(form): Form<SettingsForm>) -> Response {
    if let Err(r) = admin_only(&session) {
        return *r;
    }
    let price = |label: &str, s: &str| match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("{label} must be a number from 0 to 1000, such as 0.04")),
    };
    let currency = form.currency.trim();
    let checked = price("The price per CPU-hour", &form.cpu_hour).and_then(|cpu| {
        let gb = price("The price per GB-hour", &form.gb_hour)?;
        if currency.is_empty() || currency.chars().count() > 8 {
            return Err("The currency symbol must be 1-8 characters, such as $ or EUR".into());
        }
        Ok((cpu, gb))
    });
    let (cpu, gb) = match checked {
        Ok(v) => v,
        Err(m) => return settings_page(&state, &session, None, Some(&m), StatusCode::BAD_REQUEST).await,
    };
    let saved = async {
        state.store.setting_set(PRICE_CPU_HOUR, &cpu.to_string()).await?;
        state.store.setting_set(PRICE_GB_HOUR, &gb.to_string()).await?;
        state.store.setting_set(PRICE_CURRENCY, currency).await
    }
    .await;
    match saved {
        Ok(()) => {
            tracing::info!(admin = %session.user.name, cpu, gb, currency, "prices set");
            see_other("/admin/settings?saved=1")
        }
        Err(e) => error_page(&session, &e.into()),
    }
}
