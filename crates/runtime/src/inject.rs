//! What Cove puts into every workspace from the host: the agent (this very binary) with the
//! dynamic loader and libraries it was linked against, so that it runs in any image —
//! Debian, Alpine, busybox — whatever libc the image has or lacks; a run directory per
//! workspace shared with the host (the agent's sockets); optionally the editor.
//!
//! The agent directory is prepared once per server start ([`prepare_agent_dir`]) and mounted
//! read-only. Files are replaced by rename, so running workspaces keep the copy they
//! started with and the next start picks up the new one.

use std::io;
use std::path::{Path, PathBuf};

use cove_core::WorkspaceId;

/// Host paths of what is mounted into workspaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Mounted read-only at `/.cove`: `bin/cove` (a wrapper), `bin/cove.real`, `lib/`.
    pub agent_dir: PathBuf,
    /// Each workspace's run directory is `<run_root>/<workspace id>`, mounted at `/.cove/run`.
    pub run_root: PathBuf,
    /// The data directory whose `editor/current` is mounted read-only at `/.cove/editor`
    /// (see `cove editor install`). Looked at each time a container is made, so an editor
    /// installed while the server runs reaches the next workspace made; `None`: no editor.
    pub editor_from: Option<PathBuf>,
}

/// The program a workspace runs as its main process: the agent through the bundled loader,
/// which needs nothing from the image (not even a shell).
pub fn agent_command() -> Vec<String> {
    vec![
        format!("{}/lib/{LOADER_NAME}", cove_core::agent::AGENT_DIR),
        "--library-path".into(),
        format!("{}/lib", cove_core::agent::AGENT_DIR),
        format!("{}/bin/cove.real", cove_core::agent::AGENT_DIR),
        "agent".into(),
    ]
}

const LOADER_NAME: &str = "ld-linux.so";

impl Injection {
    /// The installed editor's directory as of now (the `current` link resolved, so the
    /// container keeps its version when a later install moves the link).
    pub fn editor_dir(&self) -> Option<PathBuf> {
        crate::editor::current(self.editor_from.as_ref()?)
    }

    pub fn run_dir(&self, id: WorkspaceId) -> PathBuf {
        self.run_root.join(id.to_string())
    }

    /// Makes the workspace's run directory; the bind mount needs it to exist. Root's, and
    /// only searchable by others (0711): the workspace user reaches its own `user/` inside,
    /// while the secret and the sockets stay 0600.
    pub fn ensure_run_dir(&self, id: WorkspaceId) -> io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.run_dir(id);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        Ok(dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot list the libraries of {exe} with ldd: {message}")]
    Ldd { exe: String, message: String },
}

/// Copies `exe` (the running `cove`), its dynamic loader and its libraries into
/// `<data_dir>/agent`, unless the copy there is already of this binary.
pub fn prepare_agent_dir(data_dir: &Path, exe: &Path) -> Result<PathBuf, InjectError> {
    let dir = data_dir.join("agent");
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| InjectError::Write { path, source }
    };
    for sub in ["bin", "lib", "run", "editor"] {
        // `run` and `editor` are mount points of other mounts inside the read-only one.
        std::fs::create_dir_all(dir.join(sub)).map_err(write_err(&dir.join(sub)))?;
    }
    let stamp_path = dir.join("stamp");
    let stamp = fingerprint(exe)?;
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(dir);
    }
    let (loader, libraries) = shared_libraries(exe)?;
    copy_replacing(&loader, &dir.join("lib").join(LOADER_NAME))?;
    for lib in &libraries {
        let name = lib.file_name().map(PathBuf::from).unwrap_or_default();
        copy_replacing(lib, &dir.join("lib").join(name))?;
    }
    copy_replacing(exe, &dir.join("bin/cove.real"))?;
    let wrapper = format!(
        "#!/bin/sh\n# Runs Cove's agent binary with the loader and libraries it was built against.\nexec {root}/lib/{LOADER_NAME} --library-path {root}/lib {root}/bin/cove.real \"$@\"\n",
        root = cove_core::agent::AGENT_DIR
    );
    write_replacing(&dir.join("bin/cove"), wrapper.as_bytes(), 0o755)?;
    std::fs::write(&stamp_path, stamp).map_err(write_err(&stamp_path))?;
    Ok(dir)
}

