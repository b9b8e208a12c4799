//! The workspace's secrets, fetched from the control plane at each start and delivered:
//! environment secrets into every process the agent starts for the user (terminal, SSH,
//! lifecycle hooks, the editor) and into an env file for `cove exec`'s processes; file
//! secrets into [`contract::SECRETS_DIR`]. Both live on the tmpfs the engine mounts at
//! [`contract::SECRETS_TMPFS`]: never on the persistent volume, never in the engine's
//! metadata. Values are never printed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cove_core::agent::{self as contract, DeliveredSecret};
use nix::unistd::{Gid, Uid};

use crate::control::Control;
use crate::user::WorkspaceUser;

/// The frozen set, asking a few times (the control plane may be restarting).
pub async fn fetch(control: &Control) -> Result<Vec<DeliveredSecret>, String> {
    let mut pause = Duration::from_millis(100);
    let mut last = String::new();
    for _ in 0..8 {
        match control.get::<Vec<DeliveredSecret>>("/v1/secrets").await {
            Ok(set) => return Ok(set.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    Err(last)
}

fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// Whether `path` is a tmpfs mount point (from /proc/self/mounts).
fn is_tmpfs(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts").unwrap_or_default().lines().any(|line| {
        let mut fields = line.split(' ');
        fields.nth(1) == Some(path) && fields.next() == Some("tmpfs")
    })
}

/// Writes the set under `root` (`/` in a workspace) for `user`; returns the environment
/// secrets. Refuses to write anything to disk unless the secrets directory is a tmpfs.
pub fn deliver(root: &Path, user: &WorkspaceUser, set: &[DeliveredSecret]) -> io::Result<BTreeMap<String, String>> {
    let env: BTreeMap<String, String> =
        set.iter().filter(|s| !s.file).map(|s| (s.name.clone(), s.value.clone())).collect();
    if root == Path::new("/") && !is_tmpfs(contract::SECRETS_TMPFS) {
        if set.is_empty() {
            return Ok(env);
        }
        return Err(io::Error::other(format!(
            "{} is not a tmpfs (the container predates secrets: recreate it); secrets are not written to disk",
            contract::SECRETS_TMPFS
        )));
    }
    let dir = under(root, contract::SECRETS_DIR);
    // A restart of the agent in the same container: what was there is replaced.
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    let owner = (Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)));
    let give = |path: &Path| -> io::Result<()> {
        if user.switch {
            nix::unistd::chown(path, owner.0, owner.1)?;
        }
        Ok(())
    };
    set_mode(&dir, 0o700)?;
    give(&dir)?;
    for secret in set.iter().filter(|s| s.file) {
        // The server checked the name; a path separator here would still be refused.
        if secret.name.contains('/') || secret.name.starts_with('.') {
            return Err(io::Error::other(format!("secret file name {:?} is not a plain name", secret.name)));
        }
        let path = dir.join(&secret.name);
        crate::write_private(&path, secret.value.as_bytes())?;
        give(&path)?;
    }
    let env_file = under(root, contract::SECRETS_ENV_FILE);
    let _ = std::fs::remove_file(&env_file);
    let mut text = Vec::new();
    for (key, value) in &env {
        text.extend_from_slice(format!("{key}={value}").as_bytes());
        text.push(0);
    }
    crate::write_private(&env_file, &text)?;
    give(&env_file)?;
    Ok(env)
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Parses the env file [`deliver`] writes.
pub fn parse_env_file(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (k, v) = text.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `cove agent with-secrets -- CMD...`: runs CMD with the workspace's environment secrets
/// (how `cove exec`'s processes, which the engine starts, get them). Waits a little for
/// an agent that is still starting; without its secrets the command does not run. The
/// variables in `keep` (set by the exec itself) are left as they are.
pub fn with_secrets(cmd: &[String], keep: &[String]) -> anyhow::Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = cmd.split_first() else {
        anyhow::bail!("give the command to run after --");
    };
    let path = Path::new(contract::SECRETS_ENV_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let bytes = loop {
        match std::fs::read(path) {
            Ok(bytes) => break bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => anyhow::bail!(
                "this workspace's secrets were not delivered ({}: {e}); its agent is starting or failed, see `cove logs`",
                path.display()
            ),
        }
    };
    // The engine's exec may bring no PATH (an image that sets none); look up as the
    // agent's own user processes do.
    let path = std::env::var("PATH").unwrap_or_else(|_| crate::user::DEFAULT_PATH.to_string());
    let error = std::process::Command::new(program)
        .args(args)
        .env("PATH", path)
        .envs(parse_env_file(&bytes).into_iter().filter(|(k, _)| !keep.contains(k)))
        .exec();
    anyhow::bail!("cannot run {program}: {error}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn delivers_files_and_env_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let user = WorkspaceUser::current(&root.path().join("home"));
        let set = vec![
            DeliveredSecret { name: "API_KEY".into(), file: false, value: "k=1 2".into() },
            DeliveredSecret { name: "id_rsa".into(), file: true, value: "-----KEY-----\n".into() },
        ];
        let env = deliver(root.path(), &user, &set).unwrap();
        assert_eq!(env, BTreeMap::from([("API_KEY".to_string(), "k=1 2".to_string())]));
        let file = root.path().join("run/cove/secrets/id_rsa");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "-----KEY-----\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let env_file = std::fs::read(root.path().join("run/cove/env")).unwrap();
        assert_eq!(parse_env_file(&env_file), vec![("API_KEY".to_string(), "k=1 2".to_string())]);
        // Delivered again (an agent restart): only the new set remains.
        deliver(root.path(), &user, &set[..1]).unwrap();
        assert!(!file.exists());
    }
}
