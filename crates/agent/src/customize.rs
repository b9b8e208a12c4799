//! `customizations.vscode` from devcontainer.json, applied to the injected editor.
//!
//! - `settings` become code-server's machine settings (`<user-data>/Machine/settings.json`):
//!   Cove owns that file and rewrites it from the configuration on each start; the user's own
//!   settings (`User/settings.json`) stay theirs and win over it, as in VS Code's remote
//!   editors.
//! - `extensions` are installed once each (remembered in `<user-data>/cove-extensions.json`)
//!   with code-server's `--install-extension`:
//!   - an id (`publisher.name`) from a `.vsix` in devcontainer.json's folder or its
//!     `extensions/` subfolder whose file name starts with the id (`publisher.name-1.2.3.vsix`);
//!     without one, from the extension gallery code-server is set up with (Open VSX by
//!     default, or a mirror given as `EXTENSIONS_GALLERY` in containerEnv/remoteEnv): when it
//!     does not answer, the message says so and what to do;
//!   - a path ending in `.vsix`, relative to devcontainer.json's folder.
//!
//! Everything is written as the workspace user; a failure is reported (in `cove logs`) with
//! the extension's name and never stops the workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cove_devcontainer::model::VsCode;

use crate::editor::EditorConfig;
use crate::lifecycle::EnvOverrides;
use crate::user::WorkspaceUser;

/// The machine settings file, under the user data directory.
const MACHINE_SETTINGS: &str = "Machine/settings.json";
/// What was installed, by configuration entry: the `.vsix` file's name, or "gallery".
const INSTALLED: &str = "cove-extensions.json";
/// How long one installation may take (a gallery that does not answer is given up on).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(45);

/// Where an extension comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Vsix(PathBuf),
    Gallery(String),
}

impl Origin {
    /// What [`INSTALLED`] remembers of it: a changed `.vsix` (a new version) installs again.
    fn record(&self) -> String {
        match self {
            Origin::Vsix(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Origin::Gallery(_) => "gallery".into(),
        }
    }
}

/// What applying the customizations did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Extensions installed now (the editor must restart to load them).
    pub installed: Vec<String>,
}

/// Where `entry` (an id or a `.vsix` path) comes from, for a configuration in `config_dir`.
pub fn origin(entry: &str, config_dir: &Path) -> Origin {
    if entry.to_ascii_lowercase().ends_with(".vsix") {
        return Origin::Vsix(config_dir.join(entry));
    }
    let id = entry.to_ascii_lowercase();
    let matches = |dir: &Path| -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|path| {
                let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
                name.ends_with(".vsix")
                    && name.strip_prefix(&id).is_some_and(|rest| rest.starts_with('-') || rest == ".vsix")
            })
            .collect();
        // Several versions: the last by name (`x-1.10.0` after `x-1.9.0` only by luck; say
        // one file per extension in the docs).
        found.sort();
        found.pop()
    };
    matches(config_dir)
        .or_else(|| matches(&config_dir.join("extensions")))
        .map_or_else(|| Origin::Gallery(entry.to_string()), Origin::Vsix)
}

/// Writes the settings and installs what is missing; `config_dir` is devcontainer.json's
/// folder, `env` the configuration's environment (for `EXTENSIONS_GALLERY`).
pub async fn apply(
    user: &WorkspaceUser,
    editor: &EditorConfig,
    vscode: &VsCode,
    config_dir: &Path,
    env: &EnvOverrides,
) -> Applied {
    let data = editor.user_data(user);
    if let Err(e) = write_settings(user, &data, vscode) {
        println!("cove agent: editor: customizations.vscode.settings: {e:#}");
    }
    let mut applied = Applied::default();
    if vscode.extensions.is_empty() {
        return applied;
    }
    let mut installed = read_installed(&data);
    for entry in &vscode.extensions {
        let origin = origin(entry, config_dir);
        if installed.get(entry) == Some(&origin.record()) {
            continue;
        }
        println!("cove agent: editor: installing extension {entry}");
        match install(user, editor, &origin, env).await {
            Ok(()) => {
                println!("cove agent: editor: extension {entry} installed");
                installed.insert(entry.clone(), origin.record());
                applied.installed.push(entry.clone());
            }
            Err(e) => println!("cove agent: editor: extension {entry} not installed: {e:#}"),
        }
    }
    if !applied.installed.is_empty() {
        let text = serde_json::to_string_pretty(&installed).unwrap_or_default();
        if let Err(e) = write_as_user(user, &data.join(INSTALLED), &text) {
            println!("cove agent: editor: {e:#}");
        }
    }
    applied
}

