//! `cove agent`: the process Cove injects into every workspace (bind-mounted read-only from
//! the host, never baked into images), so that any reasonable Linux image becomes a full
//! workspace. It runs as the container's main process under the engine's init and:
//!
//! * prepares the workspace user (uid 1000, home on the persistent volume) if the image
//!   lacks one, and starts everything for the user as that user ([`user`]);
//! * serves one HTTP endpoint to the control plane, on a unix socket in the run directory
//!   that only the host can reach, guarded by a secret made fresh at every start
//!   ([`endpoint`]): health, and the services below;
//! * serves the web terminal: shells on PTYs in sessions that survive reloads and drops,
//!   with scrollback ([`terminal`]);
//! * reports its state and the user's activity to the control plane ([`control`],
//!   [`activity`]), so that the idle stop covers terminals and SSH as well as HTTP;
//! * runs and supervises the editor, code-server, when Cove mounted one ([`editor`]);
//! * runs the project's devcontainer.json lifecycle commands ([`lifecycle`]).
//!
//! See `cove_core::agent` for the contract with the control plane.

#![deny(unsafe_code)]

pub mod activity;
pub mod clone;
pub mod control;
pub mod credential;
pub mod customize;
pub mod editor;
pub mod endpoint;
pub mod lifecycle;
pub mod ports;
pub mod pty;
pub mod secrets;
pub mod ssh;
pub mod terminal;
pub mod tunnel;
pub mod user;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cove_core::agent::{self as contract, AgentState, StateReport};

