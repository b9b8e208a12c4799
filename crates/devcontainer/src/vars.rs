//! `${...}` variables, substituted as the reference implementation does: every string value
//! (not object keys) is scanned for `${name}` or `${name:arg:...}`; unknown names stay as
//! written. `${containerEnv:VAR}` needs a running container, so the first pass leaves it and
//! [`substitute_container_env`] fills it in `remoteEnv` later.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// What the local pass knows.
pub struct Context<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub local_workspace_folder: &'a str,
    pub container_workspace_folder: &'a str,
    pub devcontainer_id: &'a str,
}

/// A `${localEnv}` without a variable name; the reference refuses it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingName(pub String);

/// Substitutes local variables in every string of `value`.
pub fn substitute(value: &Value, cx: &Context<'_>) -> Result<Value, MissingName> {
    map_strings(value, &mut |s| substitute_str(s, &mut |name, args, whole| local(cx, name, args, whole)))
}

/// Fills `${containerEnv:VAR}` (and `${containerEnv:VAR:default}`) from the container's env.
pub fn substitute_container_env(value: &str, container_env: &BTreeMap<String, String>) -> Result<String, MissingName> {
    substitute_str(value, &mut |name, args, whole| match name {
        "containerEnv" => lookup(container_env, args, whole).map(Some),
        _ => Ok(None),
    })
}

fn local(cx: &Context<'_>, name: &str, args: &[&str], whole: &str) -> Result<Option<String>, MissingName> {
    Ok(Some(match name {
        "env" | "localEnv" => return lookup(cx.env, args, whole).map(Some),
        "localWorkspaceFolder" => cx.local_workspace_folder.to_string(),
        "localWorkspaceFolderBasename" => basename(cx.local_workspace_folder).to_string(),
        "containerWorkspaceFolder" => cx.container_workspace_folder.to_string(),
        "containerWorkspaceFolderBasename" => basename(cx.container_workspace_folder).to_string(),
        "devcontainerId" => cx.devcontainer_id.to_string(),
        _ => return Ok(None),
    }))
}

/// `VAR` -> its value, else `default` (the second argument; later ones are ignored, as the
/// reference does), else the empty string, as a shell would.
fn lookup(env: &BTreeMap<String, String>, args: &[&str], whole: &str) -> Result<String, MissingName> {
    let Some(name) = args.first() else {
        return Err(MissingName(whole.to_string()));
    };
    Ok(env.get(*name).cloned().or_else(|| args.get(1).map(|d| d.to_string())).unwrap_or_default())
}

/// The last path component, `/` for the root.
pub fn basename(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return path;
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

type Replace<'r> = dyn FnMut(&str, &[&str], &str) -> Result<Option<String>, MissingName> + 'r;

/// Replaces each `${...}` (shortest match, like the reference's `/\$\{(.*?)\}/g`).
fn substitute_str(s: &str, replace: &mut Replace<'_>) -> Result<String, MissingName> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else { break };
        let whole = &rest[start..start + 2 + len + 1];
        let inner = &rest[start + 2..start + 2 + len];
        let mut parts = inner.split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        out.push_str(&rest[..start]);
        match replace(name, &args, whole)? {
            Some(v) => out.push_str(&v),
            None => out.push_str(whole),
        }
        rest = &rest[start + whole.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn map_strings<E>(value: &Value, f: &mut dyn FnMut(&str) -> Result<String, E>) -> Result<Value, E> {
    Ok(match value {
        Value::String(s) => Value::String(f(s)?),
        Value::Array(items) => Value::Array(items.iter().map(|v| map_strings(v, f)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), map_strings(v, f)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// The reference's `${devcontainerId}`: SHA-256 of the JSON of the id labels with sorted keys
/// (`devcontainer.config_file`, `devcontainer.local_folder`), as a base-32 number (digits
/// `0-9a-v`) padded to 52 characters. Stable across rebuilds of the same folder and file.
pub fn devcontainer_id(local_folder: &str, config_file: &str) -> String {
    let mut labels = serde_json::Map::new();
    labels.insert("devcontainer.config_file".into(), Value::String(config_file.into()));
    labels.insert("devcontainer.local_folder".into(), Value::String(local_folder.into()));
    // serde_json escapes like JSON.stringify for these (strings only, keys sorted).
    let json = Value::Object(labels).to_string();
    let hash = Sha256::digest(json.as_bytes());
    let mut digits = to_base32(&hash);
    while digits.len() < 52 {
        digits.insert(0, '0');
    }
    digits
}

/// A big-endian unsigned number in base 32 (lowercase, like JavaScript's `toString(32)`).
fn to_base32(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut number: Vec<u8> = bytes.to_vec();
    let mut out = vec![];
    while number.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in number.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 32) as u8;
            rem = cur % 32;
        }
        out.push(DIGITS[rem as usize] as char);
    }
    if out.is_empty() {
        out.push('0');
    }
    out.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn local_variables() {
        let env = BTreeMap::from([("HOME".to_string(), "/home/me".to_string())]);
        let cx = Context {
            env: &env,
            local_workspace_folder: "/src/app",
            container_workspace_folder: "/workspaces/app",
            devcontainer_id: "ID",
        };
        let v = json!({"${localEnv:HOME}": ["${localEnv:HOME}", "${env:NOPE}|${localEnv:NOPE:dflt:x}",
            "${localWorkspaceFolderBasename}${containerWorkspaceFolder}", "${devcontainerId}",
            "${containerEnv:PATH}", "${unknown}", "${", "$${localEnv:HOME}}"]});
        assert_eq!(
            substitute(&v, &cx).unwrap(),
            json!({"${localEnv:HOME}": ["/home/me", "|dflt", "app/workspaces/app", "ID",
                "${containerEnv:PATH}", "${unknown}", "${", "$/home/me}"]})
        );
        assert_eq!(substitute(&json!("${localEnv}"), &cx), Err(MissingName("${localEnv}".into())));
    }

    #[test]
    fn container_env() {
        let env = BTreeMap::from([("PATH".to_string(), "/bin".to_string())]);
        assert_eq!(substitute_container_env("${containerEnv:PATH}:/x${containerEnv:N:d}", &env).unwrap(), "/bin:/xd");
    }

    #[test]
    fn base32_matches_javascript() {
        // (255).toString(32) === "7v", (1024).toString(32) === "100"
        assert_eq!(to_base32(&[0xff]), "7v");
        assert_eq!(to_base32(&[0x04, 0x00]), "100");
        assert_eq!(to_base32(&[0, 0]), "0");
        // Computed with the reference's own function (Node: sha256 of JSON.stringify of the
        // sorted labels, BigInt(...).toString(32).padStart(52, "0")).
        assert_eq!(
            devcontainer_id("/src/app", "/src/app/.devcontainer/devcontainer.json"),
            "0ifpkp2kqlv19b9cfhdt1smnoeqvladgtd0hatm7j4aklhsernp4"
        );
    }
}
