//! The reconcile loop against the in-memory backend and a real SQLite file: convergence,
//! drift repair, restarts, retries with backoff, engine outages and termination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_core::{ActualState, ContainerState, DesiredState, Name, Resources, Role, User, Workspace, WorkspaceId};
use cove_reconciler::{Config, Handle};
use cove_runtime::fake::{FakeBackend, FakeCall, FakeOp};
use cove_store::{NewUser, NewWorkspace, SqliteStore, Store, WorkspacePatch};

fn call(op: FakeOp, id: WorkspaceId) -> FakeCall {
    FakeCall { op, workspace: Some(id) }
}

const IMAGE: &str = "cove/test:1";

struct World {
    store: Arc<SqliteStore>,
    fake: Arc<FakeBackend>,
    reconciler: Handle,
    owner: User,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("cove.db")).await.unwrap());
    let owner = store
        .user_create(NewUser { name: Name::parse("alice").unwrap(), role: Role::Member, password_hash: "x".into() })
        .await
        .unwrap();
    let fake = Arc::new(FakeBackend::new());
    fake.add_image(IMAGE);
    let config = Config {
        interval: Duration::from_millis(50),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    };
    let reconciler = cove_reconciler::spawn(store.clone(), fake.clone(), config);
    World { store, fake, reconciler, owner, _dir: dir }
}

impl World {
    async fn create(&self, name: &str, desired: DesiredState) -> Workspace {
        let ws = self
            .store
            .workspace_create(NewWorkspace {
                name: Name::parse(name).unwrap(),
                owner: self.owner.id,
                image: IMAGE.into(),
                resources: Resources::default(),
                idle_timeout_seconds: 30,
                desired,
                source: None,
                handoff: None,
                devcontainer_path: None,
            })
            .await
            .unwrap();
        self.reconciler.poke();
        ws
    }

    async fn want(&self, id: WorkspaceId, desired: DesiredState) {
        let patch = WorkspacePatch { desired: Some(desired), ..Default::default() };
        self.store.workspace_patch(id, patch, None).await.unwrap();
        self.reconciler.poke();
    }

    async fn wait(&self, id: WorkspaceId, what: &str, pred: impl Fn(&Workspace) -> bool) -> Workspace {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ws = self.store.workspace_get(id).await.unwrap();
            if pred(&ws) {
                return ws;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last seen {ws:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_state(&self, id: WorkspaceId, desired: DesiredState, actual: ActualState) -> Workspace {
        self.wait(id, &format!("{desired}/{actual}"), |w| w.desired == desired && w.actual == actual).await
    }

    fn container(&self, id: WorkspaceId) -> Option<ContainerState> {
        self.fake.containers().get(&id).map(|c| c.state)
    }
}

#[tokio::test]
async fn create_stop_start_converge() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    assert_eq!(ws.actual, ActualState::CreationRequested);
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    assert_eq!(w.container(ws.id), Some(ContainerState::Running));
    assert!(w.fake.volumes().contains_key(&ws.id));

    w.want(ws.id, DesiredState::Stopped).await;
    w.wait_state(ws.id, DesiredState::Stopped, ActualState::Stopped).await;
    assert!(matches!(w.container(ws.id), Some(ContainerState::Exited { .. })));

    w.want(ws.id, DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
}

#[tokio::test]
async fn created_stopped_makes_nothing_run() {
    let w = world().await;
    let ws = w.create("later", DesiredState::Stopped).await;
    w.wait_state(ws.id, DesiredState::Stopped, ActualState::Stopped).await;
    assert_ne!(w.container(ws.id), Some(ContainerState::Running));
}

#[tokio::test]
async fn restart_stops_then_runs_and_clears_the_request() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    let calls_before = w.fake.calls().len();
    w.want(ws.id, DesiredState::RestartRequested).await;
    let after = w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    assert!(after.generation > ws.generation);
    let calls = w.fake.calls()[calls_before..].to_vec();
    let stop = calls.iter().position(|c| *c == call(FakeOp::Stop, ws.id)).expect("a stop");
    let start = calls.iter().position(|c| *c == call(FakeOp::Start, ws.id)).expect("a start");
    assert!(stop < start, "stop must come before start: {calls:?}");
}

#[tokio::test]
async fn a_container_removed_by_hand_is_recreated_on_the_same_volume() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    w.fake.remove_container_by_hand(ws.id);
    w.reconciler.poke();
    w.wait(ws.id, "a new container", |_| w.container(ws.id) == Some(ContainerState::Running)).await;
    let volume_ops: Vec<_> =
        w.fake.calls().into_iter().filter(|c| matches!(c.op, FakeOp::CreateVolume | FakeOp::RemoveVolume)).collect();
    assert_eq!(volume_ops, vec![call(FakeOp::CreateVolume, ws.id)], "the volume must be kept");
}

#[tokio::test]
async fn a_container_started_by_hand_while_stopped_is_stopped() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    w.want(ws.id, DesiredState::Stopped).await;
    w.wait_state(ws.id, DesiredState::Stopped, ActualState::Stopped).await;
    w.fake.start_by_hand(ws.id);
    w.wait(ws.id, "the container stopped again", |_| matches!(w.container(ws.id), Some(ContainerState::Exited { .. })))
        .await;
    w.wait_state(ws.id, DesiredState::Stopped, ActualState::Stopped).await;
}

