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
    fn node(&self) -> PathBuf {
        self.dir.join("node/bin/node")
    }

    fn entry(&self) -> PathBuf {
        self.dir.join("node_modules/code-server/out/node/entry.js")
    }

    /// Whether an editor is mounted at all.
    pub fn present(&self) -> bool {
        self.node().is_file() && self.entry().is_file()
    }

    /// code-server's command line (after the node binary).
    pub fn args(&self, user: &WorkspaceUser) -> Vec<std::ffi::OsString> {
        let data = user.home.join(".local/share/code-server");
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
        args.push("--user-data-dir".into());
        args.push(data.clone().into());
        args.push("--extensions-dir".into());
        args.push(data.join("extensions").into());
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
    pub config: EditorConfig,
    status: Arc<Mutex<EditorStatus>>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl Editor {
    pub fn status(&self) -> EditorStatus {
        lock(&self.status).clone()
    }

    /// Stops code-server (SIGTERM, then SIGKILL after a grace) and waits for the supervisor.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

/// devcontainer.json's `customizations.vscode` for the injected editor. `settings` go into
/// the user's settings file (a key the user already set keeps the user's value);
/// `extensions` are installed from `.vsix` files in the project's `.devcontainer/` folder
/// (`<publisher>.<name>*.vsix`, as the marketplace names them), since no marketplace or
/// Open VSX is reachable from Cove. Returns one line per thing done or not done.
pub async fn customize(
    config: &EditorConfig,
    user: &WorkspaceUser,
    vscode: &cove_devcontainer::model::VsCode,
    project: &Path,
) -> Vec<String> {
    let mut out = vec![];
    let data = user.home.join(".local/share/code-server");
    if !vscode.settings.is_empty() {
        let file = data.join("User/settings.json");
        out.push(match merge_settings(user, &file, &vscode.settings) {
            Ok(n) => format!("editor: {n} devcontainer.json settings added to {}", file.display()),
            Err(e) => format!("editor: cannot add the devcontainer.json settings to {}: {e}", file.display()),
        });
    }
    for id in &vscode.extensions {
        let Some(vsix) = find_vsix(&project.join(".devcontainer"), id) else {
            out.push(format!(
                "editor: extension {id} not installed: no marketplace or Open VSX is reachable from Cove; put {id}.vsix in .devcontainer/ to have it installed"
            ));
            continue;
        };
        let mut command = user.command(config.node());
        command
            .arg(config.entry())
            .arg("--user-data-dir")
            .arg(&data)
            .arg("--extensions-dir")
            .arg(data.join("extensions"))
            .arg("--install-extension")
            .arg(&vsix)
            .stdin(Stdio::null());
        out.push(match command.output().await {
            Ok(o) if o.status.success() => format!("editor: extension {id} installed from {}", vsix.display()),
            Ok(o) => format!(
                "editor: extension {id} from {} failed to install ({}): {}",
                vsix.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("editor: cannot run code-server to install {id}: {e}"),
        });
    }
    out
}

/// `<id>.vsix` or `<id>-<version>.vsix`, ids compared without case, as VS Code does.
fn find_vsix(dir: &Path, id: &str) -> Option<PathBuf> {
    let id = id.to_ascii_lowercase();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_ascii_lowercase) else { return false };
            let Some(stem) = name.strip_suffix(".vsix") else { return false };
            stem == id || stem.strip_prefix(&id).is_some_and(|rest| rest.starts_with('-') || rest.starts_with('@'))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Adds the keys the file lacks; returns how many. A file that is not a JSON(C) object is
/// left alone (an error): it is the user's.
fn merge_settings(
    user: &WorkspaceUser,
    file: &Path,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let mut current = match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => match cove_devcontainer::jsonc::parse(&text) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => anyhow::bail!("it is not a JSON object"),
            Err(e) => anyhow::bail!("it does not parse: {e}"),
        },
        _ => serde_json::Map::new(),
    };
    let mut added = 0;
    for (k, v) in settings {
        if !current.contains_key(k) {
            current.insert(k.clone(), v.clone());
            added += 1;
        }
    }
    if added > 0 {
        if let Some(dir) = file.parent() {
            crate::ensure_user_dir(user, dir)?;
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(current))?;
        std::fs::write(file, text).with_context(|| format!("write {}", file.display()))?;
        if user.switch {
            nix::unistd::chown(file, Some(user.uid.into()), Some(user.gid.into()))
                .with_context(|| format!("give {} to {}", file.display(), user.name))?;
        }
    }
    Ok(added)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A plain status record: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts supervising code-server, if one is mounted.
pub fn start(config: EditorConfig, user: Arc<WorkspaceUser>) -> Option<Editor> {
    if !config.present() {
        return None;
    }
    let status = Arc::new(Mutex::new(EditorStatus { state: "starting".into(), ..Default::default() }));
    let (stop, stopped) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let editor = Editor { config: config.clone(), status: status.clone(), stop, done };
    tokio::spawn(async move {
        supervise(config, user, status, stopped).await;
        let _ = done_tx.send(true);
    });
    Some(editor)
}

async fn supervise(
    config: EditorConfig,
    user: Arc<WorkspaceUser>,
    status: Arc<Mutex<EditorStatus>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stop_asked = *stopped.borrow();
        if stop_asked {
            break;
        }
        remove_stale_socket(&config.socket);
        let mut command = user.command(config.node());
        command
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
                    exit = child.wait() => match exit {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("cannot wait for it: {e}"),
                    },
                    _ = stop_wanted(&mut stopped) => {
                        terminate(&mut child).await;
                        break;
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

/// SIGTERM, a grace, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
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
    fn settings_are_added_where_the_user_set_nothing_and_vsix_files_are_found_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let user = WorkspaceUser {
            name: "me".into(),
            uid: 0,
            gid: 0,
            home: dir.path().into(),
            shell: "/bin/sh".into(),
            switch: false,
        };
        let file = dir.path().join("User/settings.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{\n  // mine\n  \"editor.tabSize\": 8,\n}").unwrap();
        let wanted = serde_json::json!({"editor.tabSize": 2, "files.eol": "\n"});
        assert_eq!(merge_settings(&user, &file, wanted.as_object().unwrap()).unwrap(), 1);
        let now: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(now, serde_json::json!({"editor.tabSize": 8, "files.eol": "\n"}));
        assert_eq!(merge_settings(&user, &file, wanted.as_object().unwrap()).unwrap(), 0);

        let dc = dir.path().join(".devcontainer");
        std::fs::create_dir_all(&dc).unwrap();
        for f in ["ms-python.python-2024.1.0.vsix", "ms-python.pythonista.vsix", "Foo.Bar.vsix", "notes.txt"] {
            std::fs::write(dc.join(f), "").unwrap();
        }
        assert_eq!(find_vsix(&dc, "ms-python.python"), Some(dc.join("ms-python.python-2024.1.0.vsix")));
        assert_eq!(find_vsix(&dc, "foo.bar"), Some(dc.join("Foo.Bar.vsix")));
        assert_eq!(find_vsix(&dc, "rust-lang.rust-analyzer"), None);
    }

    #[test]
    fn command_line() {
        let user = WorkspaceUser {
            name: "cove".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/cove".into(),
            shell: "/bin/bash".into(),
            switch: true,
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
        let user = WorkspaceUser {
            name: "me".into(),
            uid: nix::unistd::Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
            home: dir.path().into(),
            shell: "/bin/sh".into(),
            switch: false,
        };
        let config =
            EditorConfig { dir: dir.path().into(), socket: dir.path().join("code.sock"), folder: dir.path().into() };
        let editor = start(config, Arc::new(user)).unwrap();
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
