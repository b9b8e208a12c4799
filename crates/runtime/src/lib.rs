//! Cove's container backends. The `Backend` trait is what the reconciler and the API need
//! from a runtime; `docker` speaks the Docker Engine API through bollard, which Docker
//! Engine and Podman's compatible socket both answer; `fake` is an in-memory backend for
//! fast tests of the reconciler.
//!
//! Architecture invariant: every object a backend makes carries the labels
//! `cove.workspace=<id>` and `cove.instance=<instance>`, and a backend only ever observes or
//! touches objects carrying its own instance label.

#![forbid(unsafe_code)]

pub mod docker;
pub mod editor;
pub mod engine;
pub mod fake;
pub mod images;
pub mod inject;
mod listing;

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use cove_core::{Name, Observed, Resources, WorkspaceId};
use futures::stream::BoxStream;
use serde::Serialize;

pub use docker::DockerBackend;
pub use fake::FakeBackend;
pub use inject::Injection;

pub const LABEL_WORKSPACE: &str = "cove.workspace";
pub const LABEL_INSTANCE: &str = "cove.instance";
pub const LABEL_SPEC_HASH: &str = "cove.spec-hash";
pub const LABEL_NAME: &str = "cove.name";
pub const LABEL_OWNER: &str = "cove.owner";

/// The user every workspace runs as (uid/gid 1000) and its home, on the persistent volume.
pub const WORKSPACE_UID: u32 = 1000;
pub const WORKSPACE_HOME: &str = "/home/cove";
/// Fast, throw-away space for heavy tool state; lost at every stop.
pub const WORKSPACE_SCRATCH: &str = "/scratch";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("container engine not reachable at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("no container exists for this workspace")]
    NoContainer,
    #[error("the workspace's container is not running")]
    NotRunning,
    #[error("image {0:?} not found in the engine; build it (`cove image bootstrap`) or pull it")]
    ImageNotFound(String),
    #[error("{0}")]
    Engine(String),
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// Everything a backend needs to make a workspace's container and volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub workspace: WorkspaceId,
    pub name: Name,
    pub owner: Name,
    pub image: String,
    pub resources: Resources,
    /// `WorkspaceSpec::hash`, stored as the `cove.spec-hash` label.
    pub spec_hash: String,
    /// What the applied devcontainer.json adds (env, mounts, capabilities, labels).
    pub config: cove_core::ContainerConfig,
}

/// The environment variable that tells the agent which spec its container was made from,
/// so the control plane can tell a container about to be replaced from the current one.
pub const ENV_SPEC_HASH: &str = "COVE_SPEC_HASH";

/// An image to build through the engine from a tar archive of its context.
#[derive(Clone, Debug, Default)]
pub struct ImageBuild {
    pub tag: String,
    /// The build context, a tar archive.
    pub context: std::path::PathBuf,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub args: std::collections::BTreeMap<String, String>,
    pub target: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EngineInfo {
    /// "podman" or "docker".
    pub kind: String,
    pub version: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// `KEY=value` pairs added to the workspace's environment.
    pub env: Vec<String>,
    /// Defaults to the workspace home.
    pub workdir: Option<String>,
    /// Defaults to the workspace user (uid 1000).
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Always the last event of a stream.
    Exit(i64),
}

#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last lines; `None` for all.
    pub tail: Option<u64>,
}

pub type ExecStream = BoxStream<'static, Result<ExecEvent>>;
pub type LogStream = BoxStream<'static, Result<Bytes>>;

/// What the reconciler and the API need from a runtime. Every method that takes a
/// `WorkspaceId` finds the workspace's objects by label, so it works no matter how they
/// were named; every mutating method is idempotent, because a reconcile pass may be cut
/// short anywhere and repeated.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which engine answers, and its version; `Unreachable` while it is down.
    async fn ping(&self) -> Result<EngineInfo>;
    /// Everything of this instance on the engine, by workspace: containers and volumes.
    async fn observe(&self) -> Result<HashMap<WorkspaceId, Observed>>;
    /// Idempotent: an existing volume is fine.
    async fn create_volume(&self, spec: &ContainerSpec) -> Result<()>;
    /// Makes the container (not started), and its volume if missing. A leftover container
    /// of the same workspace holding the name is replaced. `ImageNotFound` if the image is
    /// not in the engine.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<()>;
    /// Idempotent: a running container is fine. `NoContainer` if there is none.
    async fn start_container(&self, id: WorkspaceId) -> Result<()>;
    /// A container that is not paused is fine. `NoContainer` if there is none.
    async fn unpause_container(&self, id: WorkspaceId) -> Result<()>;
    /// Returns once the container has exited; an exited one is fine. `NoContainer` if
    /// there is none.
    async fn stop_container(&self, id: WorkspaceId) -> Result<()>;
    /// Forced and idempotent: a missing container is fine. The volume stays.
    async fn remove_container(&self, id: WorkspaceId) -> Result<()>;
    /// Idempotent: a missing volume is fine. Fails while a container still uses it.
    async fn remove_volume(&self, id: WorkspaceId) -> Result<()>;
    /// Runs a command in the running container; the stream ends with `ExecEvent::Exit`.
    /// `NotRunning` if the container is not running, `NoContainer` if there is none.
    async fn exec(&self, id: WorkspaceId, request: ExecRequest) -> Result<ExecStream>;
    /// The main process's stdout and stderr, interleaved as written.
    async fn logs(&self, id: WorkspaceId, options: LogOptions) -> Result<LogStream>;
    /// Extracts the tar archive in the file `archive` at `dest` in the workspace's files,
    /// running or not, without starting it. A workspace with no container yet gets a
    /// short-lived helper container on its volume (labelled, not started, removed at once).
    async fn put_archive(&self, spec: &ContainerSpec, dest: &str, archive: &std::path::Path) -> Result<()>;
    /// Writes a tar archive of `path` in the workspace's files to the file `into`, running
    /// or not (a workspace without a container gets a short-lived helper on its volume).
    /// `Ok(false)` if the path does not exist; an error once the archive passes `max_bytes`.
    async fn get_archive(
        &self,
        spec: &ContainerSpec,
        path: &str,
        into: &std::path::Path,
        max_bytes: u64,
    ) -> Result<bool>;
    /// Whether the engine has the image (no pull is ever tried).
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// Builds an image, passing each line of the engine's progress to `progress`.
    async fn build_image(&self, build: &ImageBuild, progress: &mut (dyn for<'p> FnMut(&'p str) + Send)) -> Result<()>;
    /// The address the proxy reaches the running container at; `None` while it has none.
    async fn address(&self, id: WorkspaceId) -> Result<Option<std::net::IpAddr>>;
}
