//! The workspace pages: the list (kept live by server-sent events), the create wizard,
//! and each workspace's page with its actions, apps, ports and logs.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::Utc;
use cove_core::{format_duration, format_size, ActualState, DesiredState, ShareLevel, Workspace};
use futures::Stream;
use serde::Deserialize;

use super::{alert, csrf_field, error_page, page, page_with_status, see_other, when, Session};
use crate::api::{self, ApiJson};
use crate::error::ApiError;
use crate::pages::escape;
use crate::views::{CreateWorkspace, PatchWorkspace, ShareBody, Size, WorkspaceView};
use crate::{workspaces, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(list))
        .route("/events", get(events))
        .route("/new", get(new_form).post(create))
        .route("/w/{key}", get(show))
        .route("/w/{key}/state", post(set_state))
        .route("/w/{key}/delete", get(delete_form).post(delete))
        .route("/w/{key}/share", post(share))
        .route("/w/{key}/rebuild", post(rebuild))
        .route("/w/{key}/logs", get(logs))
}

/// The workspaces this session sees: an admin's are everyone's.
async fn visible(state: &AppState, session: &Session) -> Result<Vec<Workspace>, ApiError> {
    Ok(if session.is_admin() {
        state.store.workspace_list_all().await?
    } else {
        // As the API's list: one's own, then those shared with one.
        let mut own = state.store.workspace_list_by_owner(session.user.id).await?;
        own.extend(state.store.workspace_list_shared_with(session.user.id).await?);
        own
    })
}

/// How the session names a workspace in addresses: its own by name, others' by id.
fn key(session: &Session, ws: &Workspace) -> String {
    if ws.owner == session.user.id {
        ws.name.to_string()
    } else {
        ws.id.to_string()
    }
}

fn state_text(v: &WorkspaceView) -> String {
    let wanted = match v.desired_state {
        DesiredState::Running if v.actual_state != ActualState::Running => Some("starting"),
        DesiredState::Stopped if !matches!(v.actual_state, ActualState::Stopped) => Some("stopping"),
        DesiredState::RestartRequested => Some("restarting"),
        DesiredState::Terminated => Some("deleting"),
        _ => None,
    };
    match wanted {
        Some(w) => format!("{} ({w})", v.actual_state),
        None => v.actual_state.to_string(),
    }
}

/// The list's HTML, for the page and for each server-sent update: one renderer.
fn list_html(state: &AppState, session: &Session, list: &[Workspace]) -> String {
    if list.is_empty() {
        return "<div class=\"empty\"><p>You have no workspaces yet.</p>\
<p><a class=\"button\" href=\"/new\">Create your first workspace</a> or run <code>cove create NAME</code>.</p></div>"
            .into();
    }
    let now = Utc::now();
    let admin = session.is_admin();
    let rows: String = list
        .iter()
        .map(|ws| {
            let v = workspaces::view(state, ws);
            let owner =
                if admin { format!("<td data-label=\"Owner\">{}</td>", escape(&v.owner)) } else { String::new() };
            let message = v.message.as_deref().map(|m| format!("<br><small>{}</small>", escape(m))).unwrap_or_default();
            // Shared with this member: its page is the owner's, its apps and terminal theirs too.
            let name_cell = if ws.owner == session.user.id || admin {
                format!(
                    "<a href=\"/w/{}\">{}</a>",
                    escape(&cove_core::percent_encode(&key(session, ws))),
                    escape(&v.name)
                )
            } else {
                let term = state.config.app_url("term", ws.name.as_str(), ws.owner_name.as_str());
                format!(
                    "{} <span class=\"badge\">shared by {}</span><br><small><a href=\"{}\">Open terminal</a></small>",
                    escape(&v.name),
                    escape(&v.owner),
                    escape(&term)
                )
            };
            format!(
                "<tr data-ws=\"{id}\"><td data-label=\"Name\">{name_cell}</td>{owner}\
<td data-label=\"State\"><span class=\"state state-{actual}\" data-field=\"state\">{state}</span>{message}</td>\
<td data-label=\"Awake\">{awake}</td><td data-label=\"Size\">{cpus} CPU, {memory}</td></tr>",
                id = v.id,
                actual = v.actual_state.as_str().to_ascii_lowercase(),
                state = escape(&state_text(&v)),
                awake = escape(&v.awake(now)),
                cpus = v.cpus,
                memory = format_size(v.memory_bytes),
            )
        })
        .collect();
    let owner = if admin { "<th scope=\"col\">Owner</th>" } else { "" };
    format!(
        "<table class=\"list\"><caption class=\"sr-only\">Workspaces</caption><thead><tr><th scope=\"col\">Name</th>{owner}\
<th scope=\"col\">State</th><th scope=\"col\">Awake</th><th scope=\"col\">Size</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

async fn list(State(state): State<AppState>, session: Session) -> Response {
    let list = match visible(&state, &session).await {
        Ok(l) => l,
        Err(e) => return error_page(&session, &e),
    };
    let body = format!(
        "<div class=\"title\"><h1>Workspaces</h1><a class=\"button\" href=\"/new\">New workspace</a></div>\
<p class=\"muted\" id=\"live\" aria-live=\"polite\">Live: states update as they change.</p>\
<div id=\"ws-list\" data-live=\"list\">{}</div>",
        list_html(&state, &session, &list)
    );
    page(&session, "Workspaces", &body)
}

/// The per-workspace fields the workspace page keeps live.
fn live_state(v: &WorkspaceView, now: chrono::DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "state": state_text(v),
        "actual": v.actual_state,
        "desired": v.desired_state,
        "message": v.message.clone().unwrap_or_default(),
        "awake": v.awake(now),
        "agent": v.agent_line(now),
        "sessions": v.sessions_line(),
    })
}

