//! Git credentials end to end (real Podman, base image): a private repository served over
//! smart HTTP with basic auth inside the workspace, cloned and pushed to by the workspace
//! user's git through the agent's credential helper with a token stored by
//! `cove git-token set`; the token is in none of the workspace's files afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sha2::Digest;
use support::*;

const GIT_HTTP: &str = include_str!("../../../tests/fixtures/git_http.py");
const PORT: u16 = 8418;

fn set_token(server: &TestServer, host: &str, token: &str) {
    let out = server.cove_fed(&["git-token", "set", host, "--username", "cove"], token);
    assert!(out.status.success(), "cove git-token set failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn clone_and_push_through_the_credential_helper_without_the_token_on_disk() {
    let server = TestServer::start();
    let image = Engine::base_image(&server.endpoint);
    server.ok(&["create", "git", "--image", &image]);
    let token = format!("cove-test-token-{}", uuid::Uuid::new_v4().simple());
    let hash = hex(&sha2::Sha256::digest(token.as_bytes()));

    // A bare repository behind basic auth on 127.0.0.1, started in the background.
    server.ok(&["exec", "git", "--", "sh", "-c", "printf %s \"$1\" > git_http.py", "sh", GIT_HTTP]);
    server.ok(&["exec", "git", "--", "git", "init", "-q", "--bare", "srv/repo.git"]);
    let start = format!("nohup python3 git_http.py srv {PORT} {hash} > git_http.log 2>&1 &");
    server.ok(&["exec", "git", "--", "sh", "-c", &start]);
    let url = format!("http://127.0.0.1:{PORT}/repo.git");
    poll("the git server to listen", Duration::from_secs(30), || {
        let out = server.cove(&["exec", "git", "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url]);
        (String::from_utf8_lossy(&out.stdout) == "401").then_some(())
    });

    // No token stored: git fails with its authentication error, promptly.
    let out = server.cove(&["exec", "git", "--", "timeout", "60", "git", "clone", &url, "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cloned without a token");
    assert_ne!(out.status.code(), Some(124), "git hung: {stderr}");
    assert!(stderr.contains("could not read Username") || stderr.contains("Authentication failed"), "{stderr}");

    // git sends the port with the host.
    set_token(&server, &format!("127.0.0.1:{PORT}"), &token);
    let listed = server.ok(&["git-token", "ls"]);
    assert!(listed.contains(&format!("127.0.0.1:{PORT}")) && !listed.contains(&token), "{listed}");
    server.ok(&["exec", "git", "--", "timeout", "60", "git", "clone", "-q", &url, "work"]);
    let push = "cd work && echo hello > README && git add README && \
                git -c user.name=t -c user.email=t@example.com commit -qm first && \
                timeout 60 git push -q origin HEAD:main";
    server.ok(&["exec", "git", "--", "sh", "-c", push]);
    server.ok(&["exec", "git", "--", "timeout", "60", "git", "clone", "-q", "-b", "main", &url, "again"]);
    assert_eq!(server.ok(&["exec", "git", "--", "cat", "again/README"]), "hello\n");

    // The token is in no file of the container, its volume or its run directory.
    let grep = format!(
        "grep -rlF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev -e \"$(printf %s {})\" / ; echo rc=$?",
        // Split so the pattern given to grep is not the token's bytes on the command line.
        token.replace("test-token", "test-\"\"token")
    );
    let out = server.ok(&["exec", "git", "--", "sudo", "sh", "-c", &grep]);
    assert!(out.trim().ends_with("rc=1"), "the token was found in files:\n{out}");
    let run_dir = server.data_dir.join("run").join(server.workspace_id("git").to_string());
    for entry in std::fs::read_dir(&run_dir).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "{:?} holds the token", entry.path());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
