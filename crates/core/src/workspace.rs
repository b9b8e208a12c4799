//! The workspace record: what the user asked for and what was last observed.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ActualState, DesiredState, Name, Resources, UserId, WorkspaceId};

pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 30 * 60;
pub const MAX_IMAGE_REF_LEN: usize = 255;
/// Bumped when the way Cove lays out a workspace's container changes (its main process,
/// mounts), so that the next start of every workspace replaces its container; the volume
/// stays. 2: the injected agent replaced the placeholder main process. 3: a tmpfs at
/// `/run/cove` for the secrets the agent delivers.
const CONTAINER_LAYOUT: u32 = 3;

/// The part of a workspace that decides how its container is made. When it changes,
/// the container is made again (the volume stays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSpec {
    pub image: String,
    pub resources: Resources,
    /// What the project's devcontainer.json adds to the container, once applied.
    #[serde(default)]
    pub config: ContainerConfig,
}

/// The parts of a workspace's container that a devcontainer.json decides (after the
/// admin's policy allowed them): extra environment, mounts, capabilities, labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `containerEnv` (and features' `containerEnv`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ContainerMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Container labels, e.g. `cove.port.<n>` for `forwardPorts`/`portsAttributes`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Volume,
    Bind,
    Tmpfs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMount {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// A volume name or host path; none for tmpfs (or an anonymous volume).
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

impl ContainerConfig {
    pub fn is_empty(&self) -> bool {
        *self == ContainerConfig::default()
    }
}

impl WorkspaceSpec {
    /// A short fingerprint stored as a container label, to tell an outdated container.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(CONTAINER_LAYOUT.to_le_bytes());
        h.update(self.image.as_bytes());
        h.update(b"\n");
        h.update(self.resources.cpus_milli.to_le_bytes());
        h.update(self.resources.memory_bytes.to_le_bytes());
        h.update(self.resources.disk_bytes.unwrap_or(0).to_le_bytes());
        // Only a configured container hashes its configuration, so that a workspace without
        // one keeps the hash (and the container) it had before devcontainer.json applied.
        if !self.config.is_empty() {
            h.update(b"config\n");
            // Serialising plain maps and vectors cannot fail.
            h.update(serde_json::to_vec(&self.config).unwrap_or_default());
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Checks an image reference enough to give a clear message before the engine does.
pub fn validate_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("image must not be empty".into());
    }
    if image.len() > MAX_IMAGE_REF_LEN {
        return Err(format!("image reference is longer than {MAX_IMAGE_REF_LEN} characters"));
    }
    if let Some(c) = image.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("image reference {image:?} contains {c:?}; remove it"));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: Name,
    pub owner: UserId,
    pub owner_name: Name,
    pub spec: WorkspaceSpec,
    /// Seconds without activity before the workspace is stopped; 0 means never.
    pub idle_timeout_seconds: u32,
    pub desired: DesiredState,
    pub actual: ActualState,
    /// Why the workspace is in its actual state, when that needs saying (a failed step).
    pub message: Option<String>,
    /// Bumped on every change of desire or spec.
    pub generation: i64,
    /// Bumped on every write of observed state; a write carrying an older one loses.
    pub actual_generation: i64,
    /// The last thing a user did through Cove (a proxied request, an exec...), as last
    /// flushed to the store; activity is batched, so this may lag a few seconds.
    pub last_activity_at: Option<DateTime<Utc>>,
    pub last_activity_kind: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The repository cloned into `~/project` at the first start, if any.
    #[serde(default)]
    pub source: Option<RepoSource>,
    /// The devcontainer.json last applied to the container and last seen in the volume.
    #[serde(default)]
    pub devcontainer: DevcontainerHashes,
}

/// Content hashes of a project's dev container configuration (the file, its build inputs
/// and features): the one the container was made from and the one last read from the
/// volume. They differ when the user changed the configuration: a rebuild is needed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevcontainerHashes {
    pub applied: Option<String>,
    pub seen: Option<String>,
}

impl DevcontainerHashes {
    pub fn rebuild_needed(&self) -> bool {
        self.seen.is_some() && self.seen != self.applied
    }
}

/// A Git repository a workspace starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSource {
    pub url: String,
    /// The branch to check out; the repository's default when `None`.
    pub branch: Option<String>,
}

pub const MAX_REPO_URL_LEN: usize = 2048;

impl RepoSource {
    /// Checks a clone URL and branch enough to give a clear message before git does: an
    /// `https://`, `http://`, `ssh://`, `git://` or scp-like (`git@host:path`) URL, no
    /// whitespace or control characters, and a branch name git would accept.
    pub fn parse(url: &str, branch: Option<&str>) -> Result<RepoSource, String> {
        let url = url.trim();
        if url.is_empty() || url.len() > MAX_REPO_URL_LEN {
            return Err(format!("repo must be a clone URL of at most {MAX_REPO_URL_LEN} characters"));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("repo {url:?} contains spaces or control characters; give a clone URL"));
        }
        let schemes = ["https://", "http://", "ssh://", "git://"];
        let scp_like = !url.contains("://")
            && url
                .split_once(':')
                .is_some_and(|(host, path)| !host.is_empty() && !host.contains('/') && !path.is_empty());
        if !(schemes.iter().any(|s| url.starts_with(s)) || scp_like) || url.starts_with('-') {
            return Err(format!(
                "repo {url:?} is not a clone URL; use https://host/owner/repo.git or git@host:owner/repo.git"
            ));
        }
        let branch = match branch.map(str::trim) {
            None | Some("") => None,
            Some(b) => {
                let bad = b.starts_with('-')
                    || b.starts_with('/')
                    || b.ends_with('/')
                    || b.ends_with(".lock")
                    || b.contains("..")
                    || b.contains("//")
                    || b.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
                if bad || b.len() > 255 {
                    return Err(format!("branch {b:?} is not a valid Git branch name"));
                }
                Some(b.to_string())
            }
        };
        Ok(RepoSource { url: url.to_string(), branch })
    }
}
