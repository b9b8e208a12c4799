//! Dev container features: local ones (`./name` next to devcontainer.json, holding
//! `devcontainer-feature.json` and `install.sh`) are read and ordered here; OCI and tarball
//! references need a registry or the network, which this crate never reaches, so they come
//! back as [`Error::FeatureNeedsRegistry`] for the caller to show.
//!
//! File reads go through the `read` function the caller passes, so the logic is testable.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::model::DevContainer;
use crate::{jsonc, Error};

/// How a `features` key names its feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureRef {
    /// `./name`, relative to the folder of devcontainer.json.
    Local(PathBuf),
    /// `registry/namespace/name[:tag|@sha256:...]`.
    Oci { resource: String, version: Option<String> },
    /// `https://.../devcontainer-feature-x.tgz`.
    Tarball(String),
    /// A bare id like `node`, from before features moved to OCI.
    Legacy(String),
}

pub fn parse_ref(reference: &str) -> FeatureRef {
    if reference.starts_with("./") || reference.starts_with("../") {
        return FeatureRef::Local(PathBuf::from(reference));
    }
    if reference.starts_with("https://") || reference.starts_with("http://") {
        return FeatureRef::Tarball(reference.to_string());
    }
    if !reference.contains('/') {
        return FeatureRef::Legacy(reference.to_string());
    }
    let (resource, version) = match reference.split_once('@') {
        Some((r, digest)) => (r, Some(digest.to_string())),
        None => match reference.rsplit_once(':') {
            // A colon after the last slash is a tag; one before it is a registry port.
            Some((r, tag)) if !tag.contains('/') => (r, Some(tag.to_string())),
            _ => (reference, None),
        },
    };
    FeatureRef::Oci { resource: resource.to_string(), version }
}

/// A local feature, read and with its options resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// The key in `features`.
    pub reference: String,
    pub id: String,
    pub version: Option<String>,
    pub dir: PathBuf,
    /// Options as install.sh sees them: the user's values over the defaults, names
    /// upper-cased with other characters turned into `_`.
    pub options_env: BTreeMap<String, String>,
    pub container_env: BTreeMap<String, String>,
    pub installs_after: Vec<String>,
    pub depends_on: Vec<String>,
    /// The whole devcontainer-feature.json (privileged, capAdd, mounts, entrypoint, ...),
    /// for the policy check and the engine layer.
    pub metadata: Map<String, Value>,
}

/// Reads every feature and returns them in install order.
pub fn resolve(config: &DevContainer, read: &dyn Fn(&Path) -> io::Result<String>) -> Result<Vec<Feature>, Error> {
    let config_dir = config.config_file.parent().unwrap_or(Path::new("/"));
    let mut features = vec![];
    for (reference, options) in &config.features {
        match parse_ref(reference) {
            FeatureRef::Local(rel) => {
                if rel.components().any(|c| matches!(c, Component::ParentDir)) {
                    return Err(Error::Feature {
                        id: reference.clone(),
                        message: "local features must be inside the folder of devcontainer.json (no `..`)".into(),
                    });
                }
                let dir = crate::model::normalize(&config_dir.join(rel));
                features.push(load_local(reference, &dir, options, read)?);
            }
            FeatureRef::Oci { .. } | FeatureRef::Tarball(_) => {
                return Err(Error::FeatureNeedsRegistry { id: reference.clone() })
            }
            FeatureRef::Legacy(id) => {
                return Err(Error::Feature {
                    id: id.clone(),
                    message: format!("short feature ids are deprecated; write ghcr.io/devcontainers/features/{id}, or use a local feature (`./{id}`)"),
                })
            }
        }
    }
    install_order(features, &config.override_feature_install_order)
}

fn load_local(
    reference: &str,
    dir: &Path,
    user: &Map<String, Value>,
    read: &dyn Fn(&Path) -> io::Result<String>,
) -> Result<Feature, Error> {
    let err = |message: String| Error::Feature { id: reference.to_string(), message };
    let meta_path = dir.join("devcontainer-feature.json");
    let text = read(&meta_path).map_err(|e| {
        err(format!(
            "cannot read {} ({e}); a local feature is a folder with devcontainer-feature.json and install.sh",
            meta_path.display()
        ))
    })?;
    let install = dir.join("install.sh");
    read(&install)
        .map_err(|e| err(format!("cannot read {} ({e}); every feature needs an install.sh", install.display())))?;
    let meta = match jsonc::parse(&text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(err(format!("{} must hold a JSON object", meta_path.display()))),
        Err(e) => return Err(err(format!("{}: {e}", meta_path.display()))),
    };
    let Some(Value::String(id)) = meta.get("id") else {
        return Err(err(format!("{} needs an `id`", meta_path.display())));
    };
    let mut options_env = BTreeMap::new();
    if let Some(Value::Object(declared)) = meta.get("options") {
        for (name, decl) in declared {
            if let Some(default) = decl.get("default") {
                options_env.insert(safe_id(name), scalar(default));
            }
        }
    }
    for (name, value) in user {
        if !matches!(value, Value::Object(_) | Value::Array(_) | Value::Null) {
            options_env.insert(safe_id(name), scalar(value));
        }
    }
    let strings = |key: &str| -> Vec<String> {
        match meta.get(key) {
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            _ => vec![],
        }
    };
    let depends_on = match meta.get("dependsOn") {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => vec![],
    };
    let container_env = match meta.get("containerEnv") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        _ => BTreeMap::new(),
    };
    Ok(Feature {
        reference: reference.to_string(),
        id: id.clone(),
        version: meta.get("version").and_then(Value::as_str).map(String::from),
        dir: dir.to_path_buf(),
        options_env,
        container_env,
        installs_after: strings("installsAfter"),
        depends_on,
        metadata: meta,
    })
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The reference's `getSafeId`: non-word characters to `_`, a leading run of digits and
/// underscores to one `_`, upper-cased.
pub fn safe_id(name: &str) -> String {
    let replaced: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    let trimmed = replaced.trim_start_matches(|c: char| c.is_ascii_digit() || c == '_');
    let lead = if trimmed.len() < replaced.len() { "_" } else { "" };
    format!("{lead}{trimmed}").to_ascii_uppercase()
}

