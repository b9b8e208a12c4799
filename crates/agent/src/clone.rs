//! The first start of a workspace made from a repository: `git clone` into `~/project`, as
//! the workspace user (so private repositories go through the user's Git credential
//! helper), with git's progress passed on to the startup log and the agent's state.
//!
//! A clone happens once: a marker on the volume remembers it, so a user who deletes or
//! moves the checkout does not get it back at the next start, and files already in
//! `~/project` (pushed there, say) are never overwritten.

use std::path::Path;
use std::time::{Duration, Instant};

use cove_core::agent::AgentState;
use cove_core::RepoSource;
use tokio::io::AsyncReadExt;

use crate::user::WorkspaceUser;
use crate::StateReporter;

/// How often git's progress (which redraws many times a second) reaches the log and state.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
const MARKER: &str = ".cove/cloned";

/// Why a clone did not happen or failed, for the agent's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Cloned,
    AlreadyDone,
    /// `~/project` holds files already; nothing was cloned over them.
    NotEmpty,
    Failed(String),
}

/// Clones `source` into `~/project` unless that was done before.
pub async fn ensure(user: &WorkspaceUser, source: &RepoSource, reporter: &StateReporter) -> Outcome {
    let project = user.home.join("project");
    if user.home.join(MARKER).exists() || project.join(".git").exists() {
        return Outcome::AlreadyDone;
    }
    if std::fs::read_dir(&project).is_ok_and(|mut entries| entries.next().is_some()) {
        println!("cove agent: ~/project is not empty; not cloning {} over it", source.url);
        return Outcome::NotEmpty;
    }
    let Some(git) = find_in_path(&user.env().get("PATH").cloned().unwrap_or_default(), "git") else {
        return Outcome::Failed(format!(
            "step 'clone {}' failed: the image has no git; use an image with git, or put the code in with `cove push`",
            source.url
        ));
    };
    let what = match &source.branch {
        Some(b) => format!("{} (branch {b})", source.url),
        None => source.url.clone(),
    };
    println!("cove agent: cloning {what} into ~/project");
    reporter.report(AgentState::Starting, Some(format!("cloning {what}")));
    let mut command = user.command(&git);
    command.args(["clone", "--progress"]);
    if let Some(branch) = &source.branch {
        command.args(["--branch", branch]);
    }
    command
        .arg("--")
        .arg(&source.url)
        .arg(&project)
        // Never wait for a password on a terminal nobody watches.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("step 'clone {}' failed: cannot run git: {e}", source.url)),
    };
    let last_line = match child.stderr.take() {
        Some(stderr) => follow_progress(stderr, &what, reporter).await,
        None => String::new(),
    };
    match child.wait().await {
        Ok(status) if status.success() => {
            if let Err(e) = crate::write_marker(user, &user.home.join(MARKER)) {
                // The clone is there; without the marker a later start leaves it alone
                // anyway (it finds `.git`), unless the user removes the checkout.
                println!("cove agent: cannot remember the clone: {e:#}");
            }
            println!("cove agent: cloned {what}");
            Outcome::Cloned
        }
        Ok(status) => {
            let code = status.code().map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
            Outcome::Failed(format!("step 'clone {}' failed ({code}): {}", source.url, last_line.trim()))
        }
        Err(e) => Outcome::Failed(format!("step 'clone {}' failed: {e}", source.url)),
    }
}

/// Passes git's stderr on, a line at a time (progress lines end in `\r`), at most every
/// [`PROGRESS_EVERY`] for progress; returns the last line, which says why a clone failed.
async fn follow_progress(
    mut stderr: impl tokio::io::AsyncRead + Unpin,
    what: &str,
    reporter: &StateReporter,
) -> String {
    let mut pending = Vec::new();
    let mut last = String::new();
    let mut shown = Instant::now() - PROGRESS_EVERY;
    let mut buf = [0u8; 4096];
    loop {
        let n = match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let finished = pending[end] == b'\n';
            let line = String::from_utf8_lossy(&pending[..end]).trim().to_string();
            pending.drain(..=end);
            if line.is_empty() {
                continue;
            }
            if finished || shown.elapsed() >= PROGRESS_EVERY {
                println!("cove agent: git: {line}");
                reporter.report(AgentState::Starting, Some(format!("cloning {what}: {line}")));
                shown = Instant::now();
            }
            last = line;
        }
    }
    let rest = String::from_utf8_lossy(&pending).trim().to_string();
    if !rest.is_empty() {
        println!("cove agent: git: {rest}");
        last = rest;
    }
    last
}

fn find_in_path(path: &str, program: &str) -> Option<std::path::PathBuf> {
    path.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}