fn read_installed(data: &Path) -> BTreeMap<String, String> {
    std::fs::read(data.join(INSTALLED)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// The configuration's settings as the machine settings; no settings, no file.
fn write_settings(user: &WorkspaceUser, data: &Path, vscode: &VsCode) -> anyhow::Result<()> {
    let path = data.join(MACHINE_SETTINGS);
    if vscode.settings.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("remove {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    write_as_user(user, &path, &serde_json::to_string_pretty(&vscode.settings)?)
}

/// Writes `text` to `path` (and its missing parents), all the user's.
fn write_as_user(user: &WorkspaceUser, path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        crate::ensure_user_dir(user, dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    if user.switch {
        nix::unistd::chown(path, Some(user.uid.into()), Some(user.gid.into()))
            .with_context(|| format!("give {} to {}", path.display(), user.name))?;
    }
    Ok(())
}

/// `code-server --install-extension`, as the user, with the configuration's environment.
async fn install(
    user: &WorkspaceUser,
    editor: &EditorConfig,
    origin: &Origin,
    env: &EnvOverrides,
) -> anyhow::Result<()> {
    let target = match origin {
        Origin::Vsix(path) if !path.is_file() => anyhow::bail!("{} does not exist", path.display()),
        Origin::Vsix(path) => path.display().to_string(),
        Origin::Gallery(id) => id.clone(),
    };
    let mut command = user.command(editor.node());
    crate::lifecycle::apply(&mut command, env);
    command
        .arg(editor.entry())
        .args(editor.data_args(user))
        .arg("--install-extension")
        .arg(&target)
        .arg("--force")
        .stdin(std::process::Stdio::null());
    let run = tokio::time::timeout(INSTALL_TIMEOUT, command.output());
    let output = match run.await {
        Ok(output) => output.context("run code-server --install-extension")?,
        Err(_) => return Err(no_gallery(origin, env, &format!("no answer within {} s", INSTALL_TIMEOUT.as_secs()))),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // code-server says "Failed Installing Extensions" yet exits 0 on some errors.
    if output.status.success() && !text.contains("Failed") && !text.contains("not found") {
        return Ok(());
    }
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    match origin {
        Origin::Vsix(path) => anyhow::bail!("code-server could not install {}: {last}", path.display()),
        Origin::Gallery(_) => Err(no_gallery(origin, env, &last)),
    }
}

/// The message for an id the gallery did not give.
fn no_gallery(origin: &Origin, env: &EnvOverrides, reason: &str) -> anyhow::Error {
    let gallery = match env.get("EXTENSIONS_GALLERY") {
        Some(Some(_)) => "the extension gallery in EXTENSIONS_GALLERY",
        _ => "Open VSX (code-server's default gallery)",
    };
    let id = match origin {
        Origin::Gallery(id) => id.as_str(),
        Origin::Vsix(_) => "it",
    };
    anyhow::anyhow!(
        "{gallery} did not give it ({reason}); put {id}-<version>.vsix next to devcontainer.json, or set \
         EXTENSIONS_GALLERY in containerEnv to a reachable Open VSX mirror"
    )
}

#[allow(clippy::unwrap_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_as_vsix_files_next_to_the_configuration_or_in_extensions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("extensions")).unwrap();
        std::fs::write(dir.path().join("Acme.Tool-1.0.0.vsix"), "").unwrap();
        std::fs::write(dir.path().join("extensions/acme.other.vsix"), "").unwrap();
        std::fs::write(dir.path().join("acme.toolbox-2.0.0.vsix"), "").unwrap();
        assert_eq!(origin("acme.tool", dir.path()), Origin::Vsix(dir.path().join("Acme.Tool-1.0.0.vsix")));
        assert_eq!(origin("acme.other", dir.path()), Origin::Vsix(dir.path().join("extensions/acme.other.vsix")));
        assert_eq!(origin("acme.missing", dir.path()), Origin::Gallery("acme.missing".into()));
        assert_eq!(origin("vendor/x.vsix", dir.path()), Origin::Vsix(dir.path().join("vendor/x.vsix")));
        assert_eq!(origin("acme.tool", dir.path()).record(), "Acme.Tool-1.0.0.vsix");
    }

    #[test]
    fn settings_are_written_and_removed_with_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let user = WorkspaceUser::current(dir.path());
        let mut vscode = VsCode::default();
        vscode.settings.insert("editor.fontSize".into(), 19.into());
        write_settings(&user, dir.path(), &vscode).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(MACHINE_SETTINGS)).unwrap()).unwrap();
        assert_eq!(written["editor.fontSize"], 19);
        write_settings(&user, dir.path(), &VsCode::default()).unwrap();
        assert!(!dir.path().join(MACHINE_SETTINGS).exists());
    }
}
