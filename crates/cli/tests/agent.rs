//! The injected agent against real Podman: it runs in images that know nothing of Cove,
//! prepares the workspace user, answers the control plane only with its secret, and reports
//! its state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{poll, TestServer};

const WAIT: Duration = Duration::from_secs(60);

/// The busybox test image with its uid-1000 user and home removed: an image that has never
/// heard of Cove. Built once per tiny image (the tag follows it).
fn image_without_user(tiny: &str) -> String {
    let tag = format!("localhost/cove-test-nouser:{}", tiny.rsplit(':').next().unwrap());
    let exists = Command::new("podman").args(["image", "exists", &tag]).status().unwrap();
    if exists.success() {
        return tag;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        format!("FROM {tiny}\nRUN sed -i '/:1000:/d' /etc/passwd /etc/group && rm -rf /home/cove\n"),
    )
    .unwrap();
    let out = Command::new("podman").args(["build", "--force-rm", "-q", "-t", &tag]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "podman build: {}", String::from_utf8_lossy(&out.stderr));
    tag
}

/// One HTTP/1.1 GET on a unix socket; the status code.
fn get_status(socket: &Path, path: &str, secret: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = secret.map(|s| format!("x-cove-agent-secret: {s}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n{header}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[test]
fn the_agent_prepares_a_user_in_an_image_without_one_and_runs_user_processes_as_it() {
    let server = TestServer::start();
    let image = image_without_user(&server.image);
    server.ok(&["create", "bare", "--image", &image]);
    let ws = server.wait_for("bare", "the agent's ready report", WAIT, |w| w["agent"]["state"] == "ready");
    assert_eq!(ws["agent"]["version"], env!("CARGO_PKG_VERSION"));

    let id = server.ok(&["exec", "bare", "--", "id"]);
    assert!(id.starts_with("uid=1000(cove) gid=1000(cove)"), "{id}");
    let home = server.ok(&["exec", "bare", "--", "sh", "-c", "stat -c '%u %n' $HOME $HOME/project"]);
    assert_eq!(home.trim(), "1000 /home/cove\n1000 /home/cove/project");
    let logs = server.ok(&["logs", "bare"]);
    assert!(logs.contains("has no user with uid 1000; added \"cove\""), "{logs}");

    // What the agent starts for the user runs as the user, never as root.
    server.ok(&[
        "exec",
        "bare",
        "--",
        "sh",
        "-c",
        "mkdir -p ~/.cove && printf '#!/bin/sh\\nid -u > $HOME/hook-uid\\n' > ~/.cove/on-start && chmod +x ~/.cove/on-start",
    ]);
    server.ok(&["restart", "bare"]);
    let uid = poll("the on-start hook's output", WAIT, || {
        let out = server.cove(&["exec", "bare", "--", "cat", "hook-uid"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert_eq!(uid, "1000");
    // The user was added once, not once per start.
    let passwd = server.ok(&["exec", "bare", "--", "grep", "-c", ":1000:", "/etc/passwd"]);
    assert_eq!(passwd.trim(), "1");
}

#[test]
fn the_agent_endpoint_needs_this_workspace_and_this_start_secret() {
    let server = TestServer::start();
    server.ok(&["create", "one"]);
    server.ok(&["create", "two"]);
    for name in ["one", "two"] {
        server.wait_for(name, "the agent's ready report", WAIT, |w| w["agent"]["state"] == "ready");
    }
    let (one, two) = (server.run_dir("one"), server.run_dir("two"));
    let secret = |dir: &Path| std::fs::read_to_string(dir.join("secret")).unwrap().trim().to_string();
    let (s1, s2) = (secret(&one), secret(&two));
    assert_eq!(s1.len(), 64, "256 bits in hex");
    assert_ne!(s1, s2);

    let socket = one.join("agent.sock");
    assert_eq!(get_status(&socket, "/health", Some(&s1)), 200);
    assert_eq!(get_status(&socket, "/health", None), 401);
    assert_eq!(get_status(&socket, "/health", Some(&s2)), 401, "another workspace's secret");
    assert_eq!(get_status(&socket, "/health", Some("")), 401);

    // Only root (the host) may connect: the socket and the secret are root's, in a directory
    // others may only pass through (to the user's own `user/` below it).
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&one).unwrap().permissions().mode() & 0o777, 0o711);
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(one.join("secret")).unwrap().permissions().mode() & 0o777, 0o600);
    // ... and the workspace user cannot read the secret from inside.
    let out = server.cove(&["exec", "one", "--", "cat", "/.cove/run/secret"]);
    assert!(!out.status.success(), "the workspace user read the agent's secret");

    // A new start makes a new secret; the old one no longer opens the agent.
    server.ok(&["restart", "one"]);
    let fresh = poll("a new secret after the restart", WAIT, || {
        let s = std::fs::read_to_string(one.join("secret")).ok()?.trim().to_string();
        // The new agent writes its secret just before it listens.
        std::os::unix::net::UnixStream::connect(&socket).ok()?;
        (s != s1 && get_status(&socket, "/health", Some(&s)) == 200).then_some(s)
    });
    assert_eq!(get_status(&socket, "/health", Some(&s1)), 401, "the secret of the previous start");
    assert_eq!(get_status(&socket, "/health", Some(&fresh)), 200);

    // Deleting the workspace removes its run directory.
    server.ok(&["rm", "two"]);
    poll("the run directory of a deleted workspace to go", WAIT, || (!two.exists()).then_some(()));
}
