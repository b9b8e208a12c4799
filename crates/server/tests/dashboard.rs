//! The dashboard's pages against the in-memory backend and a real SQLite file: sessions,
//! CSRF, who sees what, the live event stream, usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cove_core::{DesiredState, Name, Role};
use cove_server::auth;
use cove_store::{NewUser, SqliteStore, Store};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Dash {
    router: axum::Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn dash(public_url: &str) -> Dash {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("cove.db")).await.unwrap());
    for (name, role) in [("alice", Role::Member), ("bob", Role::Member), ("root", Role::Admin)] {
        let hash = auth::hash_password("pw").unwrap();
        store.user_create(NewUser { name: Name::parse(name).unwrap(), role, password_hash: hash }).await.unwrap();
    }
    let state = support::fake_state(store.clone(), dir.path(), public_url);
    Dash { router: cove_server::router(state), store, _dir: dir }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Dash {
    async fn send(&self, req: Request<Body>) -> Answer {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
        Answer { status, headers, body }
    }

    /// Logs in through the form; returns the session cookie (`cove_session=...`).
    async fn login(&self, user: &str) -> String {
        let req = Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("username={user}&password=pw&next=%2F")))
            .unwrap();
        let a = self.send(req).await;
        assert_eq!(a.status, StatusCode::FOUND, "{}", a.body);
        let cookie = a.headers[header::SET_COOKIE].to_str().unwrap();
        cookie.split(';').next().unwrap().to_string()
    }

    async fn get(&self, cookie: &str, path: &str) -> Answer {
        self.send(Request::get(path).header(header::COOKIE, cookie).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, cookie: &str, path: &str, form: &str) -> Answer {
        let req = Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_string()))
            .unwrap();
        self.send(req).await
    }

    /// The CSRF token the session's pages carry.
    async fn csrf(&self, cookie: &str) -> String {
        let page = self.get(cookie, "/new").await;
        assert_eq!(page.status, StatusCode::OK);
        let at = page.body.find("name=\"csrf\" value=\"").expect("the form carries a CSRF token") + 19;
        page.body[at..].split('"').next().unwrap().to_string()
    }

    /// Alice logged in (her session cookie and CSRF token) with her workspace `web`, made
    /// through the wizard.
    async fn alice_with_web(&self) -> (String, String, cove_core::Workspace) {
        let alice = self.login("alice").await;
        let token = self.csrf(&alice).await;
        self.post(&alice, "/new", &format!("{NEW_WEB}&csrf={token}")).await;
        let ws = self.workspaces_of("alice").await.remove(0);
        (alice, token, ws)
    }

    async fn workspaces_of(&self, user: &str) -> Vec<cove_core::Workspace> {
        let (u, _) = self.store.user_get_by_name_with_password(&Name::parse(user).unwrap()).await.unwrap().unwrap();
        self.store.workspace_list_by_owner(u.id).await.unwrap()
    }
}

const NEW_WEB: &str = "name=web&source=image&image=&size=1000%3A1073741824&idle=900";

#[tokio::test]
async fn pages_need_a_session_and_send_there_after_login() {
    let d = dash("http://localhost:7080").await;
    let a = d.send(Request::get("/usage").body(Body::empty()).unwrap()).await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert_eq!(a.headers[header::LOCATION], "/login?next=%2Fusage");
    let cookie = d.login("alice").await;
    let list = d.get(&cookie, "/").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("You have no workspaces yet"), "{}", list.body);
    assert!(list.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("default-src 'self'"));
}

#[tokio::test]
async fn session_cookies_are_http_only_same_site_and_secure_over_https() {
    for (url, secure) in [("http://localhost:7080", false), ("https://cove.example.com", true)] {
        let d = dash(url).await;
        let req = Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("username=alice&password=pw"))
            .unwrap();
        let a = d.send(req).await;
        let cookie = a.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
        assert_eq!(cookie.contains("Secure"), secure, "{url}: {cookie}");
    }
}

