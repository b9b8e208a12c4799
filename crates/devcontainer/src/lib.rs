//! The devcontainer.json model, the pure part of issue 5: parse JSONC, find the file,
//! apply the reference implementation's legacy moves, defaults and `${...}` variables, read
//! a typed [`DevContainer`], order local features, and check it against an admin [`Policy`].
//!
//! No network and no container engine. Only [`load`] touches the file system; everything
//! else takes strings (and, for features, a read function) so it can be tested and fuzzed.
//!
//! Where Cove differs from the reference `devcontainer read-configuration`, on purpose:
//! * `${devcontainerId}` is substituted (with the reference's algorithm) in the first pass;
//!   the reference leaves it for `up`. Cove knows the id before it creates anything.
//! * No git-root workspace mount: the default mount is the folder given, as with the
//!   reference's `--mount-workspace-git-root false`.
//! * Object keys sort alphabetically in the printed JSON (serde_json's map); values match.
//! * Malformed JSONC is an error with file, line and column; the reference's parser
//!   recovers silently (a missing comma, an unclosed object) and goes on with a guess.
//! * `${containerEnv:VAR}` stays as written in the printed configuration (as in the
//!   reference); [`DevContainer::remote_env_with`] fills it in `remoteEnv` once the
//!   container runs.
//! * `image` together with `build`, or a `.devcontainer/<folder>/` layout with several
//!   candidates, is an error here rather than a silent pick.

#![forbid(unsafe_code)]

pub mod apply;
mod error;
pub mod features;
pub mod jsonc;
pub mod load;
pub mod model;
pub mod policy;
pub mod vars;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

pub use error::Error;
pub use features::Feature;
pub use load::{find, read_configuration};
pub use model::DevContainer;
pub use policy::{Policy, Refusal};

/// One configuration to resolve: its text and where it came from.
pub struct Input<'a> {
    /// The project folder on the machine running Cove (the reference's `--workspace-folder`).
    pub local_folder: &'a Path,
    pub config_file: &'a Path,
    pub text: &'a str,
    /// The local environment, for `${localEnv:VAR}` and `${env:VAR}`.
    pub env: &'a BTreeMap<String, String>,
}

/// Where the project lands in the container, as the reference reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub workspace_folder: String,
    pub workspace_mount: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub config: DevContainer,
    pub workspace: Workspace,
    pub devcontainer_id: String,
}

/// Parses and resolves one configuration.
pub fn resolve(input: &Input<'_>) -> Result<Resolved, Error> {
    let file = input.config_file;
    let value = jsonc::parse(input.text).map_err(|error| Error::Syntax { file: file.to_path_buf(), error })?;
    let Value::Object(raw) = value else {
        return Err(Error::Invalid {
            file: file.to_path_buf(),
            property: "(top level)".into(),
            message: "must be a JSON object, `{ ... }`".into(),
        });
    };
    let raw = move_legacy_properties(raw);
    let local = input.local_folder.display().to_string();
    let basename = vars::basename(&local).to_string();
    let devcontainer_id = vars::devcontainer_id(&local, &file.display().to_string());
    let missing = |vars::MissingName(whole)| Error::Invalid {
        file: file.to_path_buf(),
        property: whole,
        message: "names no variable; write ${localEnv:NAME} or ${localEnv:NAME:default}".into(),
    };
    let folder_template = match raw.get("workspaceFolder") {
        Some(Value::String(s)) => s.clone(),
        _ => format!("/workspaces/{basename}"),
    };
    let context = |container_folder: &'_ str| -> Result<Value, Error> {
        let cx = vars::Context {
            env: input.env,
            local_workspace_folder: &local,
            container_workspace_folder: container_folder,
            devcontainer_id: &devcontainer_id,
        };
        vars::substitute(&Value::Object(raw.clone()), &cx).map_err(missing)
    };
    // The container folder may itself use variables: substitute it first, as the reference does.
    let container_folder = {
        let cx = vars::Context {
            env: input.env,
            local_workspace_folder: &local,
            container_workspace_folder: &folder_template,
            devcontainer_id: &devcontainer_id,
        };
        match vars::substitute(&Value::String(folder_template.clone()), &cx).map_err(missing)? {
            Value::String(s) => s,
            _ => folder_template.clone(),
        }
    };
    let Value::Object(substituted) = context(&container_folder)? else {
        return Err(Error::NoImage { file: file.to_path_buf() });
    };
    let config = model::from_value(substituted, file)?;
    let workspace_mount = match &config.workspace_mount {
        Some(m) => m.clone(),
        None => format!("type=bind,source={local},target=/workspaces/{basename}"),
    };
    Ok(Resolved {
        workspace: Workspace { workspace_folder: container_folder, workspace_mount },
        config,
        devcontainer_id,
    })
}

/// Top-level `extensions`, `settings` and `devPort` move into `customizations.vscode`, as the
/// reference's `updateFromOldProperties` does: extensions are appended to any there, and
/// settings there win over the old ones.
pub fn move_legacy_properties(mut raw: Map<String, Value>) -> Map<String, Value> {
    if !["extensions", "settings", "devPort"].iter().any(|k| raw.contains_key(*k)) {
        return raw;
    }
    let mut customizations = match raw.remove("customizations") {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };
    let mut vscode = match customizations.remove("vscode") {
        Some(Value::Object(v)) => v,
        _ => Map::new(),
    };
    match raw.remove("extensions") {
        Some(Value::Array(old)) => {
            let mut list = match vscode.remove("extensions") {
                Some(Value::Array(l)) => l,
                _ => vec![],
            };
            list.extend(old);
            vscode.insert("extensions".into(), Value::Array(list));
        }
        Some(other) if !other.is_null() => {
            raw.insert("extensions".into(), other);
        }
        _ => {}
    }
    if let Some(Value::Object(mut old)) = raw.remove("settings") {
        if let Some(Value::Object(new)) = vscode.remove("settings") {
            old.extend(new);
        }
        vscode.insert("settings".into(), Value::Object(old));
    }
    if let Some(port) = raw.remove("devPort") {
        vscode.insert("devPort".into(), port);
    }
    customizations.insert("vscode".into(), Value::Object(vscode));
    raw.insert("customizations".into(), Value::Object(customizations));
    raw
}

/// The reference's `devcontainer read-configuration` output:
/// `{"configuration": {..., "configFilePath": {...}}, "workspace": {...}}`.
pub fn resolved_json(config: &DevContainer, workspace: &Workspace) -> Value {
    let mut configuration = config.raw.clone();
    let path = config.config_file.display().to_string();
    configuration
        .insert("configFilePath".into(), json!({"$mid": 1, "fsPath": path, "path": path, "scheme": "vscode-fileHost"}));
    json!({
        "configuration": configuration,
        "workspace": {"workspaceFolder": workspace.workspace_folder, "workspaceMount": workspace.workspace_mount},
    })
}

/// Features in install order, for printing next to the configuration.
pub fn features_json(features: &[Feature]) -> Value {
    Value::Array(
        features
            .iter()
            .map(|f| {
                json!({
                    "reference": f.reference,
                    "id": f.id,
                    "version": f.version,
                    "folder": f.dir.display().to_string(),
                    "optionsEnv": f.options_env,
                    "containerEnv": f.container_env,
                })
            })
            .collect(),
    )
}
