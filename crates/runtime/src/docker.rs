//! The Docker Engine API backend. Docker Engine and Podman's compatible socket both answer
//! this API, so one code path serves both; where they differ (error texts, state names,
//! API versions) the differences are absorbed here and nowhere else.
//!
//! Objects are found by label (`cove.instance` and `cove.workspace`), never by guessing a
//! name: a name is only chosen at creation, so renaming the naming scheme later cannot
//! orphan anything.

use std::collections::HashMap;

use crate::listing::{self, Listed};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use cove_core::{ContainerState, Observed, ObservedContainer, WorkspaceId};
use futures::StreamExt;

use crate::{
    Backend, BackendError, ContainerSpec, EngineInfo, ExecEvent, ExecRequest, ExecStream, LogOptions, LogStream,
    Result, LABEL_INSTANCE, LABEL_NAME, LABEL_OWNER, LABEL_SPEC_HASH, LABEL_WORKSPACE, WORKSPACE_HOME,
    WORKSPACE_SCRATCH, WORKSPACE_UID,
};

/// The volume's wanted size, kept as a label: the `local` driver on overlay cannot enforce
/// a quota, so the size is recorded for a later driver (or a report) instead of failing.
pub const LABEL_DISK_BYTES: &str = "cove.disk-bytes";
/// Marks the short-lived containers Cove makes for its own work (`push`), never a workspace's.
pub const LABEL_HELPER: &str = "cove.helper";

/// How long a stop waits for the workspace's processes before the engine kills them.
const STOP_TIMEOUT_SECS: i32 = 10;
/// Every workspace gets a process cap, so a fork bomb in one cannot starve the host.
const PIDS_LIMIT: i64 = 4096;
/// The scratch tmpfs counts against the container's memory; the cap keeps one runaway
/// tool from taking all of it.
const SCRATCH_OPTIONS: &str = "rw,nosuid,nodev,size=1g,mode=1777";
/// Secrets are small; root's until the agent hands the secrets directory to the user.
const SECRETS_TMPFS_OPTIONS: &str = "rw,nosuid,nodev,noexec,size=16m,mode=0755";
/// Placeholder main process until the agent is injected: keeps the container alive,
/// makes the project folder on the volume, runs the user's `~/.cove/on-start` in the
/// background if there is one (how a server in the workspace comes back after a wake),
/// and exits 0 on the stop signal.
const IDLE_COMMAND: &str = "mkdir -p \"$HOME/project\"; echo \"cove: workspace $(hostname) started\"; \
    if [ -x \"$HOME/.cove/on-start\" ]; then \"$HOME/.cove/on-start\" >>\"$HOME/.cove/on-start.log\" 2>&1 & fi; \
    trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";
/// Upper bound for an exec's exit code to show up once its output has ended.
const EXEC_EXIT_DEADLINE: Duration = Duration::from_secs(10);

pub struct DockerBackend {
    /// `None` until the engine's socket exists: a server may start before its engine.
    docker: std::sync::Mutex<Option<Docker>>,
    endpoint: String,
    instance: String,
    /// Whether the client's API version has been matched to the engine's yet. Done lazily
    /// because the server must start while the engine is down.
    negotiated: AtomicBool,
    /// The agent and friends; without it, workspaces run a placeholder main process.
    injection: Option<crate::Injection>,
}

impl DockerBackend {
    /// `endpoint` is only used in messages; `instance` scopes every object this backend
    /// makes, observes or removes.
    pub fn new(docker: Docker, endpoint: String, instance: String) -> Self {
        Self {
            docker: std::sync::Mutex::new(Some(docker)),
            endpoint,
            instance,
            negotiated: AtomicBool::new(false),
            injection: None,
        }
    }

    /// A backend whose client is made on first use, once `endpoint`'s socket exists.
    pub fn lazy(endpoint: String, instance: String) -> Self {
        Self {
            docker: std::sync::Mutex::new(None),
            endpoint,
            instance,
            negotiated: AtomicBool::new(false),
            injection: None,
        }
    }

    /// Workspaces made from now on run the injected agent as their main process.
    pub fn with_injection(mut self, injection: crate::Injection) -> Self {
        self.injection = Some(injection);
        self
    }

