//! What the proxy asks before forwarding a request to a workspace: which workspace the host
//! names, who is asking, whether they may, whether the workspace must be woken first, and
//! where its container is. Stages: resolve -> authenticate -> authorize -> wake -> locate.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use cove_core::agent;
use cove_core::{
    hash_from_digest, token_digest, ActualState, DesiredState, Name, ShareLevel, TokenId, TokenScope, UserId,
    Workspace, WorkspaceId,
};
use cove_proxy::{ActivityKind, Admitted, App, AppHost, Gate, Upstream, Verdict, APP_COOKIE};
use cove_store::{Store, StoreError, WorkspacePatch};
use serde_json::json;

use crate::activity::Activity;
use crate::tickets::Signer;
use crate::{pages, AppState};

/// How long lookups of a host's workspace and share levels are reused. Changes made
/// through the API or by the reconciler in this process clear the cache at once; this
/// bounds anything else (a hand edit of the database).
const ROUTE_TTL: Duration = Duration::from_secs(5);
/// How long a bearer token's answer, or whether an app cookie's dashboard session still
/// lives (and its user is enabled), is reused. Revoking, logging out or disabling through
/// this process clears [`AccessCache`] at once; this bounds anything else.
const TOKEN_TTL: Duration = Duration::from_secs(10);
/// How long a request waits for the app's port right after a wake or start (the app may
/// still be starting). The gate probes the port itself, once per container start and
/// port: the proxy then never pays a probe per request.
const PATIENCE_AFTER_WAKE: Duration = Duration::from_secs(30);
const RECENT: chrono::Duration = chrono::Duration::seconds(60);
/// Host lookups kept at most. Anyone may name any host, and hosts of no workspace are
/// remembered too (as "none"): past this, the expired ones go, and if that is not enough,
/// all of them (the next requests read the store again).
const ROUTE_CACHE_ENTRIES: usize = 10_000;

/// A workspace an app host names, and the share levels of its apps.
#[derive(Clone)]
pub struct Route {
    pub workspace: Workspace,
    /// `owner/workspace`, for the metrics and error pages of every request.
    label: Arc<str>,
    shares: HashMap<String, ShareLevel>,
    /// Users the owner shared the workspace with: owner-level apps are theirs too.
    shared_with: std::collections::HashSet<UserId>,
}

impl Route {
    /// Whether `caller` (`None` for nobody logged in) may open `app`; owner-only by default.
    pub fn allows(&self, app: &App, caller: Option<UserId>) -> bool {
        // Most workspaces share nothing: no need to name the app to look it up.
        let share = if self.shares.is_empty() {
            ShareLevel::Owner
        } else {
            self.shares.get(&app.to_string()).copied().unwrap_or(ShareLevel::Owner)
        };
        share.allows(self.workspace.owner, caller)
            || (share == ShareLevel::Owner && caller.is_some_and(|c| self.shared_with.contains(&c)))
    }
}

/// The workspace `<owner>/<workspace>` with its share levels; `None` if there is none, or it
/// is being deleted.
pub async fn lookup(store: &dyn Store, owner: &Name, workspace: &Name) -> Result<Option<Route>, StoreError> {
    let Some((user, _)) = store.user_get_by_name_with_password(owner).await? else {
        return Ok(None);
    };
    match store.workspace_get_by_name(user.id, workspace).await {
        Ok(ws) if ws.desired != DesiredState::Terminated => {
            let shares = store.app_share_list(ws.id).await?.into_iter().collect();
            let shared_with = store.workspace_share_list(ws.id).await?.into_iter().map(|(id, _)| id).collect();
            Ok(Some(Route { label: label(&ws).into(), workspace: ws, shares, shared_with }))
        }
        Ok(_) | Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// App host (as parsed: lowercased, with its port) -> what was found, and when. Keyed by the
/// whole host so that a lookup, on every proxied request, needs no key of its own.
type RouteEntries = HashMap<String, (Option<Arc<Route>>, Instant)>;

/// Host lookups, shared with the API so that a change there is seen at once.
pub struct RouteCache {
    entries: Mutex<RouteEntries>,
    ttl: Duration,
}

impl Default for RouteCache {
    fn default() -> Self {
        Self::with_ttl(ROUTE_TTL)
    }
}

impl RouteCache {
    /// A zero `ttl` turns the cache off: for a process that cannot see every change.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self { entries: Mutex::default(), ttl }
    }

    /// Drops everything whenever `changes` ticks (the reconciler wrote a state).
    pub fn follow(self: &Arc<Self>, mut changes: tokio::sync::watch::Receiver<u64>) {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(cache) = cache.upgrade() else { return };
                cache.invalidate();
            }
        });
    }

    pub fn invalidate(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn get(&self, key: &str) -> Option<Option<Arc<Route>>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(r, _)| r.clone())
    }

    fn put(&self, key: String, route: Option<Arc<Route>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= ROUTE_CACHE_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if entries.len() >= ROUTE_CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (route, Instant::now()));
    }
}

