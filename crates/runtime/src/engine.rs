//! Finding a container engine to talk to, so that `cove server` works out of the box on a
//! machine with Docker, with a running Podman service, or with only the `podman` program
//! installed (then Cove starts `podman system service` itself and stops it on exit).
//!
//! The search order is: the configured endpoint, `DOCKER_HOST`, the rootful Podman
//! socket, the rootless Podman socket, Docker's socket, and finally a Podman service of
//! our own. A socket that exists but does not answer is still chosen: the server must
//! come up while the engine is down, and report it as unreachable until it returns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bollard::Docker;

use crate::BackendError;

const ROOTFUL_PODMAN: &str = "/run/podman/podman.sock";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// How long a Podman service we started may take to answer.
const SERVICE_DEADLINE: Duration = Duration::from_secs(15);
/// bollard's per-request timeout (until the response starts; streams are not cut).
const REQUEST_TIMEOUT_SECS: u64 = 120;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `unix:///path` or `tcp://host:port`; when set, no other engine is tried.
    pub endpoint: Option<String>,
    /// Where a Podman service started by Cove puts its socket and log.
    pub state_dir: PathBuf,
}

/// A client for the engine that was found, and the service we started for it, if any.
pub struct Engine {
    /// `None` when the configured socket does not exist yet.
    pub docker: Option<Docker>,
    /// The endpoint in `unix://` or `tcp://` form, for messages.
    pub endpoint: String,
    /// Something worth telling the operator about how the engine was found.
    pub note: Option<String>,
    /// Kills the Podman service we started when the engine is dropped.
    service: Option<ServiceGuard>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .field("note", &self.note)
            .field("owns_service", &self.service.is_some())
            .finish()
    }
}

/// A `podman system service` child of ours. Containers outlive it (conmon runs them), so
/// killing it on the way out loses nothing.
struct ServiceGuard {
    child: Child,
    socket: PathBuf,
}

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed service leaves its socket behind; a stale socket would make the next
        // start believe a service is there.
        let _ = std::fs::remove_file(&self.socket);
    }
}

pub async fn connect(config: &EngineConfig) -> Result<Engine, BackendError> {
    if let Some(endpoint) = &config.endpoint {
        // An endpoint someone configured is used as is: falling back to another engine
        // would put workspaces somewhere nobody asked for.
        if let Some(path) = endpoint.strip_prefix("unix://") {
            if !Path::new(path).exists() {
                // The engine may come up later; the backend connects once the socket exists.
                return Ok(Engine { docker: None, endpoint: endpoint.clone(), note: None, service: None });
            }
        }
        return client(endpoint, None);
    }

    let mut skipped = None;
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if !host.is_empty() {
            match host.strip_prefix("unix://") {
                Some(path) if !Path::new(path).exists() => {
                    skipped = Some(format!("DOCKER_HOST={host} does not exist"));
                }
                _ => return client(&host, None),
            }
        }
    }
    let mut candidates = vec![PathBuf::from(ROOTFUL_PODMAN)];
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(Path::new(&dir).join("podman/podman.sock"));
    }
    candidates.push(PathBuf::from(DOCKER_SOCKET));
    if let Some(socket) = candidates.iter().find(|p| p.exists()) {
        let note = skipped.map(|s| format!("{s}; using {} instead", socket.display()));
        return client(&format!("unix://{}", socket.display()), note);
    }

    if let Some(podman) = find_program("podman") {
        let mut engine = start_podman_service(&podman, &config.state_dir).await?;
        if let Some(s) = skipped {
            engine.note = engine.note.map(|n| format!("{s}; {n}"));
        }
        return Ok(engine);
    }
    Err(BackendError::Unreachable {
        endpoint: "(none)".into(),
        message: "no container engine found: install Podman (apt-get install podman) or Docker, or set DOCKER_HOST"
            .into(),
    })
}

fn client(endpoint: &str, note: Option<String>) -> Result<Engine, BackendError> {
    let docker = client_for(endpoint)?;
    Ok(Engine { docker: Some(docker), endpoint: endpoint.to_string(), note, service: None })
}

/// A bollard client for `endpoint`; `Unreachable` while a unix socket does not exist.
pub(crate) fn client_for(endpoint: &str) -> Result<Docker, BackendError> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !Path::new(path).exists() {
            return Err(BackendError::Unreachable {
                endpoint: endpoint.to_string(),
                message: "the socket does not exist; start the engine or fix the configured endpoint".into(),
            });
        }
    }
    Ok(Docker::connect_with_host(endpoint)
        .map_err(|e| crate::docker::engine_error(endpoint, "connect", e))?
        .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS)))
}

