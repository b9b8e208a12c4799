//! The corpus: every folder under `tests/corpus/` is a project with a dev container
//! configuration and an `expected.snap` of what Cove makes of it (the resolved
//! configuration, the features in install order, the policy verdict, or the error).
//! Mismatches fail; review and accept changes with `cargo insta review` or by running with
//! `INSTA_UPDATE=always`. An optional `case.json` sets `env`, `policy` and
//! `devcontainerPath`.
//!
//! Paths are virtual (`/corpus/<case>`) so snapshots do not depend on the checkout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cove_devcontainer::{features, policy, resolve, resolved_json, Input, Policy};
use serde_json::Value;

fn policy_from(case: &Value) -> Policy {
    let mut p = Policy {
        max: Some(policy::Max { cpus: 8, memory_bytes: 16 << 30, storage_bytes: 64 << 30 }),
        ..Policy::default()
    };
    let Some(c) = case.get("policy") else { return p };
    let strings = |k: &str| -> Vec<String> {
        c.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    p.allow_binds = strings("allowBinds");
    p.allow_cap_add = strings("allowCapAdd");
    p.allow_privileged = c.get("allowPrivileged").and_then(Value::as_bool).unwrap_or(false);
    p.allow_initialize_command = c.get("allowInitializeCommand").and_then(Value::as_bool).unwrap_or(false);
    p
}

fn run_case(real: &Path, name: &str) -> String {
    let virt = PathBuf::from(format!("/corpus/{name}"));
    let case: Value = match std::fs::read_to_string(real.join("case.json")) {
        Ok(t) => serde_json::from_str(&t).expect("case.json"),
        Err(_) => Value::Null,
    };
    let mut env: BTreeMap<String, String> =
        [("HOME", "/home/tester"), ("USER", "tester"), ("EDITOR", "vim")].map(|(k, v)| (k.into(), v.into())).into();
    if let Some(Value::Object(extra)) = case.get("env") {
        env.extend(extra.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())));
    }
    let explicit = case.get("devcontainerPath").and_then(Value::as_str).map(PathBuf::from);
    let redact = |s: String| s.replace(&real.display().to_string(), &virt.display().to_string());
    let found = match cove_devcontainer::find(real, explicit.as_deref()) {
        Ok(p) => p,
        Err(e) => return format!("== error\n{}\n", redact(e.to_string())),
    };
    let config_file = virt.join(found.strip_prefix(real).unwrap());
    let text = std::fs::read_to_string(&found).unwrap();
    let resolved = match resolve(&Input { local_folder: &virt, config_file: &config_file, text: &text, env: &env }) {
        Ok(r) => r,
        Err(e) => return format!("== error\n{e}\n"),
    };
    let mut out = String::new();
    out += "== read-configuration\n";
    out += &serde_json::to_string_pretty(&resolved_json(&resolved.config, &resolved.workspace)).unwrap();
    let mut model = resolved.config.clone();
    model.raw.clear();
    out += &format!("\n== devcontainerId\n{}\n== model (raw omitted)\n{model:#?}", resolved.devcontainer_id);
    out += "\n== features (install order)\n";
    let read = |p: &Path| std::fs::read_to_string(real.join(p.strip_prefix(&virt).unwrap_or(p)));
    let features = features::resolve(&resolved.config, &read);
    match &features {
        Ok(f) => out += &serde_json::to_string_pretty(&cove_devcontainer::features_json(f)).unwrap(),
        Err(e) => out += &format!("error: {e}"),
    }
    out += "\n== policy\n";
    let policy = policy_from(&case);
    let verdict = policy::check(&resolved.config, &virt.display().to_string(), &policy)
        .and_then(|()| policy::check_features(features.as_deref().unwrap_or_default(), &policy));
    match verdict {
        Ok(()) => out += "allowed",
        Err(cove_devcontainer::Error::Refused { refusals }) => {
            for r in refusals {
                out += &format!("refused: {r}\n");
            }
        }
        Err(e) => out += &format!("error: {e}"),
    }
    out.push('\n');
    out
}

#[test]
fn corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 40, "the corpus should hold at least 40 cases, found {}", cases.len());
    let mut failed = vec![];
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let output = run_case(case, &name);
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(case);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            settings.bind(|| insta::assert_snapshot!("expected", output))
        }));
        if result.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "snapshot mismatches in: {}", failed.join(", "));
}