/// Size and modification time: enough to tell a rebuilt binary, and cheap.
fn fingerprint(exe: &Path) -> Result<String, InjectError> {
    let meta =
        std::fs::metadata(exe).map_err(|source| InjectError::Read { path: exe.display().to_string(), source })?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    Ok(format!("{} {} {}\n", exe.display(), meta.len(), modified.as_nanos()))
}

/// The loader and the libraries `ldd` resolves for `exe`.
fn shared_libraries(exe: &Path) -> Result<(PathBuf, Vec<PathBuf>), InjectError> {
    let ldd_err = |message: String| InjectError::Ldd { exe: exe.display().to_string(), message };
    let output = std::process::Command::new("ldd").arg(exe).output().map_err(|e| ldd_err(e.to_string()))?;
    if !output.status.success() {
        return Err(ldd_err(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    let (loader, libraries) = parse_ldd(&String::from_utf8_lossy(&output.stdout));
    let loader =
        loader.ok_or_else(|| ldd_err("no dynamic loader listed (a static binary needs no injection)".into()))?;
    Ok((loader, libraries))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` lines are libraries; the one
/// absolute path without `=>` is the loader; `linux-vdso.so.1` has no file.
pub(crate) fn parse_ldd(text: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut loader = None;
    let mut libraries = vec![];
    for line in text.lines().map(str::trim) {
        if let Some((_, rest)) = line.split_once("=>") {
            if let Some(path) = rest.split_whitespace().next().filter(|p| p.starts_with('/')) {
                libraries.push(PathBuf::from(path));
            }
        } else if let Some(path) = line.split_whitespace().next().filter(|p| p.starts_with('/')) {
            loader = Some(PathBuf::from(path));
        }
    }
    (loader, libraries)
}

fn copy_replacing(from: &Path, to: &Path) -> Result<(), InjectError> {
    let bytes = std::fs::read(from).map_err(|source| InjectError::Read { path: from.display().to_string(), source })?;
    write_replacing(to, &bytes, 0o755)
}

/// Writes next to `to` and renames over it: a workspace that has the old file open keeps it.
fn write_replacing(to: &Path, bytes: &[u8], mode: u32) -> Result<(), InjectError> {
    use std::os::unix::fs::PermissionsExt;
    let staged = to.with_extension("cove-new");
    let err = |source| InjectError::Write { path: to.display().to_string(), source };
    std::fs::write(&staged, bytes).map_err(err)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&staged, to).map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let (loader, libs) = parse_ldd(text);
        assert_eq!(loader, Some(PathBuf::from("/lib64/ld-linux-x86-64.so.2")));
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
            ]
        );
        assert_eq!(parse_ldd("\tnot a dynamic executable\n"), (None, vec![]));
    }

    #[test]
    fn the_agent_dir_is_made_once_per_binary() {
        let data = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let dir = prepare_agent_dir(data.path(), &exe).unwrap();
        assert!(dir.join("bin/cove.real").exists() && dir.join("lib").join(LOADER_NAME).exists());
        assert!(dir.join("run").is_dir() && dir.join("editor").is_dir());
        let modified = std::fs::metadata(dir.join("bin/cove.real")).unwrap().modified().unwrap();
        prepare_agent_dir(data.path(), &exe).unwrap();
        assert_eq!(std::fs::metadata(dir.join("bin/cove.real")).unwrap().modified().unwrap(), modified);
        // The copy runs through the bundled loader, as in a workspace.
        let out = std::process::Command::new(dir.join("lib").join(LOADER_NAME))
            .arg("--library-path")
            .arg(dir.join("lib"))
            .arg(dir.join("bin/cove.real"))
            .arg("--list")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("ldd_output"), "{out:?}");
    }
}