async fn snapshot(state: &AppState, session: &Session) -> Option<String> {
    let list = visible(state, session).await.ok()?;
    let now = Utc::now();
    let states: serde_json::Map<String, serde_json::Value> =
        list.iter().map(|ws| (ws.id.to_string(), live_state(&workspaces::view(state, ws), now))).collect();
    let html = list_html(state, session, &list);
    Some(serde_json::json!({ "html": html, "states": states }).to_string())
}

/// `GET /events`: the session's workspaces as server-sent events, one `workspaces` event
/// whenever what the list shows changes. It wakes on every state the reconciler writes,
/// and every 2 s for what changes without it (activity, the idle countdown, other
/// processes' writes).
async fn events(State(state): State<AppState>, session: Session) -> Response {
    let changes = state.reconciler.changes();
    let initial: (AppState, Session, tokio::sync::watch::Receiver<u64>, Option<String>, bool) =
        (state, session, changes, None, true);
    let stream = futures::stream::unfold(initial, |(state, session, mut changes, last, first)| async move {
        let mut first = first;
        loop {
            if !first {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { tokio::time::sleep(Duration::from_secs(2)).await },
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            first = false;
            // A session logged out, revoked or expired meanwhile (or a user disabled) ends.
            match state.store.token_authenticate(&session.token_hash, Utc::now()).await {
                Ok(Some(_)) => {}
                _ => return None,
            }
            let Some(now) = snapshot(&state, &session).await else { continue };
            if last.as_deref() != Some(now.as_str()) {
                let event = Event::default().event("workspaces").data(now.clone());
                return Some((Ok::<_, Infallible>(event), (state, session, changes, Some(now), false)));
            }
        }
    });
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// Sizes offered in the wizard, within the admin's quota: (CPUs in thousandths, bytes).
const PRESETS: &[(u32, u64)] =
    &[(500, 512 << 20), (1000, 1 << 30), (2000, 2 << 30), (2000, 4 << 30), (4000, 8 << 30), (8000, 16 << 30)];

const IDLE_CHOICES: &[u32] = &[5 * 60, 15 * 60, 30 * 60, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600];

fn presets(quotas: &cove_store::Quotas) -> Vec<(u32, u64)> {
    let fits = |(cpus, mem): &(u32, u64)| {
        quotas.max_cpus_milli.is_none_or(|m| *cpus <= m) && quotas.max_memory_bytes.is_none_or(|m| *mem <= m)
    };
    let mut out: Vec<_> = PRESETS.iter().copied().filter(fits).collect();
    if out.is_empty() {
        // A quota below the smallest preset: offer exactly the quota.
        out.push((quotas.max_cpus_milli.unwrap_or(500), quotas.max_memory_bytes.unwrap_or(512 << 20)));
    }
    out
}

#[derive(Deserialize, Default, Clone)]
struct NewForm {
    #[serde(default)]
    name: String,
    /// `repo` or `image`.
    #[serde(default)]
    source: String,
    #[serde(default)]
    repo: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    image: String,
    /// devcontainer.json's path in the project; empty: the usual search.
    #[serde(default)]
    devcontainer: String,
    /// `cpus_milli:memory_bytes`, one of the presets.
    #[serde(default)]
    size: String,
    /// Seconds; 0 is never.
    #[serde(default)]
    idle: String,
}

async fn new_form(State(state): State<AppState>, session: Session) -> Response {
    wizard(&state, &session, &NewForm::default(), None, StatusCode::OK).await
}

async fn wizard(
    state: &AppState,
    session: &Session,
    form: &NewForm,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let quotas = state.store.quota_get().await.unwrap_or_default();
    let defaults = cove_core::Resources::default();
    let presets = presets(&quotas);
    let default_size = presets
        .iter()
        .find(|p| **p == (defaults.cpus_milli, defaults.memory_bytes))
        .or(presets.last())
        .map(|(c, m)| format!("{c}:{m}"))
        .unwrap_or_default();
    let chosen_size = if form.size.is_empty() { default_size } else { form.size.clone() };
    let sizes: String = presets
        .iter()
        .enumerate()
        .map(|(i, (c, m))| {
            let value = format!("{c}:{m}");
            let checked = if value == chosen_size { " checked" } else { "" };
            format!(
                "<label class=\"choice\"><input type=\"radio\" name=\"size\" id=\"size-{i}\" value=\"{value}\"{checked}> \
{} CPU, {} memory</label>",
                f64::from(*c) / 1000.0,
                format_size(*m)
            )
        })
        .collect();
    let quota_note = match (quotas.max_cpus_milli, quotas.max_memory_bytes) {
        (None, None) => String::new(),
        (c, m) => format!(
            "<p class=\"hint\">Your admin's limit per workspace: {} CPU, {} memory.</p>",
            c.map_or("any".into(), |c| (f64::from(c) / 1000.0).to_string()),
            m.map_or("any".into(), format_size)
        ),
    };
    let chosen_idle = form.idle.parse().unwrap_or(cove_core::DEFAULT_IDLE_TIMEOUT_SECONDS);
    let idles: String = IDLE_CHOICES
        .iter()
        .copied()
        .filter(|s| *s <= workspaces::MAX_IDLE_TIMEOUT_SECONDS)
        .chain([0])
        .map(|s| {
            let label = if s == 0 { "Never".to_string() } else { format_duration(u64::from(s)) };
            let selected = if s == chosen_idle { " selected" } else { "" };
            format!("<option value=\"{s}\"{selected}>{label}</option>")
        })
        .collect();
    let image_chosen = form.source == "image";
    let body = format!(
        "<h1>New workspace</h1>{error}<form method=\"post\" action=\"/new\" class=\"wizard\">{csrf}\
<fieldset><legend>1. Name</legend><label for=\"name\">Workspace name</label>\
<input id=\"name\" name=\"name\" required maxlength=\"40\" autocomplete=\"off\" value=\"{name}\" aria-describedby=\"name-hint\">\
<p class=\"hint\" id=\"name-hint\">Lowercase letters, digits and dashes; it becomes part of app addresses.</p></fieldset>\
<fieldset><legend>2. Source</legend>\
<label class=\"choice\"><input type=\"radio\" name=\"source\" value=\"repo\"{repo_checked}> A Git repository, cloned into ~/project</label>\
<label class=\"choice\"><input type=\"radio\" name=\"source\" value=\"image\"{image_checked}> Just an image</label>\
<div class=\"sub\" data-when-source=\"repo\"><label for=\"repo\">Repository URL</label>\
<input id=\"repo\" name=\"repo\" type=\"text\" inputmode=\"url\" placeholder=\"https://github.com/you/project.git\" value=\"{repo}\">\
<label for=\"branch\">Branch <span class=\"muted\">(optional; the default branch otherwise)</span></label>\
<input id=\"branch\" name=\"branch\" value=\"{branch}\"></div>\
<label for=\"image\">Image <span class=\"muted\">(optional; default {default_image})</span></label>\
<input id=\"image\" name=\"image\" placeholder=\"{default_image}\" value=\"{image}\">\
<label for=\"devcontainer\">devcontainer.json path</label>\
<input id=\"devcontainer\" name=\"devcontainer\" placeholder=\".devcontainer/devcontainer.json\" value=\"{devcontainer}\" aria-describedby=\"dc-hint\">\
<p class=\"hint\" id=\"dc-hint\">Optional: Cove finds the project's devcontainer.json in the usual places, builds the image it names and runs its lifecycle commands. Give a path for a project with several.</p>\
</fieldset>\
<fieldset><legend>3. Size</legend>{quota_note}<div class=\"choices\">{sizes}</div></fieldset>\
<fieldset><legend>4. Idle stop</legend><label for=\"idle\">Stop it after this long without use</label>\
<select id=\"idle\" name=\"idle\">{idles}</select>\
<p class=\"hint\">A stopped workspace keeps its files and wakes when you open it.</p></fieldset>\
<p><button type=\"submit\" class=\"primary\">Create and start</button> <a href=\"/\">Cancel</a></p></form>",
        error = alert(error),
        csrf = csrf_field(session),
        name = escape(&form.name),
        repo_checked = if image_chosen { "" } else { " checked" },
        image_checked = if image_chosen { " checked" } else { "" },
        repo = escape(&form.repo),
        branch = escape(&form.branch),
        image = escape(&form.image),
        devcontainer = escape(&form.devcontainer),
        default_image = escape(&state.config.default_image),
    );
    page_with_status(status, session, "New workspace", &body)
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

async fn create(State(state): State<AppState>, session: Session, Form(form): Form<NewForm>) -> Response {
    let (cpus, memory) =
        match form.size.split_once(':').and_then(|(c, m)| Some((c.parse::<u32>().ok()?, m.parse::<u64>().ok()?))) {
            Some(v) => v,
            None if form.size.is_empty() => {
                let d = cove_core::Resources::default();
                (d.cpus_milli, d.memory_bytes)
            }
            None => {
                return wizard(&state, &session, &form, Some("Choose one of the sizes."), StatusCode::BAD_REQUEST).await
            }
        };
    let idle = match form.idle.trim() {
        "" => None,
        s => match s.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                return wizard(&state, &session, &form, Some("Choose an idle stop."), StatusCode::BAD_REQUEST).await
            }
        },
    };
    let from_repo = form.source != "image";
    let request = CreateWorkspace {
        name: form.name.trim().to_string(),
        image: non_empty(&form.image),
        cpus: Some(f64::from(cpus) / 1000.0),
        memory: Some(Size::Bytes(memory)),
        disk: None,
        idle_timeout_seconds: idle,
        start: Some(true),
        repo: if from_repo { non_empty(&form.repo) } else { None },
        branch: if from_repo { non_empty(&form.branch) } else { None },
        devcontainer_path: non_empty(&form.devcontainer),
        handoff: None,
    };
    if from_repo && request.repo.is_none() {
        let message = "Give the repository's URL, or choose \"Just an image\".";
        return wizard(&state, &session, &form, Some(message), StatusCode::BAD_REQUEST).await;
    }
    let caller = session.caller();
    match workspaces::create(&state, &caller.0, request).await {
        Ok(ws) => see_other(&format!("/w/{}", cove_core::percent_encode(ws.name.as_str()))),
        Err(e @ ApiError::Internal(_)) => error_page(&session, &e),
        Err(e) => wizard(&state, &session, &form, Some(&e.to_string()), e.status()).await,
    }
}

#[derive(Deserialize)]
struct ShowQuery {
    /// What a form on this page just did (a fixed word, never text to show as is).
    done: Option<String>,
}

async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let caller = session.caller();
    let ws = match workspaces::resolve(&state, &caller.0, &key_).await {
        Ok(ws) => ws,
        Err(e) => return error_page(&session, &e),
    };
    let now = Utc::now();
    let v = workspaces::view(&state, &ws);
    let k = escape(&cove_core::percent_encode(&key(&session, &ws)));
    let owner = ws.owner == session.user.id;
    let url = |app: &str| state.config.app_url(app, ws.name.as_str(), ws.owner_name.as_str());
    let open = if owner {
        format!(
            "<p class=\"actions\"><a class=\"button\" id=\"open-code\" href=\"{}\">Open VS Code</a> \
<a class=\"button\" id=\"open-term\" href=\"{}\">Open terminal</a></p>\
<p class=\"hint\">Opening an app wakes a stopped workspace.</p>",
            escape(&url("code")),
            escape(&url("term"))
        )
    } else {
        "<p class=\"hint\">VS Code and the terminal are for the owner only.</p>".into()
    };
    let deleting = ws.desired == DesiredState::Terminated;
    let actions = if deleting {
        "<p class=\"muted\">This workspace is being deleted.</p>".to_string()
    } else {
        let form = |to: &str, label: &str, confirm: Option<&str>| {
            let confirm = confirm.map(|c| format!(" data-confirm=\"{}\"", escape(c))).unwrap_or_default();
            format!(
                "<form method=\"post\" action=\"/w/{k}/state\" class=\"inline\"{confirm}>{}<input type=\"hidden\" name=\"to\" value=\"{to}\">\
<button type=\"submit\" id=\"action-{to}\">{label}</button></form>",
                csrf_field(&session)
            )
        };
        let name = ws.name.as_str();
        let stop_note = format!("Stop {name}? Its processes end; its files stay.");
        let restart_note = format!("Restart {name}? Its processes end and start again.");
        let rebuild_note = format!(
            "Rebuild {name}? Cove reads its devcontainer.json again and applies it: its container is replaced \
(processes end), its files stay."
        );
        let rebuild = format!(
            "<form method=\"post\" action=\"/w/{k}/rebuild\" class=\"inline\" data-confirm=\"{}\">{}\
<button type=\"submit\" id=\"action-rebuild\">Rebuild</button></form>",
            escape(&rebuild_note),
            csrf_field(&session)
        );
        format!(
            "<div class=\"actions\">{}{}{}{rebuild}<a class=\"button danger\" id=\"action-delete\" href=\"/w/{k}/delete\">Delete…</a></div>",
            form("running", "Start", None),
            form("stopped", "Stop", Some(&stop_note)),
            form("restart", "Restart", Some(&restart_note)),
        )
    };
    let apps = apps_html(&state, &session, &ws, owner).await;
    let secrets = super::secrets::workspace_section(&state, &session, &ws, &k).await;
    let sharing = super::sharing::section(&state, &session, &ws, &k).await;
    let source = match (&v.repo, &v.branch) {
        (Some(r), Some(b)) => format!("{} (branch {})", escape(r), escape(b)),
        (Some(r), None) => escape(r),
        _ => "none (image only)".into(),
    };
    let idle =
        if v.idle_timeout_seconds == 0 { "never".into() } else { format_duration(u64::from(v.idle_timeout_seconds)) };
    let body = format!(
        "<h1>{name}</h1>{done}<p class=\"muted\">Owned by {owner_name}. Created {created}.</p>\
<section aria-labelledby=\"h-state\" data-live-ws=\"{id}\"><h2 id=\"h-state\">State</h2><dl class=\"facts\">\
<dt>State</dt><dd><span class=\"state state-{actual}\" id=\"ws-state\" data-field=\"state\" aria-live=\"polite\">{state}</span></dd>\
<dt>Message</dt><dd data-field=\"message\">{message}</dd>\
<dt>Awake</dt><dd data-field=\"awake\">{awake}</dd>\
<dt>Agent</dt><dd data-field=\"agent\">{agent}</dd>\
<dt>Sessions</dt><dd data-field=\"sessions\">{sessions}</dd></dl></section>\
<section aria-labelledby=\"h-actions\"><h2 id=\"h-actions\">Actions</h2>{open}{actions}</section>\
<section aria-labelledby=\"h-apps\"><h2 id=\"h-apps\">Apps and ports</h2>{apps}</section>{sharing}{secrets}\
<section aria-labelledby=\"h-spec\"><h2 id=\"h-spec\">Settings</h2><dl class=\"facts\">\
<dt>Image</dt><dd><code>{image}</code></dd><dt>Repository</dt><dd>{source}</dd>\
<dt>Size</dt><dd>{cpus} CPU, {memory}</dd><dt>Idle stop</dt><dd>after {idle}</dd><dt>Id</dt><dd><code id=\"ws-id\">{id}</code></dd></dl></section>\
<section aria-labelledby=\"h-logs\"><h2 id=\"h-logs\">Logs</h2>\
<pre id=\"logs\" class=\"logs\" tabindex=\"0\" data-src=\"/w/{k}/logs\" aria-label=\"Workspace logs\">Logs appear here while the workspace has a container.</pre></section>",
        name = escape(ws.name.as_str()),
        done = q.done.as_deref().and_then(super::done_notice).unwrap_or_default(),
        owner_name = escape(ws.owner_name.as_str()),
        created = when(ws.created_at),
        id = ws.id,
        actual = v.actual_state.as_str().to_ascii_lowercase(),
        state = escape(&state_text(&v)),
        message = escape(v.message.as_deref().unwrap_or("")),
        awake = escape(&v.awake(now)),
        agent = escape(&v.agent_line(now)),
        sessions = escape(&v.sessions_line()),
        image = escape(&v.image),
        cpus = v.cpus,
        memory = format_size(v.memory_bytes),
    );
    page(&session, ws.name.as_str(), &body)
}