/// What the gate learnt about credentials, reused for [`TOKEN_TTL`]: the per-request
/// path then asks the database nothing. Shared with the API, which clears it whenever a
/// token or session is deleted or a user changed.
#[derive(Default)]
pub struct AccessCache {
    /// Token digest -> its user and the scope it acts with (never above the user's role).
    tokens: Mutex<HashMap<[u8; 32], (UserId, TokenScope, Instant)>>,
    /// Dashboard session -> whether it still exists and its user is enabled.
    sessions: Mutex<HashMap<TokenId, (bool, Instant)>>,
    /// Bumped by every invalidation: an answer read from the store before one is not kept
    /// (a revoke racing a cache miss must not leave the old answer for a whole TTL).
    generation: std::sync::atomic::AtomicU64,
}

impl AccessCache {
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn token(&self, digest: &[u8; 32]) -> Option<(UserId, TokenScope)> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(digest).filter(|(_, _, at)| at.elapsed() < TOKEN_TTL).map(|(user, scope, _)| (*user, *scope))
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn session(&self, id: TokenId) -> Option<bool> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&id).filter(|(_, at)| at.elapsed() < TOKEN_TTL).map(|(live, _)| *live)
    }
}

pub struct AppGate {
    pub state: AppState,
    pub signer: Arc<Signer>,
    pub activity: Arc<Activity>,
    pub metrics: Arc<cove_proxy::Metrics>,
    addresses: Mutex<HashMap<WorkspaceId, (i64, IpAddr)>>,
    /// (workspace, port, actual generation) seen accepting connections since that start.
    listening: Mutex<std::collections::HashSet<(WorkspaceId, u16, i64)>>,
}

/// Who is asking, and how they proved it.
enum Identity {
    Anonymous,
    Session(UserId),
    Bearer(UserId, TokenScope),
}

impl Identity {
    fn user(&self) -> Option<UserId> {
        match self {
            Identity::Anonymous => None,
            Identity::Session(id) => Some(*id),
            Identity::Bearer(id, _) => Some(*id),
        }
    }
}

impl AppGate {
    pub fn new(
        state: AppState,
        signer: Arc<Signer>,
        activity: Arc<Activity>,
        metrics: Arc<cove_proxy::Metrics>,
    ) -> Self {
        Self { state, signer, activity, metrics, addresses: Mutex::default(), listening: Mutex::default() }
    }

    async fn resolve(&self, host: &AppHost) -> Result<Option<Arc<Route>>, StoreError> {
        if let Some(route) = self.state.routes.get(&host.host) {
            return Ok(route);
        }
        let route = Box::pin(lookup(self.state.store.as_ref(), &host.owner, &host.workspace)).await?.map(Arc::new);
        self.state.routes.put(host.host.clone(), route.clone());
        Ok(route)
    }

