//! What an instance's admin allows a devcontainer.json to ask for. The default `Policy`
//! allows only what cannot reach outside the workspace container: volumes, tmpfs, env and
//! labels, `no-new-privileges`, resource requests within the instance maximum.
//!
//! The safe subset of `runArgs`: `--env/-e`, `--env-file` is not (it reads a host file),
//! `--label/-l`, `--init`, `--ulimit`, `--shm-size`, `--hostname/-h`, `--add-host`,
//! `--cap-drop`, `--cap-add` (from the admin's list), `--security-opt no-new-privileges`,
//! `--mount`/`--volume/-v` (volumes and tmpfs; binds under an allowed prefix), `--tmpfs`,
//! `--workdir/-w`, `--user/-u`. Everything else is refused, naming the argument.

use std::fmt;
use std::path::{Component, Path};

use crate::model::{parse_mount_string, DevContainer, Mount, MountKind};
use crate::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Host path prefixes a bind mount may come from (whole components: `/data` allows
    /// `/data/x`, not `/database`).
    pub allow_binds: Vec<String>,
    /// `privileged`, host namespaces, devices, and security options beyond no-new-privileges.
    pub allow_privileged: bool,
    /// Capabilities `capAdd`/`--cap-add` may name (`SYS_PTRACE`; `CAP_` prefix optional).
    pub allow_cap_add: Vec<String>,
    /// `initializeCommand` runs on the Cove host: host code execution.
    pub allow_initialize_command: bool,
    /// The most one workspace may get; `None` for no limit.
    pub max: Option<Max>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Max {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
}

/// One thing the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub property: String,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.property, self.message)
    }
}

const PRIVILEGED: &str = "the admin must allow privileged workspaces (allow_privileged)";

/// Every refusal at once, so a user can fix them in one go.
pub fn check(config: &DevContainer, local_folder: &str, policy: &Policy) -> Result<(), Error> {
    let mut out = vec![];
    let mut refuse = |property: &str, message: String| out.push(Refusal { property: property.to_string(), message });
    if config.privileged == Some(true) && !policy.allow_privileged {
        refuse("privileged", format!("is not allowed here; {PRIVILEGED}"));
    }
    for cap in &config.cap_add {
        if let Some(m) = cap_refusal(cap, policy) {
            refuse("capAdd", m);
        }
    }
    for opt in &config.security_opt {
        if let Some(m) = security_opt_refusal(opt, policy) {
            refuse("securityOpt", m);
        }
    }
    for (i, mount) in config.mounts.iter().enumerate() {
        if let Some(m) = mount_refusal(mount, policy) {
            refuse(&format!("mounts[{i}]"), m);
        }
    }
    if let Some(wm) = &config.workspace_mount {
        match parse_mount_string(wm) {
            // Cove puts the workspace on its own volume; a bind of the project folder itself
            // is what the default means, so only another bind is a question for the admin.
            Ok(m) if m.kind == MountKind::Bind && m.source.as_deref().map(clean) == Some(clean(local_folder)) => {}
            Ok(m) => {
                if let Some(msg) = mount_refusal(&m, policy) {
                    refuse("workspaceMount", msg);
                }
            }
            Err(e) => refuse("workspaceMount", e),
        }
    }
    for m in run_args_refusals(&config.run_args, policy) {
        refuse("runArgs", m);
    }
    if config.lifecycle.initialize.is_some() && !policy.allow_initialize_command {
        refuse(
            "initializeCommand",
            "would run on the Cove host, which this instance does not allow; run it in onCreateCommand instead, or the admin must allow it (allow_initialize_command)".into(),
        );
    }
    if let Some(max) = policy.max {
        let h = &config.host_requirements;
        if let Some(cpus) = h.cpus.filter(|c| *c > max.cpus) {
            refuse("hostRequirements.cpus", format!("asks for {cpus} CPUs; this instance gives at most {}", max.cpus));
        }
        let size = cove_core::resources::format_size;
        if let Some(m) = h.memory_bytes.filter(|m| *m > max.memory_bytes) {
            refuse(
                "hostRequirements.memory",
                format!("asks for {}; this instance gives at most {}", size(m), size(max.memory_bytes)),
            );
        }
        if let Some(s) = h.storage_bytes.filter(|s| *s > max.storage_bytes) {
            refuse(
                "hostRequirements.storage",
                format!("asks for {}; this instance gives at most {}", size(s), size(max.storage_bytes)),
            );
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused { refusals: out })
    }
}

/// What local features ask for in their devcontainer-feature.json (`privileged`, `capAdd`,
/// `securityOpt`, `mounts`) goes through the same rules as the configuration's own.
pub fn check_features(features: &[crate::Feature], policy: &Policy) -> Result<(), Error> {
    use serde_json::Value;
    let mut out = vec![];
    for f in features {
        let at = |what: &str| format!("features[\"{}\"].{what}", f.reference);
        let strings = |key: &str| -> Vec<String> {
            match f.metadata.get(key) {
                Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                _ => vec![],
            }
        };
        if f.metadata.get("privileged") == Some(&Value::Bool(true)) && !policy.allow_privileged {
            out.push(Refusal { property: at("privileged"), message: format!("is not allowed here; {PRIVILEGED}") });
        }
        for cap in strings("capAdd") {
            out.extend(cap_refusal(&cap, policy).map(|message| Refusal { property: at("capAdd"), message }));
        }
        for opt in strings("securityOpt") {
            out.extend(
                security_opt_refusal(&opt, policy).map(|message| Refusal { property: at("securityOpt"), message }),
            );
        }
        if let Some(Value::Array(mounts)) = f.metadata.get("mounts") {
            for (i, m) in mounts.iter().enumerate() {
                let message = match crate::model::read_mount(m) {
                    Ok(m) => mount_refusal(&m, policy),
                    Err(e) => Some(e),
                };
                out.extend(message.map(|message| Refusal { property: at(&format!("mounts[{i}]")), message }));
            }
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused { refusals: out })
    }
}

