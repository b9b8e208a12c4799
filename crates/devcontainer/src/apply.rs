//! What a resolved configuration makes of a workspace's container and image, pure: the
//! container settings ([`container_config`]), and the Dockerfile layers that install local
//! features on top of a base image ([`features_dockerfile`]). The caller has already run
//! the admin's [`crate::policy::check`], so everything here is allowed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cove_core::{ContainerConfig, ContainerMount, MountType};
use serde_json::Value;

use crate::model::{DevContainer, ForwardPort, MountKind};
use crate::Feature;

/// Where the features' files are copied in the image while they install.
pub const FEATURES_DIR: &str = "/tmp/cove-features";

/// The container settings: `containerEnv` (the features' first, the configuration's
/// over them), `mounts`, `capAdd`, `securityOpt`, `privileged` (the configuration's and
/// the features'), and the safe `runArgs` Cove applies (`--env`, `--label`, `--cap-add`,
/// `--security-opt`, `--mount`/`--volume`, `--tmpfs`). `forwardPorts` and
/// `portsAttributes` become `cove.port.<port>` labels (`cove ports` shows them).
/// The returned notes name what was accepted but has no effect in Cove.
pub fn container_config(config: &DevContainer, features: &[Feature]) -> (ContainerConfig, Vec<String>) {
    let mut out = ContainerConfig::default();
    let mut notes = vec![];
    for f in features {
        out.env.extend(f.container_env.clone());
        out.cap_add.extend(strings(f.metadata.get("capAdd")));
        out.security_opt.extend(strings(f.metadata.get("securityOpt")));
        if f.metadata.get("privileged") == Some(&Value::Bool(true)) {
            out.privileged = true;
        }
        for m in f.metadata.get("mounts").and_then(Value::as_array).into_iter().flatten() {
            if let Some(m) = crate::model::read_mount(m).ok().and_then(|m| mount(&m)) {
                out.mounts.push(m);
            }
        }
    }
    out.env.extend(config.container_env.clone());
    out.mounts.extend(config.mounts.iter().filter_map(mount));
    out.cap_add.extend(config.cap_add.iter().cloned());
    out.security_opt.extend(config.security_opt.iter().cloned());
    out.privileged |= config.privileged == Some(true);
    run_args(&config.run_args, &mut out, &mut notes);
    for port in &config.forward_ports {
        let n = match port {
            ForwardPort::Port(n) => *n,
            ForwardPort::HostPort { port, .. } => *port,
        };
        let attrs = config.port_attributes(n);
        let label = attrs.and_then(|a| a.label.clone()).unwrap_or_default();
        out.labels.insert(format!("cove.port.{n}"), label);
        if let Some(action) = attrs.and_then(|a| a.on_auto_forward) {
            out.labels.insert(format!("cove.port.{n}.on-auto-forward"), format!("{action:?}"));
        }
    }
    for (key, attrs) in &config.ports_attributes {
        if let (Ok(n), Some(label)) = (key.parse::<u16>(), &attrs.label) {
            out.labels.entry(format!("cove.port.{n}")).or_insert_with(|| label.clone());
        }
    }
    dedup(&mut out.cap_add);
    dedup(&mut out.security_opt);
    if config.override_command == Some(false) {
        notes.push("overrideCommand false: Cove's agent is always the main process; the image's command does not run (put it in postStartCommand)".into());
    }
    if config.init == Some(false) {
        notes.push("init false: Cove always runs the workspace under the engine's init".into());
    }
    (out, notes)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect()
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

fn mount(m: &crate::model::Mount) -> Option<ContainerMount> {
    let kind = match &m.kind {
        MountKind::Volume => MountType::Volume,
        MountKind::Bind => MountType::Bind,
        MountKind::Tmpfs => MountType::Tmpfs,
        // The policy refuses other kinds before this runs.
        MountKind::Other(_) => return None,
    };
    Some(ContainerMount { kind, source: m.source.clone(), target: m.target.clone(), read_only: m.read_only })
}

/// The safe `runArgs` the policy lets through, applied where Cove can; the rest are noted.
fn run_args(args: &[String], out: &mut ContainerConfig, notes: &mut Vec<String>) {
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let takes_value = !matches!(flag, "--init" | "--privileged");
        let value = if takes_value { inline.or_else(|| it.next().cloned()) } else { None };
        match (flag, value) {
            ("-e" | "--env", Some(v)) => {
                if let Some((k, val)) = v.split_once('=') {
                    out.env.insert(k.to_string(), val.to_string());
                }
            }
            ("-l" | "--label", Some(v)) => {
                let (k, val) = v.split_once('=').unwrap_or((v.as_str(), ""));
                out.labels.insert(k.to_string(), val.to_string());
            }
            ("--cap-add", Some(v)) => out.cap_add.push(v),
            ("--security-opt", Some(v)) => out.security_opt.push(v),
            ("--mount" | "-v" | "--volume", Some(v)) => {
                let parsed =
                    if flag == "--mount" { crate::model::parse_mount_string(&v).ok() } else { volume_flag(&v) };
                match parsed.as_ref().and_then(mount) {
                    Some(m) => out.mounts.push(m),
                    None => notes.push(format!("runArgs {flag} {v}: not understood; left out")),
                }
            }
            ("--tmpfs", Some(v)) => {
                let target = v.split(':').next().unwrap_or_default().to_string();
                out.mounts.push(ContainerMount { kind: MountType::Tmpfs, source: None, target, read_only: false });
            }
            ("--init", _) => {}
            (flag, _) => notes.push(format!("runArgs {flag}: allowed, but Cove does not apply it")),
        }
    }
}