    async fn authenticate(&self, parts: &http::request::Parts, host: &AppHost) -> Result<Identity, Response> {
        if let Some(secret) = bearer(parts) {
            return match self.bearer_user(secret).await {
                Some((user, scope)) => Ok(Identity::Bearer(user, scope)),
                None => Err(pages::json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "invalid or expired API token; log in again with `cove login`",
                )),
            };
        }
        let session =
            cookie(&parts.headers, APP_COOKIE).and_then(|c| self.signer.check_session(c, &host.host, Utc::now()).ok());
        let Some(session) = session else {
            return Ok(Identity::Anonymous);
        };
        // A cookie whose dashboard session ended (or whose user was disabled) is no login:
        // the browser goes through the login again, as without one.
        Ok(if self.session_live(&session).await { Identity::Session(session.user) } else { Identity::Anonymous })
    }

    /// The user of a bearer token and the scope it acts with.
    async fn bearer_user(&self, secret: &str) -> Option<(UserId, TokenScope)> {
        let digest = token_digest(secret);
        if let Some(found) = self.state.access.token(&digest) {
            return Some(found);
        }
        let generation = self.state.access.generation();
        let (token, user) =
            self.state.store.token_authenticate(&hash_from_digest(&digest), Utc::now()).await.ok()??;
        // A token never outranks its user (as in the API).
        let scope = token.scope.min(TokenScope::widest_for(user.role));
        let mut tokens = self.state.access.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if self.state.access.generation() == generation {
            tokens.insert(digest, (user.id, scope, Instant::now()));
        }
        Some((user.id, scope))
    }

    /// Whether the dashboard session an app cookie came from still exists and its user is
    /// enabled. A store error counts as "no" without being remembered.
    async fn session_live(&self, session: &crate::tickets::AppSession) -> bool {
        if let Some(live) = self.state.access.session(session.session) {
            return live;
        }
        let generation = self.state.access.generation();
        let store = self.state.store.as_ref();
        let live = match (store.user_get(session.user).await, store.session_list_by_user(session.user).await) {
            (Ok(user), Ok(sessions)) => !user.disabled && sessions.iter().any(|s| s.token.id == session.session),
            (Err(StoreError::NotFound), _) => false,
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "proxy could not check an app cookie's session");
                return false;
            }
        };
        let mut sessions = self.state.access.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock invalidate also takes after bumping: no stale insert slips in.
        if self.state.access.generation() == generation {
            sessions.insert(session.session, (live, Instant::now()));
        }
        live
    }

    /// The ticket exchange: `/__cove/auth?ticket=...` sets the host's session cookie.
    fn redeem(&self, parts: &http::request::Parts, host: &AppHost) -> Response {
        let ticket = query_param(parts.uri.query().unwrap_or(""), "ticket").unwrap_or_default();
        match self.signer.redeem(&ticket, &host.host, Utc::now()) {
            Ok(ticket) => {
                let session = self.signer.session(&host.host, &ticket, Utc::now());
                let path = if ticket.path.starts_with('/') && !ticket.path.starts_with("//") {
                    ticket.path
                } else {
                    "/".into()
                };
                let mut response = pages::redirect(&path);
                pages::set_cookie(&mut response, APP_COOKIE, &session, self.state.config.https(), None);
                response
            }
            Err(e) => {
                tracing::info!(host = %host.host, reason = %e, "refused a sign-in ticket");
                pages::html(
                    StatusCode::FORBIDDEN,
                    "Sign-in link not valid",
                    "This sign-in link is invalid, expired or was already used. Open the app's address again to get a new one.",
                )
            }
        }
    }

    /// Makes sure the workspace runs or is starting; returns it freshly read.
    async fn wake(&self, ws: &Workspace) -> Result<Workspace, StoreError> {
        let fresh = self.state.store.workspace_get(ws.id).await?;
        if fresh.desired != DesiredState::Stopped {
            return Ok(fresh);
        }
        let patch = WorkspacePatch { desired: Some(DesiredState::Running), ..Default::default() };
        // Guarded by generation: of many requests racing to wake it, one writes.
        match self.state.store.workspace_patch(ws.id, patch, Some(fresh.generation)).await {
            Ok(woken) => {
                tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "waking workspace for a request");
                self.metrics.record_wake(&label(ws));
                self.state.routes.invalidate();
                self.state.reconciler.poke();
                Ok(woken)
            }
            Err(StoreError::Conflict(_)) => self.state.store.workspace_get(ws.id).await,
            Err(e) => Err(e),
        }
    }

    /// Waits (bounded) for a waking workspace to run; the last state seen otherwise.
    async fn wait_running(&self, id: WorkspaceId, deadline: Instant) -> Result<Workspace, StoreError> {
        loop {
            let ws = self.state.store.workspace_get(id).await?;
            if serving(&ws) || Instant::now() >= deadline {
                return Ok(ws);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn address(&self, ws: &Workspace) -> Option<IpAddr> {
        if let Some((generation, ip)) = self.addresses.lock().unwrap_or_else(|p| p.into_inner()).get(&ws.id) {
            if *generation == ws.actual_generation {
                return Some(*ip);
            }
        }
        let ip = self.state.backend.address(ws.id).await.ok()??;
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).insert(ws.id, (ws.actual_generation, ip));
        Some(ip)
    }

    async fn decide(&self, parts: &http::request::Parts, host: &AppHost) -> Result<Verdict, StoreError> {
        if parts.uri.path() == "/__cove/auth" {
            return Ok(Verdict::Respond(self.redeem(parts, host)));
        }
        let route = self.resolve(host).await?;
        let identity = match self.authenticate(parts, host).await {
            Ok(i) => i,
            Err(response) => return Ok(Verdict::Respond(response)),
        };
        let allowed = route.as_ref().is_some_and(|r| r.allows(&host.app, identity.user()));
        let Some(route) = route.filter(|_| allowed) else {
            // Unknown and not-yours look the same; without a login, both ask for one.
            return Ok(Verdict::Respond(match identity {
                Identity::Anonymous if wants_html(parts) => pages::redirect(&self.login_url(parts, host)),
                Identity::Anonymous => pages::json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "send Authorization: Bearer <token> (see `cove tokens create`), or open this address in a browser to log in",
                ),
                _ => pages::not_found(),
            }));
        };
        // The cached route's on the fast path; replaced by a fresh read otherwise (below).
        let ws = &route.workspace;
        let target = match Target::of(&host.app) {
            Some(target) => target,
            None => return Ok(Verdict::Respond(pages::no_such_app(ws, &host.app.to_string()))),
        };
        if let Identity::Bearer(_, TokenScope::Read) = identity {
            if !read_may(parts, target) {
                return Ok(Verdict::Respond(pages::json_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this token's scope is read: through the proxy it may only GET, HEAD or OPTIONS an app's port (no WebSocket, terminal or editor); make one with `cove tokens create NAME --scope write`",
                )));
            }
        }
        // The same rule the runtime mounts the editor by.
        if target == Target::Editor && cove_runtime::editor::current(&self.state.config.data_dir).is_none() {
            return Ok(Verdict::Respond(pages::html(
                StatusCode::NOT_FOUND,
                "No editor installed",
                "This Cove server has no editor installed yet. An admin installs VS Code for the browser on the Cove host with `cove editor install`; until then, use the terminal (term--…) or `cove ssh`.",
            )));
        }
        if parts.uri.path() == "/__cove/status" {
            let ws = self.state.store.workspace_get(ws.id).await?;
            return Ok(Verdict::Respond(status_json(&ws)));
        }

        // The cached route is the fast path; when it says "running" but the container has no
        // address, the cache is behind (an idle stop, a crash): ask the store.
        let cached = if serving(ws) { self.address(ws).await } else { None };
        // The slow path's future is boxed: the fast path's (boxed per request by the trait)
        // stays small.
        let fresh: Option<Box<Workspace>>;
        let (ip, recently_woken) = match cached {
            Some(ip) => {
                fresh = None;
                (ip, Utc::now() - ws.updated_at < RECENT)
            }
            None => match Box::pin(self.wake_for_request(parts, ws.id)).await? {
                Ok((woken, ip, recently_woken)) => {
                    fresh = Some(Box::new(woken));
                    (ip, recently_woken)
                }
                Err(verdict) => return Ok(verdict),
            },
        };
        let ws = fresh.as_deref().unwrap_or(ws);
        let (upstream, probe_key) = match target {
            Target::Port(port) => (Upstream::Tcp(SocketAddr::new(ip, port)), port),
            Target::Terminal | Target::Editor => {
                let Some(dir) = self.state.agents.run_dir(ws.id) else {
                    return Ok(Verdict::Respond(pages::no_such_app(ws, &host.app.to_string())));
                };
                let socket = match target {
                    Target::Editor => dir.join(agent::USER_RUN_SUBDIR).join(EDITOR_SOCKET),
                    _ => dir.join(agent::AGENT_SOCKET),
                };
                // Ports 0 and 1 are never an app's: they key the probes of the agent's sockets.
                (Upstream::Unix(socket), if target == Target::Editor { 1 } else { 0 })
            }
        };
        // The agent's sockets appear a moment after the container starts (the editor's a few
        // seconds later): always wait for them, once per start.
        let served_by_agent = !matches!(target, Target::Port(_));
        if (recently_woken || served_by_agent) && !self.seen_listening(ws, probe_key) {
            Box::pin(self.await_port(ws, probe_key, &upstream)).await;
        }
        // Read after the probe: the agent writes a new secret at each start, before it listens.
        let headers = match target {
            Target::Terminal => match self.state.agents.endpoint(ws.id) {
                Some((_, secret)) => agent_headers(&secret, "term"),
                None => return Ok(Verdict::Respond(pages::still_starting(ws, self.state.config.wake_wait))),
            },
            _ => Vec::new(),
        };
        Ok(Verdict::Forward(Admitted {
            workspace: ws.id,
            label: route.label.clone(),
            upstream,
            headers,
            strip_authorization: matches!(identity, Identity::Bearer(..)),
            connect_patience: Duration::ZERO,
            // An idle VS Code tab keeps sending keep-alives: only real traffic counts there.
            websocket_activity: if target == Target::Editor {
                cove_proxy::WebSocketActivity::code_server()
            } else {
                cove_proxy::WebSocketActivity::AnyData
            },
        }))
    }

    /// The slow path of a request whose cached route does not say "running with an address":
    /// the workspace freshly read, woken if stopped (within the running quota), waited for
    /// (bounded) unless a browser asks; its address, and whether it started recently. `Err`
    /// is the answer instead.
    async fn wake_for_request(
        &self,
        parts: &http::request::Parts,
        id: WorkspaceId,
    ) -> Result<Result<(Workspace, IpAddr, bool), Verdict>, StoreError> {
        self.state.routes.invalidate();
        let browser = wants_html(parts);
        let fresh = self.state.store.workspace_get(id).await?;
        // A wake is a start like any other: it must fit in the running quota, and the
        // permit is held until the wish to run is written.
        let permit = if fresh.desired == DesiredState::Stopped {
            match crate::quotas::check_running(&self.state, fresh.owner, Some(fresh.id)).await {
                Ok(permit) => Some(permit),
                Err(crate::error::ApiError::Conflict(message)) => {
                    return Ok(Err(Verdict::Respond(pages::over_quota(&fresh, &message, browser))));
                }
                Err(e) => return Ok(Err(Verdict::Respond(axum::response::IntoResponse::into_response(e)))),
            }
        } else {
            None
        };
        let ws = if serving(&fresh) { fresh } else { self.wake(&fresh).await? };
        drop(permit);
        let recently_woken = Utc::now() - ws.updated_at < RECENT;
        let ws = if serving(&ws) {
            ws
        } else if browser {
            return Ok(Err(Verdict::Respond(pages::starting(&ws))));
        } else {
            let deadline = Instant::now() + self.state.config.wake_wait;
            let ws = self.wait_running(ws.id, deadline).await?;
            if ws.actual != ActualState::Running {
                return Ok(Err(Verdict::Respond(pages::still_starting(&ws, self.state.config.wake_wait))));
            }
            ws
        };
        let Some(ip) = self.address(&ws).await else {
            return Ok(Err(Verdict::Respond(pages::still_starting(&ws, self.state.config.wake_wait))));
        };
        Ok(Ok((ws, ip, recently_woken)))
    }

    /// Whether `port` (or the agent socket it keys) accepted a connection since this start.
    fn seen_listening(&self, ws: &Workspace, port: u16) -> bool {
        let key = (ws.id, port, ws.actual_generation);
        self.listening.lock().unwrap_or_else(|p| p.into_inner()).contains(&key)
    }

    /// Right after a start the app may not listen yet: wait for it (bounded). Asked once per
    /// container start and port (the caller checks [`Self::seen_listening`] first). If it
    /// never comes, the proxy answers 502.
    async fn await_port(&self, ws: &Workspace, port: u16, upstream: &Upstream) {
        let key = (ws.id, port, ws.actual_generation);
        let deadline = Instant::now() + PATIENCE_AFTER_WAKE;
        while Instant::now() < deadline {
            let attempt = tokio::time::timeout(Duration::from_secs(1), upstream.probe()).await;
            if let Ok(Ok(())) = attempt {
                let mut listening = self.listening.lock().unwrap_or_else(|p| p.into_inner());
                listening.retain(|(id, _, generation)| *id != ws.id || *generation == ws.actual_generation);
                listening.insert(key);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn login_url(&self, parts: &http::request::Parts, host: &AppHost) -> String {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{}://{}{}", self.state.config.forwarded_proto(), host.host, path);
        format!("{}/auth/app?target={}", self.state.config.public_url, cove_core::percent_encode(&target))
    }
}

#[async_trait::async_trait]
impl Gate for AppGate {
    async fn admit(&self, parts: &http::request::Parts, host: &AppHost, _peer: SocketAddr) -> Verdict {
        match self.decide(parts, host).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(host = %host.host, error = %e, "proxy could not read the store");
                Verdict::Respond(pages::html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Cove is having trouble",
                    "Cove could not read its database; try again in a moment.",
                ))
            }
        }
    }

    fn upstream_failed(&self, workspace: WorkspaceId) {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).remove(&workspace);
    }

    fn activity(&self, workspace: WorkspaceId, kind: ActivityKind) {
        self.activity.record(
            workspace,
            match kind {
                ActivityKind::Http => "http",
                ActivityKind::WebSocket => "websocket",
            },
        );
    }
}

