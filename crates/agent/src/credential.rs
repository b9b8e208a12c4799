//! Git credentials: `cove agent git-credential get`, wired into the image's system git
//! config, answers git's credential questions with the workspace owner's token from the
//! control plane (`cove git-token set HOST`).
//!
//! The helper runs as the workspace user, who cannot reach the control socket (root's). So
//! the agent serves one more socket, [`SOCKET_NAME`] in the user's part of the run
//! directory, that answers only this question: git's own key=value request goes in, the
//! `username=`/`password=` lines come out, or nothing when the control plane has no token
//! (git then fails with its usual authentication error). The token passes through memory
//! only: neither the agent nor the helper writes it anywhere.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::control::Control;
use crate::user::WorkspaceUser;

pub const SOCKET_NAME: &str = "git-credential.sock";
/// What the system git config runs (git appends `get`, `store` or `erase`).
pub const HELPER: &str = "/.cove/bin/cove agent git-credential";
const MAX_REQUEST: usize = 16 * 1024;

#[derive(Deserialize)]
struct Credential {
    username: String,
    password: String,
}

/// git's credential format: `key=value` lines, ended by a blank line or the end.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Adds the helper to `<root>/etc/gitconfig` unless it is there already.
pub fn wire_git_config(root: &Path) -> std::io::Result<bool> {
    let path = root.join("etc/gitconfig");
    let current = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if current.contains(HELPER) {
        return Ok(false);
    }
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "# Added by cove agent: Git tokens from `cove git-token set HOST`.\n[credential]\n\thelper = {HELPER}\n"
    ));
    std::fs::write(&path, text)?;
    Ok(true)
}

/// Opens the user's credential socket (the user's, 0600).
pub fn bind(dir: &Path, user: &WorkspaceUser) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    if user.switch {
        nix::unistd::chown(&path, Some(user.uid.into()), Some(user.gid.into()))?;
    }
    Ok(listener)
}

/// Answers credential questions until the listener fails.
pub async fn serve(listener: UnixListener, control: Control) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let control = control.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut limited = (&mut stream).take(MAX_REQUEST as u64);
            if limited.read_to_end(&mut request).await.is_err() {
                return;
            }
            let fields = parse(&String::from_utf8_lossy(&request));
            let answer = answer(&control, &fields).await;
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn answer(control: &Control, fields: &BTreeMap<String, String>) -> String {
    let Some(host) = fields.get("host") else { return String::new() };
    let protocol = fields.get("protocol").map(String::as_str).unwrap_or("https");
    let path = format!(
        "/v1/git-credential?protocol={}&host={}",
        cove_core::percent_encode(protocol),
        cove_core::percent_encode(host)
    );
    match control.get::<Credential>(&path).await {
        Ok(Some(c)) => format!("username={}\npassword={}\n", c.username, c.password),
        Ok(None) => String::new(),
        Err(e) => {
            println!("cove agent: git credential for {host}: {e}");
            String::new()
        }
    }
}

/// `cove agent git-credential <operation>`, run by git as the user: passes a `get` to the
/// agent's socket and prints the answer; `store` and `erase` have nothing to do (tokens
/// are managed with `cove git-token`).
pub async fn helper(run_dir: &Path, operation: &str) -> anyhow::Result<()> {
    let mut request = Vec::new();
    tokio::io::stdin().take(MAX_REQUEST as u64).read_to_end(&mut request).await?;
    if operation != "get" {
        return Ok(());
    }
    let socket = run_dir.join(cove_core::agent::USER_RUN_SUBDIR).join(SOCKET_NAME);
    let mut stream = match tokio::net::UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cove: cannot reach the workspace agent at {}: {e}", socket.display());
            return Ok(());
        }
    };
    stream.write_all(&request).await?;
    stream.shutdown().await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    tokio::io::stdout().write_all(&answer).await?;
    Ok(())
}

#[allow(clippy::unwrap_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_git_requests() {
        let f = parse("protocol=https\nhost=127.0.0.1:8080\npath=x=y\n\nignored=1\n");
        assert_eq!(f.get("host").map(String::as_str), Some("127.0.0.1:8080"));
        assert_eq!(f.get("path").map(String::as_str), Some("x=y"));
        assert!(!f.contains_key("ignored"));
    }

    #[test]
    fn wires_the_system_git_config_once() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/gitconfig"), "[core]\n\teditor = vi").unwrap();
        assert!(wire_git_config(root.path()).unwrap());
        assert!(!wire_git_config(root.path()).unwrap());
        let text = std::fs::read_to_string(root.path().join("etc/gitconfig")).unwrap();
        assert_eq!(text.matches(HELPER).count(), 1, "{text}");
        assert!(text.starts_with("[core]\n\teditor = vi\n"), "{text}");
    }
}
