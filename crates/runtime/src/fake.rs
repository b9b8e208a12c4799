//! An in-memory backend for fast tests of the reconciler and the API. It follows the
//! Docker backend's contract (idempotent creates and removes, `NoContainer`/`NotRunning`,
//! a volume in use cannot be removed) and adds what a real engine cannot easily do on
//! cue: injected failures, an unreachable engine, and a human changing things by hand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use cove_core::{ContainerState, Observed, ObservedContainer, WorkspaceId};
use futures::StreamExt;

use crate::{
    Backend, BackendError, ContainerSpec, EngineInfo, ExecEvent, ExecRequest, ExecStream, LogOptions, LogStream, Result,
};

/// The operations of the `Backend` trait, for failure injection and the call log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FakeOp {
    Ping,
    Observe,
    CreateVolume,
    CreateContainer,
    Start,
    Unpause,
    Stop,
    Remove,
    RemoveVolume,
    Exec,
    Logs,
    Address,
}

/// One call made to the fake, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeCall {
    pub op: FakeOp,
    /// `None` for `ping` and `observe`.
    pub workspace: Option<WorkspaceId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeContainer {
    pub spec: ContainerSpec,
    pub state: ContainerState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeVolume {
    pub spec: ContainerSpec,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<WorkspaceId, FakeContainer>,
    volumes: BTreeMap<WorkspaceId, FakeVolume>,
    images: BTreeSet<String>,
    failures: HashMap<FakeOp, usize>,
    unreachable: bool,
    calls: Vec<FakeCall>,
    /// Archives put into workspaces: (workspace, destination, tar bytes).
    archives: Vec<(WorkspaceId, String, Vec<u8>)>,
}

/// The endpoint named in the fake's `Unreachable` errors.
pub const FAKE_ENDPOINT: &str = "fake://engine";

#[derive(Default)]
pub struct FakeBackend {
    state: Mutex<State>,
}

impl FakeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that knows the given images.
    pub fn with_images<'a>(images: impl IntoIterator<Item = &'a str>) -> Self {
        let fake = Self::new();
        for image in images {
            fake.add_image(image);
        }
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; the state it
        // left is still the best picture there is for the assertions that follow.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn add_image(&self, name: &str) {
        self.lock().images.insert(name.to_string());
    }

    /// Archives put into workspaces so far: (workspace, destination, tar bytes).
    pub fn archives(&self) -> Vec<(WorkspaceId, String, Vec<u8>)> {
        self.lock().archives.clone()
    }

    pub fn containers(&self) -> BTreeMap<WorkspaceId, FakeContainer> {
        self.lock().containers.clone()
    }

    pub fn volumes(&self) -> BTreeMap<WorkspaceId, FakeVolume> {
        self.lock().volumes.clone()
    }

    /// Every call so far, including failed ones, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The operations done to one workspace, in order: what a reconciler test asserts.
    pub fn calls_for(&self, id: WorkspaceId) -> Vec<FakeOp> {
        self.lock().calls.iter().filter(|c| c.workspace == Some(id)).map(|c| c.op).collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The next `times` calls of `op` fail with `BackendError::Engine("injected failure")`.
    pub fn fail_next(&self, op: FakeOp, times: usize) {
        self.lock().failures.insert(op, times);
    }

    /// While set, every call fails with `BackendError::Unreachable`.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// Like `podman rm -f` by a person: the volume stays.
    pub fn remove_container_by_hand(&self, id: WorkspaceId) {
        self.lock().containers.remove(&id);
    }

    /// Like `podman volume rm` by a person (who first removed the container).
    pub fn remove_volume_by_hand(&self, id: WorkspaceId) {
        self.lock().volumes.remove(&id);
    }

    pub fn start_by_hand(&self, id: WorkspaceId) {
        self.set_state_by_hand(id, ContainerState::Running);
    }

    /// The main process ended (a crash, an OOM kill, `podman stop`).
    pub fn exit_by_hand(&self, id: WorkspaceId, code: i64) {
        self.set_state_by_hand(id, ContainerState::Exited { code });
    }

    pub fn pause_by_hand(&self, id: WorkspaceId) {
        self.set_state_by_hand(id, ContainerState::Paused);
    }

    fn set_state_by_hand(&self, id: WorkspaceId, state: ContainerState) {
        if let Some(c) = self.lock().containers.get_mut(&id) {
            c.state = state;
        }
    }

    /// Logs the call and decides whether it fails before doing anything.
    fn enter(&self, op: FakeOp, workspace: Option<WorkspaceId>) -> Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        state.calls.push(FakeCall { op, workspace });
        if state.unreachable {
            return Err(BackendError::Unreachable {
                endpoint: FAKE_ENDPOINT.into(),
                message: "the fake engine is set unreachable".into(),
            });
        }
        if let Some(left) = state.failures.get_mut(&op) {
            if *left > 0 {
                *left -= 1;
                return Err(BackendError::Engine("injected failure".into()));
            }
        }
        Ok(state)
    }
}

