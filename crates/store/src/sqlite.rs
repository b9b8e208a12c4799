//! The SQLite store: Cove's embedded default, one file beside the server, so a single
//! machine needs no database server to run.
//!
//! Times are INTEGER unix milliseconds and ids hyphenated uuid text (see the migrations).
//! What is read back is parsed, not trusted: a row that no longer parses is `Corrupt`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use cove_core::{
    ActualState, ApiToken, Name, Resources, Role, ShareLevel, TokenId, User, UserId, Workspace, WorkspaceId,
    WorkspaceSpec,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteExecutor};

use crate::{
    AuditEntry, DevcontainerApply, FrozenSecret, GitToken, Handoff, NewToken, NewUser, NewWorkspace, OidcIdentity,
    Quotas, Result, RunInterval, Sealed, SealedRef, Secret, SecretScope, Session, Store, StoreError, UserPatch,
    WorkspacePatch,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `last_used_at` is for a person deciding which tokens to revoke; a minute's precision
/// serves them and spares a write on every request.
const LAST_USED_PRECISION_MS: i64 = 60_000;

const QUOTA_WORKSPACES: &str = "quota.max_workspaces";
const QUOTA_RUNNING: &str = "quota.max_running";
const QUOTA_CPUS_MILLI: &str = "quota.max_cpus_milli";
const QUOTA_MEMORY_BYTES: &str = "quota.max_memory_bytes";

const USER_COLUMNS: &str = "u.id AS user_id, u.name AS user_name, u.role AS user_role, u.created_at AS user_created_at, u.disabled AS user_disabled";

const TOKEN_COLUMNS: &str = "t.id AS token_id, t.user_id, t.name AS token_name, t.scope AS token_scope, \
     t.created_at AS token_created_at, t.expires_at, t.last_used_at";

const WORKSPACE_SELECT: &str = "SELECT w.id, w.name, w.owner_id, u.name AS owner_name, \
     w.image, w.cpus_milli, w.memory_bytes, w.disk_bytes, w.idle_timeout_seconds, \
     w.desired, w.actual, w.message, w.generation, w.actual_generation, \
     w.created_at, w.updated_at, w.last_activity_at, w.last_activity_kind, w.repo_url, w.repo_branch, \
     w.container_config, w.devcontainer_applied, w.devcontainer_seen, w.devcontainer_path \
     FROM workspaces w JOIN users u ON u.id = w.owner_id";

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file if missing (not its directory),
    /// and brings the schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // Readers do not block the writer, and the reconciler reads all the time.
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL can only lose the last commits to a power cut, never corrupt.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Waits for queries in flight, then closes every connection (which checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn instance_id(&self) -> Result<String> {
        // Insert-or-ignore, then read: two servers starting at once agree on the first id.
        sqlx::query("INSERT OR IGNORE INTO settings (key, value) VALUES ('instance_id', ?)")
            .bind(uuid::Uuid::new_v4().simple().to_string())
            .execute(&self.pool)
            .await?;
        let id =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = 'instance_id'").fetch_one(&self.pool).await?;
        Ok(id)
    }

    async fn audit_record(&self, entry: AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor_id, actor_name, action, target, outcome, peer) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(entry.at.timestamp_millis())
        .bind(entry.actor_id.map(|id| id.to_string()))
        .bind(&entry.actor_name)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .bind(&entry.peer)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_list(&self, since: Option<DateTime<Utc>>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at, actor_id, actor_name, action, target, outcome, peer FROM audit_log \
             WHERE at >= ? ORDER BY id DESC LIMIT ?",
        )
        .bind(since.map_or(i64::MIN, |t| t.timestamp_millis()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut entries = rows
            .iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: time(row, "at")?,
                    actor_id: row
                        .try_get::<Option<String>, _>("actor_id")?
                        .map(|id| id.parse().map_err(|e| StoreError::Corrupt(format!("audit actor_id: {e}"))))
                        .transpose()?,
                    actor_name: row.try_get("actor_name")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    outcome: row.try_get("outcome")?,
                    peer: row.try_get("peer")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        entries.reverse();
        Ok(entries)
    }

    async fn quota_get(&self) -> Result<Quotas> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM settings WHERE key LIKE 'quota.%'").fetch_all(&self.pool).await?;
        let mut quotas = Quotas::default();
        for (key, value) in rows {
            let bad = || StoreError::Corrupt(format!("setting {key} = {value:?} is not a number"));
            match key.as_str() {
                QUOTA_WORKSPACES => quotas.max_workspaces = Some(value.parse().map_err(|_| bad())?),
                QUOTA_RUNNING => quotas.max_running = Some(value.parse().map_err(|_| bad())?),
                QUOTA_CPUS_MILLI => quotas.max_cpus_milli = Some(value.parse().map_err(|_| bad())?),
                QUOTA_MEMORY_BYTES => quotas.max_memory_bytes = Some(value.parse().map_err(|_| bad())?),
                _ => {}
            }
        }
        Ok(quotas)
    }

    async fn quota_set(&self, quotas: Quotas) -> Result<()> {
        let values = [
            (QUOTA_WORKSPACES, quotas.max_workspaces.map(u64::from)),
            (QUOTA_RUNNING, quotas.max_running.map(u64::from)),
            (QUOTA_CPUS_MILLI, quotas.max_cpus_milli.map(u64::from)),
            (QUOTA_MEMORY_BYTES, quotas.max_memory_bytes),
        ];
        let mut tx = self.pool.begin().await?;
        for (key, value) in values {
            match value {
                Some(v) => {
                    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                        .bind(key)
                        .bind(v.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    sqlx::query("DELETE FROM settings WHERE key = ?").bind(key).execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn setting_get(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = ?").bind(key).fetch_optional(&self.pool).await?)
    }

    async fn setting_set(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn run_list(&self, since: DateTime<Utc>) -> Result<Vec<RunInterval>> {
        let rows = sqlx::query(
            "SELECT workspace_id, workspace_name, owner_id, cpus_milli, memory_bytes, started_at, stopped_at \
             FROM workspace_runs WHERE stopped_at IS NULL OR stopped_at >= ? ORDER BY started_at, id",
        )
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RunInterval {
                    workspace: text(row, "workspace_id", str::parse)?,
                    workspace_name: row.try_get("workspace_name")?,
                    owner: text(row, "owner_id", str::parse)?,
                    resources: Resources {
                        cpus_milli: int(row, "cpus_milli")?,
                        memory_bytes: int(row, "memory_bytes")?,
                        disk_bytes: None,
                    },
                    started_at: time(row, "started_at")?,
                    stopped_at: optional_time(row, "stopped_at")?,
                })
            })
            .collect()
    }

    async fn user_list(&self) -> Result<Vec<User>> {
        let rows =
            sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users u ORDER BY u.name")).fetch_all(&self.pool).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn user_count(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?;
        // A count is never negative.
        Ok(count.unsigned_abs())
    }

    async fn user_create(&self, new: NewUser) -> Result<User> {
        let user =
            User { id: UserId::new_random(), name: new.name, role: new.role, created_at: now(), disabled: false };
        sqlx::query("INSERT INTO users (id, name, role, password_hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(user.id.to_string())
            .bind(user.name.as_str())
            .bind(user.role.as_str())
            .bind(&new.password_hash)
            .bind(user.created_at.timestamp_millis())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                insert_error(e, || format!("a user named {} already exists; choose another name", user.name))
            })?;
        Ok(user)
    }

    async fn user_get(&self, id: UserId) -> Result<User> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        user_from_row(&row)
    }

    async fn user_patch(&self, id: UserId, patch: UserPatch) -> Result<User> {
        let mut tx = self.pool.begin().await?;
        if let Some(disabled) = patch.disabled {
            sqlx::query("UPDATE users SET disabled = ? WHERE id = ?")
                .bind(i64::from(disabled))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(hash) = &patch.password_hash {
            sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
                .bind(hash)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let user = user_from_row(&row)?;
        tx.commit().await?;
        Ok(user)
    }

    async fn user_get_by_name_with_password(&self, name: &Name) -> Result<Option<(User, String)>> {
        let sql = format!("SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.name = ?");
        let Some(row) = sqlx::query(&sql).bind(name.as_str()).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?)))
    }

    async fn oidc_identity_user(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM oidc_identities i JOIN users u ON u.id = i.user_id \
             WHERE i.issuer = ? AND i.subject = ?"
        );
        let row = sqlx::query(&sql).bind(issuer).bind(subject).fetch_optional(&self.pool).await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn oidc_user_create(&self, new: NewUser, identity: OidcIdentity) -> Result<User> {
        let user =
            User { id: UserId::new_random(), name: new.name, role: new.role, created_at: now(), disabled: false };
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO users (id, name, role, password_hash, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(user.id.to_string())
            .bind(user.name.as_str())
            .bind(user.role.as_str())
            .bind(&new.password_hash)
            .bind(user.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("a user named {} already exists", user.name)))?;
        sqlx::query(
            "INSERT INTO oidc_identities (issuer, subject, user_id, email, created_at, last_login_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .bind(user.id.to_string())
        .bind(&identity.email)
        .bind(user.created_at.timestamp_millis())
        .bind(user.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            insert_error(e, || format!("the account {} of {} is linked already", identity.subject, identity.issuer))
        })?;
        tx.commit().await?;
        Ok(user)
    }

    async fn oidc_identity_login(&self, identity: OidcIdentity, role: Option<Role>) -> Result<User> {
        let mut tx = self.pool.begin().await?;
        let user_id: Option<String> = sqlx::query_scalar(
            "UPDATE oidc_identities SET email = ?, last_login_at = ? WHERE issuer = ? AND subject = ? RETURNING user_id",
        )
        .bind(&identity.email)
        .bind(now().timestamp_millis())
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .fetch_optional(&mut *tx)
        .await?;
        let user_id = user_id.ok_or(StoreError::NotFound)?;
        if let Some(role) = role {
            sqlx::query("UPDATE users SET role = ? WHERE id = ?")
                .bind(role.as_str())
                .bind(&user_id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?"))
            .bind(&user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let user = user_from_row(&row)?;
        tx.commit().await?;
        Ok(user)
    }

    async fn token_create(&self, new: NewToken) -> Result<ApiToken> {
        let token = ApiToken {
            id: TokenId::new_random(),
            user: new.user,
            name: new.name,
            scope: new.scope,
            created_at: now(),
            expires_at: new.expires_at.map(|t| t.trunc_subsecs(3)),
            last_used_at: None,
        };
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, scope, token_hash, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.id.to_string())
        .bind(token.user.to_string())
        .bind(&token.name)
        .bind(token.scope.as_str())
        .bind(&new.token_hash)
        .bind(token.created_at.timestamp_millis())
        .bind(token.expires_at.map(|t| t.timestamp_millis()))
        .execute(&self.pool)
        .await
        .map_err(|e| insert_error(e, || "this token is already registered; make a new one".into()))?;
        Ok(token)
    }

    async fn token_authenticate(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<(ApiToken, User)>> {
        let now_ms = now.timestamp_millis();
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {USER_COLUMNS} \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = ? AND (t.expires_at IS NULL OR t.expires_at > ?) AND u.disabled = 0"
        );
        let Some(row) = sqlx::query(&sql).bind(token_hash).bind(now_ms).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let mut token = token_from_row(&row)?;
        let user = user_from_row(&row)?;

        let stale_before = now_ms.saturating_sub(LAST_USED_PRECISION_MS);
        // Checked here first so that most requests take no write lock at all; the same
        // check in SQL keeps concurrent requests from moving the time backwards.
        if token.last_used_at.is_none_or(|t| t.timestamp_millis() < stale_before) {
            let written = sqlx::query(
                "UPDATE api_tokens SET last_used_at = ? \
                 WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            )
            .bind(now_ms)
            .bind(token.id.to_string())
            .bind(stale_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if written > 0 {
                token.last_used_at = Some(now.trunc_subsecs(3));
            }
        }
        Ok(Some((token, user)))
    }

    async fn token_expired(&self, token_hash: &str, now: DateTime<Utc>) -> Result<bool> {
        let found = sqlx::query("SELECT 1 FROM api_tokens WHERE token_hash = ? AND expires_at <= ?")
            .bind(token_hash)
            .bind(now.timestamp_millis())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn token_list_by_user(&self, user: UserId) -> Result<Vec<ApiToken>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t WHERE t.user_id = ? \
             ORDER BY t.created_at, t.id"
        );
        let rows = sqlx::query(&sql).bind(user.to_string()).fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn token_delete(&self, user: UserId, id: TokenId) -> Result<()> {
        found(
            sqlx::query("DELETE FROM api_tokens WHERE id = ? AND user_id = ?")
                .bind(id.to_string())
                .bind(user.to_string())
                .execute(&self.pool)
                .await?,
        )
    }

    async fn workspace_create(&self, new: NewWorkspace) -> Result<Workspace> {
        let id = WorkspaceId::new_random();
        let now = now().timestamp_millis();
        // One transaction, so the workspace returned is the one written.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workspaces (id, name, owner_id, image, cpus_milli, memory_bytes, \
             disk_bytes, idle_timeout_seconds, desired, actual, message, generation, \
             actual_generation, created_at, updated_at, repo_url, repo_branch, devcontainer_path) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, 0, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(new.name.as_str())
        .bind(new.owner.to_string())
        .bind(&new.image)
        .bind(i64::from(new.resources.cpus_milli))
        .bind(db_int(new.resources.memory_bytes))
        .bind(new.resources.disk_bytes.map(db_int))
        .bind(i64::from(new.idle_timeout_seconds))
        .bind(new.desired.as_str())
        .bind(ActualState::CreationRequested.as_str())
        .bind(now)
        .bind(now)
        .bind(new.source.as_ref().map(|s| s.url.clone()))
        .bind(new.source.as_ref().and_then(|s| s.branch.clone()))
        .bind(new.devcontainer_path.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            insert_error(e, || {
                format!("a workspace named {} already exists; choose another name or remove it first", new.name)
            })
        })?;
        if let Some(handoff) = &new.handoff {
            sqlx::query(
                "INSERT INTO handoffs (workspace_id, notify_url, message, state, attempts, next_attempt_at, created_at) \
                 VALUES (?, ?, ?, 'pending', 0, ?, ?)",
            )
            .bind(id.to_string())
            .bind(&handoff.notify_url)
            .bind(&handoff.message)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let workspace = workspace_fetch(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(workspace)
    }

    async fn workspace_get(&self, id: WorkspaceId) -> Result<Workspace> {
        workspace_fetch(&self.pool, id).await
    }

    async fn workspace_get_by_name(&self, owner: UserId, name: &Name) -> Result<Workspace> {
        let row = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE w.owner_id = ? AND w.name = ?"))
            .bind(owner.to_string())
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        workspace_from_row(&row)
    }

    async fn workspace_list_by_owner(&self, owner: UserId) -> Result<Vec<Workspace>> {
        let rows = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE w.owner_id = ? ORDER BY w.name"))
            .bind(owner.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn workspace_list_all(&self) -> Result<Vec<Workspace>> {
        let rows = sqlx::query(&format!("{WORKSPACE_SELECT} ORDER BY w.name, u.name")).fetch_all(&self.pool).await?;
        rows.iter().map(workspace_from_row).collect()
    }

    async fn workspace_patch(
        &self,
        id: WorkspaceId,
        patch: WorkspacePatch,
        expected_generation: Option<i64>,
    ) -> Result<Workspace> {
        let resources = patch.resources;
        // The UPDATE takes the write lock first thing, so the check of the generation and
        // the change are one step; the read after it returns exactly what was written.
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            // `disk_bytes` may be patched to NULL, so COALESCE cannot tell it from "keep".
            "UPDATE workspaces SET \
                 desired = COALESCE(?1, desired), \
                 cpus_milli = COALESCE(?2, cpus_milli), \
                 memory_bytes = COALESCE(?3, memory_bytes), \
                 disk_bytes = CASE WHEN ?4 THEN ?5 ELSE disk_bytes END, \
                 idle_timeout_seconds = COALESCE(?6, idle_timeout_seconds), \
                 generation = generation + 1, \
                 updated_at = ?7 \
             WHERE id = ?8 AND (?9 IS NULL OR generation = ?9)",
        )
        .bind(patch.desired.map(|d| d.as_str()))
        .bind(resources.map(|r| i64::from(r.cpus_milli)))
        .bind(resources.map(|r| db_int(r.memory_bytes)))
        .bind(resources.is_some())
        .bind(resources.and_then(|r| r.disk_bytes).map(db_int))
        .bind(patch.idle_timeout_seconds.map(i64::from))
        .bind(now().timestamp_millis())
        .bind(id.to_string())
        .bind(expected_generation)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM workspaces WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match name {
                None => StoreError::NotFound,
                Some(name) => {
                    StoreError::Conflict(format!("workspace {name} changed meanwhile; read it again and retry"))
                }
            });
        }
        let workspace = workspace_fetch(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(workspace)
    }

    async fn workspace_set_actual(
        &self,
        id: WorkspaceId,
        actual: ActualState,
        message: Option<&str>,
        actual_generation: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let written = sqlx::query(
            "UPDATE workspaces SET actual = ?1, message = ?2, actual_generation = ?3 \
             WHERE id = ?4 AND actual_generation < ?3",
        )
        .bind(actual.as_str())
        .bind(message)
        .bind(actual_generation)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written > 0 {
            let at = now().timestamp_millis();
            if actual == ActualState::Running {
                // Opens a run unless one is open (a repeated Running observation).
                sqlx::query(
                    "INSERT INTO workspace_runs (workspace_id, workspace_name, owner_id, cpus_milli, memory_bytes, started_at) \
                     SELECT id, name, owner_id, cpus_milli, memory_bytes, ?1 FROM workspaces w WHERE id = ?2 \
                     AND NOT EXISTS (SELECT 1 FROM workspace_runs r WHERE r.workspace_id = w.id AND r.stopped_at IS NULL)",
                )
                .bind(at)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            } else {
                close_runs(&mut *tx, id, at).await?;
            }
        }
        tx.commit().await?;
        Ok(written > 0)
    }

    async fn workspace_devcontainer_apply(&self, id: WorkspaceId, apply: DevcontainerApply) -> Result<Workspace> {
        let mut tx = self.pool.begin().await?;
        let config = (!apply.config.is_empty())
            .then(|| serde_json::to_string(&apply.config))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("container_config: {e}")))?;
        found(
            sqlx::query(
                "UPDATE workspaces SET image = ?1, cpus_milli = ?2, memory_bytes = ?3, disk_bytes = ?4, \
                 container_config = ?5, devcontainer_applied = ?6, devcontainer_seen = ?6, \
                 generation = generation + 1, updated_at = ?7 \
             WHERE id = ?8",
            )
            .bind(&apply.image)
            .bind(i64::from(apply.resources.cpus_milli))
            .bind(db_int(apply.resources.memory_bytes))
            .bind(apply.resources.disk_bytes.map(db_int))
            .bind(config)
            .bind(&apply.hash)
            .bind(now().timestamp_millis())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?,
        )?;
        let workspace = workspace_fetch(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(workspace)
    }

    async fn workspace_devcontainer_seen(&self, id: WorkspaceId, hash: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE workspaces SET devcontainer_seen = ? WHERE id = ?")
            .bind(hash)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn workspace_delete(&self, id: WorkspaceId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Its own secrets go with it (the frozen set and shares by cascade).
        sqlx::query("DELETE FROM secrets WHERE scope = 'workspace' AND owner = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        found(sqlx::query("DELETE FROM workspaces WHERE id = ?").bind(id.to_string()).execute(&mut *tx).await?)?;
        close_runs(&mut *tx, id, now().timestamp_millis()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn workspace_record_activity(&self, entries: &[(WorkspaceId, DateTime<Utc>, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (id, at, kind) in entries {
            sqlx::query(
                "UPDATE workspaces SET last_activity_at = ?1, last_activity_kind = ?2 \
                 WHERE id = ?3 AND (last_activity_at IS NULL OR last_activity_at < ?1)",
            )
            .bind(at.timestamp_millis())
            .bind(kind)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn app_share_get(&self, workspace: WorkspaceId, app: &str) -> Result<Option<ShareLevel>> {
        let share: Option<String> =
            sqlx::query_scalar("SELECT share FROM workspace_apps WHERE workspace_id = ? AND app = ?")
                .bind(workspace.to_string())
                .bind(app)
                .fetch_optional(&self.pool)
                .await?;
        share.map(|s| s.parse().map_err(StoreError::Corrupt)).transpose()
    }

    async fn app_share_list(&self, workspace: WorkspaceId) -> Result<Vec<(String, ShareLevel)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT app, share FROM workspace_apps WHERE workspace_id = ? ORDER BY app")
                .bind(workspace.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(|(app, share)| Ok((app, share.parse().map_err(StoreError::Corrupt)?))).collect()
    }

    async fn app_share_set(&self, workspace: WorkspaceId, app: &str, share: ShareLevel) -> Result<()> {
        let query = match share {
            ShareLevel::Owner => sqlx::query("DELETE FROM workspace_apps WHERE workspace_id = ?1 AND app = ?2"),
            _ => sqlx::query(
                "INSERT INTO workspace_apps (workspace_id, app, share) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (workspace_id, app) DO UPDATE SET share = excluded.share",
            ),
        };
        query
            .bind(workspace.to_string())
            .bind(app)
            .bind(share.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| insert_error(e, || format!("app {app} cannot be shared")))?;
        Ok(())
    }

    async fn handoff_get(&self, workspace: WorkspaceId) -> Result<Option<Handoff>> {
        let row = sqlx::query(&format!("{HANDOFF_SELECT} WHERE workspace_id = ?"))
            .bind(workspace.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::handoff_from_row).transpose()
    }

    async fn handoff_list_pending(&self) -> Result<Vec<Handoff>> {
        let rows = sqlx::query(&format!("{HANDOFF_SELECT} WHERE state = 'pending' ORDER BY created_at"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::handoff_from_row).collect()
    }

    async fn handoff_record_attempt(
        &self,
        workspace: WorkspaceId,
        outcome: std::result::Result<DateTime<Utc>, (String, Option<DateTime<Utc>>)>,
    ) -> Result<()> {
        let query = match &outcome {
            Ok(at) => sqlx::query(
                "UPDATE handoffs SET state = 'delivered', attempts = attempts + 1, delivered_at = ?1, last_error = NULL \
                 WHERE workspace_id = ?2",
            )
            .bind(at.timestamp_millis()),
            Err((error, Some(next))) => sqlx::query(
                "UPDATE handoffs SET attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2 WHERE workspace_id = ?3",
            )
            .bind(error)
            .bind(next.timestamp_millis()),
            Err((error, None)) => sqlx::query(
                "UPDATE handoffs SET state = 'failed', attempts = attempts + 1, last_error = ?1 WHERE workspace_id = ?2",
            )
            .bind(error),
        };
        query.bind(workspace.to_string()).execute(&self.pool).await?;
        Ok(())
    }

    async fn git_token_set(&self, token: GitToken) -> Result<GitToken> {
        let created_at = now();
        sqlx::query(
            "INSERT INTO git_tokens (user_id, host, username, nonce, ciphertext, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (user_id, host) DO UPDATE SET \
             username = excluded.username, nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             created_at = excluded.created_at",
        )
        .bind(token.user.to_string())
        .bind(&token.host)
        .bind(&token.username)
        .bind(&token.nonce)
        .bind(&token.ciphertext)
        .bind(created_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| insert_error(e, || format!("the Git token for {} cannot be stored", token.host)))?;
        Ok(GitToken { created_at, ..token })
    }

    async fn git_token_get(&self, user: UserId, host: &str) -> Result<Option<GitToken>> {
        let sql = format!("SELECT {GIT_TOKEN_COLUMNS} FROM git_tokens WHERE user_id = ? AND host = ?");
        let row = sqlx::query(&sql).bind(user.to_string()).bind(host).fetch_optional(&self.pool).await?;
        row.as_ref().map(git_token_from_row).transpose()
    }

    async fn git_token_list(&self, user: UserId) -> Result<Vec<GitToken>> {
        let sql = format!("SELECT {GIT_TOKEN_COLUMNS} FROM git_tokens WHERE user_id = ? ORDER BY host");
        let rows = sqlx::query(&sql).bind(user.to_string()).fetch_all(&self.pool).await?;
        rows.iter().map(git_token_from_row).collect()
    }

    async fn git_token_delete(&self, user: UserId, host: &str) -> Result<()> {
        found(
            sqlx::query("DELETE FROM git_tokens WHERE user_id = ? AND host = ?")
                .bind(user.to_string())
                .bind(host)
                .execute(&self.pool)
                .await?,
        )
    }

    async fn secret_set(&self, secret: Secret) -> Result<Secret> {
        let at = now();
        sqlx::query(
            "INSERT INTO secrets (scope, owner, name, kind, nonce, ciphertext, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (scope, owner, name) DO UPDATE SET \
             kind = excluded.kind, nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
             updated_at = excluded.updated_at",
        )
        .bind(secret.scope.as_str())
        .bind(secret.scope.owner())
        .bind(&secret.name)
        .bind(secret.kind.as_str())
        .bind(&secret.nonce)
        .bind(&secret.ciphertext)
        .bind(at.timestamp_millis())
        .execute(&self.pool)
        .await?;
        let row =
            sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE scope = ? AND owner = ? AND name = ?"))
                .bind(secret.scope.as_str())
                .bind(secret.scope.owner())
                .bind(&secret.name)
                .fetch_one(&self.pool)
                .await?;
        secret_from_row(&row)
    }

    async fn secret_list(&self, scope: SecretScope) -> Result<Vec<Secret>> {
        let rows =
            sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE scope = ? AND owner = ? ORDER BY name"))
                .bind(scope.as_str())
                .bind(scope.owner())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(secret_from_row).collect()
    }

    async fn secret_delete(&self, scope: SecretScope, name: &str) -> Result<()> {
        found(
            sqlx::query("DELETE FROM secrets WHERE scope = ? AND owner = ? AND name = ?")
                .bind(scope.as_str())
                .bind(scope.owner())
                .bind(name)
                .execute(&self.pool)
                .await?,
        )
    }

    async fn workspace_secret_freeze(&self, workspace: WorkspaceId, set: Vec<FrozenSecret>) -> Result<()> {
        let at = now().timestamp_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM workspace_secrets WHERE workspace_id = ?")
            .bind(workspace.to_string())
            .execute(&mut *tx)
            .await?;
        for s in &set {
            sqlx::query(
                "INSERT INTO workspace_secrets (workspace_id, name, kind, scope, nonce, ciphertext, frozen_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(workspace.to_string())
            .bind(&s.name)
            .bind(s.kind.as_str())
            .bind(&s.scope)
            .bind(&s.nonce)
            .bind(&s.ciphertext)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_error(e, || format!("secret {} is in the set twice", s.name)))?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn workspace_secret_list(&self, workspace: WorkspaceId) -> Result<Vec<FrozenSecret>> {
        let rows = sqlx::query(
            "SELECT workspace_id, name, kind, scope, nonce, ciphertext, frozen_at FROM workspace_secrets \
             WHERE workspace_id = ? ORDER BY name",
        )
        .bind(workspace.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(frozen_from_row).collect()
    }

    async fn key_check_get(&self) -> Result<Option<Sealed>> {
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(KEY_CHECK)
            .fetch_optional(&self.pool)
            .await?;
        value.map(|v| key_check_parse(&v)).transpose()
    }

    async fn key_check_set(&self, sealed: Sealed) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(KEY_CHECK)
        .bind(key_check_text(&sealed))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sealed_list_all(&self) -> Result<Vec<Sealed>> {
        let mut all = Vec::new();
        if let Some(check) = self.key_check_get().await? {
            all.push(check);
        }
        for row in sqlx::query("SELECT user_id, host, nonce, ciphertext FROM git_tokens").fetch_all(&self.pool).await? {
            all.push(Sealed {
                what: SealedRef::GitToken { user: text(&row, "user_id", str::parse)?, host: row.try_get("host")? },
                nonce: row.try_get("nonce")?,
                ciphertext: row.try_get("ciphertext")?,
            });
        }
        for row in sqlx::query(&format!("SELECT {SECRET_COLUMNS} FROM secrets")).fetch_all(&self.pool).await? {
            let s = secret_from_row(&row)?;
            all.push(Sealed {
                what: SealedRef::Secret { scope: s.scope, name: s.name, kind: s.kind },
                nonce: s.nonce,
                ciphertext: s.ciphertext,
            });
        }
        for row in
            sqlx::query("SELECT workspace_id, name, kind, scope, nonce, ciphertext, frozen_at FROM workspace_secrets")
                .fetch_all(&self.pool)
                .await?
        {
            let s = frozen_from_row(&row)?;
            all.push(Sealed {
                what: SealedRef::Frozen { workspace: s.workspace, name: s.name, kind: s.kind },
                nonce: s.nonce,
                ciphertext: s.ciphertext,
            });
        }
        Ok(all)
    }

    async fn sealed_replace_all(&self, rows: Vec<Sealed>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for row in &rows {
            let query = match &row.what {
                SealedRef::KeyCheck => {
                    sqlx::query("UPDATE settings SET value = ? WHERE key = ?").bind(key_check_text(row)).bind(KEY_CHECK)
                }
                SealedRef::GitToken { user, host } => {
                    sqlx::query("UPDATE git_tokens SET nonce = ?, ciphertext = ? WHERE user_id = ? AND host = ?")
                        .bind(&row.nonce)
                        .bind(&row.ciphertext)
                        .bind(user.to_string())
                        .bind(host)
                }
                SealedRef::Secret { scope, name, .. } => sqlx::query(
                    "UPDATE secrets SET nonce = ?, ciphertext = ? WHERE scope = ? AND owner = ? AND name = ?",
                )
                .bind(&row.nonce)
                .bind(&row.ciphertext)
                .bind(scope.as_str())
                .bind(scope.owner())
                .bind(name),
                SealedRef::Frozen { workspace, name, .. } => sqlx::query(
                    "UPDATE workspace_secrets SET nonce = ?, ciphertext = ? WHERE workspace_id = ? AND name = ?",
                )
                .bind(&row.nonce)
                .bind(&row.ciphertext)
                .bind(workspace.to_string())
                .bind(name),
            };
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn session_record(&self, token: TokenId, peer: Option<&str>, user_agent: Option<&str>) -> Result<()> {
        sqlx::query("INSERT INTO sessions (token_id, peer, user_agent) VALUES (?, ?, ?)")
            .bind(token.to_string())
            .bind(peer)
            .bind(user_agent)
            .execute(&self.pool)
            .await
            .map_err(|e| insert_error(e, || "this token is already a session".into()))?;
        Ok(())
    }

    async fn session_list_by_user(&self, user: UserId) -> Result<Vec<Session>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, s.peer, s.user_agent FROM api_tokens t JOIN sessions s ON s.token_id = t.id \
             WHERE t.user_id = ? AND (t.expires_at IS NULL OR t.expires_at > ?) ORDER BY t.created_at, t.id"
        );
        let rows =
            sqlx::query(&sql).bind(user.to_string()).bind(Utc::now().timestamp_millis()).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(Session {
                    token: token_from_row(row)?,
                    peer: row.try_get("peer")?,
                    user_agent: row.try_get("user_agent")?,
                })
            })
            .collect()
    }

    async fn workspace_share_add(&self, workspace: WorkspaceId, user: UserId) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO workspace_shares (workspace_id, user_id, created_at) VALUES (?, ?, ?)")
            .bind(workspace.to_string())
            .bind(user.to_string())
            .bind(now().timestamp_millis())
            .execute(&self.pool)
            .await
            .map_err(|e| insert_error(e, String::new))?;
        Ok(())
    }

    async fn workspace_share_remove(&self, workspace: WorkspaceId, user: UserId) -> Result<()> {
        found(
            sqlx::query("DELETE FROM workspace_shares WHERE workspace_id = ? AND user_id = ?")
                .bind(workspace.to_string())
                .bind(user.to_string())
                .execute(&self.pool)
                .await?,
        )
    }

    async fn workspace_share_list(&self, workspace: WorkspaceId) -> Result<Vec<(UserId, Name)>> {
        let rows = sqlx::query(
            "SELECT u.id, u.name FROM workspace_shares s JOIN users u ON u.id = s.user_id \
             WHERE s.workspace_id = ? ORDER BY u.name",
        )
        .bind(workspace.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((text(row, "id", str::parse)?, text(row, "name", Name::parse)?))).collect()
    }

    async fn workspace_list_shared_with(&self, user: UserId) -> Result<Vec<Workspace>> {
        let rows = sqlx::query(&format!(
            "{WORKSPACE_SELECT} JOIN workspace_shares s ON s.workspace_id = w.id WHERE s.user_id = ? ORDER BY w.name, u.name"
        ))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(workspace_from_row).collect()
    }
}

const KEY_CHECK: &str = "vault.key_check";

fn key_check_text(sealed: &Sealed) -> String {
    format!("{}:{}", hex_encode(&sealed.nonce), hex_encode(&sealed.ciphertext))
}

fn key_check_parse(value: &str) -> Result<Sealed> {
    let corrupt = || StoreError::Corrupt(format!("{KEY_CHECK} {value:?}"));
    let (nonce, ciphertext) = value.split_once(':').ok_or_else(corrupt)?;
    Ok(Sealed {
        what: SealedRef::KeyCheck,
        nonce: hex_decode(nonce).ok_or_else(corrupt)?,
        ciphertext: hex_decode(ciphertext).ok_or_else(corrupt)?,
    })
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

const SECRET_COLUMNS: &str = "scope, owner, name, kind, nonce, ciphertext, created_at, updated_at";

fn secret_from_row(row: &SqliteRow) -> Result<Secret> {
    let scope: String = row.try_get("scope")?;
    let owner: String = row.try_get("owner")?;
    let corrupt = || StoreError::Corrupt(format!("secret scope {scope:?} of {owner:?}"));
    let scope = match scope.as_str() {
        "instance" => SecretScope::Instance,
        "user" => SecretScope::User(owner.parse().map_err(|_| corrupt())?),
        "workspace" => SecretScope::Workspace(owner.parse().map_err(|_| corrupt())?),
        _ => return Err(corrupt()),
    };
    Ok(Secret {
        scope,
        name: row.try_get("name")?,
        kind: text(row, "kind", str::parse)?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("ciphertext")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn frozen_from_row(row: &SqliteRow) -> Result<FrozenSecret> {
    Ok(FrozenSecret {
        workspace: text(row, "workspace_id", str::parse)?,
        name: row.try_get("name")?,
        kind: text(row, "kind", str::parse)?,
        scope: row.try_get("scope")?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("ciphertext")?,
        frozen_at: time(row, "frozen_at")?,
    })
}

const HANDOFF_SELECT: &str = "SELECT workspace_id, notify_url, message, state, attempts, next_attempt_at, \
     last_error, delivered_at FROM handoffs";

impl SqliteStore {
    fn handoff_from_row(row: &SqliteRow) -> Result<Handoff> {
        Ok(Handoff {
            workspace: text(row, "workspace_id", str::parse)?,
            notify_url: row.try_get("notify_url")?,
            message: row.try_get("message")?,
            state: row.try_get("state")?,
            attempts: int(row, "attempts")?,
            next_attempt_at: time(row, "next_attempt_at")?,
            last_error: row.try_get("last_error")?,
            delivered_at: optional_time(row, "delivered_at")?,
        })
    }
}

const GIT_TOKEN_COLUMNS: &str = "user_id, host, username, nonce, ciphertext, created_at";

fn git_token_from_row(row: &SqliteRow) -> Result<GitToken> {
    Ok(GitToken {
        user: text(row, "user_id", str::parse)?,
        host: row.try_get("host")?,
        username: row.try_get("username")?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("ciphertext")?,
        created_at: time(row, "created_at")?,
    })
}

/// The current time at the precision it is stored with, so that what a write returns
/// equals what a later read gives.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// Sizes are `u64` but SQLite integers are `i64`. Sizes that large cannot come from
/// `Resources::new`; should one slip through, -1 makes a CHECK constraint refuse the
/// write rather than store a wrapped number.
fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(-1)
}

/// Turns the constraint errors of an insert into the errors callers act on.
fn insert_error(e: sqlx::Error, conflict: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(conflict()),
        // Every reference an insert makes is to a user: the owner is gone or never was.
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => e.into(),
    }
}

/// Ends a workspace's open run, if any, at `at` (unix ms).
async fn close_runs<'c>(db: impl SqliteExecutor<'c>, id: WorkspaceId, at: i64) -> Result<()> {
    sqlx::query(
        "UPDATE workspace_runs SET stopped_at = MAX(started_at, ?1) WHERE workspace_id = ?2 AND stopped_at IS NULL",
    )
    .bind(at)
    .bind(id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

async fn workspace_fetch<'c>(db: impl SqliteExecutor<'c>, id: WorkspaceId) -> Result<Workspace> {
    let row = sqlx::query(&format!("{WORKSPACE_SELECT} WHERE w.id = ?"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .ok_or(StoreError::NotFound)?;
    workspace_from_row(&row)
}

fn user_from_row(row: &SqliteRow) -> Result<User> {
    Ok(User {
        id: text(row, "user_id", str::parse)?,
        name: text(row, "user_name", Name::parse)?,
        role: text(row, "user_role", str::parse)?,
        created_at: time(row, "user_created_at")?,
        disabled: row.try_get::<i64, _>("user_disabled")? != 0,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<ApiToken> {
    Ok(ApiToken {
        id: text(row, "token_id", str::parse)?,
        user: text(row, "user_id", str::parse)?,
        name: row.try_get("token_name")?,
        scope: text(row, "token_scope", str::parse)?,
        created_at: time(row, "token_created_at")?,
        expires_at: optional_time(row, "expires_at")?,
        last_used_at: optional_time(row, "last_used_at")?,
    })
}

fn workspace_from_row(row: &SqliteRow) -> Result<Workspace> {
    Ok(Workspace {
        id: text(row, "id", str::parse)?,
        name: text(row, "name", Name::parse)?,
        owner: text(row, "owner_id", str::parse)?,
        owner_name: text(row, "owner_name", Name::parse)?,
        spec: WorkspaceSpec {
            image: row.try_get("image")?,
            resources: Resources {
                cpus_milli: int(row, "cpus_milli")?,
                memory_bytes: int(row, "memory_bytes")?,
                disk_bytes: optional_int(row, "disk_bytes")?,
            },
            config: match row.try_get::<Option<String>, _>("container_config")? {
                Some(json) => serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("container_config {json:?}: {e}")))?,
                None => cove_core::ContainerConfig::default(),
            },
        },
        idle_timeout_seconds: int(row, "idle_timeout_seconds")?,
        desired: text(row, "desired", str::parse)?,
        actual: text(row, "actual", str::parse)?,
        message: row.try_get("message")?,
        generation: row.try_get("generation")?,
        actual_generation: row.try_get("actual_generation")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        last_activity_at: optional_time(row, "last_activity_at")?,
        last_activity_kind: row.try_get("last_activity_kind")?,
        source: match row.try_get::<Option<String>, _>("repo_url")? {
            Some(url) => Some(cove_core::RepoSource { url, branch: row.try_get("repo_branch")? }),
            None => None,
        },
        devcontainer: cove_core::DevcontainerHashes {
            applied: row.try_get("devcontainer_applied")?,
            seen: row.try_get("devcontainer_seen")?,
        },
        devcontainer_path: row.try_get("devcontainer_path")?,
    })
}

/// `NotFound` when a write changed no row: the thing it names is not there.
fn found(done: sqlx::sqlite::SqliteQueryResult) -> Result<()> {
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

fn text<T, E: fmt::Display>(row: &SqliteRow, column: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<T> {
    let value: String = row.try_get(column)?;
    parse(&value).map_err(|e| StoreError::Corrupt(format!("{column} {value:?}: {e}")))
}

fn int<T: TryFrom<i64>>(row: &SqliteRow, column: &str) -> Result<T> {
    int_value(column, row.try_get(column)?)
}

fn optional_int<T: TryFrom<i64>>(row: &SqliteRow, column: &str) -> Result<Option<T>> {
    let value: Option<i64> = row.try_get(column)?;
    value.map(|v| int_value(column, v)).transpose()
}

fn int_value<T: TryFrom<i64>>(column: &str, value: i64) -> Result<T> {
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} {value} is out of range")))
}

fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
    time_value(column, row.try_get(column)?)
}

fn optional_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    let value: Option<i64> = row.try_get(column)?;
    value.map(|ms| time_value(column, ms)).transpose()
}

fn time_value(column: &str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("{column} {ms} is not a time")))
}
