//! Cove's persistence. One `Store` owns every query; methods are named resource-first
//! (`workspace_create`, `workspace_list_by_owner`). SQLite is the embedded default;
//! the trait is there so PostgreSQL can follow for a highly available control plane.
//!
//! Architecture invariant: no SQL outside this crate.

#![forbid(unsafe_code)]

mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cove_core::{
    ActualState, ApiToken, DesiredState, Name, Resources, Role, ShareLevel, TokenId, TokenScope, User, UserId,
    Workspace, WorkspaceId,
};

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness or generation check failed; the text says which.
    #[error("{0}")]
    Conflict(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub struct NewUser {
    pub name: Name,
    pub role: Role,
    /// An argon2id PHC string; the store never sees a plain password.
    pub password_hash: String,
}

/// An admin's change to a user; `None` fields are left as they are.
#[derive(Default)]
pub struct UserPatch {
    pub disabled: Option<bool>,
    /// A new argon2id PHC string.
    pub password_hash: Option<String>,
}

/// A provider's account as Cove links it: the issuer's URL and its stable subject id.
#[derive(Clone, Debug)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
    /// The address the provider gave this time; informational, never a key.
    pub email: Option<String>,
}

pub struct NewToken {
    pub user: UserId,
    pub name: String,
    pub scope: TokenScope,
    /// `cove_core::hash_token` of the secret.
    pub token_hash: String,
    pub expires_at: Option<DateTime<Utc>>,
}

pub struct NewWorkspace {
    pub name: Name,
    pub owner: UserId,
    pub image: String,
    pub resources: Resources,
    pub idle_timeout_seconds: u32,
    pub desired: DesiredState,
    /// The repository to clone into `~/project` at the first start.
    pub source: Option<cove_core::RepoSource>,
    /// Whom to tell once the workspace is ready.
    pub handoff: Option<NewHandoff>,
}

pub struct NewHandoff {
    pub notify_url: String,
    pub message: String,
}

/// A workspace's hand-off webhook and how its delivery went.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handoff {
    pub workspace: WorkspaceId,
    pub notify_url: String,
    pub message: String,
    /// `pending`, `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A change asked for by a user; `None` fields are left as they are.
#[derive(Default)]
pub struct WorkspacePatch {
    pub desired: Option<DesiredState>,
    pub resources: Option<Resources>,
    pub idle_timeout_seconds: Option<u32>,
}

/// A devcontainer.json applied to a workspace: what its container is made from from now on.
pub struct DevcontainerApply {
    pub image: String,
    pub resources: Resources,
    pub config: cove_core::ContainerConfig,
    /// The configuration's content hash (also recorded as the one seen).
    pub hash: String,
}

/// One state-changing request, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Increasing; set by the store (ignored by `audit_record`).
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who, when known (a failed login knows only the name tried).
    pub actor_id: Option<UserId>,
    pub actor_name: Option<String>,
    /// The route, such as `POST /api/v1/workspaces/{ws}/exec`.
    pub action: String,
    /// The path it was applied to, such as `/api/v1/workspaces/api/exec`.
    pub target: String,
    /// The HTTP status and, for refusals, the error code (`201`, `403 forbidden`).
    pub outcome: String,
    /// The client's address.
    pub peer: Option<String>,
}

/// Limits the admin sets for every user; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quotas {
    /// Workspaces a user may have (any state but being deleted).
    pub max_workspaces: Option<u32>,
    /// Workspaces a user may want running at once.
    pub max_running: Option<u32>,
    /// CPUs per workspace, in thousandths.
    pub max_cpus_milli: Option<u32>,
    pub max_memory_bytes: Option<u64>,
}

/// One time a workspace ran, as the store recorded it from observed state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunInterval {
    pub workspace: WorkspaceId,
    pub workspace_name: String,
    pub owner: UserId,
    /// Its size while it ran.
    pub resources: Resources,
    pub started_at: DateTime<Utc>,
    /// `None` while it still runs.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// A user's Git token for one host, as stored: encrypted (the store never sees the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitToken {
    pub user: UserId,
    pub host: String,
    pub username: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// Where a secret is kept; a later scope overrides an earlier one by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretScope {
    Instance,
    User(UserId),
    Workspace(WorkspaceId),
}

