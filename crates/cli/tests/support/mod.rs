//! A harness for end-to-end tests of the `cove` binary: a real server process on port 0
//! with its own data dir and instance label, a logged-in CLI, and a sweep of every engine
//! object carrying the instance label when the test ends, passed or failed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cove_core::{Observed, WorkspaceId};
use cove_runtime::engine::{self, EngineConfig};
use cove_runtime::{Backend, DockerBackend};
use serde_json::Value;

pub const COVE: &str = env!("CARGO_BIN_EXE_cove");

/// The engine endpoint tests use: `DOCKER_HOST`, as `scripts/test` exports it.
pub fn podman_endpoint() -> String {
    std::env::var("DOCKER_HOST")
        .expect("DOCKER_HOST is not set: run the tests through `scripts/test`, which starts Podman's API service")
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A backend with the test's instance label, for looking at (and meddling with) what the
/// server made, as a human with `podman` would.
pub struct Engine {
    pub backend: Arc<DockerBackend>,
    rt: tokio::runtime::Runtime,
    _engine: engine::Engine,
}

impl Engine {
    pub fn new(endpoint: &str, instance: &str) -> Self {
        let rt = rt();
        let engine = rt
            .block_on(engine::connect(&EngineConfig {
                endpoint: Some(endpoint.to_string()),
                state_dir: std::env::temp_dir(),
            }))
            .unwrap();
        let backend = Arc::new(engine.backend(instance.to_string()));
        Self { backend, rt, _engine: engine }
    }

    pub fn observe(&self) -> std::collections::HashMap<WorkspaceId, Observed> {
        self.rt.block_on(self.backend.observe()).unwrap()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Removes everything carrying the instance label.
    pub fn sweep(&self) {
        let Ok(all) = self.rt.block_on(self.backend.observe()) else { return };
        for (id, seen) in all {
            if seen.container.is_some() {
                let _ = self.rt.block_on(self.backend.remove_container(id));
            }
            if seen.volume {
                let _ = self.rt.block_on(self.backend.remove_volume(id));
            }
        }
    }

    /// Cove's Debian base image, built once per machine (cached by content); a file lock
    /// keeps tests that start together from running debootstrap side by side.
    pub fn base_image(endpoint: &str) -> String {
        let out = Command::new("flock")
            .arg(std::env::temp_dir().join("cove-base-image.lock"))
            .args([COVE, "image", "bootstrap", "--engine", endpoint])
            .env("COVE_DATA_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "building the base image failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The tiny test image, built once per machine; its own file lock keeps tests that
    /// start together on a fresh machine from building the same tag side by side.
    pub fn tiny_image(endpoint: &str) -> String {
        let out = Command::new("flock")
            .arg(std::env::temp_dir().join("cove-tiny-image.lock"))
            .args([COVE, "image", "bootstrap", "--tiny", "--engine", endpoint])
            .env("COVE_DATA_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "building the tiny image failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

pub struct TestServer {
    pub url: String,
    pub instance: String,
    pub endpoint: String,
    pub image: String,
    pub data_dir: PathBuf,
    pub config_dir: PathBuf,
    pub engine: Engine,
    /// Where the server's log (stderr) goes when set before a `spawn`; inherited otherwise.
    pub log: Option<PathBuf>,
    child: Option<Child>,
    _dirs: tempfile::TempDir,
}

pub struct Options {
    pub endpoint: String,
    /// The engine to check and sweep with, when the server's own is not up yet.
    pub sweep_endpoint: String,
}

impl TestServer {
    /// A server on Podman, logged in as admin.
    pub fn start() -> Self {
        let endpoint = podman_endpoint();
        Self::start_with(Options { endpoint: endpoint.clone(), sweep_endpoint: endpoint })
    }

    pub fn start_with(options: Options) -> Self {
        let dirs = tempfile::tempdir().unwrap();
        let instance = format!("test-{}", uuid::Uuid::new_v4().simple());
        let image = Engine::tiny_image(&options.sweep_endpoint);
        let engine = Engine::new(&options.sweep_endpoint, &instance);
        let mut server = Self {
            url: String::new(),
            instance,
            endpoint: options.endpoint,
            image,
            data_dir: dirs.path().join("data"),
            config_dir: dirs.path().join("config"),
            engine,
            log: None,
            child: None,
            _dirs: dirs,
        };
        server.spawn();
        let password_file = server.data_dir.join("initial-admin-password");
        server.ok(&[
            "login",
            &server.url.clone(),
            "--username",
            "admin",
            "--password-file",
            password_file.to_str().unwrap(),
        ]);
        server
    }

    /// Starts (or restarts) the server process on the same data dir.
    pub fn spawn(&mut self) {
        let mut child = Command::new(COVE)
            .args(["server", "--listen", "127.0.0.1:0", "--reconcile-interval-ms", "500", "--max-backoff-ms", "2000"])
            .args(["--idle-check-interval-ms", "500"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--engine", &self.endpoint, "--instance", &self.instance, "--default-image", &self.image])
            .stdout(Stdio::piped())
            .stderr(match &self.log {
                Some(path) => Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()),
                None => Stdio::inherit(),
            })
            // A log kept for searching is kept at its most talkative.
            .envs(self.log.as_ref().map(|_| ("COVE_LOG", "debug")))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("the server exited before listening").unwrap();
        let url = first.strip_prefix("cove server listening on ").expect("unexpected first line").to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cove(&self, args: &[&str]) -> Output {
        Command::new(COVE)
            .args(args)
            .env("COVE_CONFIG_DIR", &self.config_dir)
            .env("COVE_URL", &self.url)
            .env_remove("COVE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a CLI command with `stdin` as its input (a password, a secret's value).
    pub fn cove_fed(&self, args: &[&str], stdin: &str) -> Output {
        self.cove_fed_as(&self.config_dir, args, stdin)
    }

    /// [`Self::cove_fed`] with another login: the CLI configuration in `config`.
    pub fn cove_fed_as(&self, config: &Path, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(COVE)
            .args(args)
            .env("COVE_CONFIG_DIR", config)
            .env("COVE_URL", &self.url)
            .env_remove("COVE_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cove(args);
        assert!(
            out.status.success(),
            "`cove {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a CLI command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cove(args);
        assert!(!out.status.success(), "`cove {}` should have failed", args.join(" "));
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn show(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["show", name, "--json"])).unwrap()
    }

    pub fn token(&self) -> String {
        let text = std::fs::read_to_string(self.config_dir.join("config.toml")).unwrap();
        let saved: toml::Value = toml::from_str(&text).unwrap();
        saved["token"].as_str().unwrap().to_string()
    }

    /// Polls `show NAME` until `pred` holds.
    pub fn wait_for(&self, name: &str, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        poll(what, timeout, || {
            let out = self.cove(&["show", name, "--json"]);
            if !out.status.success() {
                return None;
            }
            let ws: Value = serde_json::from_slice(&out.stdout).ok()?;
            pred(&ws).then_some(ws)
        })
    }

    /// Polls `show NAME` until it runs and its agent has said ready since the workspace last
    /// changed (`updated_at`). The previous start's last report is shown until the new
    /// agent's first; after a restart, `updated_at` is when the stop had finished and the
    /// restart became a wish to run, so only this start's agent can have reported since.
    pub fn wait_for_agent_ready_again(&self, name: &str, timeout: Duration) -> Value {
        self.wait_for(name, "this start's agent to say ready", timeout, |ws| {
            let at = |v: &Value| v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            let reported_since = matches!(
                (at(&ws["agent"]["reported_at"]), at(&ws["updated_at"])),
                (Some(reported), Some(changed)) if reported > changed
            );
            state(ws) == ("Running", "Running") && ws["agent"]["state"] == "ready" && reported_since
        })
    }

    /// The admin's password, as the server wrote it on first start.
    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("initial-admin-password")).unwrap().trim().to_string()
    }

    /// The server's port (app hosts use it too).
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A workspace's run directory on the host (the agent's sockets and secret).
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("run").join(self.workspace_id(name).to_string())
    }

    /// The agent's socket and this start's secret, once the agent listens.
    pub fn agent_endpoint(&self, name: &str, timeout: Duration) -> (PathBuf, String) {
        let run = self.run_dir(name);
        let socket = run.join("agent.sock");
        let secret = poll("the agent's socket and secret", timeout, || {
            let secret = std::fs::read_to_string(run.join("secret")).ok()?;
            std::os::unix::net::UnixStream::connect(&socket).ok()?;
            Some(secret.trim().to_string())
        });
        (socket, secret)
    }

    pub fn workspace_id(&self, name: &str) -> WorkspaceId {
        self.show(name)["id"].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        self.engine.sweep();
    }
}

/// Runs `tests/browser/<script>` (playwright-core driving Debian's Chromium) with `env`
/// and the admin's password, screenshots under `target/browser`; fails the test unless the
/// script passed, and returns the JSON summary it printed last.
pub fn browser(server: &TestServer, script: &str, env: &[(&str, String)]) -> Value {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser");
    let out = Command::new("node")
        .arg(format!("tests/browser/{script}"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("COVE_USER", "admin")
        .env("COVE_PASSWORD", server.admin_password())
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("node must be installed (scripts/install-deps)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap()
}

/// `podman inspect -f FORMAT CONTAINER`, trimmed.
pub fn podman_inspect(container: &str, format: &str) -> String {
    let inspect = Command::new("podman").args(["inspect", "-f", format, container]).output().unwrap();
    assert!(inspect.status.success(), "podman inspect {container}: {}", String::from_utf8_lossy(&inspect.stderr));
    String::from_utf8(inspect.stdout).unwrap().trim().to_string()
}

/// The address of Podman container `name` on its network (a fixture server the tests start).
pub fn container_ip(name: &str) -> String {
    let ip = podman_inspect(name, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}");
    assert!(!ip.is_empty(), "container {name} has no address");
    ip
}

/// Calls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn state(ws: &Value) -> (&str, &str) {
    (ws["desired_state"].as_str().unwrap_or(""), ws["actual_state"].as_str().unwrap_or(""))
}

pub fn file_exists(p: &Path) -> bool {
    p.exists()
}