#[tokio::test]
async fn a_form_without_its_sessions_csrf_token_is_refused_and_changes_nothing() {
    let d = dash("http://localhost:7080").await;
    let alice = d.login("alice").await;
    let bob = d.login("bob").await;
    let alices_token = d.csrf(&alice).await;
    let bobs_token = d.csrf(&bob).await;
    assert_ne!(alices_token, bobs_token);

    for form in [NEW_WEB.to_string(), format!("{NEW_WEB}&csrf="), format!("{NEW_WEB}&csrf={bobs_token}")] {
        let a = d.post(&alice, "/new", &form).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{form}: {}", a.body);
        assert!(a.body.contains("security token"), "{}", a.body);
    }
    // No cookie at all: refused too (and not a login redirect that would lose the form).
    let a = d
        .send(
            Request::post("/new")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("{NEW_WEB}&csrf={alices_token}")))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(d.workspaces_of("alice").await.is_empty(), "a refused form created something");
    // Logging out is a form too.
    assert_eq!(d.post(&alice, "/logout", "").await.status, StatusCode::FORBIDDEN);
    assert_eq!(d.get(&alice, "/").await.status, StatusCode::OK, "the refused logout logged out");

    let a = d.post(&alice, "/new", &format!("{NEW_WEB}&csrf={alices_token}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION], "/w/web");
    let made = d.workspaces_of("alice").await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].spec.resources.cpus_milli, 1000);
    assert_eq!(made[0].idle_timeout_seconds, 900);
}

#[tokio::test]
async fn the_wizard_shows_the_apis_refusals_and_keeps_what_was_typed() {
    let d = dash("http://localhost:7080").await;
    let root = d.login("root").await;
    let token = d.csrf(&root).await;
    // The admin's quota: 1 CPU per workspace. The wizard offers no bigger size...
    let a = d
        .post(&root, "/admin/quotas", &format!("csrf={token}&max_cpus=1&max_memory=&max_workspaces=&max_running="))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let alice = d.login("alice").await;
    let token = d.csrf(&alice).await;
    let wizard = d.get(&alice, "/new").await.body;
    assert!(wizard.contains("value=\"1000:1073741824\"") && !wizard.contains("value=\"2000:"), "{wizard}");
    // ...and a hand-made bigger one gets the API's own message.
    let a =
        d.post(&alice, "/new", &format!("csrf={token}&name=big&source=image&size=4000%3A1073741824&idle=900")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.body.contains("more than the quota of 1 CPUs"), "{}", a.body);
    assert!(a.body.contains("value=\"big\""), "the name typed is kept");
    let a =
        d.post(&alice, "/new", &format!("csrf={token}&name=Not%20a%20name&source=image&size=1000%3A1073741824")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("invalid workspace name"), "{}", a.body);
    let a = d.post(&alice, "/new", &format!("csrf={token}&name=repo&source=repo&repo=")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("repository"), "{}", a.body);
    assert!(d.workspaces_of("alice").await.is_empty());
}

