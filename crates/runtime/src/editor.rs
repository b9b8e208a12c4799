//! `cove editor install`: one copy of code-server (VS Code in the browser) on the host,
//! mounted read-only into every workspace at `/.cove/editor`, so images need neither Node.js
//! nor an editor.
//!
//! Layout of `<data-dir>/editor/`:
//!
//! ```text
//! code-server-<version>/node_modules/code-server/…   the npm package and its dependencies
//! code-server-<version>/node/bin/node                 the host's Node.js, made self-contained
//! code-server-<version>/node/lib/                     its glibc loader and libraries
//! code-server-<version>/VERSION                       written last: the install is complete
//! current -> code-server-<version>                    swapped atomically (rename of a symlink)
//! ```
//!
//! Node.js must run in any image, and code-server re-spawns `process.execPath` for its
//! helpers, so running node through the loader with `--library-path` is not enough: the copy
//! gets its interpreter and `DT_RPATH` rewritten (patchelf) to the mount path of the bundled
//! loader and libraries. `DT_RPATH` (not `RUNPATH`) also covers the libraries' own
//! dependencies and wins over `LD_LIBRARY_PATH` and the image's cache. The libraries the
//! native modules (`*.node`) need are bundled too, and ripgrep (Debian's `rg`, used in place
//! of the download `@vscode/ripgrep` would make) is patched the same way.
//!
//! The recipe (npm, code-server 4.100.3: the last release that accepts Node 20) needs on the
//! host: `node` and `npm`, a C++ tool chain, `libkrb5-dev`, `ripgrep` and `patchelf`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use cove_core::agent::EDITOR_DIR;

pub const DEFAULT_VERSION: &str = "4.100.3";
/// The ripgrep `@vscode/ripgrep` 1.15.11 would download; its cache is seeded with Debian's.
const RIPGREP_CACHE: &str = "vscode-ripgrep-cache-1.15.11";
const RIPGREP_ARCHIVE: &str = "ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz";
const LOADER_NAME: &str = "ld-linux.so";

#[derive(Debug, thiserror::Error)]
pub enum EditorError {
    #[error("invalid code-server version {0:?}: use digits and dots, like {DEFAULT_VERSION}")]
    Version(String),
    #[error("cannot {step}: {source}")]
    Io { step: String, source: io::Error },
    #[error("cannot {step}: {message}")]
    Tool { step: String, message: String },
}

/// What to install, and where.
#[derive(Clone, Debug)]
pub struct InstallConfig {
    pub data_dir: PathBuf,
    pub version: String,
    /// A directory keeping npm's result by version (`code-server-<version>/`), reused by
    /// later installs (CI keeps one outside the repository); `None` to install afresh.
    pub cache_dir: Option<PathBuf>,
}

/// What an install did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// It was there already; `current` points at it.
    Already(PathBuf),
    Fresh(PathBuf),
}

/// The editor the server mounts: `<data-dir>/editor/current`, resolved, if it is complete.
pub fn current(data_dir: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(data_dir.join("editor/current")).ok()?;
    dir.join("VERSION").is_file().then_some(dir)
}