    /// The container's user, command and extra mounts: the agent's (as root, which drops to
    /// the workspace user for everything it starts) or the placeholder's.
    fn main_process(&self, spec: &ContainerSpec) -> Result<(String, Vec<String>, Vec<Mount>)> {
        let Some(injection) = &self.injection else {
            let cmd = vec!["/bin/sh".into(), "-c".into(), IDLE_COMMAND.into()];
            return Ok((format!("{WORKSPACE_UID}:{WORKSPACE_UID}"), cmd, vec![]));
        };
        let run_dir = injection
            .ensure_run_dir(spec.workspace)
            .map_err(|e| BackendError::Engine(format!("create the run directory for workspace {}: {e}", spec.name)))?;
        let bind = |source: &std::path::Path, target: &str, read_only: bool| Mount {
            target: Some(target.into()),
            source: Some(source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Default::default()
        };
        let mut mounts = vec![
            bind(&injection.agent_dir, cove_core::agent::AGENT_DIR, true),
            bind(&run_dir, cove_core::agent::RUN_DIR, false),
        ];
        if let Some(editor) = injection.editor_dir() {
            mounts.push(bind(&editor, cove_core::agent::EDITOR_DIR, true));
        }
        Ok(("0:0".into(), crate::inject::agent_command(), mounts))
    }

    /// The scratch tmpfs, and with an agent the one it writes the workspace's secrets to
    /// (memory only: secrets never touch the volume or the engine's metadata).
    fn tmpfs(&self) -> HashMap<String, String> {
        let mut tmpfs = HashMap::from([(WORKSPACE_SCRATCH.to_string(), SCRATCH_OPTIONS.to_string())]);
        if self.injection.is_some() {
            tmpfs.insert(cove_core::agent::SECRETS_TMPFS.to_string(), SECRETS_TMPFS_OPTIONS.to_string());
        }
        tmpfs
    }

    pub fn container_name(spec: &ContainerSpec) -> String {
        format!("cove-{}-{}", spec.name, spec.workspace.short())
    }

    pub fn volume_name(spec: &ContainerSpec) -> String {
        format!("{}-home", Self::container_name(spec))
    }

    /// The client, once its API version suits the engine.
    async fn api(&self) -> Result<Docker> {
        let docker = self.client()?;
        if !self.negotiated.load(Ordering::Relaxed) {
            negotiate(&docker).await.map_err(|e| self.error("ask the engine for its version", e))?;
            self.negotiated.store(true, Ordering::Relaxed);
        }
        Ok(docker)
    }

    fn client(&self) -> Result<Docker> {
        // Nothing panics while holding this lock, and an Option stays valid regardless.
        let mut slot = self.docker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let docker = crate::engine::client_for(&self.endpoint)?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    fn error(&self, context: &str, err: DockerError) -> BackendError {
        engine_error(&self.endpoint, context, err)
    }

    /// Like `error`, but a 404 means the container vanished under us.
    fn container_error(&self, context: &str, err: DockerError) -> BackendError {
        match status(&err) {
            Some(404) => BackendError::NoContainer,
            _ => self.error(context, err),
        }
    }

    fn labels(&self, spec: &ContainerSpec) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_WORKSPACE.to_string(), spec.workspace.to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_NAME.to_string(), spec.name.to_string()),
            (LABEL_OWNER.to_string(), spec.owner.to_string()),
        ])
    }

    fn instance_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={}", self.instance)])])
    }

    fn workspace_filter(&self, id: WorkspaceId) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_INSTANCE}={}", self.instance), format!("{LABEL_WORKSPACE}={id}")],
        )])
    }

    /// The workspace's containers: normally one, but removal must take them all should
    /// a human have made another with our labels.
    async fn containers_of(&self, id: WorkspaceId) -> Result<Vec<Listed>> {
        let found = self.list_containers(&self.workspace_filter(id)).await?;
        Ok(found.into_iter().filter(|c| self.is_ours(c.labels.as_ref(), Some(id))).collect())
    }

    /// Lists through `listing`, after the client is known to work (same endpoint).
    async fn list_containers(&self, filters: &HashMap<String, Vec<String>>) -> Result<Vec<Listed>> {
        self.api().await?;
        listing::list(&self.endpoint, filters).await
    }

    /// Whether an object carries this instance's label (and the workspace's, if given).
    /// The engine's filter already asked for that, but Podman 4.3 joins several label
    /// filters on volumes with OR, so every answer is checked here again.
    fn is_ours(&self, labels: Option<&HashMap<String, String>>, id: Option<WorkspaceId>) -> bool {
        let Some(labels) = labels else { return false };
        labels.get(LABEL_INSTANCE) == Some(&self.instance)
            && id.is_none_or(|id| workspace_label(Some(labels)) == Some(id))
    }

    /// The container to act on: the running one if there are several.
    async fn container_of(&self, id: WorkspaceId) -> Result<Listed> {
        let containers = self.containers_of(id).await?;
        let running = containers.iter().position(Listed::is_running).unwrap_or(0);
        containers.into_iter().nth(running).ok_or(BackendError::NoContainer)
    }

    /// A container holding `name` that this instance made for `id` (a leftover of a crash
    /// between create and record), or `None` if the name belongs to someone else.
    async fn leftover_named(&self, name: &str, id: WorkspaceId) -> Result<Option<String>> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let found = self.list_containers(&filters).await?;
        // The name filter matches substrings, so the exact name is checked here.
        Ok(found
            .into_iter()
            .filter(|c| c.has_name(name))
            .find(|c| self.is_ours(c.labels.as_ref(), Some(id)))
            .and_then(|c| c.id))
    }

    /// Makes a named volume with `labels`; an existing one is fine.
    async fn ensure_volume(&self, name: String, labels: HashMap<String, String>) -> Result<()> {
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            driver: Some("local".into()),
            labels: Some(labels),
            ..Default::default()
        };
        let docker = self.api().await?;
        match docker.create_volume(request).await {
            Ok(_) => Ok(()),
            // Both engines return the existing volume for a repeated create; should one
            // refuse instead, an existing volume is still the wanted end state.
            Err(e) if status(&e).is_some() => match docker.inspect_volume(&name).await {
                Ok(_) => Ok(()),
                Err(_) => Err(self.error(&format!("create volume {name}"), e)),
            },
            Err(e) => Err(self.error(&format!("create volume {name}"), e)),
        }
    }

    async fn remove_by_id(&self, container: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.api().await?.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone already, or being removed by someone else: the wanted end state either way.
            Err(e) if status(&e) == Some(404) || is_removal_in_progress(&e) => Ok(()),
            Err(e) => Err(self.error("remove container", e)),
        }
    }
}

