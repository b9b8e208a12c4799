//! The web dashboard end to end: a real server on Podman, driven by headless Chromium
//! (`tests/browser/dashboard.mjs`): log in, create a workspace through the wizard, see it
//! reach Running live, open its terminal, stop it, read the usage page, set a secret on the
//! Secrets page (listed, its value nowhere in the page) and take it into the workspace
//! with "Refresh secrets", see its own login marked on the Sessions page; another member
//! sees none of it. Screenshots go to `target/browser/dashboard-*.png`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{state, TestServer};

/// Makes a member through the CLI, the password on standard input.
fn create_member(server: &TestServer, name: &str, password: &str) {
    let out = server.cove_fed(&["users", "create", name], &format!("{password}\n"));
    assert!(out.status.success(), "cove users create failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_browser_creates_watches_opens_stops_and_costs_a_workspace_and_another_member_sees_nothing() {
    let server = TestServer::start();
    let member_password = "a member's long password";
    create_member(&server, "bob", member_password);
    let summary = support::browser(
        &server,
        "dashboard.mjs",
        &[
            // The public address: app hosts send the browser to log in there, so its session
            // cookie must be for that host.
            ("DASH_URL", format!("http://localhost:{}", server.port())),
            ("WS_NAME", "dash".into()),
            ("MEMBER_USER", "bob".into()),
            ("MEMBER_PASSWORD", member_password.into()),
            ("SECRET_NAME", "DASH_TOKEN".into()),
            ("SECRET_VALUE", "dash-secret-value-5b2e".into()),
        ],
    );
    assert_eq!(summary["emptyState"], true, "{summary}");
    // At least one change arrived while the page was open (the start, or the stop, may
    // have been done by the time its page loaded on a fast machine).
    assert!(
        summary["sawBeforeRunning"] != "Running" || summary["sawBeforeStopped"] != "Stopped",
        "no state change was seen live: {summary}"
    );
    assert_eq!(summary["runningLive"], true, "{summary}");
    assert_eq!(summary["terminal"], "dash-42", "{summary}");
    assert_eq!(summary["stoppedLive"], true, "{summary}");
    assert_eq!(summary["chart"], true, "{summary}");
    assert!(summary["usageRow"].as_str().unwrap().contains("dash"), "{summary}");
    assert_eq!(summary["secretListed"], true, "{summary}");
    assert_eq!(summary["secretKind"], "environment variable", "{summary}");
    assert_eq!(summary["secretValueInPage"], false, "{summary}");
    assert_eq!(summary["secretFieldEmpty"], true, "{summary}");
    assert_eq!(summary["frozenBeforeRefresh"], false, "made before the secret: {summary}");
    assert_eq!(summary["frozenAfterRefresh"], true, "{summary}");
    assert_eq!(summary["workspacePageHasValue"], false, "{summary}");
    assert_eq!(summary["sessionsMarked"], 1, "{summary}");
    assert!(summary["sessionAgent"].as_str().unwrap().contains("Chrome"), "the browser's own user agent: {summary}");
    assert_eq!(summary["memberListHasIt"], false, "{summary}");
    assert_eq!(summary["memberPageStatus"], 404, "{summary}");
    assert_eq!(summary["memberIdPageStatus"], 404, "{summary}");

    // What the browser did is what the API sees: the wizard's workspace, stopped, with
    // the size and idle stop chosen.
    let ws = server.show("dash");
    assert_eq!(state(&ws), ("Stopped", "Stopped"), "{ws}");
    assert_eq!(summary["workspaceId"], ws["id"], "{summary}");
    assert_eq!(ws["cpus"], 0.5, "{ws}");
    assert_eq!(ws["idle_timeout_seconds"], 900, "{ws}");
    // The secret the page set is the API's, in the admin's own scope.
    let secrets = server.ok(&["secrets", "ls"]);
    assert!(secrets.contains("DASH_TOKEN") && !secrets.contains("dash-secret-value-5b2e"), "{secrets}");
    // And the audit log has the dashboard's forms, by who sent them.
    let audit = server.ok(&["admin", "audit", "--json"]);
    assert!(audit.contains("POST /new") && audit.contains("POST /w/{key}/state"), "{audit}");
    assert!(audit.contains("POST /secrets") && !audit.contains("dash-secret-value-5b2e"), "{audit}");
}
