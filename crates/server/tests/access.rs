//! Secrets, login rate limits, sessions and sharing through the API, against the in-memory
//! backend and a real SQLite file (the Podman end-to-end test is crates/cli/tests/secrets.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use cove_core::{Name, Role, TokenScope, User};
use cove_server::auth;
use cove_store::{NewUser, SqliteStore, Store};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    router: axum::Router,
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
}

struct Response {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("cove.db")).await.unwrap());
    cove_server::secrets::check_key(store.as_ref(), dir.path()).await.unwrap();
    let state = support::fake_state(store.clone(), dir.path(), "http://localhost:7080");
    Api { router: cove_server::router(state), store, dir }
}

impl Api {
    async fn user(&self, name: &str, role: Role) -> (User, String) {
        let new = NewUser { name: Name::parse(name).unwrap(), role, password_hash: auth::hash_password("pw").unwrap() };
        let user = self.store.user_create(new).await.unwrap();
        let (token, _) =
            auth::issue_token(self.store.as_ref(), &user, "test", TokenScope::widest_for(role), None).await.unwrap();
        (user, token)
    }

    async fn send(&self, request: Request<Body>) -> Response {
        let resp = self.router.clone().oneshot(request).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Response { status, headers, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    async fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&b).unwrap())
            }
            None => Body::empty(),
        };
        let r = self.send(req.body(body).unwrap()).await;
        (r.status, r.body)
    }

    async fn login(&self, username: &str, password: &str, from: SocketAddr) -> Response {
        let mut req = Request::builder()
            .method("POST")
            .uri("/api/v1/auth/login")
            .header("content-type", "application/json")
            .header("user-agent", "cove-test/1.0")
            .body(Body::from(serde_json::to_vec(&json!({"username": username, "password": password})).unwrap()))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(from));
        self.send(req).await
    }

    /// Every file of the data directory (database, WAL, key), to search byte by byte.
    fn files_contain(&self, needle: &str) -> bool {
        std::fs::read_dir(self.dir.path()).unwrap().any(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    }
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

async fn delivered(api: &Api, ws: &str) -> Vec<(String, bool, String)> {
    let id = ws.parse().unwrap();
    let set = cove_server::secrets::delivered(api.store.as_ref(), api.dir.path(), id).await.unwrap();
    set.into_iter().map(|s| (s.name, s.file, s.value)).collect()
}

#[tokio::test]
async fn secrets_are_scoped_frozen_at_creation_and_never_shown() {
    let api = api().await;
    let (_, admin) = api.user("root", Role::Admin).await;
    let (_, alice) = api.user("alice", Role::Member).await;
    let (_, bob) = api.user("bob", Role::Member).await;
    let instance_value = format!("instance-{}", uuid::Uuid::new_v4().simple());
    let user_value = format!("alice-{}", uuid::Uuid::new_v4().simple());
    let file_value = format!("-----BEGIN-----\n{}\n-----END-----\n", uuid::Uuid::new_v4().simple());

    // Instance scope is for admins.
    let (status, v) =
        api.call(&alice, "PUT", "/api/v1/secrets/SHARED?scope=instance", Some(json!({"value": "x"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) =
        api.call(&admin, "PUT", "/api/v1/secrets/SHARED?scope=instance", Some(json!({"value": instance_value}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(!v.to_string().contains(&instance_value), "a value in an answer: {v}");
    api.call(&admin, "PUT", "/api/v1/secrets/ONLY_INSTANCE?scope=instance", Some(json!({"value": "i"}))).await;
    // The user scope overrides the instance by name.
    let (status, v) = api.call(&alice, "PUT", "/api/v1/secrets/SHARED", Some(json!({"value": user_value}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["scope"].as_str(), v["kind"].as_str()), (Some("user"), Some("env")));
    let body = json!({"value": file_value, "kind": "file"});
    assert_eq!(api.call(&alice, "PUT", "/api/v1/secrets/cert.pem", Some(body)).await.0, StatusCode::OK);

    // Bad input is refused and changes nothing.
    for (path, body, status, fragment) in [
        ("/api/v1/secrets/1BAD", json!({"value": "x"}), StatusCode::BAD_REQUEST, "environment variable name"),
        ("/api/v1/secrets/..", json!({"value": "x", "kind": "file"}), StatusCode::BAD_REQUEST, "secret file name"),
        ("/api/v1/secrets/A?scope=galaxy", json!({"value": "x"}), StatusCode::BAD_REQUEST, "unknown scope"),
        ("/api/v1/secrets/A", json!({"value": "x", "kind": "pipe"}), StatusCode::BAD_REQUEST, ""),
        ("/api/v1/secrets/A", json!({"value": "a\u{0}b"}), StatusCode::BAD_REQUEST, "NUL"),
        ("/api/v1/secrets/A", json!({"value": "x".repeat(40_000)}), StatusCode::PAYLOAD_TOO_LARGE, "larger"),
    ] {
        let (got, v) = api.call(&alice, "PUT", path, Some(body)).await;
        assert_eq!(got, status, "{path}: {v}");
        assert!(message(&v).contains(fragment), "{path}: {v}");
    }

    // Listings: names, kinds and times only.
    let (status, list) = api.call(&alice, "GET", "/api/v1/secrets", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["SHARED", "cert.pem"]);
    assert!(!list.to_string().contains(&user_value) && !list.to_string().contains("BEGIN"), "{list}");
    assert_eq!(api.call(&bob, "GET", "/api/v1/secrets", None).await.1, json!([]));
    assert_eq!(api.call(&bob, "GET", "/api/v1/secrets?scope=instance", None).await.0, StatusCode::FORBIDDEN);

    // Frozen at creation: the resolved set.
    let (status, ws) = api.call(&alice, "POST", "/api/v1/workspaces", Some(json!({"name": "api"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{ws}");
    let id = ws["id"].as_str().unwrap().to_string();
    let expected = vec![
        ("ONLY_INSTANCE".to_string(), false, "i".to_string()),
        ("SHARED".to_string(), false, user_value.clone()),
        ("cert.pem".to_string(), true, file_value.clone()),
    ];
    assert_eq!(delivered(&api, &id).await, expected);
    let (_, listed) = api.call(&alice, "GET", "/api/v1/workspaces/api/secrets", None).await;
    let frozen: Vec<(&str, &str)> = listed["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["scope"].as_str().unwrap()))
        .collect();
    assert_eq!(frozen, [("ONLY_INSTANCE", "instance"), ("SHARED", "user"), ("cert.pem", "user")]);
    assert!(!listed.to_string().contains(&user_value), "{listed}");

    // Later changes are not seen until a refresh; the workspace scope overrides the user's.
    let newer = format!("newer-{}", uuid::Uuid::new_v4().simple());
    api.call(&alice, "PUT", "/api/v1/secrets/SHARED", Some(json!({"value": newer}))).await;
    let own = format!("own-{}", uuid::Uuid::new_v4().simple());
    let (status, v) =
        api.call(&alice, "PUT", "/api/v1/workspaces/api/secrets/SHARED", Some(json!({"value": own}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(api.call(&alice, "DELETE", "/api/v1/secrets/cert.pem", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(delivered(&api, &id).await, expected);
    let (status, v) = api.call(&alice, "POST", "/api/v1/workspaces/api/secrets/refresh", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        delivered(&api, &id).await,
        vec![("ONLY_INSTANCE".to_string(), false, "i".to_string()), ("SHARED".to_string(), false, own.clone())]
    );
    // Another member cannot see or touch it.
    assert_eq!(api.call(&bob, "GET", &format!("/api/v1/workspaces/{id}/secrets"), None).await.0, StatusCode::NOT_FOUND);
    let (status, _) = api.call(&bob, "DELETE", "/api/v1/secrets/SHARED", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No value is in any file of the data directory in clear.
    for value in [&instance_value, &user_value, &file_value, &newer, &own] {
        assert!(!api.files_contain(value), "a secret is in the data directory in clear");
    }

    // Rotation: a new key, every value still readable, the old key refused at start-up.
    let old_key = std::fs::read(api.dir.path().join("secret.key")).unwrap();
    assert_eq!(api.call(&alice, "POST", "/api/v1/admin/rotate-key", None).await.0, StatusCode::FORBIDDEN);
    let (status, v) = api.call(&admin, "POST", "/api/v1/admin/rotate-key", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["reencrypted"].as_u64().unwrap() >= 6, "{v}");
    let new_key = std::fs::read(api.dir.path().join("secret.key")).unwrap();
    assert_ne!(old_key, new_key);
    assert!(!api.dir.path().join("secret.key.new").exists());
    assert_eq!(delivered(&api, &id).await[1].2, own);
    cove_server::secrets::check_key(api.store.as_ref(), api.dir.path()).await.unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("secret.key"), &old_key).unwrap();
    let err = cove_server::secrets::check_key(api.store.as_ref(), elsewhere.path()).await.unwrap_err();
    assert!(format!("{err:#}").contains("is not the key this database"), "{err:#}");
}

#[tokio::test]
async fn password_logins_are_rate_limited_per_account_and_per_address() {
    let api = api().await;
    api.user("ada", Role::Member).await;
    api.user("bea", Role::Member).await;
    let here: SocketAddr = "10.1.1.1:5000".parse().unwrap();
    let there: SocketAddr = "10.2.2.2:5000".parse().unwrap();
    for _ in 0..cove_server::access::ACCOUNT_FAILURES {
        let r = api.login("ada", "wrong", here).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    // Now refused even with the right password and from elsewhere, with a clear message.
    let r = api.login("ada", "pw", there).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(message(&r.body).contains("too many failed logins for this account"), "{}", r.body);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= cove_server::access::WINDOW.as_secs(), "{retry}");
    // Another account is not locked by ada's failures.
    assert_eq!(api.login("bea", "pw", here).await.status, StatusCode::CREATED);

    // One address guessing at many accounts is stopped by the address limit.
    let mut refused = None;
    for i in 0..cove_server::access::ADDRESS_FAILURES + 1 {
        let r = api.login(&format!("guess{i}"), "wrong", there).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, r));
            break;
        }
    }
    let (i, r) = refused.expect("the address was never limited");
    // ada's one refused attempt from `there` above was not counted as a failure.
    assert_eq!(i, cove_server::access::ADDRESS_FAILURES, "{}", r.body);
    assert!(message(&r.body).contains("this address"), "{}", r.body);
    assert_eq!(api.login("bea", "pw", there).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.login("bea", "pw", here).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_dashboard_login_form_shares_the_limits_and_records_sessions() {
    let api = api().await;
    api.user("ada", Role::Member).await;
    let from: SocketAddr = "10.3.3.3:1234".parse().unwrap();
    let form = |password: &str| {
        let mut req = Request::builder()
            .method("POST")
            .uri("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", "Mozilla/5.0 (test)")
            .body(Body::from(format!("username=ada&password={password}&next=%2F")))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(from));
        req
    };
    let resp = api.router.clone().oneshot(form("pw")).await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    let secret = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
    let (_, sessions) = api.call(&secret, "GET", "/api/v1/sessions", None).await;
    assert_eq!(sessions[0]["name"], "browser session", "{sessions}");
    assert_eq!(sessions[0]["user_agent"], "Mozilla/5.0 (test)");
    assert_eq!(sessions[0]["address"], "10.3.3.3");

    for _ in 0..cove_server::access::ACCOUNT_FAILURES {
        let resp = api.router.clone().oneshot(form("wrong")).await.unwrap();
        let status = resp.status();
        assert!(status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS, "the form again: {status}");
    }
    // The API shares the count: the account is locked on both doors.
    assert_eq!(api.login("ada", "pw", "10.4.4.4:1".parse().unwrap()).await.status, StatusCode::TOO_MANY_REQUESTS);
    let resp = api.router.clone().oneshot(form("pw")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let page = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(page.contains("Too many failed logins"), "{page}");
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_at_once() {
    let api = api().await;
    api.user("ada", Role::Member).await;
    let from: SocketAddr = "10.9.8.7:4242".parse().unwrap();
    let first = api.login("ada", "pw", from).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let first = first.body["token"].as_str().unwrap().to_string();
    let second = api.login("ada", "pw", from).await.body["token"].as_str().unwrap().to_string();

    let (status, list) = api.call(&first, "GET", "/api/v1/sessions", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["address"], "10.9.8.7");
    assert_eq!(list[0]["user_agent"], "cove-test/1.0");
    assert_eq!((list[0]["current"].as_bool(), list[1]["current"].as_bool()), (Some(true), Some(false)));
    assert!(list[0]["created_at"].is_string() && list[0].get("last_used_at").is_some());
    assert!(!serde_json::to_string(&list).unwrap().contains(&first), "a session's secret is listed");

    // Revoking the second ends it on its very next request.
    assert_eq!(api.call(&second, "GET", "/api/v1/me", None).await.0, StatusCode::OK);
    let id = list[1]["id"].as_str().unwrap();
    assert_eq!(api.call(&first, "DELETE", &format!("/api/v1/sessions/{id}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.call(&second, "GET", "/api/v1/me", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.call(&first, "GET", "/api/v1/me", None).await.0, StatusCode::OK);
    let (status, v) = api.call(&first, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(message(&v).contains("cove sessions ls"), "{v}");
    // Someone else's session is not theirs to revoke; a plain API token is not a session.
    let (_, bob) = api.user("bob", Role::Member).await;
    let own = list[0]["id"].as_str().unwrap();
    assert_eq!(api.call(&bob, "DELETE", &format!("/api/v1/sessions/{own}"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.call(&bob, "GET", "/api/v1/sessions", None).await.1, json!([]));
}

#[tokio::test]
async fn owners_share_workspaces_with_named_users() {
    let api = api().await;
    let (_, admin) = api.user("root", Role::Admin).await;
    let (_, ada) = api.user("ada", Role::Member).await;
    let (bob_user, bob) = api.user("bob", Role::Member).await;
    let (_, cy) = api.user("cy", Role::Member).await;
    let (status, ws) = api.call(&ada, "POST", "/api/v1/workspaces", Some(json!({"name": "api"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{ws}");
    let id = ws["id"].as_str().unwrap().to_string();
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| format!("{}/{}", w["owner"].as_str().unwrap_or("?"), w["name"].as_str().unwrap()))
            .collect()
    };
    let route = || async {
        cove_server::gate::lookup(api.store.as_ref(), &Name::parse("ada").unwrap(), &Name::parse("api").unwrap())
            .await
            .unwrap()
            .unwrap()
    };
    let term = cove_proxy::App::Named("term".into());

    // Before sharing: bob sees nothing and may open nothing.
    assert_eq!(api.call(&bob, "GET", "/api/v1/workspaces", None).await.1, json!([]));
    assert_eq!(api.call(&bob, "GET", "/api/v1/workspaces/ada%2Fapi", None).await.0, StatusCode::NOT_FOUND);
    assert!(!route().await.allows(&term, Some(bob_user.id)));

    // Only the owner (or an admin) shares; only with users that exist.
    let (status, v) = api.call(&bob, "PUT", &format!("/api/v1/workspaces/{id}/shares/bob"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = api.call(&ada, "PUT", "/api/v1/workspaces/api/shares/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(message(&v).contains("no user named nobody"), "{v}");
    let (status, v) = api.call(&ada, "PUT", "/api/v1/workspaces/api/shares/ada", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = api.call(&ada, "PUT", "/api/v1/workspaces/api/shares/bob", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!([{"user": "bob"}]));
    assert_eq!(api.call(&ada, "PUT", "/api/v1/workspaces/api/shares/bob", None).await.1, json!([{"user": "bob"}]));

    // Shared: bob lists it, reads it, opens its owner-level apps (terminal included).
    let (_, list) = api.call(&bob, "GET", "/api/v1/workspaces", None).await;
    assert_eq!(names(&list), ["ada/api"], "{list}");
    assert_eq!(api.call(&bob, "GET", "/api/v1/workspaces/ada%2Fapi", None).await.0, StatusCode::OK);
    assert_eq!(api.call(&bob, "GET", &format!("/api/v1/workspaces/{id}"), None).await.0, StatusCode::OK);
    assert!(route().await.allows(&term, Some(bob_user.id)));
    assert!(route().await.allows(&cove_proxy::App::Port(8080), Some(bob_user.id)));
    // Others still may not.
    assert_eq!(api.call(&cy, "GET", "/api/v1/workspaces", None).await.1, json!([]));
    assert!(!route().await.allows(&term, None));

    // But bob cannot delete it, manage its secrets or share it on.
    let (status, v) = api.call(&bob, "DELETE", "/api/v1/workspaces/ada%2Fapi", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).contains("only the owner"), "{v}");
    let (status, _) = api.call(&bob, "DELETE", &format!("/api/v1/workspaces/{id}"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(api.call(&bob, "GET", &format!("/api/v1/workspaces/{id}/secrets"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        api.call(&bob, "PUT", &format!("/api/v1/workspaces/{id}/shares/cy"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, still) = api.call(&ada, "GET", "/api/v1/workspaces/api", None).await;
    assert_eq!(still["desired_state"], "Running", "{still}");

    // Removing the share takes it all away again.
    let (status, v) = api.call(&ada, "DELETE", "/api/v1/workspaces/api/shares/bob", None).await;
    assert_eq!((status, v), (StatusCode::OK, json!([])));
    let (status, v) = api.call(&ada, "DELETE", "/api/v1/workspaces/api/shares/bob", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(api.call(&bob, "GET", "/api/v1/workspaces", None).await.1, json!([]));
    assert!(!route().await.allows(&term, Some(bob_user.id)));

    // Admins may share and delete anyone's.
    assert_eq!(api.call(&admin, "PUT", &format!("/api/v1/workspaces/{id}/shares/cy"), None).await.0, StatusCode::OK);
    assert_eq!(api.call(&admin, "DELETE", &format!("/api/v1/workspaces/{id}"), None).await.0, StatusCode::ACCEPTED);
}
