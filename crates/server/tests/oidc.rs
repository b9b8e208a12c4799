//! OpenID Connect login end to end against a real provider: the `oidc-provider` npm
//! package (tests/oidc/provider.mjs) as a child process on loopback, and the real server
//! stack (router, store file, session cookies) with the in-memory container backend.
//! The browser is plain HTTP with a cookie jar, following redirects by hand so that each
//! hop can be looked at and replayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cove_core::Role;
use cove_runtime::FakeBackend;
use cove_server::oidc::{Oidc, OidcConfig, Policy, Secret};
use cove_server::tickets::Signer;
use cove_server::{AppState, Config};
use cove_store::{SqliteStore, Store, UserPatch};
use reqwest::{StatusCode, Url};
use serde_json::{json, Value};

const CLIENT_ID: &str = "cove";
const CLIENT_SECRET: &str = "a-test-client-secret-of-some-length";

/// The provider's process, killed when the test ends however it ends.
struct ProviderProcess {
    child: Child,
    issuer: String,
}

impl Drop for ProviderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn read_line(lines: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the OIDC provider exited early (its stderr is above)");
    line.trim().to_string()
}

/// Starts the provider; `configure` gives it the client (with Cove's redirect URI) and
/// the accounts once Cove listens.
fn start_provider() -> (ProviderProcess, BufReader<ChildStdout>) {
    let modules = repo_root().join("tests/oidc/node_modules/oidc-provider");
    assert!(modules.exists(), "{} is missing: run scripts/install-deps (npm ci in tests/oidc)", modules.display());
    let mut child = Command::new("node")
        .arg("tests/oidc/provider.mjs")
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node must be installed (scripts/install-deps)");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let first = read_line(&mut stdout);
    let issuer = first.strip_prefix("issuer ").unwrap_or_else(|| panic!("unexpected first line {first:?}")).to_string();
    (ProviderProcess { child, issuer }, stdout)
}

fn configure(provider: &mut ProviderProcess, stdout: &mut BufReader<ChildStdout>, redirect_uri: &str) {
    let account = |email: &str, groups: &[&str]| json!({ "email": email, "email_verified": true, "groups": groups });
    let setup = json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": redirect_uri,
        "users": {
            "alice-sub": account("alice@example.com", &["dev", "cove-admins"]),
            "bob-sub": account("Bob@Example.com", &["dev"]),
            "carol-sub": account("carol@other.test", &["dev"]),
            "dave-sub": account("dave@example.com", &["sales"]),
        }
    });
    let stdin = provider.child.stdin.as_mut().unwrap();
    writeln!(stdin, "{setup}").unwrap();
    stdin.flush().unwrap();
    assert_eq!(read_line(stdout), "ready");
}

struct World {
    cove: String,
    store: Arc<SqliteStore>,
    provider: ProviderProcess,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let (mut provider, mut stdout) = start_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("cove.db")).await.unwrap());
    let fake = Arc::new(FakeBackend::new());
    let reconcile = cove_reconciler::Config { interval: Duration::from_millis(200), ..Default::default() };
    let reconciler = cove_reconciler::spawn(store.clone(), fake.clone(), reconcile.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = Config::new(listener.local_addr().unwrap(), dir.path().to_path_buf());
    config.reconcile = reconcile;
    config.public_url = format!("http://localhost:{port}");
    let oidc_config = OidcConfig {
        issuer: provider.issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET.into()),
        display_name: "Test IdP".into(),
        scopes: vec!["email".into(), "profile".into(), "groups".into()],
        policy: Policy {
            allowed_domains: vec!["example.com".into()],
            allowed_groups: vec!["dev".into()],
            admin_group: Some("cove-admins".into()),
            groups_claim: "groups".into(),
        },
    };
    config.oidc = Some(oidc_config.clone());
    let oidc = Oidc::new(oidc_config, &config.public_url).unwrap();
    configure(&mut provider, &mut stdout, oidc.redirect_url());
    // Keep draining the provider's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in stdout.lines() {});
    let state = AppState {
        oidc: Some(Arc::new(oidc)),
        ..AppState::bare(store.clone(), fake, reconciler, config, Signer::with_key([3; 32]))
    };
    let proxy = Arc::new(cove_server::proxy_for(state.clone()));
    let app = cove_server::router(state);
    tokio::spawn(async move { cove_proxy::serve(listener, proxy, app).await });
    World { cove: format!("http://localhost:{port}"), store, provider, _dir: dir }
}

/// A browser without a browser: cookies per host and port, redirects followed by hand.
#[derive(Default)]
struct Browser {
    jar: HashMap<String, HashMap<String, String>>,
    client: reqwest::Client,
}

struct Page {
    url: Url,
    status: StatusCode,
    body: String,
    /// Every URL requested on the way, the first included.
    hops: Vec<Url>,
}

fn authority(url: &Url) -> String {
    format!("{}:{}", url.host_str().unwrap(), url.port_or_known_default().unwrap())
}