pub use endpoint::Agent;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How often the agent repeats its state when nothing changes.
const STATE_HEARTBEAT: Duration = Duration::from_secs(20);

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
    let reporter = StateReporter::spawn(control.clone());
    reporter.report(AgentState::Starting, Some("preparing the workspace user".into()));

    let (user, prepared) = match user::WorkspaceUser::prepare(&config.root) {
        Ok(prepared) => prepared,
        Err(e) => {
            // The workspace stays reachable (exec, the endpoint) so the human can look; the
            // user's processes still never run as root.
            let message = format!("step 'prepare the workspace user' failed: {e}");
            println!("cove agent: {message}");
            reporter.report(AgentState::Failed, Some(message));
            (user::WorkspaceUser::fallback(), user::Prepared::default())
        }
    };
    // Before anything runs as the user: every process the agent starts gets them.
    let user = match secrets::fetch(&control).await {
        Ok(set) => match secrets::deliver(&config.root, &user, &set) {
            Ok(env) => {
                println!("cove agent: {} secret(s) delivered", set.len());
                user::WorkspaceUser { secrets: user::SecretEnv(Arc::new(env)), ..user }
            }
            Err(e) => {
                let message = format!("step 'deliver secrets' failed: {e}");
                println!("cove agent: {message}");
                reporter.report(AgentState::Failed, Some(message));
                user
            }
        },
        Err(e) => {
            let message = format!("step 'fetch secrets' failed: {e}");
            println!("cove agent: {message}");
            reporter.report(AgentState::Failed, Some(message));
            user
        }
    };
    if prepared.added_user {
        println!("cove agent: the image has no user with uid {}; added {:?}", user.uid, user.name);
    }
    if prepared.chowned_home {
        println!("cove agent: gave {} to {}", user.home.display(), user.name);
    }
    for dir in [user.home.join("project"), config.run_dir.join(contract::USER_RUN_SUBDIR)] {
        if let Err(e) = ensure_user_dir(&user, &dir) {
            println!("cove agent: {e:#}");
        }
    }

    match ssh::prepare(&user) {
        Ok(fingerprint) => println!("cove agent: SSH host key {fingerprint}"),
        Err(e) => println!("cove agent: SSH is unavailable: {e:#}"),
    }

    let mut agent = Agent::new(user.clone(), control.clone(), new_secret());
    let editor = editor::EditorConfig {
        dir: config.editor_dir.clone(),
        socket: config.run_dir.join(contract::USER_RUN_SUBDIR).join(editor::SOCKET_NAME),
        folder: user.home.join("project"),
    };
    agent.editor = editor::start(editor, agent.user.clone(), agent.lifecycle.clone());
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
    // Served from here on: the terminal and SSH work while the code is still cloning.
    let mut served = tokio::spawn(endpoint::serve(listener, agent.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let setup = async {
        if let Some(source) = workspace_info(&control).await.and_then(|info| info.source) {
            if let clone::Outcome::Failed(message) = clone::ensure(&user, &source, &reporter).await {
                // The workspace stays usable: the human can fix what failed.
                println!("cove agent: {message}");
                reporter.report(AgentState::Failed, Some(message));
            }
        }
        let ready = {
            let (user, reporter, lifecycle) = (user.clone(), reporter.clone(), agent.lifecycle.clone());
            move || {
                start_on_start_hook(&user, &lifecycle);
                if reporter.current() != AgentState::Failed {
                    println!("cove agent: ready");
                    reporter.report(AgentState::Ready, None);
                }
            }
        };
        if reporter.current() != AgentState::Failed && !lifecycle::configured(&user, &control, &reporter).await {
            // The control plane is replacing this container, or could not apply the
            // configuration (the state says why): the hooks are not for this container.
            ready();
        } else if reporter.current() == AgentState::Failed {
            // Without the code its hooks are not there to run.
            ready();
        } else {
            lifecycle::start(&agent, reporter.clone(), ready);
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = &mut served => result.context("serve the agent's socket")?.context("serve the agent's socket")?,
        _ = setup => {}
        _ = term.recv() => println!("cove agent: stopping"),
        _ = tokio::signal::ctrl_c() => println!("cove agent: stopping"),
    }
    if let Some(editor) = &agent.editor {
        editor.stop().await;
    }
    Ok(())
}

/// What the control plane says this workspace is; `None` if it cannot say (after a few
/// tries: it may be restarting), in which case the agent starts without a repository.
async fn workspace_info(control: &control::Control) -> Option<contract::WorkspaceInfo> {
    let mut pause = Duration::from_millis(100);
    for _ in 0..8 {
        match control.get::<contract::WorkspaceInfo>("/v1/workspace").await {
            Ok(info) => return info,
            Err(e) => tracing::debug!(error = %e, "cannot ask the control plane about this workspace yet"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    println!("cove agent: the control plane did not say what this workspace is; starting without its repository");
    None
}

/// `cove agent with-secrets -- CMD...`: CMD with the workspace's environment secrets.
pub fn with_secrets(cmd: &[String], keep: &[String]) -> anyhow::Result<std::convert::Infallible> {
    secrets::with_secrets(cmd, keep)
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

/// Writes a file only its owner may read (created 0600, never briefly wider).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes `dir` and gives it to the user if it is new or root's; parents it has to make on
/// the way (say `~/.cove` for `~/.cove/lifecycle`) are the user's too.
pub(crate) fn ensure_user_dir(user: &user::WorkspaceUser, dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if user.switch {
        let give = |d: &Path| {
            nix::unistd::chown(d, Some(user.uid.into()), Some(user.gid.into()))
                .with_context(|| format!("give {} to {}", d.display(), user.name))
        };
        for made in missing.iter().rev() {
            give(made)?;
        }
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir)?) != user.uid {
            give(dir)?;
        }
    }
    Ok(())
}

/// Writes an empty marker file of the user's (a step done once per workspace, remembered
/// on the volume), making its directory as [`ensure_user_dir`] does.
pub(crate) fn write_marker(user: &user::WorkspaceUser, marker: &Path) -> anyhow::Result<()> {
    if let Some(dir) = marker.parent() {
        ensure_user_dir(user, dir)?;
    }
    std::fs::write(marker, "").with_context(|| format!("write {}", marker.display()))?;
    if user.switch {
        nix::unistd::chown(marker, Some(user.uid.into()), Some(user.gid.into()))
            .with_context(|| format!("give {} to {}", marker.display(), user.name))?;
    }
    Ok(())
}

/// Tells the control plane how the agent is doing, in order: one task sends the latest
/// state, retrying while the control plane is away (it may be restarting), and repeats it
/// every [`STATE_HEARTBEAT`]; a newer state replaces one not yet sent.
#[derive(Clone)]
pub struct StateReporter {
    latest: Arc<tokio::sync::watch::Sender<StateReport>>,
}

impl StateReporter {
    pub fn spawn(control: control::Control) -> Self {
        let initial = StateReport { state: AgentState::Starting, message: None, version: VERSION.into() };
        let (latest, mut wanted) = tokio::sync::watch::channel(initial);
        tokio::spawn(async move {
            loop {
                let report = wanted.borrow_and_update().clone();
                let mut pause = Duration::from_millis(100);
                let mut superseded = false;
                while let Err(e) = control.post("/v1/state", &report).await {
                    tracing::debug!(error = %e, "cannot report the agent's state yet");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        // `changed` marks the new value seen: send it next, without waiting.
                        _ = wanted.changed() => { superseded = true; break; }
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                if superseded {
                    continue;
                }
                // Said again now and then, so a control plane that restarted (and forgot)
                // learns it without waiting for a change.
                tokio::select! {
                    changed = wanted.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(STATE_HEARTBEAT) => {}
                }
            }
        });
        Self { latest: Arc::new(latest) }
    }

    pub fn current(&self) -> AgentState {
        self.latest.borrow().state
    }

    pub fn report(&self, state: AgentState, message: Option<String>) {
        self.latest.send_replace(StateReport { state, message, version: VERSION.into() });
    }
}

/// `~/.cove/on-start`, if executable, runs in the background on every start (output in
/// `~/.cove/on-start.log`): how a server the user runs comes back after a wake.
fn start_on_start_hook(user: &user::WorkspaceUser, lifecycle: &lifecycle::Lifecycle) {
    let hook = user.home.join(".cove/on-start");
    let executable =
        std::fs::metadata(&hook).is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0);
    if !executable {
        return;
    }
    let log = user.home.join(".cove/on-start.log");
    let mut command = user.command(&hook);
    lifecycle.apply_env(&mut command);
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