#[async_trait]
impl Backend for DockerBackend {
    async fn ping(&self) -> Result<EngineInfo> {
        let version = self.api().await?.version().await.map_err(|e| self.error("ask the engine for its version", e))?;
        let podman = version.components.iter().flatten().find(|c| c.name == "Podman Engine").map(|c| c.version.clone());
        Ok(match podman {
            Some(v) => EngineInfo { kind: "podman".into(), version: v, endpoint: self.endpoint.clone() },
            None => EngineInfo {
                kind: "docker".into(),
                version: version.version.unwrap_or_default(),
                endpoint: self.endpoint.clone(),
            },
        })
    }

    async fn observe(&self) -> Result<HashMap<WorkspaceId, Observed>> {
        let containers = self.list_containers(&self.instance_filter()).await?;
        let docker = self.api().await?;
        let options = ListVolumesOptionsBuilder::new().filters(&self.instance_filter()).build();
        let volumes = docker.list_volumes(Some(options)).await.map_err(|e| self.error("list volumes", e))?;

        let mut world: HashMap<WorkspaceId, Observed> = HashMap::new();
        for c in containers.into_iter().filter(|c| self.is_ours(c.labels.as_ref(), None)) {
            let Some(id) = workspace_label(c.labels.as_ref()) else {
                continue;
            };
            let state = match listing::container_state(c.state.as_deref()) {
                ContainerState::Exited { .. } => {
                    let code = match c.status.as_deref().and_then(exit_code_from_status) {
                        Some(code) => code,
                        None => self.inspect_exit_code(c.id.as_deref().unwrap_or_default()).await,
                    };
                    ContainerState::Exited { code }
                }
                other => other,
            };
            let spec_hash = c.labels.as_ref().and_then(|l| l.get(LABEL_SPEC_HASH)).cloned();
            let entry = world.entry(id).or_default();
            // Two containers for one workspace exist only if someone made one by hand
            // with our labels; the running one is what the user sees, so it is reported.
            if entry.container.as_ref().is_none_or(|old| old.state != ContainerState::Running) {
                entry.container = Some(ObservedContainer { state, spec_hash });
            }
        }
        for v in volumes.volumes.into_iter().flatten().filter(|v| self.is_ours(Some(&v.labels), None)) {
            let Some(id) = workspace_label(Some(&v.labels)) else {
                continue;
            };
            world.entry(id).or_default().volume = true;
        }
        Ok(world)
    }

