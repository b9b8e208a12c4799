//! Workspaces made from a Git repository, against real Podman: a git server in a fixture
//! container of the test's own (its network namespace), a workspace on the Debian base
//! image cloning a branch at its first start, and the failures a user can cause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{state, Engine, TestServer};

/// Makes a repository with a `main` and a `feature/x` branch and serves it with
/// `git daemon` (read-only, git://) on port 9418.
const GIT_SERVER: &str = r##"set -e
git config --global user.email t@example.com; git config --global user.name t
git config --global init.defaultBranch main
git init -q --bare /srv/repo.git
git init -q /tmp/w && cd /tmp/w
echo "# demo" > README.md && git add . && git commit -qm first
git checkout -qb feature/x && echo feature > feature.txt && git add . && git commit -qm feature
git push -q /srv/repo.git main feature/x
touch /srv/repo.git/git-daemon-export-ok
exec git daemon --reuseaddr --base-path=/srv --export-all /srv"##;

struct GitServer {
    name: String,
    ip: String,
}

impl GitServer {
    fn start(server: &TestServer, image: &str) -> Self {
        let name = format!("{}-git", server.instance);
        let out = Command::new("podman")
            .args(["run", "-d", "--rm", "--init", "--name", &name, "--label"])
            .arg(format!("cove.instance={}", server.instance))
            .args(["--user", "0", "--entrypoint", "", image, "sh", "-c", GIT_SERVER])
            .output()
            .unwrap();
        assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
        let ip = support::container_ip(&name);
        support::poll("the git server to answer", Duration::from_secs(30), || {
            std::net::TcpStream::connect((ip.as_str(), 9418)).ok().map(|_| ())
        });
        GitServer { name, ip }
    }

    fn url(&self, path: &str) -> String {
        format!("git://{}/{path}", self.ip)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

#[test]
fn a_workspace_from_a_repository_starts_with_its_branch_cloned_once() {
    let server = TestServer::start();
    let image = Engine::base_image(&server.endpoint);
    let git = GitServer::start(&server, &image);
    let out =
        server.cove(&["create", "api", "--image", &image, "--repo", &git.url("repo.git"), "--branch", "feature/x"]);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create failed: {progress}");
    assert!(progress.contains("cloning"), "no clone progress shown: {progress}");
    let ws = server.show("api");
    assert_eq!(ws["repo"], git.url("repo.git"));
    assert_eq!(ws["branch"], "feature/x");
    assert_eq!(ws["agent"]["state"], "ready", "{ws}");

    let head = server.ok(&["exec", "api", "--", "git", "-C", "project", "rev-parse", "--abbrev-ref", "HEAD"]);
    assert_eq!(head.trim(), "feature/x");
    let files =
        server.ok(&["exec", "api", "--", "sh", "-c", "cd project && stat -c '%u %n' README.md feature.txt .git"]);
    assert_eq!(files, "1000 README.md\n1000 feature.txt\n1000 .git\n");
    let logs = server.ok(&["logs", "api"]);
    assert!(logs.contains("cloned git://"), "{logs}");

    // A second start does not clone again: the user's work stays as it is.
    server.ok(&["exec", "api", "--", "sh", "-c", "echo mine > project/README.md && rm project/feature.txt"]);
    server.ok(&["restart", "api"]);
    server.wait_for_agent_ready_again("api", Duration::from_secs(60));
    assert_eq!(server.ok(&["exec", "api", "--", "cat", "project/README.md"]), "mine\n");
    let gone = server.cove(&["exec", "api", "--", "test", "-e", "project/feature.txt"]);
    assert!(!gone.status.success(), "the deleted file came back");
}

#[test]
fn a_clone_that_fails_says_why_and_leaves_the_workspace_usable() {
    let server = TestServer::start();
    let image = Engine::base_image(&server.endpoint);
    let git = GitServer::start(&server, &image);
    let err = server.fails(&["create", "broken", "--image", &image, "--repo", &git.url("missing.git")]);
    assert!(err.contains("step 'clone git://"), "{err}");
    assert!(err.contains("exit 128"), "{err}");
    assert!(err.contains("stays usable"), "{err}");
    let ws = server.show("broken");
    assert_eq!(state(&ws), ("Running", "Running"));
    assert_eq!(ws["agent"]["state"], "failed");
    assert_eq!(server.ok(&["exec", "broken", "--", "echo", "still here"]), "still here\n");
}

#[test]
fn bad_repositories_and_branches_are_refused_before_anything_is_made() {
    let server = TestServer::start();
    for (args, says) in [
        (vec!["--repo", "not a url"], "contains spaces"),
        (vec!["--repo", "/local/path"], "is not a clone URL"),
        (vec!["--repo=--upload-pack=evil"], "is not a clone URL"),
        (vec!["--repo", "https://example.com/r.git", "--branch", "bad..name"], "not a valid Git branch name"),
    ] {
        let mut full = vec!["create", "nope"];
        full.extend(args);
        let err = server.fails(&full);
        assert!(err.contains(says), "{full:?}: {err}");
    }
    let out = server.cove(&["show", "nope"]);
    assert!(!out.status.success(), "a refused create left a workspace");
}
