//! The API against the in-memory backend and a real SQLite file: fast checks of routing,
//! the OpenAPI document, validation and auth.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cove_core::{Name, Role, TokenScope};
use cove_server::{auth, openapi};
use cove_store::{NewUser, SqliteStore, Store};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    router: axum::Router,
    token: String,
    store: Arc<dyn Store>,
    alice: cove_core::User,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("cove.db")).await.unwrap());
    let user = store
        .user_create(NewUser {
            name: Name::parse("alice").unwrap(),
            role: Role::Member,
            password_hash: auth::hash_password("pw").unwrap(),
        })
        .await
        .unwrap();
    let (token, _) =
        auth::issue_token(store.as_ref(), &user, "test", cove_core::TokenScope::Write, None).await.unwrap();
    let state = support::fake_state(store.clone(), dir.path(), "http://localhost:7080");
    Api { router: cove_server::router(state), token, store, alice: user, _dir: dir }
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    async fn call_as(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&b).unwrap())
            }
            None => Body::empty(),
        };
        let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn every_documented_route_is_served_and_every_served_route_is_documented() {
    let api = api().await;
    let doc = openapi::document();
    let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, openapi::ROUTES.len());
    for (method, path) in openapi::ROUTES {
        let concrete = path
            .replace("{host}", "github.com")
            .replace("{ws}", "nope")
            .replace("{id}", "nope")
            .replace("{app}", "8080");
        let (status, body) = api.call(&method.to_uppercase(), &concrete, None).await;
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !message.starts_with("no API route"),
            "{method} {path} is documented but not served ({status}: {message})"
        );
    }
    // And a route that is not documented is not served.
    let (status, _) = api.call("GET", "/api/v1/no-such-route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_validates_and_defaults() {
    let api = api().await;
    let check = |body: Value, expected: StatusCode, fragment: &'static str| {
        let api = &api;
        async move {
            let (status, v) = api.call("POST", "/api/v1/workspaces", Some(body.clone())).await;
            assert_eq!(status, expected, "{body}: {v}");
            if !fragment.is_empty() {
                let msg = v["error"]["message"].as_str().unwrap_or("");
                assert!(msg.contains(fragment), "{body}: {msg:?} lacks {fragment:?}");
            }
            v
        }
    };
    check(json!({"name": "UPPER"}), StatusCode::BAD_REQUEST, "invalid workspace name").await;
    check(json!({"name": ""}), StatusCode::BAD_REQUEST, "must not be empty").await;
    check(json!({"name": "ok", "cpus": 0}), StatusCode::BAD_REQUEST, "cpus").await;
    check(json!({"name": "ok", "memory": "9t"}), StatusCode::BAD_REQUEST, "memory").await;
    check(json!({"name": "ok", "memory": true}), StatusCode::BAD_REQUEST, "").await;
    check(json!({"name": "ok", "idle_timeout_seconds": 1_000_000}), StatusCode::BAD_REQUEST, "at most").await;
    check(json!({"name": "ok", "image": ""}), StatusCode::BAD_REQUEST, "image must not be empty").await;
    let (_, list) = api.call("GET", "/api/v1/workspaces", None).await;
    assert_eq!(list, json!([]));

    let v = check(json!({"name": "ok", "memory": 1073741824}), StatusCode::CREATED, "").await;
    assert_eq!(v["image"], "img:1");
    assert_eq!(v["cpus"], 2.0);
    assert_eq!(v["memory_bytes"], 1073741824u64);
    assert_eq!(v["idle_timeout_seconds"], 1800);
    assert_eq!(v["desired_state"], "Running");
    assert_eq!(v["actual_state"], "CreationRequested");
    check(json!({"name": "ok"}), StatusCode::CONFLICT, "already exists").await;
}