/// Installs code-server `version` under `<data-dir>/editor` (skipped when present) and
/// points `current` at it. `progress` gets one line per step.
pub fn install(config: &InstallConfig, progress: &mut dyn FnMut(&str)) -> Result<Installed, EditorError> {
    let version = &config.version;
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(EditorError::Version(version.clone()));
    }
    let editor = config.data_dir.join("editor");
    let name = format!("code-server-{version}");
    let target = editor.join(&name);
    if target.join("VERSION").is_file() {
        point_current(&editor, &name)?;
        return Ok(Installed::Already(target));
    }
    mkdir(&editor)?;
    let staged = editor.join(format!(".{name}.partial"));
    remove_dir(&staged)?;
    mkdir(&staged)?;

    let package = match &config.cache_dir {
        Some(cache) => {
            let cached = cache.join(&name);
            if cached.join(".complete").is_file() {
                progress(&format!("using the cached npm install in {}", cached.display()));
            } else {
                mkdir(cache)?;
                let partial = cache.join(format!(".{name}.partial"));
                remove_dir(&partial)?;
                mkdir(&partial)?;
                npm_install(&partial, version, progress)?;
                write(&partial.join(".complete"), version.as_bytes())?;
                remove_dir(&cached)?;
                rename(&partial, &cached)?;
            }
            cached
        }
        None => {
            npm_install(&staged, version, progress)?;
            staged.clone()
        }
    };
    if package != staged {
        progress("copying code-server");
        run(
            Command::new("cp").arg("-a").arg(package.join("node_modules")).arg(&staged),
            "copy code-server from the cache",
        )?;
    }

    progress("bundling Node.js with its libraries");
    let node = which("node")?;
    let node_dir = staged.join("node");
    mkdir(&node_dir.join("bin"))?;
    mkdir(&node_dir.join("lib"))?;
    let node_copy = node_dir.join("bin/node");
    copy(&node, &node_copy)?;
    let mut needs = vec![node_copy.clone()];
    needs.extend(find_files(&staged.join("node_modules"), &|p| p.extension().is_some_and(|e| e == "node"))?);
    let ripgreps = find_files(&staged.join("node_modules"), &|p| {
        p.file_name().is_some_and(|n| n == "rg") && p.parent().is_some_and(|d| d.ends_with("@vscode/ripgrep/bin"))
    })?;
    needs.extend(ripgreps.iter().cloned());
    for exe in &needs {
        bundle_libraries(exe, &node_dir.join("lib"))?;
    }
    let mount_lib = format!("{EDITOR_DIR}/node/lib");
    for exe in std::iter::once(&node_copy).chain(&ripgreps) {
        patchelf(exe, &format!("{mount_lib}/{LOADER_NAME}"), &mount_lib)?;
    }
    // The copy cannot run here through its new interpreter path (that is the workspace's);
    // run it through the bundled loader instead, to prove the bundle is whole.
    let output = Command::new(node_dir.join("lib").join(LOADER_NAME))
        .arg("--library-path")
        .arg(node_dir.join("lib"))
        .arg(&node_copy)
        .arg("--version")
        .output()
        .map_err(|source| EditorError::Io { step: "run the bundled Node.js".into(), source })?;
    if !output.status.success() {
        return Err(EditorError::Tool {
            step: "run the bundled Node.js".into(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    progress(&format!("Node.js {}", String::from_utf8_lossy(&output.stdout).trim()));

    write(&staged.join("VERSION"), format!("{version}\n").as_bytes())?;
    remove_dir(&target)?;
    rename(&staged, &target)?;
    point_current(&editor, &name)?;
    Ok(Installed::Fresh(target))
}

/// `npm install code-server@<version>` into `dir`, with ripgrep taken from the host.
fn npm_install(dir: &Path, version: &str, progress: &mut dyn FnMut(&str)) -> Result<(), EditorError> {
    let rg = which("rg")?;
    let tmp = dir.join(".tmp");
    let rg_cache = tmp.join(RIPGREP_CACHE);
    let rg_pack = tmp.join("rg-pack");
    mkdir(&rg_cache)?;
    mkdir(&rg_pack)?;
    copy(&rg, &rg_pack.join("rg"))?;
    run(
        Command::new("tar").arg("-C").arg(&rg_pack).arg("-czf").arg(rg_cache.join(RIPGREP_ARCHIVE)).arg("rg"),
        "pack Debian's ripgrep for @vscode/ripgrep",
    )?;
    write(&dir.join("package.json"), br#"{"name": "cove-editor", "private": true}"#)?;
    progress(&format!("npm install code-server@{version} (about a minute)"));
    let mut npm = Command::new("npm");
    npm.current_dir(dir)
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--unsafe-perm"])
        .arg(format!("code-server@{version}"))
        .env("npm_config_yes", "true")
        .env("TMPDIR", &tmp);
    run(&mut npm, &format!("install code-server {version} with npm"))?;
    remove_dir(&tmp)?;
    if !dir.join("node_modules/code-server/out/node/entry.js").is_file() {
        return Err(EditorError::Tool {
            step: format!("install code-server {version} with npm"),
            message: "npm finished but node_modules/code-server/out/node/entry.js is missing".into(),
        });
    }
    Ok(())
}

/// Copies the loader and the libraries `ldd` lists for `exe` into `lib` (once each).
fn bundle_libraries(exe: &Path, lib: &Path) -> Result<(), EditorError> {
    let output = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|source| EditorError::Io { step: format!("list the libraries of {}", exe.display()), source })?;
    // A file ldd cannot read as dynamic (a static rg) needs nothing.
    let (loader, libraries) = crate::inject::parse_ldd(&String::from_utf8_lossy(&output.stdout));
    if let Some(loader) = loader {
        let to = lib.join(LOADER_NAME);
        if !to.exists() {
            copy(&loader, &to)?;
        }
    }
    for library in libraries {
        let Some(name) = library.file_name() else { continue };
        let to = lib.join(name);
        if !to.exists() {
            copy(&library, &to)?;
        }
    }
    Ok(())
}

fn patchelf(exe: &Path, interpreter: &str, rpath: &str) -> Result<(), EditorError> {
    let mut command = Command::new("patchelf");
    command.arg("--set-interpreter").arg(interpreter).arg("--force-rpath").arg("--set-rpath").arg(rpath).arg(exe);
    run(&mut command, &format!("patch {} with patchelf (apt-get install patchelf)", exe.display()))
}

/// Points `<editor>/current` at `name`: a new symlink renamed over the old one.
fn point_current(editor: &Path, name: &str) -> Result<(), EditorError> {
    let current = editor.join("current");
    if std::fs::read_link(&current).is_ok_and(|l| l == Path::new(name)) {
        return Ok(());
    }
    let staged = editor.join(".current.new");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(name, &staged)
        .map_err(|source| EditorError::Io { step: format!("link {}", staged.display()), source })?;
    rename(&staged, &current)
}

fn which(program: &str) -> Result<PathBuf, EditorError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| EditorError::Tool {
            step: format!("find {program}"),
            message: format!("{program} is not on PATH; the editor install needs node, npm, rg and patchelf"),
        })
}

fn find_files(dir: &Path, wanted: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>, EditorError> {
    let mut found = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| EditorError::Io { step: format!("read {}", dir.display()), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(t) if t.is_file() && wanted(&path) => found.push(path),
                _ => {}
            }
        }
    }
    found.sort();
    Ok(found)
}