impl SecretScope {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretScope::Instance => "instance",
            SecretScope::User(_) => "user",
            SecretScope::Workspace(_) => "workspace",
        }
    }

    /// The id the scope belongs to ('' for the instance).
    pub fn owner(self) -> String {
        match self {
            SecretScope::Instance => String::new(),
            SecretScope::User(u) => u.to_string(),
            SecretScope::Workspace(w) => w.to_string(),
        }
    }
}

/// How a secret reaches the workspace: an environment variable or a file in a tmpfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretKind {
    Env,
    File,
}

impl SecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Env => "env",
            SecretKind::File => "file",
        }
    }
}

impl std::str::FromStr for SecretKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "env" => Ok(SecretKind::Env),
            "file" => Ok(SecretKind::File),
            other => Err(format!("unknown secret kind {other:?}; use env or file")),
        }
    }
}

/// A secret as stored: encrypted (the store never sees the value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub scope: SecretScope,
    pub name: String,
    pub kind: SecretKind,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    /// Set by the store; `created_at` survives a replacement.
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One secret of a workspace's frozen set, sealed for that workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenSecret {
    pub workspace: WorkspaceId,
    pub name: String,
    pub kind: SecretKind,
    /// The scope the value came from.
    pub scope: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub frozen_at: DateTime<Utc>,
}