fn container_mut(state: &mut State, id: WorkspaceId) -> Result<&mut FakeContainer> {
    state.containers.get_mut(&id).ok_or(BackendError::NoContainer)
}

#[async_trait]
impl Backend for FakeBackend {
    async fn ping(&self) -> Result<EngineInfo> {
        drop(self.enter(FakeOp::Ping, None)?);
        Ok(EngineInfo { kind: "fake".into(), version: "0".into(), endpoint: FAKE_ENDPOINT.into() })
    }

    async fn observe(&self) -> Result<HashMap<WorkspaceId, Observed>> {
        let state = self.enter(FakeOp::Observe, None)?;
        let mut world: HashMap<WorkspaceId, Observed> = HashMap::new();
        for (id, c) in &state.containers {
            world.entry(*id).or_default().container =
                Some(ObservedContainer { state: c.state, spec_hash: Some(c.spec.spec_hash.clone()) });
        }
        for id in state.volumes.keys() {
            world.entry(*id).or_default().volume = true;
        }
        Ok(world)
    }

    async fn create_volume(&self, spec: &ContainerSpec) -> Result<()> {
        let mut state = self.enter(FakeOp::CreateVolume, Some(spec.workspace))?;
        state.volumes.entry(spec.workspace).or_insert_with(|| FakeVolume { spec: spec.clone() });
        Ok(())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        let mut state = self.enter(FakeOp::CreateContainer, Some(spec.workspace))?;
        if !state.images.contains(&spec.image) {
            return Err(BackendError::ImageNotFound(spec.image.clone()));
        }
        // As the Docker backend: the labelled volume is made if missing, and a leftover
        // container of the same workspace is replaced.
        state.volumes.entry(spec.workspace).or_insert_with(|| FakeVolume { spec: spec.clone() });
        state.containers.insert(spec.workspace, FakeContainer { spec: spec.clone(), state: ContainerState::Created });
        Ok(())
    }

    async fn start_container(&self, id: WorkspaceId) -> Result<()> {
        let mut state = self.enter(FakeOp::Start, Some(id))?;
        let c = container_mut(&mut state, id)?;
        match c.state {
            ContainerState::Paused => {
                return Err(BackendError::Engine("cannot start a paused container; unpause it".into()))
            }
            ContainerState::Removing | ContainerState::Dead => {
                return Err(BackendError::Engine("cannot start a dead or removing container".into()))
            }
            _ => c.state = ContainerState::Running,
        }
        Ok(())
    }

    async fn unpause_container(&self, id: WorkspaceId) -> Result<()> {
        let mut state = self.enter(FakeOp::Unpause, Some(id))?;
        let c = container_mut(&mut state, id)?;
        if c.state == ContainerState::Paused {
            c.state = ContainerState::Running;
        }
        Ok(())
    }

    async fn stop_container(&self, id: WorkspaceId) -> Result<()> {
        let mut state = self.enter(FakeOp::Stop, Some(id))?;
        let c = container_mut(&mut state, id)?;
        // The idle process exits 0 on SIGTERM, as the real container's does.
        if matches!(c.state, ContainerState::Running | ContainerState::Restarting | ContainerState::Paused) {
            c.state = ContainerState::Exited { code: 0 };
        }
        Ok(())
    }

    async fn remove_container(&self, id: WorkspaceId) -> Result<()> {
        let mut state = self.enter(FakeOp::Remove, Some(id))?;
        state.containers.remove(&id);
        Ok(())
    }

    async fn remove_volume(&self, id: WorkspaceId) -> Result<()> {
        let mut state = self.enter(FakeOp::RemoveVolume, Some(id))?;
        if state.containers.contains_key(&id) && state.volumes.contains_key(&id) {
            return Err(BackendError::Engine("remove volume: volume is in use by the workspace's container".into()));
        }
        state.volumes.remove(&id);
        Ok(())
    }

    /// Echoes the command line on stdout and exits 0.
    async fn exec(&self, id: WorkspaceId, request: ExecRequest) -> Result<ExecStream> {
        let mut state = self.enter(FakeOp::Exec, Some(id))?;
        let c = container_mut(&mut state, id)?;
        if c.state != ContainerState::Running {
            return Err(BackendError::NotRunning);
        }
        let line = format!("{}\n", request.cmd.join(" "));
        let events = vec![Ok(ExecEvent::Stdout(Bytes::from(line))), Ok(ExecEvent::Exit(0))];
        Ok(futures::stream::iter(events).boxed())
    }

    async fn put_archive(&self, spec: &ContainerSpec, dest: &str, archive: &std::path::Path) -> Result<()> {
        let bytes = std::fs::read(archive).map_err(|e| BackendError::Engine(format!("read archive: {e}")))?;
        self.lock().archives.push((spec.workspace, dest.to_string(), bytes));
        Ok(())
    }

    /// The fake has no files: every path is missing.
    async fn get_archive(
        &self,
        _spec: &ContainerSpec,
        _path: &str,
        _into: &std::path::Path,
        _max: u64,
    ) -> Result<bool> {
        Ok(false)
    }