#[tokio::test]
async fn patch_and_delete() {
    let api = api().await;
    let (s, _) = api.call("POST", "/api/v1/workspaces", Some(json!({"name": "w", "start": false}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api.call("PATCH", "/api/v1/workspaces/w", Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = api.call("PATCH", "/api/v1/workspaces/w", Some(json!({"desired_state": "Terminated"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = api.call("PATCH", "/api/v1/workspaces/w", Some(json!({"cpus": 4, "idle_timeout_seconds": 0}))).await;
    assert_eq!((s, v["cpus"].as_f64(), v["idle_timeout_seconds"].as_u64()), (StatusCode::OK, Some(4.0), Some(0)));
    assert_eq!(v["generation"], 2);
    let (s, v) = api.call("DELETE", "/api/v1/workspaces/w", None).await;
    assert_eq!((s, v["desired_state"].as_str()), (StatusCode::ACCEPTED, Some("Terminated")));
    let (s, v) = api.call("PATCH", "/api/v1/workspaces/w", Some(json!({"desired_state": "Running"}))).await;
    assert!(s == StatusCode::CONFLICT || s == StatusCode::NOT_FOUND, "{s} {v}");
}

#[tokio::test]
async fn git_tokens_are_stored_encrypted_and_never_listed() {
    let api = api().await;
    let secret = "ghp_TheTokenNobodyMaySee1234";
    let (status, v) = api.call("PUT", "/api/v1/git-tokens/GitHub.com", Some(json!({"token": secret}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["host"].as_str(), v["username"].as_str()), (Some("github.com"), Some("x-access-token")));
    let body = json!({"token": "t2", "username": "cove"});
    assert_eq!(api.call("PUT", "/api/v1/git-tokens/127.0.0.1:8080", Some(body)).await.0, StatusCode::OK);

    let (status, list) = api.call("GET", "/api/v1/git-tokens", None).await;
    assert_eq!(status, StatusCode::OK);
    let hosts: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["127.0.0.1:8080", "github.com"]);
    assert!(!list.to_string().contains(secret) && !list.to_string().contains("t2\""), "{list}");

    // Not in the database files in clear.
    for entry in std::fs::read_dir(api._dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the token is in a file in clear");
    }
    assert!(api._dir.path().join("secret.key").exists());

    for (body, fragment) in [
        (json!({"token": ""}), "token must be"),
        (json!({"token": "a\nb"}), "token must be"),
        (json!({"username": "x"}), ""),
    ] {
        let (status, v) = api.call("PUT", "/api/v1/git-tokens/github.com", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains(fragment), "{v}");
    }
    let (status, v) = api.call("PUT", "/api/v1/git-tokens/a%20b", Some(json!({"token": "x"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not a Git host"), "{v}");

    assert_eq!(api.call("DELETE", "/api/v1/git-tokens/github.com", None).await.0, StatusCode::NO_CONTENT);
    let (status, v) = api.call("DELETE", "/api/v1/git-tokens/github.com", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("cove git-token ls"), "{v}");
}

async fn token(
    api: &Api,
    user: &cove_core::User,
    scope: TokenScope,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    auth::issue_token(api.store.as_ref(), user, "t", scope, expires_at).await.unwrap().0
}

async fn admin_user(api: &Api) -> cove_core::User {
    let name = Name::parse("root").unwrap();
    let new = NewUser { name, role: Role::Admin, password_hash: auth::hash_password("pw").unwrap() };
    api.store.user_create(new).await.unwrap()
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_read_token_only_looks() {
    let api = api().await;
    assert_eq!(
        api.call("POST", "/api/v1/workspaces", Some(json!({"name": "w", "start": false}))).await.0,
        StatusCode::CREATED
    );
    let read = token(&api, &api.alice, TokenScope::Read, None).await;
    let (s, v) = api.call_as(&read, "GET", "/api/v1/workspaces/w", None).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("w")), "{v}");
    for (method, path, body) in [
        ("POST", "/api/v1/workspaces", Some(json!({"name": "x"}))),
        ("PATCH", "/api/v1/workspaces/w", Some(json!({"desired_state": "Running"}))),
        ("DELETE", "/api/v1/workspaces/w", None),
        ("POST", "/api/v1/tokens", Some(json!({"name": "more"}))),
        ("GET", "/api/v1/workspaces/w/ssh", None),
    ] {
        let (s, v) = api.call_as(&read, method, path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert!(message(&v).contains("scope is read") && message(&v).contains("--scope write"), "{v}");
    }
    let (_, v) = api.call("GET", "/api/v1/workspaces/w", None).await;
    assert_eq!((v["desired_state"].as_str(), v["generation"].as_i64()), (Some("Stopped"), Some(1)), "nothing changed");
    let (_, list) = api.call("GET", "/api/v1/workspaces", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_write_token_does_not_reach_admin_routes() {
    let api = api().await;
    let root = admin_user(&api).await;
    let write = token(&api, &root, TokenScope::Write, None).await;
    let admin = token(&api, &root, TokenScope::Admin, None).await;
    let user = json!({"username": "carol", "password": "long enough password"});
    let (s, v) = api.call_as(&write, "POST", "/api/v1/users", Some(user.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("scope is write") && message(&v).contains("--scope admin"), "{v}");
    let (s, _) = api.call_as(&write, "GET", "/api/v1/workspaces?all=true", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Nor can it mint itself a wider token.
    let (s, v) = api.call_as(&write, "POST", "/api/v1/tokens", Some(json!({"name": "x", "scope": "admin"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // /me still tells the real role.
    assert_eq!(api.call_as(&write, "GET", "/api/v1/me", None).await.1["role"], "admin");

    let (s, v) = api.call_as(&admin, "POST", "/api/v1/users", Some(user)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = api.call_as(&admin, "POST", "/api/v1/tokens", Some(json!({"name": "ci", "scope": "admin"}))).await;
    assert_eq!((s, v["info"]["scope"].as_str()), (StatusCode::CREATED, Some("admin")), "{v}");
}

#[tokio::test]
async fn token_scopes_on_create() {
    let api = api().await;
    let (s, v) = api.call("POST", "/api/v1/tokens", Some(json!({"name": "a", "scope": "admin"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("only admins"), "{v}");
    let (s, v) = api.call("POST", "/api/v1/tokens", Some(json!({"name": "a", "scope": "root"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = api.call("POST", "/api/v1/tokens", Some(json!({"name": "d"}))).await;
    assert_eq!((s, v["info"]["scope"].as_str()), (StatusCode::CREATED, Some("write")), "{v}");
    let (s, v) =
        api.call("POST", "/api/v1/tokens", Some(json!({"name": "r", "scope": "read", "expires_in_days": 2}))).await;
    assert_eq!((s, v["info"]["scope"].as_str()), (StatusCode::CREATED, Some("read")), "{v}");
    let (_, list) = api.call("GET", "/api/v1/tokens", None).await;
    // By name: tokens made in the same millisecond have no order among themselves.
    let by_name = |name: &str| list.as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone();
    assert_eq!((by_name("d")["scope"].as_str(), by_name("d")["expires_at"].is_null()), (Some("write"), true));
    assert_eq!((by_name("r")["scope"].as_str(), by_name("r")["expires_at"].is_string()), (Some("read"), true));
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
}

#[tokio::test]
async fn an_expired_token_is_refused_as_expired() {
    let api = api().await;
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expired = token(&api, &api.alice, TokenScope::Write, Some(past)).await;
    let (s, v) = api.call_as(&expired, "GET", "/api/v1/me", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(message(&v).starts_with("token expired"), "{v}");
    let (s, v) = api.call_as("cove_notatoken", "GET", "/api/v1/me", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(message(&v).starts_with("invalid API token"), "{v}");
}

#[tokio::test]
async fn quotas_are_set_by_admins_and_enforced() {
    let api = api().await;
    let root = admin_user(&api).await;
    let admin = token(&api, &root, TokenScope::Admin, None).await;
    let (s, v) = api.call("GET", "/api/v1/admin/quotas", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a member: {v}");
    let (s, _) = api.call("PUT", "/api/v1/admin/quotas", Some(json!({"max_running": 0}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v) = api.call_as(&admin, "GET", "/api/v1/admin/quotas", None).await;
    assert_eq!(v, json!({"max_workspaces": null, "max_running": null, "max_cpus": null, "max_memory_bytes": null}));
    for (bad, fragment) in [
        (json!({"max_cpus": 0}), "max_cpus"),
        (json!({"max_memory": "lots"}), "max_memory"),
        (json!({"max_running": -1}), ""),
        (json!({"max_pods": 1}), ""),
    ] {
        let (s, v) = api.call_as(&admin, "PUT", "/api/v1/admin/quotas", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(message(&v).contains(fragment), "{v}");
    }
    let set = json!({"max_workspaces": 2, "max_running": 1, "max_cpus": 2, "max_memory": "4g"});
    let (s, v) = api.call_as(&admin, "PUT", "/api/v1/admin/quotas", Some(set)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"max_workspaces": 2, "max_running": 1, "max_cpus": 2.0, "max_memory_bytes": 4u64 << 30}));
    assert_eq!(api.call_as(&admin, "GET", "/api/v1/admin/quotas", None).await.1, v);

    let create = |body: Value| api.call("POST", "/api/v1/workspaces", Some(body));
    let (s, v) = create(json!({"name": "big", "cpus": 4})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("quota of 2 CPUs"), "{v}");
    let (s, v) = create(json!({"name": "big", "memory": "8g"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("quota of 4"), "{v}");
    assert_eq!(create(json!({"name": "one"})).await.0, StatusCode::CREATED);
    let (s, v) = create(json!({"name": "two"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        message(&v).contains("you have 1 of 1 running workspaces") && message(&v).contains("stop one first"),
        "{v}"
    );
    assert_eq!(create(json!({"name": "two", "start": false})).await.0, StatusCode::CREATED);
    let (s, v) = create(json!({"name": "three", "start": false})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("you have 2 of 2 workspaces"), "{v}");

    // Patches: starting a second one, or growing one past the limits, is refused.
    let (s, v) = api.call("PATCH", "/api/v1/workspaces/two", Some(json!({"desired_state": "Running"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("1 of 1 running"), "{v}");
    let (s, v) = api.call("PATCH", "/api/v1/workspaces/one", Some(json!({"cpus": 3}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (_, v) = api.call("GET", "/api/v1/workspaces/two", None).await;
    assert_eq!((v["desired_state"].as_str(), v["generation"].as_i64()), (Some("Stopped"), Some(1)), "unchanged");
    // The running one may restart; after a stop the other may start.
    let (s, v) = api.call("PATCH", "/api/v1/workspaces/one", Some(json!({"desired_state": "RestartRequested"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        api.call("PATCH", "/api/v1/workspaces/one", Some(json!({"desired_state": "Stopped"}))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.call("PATCH", "/api/v1/workspaces/two", Some(json!({"desired_state": "Running"}))).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn state_changing_requests_are_audited_without_secrets() {
    let api = api().await;
    let root = admin_user(&api).await;
    let admin = token(&api, &root, TokenScope::Admin, None).await;
    assert_eq!(
        api.call("POST", "/api/v1/workspaces", Some(json!({"name": "w", "start": false}))).await.0,
        StatusCode::CREATED
    );
    let (s, v) = api.call("POST", "/api/v1/tokens", Some(json!({"name": "ci"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = v["token"].as_str().unwrap().to_string();
    let password = "a password nobody may read";
    let login = json!({"username": "root", "password": password});
    assert_eq!(api.call_as("", "POST", "/api/v1/auth/login", Some(login)).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = api.call("PATCH", "/api/v1/workspaces/w", Some(json!({"cpus": 0}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Looking is not recorded.
    assert_eq!(api.call("GET", "/api/v1/workspaces", None).await.0, StatusCode::OK);

    let (s, v) = api.call("GET", "/api/v1/admin/audit", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a member may not read it: {v}");
    assert_eq!(api.call("GET", "/api/v1/admin/audit.jsonl", None).await.0, StatusCode::FORBIDDEN);

    let (s, log) = api.call_as(&admin, "GET", "/api/v1/admin/audit", None).await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let seen: Vec<(String, String, String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            (text("actor_name"), text("action"), text("target"), text("outcome"))
        })
        .collect();
    let row = |a: &str, b: &str, c: &str, d: &str| (a.to_string(), b.to_string(), c.to_string(), d.to_string());
    assert_eq!(
        seen,
        [
            row("alice", "POST /api/v1/workspaces", "/api/v1/workspaces", "201"),
            row("alice", "POST /api/v1/tokens", "/api/v1/tokens", "201"),
            row("root", "POST /api/v1/auth/login", "/api/v1/auth/login", "401 unauthenticated"),
            row("alice", "PATCH /api/v1/workspaces/{ws}", "/api/v1/workspaces/w", "400 invalid_request"),
        ]
    );
    assert_eq!(log[0]["actor_id"], api.alice.id.to_string());
    assert!(log[2]["actor_id"].is_null(), "a failed login has no user: {log}");

    let (s, v) = api.call_as(&admin, "GET", "/api/v1/admin/audit?limit=2", None).await;
    assert_eq!((s, v.as_array().map(Vec::len)), (StatusCode::OK, Some(2)), "{v}");
    assert_eq!(v[1]["action"], "PATCH /api/v1/workspaces/{ws}", "the newest, oldest first");
    let later = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let (_, v) =
        api.call_as(&admin, "GET", &format!("/api/v1/admin/audit?since={}", later.replace('+', "%2B")), None).await;
    assert_eq!(v, json!([]));
    assert_eq!(api.call_as(&admin, "GET", "/api/v1/admin/audit?limit=0", None).await.0, StatusCode::BAD_REQUEST);

    // The export: one JSON object per line, the same entries.
    let req = Request::builder()
        .uri("/api/v1/admin/audit.jsonl")
        .header("authorization", format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, *log.as_array().unwrap());
    assert!(text.ends_with('\n'));

    // No secret in any file of the database (WAL included).
    for entry in std::fs::read_dir(api._dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        for s in [secret.as_str(), password] {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{s:?} is in a file in clear");
        }
    }
}

#[tokio::test]
async fn admins_disable_enable_and_reset_users() {
    let api = api().await;
    let root = admin_user(&api).await;
    let admin = token(&api, &root, TokenScope::Admin, None).await;
    let (s, v) = api.call("PATCH", "/api/v1/users/alice", Some(json!({"disabled": true}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a member: {v}");
    let (s, v) = api.call_as(&admin, "PATCH", "/api/v1/users/root", Some(json!({"disabled": true}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = api.call_as(&admin, "PATCH", "/api/v1/users/nobody", Some(json!({"disabled": true}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = api.call_as(&admin, "PATCH", "/api/v1/users/alice", Some(json!({"password": "short"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (s, v) = api.call_as(&admin, "PATCH", "/api/v1/users/alice", Some(json!({"disabled": true}))).await;
    assert_eq!((s, v["disabled"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    assert_eq!(api.call("GET", "/api/v1/me", None).await.0, StatusCode::UNAUTHORIZED, "her token stops at once");
    let login = |password: &str| json!({"username": "alice", "password": password});
    assert_eq!(api.call_as("", "POST", "/api/v1/auth/login", Some(login("pw"))).await.0, StatusCode::UNAUTHORIZED);

    let by_id = format!("/api/v1/users/{}", api.alice.id);
    let body = json!({"disabled": false, "password": "a brand new password"});
    let (s, v) = api.call_as(&admin, "PATCH", &by_id, Some(body)).await;
    assert_eq!((s, v["disabled"].as_bool()), (StatusCode::OK, Some(false)), "{v}");
    assert_eq!(api.call("GET", "/api/v1/me", None).await.0, StatusCode::OK);
    assert_eq!(api.call_as("", "POST", "/api/v1/auth/login", Some(login("pw"))).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = api.call_as("", "POST", "/api/v1/auth/login", Some(login("a brand new password"))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn rebuild_of_a_workspace_without_a_configuration_says_so_and_changes_nothing() {
    let api = api().await;
    let (s, _) = api.call("POST", "/api/v1/workspaces", Some(json!({"name": "w", "start": false}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api.call("POST", "/api/v1/workspaces/nope/rebuild", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = api.call("POST", "/api/v1/workspaces/w/rebuild", None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // The fake backend's volume holds no project: nothing to apply.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (_, v) = api.call("GET", "/api/v1/workspaces/w", None).await;
        if v["devcontainer"]["build"]["state"] == "none" {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no answer in time: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(v["devcontainer"]["build"]["message"].as_str().unwrap().contains("no devcontainer.json"), "{v}");
    assert_eq!((v["generation"].as_i64(), v["rebuild_needed"].as_bool()), (Some(1), Some(false)), "{v}");
}