/// The socket code-server listens on, in the workspace user's part of the run directory.
pub const EDITOR_SOCKET: &str = "code.sock";

/// What an app host names: a port of the workspace, or one of the apps the agent serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Port(u16),
    /// `term`: the agent's web terminal.
    Terminal,
    /// `code`: VS Code in the browser (code-server, started by the agent).
    Editor,
}

impl Target {
    fn of(app: &App) -> Option<Target> {
        match app {
            App::Port(p) => Some(Target::Port(*p)),
            App::Named(name) if name == "term" => Some(Target::Terminal),
            App::Named(name) if name == "code" => Some(Target::Editor),
            App::Named(_) => None,
        }
    }
}

/// What a `read` token may do through the proxy: look (GET, HEAD, OPTIONS) at an app's
/// port, without upgrading to a WebSocket. The terminal and the editor are shells, so
/// not even their pages. (Such a request may still wake a stopped workspace, as opening
/// an app always does.)
fn read_may(parts: &http::request::Parts, target: Target) -> bool {
    use http::Method;
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    safe && matches!(target, Target::Port(_)) && !parts.headers.contains_key(header::UPGRADE)
}

/// The headers that open the agent's endpoint for one of its apps.
fn agent_headers(secret: &str, app: &'static str) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let mut headers = vec![(http::HeaderName::from_static("x-cove-app"), http::HeaderValue::from_static(app))];
    if let Ok(value) = http::HeaderValue::from_str(secret) {
        headers.push((http::HeaderName::from_static(agent::SECRET_HEADER), value));
    }
    headers
}