impl Browser {
    fn new() -> Self {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { jar: HashMap::new(), client }
    }

    fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jar.get(&authority(&Url::parse(url).unwrap()))?.get(name).cloned()
    }

    fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        self.jar.entry(authority(&Url::parse(url).unwrap())).or_default().insert(name.into(), value.into());
    }

    /// GETs `url` and follows redirects until a page, or until `stop` says a URL is not
    /// to be requested (then that URL is the page's, with status 0-like `FOUND`).
    async fn go_until(&mut self, url: &str, stop: impl Fn(&Url) -> bool) -> Page {
        let mut url = Url::parse(url).unwrap();
        let mut hops = vec![];
        for _ in 0..20 {
            if !hops.is_empty() && stop(&url) {
                return Page { url, status: StatusCode::FOUND, body: String::new(), hops };
            }
            hops.push(url.clone());
            let cookies = self
                .jar
                .get(&authority(&url))
                .map(|c| c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
            let mut request = self.client.get(url.clone());
            if let Some(cookies) = cookies.filter(|c| !c.is_empty()) {
                request = request.header("cookie", cookies);
            }
            let response = request.send().await.unwrap();
            for set in response.headers().get_all("set-cookie") {
                let first = set.to_str().unwrap().split(';').next().unwrap();
                let (name, value) = first.split_once('=').unwrap();
                let deleted = value.is_empty() || set.to_str().unwrap().contains("Max-Age=0");
                let cookies = self.jar.entry(authority(&url)).or_default();
                if deleted {
                    cookies.remove(name.trim());
                } else {
                    cookies.insert(name.trim().into(), value.into());
                }
            }
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_string();
                url = url.join(&location).unwrap();
                continue;
            }
            let body = response.text().await.unwrap();
            return Page { url, status, body, hops };
        }
        panic!("too many redirects: {hops:?}");
    }

    async fn go(&mut self, url: &str) -> Page {
        self.go_until(url, |_| false).await
    }
}

impl World {
    /// From Cove's "Sign in with" to the provider's login page, then as `sub`, up to (not
    /// into) Cove's callback: its URL, with the code and state.
    async fn to_callback(&self, browser: &mut Browser, sub: &str) -> Url {
        let at_provider = browser.go(&format!("{}/auth/oidc/login?next=/", self.cove)).await;
        assert_eq!(at_provider.status, StatusCode::OK, "{}", at_provider.body);
        assert!(at_provider.url.path().starts_with("/interaction/"), "{}", at_provider.url);
        let authorize = &at_provider.hops[1];
        let query: HashMap<_, _> = authorize.query_pairs().into_owned().collect();
        assert_eq!(query.get("code_challenge_method").map(String::as_str), Some("S256"), "{authorize}");
        assert!(query.contains_key("code_challenge") && query.contains_key("nonce"), "{authorize}");
        assert_eq!(query.get("state"), browser.cookie(&self.cove, "cove_oidc_state").as_ref(), "{authorize}");
        let login = format!("{}/login?sub={sub}", at_provider.url);
        let page = browser.go_until(&login, |u| u.path() == "/auth/oidc/callback").await;
        assert_eq!(page.url.path(), "/auth/oidc/callback", "{}: {}", page.url, page.body);
        page.url
    }

    /// A whole login as `sub`: the page it ends on.
    async fn login(&self, browser: &mut Browser, sub: &str) -> Page {
        let callback = self.to_callback(browser, sub).await;
        browser.go(callback.as_str()).await
    }

    /// The role the session cookie gives, asked of the API with it as a bearer token.
    async fn role(&self, browser: &Browser) -> String {
        let session = browser.cookie(&self.cove, "cove_session").expect("a session cookie");
        let me: Value = browser
            .client
            .get(format!("{}/api/v1/me", self.cove))
            .bearer_auth(session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        me["role"].as_str().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_login_against_a_real_provider() {
    let w = world().await;

    // The login page offers the provider.
    let mut browser = Browser::new();
    let login_page = browser.go(&format!("{}/login", w.cove)).await;
    assert!(login_page.body.contains("Sign in with Test IdP"), "{}", login_page.body);
    assert!(login_page.body.contains("href=\"/auth/oidc/login?next=%2F\""), "{}", login_page.body);

    // First login creates the user, linked by issuer and subject; the admin group maps to admin.
    let page = w.login(&mut browser, "alice-sub").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.url.path(), "/");
    assert!(page.body.contains("Logged in as alice."), "{}", page.body);
    assert!(browser.cookie(&w.cove, "cove_oidc_state").is_none(), "the state cookie is cleared");
    assert_eq!(w.role(&browser).await, "admin");
    let alice = w.store.oidc_identity_user(&w.provider.issuer, "alice-sub").await.unwrap().expect("alice is linked");
    assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Admin));

