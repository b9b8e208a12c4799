//! The Docker backend against the real engine at `$DOCKER_HOST` (Podman's compatible
//! socket here; Docker Engine answers the same way). Every test works under its own
//! instance label and sweeps everything carrying it when it ends, pass or fail.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use cove_core::{ContainerState, Name, Observed, ObservedContainer, Resources, WorkspaceId};
use cove_runtime::images::{bootstrap_base_image, ensure_tiny_image, BASE_IMAGE, LABEL_CONTENT_HASH};
use cove_runtime::{
    Backend, BackendError, ContainerSpec, DockerBackend, ExecEvent, ExecRequest, LogOptions, LABEL_INSTANCE,
};
use futures::TryStreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn endpoint() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host,
        _ => panic!(
            "DOCKER_HOST is not set: these tests need a container engine. Start Podman's API with\n  \
             mkdir -p /run/cove-dev && CONTAINERS_CONF={}/../../scripts/podman/containers.conf \
             podman system service --time=0 unix:///run/cove-dev/podman.sock &\n\
             and run them with DOCKER_HOST=unix:///run/cove-dev/podman.sock (or point it at Docker's socket)",
            env!("CARGO_MANIFEST_DIR")
        ),
    }
}

fn client() -> Docker {
    let host = endpoint();
    Docker::connect_with_host(&host).unwrap_or_else(|e| panic!("cannot make a client for {host}: {e}"))
}

/// Removes every container and volume of an instance when dropped, also when the test
/// panicked. Runs on its own thread and runtime, because the test's runtime may be the
/// one that is unwinding.
struct Sweep {
    instance: String,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let instance = self.instance.clone();
        let swept = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(sweep(&instance))
        })
        .join();
        match swept {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("sweeping instance {}: {e}", self.instance),
            Err(_) => eprintln!("sweeping instance {} panicked", self.instance),
        }
    }
}

async fn sweep(instance: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let docker = client();
    let filters = HashMap::from([("label", vec![format!("{LABEL_INSTANCE}={instance}")])]);
    let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    for c in docker.list_containers(Some(options)).await? {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        docker.remove_container(c.id.as_deref().unwrap_or_default(), Some(options)).await?;
    }
    let options = ListVolumesOptionsBuilder::new().filters(&filters).build();
    for v in docker.list_volumes(Some(options)).await?.volumes.into_iter().flatten() {
        let options = RemoveVolumeOptionsBuilder::new().force(true).build();
        docker.remove_volume(&v.name, Some(options)).await?;
    }
    Ok(())
}

/// A backend under a fresh instance label, swept when dropped.
struct Env {
    backend: DockerBackend,
    _sweep: Sweep,
}

fn env() -> Env {
    let instance = format!("test-{}", uuid::Uuid::new_v4());
    Env { backend: DockerBackend::new(client(), endpoint(), instance.clone()), _sweep: Sweep { instance } }
}

/// The tiny image, built at most once per test binary.
async fn tiny() -> String {
    static TINY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TINY.get_or_init(|| async {
        ensure_tiny_image(&client(), |_| {}).await.unwrap_or_else(|e| panic!("building the tiny image: {e}"))
    })
    .await
    .clone()
}

fn spec(image: &str, name: &str) -> ContainerSpec {
    let name = Name::parse(name).unwrap_or_else(|e| panic!("{e}"));
    ContainerSpec {
        workspace: WorkspaceId::new_random(),
        name,
        owner: Name::parse("alice").unwrap_or_else(|e| panic!("{e}")),
        image: image.to_string(),
        resources: Resources { cpus_milli: 500, memory_bytes: 256 << 20, disk_bytes: Some(1 << 30) },
        spec_hash: "spec-1".into(),
        config: Default::default(),
    }
}

#[derive(Debug, Default, PartialEq)]
struct Output {
    stdout: String,
    stderr: String,
    exit: Option<i64>,
}

