//! Accounts and access through the binary against a real server and engine: token
//! scopes, the admin's quotas and the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::TestServer;

#[test]
fn scopes_quotas_and_the_audit_log() {
    let server = TestServer::start();

    // A read token looks but does not touch.
    let read = server.ok(&["tokens", "create", "look", "--scope", "read", "--expires-in-days", "1"]);
    let read = read.trim();
    assert!(read.starts_with("cove_"), "{read}");
    let listed = server.ok(&["tokens", "ls"]);
    assert!(listed.contains("SCOPE") && listed.lines().any(|l| l.contains("look") && l.contains("read")), "{listed}");
    assert_eq!(server.ok(&["--token", read, "ls", "--json"]).trim(), "[]");
    let err = server.fails(&["--token", read, "create", "nope", "--image", &server.image, "--stopped"]);
    assert!(err.contains("scope is read") && err.contains("--scope write"), "{err}");

    // Quotas: printed, set, enforced with the usage in the message.
    let shown = server.ok(&["admin", "quotas"]);
    assert!(shown.contains("workspaces per user") && shown.contains("none"), "{shown}");
    server.ok(&["admin", "quotas", "--max-workspaces", "1", "--max-memory", "4g"]);
    let json: Value = serde_json::from_str(&server.ok(&["admin", "quotas", "--json"])).unwrap();
    assert_eq!((json["max_workspaces"].as_u64(), json["max_memory_bytes"].as_u64()), (Some(1), Some(4 << 30)));
    assert!(json["max_running"].is_null());
    server.ok(&["create", "one", "--image", &server.image, "--stopped"]);
    let err = server.fails(&["create", "two", "--image", &server.image, "--stopped"]);
    assert!(err.contains("you have 1 of 1 workspaces"), "{err}");
    server.ok(&["admin", "quotas", "--max-workspaces", "none"]);
    let json: Value = serde_json::from_str(&server.ok(&["admin", "quotas", "--json"])).unwrap();
    assert!(json["max_workspaces"].is_null() && json["max_memory_bytes"].as_u64() == Some(4 << 30), "{json}");

    // The audit log saw it all, with who and from where, and no token.
    let lines = server.ok(&["admin", "audit", "--json"]);
    let entries: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |action: &str, outcome: &str| {
        entries.iter().find(|e| e["action"] == action && e["outcome"].as_str().unwrap().starts_with(outcome)).cloned()
    };
    let create = find("POST /api/v1/workspaces", "201").expect("the create is audited");
    assert_eq!(create["actor_name"], "admin");
    assert!(create["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{create}");
    assert!(find("POST /api/v1/workspaces", "409").is_some(), "the refused create too: {lines}");
    assert!(find("POST /api/v1/workspaces", "403").is_some(), "the read token's attempt too: {lines}");
    assert!(find("PUT /api/v1/admin/quotas", "200").is_some(), "{lines}");
    assert!(find("POST /api/v1/tokens", "201").is_some(), "{lines}");
    assert!(!lines.contains(read), "a token secret is in the audit log");
    let table = server.ok(&["admin", "audit"]);
    assert!(table.contains("OUTCOME") && table.contains("/api/v1/admin/quotas"), "{table}");
}
