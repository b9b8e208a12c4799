//! The editor: code-server (VS Code in the browser), when Cove mounted one at
//! `/.cove/editor` (`cove editor install` on the host). The agent runs it as the workspace
//! user on a unix socket in the user's part of the run directory, which the control plane's
//! proxy forwards `code--<workspace>--<owner>` to, restarts it with exponential backoff when
//! it exits, and stops it when the workspace stops.
//!
//! code-server's own login is off (`--auth none`): the socket is reachable only from the
//! host, and the proxy in front of it authenticates and authorizes every request. Its user
//! data and extensions live under the home, on the persistent volume.
//!
//! Activity: the editor's traffic goes through the proxy, which counts it (see
//! `cove_proxy::WebSocketActivity` for why an idle open tab does not count). The agent adds
//! nothing of its own: code-server's `/healthz` `lastHeartbeat` moves while any tab is
//! open, so it says the editor is alive, not that anybody uses it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;

use crate::lifecycle::{EnvOverrides, Lifecycle};
use crate::user::WorkspaceUser;

/// The socket code-server listens on, in the run directory's user part.
pub const SOCKET_NAME: &str = "code.sock";
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run this long resets the backoff: the editor was working.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long code-server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the pieces are.
#[derive(Clone, Debug)]
pub struct EditorConfig {
    /// `/.cove/editor`: `node/bin/node` and `node_modules/code-server`.
    pub dir: PathBuf,
    /// Where code-server listens (`/.cove/run/user/code.sock`).
    pub socket: PathBuf,
    /// The folder it opens (`~/project`).
    pub folder: PathBuf,
}

impl EditorConfig {
    pub(crate) fn node(&self) -> PathBuf {
        self.dir.join("node/bin/node")
    }

    /// code-server's user data (settings, state; extensions in its `extensions/`), on the
    /// persistent volume.
    pub(crate) fn user_data(&self, user: &WorkspaceUser) -> PathBuf {
        user.home.join(".local/share/code-server")
    }

    /// The flags that point code-server at [`Self::user_data`], for the server and for its
    /// `--install-extension` runs alike.
    pub(crate) fn data_args(&self, user: &WorkspaceUser) -> Vec<std::ffi::OsString> {
        let data = self.user_data(user);
        vec!["--user-data-dir".into(), data.clone().into(), "--extensions-dir".into(), data.join("extensions").into()]
    }

    pub(crate) fn entry(&self) -> PathBuf {
        self.dir.join("node_modules/code-server/out/node/entry.js")
    }

    /// Whether an editor is mounted at all.
    pub fn present(&self) -> bool {
        self.node().is_file() && self.entry().is_file()
    }

    /// code-server's command line (after the node binary).
    pub fn args(&self, user: &WorkspaceUser) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![self.entry().into()];
        for flag in [
            "--auth=none",
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            "--socket-mode=600",
        ] {
            args.push(flag.into());
        }
        args.push("--socket".into());
        args.push(self.socket.clone().into());
        args.extend(self.data_args(user));
        args.push(self.folder.clone().into());
        args
    }
}

/// What the supervisor knows, for the agent's health answer.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EditorStatus {
    /// "starting", "running", "backing_off", "stopped".
    pub state: String,
    pub pid: Option<u32>,
    /// How many times it was restarted after an exit.
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// A running supervisor: its status, and the way to stop it.
#[derive(Clone)]
pub struct Editor {
    config: EditorConfig,
    status: Arc<Mutex<EditorStatus>>,
    /// The configuration's environment the running code-server got.
    env: Arc<Mutex<EnvOverrides>>,
    stop: watch::Sender<bool>,
    restart: Arc<watch::Sender<u64>>,
    done: watch::Receiver<bool>,
}

impl Editor {
    pub fn status(&self) -> EditorStatus {
        lock(&self.status).clone()
    }

    pub fn config(&self) -> &EditorConfig {
        &self.config
    }

    /// Whether code-server runs with another environment than `env`.
    pub fn env_differs(&self, env: &EnvOverrides) -> bool {
        *lock(&self.env) != *env
    }

    /// Restarts code-server at once (no backoff), for it to load new extensions and the
    /// configuration's environment.
    pub fn restart(&self) {
        self.restart.send_modify(|generation| *generation += 1);
    }

