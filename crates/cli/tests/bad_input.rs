//! Bad input through the CLI and the raw API: a clear message, a non-zero exit or a 4xx
//! with a JSON body, and nothing changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::TestServer;

struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
}

impl Http {
    fn new(url: &str) -> Self {
        Self { rt: support::rt(), client: reqwest::Client::new(), url: url.to_string() }
    }

    fn call(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut r = self.client.request(method, format!("{}{path}", self.url));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r.header("content-type", "application/json").body(b);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        })
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an API error body: {v}"))
}

#[test]
fn cli_refuses_bad_names_resources_and_duplicates() {
    let server = TestServer::start();
    for (args, expect) in [
        (vec!["create", "Bad_Name"], "invalid workspace name"),
        (vec!["create", "a--b"], "'--'"),
        (vec!["create", &"x".repeat(33)], "longer than 32"),
        (vec!["create", "ok", "--cpus", "100"], "cpus must be between"),
        (vec!["create", "ok", "--memory", "1m"], "memory must be between"),
        (vec!["create", "ok", "--memory", "lots"], "not a size"),
        (vec!["create", "ok", "--disk", "10m"], "disk must be between"),
        (vec!["create", "ok", "--image", "has space"], "contains ' '"),
        (vec!["show", "nope"], "workspace nope not found"),
        (vec!["exec", "nope", "--", "true"], "workspace nope not found"),
        (vec!["stop", "nope"], "workspace nope not found"),
    ] {
        let err = server.fails(&args);
        assert!(err.contains(expect), "`cove {}`: expected {expect:?} in {err:?}", args.join(" "));
        assert_eq!(err.lines().count(), 1, "errors are one line: {err:?}");
    }
    assert!(server.ok(&["ls", "--json"]).trim() == "[]", "a refused create left a workspace behind");

    server.ok(&["create", "dup", "--image", &server.image, "--stopped"]);
    let err = server.fails(&["create", "dup", "--image", &server.image]);
    assert!(err.contains("already exists"), "{err}");
    assert!(server.engine.observe().len() <= 1);

    let err = server.fails(&["exec", "dup", "--", "true"]);
    assert!(err.contains("not running"), "{err}");
}