#[tokio::test]
async fn a_member_gets_the_same_not_found_for_another_members_workspace_as_for_none() {
    let d = dash("http://localhost:7080").await;
    let alice = d.login("alice").await;
    let token = d.csrf(&alice).await;
    assert_eq!(d.post(&alice, "/new", &format!("{NEW_WEB}&csrf={token}")).await.status, StatusCode::SEE_OTHER);
    let ws = d.workspaces_of("alice").await.remove(0);
    assert_eq!(d.get(&alice, "/w/web").await.status, StatusCode::OK);

    let bob = d.login("bob").await;
    let bobs = d.csrf(&bob).await;
    let unknown = d.get(&bob, &format!("/w/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    for path in [format!("/w/{}", ws.id), "/w/web".into(), format!("/w/{}/delete", ws.id)] {
        let a = d.get(&bob, &path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.body, unknown.body, "{path} tells more than an unknown address");
    }
    // Nor can bob act on it, nor read its logs, nor see it listed.
    let a = d.post(&bob, &format!("/w/{}/state", ws.id), &format!("csrf={bobs}&to=stopped")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body, unknown.body);
    let a = d.post(&bob, &format!("/w/{}/delete", ws.id), &format!("csrf={bobs}&confirm=web")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(d.get(&bob, &format!("/w/{}/logs", ws.id)).await.status, StatusCode::NOT_FOUND);
    assert!(!d.get(&bob, "/").await.body.contains("/w/"), "bob's list shows a workspace");
    assert_eq!(d.store.workspace_get(ws.id).await.unwrap().desired, DesiredState::Running);
    // Nor the admin pages.
    for path in ["/admin/users", "/admin/quotas", "/admin/audit", "/admin/settings", "/admin/audit.jsonl"] {
        assert_eq!(d.get(&bob, path).await.status, StatusCode::NOT_FOUND, "{path}");
    }

    // Shared with bob: listed for him with its terminal, and still no page of its own.
    let (bob_user, _) = d.store.user_get_by_name_with_password(&Name::parse("bob").unwrap()).await.unwrap().unwrap();
    d.store.workspace_share_add(ws.id, bob_user.id).await.unwrap();
    let list = d.get(&bob, "/").await.body;
    assert!(list.contains("shared by alice") && list.contains("http://term--web--alice.localhost:7080/"), "{list}");
    assert!(!list.contains("/w/"), "{list}");
    assert_eq!(d.get(&bob, &format!("/w/{}", ws.id)).await.status, StatusCode::NOT_FOUND);

    // An admin sees it (by id) and everyone's list.
    let root = d.login("root").await;
    let page = d.get(&root, &format!("/w/{}", ws.id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Owned by alice"), "{}", page.body);
    assert!(d.get(&root, "/").await.body.contains(&format!("/w/{}", ws.id)));
}

#[tokio::test]
async fn actions_need_confirmation_where_they_destroy() {
    let d = dash("http://localhost:7080").await;
    let (alice, token, _) = d.alice_with_web().await;
    let a = d.post(&alice, "/w/web/state", &format!("csrf={token}&to=stopped")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(d.workspaces_of("alice").await[0].desired, DesiredState::Stopped);
    let a = d.post(&alice, "/w/web/delete", &format!("csrf={token}&confirm=wbe")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("Type the workspace&#39;s name"), "{}", a.body);
    assert_eq!(d.workspaces_of("alice").await[0].desired, DesiredState::Stopped);
    let a = d.post(&alice, "/w/web/delete", &format!("csrf={token}&confirm=web")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let left = d.workspaces_of("alice").await;
    assert!(left.is_empty() || left[0].desired == DesiredState::Terminated);
}

/// Reads the event stream until `pred` holds for an event's data.
async fn next_event(d: &Dash, cookie: &str, pred: impl Fn(&str) -> bool) -> String {
    let req = Request::get("/events").header(header::COOKIE, cookie).body(Body::empty()).unwrap();
    let resp = d.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let frame = body.frame().await.expect("the stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
                for event in seen.split("\n\n") {
                    if event.starts_with("event: workspaces") && pred(event) {
                        return event.to_string();
                    }
                }
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no matching event; saw {seen}"))
}

#[tokio::test]
async fn the_event_stream_follows_the_state_the_reconciler_records_and_usage_counts_the_run() {
    let d = dash("http://localhost:7080").await;
    let alice = d.login("alice").await;
    let token = d.csrf(&alice).await;
    let first = next_event(&d, &alice, |_| true).await;
    assert!(first.contains("You have no workspaces yet"), "{first}");
    d.post(&alice, "/new", &format!("{NEW_WEB}&csrf={token}")).await;
    // The fake backend runs it; the stream says so without a reload.
    let running = next_event(&d, &alice, |e| e.contains("state-running")).await;
    assert!(running.contains("/w/web"), "{running}");
    // A stream ends when its session does.
    {
        let req = Request::get("/events").header(header::COOKIE, &alice).body(Body::empty()).unwrap();
        let mut body = d.router.clone().oneshot(req).await.unwrap().into_body();
        body.frame().await.expect("a first event").unwrap();
        let csrf = d.csrf(&alice).await;
        assert_eq!(d.post(&alice, "/logout", &format!("csrf={csrf}")).await.status, StatusCode::FOUND);
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(frame) = body.frame().await {
                frame.unwrap();
            }
        })
        .await;
        assert!(ended.is_ok(), "the event stream outlived the logout");
    }
    let alice = d.login("alice").await;
    // Another member's stream does not carry it.
    let bob = d.login("bob").await;
    let theirs = next_event(&d, &bob, |_| true).await;
    assert!(!theirs.contains("web"), "{theirs}");

    // Its logs come through the API's own stream.
    let logs = d.get(&alice, "/w/web/logs").await;
    assert_eq!(logs.status, StatusCode::OK);
    assert!(logs.body.contains("fake container web is Running"), "{}", logs.body);

    // The run is recorded: the usage page lists it, with the chart.
    let usage = d.get(&alice, "/usage").await;
    assert_eq!(usage.status, StatusCode::OK);
    assert!(usage.body.contains("data-usage=\"web\""), "{}", usage.body);
    assert!(usage.body.contains("<svg"), "{}", usage.body);
    assert!(!d.get(&bob, "/usage").await.body.contains("data-usage=\"web\""));
}

#[tokio::test]
async fn admins_manage_users_and_prices_from_the_pages() {
    let d = dash("http://localhost:7080").await;
    let root = d.login("root").await;
    let token = d.csrf(&root).await;
    let a = d.post(&root, "/admin/users", &format!("csrf={token}&username=carol&password=short&role=member")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("at least 12 characters"), "{}", a.body);
    let a = d
        .post(&root, "/admin/users", &format!("csrf={token}&username=carol&password=a+long+password&role=member"))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let (carol, _) = d.store.user_get_by_name_with_password(&Name::parse("carol").unwrap()).await.unwrap().unwrap();
    let a = d.post(&root, &format!("/admin/users/{}", carol.id), &format!("csrf={token}&action=disable")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(d.store.user_get(carol.id).await.unwrap().disabled);

    let a = d.post(&root, "/admin/settings", &format!("csrf={token}&cpu_hour=lots&gb_hour=1&currency=%E2%82%AC")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a =
        d.post(&root, "/admin/settings", &format!("csrf={token}&cpu_hour=0.5&gb_hour=0.25&currency=%E2%82%AC")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(d.get(&root, "/usage").await.body.contains("€0.50 per CPU-hour"));
    // What the pages did is in the audit log, with who did it.
    let audit = d.get(&root, "/admin/audit").await.body;
    assert!(audit.contains("POST /admin/users/{id}") && audit.contains("root"), "{audit}");
}

/// Every page a member can open, for a search of what must never be in them.
async fn all_pages(d: &Dash, cookie: &str) -> String {
    let mut all = String::new();
    for path in ["/", "/secrets", "/sessions", "/tokens", "/usage", "/w/web", "/new"] {
        let a = d.get(cookie, path).await;
        all.push_str(&a.body);
    }
    all
}

const VALUE: &str = "s3cr3t-value-7f1c";

async fn user_id(d: &Dash, name: &str) -> cove_core::UserId {
    d.store.user_get_by_name_with_password(&Name::parse(name).unwrap()).await.unwrap().unwrap().0.id
}

#[tokio::test]
async fn the_secrets_pages_set_list_and_delete_secrets_and_never_show_a_value() {
    use cove_store::SecretScope;
    let d = dash("http://localhost:7080").await;
    let alice = d.login("alice").await;
    let token = d.csrf(&alice).await;
    let empty = d.get(&alice, "/secrets").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(empty.body.contains("You have no secrets yet"), "{}", empty.body);
    assert!(empty.body.contains("type=\"password\""), "an environment value is typed in a password field");
    assert!(!empty.body.contains("Instance secrets"), "a member sees the instance's secrets");

    // An environment variable and a file, from the page's forms.
    let a = d.post(&alice, "/secrets", &format!("csrf={token}&kind=env&name=API_KEY&value={VALUE}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("Secret API_KEY set (user scope)"), "{}", a.body);
    let a = d.post(&alice, "/secrets", &format!("csrf={token}&kind=file&name=id_rsa&value={VALUE}%0Aline2")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let listed = d.get(&alice, "/secrets").await.body;
    assert!(listed.contains("data-secret=\"API_KEY\"") && listed.contains("data-secret=\"id_rsa\""), "{listed}");
    assert!(listed.contains("environment variable") && listed.contains("file in /run/cove/secrets"), "{listed}");
    let uid = user_id(&d, "alice").await;
    assert_eq!(d.store.secret_list(SecretScope::User(uid)).await.unwrap().len(), 2);

    // A refusal shows the API's words and keeps the name typed, not the value.
    let a = d.post(&alice, "/secrets", &format!("csrf={token}&kind=env&name=1BAD&value={VALUE}")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("is not an environment variable name"), "{}", a.body);
    assert!(a.body.contains("value=\"1BAD\""), "{}", a.body);
    assert!(!a.body.contains(VALUE), "a refused form sent the value back");
    let a = d.post(&alice, "/secrets", &format!("csrf={token}&kind=env&name=X&value=v&scope=instance")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "a member set an instance secret: {}", a.body);
    assert!(d.store.secret_list(SecretScope::Instance).await.unwrap().is_empty());

    // A workspace: it gets the frozen set, has secrets of its own, and refreshes.
    assert_eq!(d.post(&alice, "/new", &format!("{NEW_WEB}&csrf={token}")).await.status, StatusCode::SEE_OTHER);
    let ws = d.workspaces_of("alice").await.remove(0);
    let page = d.get(&alice, "/w/web").await.body;
    assert!(page.contains("id=\"frozen\"") && page.contains("<code>API_KEY</code>"), "{page}");
    assert!(page.contains("Refresh secrets") && page.contains("next start"), "{page}");
    let a = d.post(&alice, "/w/web/secrets", &format!("csrf={token}&kind=env&name=DB_URL&value={VALUE}-ws")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION], "/w/web?done=secret-set#secrets");
    assert_eq!(d.store.secret_list(SecretScope::Workspace(ws.id)).await.unwrap().len(), 1);
    assert!(d.get(&alice, "/w/web").await.body.contains("data-secret=\"DB_URL\""));
    let frozen = |d: &Dash| {
        let store = d.store.clone();
        async move { store.workspace_secret_list(ws.id).await.unwrap().iter().map(|s| s.name.clone()).collect::<Vec<_>>() }
    };
    assert!(!frozen(&d).await.contains(&"DB_URL".to_string()), "set after creation, not frozen yet");
    let a = d.post(&alice, "/w/web/secrets/refresh", &format!("csrf={token}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(frozen(&d).await.contains(&"DB_URL".to_string()), "the refresh took the current set");

    // Nowhere in any page, nor in the audit log an admin reads.
    assert!(!all_pages(&d, &alice).await.contains(VALUE), "a secret's value is in a page");
    let root = d.login("root").await;
    for path in ["/admin/audit", "/admin/audit.jsonl", "/secrets", &format!("/w/{}", ws.id)] {
        assert!(!d.get(&root, path).await.body.contains(VALUE), "{path} shows a value");
    }

    // Deleting, from the list and from the workspace's page.
    let a = d.post(&alice, "/secrets/delete", &format!("csrf={token}&name=API_KEY&scope=user")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("Secret API_KEY deleted"), "{}", a.body);
    let a = d.post(&alice, "/secrets/delete", &format!("csrf={token}&name=API_KEY&scope=user")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("no user secret named API_KEY"), "{}", a.body);
    let a = d.post(&alice, "/w/web/secrets/delete", &format!("csrf={token}&name=DB_URL")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(d.store.secret_list(SecretScope::Workspace(ws.id)).await.unwrap().is_empty());
    assert_eq!(d.store.secret_list(SecretScope::User(uid)).await.unwrap().len(), 1);
}

#[tokio::test]
async fn admins_manage_instance_secrets_that_members_do_not_see_listed() {
    use cove_store::SecretScope;
    let d = dash("http://localhost:7080").await;
    let root = d.login("root").await;
    let token = d.csrf(&root).await;
    let page = d.get(&root, "/secrets").await.body;
    assert!(page.contains("Instance secrets") && page.contains("No instance secrets"), "{page}");
    let a = d.post(&root, "/secrets", &format!("csrf={token}&kind=env&name=PROXY&value={VALUE}&scope=instance")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(d.store.secret_list(SecretScope::Instance).await.unwrap().len(), 1);
    let page = d.get(&root, "/secrets").await.body;
    assert!(page.contains("data-secret=\"PROXY\"") && !page.contains(VALUE), "{page}");
    let alice = d.login("alice").await;
    assert!(!d.get(&alice, "/secrets").await.body.contains("PROXY"));
    let a = d.post(&root, "/secrets/delete", &format!("csrf={token}&name=PROXY&scope=instance")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(d.store.secret_list(SecretScope::Instance).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_new_forms_refuse_a_missing_csrf_token_and_change_nothing() {
    use cove_store::SecretScope;
    let d = dash("http://localhost:7080").await;
    let (alice, _, ws) = d.alice_with_web().await;
    let bob = d.login("bob").await;
    let bobs = d.csrf(&bob).await;
    let session = d.store.session_list_by_user(user_id(&d, "alice").await).await.unwrap()[0].token.id;
    let forms = [
        ("/secrets", format!("kind=env&name=A&value={VALUE}")),
        ("/secrets/delete", "name=A&scope=user".to_string()),
        ("/w/web/secrets", format!("kind=env&name=A&value={VALUE}")),
        ("/w/web/secrets/delete", "name=A".to_string()),
        ("/w/web/secrets/refresh", String::new()),
        ("/w/web/shares", "user=bob".to_string()),
        ("/w/web/shares/remove", "user=bob".to_string()),
        (&format!("/sessions/{session}/revoke"), String::new()),
    ]
    .map(|(p, f)| (p.to_string(), f));
    for (path, form) in &forms {
        for with in [form.clone(), format!("{form}&csrf="), format!("{form}&csrf={bobs}")] {
            let a = d.post(&alice, path, &with).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} {with}: {}", a.body);
            assert!(!a.body.contains(VALUE));
        }
    }
    let uid = user_id(&d, "alice").await;
    assert!(d.store.secret_list(SecretScope::User(uid)).await.unwrap().is_empty());
    assert!(d.store.secret_list(SecretScope::Workspace(ws.id)).await.unwrap().is_empty());
    assert!(d.store.workspace_share_list(ws.id).await.unwrap().is_empty());
    assert_eq!(d.get(&alice, "/sessions").await.status, StatusCode::OK, "a refused revoke logged out");
}

#[tokio::test]
async fn a_member_cannot_see_or_change_anothers_secrets_or_sessions() {
    use cove_store::SecretScope;
    let d = dash("http://localhost:7080").await;
    let (alice, token, ws) = d.alice_with_web().await;
    d.post(&alice, "/secrets", &format!("csrf={token}&kind=env&name=ALICE_ONLY&value={VALUE}")).await;
    d.post(&alice, "/w/web/secrets", &format!("csrf={token}&kind=env&name=WS_ONLY&value={VALUE}")).await;
    let uid = user_id(&d, "alice").await;
    let alices_session = d.store.session_list_by_user(uid).await.unwrap()[0].token.id;

    let bob = d.login("bob").await;
    let bobs = d.csrf(&bob).await;
    let pages = all_pages(&d, &bob).await;
    assert!(!pages.contains("ALICE_ONLY") && !pages.contains("WS_ONLY"), "bob sees alice's secrets");
    assert!(!pages.contains(&alices_session.to_string()), "bob sees alice's session");
    // Deleting "ALICE_ONLY" as bob means bob's own, which he has not.
    let a = d.post(&bob, "/secrets/delete", &format!("csrf={bobs}&name=ALICE_ONLY&scope=user")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = d.post(&bob, "/secrets/delete", &format!("csrf={bobs}&name=ALICE_ONLY&scope=instance")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let unknown = d.get(&bob, &format!("/w/{}", uuid::Uuid::new_v4())).await.body;
    for (path, form) in [
        (format!("/w/{}/secrets", ws.id), format!("csrf={bobs}&kind=env&name=WS_ONLY&value=bobs")),
        (format!("/w/{}/secrets/delete", ws.id), format!("csrf={bobs}&name=WS_ONLY")),
        (format!("/w/{}/secrets/refresh", ws.id), format!("csrf={bobs}")),
    ] {
        let a = d.post(&bob, &path, &form).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.body, unknown, "{path} tells more than an unknown address");
    }
    let a = d.post(&bob, &format!("/sessions/{alices_session}/revoke"), &format!("csrf={bobs}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(d.store.secret_list(SecretScope::User(uid)).await.unwrap().len(), 1);
    assert_eq!(d.store.secret_list(SecretScope::Workspace(ws.id)).await.unwrap().len(), 1);
    assert_eq!(d.get(&alice, "/sessions").await.status, StatusCode::OK, "bob ended alice's session");
}

#[tokio::test]
async fn the_sessions_page_lists_logins_and_revokes_them() {
    let d = dash("http://localhost:7080").await;
    let login = |agent: &'static str| {
        let req = Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::USER_AGENT, agent)
            .body(Body::from("username=alice&password=pw"))
            .unwrap();
        let d = &d;
        async move {
            let a = d.send(req).await;
            a.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string()
        }
    };
    let laptop = login("LaptopBrowser/1.0").await;
    let phone = login("PhoneBrowser/2.0").await;
    let page = d.get(&laptop, "/sessions").await.body;
    assert!(page.contains("LaptopBrowser/1.0") && page.contains("PhoneBrowser/2.0"), "{page}");
    assert_eq!(page.matches("class=\"badge\">this session").count(), 1, "{page}");
    let sessions = d.store.session_list_by_user(user_id(&d, "alice").await).await.unwrap();
    let id_of = |agent: &str| sessions.iter().find(|s| s.user_agent.as_deref() == Some(agent)).unwrap().token.id;
    let (laptop_id, phone_id) = (id_of("LaptopBrowser/1.0"), id_of("PhoneBrowser/2.0"));
    // "this session" is the row of the browser asking.
    let row = |page: &str, id: cove_core::TokenId| {
        let at = page.find(&format!("data-session=\"{id}\"")).unwrap();
        page[at..].split("</tr>").next().unwrap().to_string()
    };
    assert!(row(&page, laptop_id).contains("badge\">this session"));
    assert!(!row(&page, phone_id).contains("badge\">this session"));

    // Revoking another session ends it at once; revoking this one logs out.
    let token = d.csrf(&laptop).await;
    let a = d.post(&laptop, &format!("/sessions/{phone_id}/revoke"), &format!("csrf={token}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION], "/sessions");
    assert_eq!(d.get(&phone, "/").await.status, StatusCode::FOUND, "the revoked session still works");
    assert!(!d.get(&laptop, "/sessions").await.body.contains("PhoneBrowser"));
    let a = d.post(&laptop, &format!("/sessions/{laptop_id}/revoke"), &format!("csrf={token}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers[header::LOCATION], "/login");
    let after = d.get(&laptop, "/sessions").await;
    assert_eq!(after.status, StatusCode::FOUND);
    assert_eq!(after.headers[header::LOCATION], "/login?next=%2Fsessions");
}

#[tokio::test]
async fn sharing_from_the_workspace_page_shows_up_for_the_other_user() {
    let d = dash("http://localhost:7080").await;
    let (alice, token, ws) = d.alice_with_web().await;
    let page = d.get(&alice, "/w/web").await.body;
    assert!(page.contains("id=\"share-user\"") && page.contains("Not shared"), "{page}");
    let bob = d.login("bob").await;
    assert!(!d.get(&bob, "/").await.body.contains("shared by alice"));

    let a = d.post(&alice, "/w/web/shares", &format!("csrf={token}&user=nobody")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.contains("no user named nobody"), "{}", a.body);
    let a = d.post(&alice, "/w/web/shares", &format!("csrf={token}&user=alice")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("owns workspace web"), "{}", a.body);
    let a = d.post(&alice, "/w/web/shares", &format!("csrf={token}&user=bob")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION], "/w/web?done=shared#sharing");
    let page = d.get(&alice, "/w/web?done=shared").await.body;
    assert!(page.contains("data-share=\"bob\"") && page.contains("role=\"status\">Shared."), "{page}");
    // The notice is one of a fixed few: a made-up one shows nothing.
    let page = d.get(&alice, "/w/web?done=%3Cb%3Ehi").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("class=\"notice\"") && !page.body.contains("<b>hi"), "{}", page.body);
    let list = d.get(&bob, "/").await.body;
    assert!(list.contains("shared by alice"), "{list}");

    // Bob, given it, may not share it on nor unshare himself from alice's page.
    let bobs = d.csrf(&bob).await;
    let a = d.post(&bob, &format!("/w/{}/shares", ws.id), &format!("csrf={bobs}&user=root")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(d.store.workspace_share_list(ws.id).await.unwrap().len(), 1);

    let a = d.post(&alice, "/w/web/shares/remove", &format!("csrf={token}&user=bob")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(!d.get(&bob, "/").await.body.contains("shared by alice"));
    assert!(d.get(&alice, "/w/web").await.body.contains("Not shared"));
}

#[tokio::test]
async fn rebuild_is_a_confirmed_form_for_the_owner_only() {
    let d = dash("http://localhost:7080").await;
    let (alice, token, ws) = d.alice_with_web().await;
    let page = d.get(&alice, "/w/web").await.body;
    let at = page.find("action=\"/w/web/rebuild\"").expect("a rebuild form");
    let form = &page[page[..at].rfind("<form").unwrap()..at + page[at..].find("</form>").unwrap()];
    assert!(form.contains("data-confirm=\"Rebuild web?") && form.contains("name=\"csrf\""), "{form}");

    assert_eq!(d.post(&alice, "/w/web/rebuild", "").await.status, StatusCode::FORBIDDEN);
    let bob = d.login("bob").await;
    let bobs = d.csrf(&bob).await;
    let a = d.post(&bob, &format!("/w/{}/rebuild", ws.id), &format!("csrf={bobs}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = d.post(&alice, "/w/web/rebuild", &format!("csrf={token}")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers[header::LOCATION], "/w/web?done=rebuilding");
    let page = d.get(&alice, "/w/web?done=rebuilding").await.body;
    assert!(page.contains("Rebuilding: Cove reads its devcontainer.json again"), "{page}");
}