/// The apps with a share level, VS Code and the terminal, and the ports listening now.
async fn apps_html(state: &AppState, session: &Session, ws: &Workspace, owner: bool) -> String {
    let shares = state.store.app_share_list(ws.id).await.unwrap_or_default();
    let mut apps: Vec<(String, ShareLevel)> = vec![];
    let mut add = |app: String, share: Option<ShareLevel>| {
        if !apps.iter().any(|(a, _)| *a == app) {
            let level = share.or_else(|| shares.iter().find(|(a, _)| *a == app).map(|(_, s)| *s));
            apps.push((app, level.unwrap_or(ShareLevel::Owner)));
        }
    };
    add("code".into(), None);
    add("term".into(), None);
    for (app, share) in &shares {
        add(app.clone(), Some(*share));
    }
    let mut ports_note = String::new();
    let mut listening: Vec<String> = vec![];
    if owner {
        // A look only: asking through the API's route would wake a workspace being stopped.
        let peek = crate::tunnel::peek_json(state, ws, "/ports");
        match tokio::time::timeout(Duration::from_secs(3), peek).await.ok().flatten() {
            Some(v) => {
                let list = v.as_array().or_else(|| v["ports"].as_array()).cloned().unwrap_or_default();
                for p in list {
                    if let Some(port) = p["port"].as_u64() {
                        listening.push(port.to_string());
                        add(port.to_string(), None);
                    }
                }
            }
            None => {
                ports_note =
                    "<p class=\"hint\">Listening ports show while the workspace runs and its agent answers.</p>".into()
            }
        }
    }
    let k = escape(&cove_core::percent_encode(&key(session, ws)));
    let may_share = owner || session.is_admin();
    let rows: String = apps
        .iter()
        .map(|(app, share)| {
            let url = state.config.app_url(app, ws.name.as_str(), ws.owner_name.as_str());
            let what = match app.as_str() {
                "code" => "VS Code".to_string(),
                "term" => "Terminal".to_string(),
                p if listening.iter().any(|l| l == p) => format!("Port {p} (listening)"),
                p => format!("Port {p}"),
            };
            let share_cell = if may_share {
                let options: String = [ShareLevel::Owner, ShareLevel::Authenticated, ShareLevel::Public]
                    .iter()
                    .map(|l| {
                        let selected = if l == share { " selected" } else { "" };
                        format!("<option value=\"{0}\"{selected}>{0}</option>", l.as_str())
                    })
                    .collect();
                format!(
                    "<form method=\"post\" action=\"/w/{k}/share\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"app\" value=\"{app}\">\
<label class=\"sr-only\" for=\"share-{app}\">Who may open {what}</label><select id=\"share-{app}\" name=\"share\">{options}</select> \
<button type=\"submit\">Set</button></form>",
                    csrf = csrf_field(session),
                    app = escape(app),
                    what = escape(&what),
                )
            } else {
                escape(share.as_str())
            };
            format!(
                "<tr><td data-label=\"App\">{}</td><td data-label=\"Address\"><a href=\"{url}\">{url}</a></td><td data-label=\"Who may open it\">{share_cell}</td></tr>",
                escape(&what),
                url = escape(&url)
            )
        })
        .collect();
    format!(
        "<table class=\"list\"><thead><tr><th scope=\"col\">App</th><th scope=\"col\">Address</th><th scope=\"col\">Who may open it</th></tr></thead>\
<tbody>{rows}</tbody></table>{ports_note}"
    )
}