async fn exec(backend: &dyn Backend, id: WorkspaceId, script: &str) -> Result<Output, BackendError> {
    let request = ExecRequest { cmd: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() };
    let events: Vec<ExecEvent> = backend.exec(id, request).await?.try_collect().await?;
    let mut out = Output::default();
    for (i, event) in events.iter().enumerate() {
        assert!(out.exit.is_none(), "event {i} came after the exit: {events:?}");
        match event {
            ExecEvent::Stdout(b) => out.stdout.push_str(&String::from_utf8_lossy(b)),
            ExecEvent::Stderr(b) => out.stderr.push_str(&String::from_utf8_lossy(b)),
            ExecEvent::Exit(code) => out.exit = Some(*code),
        }
    }
    assert!(out.exit.is_some(), "the exec stream ended without an exit: {events:?}");
    Ok(out)
}

async fn observed(backend: &DockerBackend, id: WorkspaceId) -> Result<Option<Observed>, BackendError> {
    Ok(backend.observe().await?.remove(&id))
}

/// Polls `check` until it returns true or the deadline passes.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, BackendError>>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("timed out after {deadline:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn container(state: ContainerState) -> Option<ObservedContainer> {
    Some(ObservedContainer { state, spec_hash: Some("spec-1".into()) })
}

#[tokio::test]
async fn tiny_image_build_is_cached() -> TestResult {
    let docker = client();
    let tag = tiny().await;
    assert!(tag.starts_with("cove/tiny:"), "{tag}");
    let mut lines = vec![];
    let again = ensure_tiny_image(&docker, |l| lines.push(l.to_string())).await?;
    assert_eq!(again, tag);
    assert_eq!(lines.len(), 1, "a cache hit builds nothing: {lines:?}");
    assert!(lines[0].contains(&tag) && lines[0].contains("present"), "{lines:?}");
    let image = docker.inspect_image(&tag).await?;
    let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
    let hash = labels.get(LABEL_CONTENT_HASH).cloned().unwrap_or_default();
    assert!(tag.ends_with(&hash[..12.min(hash.len())]) && hash.len() == 64, "label {hash:?}, tag {tag}");
    Ok(())
}

#[tokio::test]
async fn workspace_lifecycle() -> TestResult {
    let env = env();
    let b = &env.backend;
    let s = spec(&tiny().await, "life");
    let id = s.workspace;

    b.create_volume(&s).await?;
    b.create_volume(&s).await?;
    assert_eq!(observed(b, id).await?, Some(Observed { container: None, volume: true }));
    b.create_container(&s).await?;
    assert_eq!(observed(b, id).await?.and_then(|o| o.container), container(ContainerState::Created));
    b.start_container(id).await?;
    b.start_container(id).await?;
    assert_eq!(observed(b, id).await?, Some(Observed { container: container(ContainerState::Running), volume: true }));

    // The main process makes ~/project on the volume; wait for it rather than guess.
    eventually("the project folder", Duration::from_secs(30), || async {
        Ok(exec(b, id, "test -d ~/project").await?.exit == Some(0))
    })
    .await?;
    let out = exec(b, id, "echo hi > ~/project/note.txt; id -u").await?;
    assert_eq!(out, Output { stdout: "1000\n".into(), stderr: String::new(), exit: Some(0) });
    let out = exec(b, id, "echo out; echo err >&2; exit 3").await?;
    assert_eq!(out, Output { stdout: "out\n".into(), stderr: "err\n".into(), exit: Some(3) });
    let out = exec(b, id, "touch /scratch/x && echo $HOME && pwd && hostname").await?;
    assert_eq!(out.stdout, "/home/cove\n/home/cove\nlife\n", "{out:?}");

    let logs: Vec<Bytes> = b.logs(id, LogOptions { follow: false, tail: Some(10) }).await?.try_collect().await?;
    assert!(logs.iter().all(|l| l.len() < 10_000), "the idle process logs nothing much");

    // With an init the idle shell exits on SIGTERM at once instead of being killed after
    // the stop timeout (10 s): well under that, however busy the engine, is the SIGTERM.
    let started = Instant::now();
    b.stop_container(id).await?;
    assert!(started.elapsed() < Duration::from_secs(9), "stop took {:?}", started.elapsed());
    b.stop_container(id).await?;
    assert_eq!(observed(b, id).await?.and_then(|o| o.container), container(ContainerState::Exited { code: 0 }));
    assert!(matches!(exec(b, id, "true").await, Err(BackendError::NotRunning)));

    b.start_container(id).await?;
    assert_eq!(exec(b, id, "cat ~/project/note.txt").await?.stdout, "hi\n");
    let out = exec(b, id, "ls /scratch").await?;
    assert_eq!(out.stdout, "", "scratch is emptied by a restart");

    // The container goes, the volume and its files stay.
    b.remove_container(id).await?;
    b.remove_container(id).await?;
    assert_eq!(observed(b, id).await?, Some(Observed { container: None, volume: true }));
    assert!(matches!(b.start_container(id).await, Err(BackendError::NoContainer)));
    assert!(matches!(exec(b, id, "true").await, Err(BackendError::NoContainer)));
    b.create_container(&s).await?;
    b.start_container(id).await?;
    assert_eq!(exec(b, id, "cat ~/project/note.txt").await?.stdout, "hi\n");

    b.remove_container(id).await?;
    b.remove_volume(id).await?;
    b.remove_volume(id).await?;
    assert_eq!(observed(b, id).await?, None);
    Ok(())
}

