//! The reconcile loop: makes what runs match what is wanted.
//!
//! Level-triggered: every pass reads the whole world — containers and volumes from the
//! backend (by label), desired states from the store — and asks the pure
//! [`cove_core::plan`] what to do for each workspace. Passes run on a timer and whenever
//! [`Handle::poke`] is called (after every API change). A workspace never has two action
//! lists running at once; a failing one is retried with exponential backoff. Observed
//! states are written with an increasing `actual_generation`, so a stale write loses.
//!
//! Nothing here depends on being the only process that ever ran: a server killed mid-create
//! comes back, sees a half-made workspace, and the next plan finishes it.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cove_core::{plan, Action, ActualState, DesiredState, Observed, Plan, Workspace, WorkspaceId};
use cove_runtime::{Backend, BackendError, ContainerSpec};
use cove_store::{Store, StoreError, WorkspacePatch};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct Config {
    /// Time between passes when nothing pokes the loop.
    pub interval: Duration,
    /// First retry delay after a failure; doubles up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What the last pass saw, for `GET /api/v1/status` and for tests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassStatus {
    pub passes: u64,
    pub last_pass_at: Option<DateTime<Utc>>,
    /// Why the last pass could not observe the runtime, if it could not.
    pub last_error: Option<String>,
    pub workspaces: usize,
    pub in_flight: usize,
}

/// The running loop's handle: poke it after a change, read its status.
#[derive(Clone)]
pub struct Handle {
    poke: Arc<Notify>,
    status: watch::Receiver<PassStatus>,
    changes: watch::Receiver<u64>,
}

impl Handle {
    /// A handle to no loop, for a process that only writes wishes to the store (the
    /// standalone proxy): the server's own loop picks them up on its next timed pass.
    pub fn detached() -> Self {
        let (_, status) = watch::channel(PassStatus::default());
        let (_, changes) = watch::channel(0);
        Self { poke: Arc::new(Notify::new()), status, changes }
    }

    /// Ticks on every observed state the loop writes, so caches of workspace state in the
    /// same process can drop what they hold.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Asks for a pass soon. Pokes arriving during a pass coalesce into one more pass.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    pub fn status(&self) -> PassStatus {
        self.status.borrow().clone()
    }
}

/// Starts the loop on the current tokio runtime. It runs until the runtime shuts down.
pub fn spawn(store: Arc<dyn Store>, backend: Arc<dyn Backend>, config: Config) -> Handle {
    let poke = Arc::new(Notify::new());
    let (status_tx, status) = watch::channel(PassStatus::default());
    let (changes_tx, changes) = watch::channel(0u64);
    let reconciler = Arc::new(Reconciler {
        store,
        backend,
        config,
        poke: poke.clone(),
        book: Mutex::new(Book::default()),
        status: status_tx,
        changes: changes_tx,
    });
    tokio::spawn(reconciler.run());
    Handle { poke, status, changes }
}

struct Reconciler {
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    config: Config,
    poke: Arc<Notify>,
    book: Mutex<Book>,
    status: watch::Sender<PassStatus>,
    changes: watch::Sender<u64>,
}

/// Per-workspace bookkeeping that lives only as long as the process: a restart forgets
/// backoffs, which is what an operator restarting the server wants anyway.
#[derive(Default)]
struct Book {
    in_flight: HashSet<WorkspaceId>,
    /// When each workspace's last action list ended. A pass whose observation is older
    /// saw the world before those actions landed and must not plan from it.
    finished: HashMap<WorkspaceId, Instant>,
    backoff: HashMap<WorkspaceId, Backoff>,
}

impl Book {
    /// Whether a workspace must be left alone by a pass that observed at `observed_at`.
    fn is_busy(&self, id: WorkspaceId, observed_at: Instant) -> bool {
        self.in_flight.contains(&id) || self.finished.get(&id).is_some_and(|t| *t >= observed_at)
    }

    fn done(&mut self, id: WorkspaceId) {
        self.in_flight.remove(&id);
        self.finished.insert(id, Instant::now());
    }
}

struct Backoff {
    failures: u32,
    not_before: Instant,
}