    /// Stops code-server (SIGTERM, then SIGKILL after a grace) and waits for the supervisor.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A plain status record: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts supervising code-server, if one is mounted. Each run of it gets the
/// configuration's environment as `lifecycle` has it then (empty until devcontainer.json is
/// read: [`Editor::restart`] after that).
pub fn start(config: EditorConfig, user: Arc<WorkspaceUser>, lifecycle: Lifecycle) -> Option<Editor> {
    if !config.present() {
        return None;
    }
    let status = Arc::new(Mutex::new(EditorStatus { state: "starting".into(), ..Default::default() }));
    let (stop, stopped) = watch::channel(false);
    let (restart, restarts) = watch::channel(0);
    let (done_tx, done) = watch::channel(false);
    let env = Arc::new(Mutex::new(EnvOverrides::new()));
    let editor = Editor {
        config: config.clone(),
        status: status.clone(),
        env: env.clone(),
        stop,
        restart: Arc::new(restart),
        done,
    };
    tokio::spawn(async move {
        let run = Run { config, user, lifecycle, status, env };
        supervise(run, stopped, restarts).await;
        let _ = done_tx.send(true);
    });
    Some(editor)
}

/// What the supervisor runs code-server with, and where it says how it goes.
struct Run {
    config: EditorConfig,
    user: Arc<WorkspaceUser>,
    lifecycle: Lifecycle,
    status: Arc<Mutex<EditorStatus>>,
    env: Arc<Mutex<EnvOverrides>>,
}

async fn supervise(run: Run, mut stopped: watch::Receiver<bool>, mut restarts: watch::Receiver<u64>) {
    let Run { config, user, lifecycle, status, env } = run;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stop_asked = *stopped.borrow();
        if stop_asked {
            break;
        }
        remove_stale_socket(&config.socket);
        let mut command = user.command(config.node());
        let configured = lifecycle.env();
        crate::lifecycle::apply(&mut command, &configured);
        *lock(&env) = configured;
        restarts.mark_unchanged();
        // A group of its own: what it started dies with it (below), so a crashed code-server
        // leaves no server process behind to hold its data directory.
        command
            .process_group(0)
            .args(config.args(&user))
            .current_dir(&config.folder)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let exit = match command.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                println!("cove agent: editor: started code-server (pid {})", pid.unwrap_or(0));
                {
                    let mut s = lock(&status);
                    s.state = "running".into();
                    s.pid = pid;
                }
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(relay(out));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(relay(err));
                }
                tokio::select! {
                    exit = child.wait() => {
                        kill_group(pid);
                        match exit {
                            Ok(status) => status.to_string(),
                            Err(e) => format!("cannot wait for it: {e}"),
                        }
                    }
                    _ = stop_wanted(&mut stopped) => {
                        terminate(&mut child).await;
                        break;
                    }
                    Ok(()) = restarts.changed() => {
                        println!("cove agent: editor: restarting code-server for the workspace's configuration");
                        terminate(&mut child).await;
                        continue;
                    }
                }
            }
            Err(e) => format!("cannot start {}: {e}", config.node().display()),
        };
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        println!("cove agent: editor: code-server ended ({exit}); restarting in {} s", backoff.as_secs());
        {
            let mut s = lock(&status);
            s.state = "backing_off".into();
            s.pid = None;
            s.last_exit = Some(exit);
            s.restarts += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_wanted(&mut stopped) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let mut s = lock(&status);
    s.state = "stopped".into();
    s.pid = None;
    println!("cove agent: editor: stopped");
}

/// Resolves once a stop was asked for (the guard `wait_for` returns is not `Send`).
async fn stop_wanted(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// SIGTERM, a grace, then SIGKILL; then whatever is left of its process group.
async fn terminate(child: &mut tokio::process::Child) {
    let pid = child.id();
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    } else {
        let _ = child.kill().await;
    }
    kill_group(pid);
}

/// Kills what code-server's process (the leader of group `pid`) left running when it ended.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (nothing left) is the usual answer.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A socket file left by a killed code-server would make the next one fail to listen.
fn remove_stale_socket(socket: &Path) {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => println!("cove agent: editor: cannot remove the old {}: {e}", socket.display()),
    }
}

/// code-server's output, line by line, into the agent's (the container's log).
async fn relay(stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("cove agent: editor: {line}");
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let user = WorkspaceUser {
            name: "cove".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/cove".into(),
            shell: "/bin/bash".into(),
            switch: true,
            secrets: crate::user::SecretEnv::default(),
        };
        let config = EditorConfig {
            dir: "/.cove/editor".into(),
            socket: "/.cove/run/user/code.sock".into(),
            folder: "/home/cove/project".into(),
        };
        let args: Vec<String> = config.args(&user).into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[0], "/.cove/editor/node_modules/code-server/out/node/entry.js");
        assert!(args.contains(&"--auth=none".to_string()), "{args:?}");
        let at = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].as_str());
        assert_eq!(at("--socket"), Some("/.cove/run/user/code.sock"));
        assert_eq!(at("--user-data-dir"), Some("/home/cove/.local/share/code-server"));
        assert_eq!(args.last().map(String::as_str), Some("/home/cove/project"));
        assert!(!config.present());
    }

    /// The supervisor restarts what exits, and stops what runs: with a stand-in editor.
    #[tokio::test]
    async fn restarts_with_backoff_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("node/bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/code-server/out/node")).unwrap();
        std::fs::write(dir.path().join("node_modules/code-server/out/node/entry.js"), "").unwrap();
        // The stand-in "node" exits at once on its first run, then stays up.
        let marker = dir.path().join("ran-once");
        let script =
            format!("#!/bin/sh\nif [ -e {m} ]; then exec sleep 600; fi\ntouch {m}\nexit 3\n", m = marker.display());
        let node = dir.path().join("node/bin/node");
        std::fs::write(&node, script).unwrap();
        std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let user = WorkspaceUser::current(dir.path());
        let config =
            EditorConfig { dir: dir.path().into(), socket: dir.path().join("code.sock"), folder: dir.path().into() };
        let editor = start(config, Arc::new(user), Lifecycle::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = editor.status();
            if s.restarts == 1 && s.state == "running" {
                assert!(s.last_exit.as_deref().unwrap_or_default().contains('3'), "{s:?}");
                break;
            }
            assert!(Instant::now() < deadline, "not restarted: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = editor.status().pid.unwrap();
        editor.stop().await;
        assert_eq!(editor.status().state, "stopped");
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(
            !alive || std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z"),
            "still running"
        );
    }
}