#[tokio::test]
async fn paused_container_is_unpaused() -> TestResult {
    let env = env();
    let b = &env.backend;
    let s = spec(&tiny().await, "paused");
    b.create_container(&s).await?;
    b.start_container(s.workspace).await?;
    b.unpause_container(s.workspace).await?;
    // A person pauses it (`podman pause`).
    client().pause_container(&DockerBackend::container_name(&s)).await?;
    let state = |o: Option<Observed>| o.and_then(|o| o.container).map(|c| c.state);
    assert_eq!(state(observed(b, s.workspace).await?), Some(ContainerState::Paused));
    assert!(matches!(exec(b, s.workspace, "true").await, Err(BackendError::NotRunning)));
    b.unpause_container(s.workspace).await?;
    assert_eq!(state(observed(b, s.workspace).await?), Some(ContainerState::Running));
    Ok(())
}

#[tokio::test]
async fn exec_takes_env_workdir_and_user() -> TestResult {
    let env = env();
    let b = &env.backend;
    let s = spec(&tiny().await, "execs");
    b.create_container(&s).await?;
    b.start_container(s.workspace).await?;
    let request = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), "echo $GREETING; pwd; id -u".into()],
        env: vec!["GREETING=hello there".into()],
        workdir: Some("/tmp".into()),
        user: Some("0".into()),
    };
    let events: Vec<ExecEvent> = b.exec(s.workspace, request).await?.try_collect().await?;
    // Output may come in any number of frames; only their sum and the end are fixed.
    let stdout: Vec<u8> = events
        .iter()
        .flat_map(|e| match e {
            ExecEvent::Stdout(b) => b.to_vec(),
            _ => vec![],
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout), "hello there\n/tmp\n0\n");
    assert_eq!(events.last(), Some(&ExecEvent::Exit(0)), "{events:?}");
    Ok(())
}

#[tokio::test]
async fn leftover_container_is_replaced() -> TestResult {
    let env = env();
    let b = &env.backend;
    let mut s = spec(&tiny().await, "leftover");
    b.create_container(&s).await?;
    b.start_container(s.workspace).await?;
    // The same name again, as after a crash between create and record: replaced.
    s.spec_hash = "spec-2".into();
    b.create_container(&s).await?;
    let world = b.observe().await?;
    assert_eq!(world.len(), 1);
    let c = world[&s.workspace].container.clone();
    assert_eq!(c, Some(ObservedContainer { state: ContainerState::Created, spec_hash: Some("spec-2".into()) }));
    Ok(())
}