impl Engine {
    /// A backend on this engine that labels and sees only `instance`'s objects.
    pub fn backend(&self, instance: String) -> crate::DockerBackend {
        match &self.docker {
            Some(docker) => crate::DockerBackend::new(docker.clone(), self.endpoint.clone(), instance),
            None => crate::DockerBackend::lazy(self.endpoint.clone(), instance),
        }
    }

    /// The client, for what the `Backend` trait does not cover (building images).
    pub fn client(&self) -> Result<Docker, BackendError> {
        match &self.docker {
            Some(docker) => Ok(docker.clone()),
            None => client_for(&self.endpoint),
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Starts `podman system service` on a socket in `state_dir`, or reuses one that a
/// previous run left answering there.
async fn start_podman_service(podman: &Path, state_dir: &Path) -> Result<Engine, BackendError> {
    let socket = state_dir.join("podman.sock");
    let endpoint = format!("unix://{}", socket.display());
    let cannot = |message: String| BackendError::Unreachable { endpoint: endpoint.clone(), message };

    if socket.exists() {
        if let Ok(docker) = Docker::connect_with_host(&endpoint) {
            if docker.ping().await.is_ok() {
                let note = format!("using the Podman API service already running at {endpoint}");
                return client(&endpoint, Some(note));
            }
        }
        std::fs::remove_file(&socket)
            .map_err(|e| cannot(format!("cannot remove the stale socket {}: {e}", socket.display())))?;
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| cannot(format!("cannot create the state directory {}: {e}", state_dir.display())))?;
    let log_path = state_dir.join("podman-service.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| cannot(format!("cannot create the log file {}: {e}", log_path.display())))?;
    // The environment is inherited on purpose: CONTAINERS_CONF and friends must apply.
    let child = Command::new(podman)
        .args(["system", "service", "--time=0", &endpoint])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| cannot(format!("cannot run {} system service: {e}", podman.display())))?;
    let mut guard = ServiceGuard { child, socket: socket.clone() };

    let deadline = tokio::time::Instant::now() + SERVICE_DEADLINE;
    loop {
        if socket.exists() {
            if let Ok(docker) = Docker::connect_with_host(&endpoint) {
                if docker.ping().await.is_ok() {
                    break;
                }
            }
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            return Err(cannot(format!("`podman system service` exited ({status}); see {}", log_path.display())));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(cannot(format!(
                "`podman system service` did not answer within {} s; see {}",
                SERVICE_DEADLINE.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let note = format!("started `podman system service` for Podman's API at {endpoint} (log: {})", log_path.display());
    let mut engine = client(&endpoint, Some(note))?;
    engine.service = Some(guard);
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_configured_socket_that_does_not_exist_yet_is_connected_lazily() {
        let config = EngineConfig {
            endpoint: Some("unix:///nonexistent/cove-test.sock".into()),
            state_dir: std::env::temp_dir(),
        };
        // The server must start while its engine is down, and never fall back to another.
        let engine = connect(&config).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.endpoint, "unix:///nonexistent/cove-test.sock");
        assert!(engine.client().is_err());
        match crate::Backend::observe(&engine.backend("t".into())).await {
            Err(BackendError::Unreachable { endpoint, message }) => {
                assert_eq!(endpoint, "unix:///nonexistent/cove-test.sock");
                assert!(message.contains("does not exist"), "{message}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn configured_tcp_endpoint_is_taken_without_probing() {
        // Port 9 on loopback: nothing answers, yet the server must be able to start.
        let config = EngineConfig { endpoint: Some("tcp://127.0.0.1:9".into()), state_dir: std::env::temp_dir() };
        let engine = connect(&config).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.endpoint, "tcp://127.0.0.1:9");
        let backend = engine.backend("t".into());
        use crate::Backend;
        assert!(matches!(backend.observe().await, Err(BackendError::Unreachable { .. })));
    }

    /// The last resort of `connect`, on the real `podman` program: the service answers,
    /// and dropping the engine stops it and removes its socket.
    #[tokio::test]
    async fn spawns_and_stops_a_podman_service() {
        let Some(podman) = find_program("podman") else {
            panic!("this test needs the `podman` program on PATH (apt-get install podman)");
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let engine = start_podman_service(&podman, dir.path()).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(engine.note.as_deref().unwrap_or_default().contains("started `podman system service`"));
        let info = {
            use crate::Backend;
            engine.backend("t".into()).ping().await
        };
        assert_eq!(info.map(|i| i.kind).unwrap_or_else(|e| panic!("{e}")), "podman");
        let socket = dir.path().join("podman.sock");
        assert!(socket.exists());
        drop(engine);
        assert!(!socket.exists(), "the socket of the stopped service was left behind");
    }
}
