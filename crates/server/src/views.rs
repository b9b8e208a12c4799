//! The JSON shapes of the API, kept apart from the domain types so that either can change
//! without silently changing the other.

use chrono::{DateTime, Utc};
use cove_core::{ActualState, ApiToken, DesiredState, Role, ShareLevel, TokenScope, User, Workspace};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub image: String,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: Option<u64>,
    pub idle_timeout_seconds: u32,
    pub desired_state: DesiredState,
    pub actual_state: ActualState,
    pub message: Option<String>,
    pub generation: i64,
    pub actual_generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last thing a user did through Cove, and what it was (http, websocket, exec).
    pub last_activity_at: Option<DateTime<Utc>>,
    pub last_activity_kind: Option<String>,
    /// When the idle stop will stop it if nothing happens; `None` when it will not.
    pub idle_stop_at: Option<DateTime<Utc>>,
    /// Its apps' address, with `{app}` standing for a port or app name.
    pub app_url: String,
    /// What the in-workspace agent last reported, while the workspace runs.
    #[serde(default)]
    pub agent: Option<crate::agents::AgentStatus>,
    /// The repository cloned into `~/project` at the first start.
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    /// The hand-off webhook and how its delivery went (filled in by `GET` of one workspace).
    #[serde(default)]
    pub handoff: Option<cove_store::Handoff>,
    /// The configuration in the volume differs from the one the container was made from.
    #[serde(default)]
    pub rebuild_needed: bool,
    /// The devcontainer.json applied, and how its last application (or look) went.
    #[serde(default)]
    pub devcontainer: Option<DevcontainerView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevcontainerView {
    /// The content hash of the applied configuration; `None` if none was applied.
    pub applied: Option<String>,
    /// The last look at the configuration (in this server's lifetime).
    pub build: Option<crate::devcontainers::BuildStatus>,
    /// `cove.port.<n>` labels from `forwardPorts`/`portsAttributes`: port -> label.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<u16, String>,
}

impl From<&Workspace> for WorkspaceView {
    fn from(w: &Workspace) -> Self {
        Self {
            id: w.id.to_string(),
            name: w.name.to_string(),
            owner: w.owner_name.to_string(),
            image: w.spec.image.clone(),
            cpus: w.spec.resources.cpus(),
            memory_bytes: w.spec.resources.memory_bytes,
            disk_bytes: w.spec.resources.disk_bytes,
            idle_timeout_seconds: w.idle_timeout_seconds,
            desired_state: w.desired,
            actual_state: w.actual,
            message: w.message.clone(),
            generation: w.generation,
            actual_generation: w.actual_generation,
            created_at: w.created_at,
            updated_at: w.updated_at,
            last_activity_at: w.last_activity_at,
            last_activity_kind: w.last_activity_kind.clone(),
            idle_stop_at: None,
            app_url: String::new(),
            agent: None,
            repo: w.source.as_ref().map(|s| s.url.clone()),
            branch: w.source.as_ref().and_then(|s| s.branch.clone()),
            handoff: None,
            rebuild_needed: w.devcontainer.rebuild_needed(),
            devcontainer: w.devcontainer.applied.as_ref().map(|applied| DevcontainerView {
                applied: Some(applied.clone()),
                build: None,
                ports: w
                    .spec
                    .config
                    .labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("cove.port.")?.parse().ok()?, v.clone())))
                    .collect(),
            }),
        }
    }
}

/// What `cove show` and the dashboard say about a workspace beyond its fields.
impl WorkspaceView {
    /// Why a running workspace is still up and when it will stop.
    pub fn awake(&self, now: DateTime<Utc>) -> String {
        if self.actual_state != ActualState::Running {
            return "-".into();
        }
        let why = match (&self.last_activity_at, &self.last_activity_kind) {
            (Some(at), Some(kind)) if *at > self.updated_at => format!("last activity {} ago ({kind})", age(*at, now)),
            _ => format!("started or changed {} ago, no activity since", age(self.updated_at, now)),
        };
        match self.idle_stop_at {
            Some(at) if at > now => format!("{why}; stops in {} unless used", age(now, at)),
            Some(_) => format!("{why}; stopping for idleness"),
            None => format!("{why}; no idle stop"),
        }
    }

    /// What the in-workspace agent last said: `ready (0.1.0, 5s ago)`.
    pub fn agent_line(&self, now: DateTime<Utc>) -> String {
        let Some(agent) = &self.agent else {
            return if self.actual_state == ActualState::Running { "not reported yet".into() } else { "-".into() };
        };
        let state =
            serde_json::to_value(agent.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        let message = agent.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        format!("{state}{message} ({}, {} ago)", agent.version, age(agent.reported_at, now))
    }

    /// Sessions open in the workspace now, by kind: `ssh 1, terminal 2`, or `none`.
    pub fn sessions_line(&self) -> String {
        match &self.agent {
            Some(agent) if !agent.sessions.is_empty() => {
                agent.sessions.iter().map(|(kind, n)| format!("{kind} {n}")).collect::<Vec<_>>().join(", ")
            }
            _ => "none".into(),
        }
    }
}

/// "42s", "5m", "3h", "2d".
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - since).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct AppView {
    pub app: String,
    pub share: ShareLevel,
    pub url: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ShareBody {
    pub share: ShareLevel,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub disabled: bool,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            name: u.name.to_string(),
            role: u.role,
            created_at: u.created_at,
            disabled: u.disabled,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<&ApiToken> for TokenView {
    fn from(t: &ApiToken) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            scope: t.scope,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
        }
    }
}

/// A size given either as bytes or as text such as "2g".
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspace {
    pub name: String,
    pub image: Option<String>,
    pub cpus: Option<f64>,
    pub memory: Option<Size>,
    pub disk: Option<Size>,
    pub idle_timeout_seconds: Option<u32>,
    /// Create it stopped when false (default true).
    pub start: Option<bool>,
    /// A Git repository to clone into `~/project` at the first start, and its branch.
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// Whom to tell (a webhook) once the workspace is ready.
    pub handoff: Option<HandoffRequest>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct HandoffRequest {
    pub notify: String,
    pub message: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchWorkspace {
    pub desired_state: Option<DesiredState>,
    pub cpus: Option<f64>,
    pub memory: Option<Size>,
    pub disk: Option<Size>,
    pub idle_timeout_seconds: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// One line of an exec's newline-delimited JSON output. Output bytes are base64 so that
/// binary output survives.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExecFrame {
    Stdout(String),
    Stderr(String),
    Exit(i64),
    Error(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub username: String,
    pub password: String,
    pub token_name: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    pub role: Option<Role>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub expires_in_days: Option<u32>,
    /// Default `write`.
    pub scope: Option<TokenScope>,
}

/// `PUT /api/v1/admin/quotas`: every limit at once; one left out is no limit.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SetQuotas {
    pub max_workspaces: Option<u32>,
    pub max_running: Option<u32>,
    pub max_cpus: Option<f64>,
    pub max_memory: Option<Size>,
}
