//! The contract between the control plane and `cove agent`, the process Cove injects into
//! every workspace: where things are mounted, what the sockets are called, and the
//! messages both sides exchange. Kept here so the two sides cannot drift apart.
//!
//! Transport: the control plane bind-mounts one host directory per workspace at
//! [`RUN_DIR`]. In it the control plane listens on [`CONTROL_SOCKET`] (agent -> control
//! plane: state, activity, Git credentials; the socket itself says which workspace is
//! talking) and the agent listens on [`AGENT_SOCKET`] (control plane -> agent: health,
//! terminal, SSH, port tunnels), where every request must carry the per-start secret the
//! agent writes to [`SECRET_FILE`]. No network path from a workspace to the control plane
//! exists, and no other workspace can reach either socket.

use serde::{Deserialize, Serialize};

/// Read-only: the agent binary (`bin/cove`, a wrapper that runs the real binary through the
/// bundled dynamic loader, so it works in any image) and its libraries.
pub const AGENT_DIR: &str = "/.cove";
/// What workspaces run as their main process (under the engine's init).
pub const AGENT_BIN: &str = "/.cove/bin/cove";
/// Read-write, per workspace, shared with the host: the two sockets and the secret.
pub const RUN_DIR: &str = "/.cove/run";
pub const CONTROL_SOCKET: &str = "control.sock";
pub const AGENT_SOCKET: &str = "agent.sock";
pub const SECRET_FILE: &str = "secret";
/// A subdirectory of the run directory the workspace user may write to (the editor's
/// socket lives here); the rest of the run directory is root's.
pub const USER_RUN_SUBDIR: &str = "user";
/// Read-only, optional: the editor (code-server and the Node.js it runs on).
pub const EDITOR_DIR: &str = "/.cove/editor";

/// The header carrying the agent's secret on every control-plane request.
pub const SECRET_HEADER: &str = "x-cove-agent-secret";

/// The agent's own state, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Starting,
    Ready,
    Failed,
}

/// `POST /v1/state` on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    pub state: AgentState,
    /// What failed, or what is being done while starting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub version: String,
}

/// `POST /v1/activity` on the control socket: what kept the workspace in use since the
/// last report, and the sessions open now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Kinds of activity seen since the last report ("terminal", "ssh", "editor").
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Open sessions by kind, e.g. {"ssh": 1, "terminal": 2}.
    #[serde(default)]
    pub sessions: std::collections::BTreeMap<String, u32>,
}

/// `GET /v1/workspace` on the control socket: what the agent's workspace is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub name: String,
    pub owner: String,
    /// The repository to clone into `~/project` at the first start.
    #[serde(default)]
    pub source: Option<crate::RepoSource>,
}

/// `POST /v1/devcontainer` on the control socket: the agent, before it runs the project's
/// lifecycle hooks, asks whether the container it runs in is the one the project's
/// devcontainer.json wants (the control plane may first build an image and replace it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevcontainerQuestion {
    /// The spec hash its container was made from (`COVE_SPEC_HASH`).
    pub spec_hash: String,
    /// The first question of this agent's start: the control plane looks at the files again.
    #[serde(default)]
    pub first: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevcontainerAction {
    /// Run the hooks: this container is the configured one.
    Proceed,
    /// Ask again shortly: the configuration is being read or built, or this container is
    /// about to be replaced.
    Wait,
    /// Applying the configuration failed (the message says why): run no hooks.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevcontainerAnswer {
    pub action: DevcontainerAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A tmpfs the engine mounts in every workspace (memory only: never on the volume, never
/// in the engine's metadata but for the mount itself). The agent writes the workspace's
/// secrets here at each start.
pub const SECRETS_TMPFS: &str = "/run/cove";
/// The workspace's file secrets, one file per secret, readable by the workspace user only.
pub const SECRETS_DIR: &str = "/run/cove/secrets";
/// The environment secrets, NUL-separated `KEY=value` entries, for `cove exec`'s processes
/// (which the engine starts, not the agent): read by `cove agent with-secrets`.
pub const SECRETS_ENV_FILE: &str = "/run/cove/env";

/// `GET /v1/secrets` on the control socket: the workspace's frozen set, in clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredSecret {
    pub name: String,
    /// A file in [`SECRETS_DIR`]; otherwise an environment variable.
    #[serde(default)]
    pub file: bool,
    pub value: String,
}

impl std::fmt::Debug for DeliveredSecret {
    // Never the value: a debug print must not leak it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveredSecret").field("name", &self.name).field("file", &self.file).finish_non_exhaustive()
    }
}
