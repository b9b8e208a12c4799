//! The admin's limits on what each user may have: checked whenever a request would add a
//! workspace, make one bigger, or want one more running (create, patch, the proxy's wake).
//!
//! The checks count what the store wants (desired state), not what runs: a workspace asked
//! to run counts from that moment. Each check takes its user's lock and hands it back as a
//! [`Permit`] that the caller holds until it has written the workspace it checked: two
//! concurrent creates or starts by one user run one after the other, so both cannot pass.
//! (One server process writes workspaces, so an in-process lock is enough.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cove_core::{format_size, DesiredState, Resources, UserId, Workspace, WorkspaceId};
use cove_store::Quotas;

use crate::error::ApiError;
use crate::AppState;

/// A lock per user, taken by quota checks only (never by proxied requests on the fast path).
#[derive(Default)]
pub struct Locks(Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>);

/// A passed quota check: hold it until the change it allowed is written.
#[must_use = "hold the permit until the workspace is written, or the quota check can race"]
pub struct Permit(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

async fn lock(state: &AppState, owner: UserId) -> Permit {
    let lock = state.quota_locks.0.lock().unwrap_or_else(|p| p.into_inner()).entry(owner).or_default().clone();
    Permit(lock.lock_owned().await)
}

fn wants_running(d: DesiredState) -> bool {
    matches!(d, DesiredState::Running | DesiredState::RestartRequested)
}

/// The owner's workspaces that count: all but those being deleted, and but `except`.
async fn counted(state: &AppState, owner: UserId, except: Option<WorkspaceId>) -> Result<Vec<Workspace>, ApiError> {
    let list = state.store.workspace_list_by_owner(owner).await?;
    Ok(list.into_iter().filter(|w| w.desired != DesiredState::Terminated && Some(w.id) != except).collect())
}

/// Refuses resources above the per-workspace limits.
pub fn check_resources(quotas: &Quotas, resources: &Resources) -> Result<(), ApiError> {
    if let Some(max) = quotas.max_cpus_milli.filter(|max| resources.cpus_milli > *max) {
        return Err(ApiError::Forbidden(format!(
            "{} CPUs is more than the quota of {} CPUs per workspace; ask for fewer",
            resources.cpus(),
            f64::from(max) / 1000.0
        )));
    }
    if let Some(max) = quotas.max_memory_bytes.filter(|max| resources.memory_bytes > *max) {
        return Err(ApiError::Forbidden(format!(
            "{} of memory is more than the quota of {} per workspace; ask for less",
            format_size(resources.memory_bytes),
            format_size(max)
        )));
    }
    Ok(())
}

/// Refuses one more running workspace for `owner` when they are at the limit. `except`
/// is the workspace being started (it does not count against itself).
pub async fn check_running(state: &AppState, owner: UserId, except: Option<WorkspaceId>) -> Result<Permit, ApiError> {
    let permit = lock(state, owner).await;
    running_fits(state, owner, except).await?;
    Ok(permit)
}

async fn running_fits(state: &AppState, owner: UserId, except: Option<WorkspaceId>) -> Result<(), ApiError> {
    let Some(max) = state.store.quota_get().await?.max_running else {
        return Ok(());
    };
    let running = counted(state, owner, except).await?.iter().filter(|w| wants_running(w.desired)).count();
    if running >= max as usize {
        return Err(ApiError::Conflict(format!(
            "you have {running} of {max} running workspaces (the admin's quota); stop one first with `cove stop NAME`"
        )));
    }
    Ok(())
}

/// Everything a new workspace must fit in.
pub async fn check_create(
    state: &AppState,
    owner: UserId,
    resources: &Resources,
    desired: DesiredState,
) -> Result<Permit, ApiError> {
    let permit = lock(state, owner).await;
    let quotas = state.store.quota_get().await?;
    check_resources(&quotas, resources)?;
    if let Some(max) = quotas.max_workspaces {
        let have = counted(state, owner, None).await?.len();
        if have >= max as usize {
            return Err(ApiError::Conflict(format!(
                "you have {have} of {max} workspaces (the admin's quota); delete one first with `cove rm NAME`"
            )));
        }
    }
    if wants_running(desired) {
        running_fits(state, owner, None).await?;
    }
    Ok(permit)
}

/// A change to `ws`: its new resources, and whether it would start running.
pub async fn check_patch(
    state: &AppState,
    ws: &Workspace,
    resources: Option<&Resources>,
    desired: Option<DesiredState>,
) -> Result<Permit, ApiError> {
    let permit = lock(state, ws.owner).await;
    if let Some(resources) = resources {
        check_resources(&state.store.quota_get().await?, resources)?;
    }
    if desired.is_some_and(wants_running) && !wants_running(ws.desired) {
        running_fits(state, ws.owner, Some(ws.id)).await?;
    }
    Ok(permit)
}

/// For the API: quotas as people write them (CPUs, bytes).
pub fn view(q: &Quotas) -> serde_json::Value {
    serde_json::json!({
        "max_workspaces": q.max_workspaces,
        "max_running": q.max_running,
        "max_cpus": q.max_cpus_milli.map(|m| f64::from(m) / 1000.0),
        "max_memory_bytes": q.max_memory_bytes,
    })
}
