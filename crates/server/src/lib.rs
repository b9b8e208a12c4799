//! `cove server`: the control plane. Wires the store, the container engine and the
//! reconciler together behind the HTTP API.

#![forbid(unsafe_code)]

pub mod access;
pub mod activity;
pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod devcontainers;
pub mod error;
pub mod files;
pub mod gate;
pub mod handoff;
pub mod oidc;
pub mod openapi;
pub mod pages;
pub mod quotas;
pub mod secrets;
pub mod secrets_api;
pub mod tickets;
pub mod tunnel;
pub mod views;
pub mod web;
pub mod workspaces;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
pub use cove_reconciler::Config as ReconcileConfig;
use cove_reconciler::Handle;
use cove_runtime::engine::{self, EngineConfig};
use cove_runtime::Backend;
use cove_store::{SqliteStore, Store};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";
pub const DEFAULT_IMAGE: &str = "cove/base:latest";

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The engine's API endpoint; `None` to detect one.
    pub engine_endpoint: Option<String>,
    /// Overrides the instance id kept in the store (tests use it to label what they make).
    pub instance: Option<String>,
    pub default_image: String,
    pub reconcile: cove_reconciler::Config,
    /// App hosts are `<app>--<workspace>--<owner>.<apps_domain>`.
    pub apps_domain: String,
    /// The dashboard's origin as browsers reach it; empty for `http://localhost:<port>`.
    pub public_url: String,
    /// How long a script's request to a stopped workspace waits for it to start.
    pub wake_wait: std::time::Duration,
    pub activity_flush_interval: std::time::Duration,
    pub idle_check_interval: std::time::Duration,
    /// What a devcontainer.json may ask of this instance (binds, privileges, initializeCommand).
    pub devcontainer_policy: cove_devcontainer::Policy,
    /// Login through an OpenID Connect provider, when configured.
    pub oidc: Option<oidc::OidcConfig>,
}

impl Config {
    /// Sensible defaults around the given listen address and data directory.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            engine_endpoint: None,
            instance: None,
            default_image: DEFAULT_IMAGE.into(),
            reconcile: cove_reconciler::Config::default(),
            apps_domain: "localhost".into(),
            public_url: String::new(),
            wake_wait: std::time::Duration::from_secs(60),
            activity_flush_interval: std::time::Duration::from_secs(5),
            idle_check_interval: std::time::Duration::from_secs(10),
            devcontainer_policy: cove_devcontainer::Policy::default(),
            oidc: None,
        }
    }

    /// Whether browsers reach Cove over HTTPS: cookies are then marked Secure.
    pub fn https(&self) -> bool {
        self.public_url.starts_with("https:")
    }

    pub fn forwarded_proto(&self) -> &'static str {
        if self.https() {
            "https"
        } else {
            "http"
        }
    }

    /// `localhost:7080`: the apps domain with the public port, as app URLs use it.
    pub fn apps_authority(&self) -> String {
        let after_scheme = self.public_url.split_once("://").map_or(self.public_url.as_str(), |(_, r)| r);
        let authority = after_scheme.split('/').next().unwrap_or("");
        match authority.rsplit_once(':') {
            Some((_, port)) if port.chars().all(|c| c.is_ascii_digit()) => format!("{}:{port}", self.apps_domain),
            _ => self.apps_domain.clone(),
        }
    }

    /// The URL of one app of a workspace, e.g. `http://8080--api--ada.localhost:7080/`.
    pub fn app_url(&self, app: &str, workspace: &str, owner: &str) -> String {
        format!("{}://{app}--{workspace}--{owner}.{}/", self.forwarded_proto(), self.apps_authority())
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    pub reconciler: Handle,
    pub config: Arc<Config>,
    pub instance: String,
    pub routes: Arc<gate::RouteCache>,
    /// Bearer tokens and app cookies' sessions the proxy checked; cleared on revoke,
    /// logout or a user change.
    pub access: Arc<gate::AccessCache>,
    /// One at a time per user: a quota check and the write it allows.
    pub quota_locks: Arc<quotas::Locks>,
    pub activity: Arc<activity::Activity>,
    pub signer: Arc<tickets::Signer>,
    pub metrics: Arc<cove_proxy::Metrics>,
    pub agents: Arc<agents::Agents>,
    pub builds: Arc<devcontainers::Builds>,
    /// Failed password logins, per account and address.
    pub logins: Arc<access::LoginLimiter>,
    /// `None` unless OIDC login is configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
}

