//! `cove devcontainer config` end to end: the real binary on projects from the
//! devcontainer corpus. Local only: no server, no engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn corpus(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../devcontainer/tests/corpus").join(case).canonicalize().unwrap()
}

fn cove(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cove"))
        .args(args)
        .env("COVE_E2E_SECRET", "from-the-env")
        .env_remove("EDITOR")
        .output()
        .expect("run cove")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "cove failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn prints_the_resolved_configuration() {
    let dir = corpus("variables-workspace-folders");
    let v = json(&cove(&["devcontainer", "config", dir.to_str().unwrap()]));
    let c = &v["configuration"];
    assert_eq!(c["image"], "debian");
    assert_eq!(c["containerEnv"]["LOCAL"], dir.display().to_string());
    assert_eq!(c["containerEnv"]["CONTAINER"], "/work/variables-workspace-folders");
    assert_eq!(c["configFilePath"]["fsPath"], dir.join(".devcontainer/devcontainer.json").display().to_string());
    assert_eq!(v["workspace"]["workspaceFolder"], "/work/variables-workspace-folders");
    assert_eq!(
        v["workspace"]["workspaceMount"],
        format!("type=bind,source={},target=/workspaces/variables-workspace-folders", dir.display())
    );
}

#[test]
fn local_env_comes_from_the_callers_environment() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join(".devcontainer.json"),
        r#"{"image": "debian", "containerEnv": {"S": "${localEnv:COVE_E2E_SECRET}", "E": "${localEnv:EDITOR:nano}"}}"#,
    )
    .unwrap();
    let v = json(&cove(&["devcontainer", "config", tmp.path().to_str().unwrap()]));
    assert_eq!(v["configuration"]["containerEnv"]["S"], "from-the-env");
    assert_eq!(v["configuration"]["containerEnv"]["E"], "nano");
}

#[test]
fn devcontainer_path_chooses_among_several() {
    let dir = corpus("find-several-subfolders");
    let out = cove(&["devcontainer", "config", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("several dev container configurations") && err.contains("--devcontainer-path"), "{err}");
    let v = json(&cove(&[
        "devcontainer",
        "config",
        dir.to_str().unwrap(),
        "--devcontainer-path",
        ".devcontainer/node/devcontainer.json",
    ]));
    assert_eq!(v["configuration"]["image"], "node");
}

#[test]
fn errors_are_one_line_with_file_line_and_column() {
    let dir = corpus("malformed-missing-comma");
    let out = cove(&["devcontainer", "config", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = dir.join(".devcontainer/devcontainer.json");
    assert_eq!(
        err.trim_end(),
        format!("error: {}: line 3, column 3: unexpected `\"`, expected `,` or `}}`", file.display())
    );
}

#[test]
fn compose_is_refused() {
    let out = cove(&["devcontainer", "config", corpus("compose-not-supported").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Docker Compose configurations (`dockerComposeFile`) are not supported yet"));
}

#[test]
fn features_in_install_order_and_policy_notes() {
    let dir = corpus("features-install-order");
    let v = json(&cove(&["devcontainer", "config", dir.to_str().unwrap(), "--include-features-configuration"]));
    let order: Vec<&str> =
        v["featuresConfiguration"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(order, ["base", "lang", "app", "free"]);

    let out = cove(&["devcontainer", "config", corpus("privileged-refused").to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: refused under the default policy"));
}
