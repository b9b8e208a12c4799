//! Activity and the idle stop.
//!
//! The proxy and the API report what users do (requests, WebSocket traffic, execs) to an
//! in-memory table; a flush loop writes it to the store in one transaction every few
//! seconds, so a busy workspace costs one write per flush, not one per request. The idle
//! loop stops (desired = Stopped) every running workspace whose last activity — or last
//! change of desire, such as the wake that started it — is older than its idle timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cove_core::{ActualState, DesiredState, Workspace, WorkspaceId};
use cove_proxy::Metrics;
use cove_reconciler::Handle;
use cove_store::{Store, WorkspacePatch};

#[derive(Default)]
pub struct Activity {
    pending: Mutex<HashMap<WorkspaceId, (DateTime<Utc>, &'static str)>>,
}

impl Activity {
    pub fn record(&self, id: WorkspaceId, kind: &'static str) {
        self.lock().insert(id, (Utc::now(), kind));
    }

    /// Activity not yet written to the store.
    pub fn pending(&self, id: WorkspaceId) -> Option<(DateTime<Utc>, &'static str)> {
        self.lock().get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkspaceId, (DateTime<Utc>, &'static str)>> {
        // Plain data: a panic elsewhere cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn flush(&self, store: &dyn Store) {
        let drained: Vec<_> = self.lock().drain().collect();
        if drained.is_empty() {
            return;
        }
        let batch: Vec<_> = drained.iter().map(|(id, (at, kind))| (*id, *at, kind.to_string())).collect();
        if let Err(e) = store.workspace_record_activity(&batch).await {
            tracing::warn!(error = %e, "could not record activity; keeping it for the next flush");
            let mut pending = self.lock();
            for (id, seen) in drained {
                // Activity recorded meanwhile is newer: it wins.
                pending.entry(id).or_insert(seen);
            }
        }
    }
}

/// When a running workspace will be stopped for idleness, if ever.
pub fn idle_stop_at(ws: &Workspace, pending: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    if ws.idle_timeout_seconds == 0 || ws.desired != DesiredState::Running {
        return None;
    }
    let last = [Some(ws.updated_at), ws.last_activity_at, pending].into_iter().flatten().max()?;
    Some(last + chrono::Duration::seconds(i64::from(ws.idle_timeout_seconds)))
}

pub struct IdleConfig {
    pub flush_interval: Duration,
    pub check_interval: Duration,
    /// Only one process may stop idle workspaces: the server, not a standalone proxy.
    pub stop_idle: bool,
}

/// Runs the flush and idle loops until the runtime shuts down.
pub fn spawn(
    store: Arc<dyn Store>,
    activity: Arc<Activity>,
    reconciler: Handle,
    metrics: Arc<Metrics>,
    routes: Arc<crate::gate::RouteCache>,
    config: IdleConfig,
) {
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(config.flush_interval);
        let mut check = tokio::time::interval(config.check_interval);
        loop {
            tokio::select! {
                _ = flush.tick() => activity.flush(store.as_ref()).await,
                _ = check.tick(), if config.stop_idle => {
                    activity.flush(store.as_ref()).await;
                    if stop_idle(store.as_ref(), &reconciler, &metrics, Utc::now()).await {
                        routes.invalidate();
                    }
                }
            }
        }
    });
}

/// Returns whether it stopped any.
async fn stop_idle(store: &dyn Store, reconciler: &Handle, metrics: &Metrics, now: DateTime<Utc>) -> bool {
    let workspaces = match store.workspace_list_all().await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "idle check could not read the store");
            return false;
        }
    };
    let mut stopped = false;
    for ws in workspaces {
        if ws.actual != ActualState::Running {
            continue;
        }
        let Some(at) = idle_stop_at(&ws, None) else { continue };
        if at > now {
            continue;
        }
        // Guarded by the generation read above: a wake or a user's change since wins.
        let patch = WorkspacePatch { desired: Some(DesiredState::Stopped), ..Default::default() };
        match store.workspace_patch(ws.id, patch, Some(ws.generation)).await {
            Ok(_) => {
                tracing::info!(workspace = %ws.name, owner = %ws.owner_name, idle_timeout_seconds = ws.idle_timeout_seconds, "stopping idle workspace");
                metrics.record_idle_stop(&format!("{}/{}", ws.owner_name, ws.name));
                reconciler.poke();
                stopped = true;
            }
            Err(e) => tracing::debug!(workspace = %ws.name, error = %e, "idle stop superseded"),
        }
    }
    stopped
}