/// `-v source:target[:ro]`: a volume name or an absolute host path (a bind).
fn volume_flag(v: &str) -> Option<crate::model::Mount> {
    let mut parts = v.split(':');
    let source = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let read_only = parts.next().is_some_and(|o| o.split(',').any(|x| x == "ro"));
    let kind = if source.starts_with('/') { MountKind::Bind } else { MountKind::Volume };
    Some(crate::model::Mount { kind, source: Some(source), target, read_only, options: vec![] })
}

/// A Dockerfile that installs `features` (in the order given) on top of `base`; feature
/// `i`'s folder must be in the context at `features/<i>/`, with the file
/// [`feature_env`] made for it at `features/<i>/devcontainer-features.env`.
pub fn features_dockerfile(base: &str, features: &[Feature]) -> String {
    let mut out = format!("FROM {base}\nUSER root\n");
    for (i, f) in features.iter().enumerate() {
        let dir = format!("{FEATURES_DIR}/{i}");
        let _ = writeln!(out, "# feature {} ({})", f.id, f.reference);
        let _ = writeln!(out, "COPY features/{i}/ {dir}/");
        let _ = writeln!(
            out,
            "RUN cd {dir} && set -a && . ./devcontainer-features.env && set +a && chmod +x install.sh && ./install.sh"
        );
        for (k, v) in &f.container_env {
            let _ = writeln!(out, "ENV {k}={}", serde_json::Value::String(v.clone()));
        }
    }
    let _ = writeln!(out, "RUN rm -rf {FEATURES_DIR}");
    out
}

/// The options of a feature as `install.sh` sees them, plus the reference's `_REMOTE_USER`
/// family (Cove's workspace user), as lines a POSIX shell sources.
pub fn feature_env(feature: &Feature) -> String {
    let mut vars: BTreeMap<String, String> = feature.options_env.clone();
    for (k, v) in [
        ("_REMOTE_USER", "cove"),
        ("_REMOTE_USER_HOME", "/home/cove"),
        ("_CONTAINER_USER", "root"),
        ("_CONTAINER_USER_HOME", "/root"),
    ] {
        vars.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    vars.iter().map(|(k, v)| format!("{k}={}\n", shell_quote(v))).collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> DevContainer {
        let input = crate::Input {
            local_folder: std::path::Path::new("/p"),
            config_file: std::path::Path::new("/p/.devcontainer/devcontainer.json"),
            text,
            env: &BTreeMap::new(),
        };
        crate::resolve(&input).unwrap_or_else(|e| panic!("{e}")).config
    }

    #[test]
    fn settings_from_the_configuration() {
        let c = config(
            r#"{"image": "x", "containerEnv": {"A": "1"}, "mounts": ["type=volume,source=cache,target=/cache"],
                "capAdd": ["SYS_PTRACE"], "forwardPorts": [3000], "portsAttributes": {"3000": {"label": "web"}},
                "runArgs": ["--env", "B=2", "--label=team=x", "--ulimit", "nofile=1024"]}"#,
        );
        let (out, notes) = container_config(&c, &[]);
        assert_eq!(out.env, BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]));
        assert_eq!(
            out.mounts,
            vec![ContainerMount {
                kind: MountType::Volume,
                source: Some("cache".into()),
                target: "/cache".into(),
                read_only: false
            }]
        );
        assert_eq!(out.cap_add, vec!["SYS_PTRACE".to_string()]);
        assert_eq!(out.labels.get("cove.port.3000").map(String::as_str), Some("web"));
        assert_eq!(out.labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(notes, vec!["runArgs --ulimit: allowed, but Cove does not apply it".to_string()]);
    }

    #[test]
    fn feature_layers_and_env() {
        let f = Feature {
            reference: "./hello".into(),
            id: "hello".into(),
            version: None,
            dir: "/p/.devcontainer/hello".into(),
            options_env: BTreeMap::from([("GREETING".into(), "it's".into())]),
            container_env: BTreeMap::from([("HELLO_HOME".into(), "/opt/hello".into())]),
            installs_after: vec![],
            depends_on: vec![],
            metadata: Default::default(),
        };
        let d = features_dockerfile("base:1", std::slice::from_ref(&f));
        assert!(d.starts_with("FROM base:1\nUSER root\n"), "{d}");
        assert!(d.contains("COPY features/0/ /tmp/cove-features/0/\n"), "{d}");
        assert!(d.contains("ENV HELLO_HOME=\"/opt/hello\"\n"), "{d}");
        let env = feature_env(&f);
        assert!(env.contains("GREETING='it'\\''s'\n"), "{env}");
        assert!(env.contains("_REMOTE_USER='cove'\n"), "{env}");
    }
}