/// Runs and is meant to: requests can go to it now (not stopping, not starting).
fn serving(ws: &Workspace) -> bool {
    ws.actual == ActualState::Running && ws.desired == DesiredState::Running
}

pub fn label(ws: &Workspace) -> String {
    format!("{}/{}", ws.owner_name, ws.name)
}

fn status_json(ws: &Workspace) -> Response {
    let body = json!({ "workspace": ws.name.as_str(), "actual_state": ws.actual, "desired_state": ws.desired, "message": ws.message, "ready": serving(ws) });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

fn wants_html(parts: &http::request::Parts) -> bool {
    parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"))
}

fn bearer(parts: &http::request::Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|s| s.starts_with(crate::auth::TOKEN_PREFIX))
}

/// The value of cookie `name`, from any Cookie header.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| pages::decode(v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_route_cache_stays_bounded_whatever_hosts_are_asked_for() {
        let cache = RouteCache::with_ttl(Duration::from_secs(60));
        for i in 0..ROUTE_CACHE_ENTRIES + 5 {
            cache.put(format!("8080--w{i}--o.localhost"), None);
        }
        let len = cache.entries.lock().unwrap().len();
        assert!(len <= ROUTE_CACHE_ENTRIES, "{len} entries");
        assert!(cache.get(&format!("8080--w{}--o.localhost", ROUTE_CACHE_ENTRIES + 4)).is_some(), "the newest stays");
    }
}
