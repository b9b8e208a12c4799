//! `cove server`: the control plane. Wires the store, the container engine and the
//! reconciler together behind the HTTP API.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod error;
pub mod openapi;
pub mod views;
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
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub backend: Arc<dyn Backend>,
    pub reconciler: Handle,
    pub config: Arc<Config>,
    pub instance: String,
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
    let instance = match &config.instance {
        Some(i) => i.clone(),
        None => store.instance_id().await?,
    };
    let engine =
        engine::connect(&EngineConfig { endpoint: config.engine_endpoint.clone(), state_dir: config.data_dir.clone() })
            .await?;
    if let Some(note) = &engine.note {
        notes.push(note.clone());
    }
    let backend: Arc<dyn Backend> = Arc::new(engine.backend(instance.clone()));
    match backend.ping().await {
        Ok(info) => notes.push(format!("container engine: {} {} at {}", info.kind, info.version, info.endpoint)),
        Err(e) => notes.push(format!("warning: {e}; workspaces will wait until it answers")),
    }
    let reconciler = cove_reconciler::spawn(store.clone(), backend.clone(), config.reconcile.clone());
    let state = AppState { store, backend, reconciler, config: Arc::new(config.clone()), instance };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());
    let serve = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Server { addr, notes, serve, _engine: engine })
}