    async fn create_volume(&self, spec: &ContainerSpec) -> Result<()> {
        let name = Self::volume_name(spec);
        let mut labels = self.labels(spec);
        if let Some(bytes) = spec.resources.disk_bytes {
            labels.insert(LABEL_DISK_BYTES.to_string(), bytes.to_string());
        }
        self.ensure_volume(name, labels).await
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<()> {
        // The engine would make a missing named volume itself, but without our labels,
        // and observe() would never see it; so it is made here first, labelled.
        self.create_volume(spec).await?;
        // devcontainer.json's named volumes too: labelled, they go with the workspace.
        for m in spec.config.mounts.iter().filter(|m| m.kind == cove_core::MountType::Volume) {
            if let Some(Mount { source: Some(source), .. }) = Some(devcontainer_mount(m, spec)) {
                self.ensure_volume(source, self.labels(spec)).await?;
            }
        }
        let name = Self::container_name(spec);
        let mut labels = self.labels(spec);
        labels.insert(LABEL_SPEC_HASH.to_string(), spec.spec_hash.clone());
        let (user, cmd, extra_mounts) = self.main_process(spec)?;
        let mut mounts = vec![Mount {
            target: Some(WORKSPACE_HOME.into()),
            source: Some(Self::volume_name(spec)),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        }];
        mounts.extend(extra_mounts);
        mounts.extend(spec.config.mounts.iter().map(|m| devcontainer_mount(m, spec)));
        for (key, value) in &spec.config.labels {
            labels.entry(key.clone()).or_insert_with(|| value.clone());
        }
        // Cove's own variables come last: the configuration cannot override them.
        let mut env: Vec<String> = spec.config.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend([
            format!("HOME={WORKSPACE_HOME}"),
            "USER=cove".into(),
            format!("{}={}", crate::ENV_SPEC_HASH, spec.spec_hash),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(user),
            env: Some(env),
            working_dir: Some(WORKSPACE_HOME.into()),
            hostname: Some(spec.name.to_string()),
            cmd: Some(cmd),
            // The image's entrypoint would wrap (or replace) the agent.
            entrypoint: Some(vec![]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                // Without an init the idle shell ignores SIGTERM as PID 1 and every stop
                // would take the whole timeout; with it, zombies are reaped too.
                init: Some(true),
                nano_cpus: Some(i64::from(spec.resources.cpus_milli) * 1_000_000),
                memory: Some(i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX)),
                pids_limit: Some(PIDS_LIMIT),
                // Only when the admin's policy allowed the configuration to ask for it.
                privileged: Some(spec.config.privileged),
                cap_add: (!spec.config.cap_add.is_empty()).then(|| spec.config.cap_add.clone()),
                security_opt: (!spec.config.security_opt.is_empty()).then(|| spec.config.security_opt.clone()),
                mounts: Some(mounts),
                tmpfs: Some(self.tmpfs()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let context = format!("create container {name}");
        let docker = self.api().await?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let first = match docker.create_container(Some(options.clone()), body.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if status(&first) == Some(404) {
            return Err(BackendError::ImageNotFound(spec.image.clone()));
        }
        if !is_name_conflict(&first) {
            return Err(self.error(&context, first));
        }
        // A container of ours from an earlier attempt (a crash before it was recorded)
        // holds the name; it is replaced. Anyone else's container is left alone.
        let Some(leftover) = self.leftover_named(&name, spec.workspace).await? else {
            return Err(BackendError::Engine(format!(
                "{context}: the name is taken by a container Cove did not make; remove or rename it"
            )));
        };
        tracing::info!(container = %name, "replacing a leftover container of this workspace");
        self.remove_by_id(&leftover).await?;
        match docker.create_container(Some(options), body).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(BackendError::ImageNotFound(spec.image.clone())),
            Err(e) => Err(self.error(&context, e)),
        }
    }

    async fn start_container(&self, id: WorkspaceId) -> Result<()> {
        let container = self.container_of(id).await?;
        let cid = container.id.unwrap_or_default();
        // A 304 (already running) counts as success in bollard.
        self.api().await?.start_container(&cid, None).await.map_err(|e| self.container_error("start container", e))
    }

    async fn unpause_container(&self, id: WorkspaceId) -> Result<()> {
        let container = self.container_of(id).await?;
        if container.state.as_deref() != Some("paused") {
            return Ok(());
        }
        let cid = container.id.unwrap_or_default();
        self.api().await?.unpause_container(&cid).await.map_err(|e| self.container_error("unpause container", e))
    }

    async fn stop_container(&self, id: WorkspaceId) -> Result<()> {
        let container = self.container_of(id).await?;
        let cid = container.id.unwrap_or_default();
        let options = StopContainerOptionsBuilder::new().t(STOP_TIMEOUT_SECS).build();
        // Both engines answer only once the container has exited (304 if it already had).
        self.api()
            .await?
            .stop_container(&cid, Some(options))
            .await
            .map_err(|e| self.container_error("stop container", e))
    }

    async fn remove_container(&self, id: WorkspaceId) -> Result<()> {
        for c in self.containers_of(id).await? {
            if let Some(cid) = c.id {
                self.remove_by_id(&cid).await?;
            }
        }
        Ok(())
    }

    async fn remove_volume(&self, id: WorkspaceId) -> Result<()> {
        let docker = self.api().await?;
        let options = ListVolumesOptionsBuilder::new().filters(&self.workspace_filter(id)).build();
        let volumes = docker.list_volumes(Some(options)).await.map_err(|e| self.error("list volumes", e))?;
        for v in volumes.volumes.into_iter().flatten().filter(|v| self.is_ours(Some(&v.labels), Some(id))) {
            let options = RemoveVolumeOptionsBuilder::new().force(false).build();
            match docker.remove_volume(&v.name, Some(options)).await {
                Ok(()) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(self.error(&format!("remove volume {}", v.name), e)),
            }
        }
        Ok(())
    }

    async fn exec(&self, id: WorkspaceId, request: ExecRequest) -> Result<ExecStream> {
        let container = self.container_of(id).await?;
        if !container.is_running() {
            return Err(BackendError::NotRunning);
        }
        let cid = container.id.unwrap_or_default();
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            tty: Some(false),
            cmd: Some(request.cmd),
            env: Some(request.env),
            user: Some(request.user.unwrap_or_else(|| format!("{WORKSPACE_UID}:{WORKSPACE_UID}"))),
            working_dir: Some(request.workdir.unwrap_or_else(|| WORKSPACE_HOME.into())),
            ..Default::default()
        };
        let docker = self.api().await?.clone();
        let created = docker.create_exec(&cid, config).await.map_err(|e| match status(&e) {
            // The container stopped between the look-up and the exec.
            Some(409) => BackendError::NotRunning,
            _ if is_not_running(&e) => BackendError::NotRunning,
            _ => self.container_error("create exec", e),
        })?;
        let options = StartExecOptions { detach: false, tty: false, output_capacity: None };
        let started =
            docker.start_exec(&created.id, Some(options)).await.map_err(|e| self.container_error("start exec", e))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(BackendError::Engine("start exec: the engine detached the exec".into()));
        };
        // Nothing is written to stdin; dropping the writer leaves the connection open.
        drop(input);
        let endpoint = self.endpoint.clone();
        let output_endpoint = endpoint.clone();
        let events = output.map(move |item| match item {
            Ok(LogOutput::StdErr { message }) => Ok(ExecEvent::Stderr(message)),
            Ok(other) => Ok(ExecEvent::Stdout(other.into_bytes())),
            Err(e) => Err(engine_error(&output_endpoint, "read exec output", e)),
        });
        let exec_id = created.id;
        let exit = futures::stream::once(async move {
            exec_exit_code(&docker, &exec_id).await.map(ExecEvent::Exit).map_err(|e| match e {
                ExitError::Docker(e) => engine_error(&endpoint, "inspect exec", e),
                ExitError::Timeout => {
                    BackendError::Engine("the exec's output ended but the engine reported no exit code in time".into())
                }
            })
        });
        Ok(events.chain(exit).boxed())
    }

    async fn put_archive(&self, spec: &ContainerSpec, dest: &str, archive: &std::path::Path) -> Result<()> {
        let (container, helper) = self.files_container(spec).await?;
        let result = self.upload(&container, dest, archive).await;
        self.release_files_container(&container, helper).await;
        result
    }

    async fn get_archive(
        &self,
        spec: &ContainerSpec,
        path: &str,
        into: &std::path::Path,
        max_bytes: u64,
    ) -> Result<bool> {
        let (container, helper) = self.files_container(spec).await?;
        let result = self.download(&container, path, into, max_bytes).await;
        self.release_files_container(&container, helper).await;
        result
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.api().await?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.error(&format!("look up image {image}"), e)),
        }
    }