fn cap_name(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").map(String::from).unwrap_or(upper)
}

fn cap_refusal(cap: &str, policy: &Policy) -> Option<String> {
    let name = cap_name(cap);
    if policy.allow_cap_add.iter().any(|a| cap_name(a) == name) {
        return None;
    }
    Some(format!("capability {name} is not allowed here; the admin must add it to allow_cap_add"))
}

fn security_opt_refusal(opt: &str, policy: &Policy) -> Option<String> {
    let opt = opt.trim();
    if matches!(opt, "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true")
        || policy.allow_privileged
    {
        return None;
    }
    Some(format!("`{opt}` weakens the container's confinement; only no-new-privileges is allowed unless the admin allows privileged workspaces (allow_privileged)"))
}

fn mount_refusal(mount: &Mount, policy: &Policy) -> Option<String> {
    match &mount.kind {
        MountKind::Volume | MountKind::Tmpfs => None,
        MountKind::Bind => {
            let source = mount.source.as_deref().unwrap_or_default();
            if bind_allowed(source, policy) {
                None
            } else {
                Some(format!("binds host path `{source}`, which is not under a prefix the admin allows (allow_binds); use a volume (type=volume) instead"))
            }
        }
        MountKind::Other(kind) => Some(format!("mount type `{kind}` is not supported; use type=volume or type=bind")),
    }
}

fn clean(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// Absolute, without `..`, and under an allowed prefix by whole components.
fn bind_allowed(source: &str, policy: &Policy) -> bool {
    let path = Path::new(source);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return false;
    }
    policy.allow_binds.iter().any(|prefix| path.starts_with(prefix))
}

/// Flags that take a value (as the next argument or after `=`), by every spelling.
const VALUE_FLAGS: &[&str] = &[
    "--env",
    "-e",
    "--label",
    "-l",
    "--ulimit",
    "--shm-size",
    "--hostname",
    "-h",
    "--add-host",
    "--cap-add",
    "--cap-drop",
    "--security-opt",
    "--mount",
    "--volume",
    "-v",
    "--tmpfs",
    "--workdir",
    "-w",
    "--user",
    "-u",
    "--network",
    "--net",
    "--pid",
    "--ipc",
    "--uts",
    "--userns",
    "--cgroupns",
    "--device",
    "--env-file",
    "--name",
    "--memory",
    "-m",
    "--cpus",
    "--gpus",
    "--runtime",
    "--volumes-from",
    "--entrypoint",
    "--publish",
    "-p",
];

fn run_args_refusals(args: &[String], policy: &Policy) -> Vec<String> {
    let mut out = vec![];
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        if !flag.starts_with('-') {
            out.push(format!(
                "`{arg}` is not an option; runArgs may hold only `docker run` options from Cove's safe subset"
            ));
            continue;
        }
        let value = if VALUE_FLAGS.contains(&flag) && inline.is_none() {
            let v = args.get(i).cloned();
            i += 1;
            match v {
                Some(v) => Some(v),
                None => {
                    out.push(format!("`{flag}` needs a value"));
                    continue;
                }
            }
        } else {
            inline
        };
        let value = value.unwrap_or_default();
        let shown = if value.is_empty() { flag.to_string() } else { format!("{flag} {value}") };
        let refusal = match flag {
            "--env" | "-e" | "--label" | "-l" | "--init" | "--ulimit" | "--shm-size" | "--hostname" | "-h"
            | "--add-host" | "--cap-drop" | "--workdir" | "-w" | "--user" | "-u" => None,
            "--cap-add" => cap_refusal(&value, policy),
            "--security-opt" => security_opt_refusal(&value, policy),
            "--mount" => match parse_mount_string(&value) {
                Ok(m) => mount_refusal(&m, policy),
                Err(e) => Some(e),
            },
            "--tmpfs" => None,
            "--volume" | "-v" => volume_refusal(&value, policy),
            "--privileged" | "--device" | "--network" | "--net" | "--pid" | "--ipc" | "--uts" | "--userns"
            | "--cgroupns" | "--gpus" | "--runtime" | "--volumes-from" => {
                if policy.allow_privileged {
                    None
                } else {
                    Some(format!("`{shown}` reaches outside the workspace container; {PRIVILEGED}"))
                }
            }
            "--memory" | "-m" | "--cpus" => Some(format!("`{shown}`: Cove sets resources; ask for them with hostRequirements")),
            "--publish" | "-p" => Some(format!("`{shown}`: Cove publishes ports itself; use forwardPorts")),
            _ => Some(format!("`{flag}` is not in Cove's safe subset of runArgs (--env, --label, --init, --ulimit, --shm-size, --hostname, --add-host, --cap-add, --cap-drop, --security-opt no-new-privileges, --mount, --volume, --tmpfs, --workdir, --user)")),
        };
        out.extend(refusal);
    }
    out
}

/// `-v name:/path[:opts]` is a volume; `-v /host:/path` a bind; `-v /path` an anonymous volume.
fn volume_refusal(value: &str, policy: &Policy) -> Option<String> {
    let mut parts = value.splitn(3, ':');
    let first = parts.next().unwrap_or_default();
    let target = parts.next()?;
    let kind = if first.starts_with('/') || first.starts_with('.') || first.starts_with('~') {
        MountKind::Bind
    } else {
        MountKind::Volume
    };
    let mount =
        Mount { kind, source: Some(first.to_string()), target: target.to_string(), read_only: false, options: vec![] };
    mount_refusal(&mount, policy)
}
