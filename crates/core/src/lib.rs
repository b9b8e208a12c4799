//! Cove's domain: the types every other crate speaks, and the rules that need no I/O.
//!
//! Architecture invariant: this crate does no I/O (no files, no network, no clock reads
//! except through values handed in) and depends on no other Cove crate.

#![forbid(unsafe_code)]

pub mod agent;
pub mod auth;
pub mod ids;
pub mod name;
pub mod plan;
pub mod resources;
pub mod state;
pub mod text;
pub mod workspace;

pub use auth::{hash_from_digest, hash_token, token_digest, ApiToken, Role, ShareLevel, TokenScope, User};
pub use ids::{TokenId, UserId, WorkspaceId};
pub use name::{Name, NameError};
pub use plan::{plan, Action, ContainerState, Observed, ObservedContainer, Plan};
pub use resources::{format_duration, format_size, parse_duration, parse_size, Resources, ResourcesError};
pub use state::{ActualState, DesiredState};
pub use text::percent_encode;
pub use workspace::{
    ContainerConfig, ContainerMount, DevcontainerHashes, MountType, RepoSource, Workspace, WorkspaceSpec,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
};