/// Which stored ciphertext a [`Sealed`] is: for re-encrypting everything under a new key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedRef {
    /// The value the server checks the instance key against at start-up.
    KeyCheck,
    GitToken {
        user: UserId,
        host: String,
    },
    Secret {
        scope: SecretScope,
        name: String,
        kind: SecretKind,
    },
    Frozen {
        workspace: WorkspaceId,
        name: String,
        kind: SecretKind,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub what: SealedRef,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A login session: the token a password login made, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub token: ApiToken,
    pub peer: Option<String>,
    pub user_agent: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// This control plane's id, made on first use and kept; it labels every engine object.
    async fn instance_id(&self) -> Result<String>;

    /// Appends to the audit log; the store sets the id.
    async fn audit_record(&self, entry: AuditEntry) -> Result<()>;
    /// The newest `limit` entries at or after `since`, oldest first.
    async fn audit_list(&self, since: Option<DateTime<Utc>>, limit: u32) -> Result<Vec<AuditEntry>>;

    /// The instance's quotas; all `None` until an admin sets some.
    async fn quota_get(&self) -> Result<Quotas>;
    /// Replaces every quota at once (`None` removes that limit).
    async fn quota_set(&self, quotas: Quotas) -> Result<()>;

    /// A free-form instance setting (such as the dashboard's prices), if set.
    async fn setting_get(&self, key: &str) -> Result<Option<String>>;
    async fn setting_set(&self, key: &str, value: &str) -> Result<()>;

    /// Run intervals that overlap `[since, now]`, oldest first. Intervals are opened and
    /// closed by `workspace_set_actual` (a write of `Running` opens one, any other state
    /// closes it) and closed by `workspace_delete`.
    async fn run_list(&self, since: DateTime<Utc>) -> Result<Vec<RunInterval>>;

    async fn user_count(&self) -> Result<u64>;
    /// Every user, by name.
    async fn user_list(&self) -> Result<Vec<User>>;
    /// `Conflict` when the name is taken.
    async fn user_create(&self, new: NewUser) -> Result<User>;
    async fn user_get(&self, id: UserId) -> Result<User>;
    /// `NotFound` for an unknown id.
    async fn user_patch(&self, id: UserId, patch: UserPatch) -> Result<User>;
    /// The user and their password hash.
    async fn user_get_by_name_with_password(&self, name: &Name) -> Result<Option<(User, String)>>;

    /// The user linked to this provider account, if any.
    async fn oidc_identity_user(&self, issuer: &str, subject: &str) -> Result<Option<User>>;
    /// Makes a user and links the account to it, both or neither. `Conflict` when the
    /// name is taken or the account is linked already.
    async fn oidc_user_create(&self, new: NewUser, identity: OidcIdentity) -> Result<User>;
    /// Records a login of a linked account: its latest email and, when `role` is given,
    /// the role the provider's groups now map to. `NotFound` for an unlinked account.
    async fn oidc_identity_login(&self, identity: OidcIdentity, role: Option<Role>) -> Result<User>;

    /// `NotFound` when the user does not exist.
    async fn token_create(&self, new: NewToken) -> Result<ApiToken>;
    /// The token and its user, unless unknown, expired at `now` (`expires_at <= now`) or
    /// its user is disabled.
    /// Records the use in `last_used_at`, to the minute.
    async fn token_authenticate(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<(ApiToken, User)>>;
    /// Whether this is a known token that has expired at `now`: to tell the caller why
    /// `token_authenticate` said no.
    async fn token_expired(&self, token_hash: &str, now: DateTime<Utc>) -> Result<bool>;
    /// Expired tokens included, oldest first.
    async fn token_list_by_user(&self, user: UserId) -> Result<Vec<ApiToken>>;
    /// `NotFound` unless the token exists and belongs to `user`.
    async fn token_delete(&self, user: UserId, id: TokenId) -> Result<()>;

    /// Writes a new workspace with actual state `CreationRequested`, generation 1.
    /// `Conflict` when the owner already has one of that name, `NotFound` when the owner
    /// does not exist.
    async fn workspace_create(&self, new: NewWorkspace) -> Result<Workspace>;
    async fn workspace_get(&self, id: WorkspaceId) -> Result<Workspace>;
    async fn workspace_get_by_name(&self, owner: UserId, name: &Name) -> Result<Workspace>;
    /// Sorted by name.
    async fn workspace_list_by_owner(&self, owner: UserId) -> Result<Vec<Workspace>>;
    /// Sorted by name, then owner name.
    async fn workspace_list_all(&self) -> Result<Vec<Workspace>>;
    /// Applies a user's change, bumps the generation and sets `updated_at`. With
    /// `expected_generation`, applies only if the stored generation still equals it
    /// (`Conflict` otherwise). `NotFound` for an unknown id.
    async fn workspace_patch(
        &self,
        id: WorkspaceId,
        patch: WorkspacePatch,
        expected_generation: Option<i64>,
    ) -> Result<Workspace>;
    /// Records observed state. Wins only if `actual_generation` is newer than the stored
    /// one; returns whether it was written (`false` also for an unknown id). Leaves
    /// `updated_at`, which tells when the user last changed the workspace.
    async fn workspace_set_actual(
        &self,
        id: WorkspaceId,
        actual: ActualState,
        message: Option<&str>,
        actual_generation: i64,
    ) -> Result<bool>;
    /// Removes the record: the last step of termination. `NotFound` if already gone.
    async fn workspace_delete(&self, id: WorkspaceId) -> Result<()>;
    /// Records an applied devcontainer.json: image, resources, container settings and hash;
    /// bumps the generation, so the reconciler makes the container again. `NotFound` for
    /// an unknown id.
    async fn workspace_devcontainer_apply(&self, id: WorkspaceId, apply: DevcontainerApply) -> Result<Workspace>;
    /// The hash of the configuration last read from the volume (`None`: there is none).
    /// Not a change of desire: no generation bump.
    async fn workspace_devcontainer_seen(&self, id: WorkspaceId, hash: Option<&str>) -> Result<()>;

    /// Records batched activity: each entry moves `last_activity_at` forward (never back)
    /// and sets its kind. Unknown ids are skipped.
    async fn workspace_record_activity(&self, entries: &[(WorkspaceId, DateTime<Utc>, String)]) -> Result<()>;

    /// The share level of one app of a workspace, if one was set.
    async fn app_share_get(&self, workspace: WorkspaceId, app: &str) -> Result<Option<ShareLevel>>;
    /// Every app of a workspace with a share level set, by app name.
    async fn app_share_list(&self, workspace: WorkspaceId) -> Result<Vec<(String, ShareLevel)>>;
    /// Sets an app's share level; `Owner` removes the entry (it is the default).
    async fn app_share_set(&self, workspace: WorkspaceId, app: &str, share: ShareLevel) -> Result<()>;

    async fn handoff_get(&self, workspace: WorkspaceId) -> Result<Option<Handoff>>;
    /// Hand-offs still to deliver, oldest first.
    async fn handoff_list_pending(&self) -> Result<Vec<Handoff>>;
    /// Records one delivery attempt: delivered, or failed with `error` and the time of the
    /// next attempt (`None`: given up).
    async fn handoff_record_attempt(
        &self,
        workspace: WorkspaceId,
        outcome: std::result::Result<DateTime<Utc>, (String, Option<DateTime<Utc>>)>,
    ) -> Result<()>;
    /// Stores (or replaces) a user's token for a host; `created_at` is set by the store.
    async fn git_token_set(&self, token: GitToken) -> Result<GitToken>;
    async fn git_token_get(&self, user: UserId, host: &str) -> Result<Option<GitToken>>;
    /// A user's tokens, by host.
    async fn git_token_list(&self, user: UserId) -> Result<Vec<GitToken>>;
    /// `NotFound` if the user has none for that host.
    async fn git_token_delete(&self, user: UserId, host: &str) -> Result<()>;

    /// Stores (or replaces, keeping `created_at`) a secret; the store sets the times.
    async fn secret_set(&self, secret: Secret) -> Result<Secret>;
    /// One scope's secrets, by name.
    async fn secret_list(&self, scope: SecretScope) -> Result<Vec<Secret>>;
    /// `NotFound` if the scope has none of that name.
    async fn secret_delete(&self, scope: SecretScope, name: &str) -> Result<()>;
    /// Replaces a workspace's frozen set; the store sets `frozen_at`.
    async fn workspace_secret_freeze(&self, workspace: WorkspaceId, set: Vec<FrozenSecret>) -> Result<()>;
    /// A workspace's frozen set, by name.
    async fn workspace_secret_list(&self, workspace: WorkspaceId) -> Result<Vec<FrozenSecret>>;
    /// The sealed value the instance key is checked against, once one was stored.
    async fn key_check_get(&self) -> Result<Option<Sealed>>;
    async fn key_check_set(&self, sealed: Sealed) -> Result<()>;
    /// Every ciphertext the store holds (key check, Git tokens, secrets, frozen sets).
    async fn sealed_list_all(&self) -> Result<Vec<Sealed>>;
    /// Writes new nonces and ciphertexts for the rows named, all or nothing.
    async fn sealed_replace_all(&self, rows: Vec<Sealed>) -> Result<()>;

    /// Marks a token as a login session made from `peer` with `user_agent`.
    async fn session_record(&self, token: TokenId, peer: Option<&str>, user_agent: Option<&str>) -> Result<()>;
    /// A user's login sessions (expired ones left out), oldest first.
    async fn session_list_by_user(&self, user: UserId) -> Result<Vec<Session>>;

    /// Shares a workspace with a user (again: no change).
    async fn workspace_share_add(&self, workspace: WorkspaceId, user: UserId) -> Result<()>;
    /// `NotFound` if it was not shared with them.
    async fn workspace_share_remove(&self, workspace: WorkspaceId, user: UserId) -> Result<()>;
    /// The users a workspace is shared with, by name.
    async fn workspace_share_list(&self, workspace: WorkspaceId) -> Result<Vec<(UserId, Name)>>;
    /// The workspaces shared with `user`, sorted by name then owner name.
    async fn workspace_list_shared_with(&self, user: UserId) -> Result<Vec<Workspace>>;
}
