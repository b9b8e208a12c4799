//! The workspace operations behind the API: validate, authorize, write the wish to the
//! store, poke the reconciler. Handlers call these; nothing here knows HTTP.

use cove_core::workspace::validate_image;
use cove_core::{
    parse_size, DesiredState, Name, RepoSource, Resources, Role, User, Workspace, WorkspaceId,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
};
use cove_runtime::BackendError;
use cove_store::{NewWorkspace, StoreError, WorkspacePatch};

use crate::error::ApiError;
use crate::views::{CreateWorkspace, PatchWorkspace, Size};
use crate::AppState;

/// A week: a longer idle timeout is "never" in all but name.
pub const MAX_IDLE_TIMEOUT_SECONDS: u32 = 7 * 24 * 60 * 60;

/// Finds a workspace by the caller's name for it, or by id. Another user's workspace is
/// "not found" (not "forbidden") unless the caller is an admin: ids must not leak.
pub async fn resolve(state: &AppState, caller: &User, key: &str) -> Result<Workspace, ApiError> {
    let not_found = || ApiError::NotFound(format!("workspace {key} not found; list yours with `cove ls`"));
    let found = if let Ok(id) = key.parse::<WorkspaceId>() {
        state.store.workspace_get(id).await
    } else {
        let name = Name::parse(key).map_err(|_| not_found())?;
        state.store.workspace_get_by_name(caller.id, &name).await
    };
    match found {
        Ok(ws) if ws.owner == caller.id || caller.role == Role::Admin => Ok(ws),
        Ok(_) | Err(StoreError::NotFound) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

pub async fn create(state: &AppState, caller: &User, req: CreateWorkspace) -> Result<Workspace, ApiError> {
    let name = Name::parse(&req.name).map_err(|e| ApiError::InvalidRequest(format!("invalid workspace name: {e}")))?;
    let image = req.image.unwrap_or_else(|| state.config.default_image.clone());
    validate_image(&image).map_err(ApiError::InvalidRequest)?;
    let defaults = Resources::default();
    let resources = resources(
        req.cpus.unwrap_or(defaults.cpus()),
        req.memory.map_or(Ok(defaults.memory_bytes), size)?,
        req.disk.map(size).transpose()?,
    )?;
    let idle_timeout_seconds = idle_timeout(req.idle_timeout_seconds.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECONDS))?;
    let desired = if req.start.unwrap_or(true) { DesiredState::Running } else { DesiredState::Stopped };
    let source = match req.repo.as_deref() {
        Some(url) => Some(RepoSource::parse(url, req.branch.as_deref()).map_err(ApiError::InvalidRequest)?),
        None if req.branch.is_some() => {
            return Err(ApiError::InvalidRequest("branch needs a repo to check it out from".into()))
        }
        None => None,
    };
    let handoff = req.handoff.as_ref().map(|h| crate::handoff::parse(&h.notify, h.message.as_deref())).transpose()?;
    if let Some(path) = &req.devcontainer_path {
        cove_core::workspace::check_devcontainer_path(path).map_err(ApiError::InvalidRequest)?;
    }
    // Held until the workspace is written: a concurrent create waits, then counts it.
    let _permit = crate::quotas::check_create(state, caller.id, &resources, desired).await?;
    let new = NewWorkspace {
        name,
        owner: caller.id,
        image,
        resources,
        idle_timeout_seconds,
        desired,
        source,
        handoff,
        devcontainer_path: req.devcontainer_path,
    };
    let ws = state.store.workspace_create(new).await?;
    // Before the reconciler hears of it: its agent's first start gets the frozen set.
    if let Err(e) = crate::secrets::freeze(state.store.as_ref(), &state.config.data_dir, &ws).await {
        tracing::error!(workspace = %ws.name, owner = %ws.owner_name, error = %e, "step 'freeze secrets' failed");
        let _ = state.store.workspace_delete(ws.id).await;
        return Err(e);
    }
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "workspace created");
    state.routes.invalidate();
    state.reconciler.poke();
    Ok(ws)
}

