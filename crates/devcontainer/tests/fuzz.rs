//! Property tests standing in for a fuzzer (stable Rust, runs in CI): whatever the input,
//! the parser, the model, features, policy and printing return, never panic.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use cove_devcontainer::{features, jsonc, policy, resolve, resolved_json, Input, Policy};
use proptest::prelude::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "image",
    "build",
    "dockerfile",
    "context",
    "args",
    "target",
    "dockerComposeFile",
    "containerEnv",
    "remoteEnv",
    "containerUser",
    "remoteUser",
    "updateRemoteUserUID",
    "workspaceFolder",
    "workspaceMount",
    "mounts",
    "type",
    "source",
    "forwardPorts",
    "portsAttributes",
    "otherPortsAttributes",
    "label",
    "onAutoForward",
    "protocol",
    "hostRequirements",
    "cpus",
    "memory",
    "storage",
    "overrideCommand",
    "init",
    "privileged",
    "capAdd",
    "securityOpt",
    "runArgs",
    "features",
    "customizations",
    "vscode",
    "extensions",
    "settings",
    "devPort",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "postAttachCommand",
    "initializeCommand",
    "waitFor",
    "shutdownAction",
    "name",
    "overrideFeatureInstallOrder",
    "dependsOn",
    "installsAfter",
    "options",
    "default",
    "id",
    "version",
];

const STRINGS: &[&str] = &[
    "debian",
    "${localEnv:HOME}",
    "${localEnv}",
    "${env:X:d}",
    "${containerEnv:PATH}",
    "${devcontainerId}",
    "${localWorkspaceFolder}",
    "${containerWorkspaceFolderBasename}",
    "${",
    "}",
    "type=bind,source=/etc,target=/x",
    "type=volume,target=/v",
    "host:80",
    ":",
    "4gb",
    "lots",
    "./feat",
    "../up",
    "ghcr.io/a/b:1",
    "node",
    "--privileged",
    "--network=host",
    "-v",
    "/a:/b",
    "--env",
    "notify",
    "http",
    "stopCompose",
    "none",
    "postCreateCommand",
    "",
    "é\u{0}\n",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u32..70000).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        proptest::sample::select(STRINGS).prop_map(Value::from),
        ".*".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (prop_oneof![proptest::sample::select(KEYS).prop_map(String::from), "[a-z./:]{0,8}"], inner),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Text made of JSON-ish tokens, so the parser's deeper paths get exercised.
fn jsonish_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        proptest::sample::select(
            &[
                "{", "}", "[", "]", ",", ":", "//c\n", "/*", "*/", " ", "\n", "true", "nul", "-", "0", "1e5", "01",
                "\"\\u", "\\", "\""
            ][..]
        )
        .prop_map(String::from),
        proptest::sample::select(KEYS).prop_map(|k| format!("\"{k}\"")),
        proptest::sample::select(STRINGS).prop_map(|s| format!("{s:?}")),
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

/// Resolves `text` as devcontainer.json and runs everything downstream on the result.
fn exercise(text: &str, feature_file: &str) {
    let env = BTreeMap::from([("HOME".to_string(), "/home/t".to_string())]);
    let input = Input {
        local_folder: Path::new("/p/proj"),
        config_file: Path::new("/p/proj/.devcontainer/devcontainer.json"),
        text,
        env: &env,
    };
    let Ok(resolved) = resolve(&input) else { return };
    let _ = resolved_json(&resolved.config, &resolved.workspace);
    let read = |p: &Path| {
        if p.ends_with("devcontainer-feature.json") {
            Ok(feature_file.to_string())
        } else {
            Ok(String::new())
        }
    };
    if let Ok(f) = features::resolve(&resolved.config, &read) {
        let _ = cove_devcontainer::features_json(&f);
    }
    let permissive = Policy {
        allow_binds: vec!["/".into()],
        allow_privileged: true,
        allow_cap_add: vec!["ALL".into()],
        allow_initialize_command: true,
        max: Some(policy::Max { cpus: 1, memory_bytes: 1, storage_bytes: 1 }),
    };
    for p in [Policy::default(), permissive] {
        if let Err(e) = policy::check(&resolved.config, "/p/proj", &p) {
            let _ = e.to_string();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_any_string(s in ".*") {
        let _ = jsonc::parse(&s);
    }

    #[test]
    fn parser_never_panics_on_jsonish_text(s in jsonish_text()) {
        if let Err(e) = jsonc::parse(&s) {
            // Positions are 1-based and inside (or just past) the text.
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(e.line <= s.matches('\n').count() + 1);
        }
        exercise(&s, &s);
    }

    #[test]
    fn valid_json_parses_to_the_same_value(v in json_value()) {
        // Plain JSON is JSONC: our parser must agree with serde_json on it.
        let text = serde_json::to_string_pretty(&v).unwrap();
        prop_assert_eq!(jsonc::parse(&text).unwrap(), v);
    }

    #[test]
    fn model_never_panics_on_any_json(v in json_value(), feature in json_value()) {
        exercise(&v.to_string(), &feature.to_string());
        // And as an object, so the model gets past the top-level check more often.
        let mut obj = serde_json::Map::new();
        obj.insert("image".into(), Value::from("debian"));
        if let Value::Object(m) = &v { obj.extend(m.clone()); } else { obj.insert("features".into(), v.clone()); }
        exercise(&Value::Object(obj).to_string(), &feature.to_string());
    }

    #[test]
    fn edited_corpus_files_never_panic(case in 0usize..1000, edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>(), any::<bool>()), 1..6)) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut files: Vec<_> = std::fs::read_dir(&root).unwrap()
            .map(|e| e.unwrap().path().join(".devcontainer/devcontainer.json"))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut chars: Vec<char> = std::fs::read_to_string(&files[case % files.len()]).unwrap().chars().collect();
        for (at, c, insert) in edits {
            if chars.is_empty() { chars.push(c); continue; }
            let i = at.index(chars.len());
            if insert { chars.insert(i, c); } else { chars.remove(i); }
        }
        let text: String = chars.into_iter().collect();
        exercise(&text, "{\"id\": \"f\", \"dependsOn\": {\"./x\": {}}}");
    }
}