#[derive(Deserialize)]
struct StateForm {
    to: String,
}

async fn set_state(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<StateForm>,
) -> Response {
    let desired = match form.to.as_str() {
        "running" => DesiredState::Running,
        "stopped" => DesiredState::Stopped,
        "restart" => DesiredState::RestartRequested,
        _ => return error_page(&session, &ApiError::InvalidRequest("choose start, stop or restart".into())),
    };
    let caller = session.caller();
    let result = async {
        let ws = workspaces::resolve(&state, &caller.0, &key_).await?;
        workspaces::patch(&state, ws, PatchWorkspace { desired_state: Some(desired), ..Default::default() }).await
    }
    .await;
    match result {
        Ok(_) => see_other(&format!("/w/{}", cove_core::percent_encode(&key_))),
        Err(e) => error_page(&session, &e),
    }
}

async fn delete_form(State(state): State<AppState>, session: Session, Path(key_): Path<String>) -> Response {
    match workspaces::resolve(&state, &session.caller().0, &key_).await {
        Ok(ws) => confirm_delete(&session, &ws, &key_, None),
        Err(e) => error_page(&session, &e),
    }
}

fn confirm_delete(session: &Session, ws: &Workspace, key_: &str, error: Option<&str>) -> Response {
    let name = escape(ws.name.as_str());
    let body = format!(
        "<h1>Delete {name}?</h1>{error}<p>This removes the container <strong>and the home volume</strong>: every file in the \
workspace is lost. It cannot be undone.</p><form method=\"post\" action=\"/w/{k}/delete\">{csrf}\
<label for=\"confirm\">Type <strong>{name}</strong> to confirm</label><input id=\"confirm\" name=\"confirm\" autocomplete=\"off\" required>\
<p><button type=\"submit\" class=\"danger\">Delete {name}</button> <a href=\"/w/{k}\">Cancel</a></p></form>",
        error = alert(error),
        k = escape(&cove_core::percent_encode(key_)),
        csrf = csrf_field(session),
    );
    let status = if error.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    page_with_status(status, session, &format!("Delete {}", ws.name), &body)
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    confirm: String,
}