#[tokio::test]
async fn a_crashed_container_is_marked_failed_and_started_again() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    let starts = |w: &World| w.fake.calls().iter().filter(|c| **c == call(FakeOp::Start, ws.id)).count();
    let before = starts(&w);
    w.fake.exit_by_hand(ws.id, 137);
    w.reconciler.poke();
    w.wait(ws.id, "a restart after the crash", |_| starts(&w) > before).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
}

#[tokio::test]
async fn a_failing_step_is_recorded_and_retried() {
    let w = world().await;
    w.fake.fail_next(FakeOp::CreateContainer, 2);
    let ws = w.create("api", DesiredState::Running).await;
    let failed = w.wait(ws.id, "the failure to be recorded", |w| w.actual == ActualState::Failed).await;
    assert_eq!(failed.message.as_deref(), Some("step 'create container' failed: injected failure"));
    let ok = w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    assert_eq!(ok.message, None);
    let attempts = w.fake.calls().iter().filter(|c| **c == call(FakeOp::CreateContainer, ws.id)).count();
    assert_eq!(attempts, 3, "two injected failures, then success");
}

#[tokio::test]
async fn a_missing_image_fails_with_a_clear_message() {
    let w = world().await;
    let ws = w
        .store
        .workspace_create(NewWorkspace {
            name: Name::parse("noimg").unwrap(),
            owner: w.owner.id,
            image: "nowhere/none:1".into(),
            resources: Resources::default(),
            idle_timeout_seconds: 30,
            desired: DesiredState::Running,
            source: None,
            handoff: None,
            devcontainer_path: None,
        })
        .await
        .unwrap();
    w.reconciler.poke();
    let failed = w.wait(ws.id, "Failed", |w| w.actual == ActualState::Failed).await;
    let message = failed.message.unwrap();
    assert!(message.starts_with("step 'create container' failed: image \"nowhere/none:1\" not found"), "{message}");
}

#[tokio::test]
async fn an_engine_outage_is_reported_and_then_repaired() {
    let w = world().await;
    w.fake.set_unreachable(true);
    let ws = w.create("api", DesiredState::Running).await;
    let unknown = w.wait(ws.id, "Unknown", |w| w.actual == ActualState::Unknown).await;
    assert!(unknown.message.unwrap().contains("not reachable"));
    assert!(w.fake.containers().is_empty());
    w.fake.set_unreachable(false);
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
}

#[tokio::test]
async fn termination_removes_everything_then_the_record() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    w.want(ws.id, DesiredState::Terminated).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.store.workspace_get(ws.id).await.is_ok() {
        assert!(Instant::now() < deadline, "the record was never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.fake.containers().is_empty());
    assert!(w.fake.volumes().is_empty());
}

#[tokio::test]
async fn termination_of_a_workspace_never_created_just_forgets_it() {
    let w = world().await;
    w.fake.set_unreachable(true);
    let ws = w.create("ghost", DesiredState::Running).await;
    w.want(ws.id, DesiredState::Terminated).await;
    w.fake.set_unreachable(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.store.workspace_get(ws.id).await.is_ok() {
        assert!(Instant::now() < deadline, "the record was never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.fake.containers().is_empty() && w.fake.volumes().is_empty());
}

#[tokio::test]
async fn a_spec_change_replaces_the_container_and_keeps_the_volume() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    let bigger = Resources { memory_bytes: 4 << 30, ..Resources::default() };
    let patch = WorkspacePatch { resources: Some(bigger), ..Default::default() };
    let changed = w.store.workspace_patch(ws.id, patch, None).await.unwrap();
    w.reconciler.poke();
    w.wait(ws.id, "a container with the new spec", |_| {
        w.fake
            .containers()
            .get(&ws.id)
            .is_some_and(|c| c.spec.spec_hash == changed.spec.hash() && c.state == ContainerState::Running)
    })
    .await;
    assert!(!w.fake.calls().contains(&call(FakeOp::RemoveVolume, ws.id)));
}

#[tokio::test]
async fn an_orphaned_container_of_this_instance_is_removed() {
    let w = world().await;
    let ws = w.create("api", DesiredState::Running).await;
    w.wait_state(ws.id, DesiredState::Running, ActualState::Running).await;
    // The record disappears behind Cove's back (a restored database, a hand edit).
    w.store.workspace_delete(ws.id).await.unwrap();
    w.reconciler.poke();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(w.fake.containers().is_empty() && w.fake.volumes().is_empty()) {
        assert!(Instant::now() < deadline, "the orphan was never removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn many_workspaces_converge_together() {
    let w = world().await;
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(w.create(&format!("ws{i}"), DesiredState::Running).await.id);
    }
    for id in ids {
        w.wait_state(id, DesiredState::Running, ActualState::Running).await;
    }
    let status = w.reconciler.status();
    assert!(status.passes > 0 && status.last_error.is_none());
}