pub async fn patch(state: &AppState, ws: Workspace, req: PatchWorkspace) -> Result<Workspace, ApiError> {
    if ws.desired == DesiredState::Terminated {
        return Err(ApiError::Conflict(format!("workspace {} is being deleted", ws.name)));
    }
    if req.desired_state == Some(DesiredState::Terminated) {
        return Err(ApiError::InvalidRequest(
            "desired_state Terminated is set by deleting the workspace (DELETE, or `cove rm`)".into(),
        ));
    }
    let resources_changed = req.cpus.is_some() || req.memory.is_some() || req.disk.is_some();
    let resources = if resources_changed {
        let current = ws.spec.resources;
        Some(resources(
            req.cpus.unwrap_or(current.cpus()),
            req.memory.map_or(Ok(current.memory_bytes), size)?,
            match req.disk {
                Some(d) => Some(size(d)?),
                None => current.disk_bytes,
            },
        )?)
    } else {
        None
    };
    let idle_timeout_seconds = req.idle_timeout_seconds.map(idle_timeout).transpose()?;
    if req.desired_state.is_none() && resources.is_none() && idle_timeout_seconds.is_none() {
        return Err(ApiError::InvalidRequest(
            "nothing to change; give desired_state, cpus, memory, disk or idle_timeout_seconds".into(),
        ));
    }
    let permit = crate::quotas::check_patch(state, &ws, resources.as_ref(), req.desired_state).await?;
    let patch = WorkspacePatch { desired: req.desired_state, resources, idle_timeout_seconds };
    let ws = state.store.workspace_patch(ws.id, patch, None).await?;
    drop(permit);
    state.routes.invalidate();
    state.reconciler.poke();
    Ok(ws)
}

pub async fn delete(state: &AppState, ws: Workspace) -> Result<Workspace, ApiError> {
    if ws.desired == DesiredState::Terminated {
        return Ok(ws);
    }
    let patch = WorkspacePatch { desired: Some(DesiredState::Terminated), ..Default::default() };
    let ws = state.store.workspace_patch(ws.id, patch, None).await?;
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "workspace deletion requested");
    state.routes.invalidate();
    state.reconciler.poke();
    Ok(ws)
}

/// The API's view of a workspace, with what only the server knows: its app address and
/// when the idle stop will come.
pub fn view(state: &AppState, ws: &Workspace) -> crate::views::WorkspaceView {
    let mut v = crate::views::WorkspaceView::from(ws);
    v.app_url = state.config.app_url("{app}", ws.name.as_str(), ws.owner_name.as_str());
    if ws.actual == cove_core::ActualState::Running {
        let pending = state.activity.pending(ws.id);
        v.idle_stop_at = crate::activity::idle_stop_at(ws, pending.map(|(at, _)| at));
        if let Some((at, kind)) = pending {
            v.last_activity_at = Some(at);
            v.last_activity_kind = Some(kind.to_string());
        }
        v.agent = state.agents.status(ws.id);
    }
    if let Some(build) = state.builds.status(ws.id) {
        v.devcontainer
            .get_or_insert_with(|| crate::views::DevcontainerView {
                applied: None,
                build: None,
                ports: Default::default(),
            })
            .build = Some(build);
    }
    v
}

/// Checks an app name from a URL: a port number or a name like a workspace's.
pub fn app_name(app: &str) -> Result<String, ApiError> {
    if let Ok(port) = app.parse::<u16>() {
        if port > 0 {
            return Ok(port.to_string());
        }
    }
    Name::parse(app).map(|n| n.to_string()).map_err(|_| {
        ApiError::InvalidRequest(format!("app {app:?} must be a port (1-65535) or a name like code or term"))
    })
}

fn resources(cpus: f64, memory: u64, disk: Option<u64>) -> Result<Resources, ApiError> {
    Resources::new(cpus, memory, disk).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

fn size(s: Size) -> Result<u64, ApiError> {
    match s {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => parse_size(&t).map_err(|e| ApiError::InvalidRequest(e.to_string())),
    }
}

fn idle_timeout(seconds: u32) -> Result<u32, ApiError> {
    if seconds > MAX_IDLE_TIMEOUT_SECONDS {
        return Err(ApiError::InvalidRequest(format!(
            "idle_timeout_seconds must be at most {MAX_IDLE_TIMEOUT_SECONDS} (a week); use 0 for never"
        )));
    }
    Ok(seconds)
}

/// Engine failures seen while serving a request on a workspace (exec, logs).
pub fn backend_error(ws: &Workspace, e: BackendError) -> ApiError {
    match e {
        BackendError::NotRunning | BackendError::NoContainer => ApiError::Conflict(format!(
            "workspace {} is not running (state {}); start it with `cove start {}`",
            ws.name, ws.actual, ws.name
        )),
        BackendError::Unreachable { .. } => ApiError::Unavailable(e.to_string()),
        other => ApiError::Unavailable(format!("container engine: {other}")),
    }
}