async fn delete(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let ws = match workspaces::resolve(&state, &session.caller().0, &key_).await {
        Ok(ws) => ws,
        Err(e) => return error_page(&session, &e),
    };
    if form.confirm.trim() != ws.name.as_str() {
        let message = format!("Type the workspace's name, {}, to delete it.", ws.name);
        return confirm_delete(&session, &ws, &key_, Some(&message));
    }
    match workspaces::delete(&state, ws).await {
        Ok(_) => see_other("/"),
        Err(e) => error_page(&session, &e),
    }
}

#[derive(Deserialize)]
struct ShareForm {
    app: String,
    share: String,
}

async fn share(
    State(state): State<AppState>,
    session: Session,
    Path(key_): Path<String>,
    Form(form): Form<ShareForm>,
) -> Response {
    let share: ShareLevel = match form.share.parse() {
        Ok(s) => s,
        Err(e) => return error_page(&session, &ApiError::InvalidRequest(e)),
    };
    let result =
        api::share_app(State(state), session.caller(), Path((key_.clone(), form.app)), ApiJson(ShareBody { share }))
            .await;
    match result {
        Ok(_) => see_other(&format!("/w/{}", cove_core::percent_encode(&key_))),
        Err(e) => error_page(&session, &e),
    }
}

/// Rebuild: the API's handler reads devcontainer.json again and applies it in the background.
async fn rebuild(State(state): State<AppState>, session: Session, Path(key_): Path<String>) -> Response {
    match crate::devcontainers::rebuild(State(state), session.caller(), Path(key_.clone())).await {
        Ok(_) => see_other(&format!("/w/{}?done=rebuilding", cove_core::percent_encode(&key_))),
        Err(e) => error_page(&session, &e),
    }
}

/// The workspace's logs, followed: the API's own stream, read by the page's script.
async fn logs(State(state): State<AppState>, session: Session, Path(key_): Path<String>) -> Response {
    let q = api::LogsQuery { follow: true, tail: Some(500) };
    match api::logs(State(state), session.caller(), Path(key_), Ok(Query(q))).await {
        Ok(response) => response,
        Err(e) => (e.status(), [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], e.to_string()).into_response(),
    }
}