    /// Every image exists, as with `create_container`.
    async fn image_exists(&self, _image: &str) -> Result<bool> {
        Ok(true)
    }

    async fn build_image(
        &self,
        build: &crate::ImageBuild,
        progress: &mut (dyn for<'p> FnMut(&'p str) + Send),
    ) -> Result<()> {
        progress(&format!("fake build of {}", build.tag));
        Ok(())
    }

    /// Loopback while running, so tests can point the proxy at a server of their own.
    async fn address(&self, id: WorkspaceId) -> Result<Option<std::net::IpAddr>> {
        let mut state = self.enter(FakeOp::Address, Some(id))?;
        let c = container_mut(&mut state, id)?;
        Ok((c.state == ContainerState::Running).then_some(std::net::IpAddr::from([127, 0, 0, 1])))
    }

    /// One line naming the container's state; `follow` is ignored.
    async fn logs(&self, id: WorkspaceId, _options: LogOptions) -> Result<LogStream> {
        let mut state = self.enter(FakeOp::Logs, Some(id))?;
        let c = container_mut(&mut state, id)?;
        let line = format!("fake container {} is {:?}\n", c.spec.name, c.state);
        Ok(futures::stream::iter(vec![Ok(Bytes::from(line))]).boxed())
    }
}

#[cfg(test)]
mod tests {
    use cove_core::{Name, Resources};
    use futures::TryStreamExt;

    use super::*;

    fn spec(image: &str) -> ContainerSpec {
        let name = |s: &str| Name::parse(s).unwrap_or_else(|e| panic!("{e}"));
        ContainerSpec {
            workspace: WorkspaceId::new_random(),
            name: name("api"),
            owner: name("alice"),
            image: image.into(),
            resources: Resources::default(),
            spec_hash: "h1".into(),
            config: Default::default(),
        }
    }

    #[tokio::test]
    async fn lifecycle_follows_the_contract() -> Result<()> {
        let fake = FakeBackend::with_images(["img"]);
        let s = spec("img");
        let id = s.workspace;
        fake.create_volume(&s).await?;
        fake.create_volume(&s).await?;
        fake.create_container(&s).await?;
        assert!(matches!(fake.exec(id, ExecRequest::default()).await, Err(BackendError::NotRunning)));
        fake.start_container(id).await?;
        fake.start_container(id).await?;
        let observed = fake.observe().await?;
        assert_eq!(
            observed.get(&id),
            Some(&Observed {
                container: Some(ObservedContainer { state: ContainerState::Running, spec_hash: Some("h1".into()) }),
                volume: true,
            })
        );
        let request = ExecRequest { cmd: vec!["echo".into(), "hi".into()], ..Default::default() };
        let events: Vec<ExecEvent> = fake.exec(id, request).await?.try_collect().await?;
        assert_eq!(events, vec![ExecEvent::Stdout(Bytes::from("echo hi\n")), ExecEvent::Exit(0)]);
        assert!(matches!(fake.remove_volume(id).await, Err(BackendError::Engine(_))));
        fake.stop_container(id).await?;
        fake.stop_container(id).await?;
        assert_eq!(fake.containers()[&id].state, ContainerState::Exited { code: 0 });
        fake.remove_container(id).await?;
        fake.remove_container(id).await?;
        fake.remove_volume(id).await?;
        fake.remove_volume(id).await?;
        assert!(fake.observe().await?.is_empty());
        assert!(matches!(fake.start_container(id).await, Err(BackendError::NoContainer)));
        use FakeOp::*;
        assert_eq!(
            fake.calls_for(id),
            [
                CreateVolume,
                CreateVolume,
                CreateContainer,
                Exec,
                Start,
                Start,
                Exec,
                RemoveVolume,
                Stop,
                Stop,
                Remove,
                Remove,
                RemoveVolume,
                RemoveVolume,
                Start
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn failures_and_drift() -> Result<()> {
        let fake = FakeBackend::with_images(["img"]);
        let s = spec("img");
        let id = s.workspace;
        assert!(
            matches!(fake.create_container(&spec("other")).await, Err(BackendError::ImageNotFound(i)) if i == "other")
        );

        fake.fail_next(FakeOp::CreateContainer, 2);
        for _ in 0..2 {
            assert!(matches!(fake.create_container(&s).await, Err(BackendError::Engine(m)) if m == "injected failure"));
        }
        fake.create_container(&s).await?;

        fake.set_unreachable(true);
        assert!(matches!(fake.observe().await, Err(BackendError::Unreachable { .. })));
        assert!(matches!(fake.start_container(id).await, Err(BackendError::Unreachable { .. })));
        fake.set_unreachable(false);

        fake.start_by_hand(id);
        fake.exit_by_hand(id, 137);
        assert_eq!(
            fake.observe().await?[&id].container.as_ref().map(|c| c.state),
            Some(ContainerState::Exited { code: 137 })
        );
        fake.remove_container_by_hand(id);
        let observed = fake.observe().await?;
        assert_eq!(observed[&id], Observed { container: None, volume: true });
        Ok(())
    }
}