#[test]
fn api_errors_are_json_with_the_right_status() {
    let server = TestServer::start();
    let http = Http::new(&server.url);
    let token = server.token();
    let t = Some(token.as_str());
    use reqwest::Method as M;

    let (s, v) = http.call(M::GET, "/api/v1/health", None, None);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

    // No token, a malformed header, a wrong token.
    let (s, v) = http.call(M::GET, "/api/v1/workspaces", None, None);
    assert_eq!((s, error_code(&v)), (401, "unauthenticated"));
    let (s, v) = http.call(M::GET, "/api/v1/workspaces", Some("cove_0000"), None);
    assert_eq!((s, error_code(&v)), (401, "unauthenticated"));

    // Oversized, malformed and unknown-field bodies.
    let huge = format!("{{\"name\":\"big\",\"image\":\"{}\"}}", "a".repeat(100_000)).into_bytes();
    let (s, v) = http.call(M::POST, "/api/v1/workspaces", t, Some(huge));
    assert_eq!((s, error_code(&v)), (413, "payload_too_large"));
    let (s, v) = http.call(M::POST, "/api/v1/workspaces", t, Some(b"{not json".to_vec()));
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    let (s, v) = http.call(M::POST, "/api/v1/workspaces", t, Some(br#"{"name":"x","colour":"red"}"#.to_vec()));
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("colour"));
    let (s, v) = http.call(M::PATCH, "/api/v1/workspaces/none", t, Some(br#"{"desired_state":"Sleeping"}"#.to_vec()));
    assert_eq!((s, error_code(&v)), (400, "invalid_request"));
    assert!(v["error"]["message"].as_str().unwrap().contains("Sleeping"), "{v}");
    let (s, v) = http.call(M::PATCH, "/api/v1/workspaces/none", t, Some(br#"{"desired_state":"Stopped"}"#.to_vec()));
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = http.call(M::GET, "/api/v1/nowhere", t, None);
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, _) = http.call(M::PUT, "/api/v1/workspaces", t, None);
    assert_eq!(s, 405);

    // Nothing above made a workspace.
    let (s, v) = http.call(M::GET, "/api/v1/workspaces", t, None);
    assert_eq!((s, v), (200, json!([])));

    // Another user's workspace does not exist for them, by name or by id.
    let body = serde_json::to_vec(&json!({"name": "mine", "image": server.image, "start": false})).unwrap();
    let (s, mine) = http.call(M::POST, "/api/v1/workspaces", t, Some(body));
    assert_eq!(s, 201);
    let body = serde_json::to_vec(&json!({"username": "bob", "password": "correct horse battery"})).unwrap();
    let (s, _) = http.call(M::POST, "/api/v1/users", t, Some(body));
    assert_eq!(s, 201);
    let login = serde_json::to_vec(&json!({"username": "bob", "password": "correct horse battery"})).unwrap();
    let (s, v) = http.call(M::POST, "/api/v1/auth/login", None, Some(login));
    assert_eq!(s, 201);
    let bob = v["token"].as_str().unwrap().to_string();
    let by_id = format!("/api/v1/workspaces/{}", mine["id"].as_str().unwrap());
    for (method, path) in [(M::GET, by_id.as_str()), (M::DELETE, by_id.as_str()), (M::GET, "/api/v1/workspaces/mine")] {
        let (s, v) = http.call(method.clone(), path, Some(&bob), None);
        assert_eq!((s, error_code(&v)), (404, "not_found"), "{method} {path} as bob");
    }
    let (s, v) = http.call(M::GET, "/api/v1/workspaces?all=true", Some(&bob), None);
    assert_eq!((s, error_code(&v)), (403, "forbidden"));
    let (s, v) = http.call(
        M::POST,
        "/api/v1/users",
        Some(&bob),
        Some(br#"{"username":"eve","password":"correct horse battery"}"#.to_vec()),
    );
    assert_eq!((s, error_code(&v)), (403, "forbidden"));
    let (s, v) = http.call(M::GET, &by_id, t, None);
    assert_eq!((s, v["desired_state"].as_str()), (200, Some("Stopped")), "bob's DELETE must not have touched it");

    // A wrong password is refused without saying which part was wrong.
    let login = serde_json::to_vec(&json!({"username": "bob", "password": "wrong"})).unwrap();
    let (s, v) = http.call(M::POST, "/api/v1/auth/login", None, Some(login));
    assert_eq!((s, v["error"]["message"].as_str()), (401, Some("invalid username or password")));

    // A revoked token stops working.
    let (s, v) = http.call(M::POST, "/api/v1/tokens", Some(&bob), Some(br#"{"name":"ci"}"#.to_vec()));
    assert_eq!(s, 201);
    let (ci, ci_id) = (v["token"].as_str().unwrap().to_string(), v["info"]["id"].as_str().unwrap().to_string());
    assert_eq!(http.call(M::GET, "/api/v1/me", Some(&ci), None).0, 200);
    assert_eq!(
        http.call(M::DELETE, &format!("/api/v1/tokens/{ci_id}"), t, None).0,
        404,
        "admin cannot revoke bob's token by id"
    );
    assert_eq!(http.call(M::DELETE, &format!("/api/v1/tokens/{ci_id}"), Some(&bob), None).0, 204);
    assert_eq!(http.call(M::GET, "/api/v1/me", Some(&ci), None).0, 401);

    // The OpenAPI document is served and lists the workspace routes.
    let (s, v) = http.call(M::GET, "/api/v1/openapi.json", None, None);
    assert_eq!(s, 200);
    assert!(v["paths"]["/api/v1/workspaces/{ws}"]["patch"].is_object());
}