#[tokio::test]
async fn instances_do_not_see_each_other() -> TestResult {
    let (one, two) = (env(), env());
    let image = tiny().await;
    let (a, b) = (spec(&image, "one"), spec(&image, "two"));
    one.backend.create_container(&a).await?;
    two.backend.create_volume(&b).await?;
    let seen_one = one.backend.observe().await?;
    let seen_two = two.backend.observe().await?;
    assert_eq!(seen_one.keys().collect::<Vec<_>>(), [&a.workspace]);
    assert_eq!(seen_two.keys().collect::<Vec<_>>(), [&b.workspace]);
    // Acting on another instance's workspace finds nothing and touches nothing.
    two.backend.remove_container(a.workspace).await?;
    assert!(matches!(two.backend.start_container(a.workspace).await, Err(BackendError::NoContainer)));
    one.backend.remove_volume(b.workspace).await?;
    assert_eq!(one.backend.observe().await?, seen_one);
    assert_eq!(two.backend.observe().await?, seen_two);
    Ok(())
}

#[tokio::test]
async fn unknown_image_is_image_not_found() -> TestResult {
    let env = env();
    let s = spec("cove/no-such-image:0", "ghost");
    match env.backend.create_container(&s).await {
        Err(BackendError::ImageNotFound(image)) => assert_eq!(image, "cove/no-such-image:0"),
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn missing_socket_is_unreachable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("engine.sock");
    // bollard only makes a client for a socket file that exists; the engine then goes away.
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let endpoint = format!("unix://{}", path.display());
    let docker = Docker::connect_with_host(&endpoint)?;
    drop(listener);
    std::fs::remove_file(&path)?;
    let backend = DockerBackend::new(docker, endpoint.clone(), "test-unreachable".into());
    match backend.observe().await {
        Err(BackendError::Unreachable { endpoint: e, message }) => {
            assert_eq!(e, endpoint);
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(matches!(backend.ping().await, Err(BackendError::Unreachable { .. })));
    Ok(())
}

#[tokio::test]
async fn ping_names_the_engine() -> TestResult {
    let env = env();
    let info = env.backend.ping().await?;
    assert!(["podman", "docker"].contains(&info.kind.as_str()), "{info:?}");
    assert!(!info.version.is_empty(), "{info:?}");
    assert_eq!(info.endpoint, endpoint());
    Ok(())
}

/// Slow (a minute or two): debootstraps Debian and builds Cove's default image, then
/// checks it as the workspace user.
#[tokio::test]
async fn base_image_bootstrap() -> TestResult {
    let docker = client();
    let mut lines = 0usize;
    let tag = bootstrap_base_image(&docker, |l| {
        lines += 1;
        eprintln!("base image: {l}");
    })
    .await?;
    assert!(tag.starts_with("cove/base:"), "{tag}");
    assert!(lines > 0);

    let env = env();
    let b = &env.backend;
    let s = spec(BASE_IMAGE, "base");
    b.create_container(&s).await?;
    b.start_container(s.workspace).await?;
    let out = exec(
        b,
        s.workspace,
        "id -u; sudo -n true && echo sudo-ok; git --version; python3 -c 'print(6*7)'; ls -ld ~/project | cut -d' ' -f3",
    )
    .await?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(out.exit, Some(0), "{out:?}");
    assert_eq!(lines.len(), 5, "{out:?}");
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "sudo-ok");
    assert!(lines[2].starts_with("git version"), "{out:?}");
    assert_eq!(lines[3], "42");
    assert_eq!(lines[4], "cove");
    let keys = exec(b, s.workspace, "ls /etc/ssh/ | grep -c ssh_host_ || true").await?;
    assert_eq!(keys.stdout.trim(), "0", "the image must not carry SSH host keys");
    // The hashed tag names the same image.
    let (latest, hashed) = (docker.inspect_image(BASE_IMAGE).await?, docker.inspect_image(&tag).await?);
    assert_eq!(latest.id, hashed.id);
    Ok(())
}

/// Guards against a sweep that silently does nothing: objects of a swept instance are gone.
#[tokio::test]
async fn sweep_removes_everything() -> TestResult {
    let image = tiny().await;
    let instance;
    {
        let env = env();
        let s = spec(&image, "swept");
        env.backend.create_container(&s).await?;
        env.backend.start_container(s.workspace).await?;
        instance = env._sweep.instance.clone();
    }
    let backend = DockerBackend::new(client(), endpoint(), instance);
    assert!(backend.observe().await?.is_empty());
    Ok(())
}