impl AppState {
    /// A state with nothing of its own running (no activity loops, no agents' control
    /// sockets) and empty caches, around the parts given: what tests route requests through.
    pub fn bare(
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        reconciler: Handle,
        config: Config,
        signer: tickets::Signer,
    ) -> Self {
        AppState {
            store,
            backend,
            reconciler,
            config: Arc::new(config),
            instance: "test".into(),
            routes: Arc::default(),
            access: Arc::default(),
            quota_locks: Arc::default(),
            activity: Arc::default(),
            signer: Arc::new(signer),
            metrics: Arc::default(),
            agents: Arc::new(agents::Agents::new(None)),
            builds: Arc::default(),
            logins: Arc::default(),
            oidc: None,
        }
    }
}

/// A started server: where it listens and what it said on the way up.
pub struct Server {
    pub addr: SocketAddr,
    pub notes: Vec<String>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    _engine: engine::Engine,
}

impl Server {
    /// Serves until the process gets SIGINT or SIGTERM.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = self.serve => { r??; }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok(())
    }
}

/// Opens the store, finds the engine, starts the reconciler and binds the listener.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let db_path = config.data_dir.join("cove.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db_path).await.with_context(|| format!("cannot open the database {}", db_path.display()))?,
    );
    let mut notes = vec![];
    if let Some(path) = auth::ensure_admin(store.as_ref(), &config.data_dir).await? {
        notes.push(format!(
            "first start: created the admin account 'admin'; its password is in {} (log in with `cove login`, then delete the file)",
            path.display()
        ));
    }
    let (instance, engine, backend) = connect_engine(&config, store.as_ref()).await?;
    notes.extend(engine.note.clone());
    match backend.ping().await {
        Ok(info) => notes.push(format!("container engine: {} {} at {}", info.kind, info.version, info.endpoint)),
        Err(e) => notes.push(format!("warning: {e}; workspaces will wait until it answers")),
    }
    let signer = Arc::new(tickets::Signer::load_or_create(&config.data_dir)?);
    secrets::check_key(store.as_ref(), &config.data_dir).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut config = config;
    if config.public_url.is_empty() {
        config.public_url = format!("http://localhost:{}", addr.port());
    }
    let oidc = match &config.oidc {
        Some(c) => {
            let oidc = oidc::Oidc::new(c.clone(), &config.public_url)?;
            notes.push(format!(
                "OIDC login: {} at {}; register {} as the client's redirect URI",
                c.display_name,
                c.issuer,
                oidc.redirect_url()
            ));
            Some(Arc::new(oidc))
        }
        None => None,
    };
    let reconciler = cove_reconciler::spawn(store.clone(), backend.clone(), config.reconcile.clone());
    let routes: Arc<gate::RouteCache> = Arc::default();
    routes.follow(reconciler.changes());
    let mut state = assemble(store, backend, instance, signer, reconciler, routes, &config, Role::Server);
    state.oidc = oidc;
    agents::spawn_sync(state.clone());
    handoff::spawn(state.clone());
    notes.push(format!("apps: {}", config.app_url("PORT", "WORKSPACE", "OWNER")));
    let proxy = Arc::new(proxy_for(state.clone()));
    let app = router(state).layer(tower_http::trace::TraceLayer::new_for_http());
    let serve = tokio::spawn(async move { cove_proxy::serve(listener, proxy, app).await });
    Ok(Server { addr, notes, serve, _engine: engine })
}

/// Everything served on the dashboard's origin: the API and the pages. Other names under
/// the apps domain that are not app hosts get the plain 404 page, not the dashboard.
pub fn router(state: AppState) -> axum::Router {
    let apps_domain = state.config.apps_domain.clone();
    let dashboard = dashboard::router()
        .merge(oidc::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::layer))
        .with_state(state.clone());
    api::router(state).merge(dashboard).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let under_apps_domain = request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_ascii_lowercase())
                .is_some_and(|name| name.ends_with(&format!(".{apps_domain}")));
            async move {
                if under_apps_domain {
                    return pages::not_found();
                }
                next.run(request).await
            }
        },
    ))
}

/// The proxy for app hosts, deciding through the gate.
pub fn proxy_for(state: AppState) -> cove_proxy::Proxy {
    let config = cove_proxy::Config {
        apps_domain: state.config.apps_domain.clone(),
        forwarded_proto: state.config.forwarded_proto().to_string(),
    };
    let gate = gate::AppGate::new(state.clone(), state.signer.clone(), state.activity.clone(), state.metrics.clone());
    cove_proxy::Proxy::new(config, Arc::new(gate), state.metrics.clone())
}

