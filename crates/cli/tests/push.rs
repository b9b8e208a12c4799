//! `cove push` against real engines: a tree into a stopped workspace (not started by it), into
//! a running one, into one that never had a container; bad input changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::{state, Options, TestServer};

/// A little project: nested files, an executable, a symbolic link and a `.git` folder.
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("src/deep")).unwrap();
    std::fs::create_dir_all(root.join(".git/refs")).unwrap();
    std::fs::write(root.join("README.md"), "# hello\n").unwrap();
    std::fs::write(root.join("src/deep/data.bin"), (0..=255u8).cycle().take(300_000).collect::<Vec<_>>()).unwrap();
    std::fs::write(root.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("README.md", root.join("LINK")).unwrap();
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn check_pushed(server: &TestServer, name: &str, folder: &str, local: &Path) {
    let listing = server.ok(&[
        "exec",
        name,
        "--",
        "sh",
        "-c",
        &format!("cd ~/{folder} && stat -c '%u:%g %A %n' README.md src/deep/data.bin .git/HEAD run.sh && readlink LINK && ./run.sh && sha256sum src/deep/data.bin"),
    ]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines[0], "1000:1000 -rw-r--r-- README.md", "{listing}");
    assert_eq!(lines[1], "1000:1000 -rw-r--r-- src/deep/data.bin", "{listing}");
    assert_eq!(lines[2], "1000:1000 -rw-r--r-- .git/HEAD", "{listing}");
    assert_eq!(lines[3], "1000:1000 -rwxr-xr-x run.sh", "{listing}");
    assert_eq!(lines[4], "README.md");
    assert_eq!(lines[5], "ran");
    assert!(lines[6].starts_with(&sha256(&local.join("src/deep/data.bin"))), "{listing}");
}

#[test]
fn push_fills_stopped_running_and_never_started_workspaces() {
    let server = TestServer::start();
    let local = tempfile::tempdir().unwrap();
    tree(local.path());
    let dir = local.path().to_str().unwrap();

    // Stopped: the files go in, and the workspace stays stopped.
    server.ok(&["create", "grove"]);
    server.ok(&["stop", "grove"]);
    let out = server.ok(&["push", "grove", dir, "--json"]);
    let pushed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pushed["to"], "project");
    assert_eq!(pushed["files"], 5, "{pushed}");
    assert_eq!(state(&server.show("grove")), ("Stopped", "Stopped"), "a push must not start it");
    server.ok(&["start", "grove"]);
    check_pushed(&server, "grove", "project", local.path());

    // Running, into a folder that does not exist yet.
    server.ok(&["push", "grove", dir, "--to", "work/copy"]);
    check_pushed(&server, "grove", "work/copy", local.path());
    let owner = server.ok(&["exec", "grove", "--", "stat", "-c", "%u", "work"]);
    assert_eq!(owner.trim(), "1000");

    // Created stopped, never run: no container of its own yet; a helper does the work and goes.
    server.ok(&["create", "fresh", "--stopped"]);
    server.ok(&["push", "fresh", dir]);
    assert_eq!(state(&server.show("fresh")), ("Stopped", "Stopped"));
    let helpers = Command::new("podman")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=cove.instance={}", server.instance),
            "--filter",
            "label=cove.helper",
        ])
        .output()
        .unwrap();
    assert!(helpers.stdout.is_empty(), "a push helper container was left behind");
    server.ok(&["start", "fresh"]);
    check_pushed(&server, "fresh", "project", local.path());
}

#[test]
fn bad_pushes_are_refused_and_change_nothing() {
    let server = TestServer::start();
    server.ok(&["create", "safe"]);
    let local = tempfile::tempdir().unwrap();
    tree(local.path());
    let dir = local.path().to_str().unwrap();

    let err = server.fails(&["push", "safe", dir, "--to", "../etc"]);
    assert!(err.contains("must be a folder inside the workspace home"), "{err}");
    let err = server.fails(&["push", "safe", "/nonexistent/folder"]);
    assert!(err.contains("cannot read /nonexistent/folder"), "{err}");
    let err = server.fails(&["push", "nope", dir]);
    assert!(err.contains("nope"), "{err}");
    // Refused before its body is read, a big upload still gets the server's reason back
    // (not a reset connection): the server reads and drops what the client keeps sending.
    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("big.bin"), vec![7u8; 32 << 20]).unwrap();
    let big = big.path().to_str().unwrap();
    for _ in 0..3 {
        let err = server.fails(&["push", "safe", big, "--to", "../etc"]);
        assert!(err.contains("must be a folder inside the workspace home"), "{err}");
        let err = server.fails(&["push", "nope", big]);
        assert!(err.contains("nope"), "{err}");
    }

    // An archive that climbs out of the folder, sent by hand: refused whole, nothing lands.
    // The 32 MiB after the bad entry are never checked; the refusal still comes back.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "fine.txt", &b"ok"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.as_old_mut().name[..9].copy_from_slice(b"../../bad");
    h.set_cksum();
    b.append(&h, &b"no"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(32 << 20);
    h.set_mode(0o644);
    b.append_data(&mut h, "after.bin", &vec![7u8; 32 << 20][..]).unwrap();
    let body = b.into_inner().unwrap();
    let rt = support::rt();
    let response = rt.block_on(
        reqwest::Client::new()
            .put(format!("{}/api/v1/workspaces/safe/files", server.url))
            .bearer_auth(server.token())
            .body(body)
            .send(),
    );
    let response = response.unwrap();
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = rt.block_on(response.json()).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("leaves the target folder"), "{error}");
    let out = server.cove(&["exec", "safe", "--", "ls", "project/fine.txt"]);
    assert!(!out.status.success(), "a refused archive left files behind");
}

/// The same path on Docker Engine: a stopped workspace, and one that never had a container.
#[test]
fn push_works_on_docker_engine_too() {
    let endpoint = std::env::var("COVE_TEST_DOCKER_HOST")
        .expect("COVE_TEST_DOCKER_HOST is not set: run the tests through `scripts/test`, which starts dockerd");
    let server = TestServer::start_with(Options { endpoint: endpoint.clone(), sweep_endpoint: endpoint });
    let local = tempfile::tempdir().unwrap();
    tree(local.path());
    let dir = local.path().to_str().unwrap();
    server.ok(&["create", "dock", "--image", &server.image]);
    server.ok(&["stop", "dock"]);
    server.ok(&["push", "dock", dir]);
    assert_eq!(state(&server.show("dock")), ("Stopped", "Stopped"));
    server.ok(&["start", "dock"]);
    check_pushed(&server, "dock", "project", local.path());
    server.ok(&["create", "never", "--image", &server.image, "--stopped"]);
    server.ok(&["push", "never", dir]);
    server.ok(&["start", "never"]);
    check_pushed(&server, "never", "project", local.path());
}

#[test]
fn create_from_a_folder_starts_with_the_files_in_place() {
    let server = TestServer::start();
    let local = tempfile::tempdir().unwrap();
    tree(local.path());
    server.ok(&["create", "seeded", "--from-dir", local.path().to_str().unwrap()]);
    assert_eq!(state(&server.show("seeded")), ("Running", "Running"));
    check_pushed(&server, "seeded", "project", local.path());

    // A folder that is not there: refused before anything is made.
    let err = server.fails(&["create", "ghost", "--from-dir", "/nonexistent/checkout"]);
    assert!(err.contains("cannot read /nonexistent/checkout"), "{err}");
    let out = server.cove(&["show", "ghost"]);
    assert!(!out.status.success(), "a workspace was made for a folder that does not exist");
}
