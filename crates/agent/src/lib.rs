//! `cove agent`: the process Cove injects into every workspace (bind-mounted read-only from
//! the host, never baked into images), so that any reasonable Linux image becomes a full
//! workspace. It runs as the container's main process under the engine's init and:
//!
//! * prepares the workspace user (uid 1000, home on the persistent volume) if the image
//!   lacks one, and starts everything for the user as that user ([`user`]);
//! * serves one HTTP endpoint to the control plane, on a unix socket in the run directory
//!   that only the host can reach, guarded by a secret made fresh at every start
//!   ([`endpoint`]): health, and the services below;
//! * reports its state and the user's activity to the control plane ([`control`],
//!   [`activity`]), so that the idle stop covers terminals and SSH as well as HTTP;
//! * runs and supervises the editor, code-server, when Cove mounted one ([`editor`]).
//!
//! See `cove_core::agent` for the contract with the control plane.

#![deny(unsafe_code)]

pub mod activity;
pub mod control;
pub mod credential;
pub mod editor;
pub mod endpoint;
pub mod pty;
pub mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cove_core::agent::{self as contract, AgentState, StateReport};

pub use endpoint::Agent;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the agent finds what Cove mounted; the defaults are the paths in a workspace.
#[derive(Clone, Debug)]
pub struct Config {
    /// The image's root: `/` in a workspace (tests use a temporary directory).
    pub root: PathBuf,
    /// The run directory shared with the host (sockets, secret).
    pub run_dir: PathBuf,
    /// The editor's directory, if Cove mounted one.
    pub editor_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            run_dir: PathBuf::from(contract::RUN_DIR),
            editor_dir: PathBuf::from(contract::EDITOR_DIR),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT (the stop of the workspace).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    println!("cove agent {VERSION}: starting in workspace {host}");
    let control = control::Control::new(config.run_dir.join(contract::CONTROL_SOCKET));
    report_state(&control, AgentState::Starting, Some("preparing the workspace user".into())).await;

    let (user, prepared) = user::WorkspaceUser::prepare(&config.root).context("prepare the workspace user")?;
    if prepared.added_user {
        println!("cove agent: the image has no user with uid {}; added {:?}", user.uid, user.name);
    }
    if prepared.chowned_home {
        println!("cove agent: gave {} to {}", user.home.display(), user.name);
    }
    ensure_user_dir(&user, &user.home.join("project"))?;
    ensure_user_dir(&user, &config.run_dir.join(contract::USER_RUN_SUBDIR))?;

    let mut agent = Agent::new(user.clone(), control.clone(), new_secret());
    let editor = editor::EditorConfig {
        dir: config.editor_dir.clone(),
        socket: config.run_dir.join(contract::USER_RUN_SUBDIR).join(editor::SOCKET_NAME),
        folder: user.home.join("project"),
    };
    agent.editor = editor::start(editor, agent.user.clone());
    if agent.editor.is_none() {
        println!("cove agent: no editor in {} (cove editor install adds one)", config.editor_dir.display());
    }
    let listener = endpoint::bind(&config.run_dir, &agent).await.context("open the agent's socket")?;
    tokio::spawn(agent.activity.clone().report_loop(control.clone()));
    match credential::wire_git_config(&config.root) {
        Ok(true) => println!("cove agent: git asks Cove for tokens (credential helper in /etc/gitconfig)"),
        Ok(false) => {}
        Err(e) => println!("cove agent: cannot add the git credential helper to /etc/gitconfig: {e}"),
    }
    match credential::bind(&config.run_dir.join(contract::USER_RUN_SUBDIR), &user) {
        Ok(listener) => {
            tokio::spawn(credential::serve(listener, control.clone()));
        }
        Err(e) => println!("cove agent: cannot open the git credential socket: {e}"),
    }
    start_on_start_hook(&user);

    println!("cove agent: ready");
    report_state(&control, AgentState::Ready, None).await;
    let served = endpoint::serve(listener, agent.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = served => result.context("serve the agent's socket")?,
        _ = term.recv() => println!("cove agent: stopping"),
        _ = tokio::signal::ctrl_c() => println!("cove agent: stopping"),
    }
    if let Some(editor) = &agent.editor {
        editor.stop().await;
    }
    Ok(())
}

/// `cove agent git-credential get|store|erase`: git's credential helper, run as the user.
pub async fn git_credential(operation: &str) -> anyhow::Result<()> {
    credential::helper(Path::new(contract::RUN_DIR), operation).await
}

/// 256 random bits, hex: the secret the control plane must present on every request.
fn new_secret() -> Arc<str> {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes).into()
}

/// Makes `dir` (and its parents) and gives it to the user if it is new or root's.
fn ensure_user_dir(user: &user::WorkspaceUser, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if user.switch {
        let meta = std::fs::metadata(dir)?;
        if std::os::unix::fs::MetadataExt::uid(&meta) != user.uid {
            nix::unistd::chown(dir, Some(user.uid.into()), Some(user.gid.into()))
                .with_context(|| format!("give {} to {}", dir.display(), user.name))?;
        }
    }
    Ok(())
}

/// Tells the control plane how the agent is doing. Retried briefly in the background: the
/// control plane may be restarting, and its next look at the agent's health catches up.
async fn report_state(control: &control::Control, state: AgentState, message: Option<String>) {
    let report = StateReport { state, message, version: VERSION.into() };
    let control = control.clone();
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        for _ in 0..20 {
            match control.post("/v1/state", &report).await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "cannot report the agent's state yet"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    });
}

/// `~/.cove/on-start`, if executable, runs in the background on every start (output in
/// `~/.cove/on-start.log`): how a server the user runs comes back after a wake.
fn start_on_start_hook(user: &user::WorkspaceUser) {
    let hook = user.home.join(".cove/on-start");
    let executable =
        std::fs::metadata(&hook).is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0);
    if !executable {
        return;
    }
    let log = user.home.join(".cove/on-start.log");
    let mut command = user.command(&hook);
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log);
    match out.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((stdout, stderr)) => {
            command.stdout(stdout).stderr(stderr).stdin(std::process::Stdio::null()).kill_on_drop(false);
        }
        Err(e) => {
            println!("cove agent: cannot open {}: {e}; ~/.cove/on-start not run", log.display());
            return;
        }
    }
    match command.spawn() {
        Ok(mut child) => {
            println!("cove agent: started ~/.cove/on-start");
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => println!("cove agent: cannot run ~/.cove/on-start: {e}"),
    }
}