    // A replayed callback (same code and state, the state cookie put back) is refused.
    let callback = page.hops.iter().find(|u| u.path() == "/auth/oidc/callback").unwrap().clone();
    let state = callback.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let mut replay = Browser::new();
    replay.set_cookie(&w.cove, "cove_oidc_state", &state);
    let refused = replay.go(callback.as_str()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(refused.body.contains("not valid any more"), "{}", refused.body);
    assert!(replay.cookie(&w.cove, "cove_session").is_none());

    // A second login of the same account is the same user, not a new one.
    let mut again = Browser::new();
    let page = w.login(&mut again, "alice-sub").await;
    assert!(page.body.contains("Logged in as alice."), "{}", page.body);

    // A member of the allowed group, outside the admin group, is a member. The domain
    // check ignores case.
    let mut bob_browser = Browser::new();
    let page = w.login(&mut bob_browser, "bob-sub").await;
    assert!(page.body.contains("Logged in as bob."), "{}", page.body);
    assert_eq!(w.role(&bob_browser).await, "member");

    // Forged state: a callback whose state is not the one this browser started with, or
    // that comes to a browser that started nothing, is refused; the real one still works.
    let mut browser = Browser::new();
    let real = w.to_callback(&mut browser, "bob-sub").await;
    let mut forged = real.clone();
    let pairs: Vec<(String, String)> = real
        .query_pairs()
        .map(|(k, v)| (k.to_string(), if k == "state" { "forged-state".into() } else { v.into_owned() }))
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let page = browser.go(forged.as_str()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    let page = Browser::new().go(real.as_str()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "another browser cannot finish this login: {}", page.body);
    let page = browser.go(real.as_str()).await;
    assert!(page.body.contains("Logged in as bob."), "{}", page.body);

    // An address outside the allowed domains gets a page that says so, and no account.
    let mut browser = Browser::new();
    let page = w.login(&mut browser, "carol-sub").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(
        page.body.contains("carol@other.test") && page.body.contains("other.test may not use this Cove"),
        "{}",
        page.body
    );
    assert!(browser.cookie(&w.cove, "cove_session").is_none());
    assert!(w.store.oidc_identity_user(&w.provider.issuer, "carol-sub").await.unwrap().is_none());

    // So does someone outside the allowed groups.
    let page = w.login(&mut Browser::new(), "dave-sub").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("not in a group allowed"), "{}", page.body);

    // A disabled user is refused, however valid the provider's answer.
    let bob = w.store.oidc_identity_user(&w.provider.issuer, "bob-sub").await.unwrap().unwrap();
    w.store.user_patch(bob.id, UserPatch { disabled: Some(true), ..Default::default() }).await.unwrap();
    let mut browser = Browser::new();
    let page = w.login(&mut browser, "bob-sub").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(page.body.contains("The Cove account bob is disabled"), "{}", page.body);
    assert!(browser.cookie(&w.cove, "cove_session").is_none());
    assert_eq!(w.store.user_count().await.unwrap(), 2, "alice and bob, nobody else");

    // Every login, allowed or not, is in the audit log with who and from where.
    let entries = w.store.audit_list(None, 100).await.unwrap();
    let logins: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e.action == "GET /auth/oidc/callback")
        .map(|e| (e.actor_name.clone().unwrap_or_default(), e.outcome.clone()))
        .collect();
    let expected = [
        ("alice", "302"),
        ("alice", "302"),
        ("bob", "302"),
        ("bob", "302"),
        ("carol@other.test", "403 forbidden"),
        ("dave@example.com", "403 forbidden"),
        ("bob", "403 forbidden"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(logins, expected);
    assert!(entries.iter().all(|e| e.peer.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:"))), "{entries:?}");
    assert!(!format!("{entries:?}").contains(CLIENT_SECRET));

    // The same in a real Chromium, through the login page's button: the cookies' attributes
    // (SameSite=Lax, host-only) let the state come back from the provider's site.
    let summary = browser_login(&w.cove, "alice-sub", "alice").await;
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["provider"].as_str(), Some(w.provider.issuer.as_str()), "{summary}");
}

/// Runs tests/browser/oidc.mjs (playwright-core and Debian's Chromium), screenshots under
/// target/browser; returns its JSON summary, failing the test unless it passed.
async fn browser_login(cove: &str, sub: &str, user: &str) -> Value {
    let modules = repo_root().join("tests/browser/node_modules/playwright-core");
    assert!(modules.exists(), "{} is missing: run scripts/install-deps", modules.display());
    let mut command = Command::new("node");
    command
        .arg("tests/browser/oidc.mjs")
        .current_dir(repo_root())
        .env("COVE_URL", cove)
        .env("PROVIDER_NAME", "Test IdP")
        .env("OIDC_SUB", sub)
        .env("EXPECT_USER", user)
        .env("SCREENSHOT_DIR", repo_root().join("target/browser"));
    // The server answers on this runtime: wait for the browser off its workers.
    let out =
        tokio::task::spawn_blocking(move || command.output().expect("node must be installed (scripts/install-deps)"))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "oidc.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap()
}
