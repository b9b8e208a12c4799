//! The only file-system layer: finding devcontainer.json, reading it and local features.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{features, resolve, Error, Feature, Input, Resolved};

/// Finds the configuration for project `dir`, in the reference's order:
/// `.devcontainer/devcontainer.json`, `.devcontainer.json`, then the only
/// `.devcontainer/<folder>/devcontainer.json`. `explicit` (relative to `dir`) wins.
pub fn find(dir: &Path, explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        let path = dir.join(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::NotFound { dir: dir.to_path_buf(), looked: vec![path] })
        };
    }
    let first = dir.join(".devcontainer").join("devcontainer.json");
    let second = dir.join(".devcontainer.json");
    for path in [&first, &second] {
        if path.is_file() {
            return Ok(path.clone());
        }
    }
    let mut candidates = vec![];
    if let Ok(entries) = std::fs::read_dir(dir.join(".devcontainer")) {
        for entry in entries.flatten() {
            let path = entry.path().join("devcontainer.json");
            if path.is_file() {
                candidates.push(path);
            }
        }
    }
    candidates.sort();
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(Error::NotFound {
            dir: dir.to_path_buf(),
            looked: vec![first, second, dir.join(".devcontainer").join("<folder>").join("devcontainer.json")],
        }),
        _ => Err(Error::Ambiguous { dir: dir.to_path_buf(), candidates }),
    }
}

pub fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })
}

/// Finds, reads and resolves the configuration of project `dir`. `dir` should be absolute
/// (it is substituted for `${localWorkspaceFolder}`); a relative one is made absolute.
pub fn read_configuration(
    dir: &Path,
    explicit: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Resolved, Error> {
    let dir = std::path::absolute(dir).map_err(|source| Error::Read { path: dir.to_path_buf(), source })?;
    let config_file = find(&dir, explicit)?;
    let text = read(&config_file)?;
    resolve(&Input { local_folder: &dir, config_file: &config_file, text: &text, env })
}

/// The configuration's features in install order, read from disk.
pub fn read_features(config: &crate::DevContainer) -> Result<Vec<Feature>, Error> {
    features::resolve(config, &|p| std::fs::read_to_string(p))
}
