//! Sharing, sessions and login rate limits through the binary against a real server:
//! `cove share NAME --with USER`, `cove sessions ls|revoke`, and `cove login` refused after
//! too many wrong passwords.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Output;

use support::TestServer;

const BOB_PASSWORD: &str = "correct horse battery";

/// `cove` as someone else: their own config directory.
fn cove_as(server: &TestServer, config: &Path, args: &[&str], stdin: &str) -> Output {
    server.cove_fed_as(config, args, stdin)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn owners_share_with_named_users_who_cannot_delete() {
    let server = TestServer::start();
    let out = cove_as(&server, &server.config_dir, &["users", "create", "bob"], BOB_PASSWORD);
    assert!(out.status.success(), "{}", text(&out));
    let bob = tempfile::tempdir().unwrap();
    let login =
        |password: &str| cove_as(&server, bob.path(), &["login", "--username", "bob", "--password-stdin"], password);
    assert!(login(BOB_PASSWORD).status.success());

    server.ok(&["create", "api", "--image", &server.image, "--stopped"]);
    let bob_ls = || text(&cove_as(&server, bob.path(), &["ls"], ""));
    assert!(bob_ls().contains("no workspaces yet"), "{}", bob_ls());

    assert!(server.fails(&["share", "api", "--with", "nobody"]).contains("no user named nobody"));
    let said = server.ok(&["share", "api", "--with", "bob"]);
    assert_eq!(said, "bob\n");
    assert_eq!(server.ok(&["share", "api", "--users"]), "bob\n");
    let listed = bob_ls();
    assert!(
        listed.contains("OWNER") && listed.lines().any(|l| l.starts_with("api") && l.contains("admin")),
        "{listed}"
    );
    let shown = cove_as(&server, bob.path(), &["show", "admin/api", "--json"], "");
    assert!(shown.status.success(), "{}", text(&shown));

    // Bob may look and open, not delete or share on.
    let out = cove_as(&server, bob.path(), &["rm", "admin/api"], "");
    assert!(!out.status.success() && text(&out).contains("only the owner"), "{}", text(&out));
    let out = cove_as(&server, bob.path(), &["share", "admin/api", "--with", "bob"], "");
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(server.show("api")["desired_state"], "Stopped");

    server.ok(&["share", "api", "--remove", "bob"]);
    assert!(bob_ls().contains("no workspaces yet"), "{}", bob_ls());
    assert!(server.fails(&["share", "api", "--remove", "bob"]).contains("not shared with bob"));
}

#[test]
fn sessions_are_listed_and_revoked_and_logins_are_rate_limited() {
    let server = TestServer::start();
    let listed = server.ok(&["sessions", "ls"]);
    assert!(listed.contains("(this)") && listed.contains("127.0.0.1") && listed.contains("ADDRESS"), "{listed}");
    assert!(listed.contains("cove-cli/"), "the CLI's user agent: {listed}");

    // A second login (another machine, say) shows up, and revoking it ends it at once.
    let other = tempfile::tempdir().unwrap();
    let password = server.admin_password();
    let out = cove_as(&server, other.path(), &["login", "--username", "admin", "--password-stdin"], &password);
    assert!(out.status.success(), "{}", text(&out));
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&server.ok(&["sessions", "ls", "--json"])).unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let theirs = sessions.iter().find(|s| s["current"] == false).unwrap()["id"].as_str().unwrap().to_string();
    assert!(cove_as(&server, other.path(), &["ls"], "").status.success());
    server.ok(&["sessions", "revoke", &theirs]);
    let out = cove_as(&server, other.path(), &["ls"], "");
    assert!(!out.status.success() && text(&out).contains("log in again"), "{}", text(&out));
    assert!(server.fails(&["sessions", "revoke", &theirs]).contains("no session"));

    // Wrong passwords: after five, even the right one is refused for a while, clearly.
    for _ in 0..5 {
        let out = cove_as(&server, other.path(), &["login", "--username", "admin", "--password-stdin"], "wrong");
        assert!(!out.status.success() && text(&out).contains("invalid username or password"), "{}", text(&out));
    }
    let out = cove_as(&server, other.path(), &["login", "--username", "admin", "--password-stdin"], &password);
    assert!(!out.status.success(), "logged in past the limit");
    assert!(
        text(&out).contains("too many failed logins for this account; try again in 15 minute(s)"),
        "{}",
        text(&out)
    );
    // The sessions already open are untouched.
    server.ok(&["ls"]);
}
