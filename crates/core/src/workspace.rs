//! The workspace record: what the user asked for and what was last observed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ActualState, DesiredState, Name, Resources, UserId, WorkspaceId};

pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 30 * 60;
pub const MAX_IMAGE_REF_LEN: usize = 255;
/// Bumped when the way Cove lays out a workspace's container changes (its main process,
/// mounts), so that the next start of every workspace replaces its container; the volume
/// stays. 2: the injected agent replaced the placeholder main process.
const CONTAINER_LAYOUT: u32 = 2;

/// The part of a workspace that decides how its container is made. When it changes,
/// the container is made again (the volume stays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceSpec {
    pub image: String,
    pub resources: Resources,
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
}