    async fn build_image(
        &self,
        build: &crate::ImageBuild,
        progress: &mut (dyn for<'p> FnMut(&'p str) + Send),
    ) -> Result<()> {
        let context = format!("build image {}", build.tag);
        let file = tokio::fs::File::open(&build.context)
            .await
            .map_err(|e| BackendError::Engine(format!("{context}: cannot open the build context: {e}")))?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let args: HashMap<&String, &String> = build.args.iter().collect();
        let mut labels: HashMap<String, String> = build.labels.clone().into_iter().collect();
        labels.insert(LABEL_INSTANCE.to_string(), self.instance.clone());
        let mut options = BuildImageOptionsBuilder::new()
            .dockerfile(&build.dockerfile)
            .t(&build.tag)
            .buildargs(&args)
            .labels(&labels)
            .rm(true)
            // A failed build on Podman otherwise leaves a hidden buildah container.
            .forcerm(true);
        if let Some(target) = &build.target {
            options = options.target(target);
        }
        let docker = self.api().await?;
        let mut stream = docker.build_image(options.build(), None, Some(body));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.error(&context, e))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(BackendError::Engine(format!("{context}: {}", message.trim())));
            }
            for text in [info.stream, info.status].into_iter().flatten() {
                for line in text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()) {
                    progress(line);
                }
            }
        }
        // A build that ends without an error must have made the image; check rather than trust.
        if !self.image_exists(&build.tag).await? {
            return Err(BackendError::Engine(format!("{context}: the engine finished without making the image")));
        }
        Ok(())
    }

    async fn address(&self, id: WorkspaceId) -> Result<Option<std::net::IpAddr>> {
        let container = self.container_of(id).await?;
        let Some(name) = container.id else { return Ok(None) };
        let inspect =
            self.api().await?.inspect_container(&name, None).await.map_err(|e| self.container_error("inspect", e))?;
        // Podman and Docker both fill the Networks map; the legacy top-level IPAddress is
        // empty on Podman for non-default networks.
        let networks = inspect.network_settings.and_then(|n| n.networks).unwrap_or_default();
        let mut names: Vec<_> = networks.keys().cloned().collect();
        names.sort();
        Ok(names
            .iter()
            .filter_map(|n| networks.get(n)?.ip_address.as_deref()?.parse().ok())
            .find(|ip: &std::net::IpAddr| !ip.is_unspecified()))
    }

    async fn logs(&self, id: WorkspaceId, options: LogOptions) -> Result<LogStream> {
        let container = self.container_of(id).await?;
        let cid = container.id.unwrap_or_default();
        let tail = options.tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let query = LogsOptionsBuilder::new().stdout(true).stderr(true).follow(options.follow).tail(&tail).build();
        let endpoint = self.endpoint.clone();
        let stream = self.api().await?.logs(&cid, Some(query)).map(move |item| match item {
            Ok(out) => Ok(out.into_bytes()),
            Err(e) => Err(match status(&e) {
                Some(404) => BackendError::NoContainer,
                _ => engine_error(&endpoint, "read logs", e),
            }),
        });
        Ok(stream.boxed())
    }
}