fn run(command: &mut Command, step: &str) -> Result<(), EditorError> {
    let output = command.output().map_err(|source| EditorError::Io { step: step.into(), source })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    let message = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    Err(EditorError::Tool { step: step.into(), message: format!("{}: {message}", output.status) })
}

fn mkdir(dir: &Path) -> Result<(), EditorError> {
    std::fs::create_dir_all(dir).map_err(|source| EditorError::Io { step: format!("create {}", dir.display()), source })
}

fn remove_dir(dir: &Path) -> Result<(), EditorError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(EditorError::Io { step: format!("remove {}", dir.display()), source: e })
        }
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), EditorError> {
    std::fs::rename(from, to)
        .map_err(|source| EditorError::Io { step: format!("move {} to {}", from.display(), to.display()), source })
}

fn copy(from: &Path, to: &Path) -> Result<(), EditorError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| EditorError::Io { step: format!("copy {} to {}", from.display(), to.display()), source })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), EditorError> {
    std::fs::write(path, bytes).map_err(|source| EditorError::Io { step: format!("write {}", path.display()), source })
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_versions_are_refused_before_anything_happens() {
        let data = tempfile::tempdir().unwrap();
        for bad in ["", "latest", "4.100.3; rm -rf /", "../x"] {
            let config = InstallConfig { data_dir: data.path().into(), version: bad.into(), cache_dir: None };
            let err = install(&config, &mut |_| {}).unwrap_err();
            assert!(matches!(err, EditorError::Version(_)), "{bad}: {err}");
        }
        assert!(!data.path().join("editor").exists());
    }

    #[test]
    fn current_needs_a_complete_install_and_follows_the_link() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(current(data.path()), None);
        let editor = data.path().join("editor");
        std::fs::create_dir_all(editor.join("code-server-1.0")).unwrap();
        point_current(&editor, "code-server-1.0").unwrap();
        assert_eq!(current(data.path()), None, "no VERSION yet: incomplete");
        std::fs::write(editor.join("code-server-1.0/VERSION"), "1.0\n").unwrap();
        let one = current(data.path()).unwrap();
        assert!(one.ends_with("code-server-1.0") && one.is_absolute(), "{one:?}");
        std::fs::create_dir_all(editor.join("code-server-2.0")).unwrap();
        std::fs::write(editor.join("code-server-2.0/VERSION"), "2.0\n").unwrap();
        point_current(&editor, "code-server-2.0").unwrap();
        assert!(current(data.path()).unwrap().ends_with("code-server-2.0"));
        // Installing a present version only moves the link.
        let config = InstallConfig { data_dir: data.path().into(), version: "1.0".into(), cache_dir: None };
        assert_eq!(install(&config, &mut |_| {}).unwrap(), Installed::Already(editor.join("code-server-1.0")));
        assert!(current(data.path()).unwrap().ends_with("code-server-1.0"));
    }
}
