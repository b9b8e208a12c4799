//! The admin's limits on what each user may have: checked whenever a request would add a
//! workspace, make one bigger, or want one more running (create, patch, the proxy's wake).
//!
//! The checks count what the store wants (desired state), not what runs: a workspace asked
//! to run counts from that moment, so two quick requests cannot both slip under the limit
//! once the first is written. (Two truly concurrent creates may still both pass; the next
//! request then sees the excess.)

use cove_core::{format_size, DesiredState, Resources, UserId, Workspace, WorkspaceId};
use cove_store::Quotas;

use crate::error::ApiError;
use crate::AppState;

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
pub async fn check_running(state: &AppState, owner: UserId, except: Option<WorkspaceId>) -> Result<(), ApiError> {
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
) -> Result<(), ApiError> {
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
        check_running(state, owner, None).await?;
    }
    Ok(())
}

/// A change to `ws`: its new resources, and whether it would start running.
pub async fn check_patch(
    state: &AppState,
    ws: &Workspace,
    resources: Option<&Resources>,
    desired: Option<DesiredState>,
) -> Result<(), ApiError> {
    if let Some(resources) = resources {
        check_resources(&state.store.quota_get().await?, resources)?;
    }
    if desired.is_some_and(wants_running) && !wants_running(ws.desired) {
        check_running(state, ws.owner, Some(ws.id)).await?;
    }
    Ok(())
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