/// `cove proxy`: the workspace proxy alone, on the server's data directory. It shares the
/// store and the ticket key with the server; it wakes workspaces by writing their desired
/// state, which the server's reconciler acts on at its next pass, and it records activity.
/// The server stays the only process that reconciles and stops idle workspaces.
pub async fn start_proxy(config: Config) -> anyhow::Result<Server> {
    if config.public_url.is_empty() {
        anyhow::bail!("give the server's address with --public-url, so that logins can be sent there");
    }
    let db_path = config.data_dir.join("cove.db");
    if !db_path.exists() {
        anyhow::bail!("no Cove database at {}; start `cove server` with this data directory first", db_path.display());
    }
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db_path).await.with_context(|| format!("cannot open the database {}", db_path.display()))?,
    );
    let (instance, engine, backend) = connect_engine(&config, store.as_ref()).await?;
    let mut notes: Vec<String> = engine.note.iter().cloned().collect();
    let signer = Arc::new(tickets::Signer::load_or_create(&config.data_dir)?);
    secrets::check_key(store.as_ref(), &config.data_dir).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // This process does not see the server's reconciler at work: no caching of state.
    let routes = Arc::new(gate::RouteCache::with_ttl(std::time::Duration::ZERO));
    let state = assemble(store, backend, instance, signer, Handle::detached(), routes, &config, Role::Proxy);
    let metrics = state.metrics.clone();
    notes.push(format!("proxying {}", config.app_url("PORT", "WORKSPACE", "OWNER")));
    let proxy = Arc::new(proxy_for(state));
    let fallback = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
            }),
        )
        .fallback(|| async { pages::not_found() });
    let serve = tokio::spawn(async move { cove_proxy::serve(listener, proxy, fallback).await });
    Ok(Server { addr, notes, serve, _engine: engine })
}

/// This control plane's instance id (configured, or the one kept in the store), the engine
/// (found, or started), and a backend that labels and sees only that instance's objects.
async fn connect_engine(
    config: &Config,
    store: &dyn Store,
) -> anyhow::Result<(String, engine::Engine, Arc<dyn Backend>)> {
    let instance = match &config.instance {
        Some(i) => i.clone(),
        None => store.instance_id().await?,
    };
    let engine =
        engine::connect(&EngineConfig { endpoint: config.engine_endpoint.clone(), state_dir: config.data_dir.clone() })
            .await?;
    let injection = agent_injection(&config.data_dir)?;
    let backend: Arc<dyn Backend> = Arc::new(engine.backend(instance.clone()).with_injection(injection));
    Ok((instance, engine, backend))
}

/// The agent (this binary, with its loader and libraries) ready to mount into workspaces,
/// and where their run directories live.
fn agent_injection(data_dir: &std::path::Path) -> anyhow::Result<cove_runtime::Injection> {
    let exe = std::env::current_exe().context("cannot find the cove binary to inject as the workspace agent")?;
    let agent_dir = cove_runtime::inject::prepare_agent_dir(data_dir, &exe)
        .context("cannot prepare the workspace agent for injection")?;
    Ok(cove_runtime::Injection { agent_dir, run_root: run_root(data_dir), editor_from: Some(data_dir.to_path_buf()) })
}

/// Where workspaces' run directories (the agents' sockets) live. Unix socket paths are
/// limited to about 100 bytes, so this must stay short.
pub fn run_root(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("run")
}

/// Which process is being assembled: only the server stops idle workspaces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Proxy,
}

/// The state both the server and the standalone proxy run on, with the activity loops
/// started.
#[allow(clippy::too_many_arguments)]
fn assemble(
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    instance: String,
    signer: Arc<tickets::Signer>,
    reconciler: Handle,
    routes: Arc<gate::RouteCache>,
    config: &Config,
    role: Role,
) -> AppState {
    let metrics = Arc::new(cove_proxy::Metrics::default());
    let activity = Arc::new(activity::Activity::default());
    let agents = Arc::new(agents::Agents::new(Some(run_root(&config.data_dir))));
    activity::spawn(
        store.clone(),
        activity.clone(),
        reconciler.clone(),
        metrics.clone(),
        routes.clone(),
        activity::IdleConfig {
            flush_interval: config.activity_flush_interval,
            check_interval: config.idle_check_interval,
            stop_idle: role == Role::Server,
        },
    );
    AppState {
        store,
        backend,
        reconciler,
        config: Arc::new(config.clone()),
        instance,
        routes,
        access: Arc::default(),
        quota_locks: Arc::default(),
        activity,
        signer,
        metrics,
        agents,
        builds: Arc::default(),
        logins: Arc::default(),
        oidc: None,
    }
}