impl DockerBackend {
    /// The container through which the workspace's files are reached: its own, or while it
    /// has none a helper on its volume (`true`), for [`Self::release_files_container`].
    async fn files_container(&self, spec: &ContainerSpec) -> Result<(String, bool)> {
        match self.container_of(spec.workspace).await {
            Ok(Listed { id: Some(id), .. }) => Ok((id, false)),
            Ok(_) | Err(BackendError::NoContainer) => Ok((self.push_helper(spec).await?, true)),
            Err(e) => Err(e),
        }
    }

    /// Whatever was done through it, a helper goes: it was never the workspace's.
    async fn release_files_container(&self, container: &str, helper: bool) {
        if helper {
            if let Err(e) = self.remove_by_id(container).await {
                tracing::warn!(container = %container, error = %e, "cannot remove the helper container");
            }
        }
    }

    /// A container on the workspace's volume that is never started: something to put files
    /// through while the workspace has no container of its own. It carries the instance
    /// label (sweeps find it) but no workspace label, so `observe` never mistakes it for the
    /// workspace's container.
    async fn push_helper(&self, spec: &ContainerSpec) -> Result<String> {
        self.create_volume(spec).await?;
        let name = format!("{}-push", Self::container_name(spec));
        // A helper left by a crash mid-push holds the name.
        let filters = HashMap::from([("name".to_string(), vec![name.clone()])]);
        for leftover in self.list_containers(&filters).await? {
            if leftover.has_name(&name)
                && leftover.labels.as_ref().and_then(|l| l.get(LABEL_INSTANCE)) == Some(&self.instance)
            {
                if let Some(id) = leftover.id {
                    self.remove_by_id(&id).await?;
                }
            }
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(vec!["true".into()]),
            entrypoint: Some(vec![]),
            labels: Some(HashMap::from([
                (LABEL_INSTANCE.to_string(), self.instance.clone()),
                (LABEL_HELPER.to_string(), "push".to_string()),
            ])),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some(WORKSPACE_HOME.into()),
                    source: Some(Self::volume_name(spec)),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        match self.api().await?.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(e) if status(&e) == Some(404) => Err(BackendError::ImageNotFound(spec.image.clone())),
            Err(e) => Err(self.error(&format!("create push helper {name}"), e)),
        }
    }

