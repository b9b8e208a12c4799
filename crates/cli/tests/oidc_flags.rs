//! `cove server --oidc-*`: incomplete settings stop the server with a message that says
//! what to add, and complete ones put "Sign in with" on the login page without the client
//! secret ever showing in the output. The login itself is tested against a real provider
//! in crates/server/tests/oidc.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use support::COVE;

fn server(dir: &std::path::Path) -> Command {
    let mut command = Command::new(COVE);
    command
        .args(["server", "--listen", "127.0.0.1:0", "--engine", &support::podman_endpoint()])
        .args(["--instance", &format!("test-{}", uuid::Uuid::new_v4().simple())])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("COVE_OIDC_CLIENT_SECRET")
        .stdin(Stdio::null());
    command
}

#[test]
fn incomplete_oidc_settings_are_refused_with_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = ["--oidc-issuer", "http://127.0.0.1:9/realms/team"];
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[], "--oidc-issuer needs --oidc-client-id"),
        (&["--oidc-client-id", "cove"], "give --oidc-client-secret-file or set COVE_OIDC_CLIENT_SECRET"),
        (
            &["--oidc-client-id", "cove", "--oidc-client-secret-file", "/nonexistent/secret"],
            "cannot read the OIDC client secret file /nonexistent/secret",
        ),
        (
            &["--oidc-client-id", "cove", "--oidc-client-secret-file", secret_file.to_str().unwrap()],
            "the OIDC client secret is empty",
        ),
    ];
    for (args, message) in cases {
        let out = server(dir.path()).args(issuer).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let out = server(dir.path()).args(["--oidc-client-id", "cove"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--oidc-issuer"), "clap names what is required");
}

#[test]
fn the_login_page_offers_the_provider_and_the_secret_stays_out_of_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret-that-must-not-be-printed";
    let mut child = server(dir.path())
        .args(["--oidc-issuer", "http://127.0.0.1:9/realms/team", "--oidc-client-id", "cove"])
        .args(["--oidc-name", "Team SSO", "--oidc-allowed-domains", "example.com, Example.org"])
        .env("COVE_OIDC_CLIENT_SECRET", secret)
        .env("COVE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("cove server listening on ").expect("the server listens").to_string();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let (page, status, refusal) = support::rt().block_on(async {
        let page = client.get(format!("{url}/login")).send().await.unwrap().text().await.unwrap();
        // Nobody can sign in yet (the provider is down), but the way there is offered.
        let start = client.get(format!("{url}/auth/oidc/login")).send().await.unwrap();
        (page, start.status(), start.text().await.unwrap())
    });
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(page.contains("Sign in with Team SSO") && page.contains("/auth/oidc/login"), "{page}");
    assert_eq!(status, 503, "{refusal}");
    assert!(refusal.contains("cannot reach the identity provider at http://127.0.0.1:9/realms/team"), "{refusal}");
    let port = url.rsplit(':').next().unwrap();
    assert!(stderr.contains(&format!("register http://localhost:{port}/auth/oidc/callback")), "{stderr}");
    assert!(!stderr.contains(secret) && !page.contains(secret) && !refusal.contains(secret), "{stderr}");
}