impl Reconciler {
    async fn run(self: Arc<Self>) {
        loop {
            self.clone().pass().await;
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = self.poke.notified() => {}
            }
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding this lock would be a bug in this file; the data (sets of
        // ids) stays consistent, so carrying on with it is safe.
        self.book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn pass(self: Arc<Self>) {
        let observed_at = Instant::now();
        let observed = self.backend.observe().await;
        // The store is read after the runtime: any container seen above was made from a
        // record that existed before it, so a container without a record is an orphan.
        let workspaces = match self.store.workspace_list_all().await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "reconcile pass could not read the store");
                self.report(0, Some(format!("store unavailable: {e}")));
                return;
            }
        };
        let count = workspaces.len();
        let mut observed = match observed {
            Ok(o) => o,
            Err(e) => {
                let message = e.to_string();
                for ws in &workspaces {
                    self.record_if_changed(ws, ActualState::Unknown, Some(&message)).await;
                }
                self.report(count, Some(message));
                return;
            }
        };

        // Entries older than this observation can no longer make a pass skip anything.
        self.book().finished.retain(|_, t| *t >= observed_at);
        for ws in workspaces {
            let seen = observed.remove(&ws.id).unwrap_or_default();
            self.clone().reconcile_one(ws, seen, observed_at).await;
        }
        for (orphan, seen) in observed {
            self.clone().remove_orphan(orphan, seen, observed_at);
        }
        self.report(count, None);
    }

    fn report(&self, workspaces: usize, last_error: Option<String>) {
        let in_flight = self.book().in_flight.len();
        self.status.send_modify(|s| {
            s.passes += 1;
            s.last_pass_at = Some(Utc::now());
            s.last_error = last_error;
            s.workspaces = workspaces;
            s.in_flight = in_flight;
        });
    }

    async fn reconcile_one(self: Arc<Self>, ws: Workspace, seen: Observed, observed_at: Instant) {
        let plan = plan(ws.desired, &ws.spec.hash(), &seen, ws.actual);
        {
            let mut book = self.book();
            if book.is_busy(ws.id, observed_at) {
                return;
            }
            if plan.actions.is_empty() {
                if plan.now == ActualState::Running {
                    book.backoff.remove(&ws.id);
                }
            } else {
                if book.backoff.get(&ws.id).is_some_and(|b| b.not_before > Instant::now()) {
                    return;
                }
                if plan.is_failure() {
                    self.note_failure(&mut book, ws.id);
                }
                book.in_flight.insert(ws.id);
            }
        }
        if plan.actions.is_empty() {
            self.record_if_changed(&ws, plan.now, plan.message.as_deref()).await;
            return;
        }
        tokio::spawn(async move {
            let id = ws.id;
            self.execute(ws, plan).await;
            self.book().done(id);
            self.poke.notify_one();
        });
    }

    fn note_failure(&self, book: &mut Book, id: WorkspaceId) {
        let failures = book.backoff.get(&id).map_or(0, |b| b.failures) + 1;
        let delay = self.config.backoff_base.saturating_mul(1 << (failures - 1).min(16)).min(self.config.backoff_max);
        book.backoff.insert(id, Backoff { failures, not_before: Instant::now() + delay });
    }

    /// Performs a plan's actions in order, recording the state before, after, or at the
    /// step that failed.
    async fn execute(&self, ws: Workspace, plan: Plan) {
        let mut generation = ws.actual_generation;
        generation += 1;
        self.record(&ws, plan.now, plan.message.as_deref(), generation).await;

        let spec = container_spec(&ws);
        for action in plan.actions {
            match self.perform(&ws, &spec, action).await {
                Ok(()) => {}
                Err(Failure::Superseded) => return,
                Err(Failure::Failed { state, message }) => {
                    let message = format!("step '{}' failed: {message}", action.step());
                    tracing::warn!(workspace = %ws.name, owner = %ws.owner_name, "{message}");
                    self.note_failure(&mut self.book(), ws.id);
                    generation += 1;
                    self.record(&ws, state, Some(&message), generation).await;
                    return;
                }
            }
        }
        if plan.then != ActualState::Terminated {
            generation += 1;
            self.record(&ws, plan.then, None, generation).await;
        }
    }

    async fn perform(&self, ws: &Workspace, spec: &ContainerSpec, action: Action) -> Result<(), Failure> {
        let b = &self.backend;
        let result = match action {
            Action::CreateVolume => b.create_volume(spec).await,
            Action::CreateContainer => b.create_container(spec).await,
            Action::StartContainer => b.start_container(ws.id).await,
            Action::UnpauseContainer => b.unpause_container(ws.id).await,
            Action::StopContainer => b.stop_container(ws.id).await,
            Action::RemoveContainer => b.remove_container(ws.id).await,
            Action::RemoveVolume => b.remove_volume(ws.id).await,
            Action::MarkRestarted => return self.mark_restarted(ws).await,
            Action::Forget => {
                return match self.store.workspace_delete(ws.id).await {
                    Ok(()) | Err(StoreError::NotFound) => {
                        self.changes.send_modify(|n| *n = n.wrapping_add(1));
                        Ok(())
                    }
                    Err(e) => Err(Failure::store(e)),
                };
            }
        };
        result.map_err(Failure::backend)
    }

    /// The stop has been seen to finish; the restart becomes a plain wish to run. Guarded by
    /// the generation the plan was made from, so a newer wish of the user is never overwritten.
    async fn mark_restarted(&self, ws: &Workspace) -> Result<(), Failure> {
        let patch = WorkspacePatch { desired: Some(DesiredState::Running), ..Default::default() };
        match self.store.workspace_patch(ws.id, patch, Some(ws.generation)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict(_) | StoreError::NotFound) => Err(Failure::Superseded),
            Err(e) => Err(Failure::store(e)),
        }
    }

    async fn record(&self, ws: &Workspace, state: ActualState, message: Option<&str>, generation: i64) {
        match self.store.workspace_set_actual(ws.id, state, message, generation).await {
            Ok(_) => self.changes.send_modify(|n| *n = n.wrapping_add(1)),
            Err(e) => tracing::error!(workspace = %ws.name, error = %e, "could not record the observed state"),
        }
    }

    async fn record_if_changed(&self, ws: &Workspace, state: ActualState, message: Option<&str>) {
        if ws.actual != state || ws.message.as_deref() != message {
            self.record(ws, state, message, ws.actual_generation + 1).await;
        }
    }

    /// A container or volume of this instance whose record is gone (the database was
    /// replaced or edited by hand): remove it, as the finalizer would have.
    fn remove_orphan(self: Arc<Self>, id: WorkspaceId, seen: Observed, observed_at: Instant) {
        {
            let mut book = self.book();
            if book.is_busy(id, observed_at) {
                return;
            }
            book.in_flight.insert(id);
        }
        tokio::spawn(async move {
            tracing::info!(workspace_id = %id, "removing the container and volume of a workspace with no record");
            if seen.container.is_some() {
                if let Err(e) = self.backend.remove_container(id).await {
                    tracing::warn!(workspace_id = %id, error = %e, "could not remove an orphaned container");
                }
            }
            if seen.volume {
                if let Err(e) = self.backend.remove_volume(id).await {
                    tracing::warn!(workspace_id = %id, error = %e, "could not remove an orphaned volume");
                }
            }
            self.book().done(id);
        });
    }
}

enum Failure {
    /// The user changed the workspace meanwhile; the next pass plans again from the new wish.
    Superseded,
    Failed {
        state: ActualState,
        message: String,
    },
}

impl Failure {
    fn backend(e: BackendError) -> Self {
        // Unreachable means Cove could not act; anything else is the workspace failing.
        let state = match e {
            BackendError::Unreachable { .. } => ActualState::Error,
            _ => ActualState::Failed,
        };
        Failure::Failed { state, message: e.to_string() }
    }

    fn store(e: StoreError) -> Self {
        Failure::Failed { state: ActualState::Error, message: format!("store: {e}") }
    }
}

pub fn container_spec(ws: &Workspace) -> ContainerSpec {
    ContainerSpec {
        workspace: ws.id,
        name: ws.name.clone(),
        owner: ws.owner_name.clone(),
        image: ws.spec.image.clone(),
        resources: ws.spec.resources,
        spec_hash: ws.spec.hash(),
        config: ws.spec.config.clone(),
    }
}