    async fn download(&self, container: &str, path: &str, into: &std::path::Path, max_bytes: u64) -> Result<bool> {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(into)
            .await
            .map_err(|e| BackendError::Engine(format!("create {}: {e}", into.display())))?;
        let options = DownloadFromContainerOptionsBuilder::new().path(path).build();
        let docker = self.api().await?;
        let mut stream = docker.download_from_container(container, Some(options));
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) if total + bytes.len() as u64 > max_bytes => {
                    return Err(BackendError::Engine(format!(
                        "read files from {path}: more than {} MiB; make it smaller",
                        max_bytes >> 20
                    )))
                }
                Ok(bytes) => {
                    total += bytes.len() as u64;
                    file.write_all(&bytes)
                        .await
                        .map_err(|e| BackendError::Engine(format!("write {}: {e}", into.display())))?
                }
                Err(e) if status(&e) == Some(404) && server_message(&e).contains("ontainer") => {
                    return Err(BackendError::NoContainer)
                }
                Err(e) if status(&e) == Some(404) => return Ok(false),
                Err(e) => return Err(self.container_error(&format!("read files from {path}"), e)),
            }
        }
        file.flush().await.map_err(|e| BackendError::Engine(format!("write {}: {e}", into.display())))?;
        Ok(true)
    }

    async fn upload(&self, container: &str, dest: &str, archive: &std::path::Path) -> Result<()> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| BackendError::Engine(format!("open the archive to upload: {e}")))?;
        let chunks = tokio_util::io::ReaderStream::new(file);
        let options = UploadToContainerOptionsBuilder::new().path(dest).build();
        self.api()
            .await?
            .upload_to_container(container, Some(options), bollard::body_try_stream(chunks))
            .await
            .map_err(|e| self.container_error(&format!("put files into {dest}"), e))
    }

    /// The list's status text had no exit code; ask the container itself. Failing that,
    /// -1 keeps observe() going: the code only feeds a message.
    async fn inspect_exit_code(&self, container: &str) -> i64 {
        let Ok(docker) = self.client() else { return -1 };
        match docker.inspect_container(container, None).await {
            Ok(inspect) => inspect.state.and_then(|s| s.exit_code).unwrap_or(-1),
            Err(e) => {
                tracing::warn!(container, error = %e, "cannot read the exit code of a container");
                -1
            }
        }
    }
}

enum ExitError {
    Docker(DockerError),
    Timeout,
}

/// The engine records an exec's exit code a moment after its output ends (Podman in
/// particular), so the code is polled for with a deadline.
async fn exec_exit_code(docker: &Docker, exec_id: &str) -> Result<i64, ExitError> {
    let deadline = tokio::time::Instant::now() + EXEC_EXIT_DEADLINE;
    let mut pause = Duration::from_millis(5);
    loop {
        let inspect = docker.inspect_exec(exec_id).await.map_err(ExitError::Docker)?;
        if inspect.running != Some(true) {
            if let Some(code) = inspect.exit_code {
                return Ok(code);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ExitError::Timeout);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Matches the client's API version to the engine's. The handle's version is shared by
/// all its clones, so doing it once on any clone serves them all. Only a failure to reach
/// the engine is an error: an engine that cannot say its version is spoken to as is.
pub(crate) async fn negotiate(docker: &Docker) -> Result<(), DockerError> {
    match docker.clone().negotiate_version().await {
        Ok(_) => Ok(()),
        Err(e) if is_unreachable(&e) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot negotiate the engine's API version; using the client's");
            Ok(())
        }
    }
}

/// A devcontainer.json mount. A named volume gets the workspace's name in front, so two
/// workspaces asking for `cache` do not share one (the spec's `${devcontainerId}` idea).
fn devcontainer_mount(m: &cove_core::ContainerMount, spec: &ContainerSpec) -> Mount {
    use cove_core::MountType as T;
    let (typ, source) = match m.kind {
        T::Volume => {
            (MountType::VOLUME, m.source.as_ref().map(|s| format!("{}-{s}", DockerBackend::container_name(spec))))
        }
        T::Bind => (MountType::BIND, m.source.clone()),
        T::Tmpfs => (MountType::TMPFS, None),
    };
    Mount { target: Some(m.target.clone()), source, typ: Some(typ), read_only: Some(m.read_only), ..Default::default() }
}

fn workspace_label(labels: Option<&HashMap<String, String>>) -> Option<WorkspaceId> {
    labels?.get(LABEL_WORKSPACE)?.parse().ok()
}

/// `Exited (137) 5 seconds ago` (Docker) or `Exited (0) Less than a second ago` (Podman).
fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.trim().strip_prefix("Exited (")?;
    let (code, _) = rest.split_once(')')?;
    code.trim().parse().ok()
}

fn status(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn server_message(err: &DockerError) -> &str {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message,
        _ => "",
    }
}

/// Docker answers 409 "Conflict. The container name ... is already in use"; Podman 4.3
/// answers 500 "... that name is already in use".
fn is_name_conflict(err: &DockerError) -> bool {
    let message = server_message(err).to_ascii_lowercase();
    matches!(status(err), Some(409 | 500)) && message.contains("already in use")
}

fn is_removal_in_progress(err: &DockerError) -> bool {
    matches!(status(err), Some(409)) && server_message(err).contains("already in progress")
}

fn is_not_running(err: &DockerError) -> bool {
    let message = server_message(err).to_ascii_lowercase();
    message.contains("not running") || message.contains("state improper")
}

/// Whether the error says the engine could not be talked to at all, as opposed to an
/// engine that answered with a refusal.
pub(crate) fn is_unreachable(err: &DockerError) -> bool {
    match err {
        DockerError::SocketNotFoundError(_)
        | DockerError::RequestTimeoutError
        | DockerError::UnsupportedURISchemeError { .. } => true,
        DockerError::HyperLegacyError { err } => err.is_connect() || io_error(err).is_some(),
        DockerError::HyperResponseError { err } => err.is_closed() || err.is_incomplete_message(),
        DockerError::IOError { err } => matches!(
            err.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::PermissionDenied
        ),
        _ => false,
    }
}

/// The innermost I/O error behind an error, which says why a connection failed.
fn io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut found = None;
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            found = Some(io);
        }
        current = e.source();
    }
    found
}