/// Whether `name` (from dependsOn, installsAfter or overrideFeatureInstallOrder) means `f`:
/// its key as written, the key without a version, or its id.
fn names(f: &Feature, name: &str) -> bool {
    let strip = |s: &str| match parse_ref(s) {
        FeatureRef::Oci { resource, .. } => resource,
        _ => s.trim_end_matches('/').to_string(),
    };
    f.reference == name || strip(&f.reference) == strip(name) || f.id == name
}

/// Kahn's algorithm: a feature installs after everything it `dependsOn` (which must be
/// present) and everything present it `installsAfter`. Among features ready at once,
/// those in `overrideFeatureInstallOrder` go first, in that order, then by key.
fn install_order(features: Vec<Feature>, priority: &[String]) -> Result<Vec<Feature>, Error> {
    let n = features.len();
    let mut before: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (i, f) in features.iter().enumerate() {
        for dep in &f.depends_on {
            match features.iter().position(|g| names(g, dep)) {
                Some(j) if j != i => {
                    before[i].insert(j);
                }
                Some(_) => {}
                None => {
                    return Err(Error::Feature {
                        id: f.reference.clone(),
                        message: format!("depends on `{dep}`, which is not in `features`; add it (Cove installs only the features listed)"),
                    })
                }
            }
        }
        for after in &f.installs_after {
            if let Some(j) = features.iter().position(|g| names(g, after)).filter(|j| *j != i) {
                before[i].insert(j);
            }
        }
    }
    let rank = |f: &Feature| priority.iter().position(|p| names(f, p)).unwrap_or(usize::MAX);
    let mut done = vec![false; n];
    let mut order = vec![];
    while order.len() < n {
        let ready = (0..n).filter(|&i| !done[i] && before[i].iter().all(|&j| done[j])).min_by(|&a, &b| {
            (rank(&features[a]), &features[a].reference).cmp(&(rank(&features[b]), &features[b].reference))
        });
        let Some(next) = ready else {
            return Err(Error::FeatureCycle { ids: cycle(&features, &before, &done) });
        };
        done[next] = true;
        order.push(next);
    }
    let mut slots: Vec<Option<Feature>> = features.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// One cycle among the features not yet placed, for the error message.
fn cycle(features: &[Feature], before: &[BTreeSet<usize>], done: &[bool]) -> Vec<String> {
    let Some(start) = (0..features.len()).find(|&i| !done[i]) else { return vec![] };
    let mut path = vec![start];
    let mut at = start;
    while let Some(&next) = before[at].iter().find(|&&j| !done[j]) {
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut ids: Vec<String> = path[pos..].iter().map(|&i| features[i].reference.clone()).collect();
            ids.push(features[next].reference.clone());
            return ids;
        }
        path.push(next);
        at = next;
    }
    path.iter().map(|&i| features[i].reference.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        assert_eq!(parse_ref("./x"), FeatureRef::Local("./x".into()));
        assert_eq!(
            parse_ref("ghcr.io/devcontainers/features/node:1"),
            FeatureRef::Oci { resource: "ghcr.io/devcontainers/features/node".into(), version: Some("1".into()) }
        );
        assert_eq!(
            parse_ref("localhost:5000/f/x"),
            FeatureRef::Oci { resource: "localhost:5000/f/x".into(), version: None }
        );
        assert_eq!(
            parse_ref("ghcr.io/a/b@sha256:00"),
            FeatureRef::Oci { resource: "ghcr.io/a/b".into(), version: Some("sha256:00".into()) }
        );
        assert_eq!(parse_ref("node"), FeatureRef::Legacy("node".into()));
        assert_eq!(parse_ref("https://x/f.tgz"), FeatureRef::Tarball("https://x/f.tgz".into()));
    }

    #[test]
    fn safe_ids() {
        assert_eq!(safe_id("version"), "VERSION");
        assert_eq!(safe_id("install-tools.now"), "INSTALL_TOOLS_NOW");
        assert_eq!(safe_id("9lives"), "_LIVES");
        assert_eq!(safe_id("__x"), "_X");
    }
}