fn unreachable_message(err: &DockerError) -> String {
    if let DockerError::SocketNotFoundError(path) = err {
        return format!("the socket {path} does not exist; start the engine or its API service");
    }
    if let DockerError::RequestTimeoutError = err {
        return "the engine did not answer in time".into();
    }
    match io_error(err).map(|e| e.kind()) {
        Some(std::io::ErrorKind::NotFound) => "the socket does not exist; start the engine or its API service".into(),
        Some(std::io::ErrorKind::ConnectionRefused) => {
            "connection refused; is the engine (or `podman system service`) running?".into()
        }
        Some(std::io::ErrorKind::PermissionDenied) => {
            "permission denied on the socket; run as a user allowed to use the engine".into()
        }
        Some(_) | None => {
            // The innermost cause is the informative part; the outer layers only repeat it.
            let mut message = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                message = s.to_string();
                source = s.source();
            }
            message
        }
    }
}

/// Turns a client error into the backend's: unreachable engines apart from refusals, and
/// the engine's own message rather than the client's Debug output.
pub(crate) fn engine_error(endpoint: &str, context: &str, err: DockerError) -> BackendError {
    if is_unreachable(&err) {
        return BackendError::Unreachable { endpoint: endpoint.to_string(), message: unreachable_message(&err) };
    }
    let detail = match &err {
        DockerError::DockerResponseServerError { status_code, message } if message.is_empty() => {
            format!("the engine answered {status_code}")
        }
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        DockerError::JsonDataError { message, .. } => {
            format!("unexpected answer from the engine ({message})")
        }
        other => other.to_string(),
    };
    BackendError::Engine(format!("{context}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_status() {
        let check = |s: &str, expected: Option<i64>| assert_eq!(exit_code_from_status(s), expected, "{s:?}");
        check("Exited (0) 5 seconds ago", Some(0));
        check("Exited (137) About a minute ago", Some(137));
        check("Exited (143) Less than a second ago", Some(143));
        check("Exited (-1) 2 hours ago", Some(-1));
        check("Up 3 minutes", None);
        check("Exited", None);
        check("Exited (x) now", None);
    }

    fn server(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError { status_code, message: message.into() }
    }

    #[test]
    fn name_conflicts() {
        // Podman 4.3, as seen on its socket.
        assert!(is_name_conflict(&server(500, "container create: creating container storage: the container name \"cove-a\" is already in use by e108. You have to remove that container to be able to reuse that name: that name is already in use")));
        // Docker Engine.
        assert!(is_name_conflict(&server(409, "Conflict. The container name \"/cove-a\" is already in use by container \"e108\". You have to remove (or rename) that container to be able to reuse that name.")));
        assert!(!is_name_conflict(&server(500, "no space left on device")));
        assert!(!is_name_conflict(&server(404, "no such image")));
    }

    #[test]
    fn error_mapping() {
        let e = engine_error("unix:///x", "start container", server(500, "boom"));
        assert_eq!(e.to_string(), "start container: boom");
        let e = engine_error("unix:///x", "start container", server(500, ""));
        assert_eq!(e.to_string(), "start container: the engine answered 500");
        let e = engine_error("unix:///x", "list", DockerError::SocketNotFoundError("/x".into()));
        assert!(matches!(e, BackendError::Unreachable { ref endpoint, .. } if endpoint == "unix:///x"), "{e:?}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = engine_error("unix:///x", "list", DockerError::IOError { err: refused });
        assert!(matches!(e, BackendError::Unreachable { ref message, .. } if message.contains("refused")), "{e:?}");
    }
}
