//! devcontainer.json images against real Podman: a repository served over (dumb) HTTP by
//! a git server of the test's own, holding a Dockerfile-based configuration with a local
//! feature and every lifecycle hook in all three forms. The workspace runs on the image
//! built from it (the Dockerfile's build arg, the feature's file and env are there), the
//! hooks' files prove order and once-only semantics across a restart, a second workspace
//! from the same repository reuses the image, and `cove rebuild` after a change of
//! `containerEnv` in the volume applies it and keeps the files. Refusals: Docker Compose
//! (before anything is made) and `initializeCommand` on a server that does not allow it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{poll, Engine, TestServer};

const WAIT: Duration = Duration::from_secs(300);

/// git's dumb HTTP protocol, served by python's http.server over the folder holding the
/// bare repository, in a fixture container of the test's own on the engine's network
/// (where the workspaces are: the host's loopback is not reachable from them).
struct GitHttp {
    name: String,
    url: String,
}

impl GitHttp {
    fn start(server: &TestServer, image: &str, root: &Path) -> Self {
        let name = format!("{}-githttp", server.instance);
        let out = Command::new("podman")
            .args(["run", "-d", "--rm", "--init", "--name", &name, "--label"])
            .arg(format!("cove.instance={}", server.instance))
            .arg("-v")
            .arg(format!("{}:/srv:ro", root.display()))
            .args([
                "--user",
                "0",
                "--entrypoint",
                "",
                image,
                "python3",
                "-m",
                "http.server",
                "8000",
                "--directory",
                "/srv",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
        let ip = support::container_ip(&name);
        poll("the git HTTP server to answer", Duration::from_secs(30), || {
            std::net::TcpStream::connect((ip.as_str(), 8000)).ok().map(|_| ())
        });
        GitHttp { name, url: format!("http://{ip}:8000") }
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const CONFIG: &str = r#"{
  // Built from the Dockerfile next to this file, with a local feature on top.
  "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"FLAVOUR": "built-from-dockerfile"}},
  "features": {"./hello": {"name": "cove"}},
  "containerEnv": {"GREETING": "hello"},
  "forwardPorts": [3000],
  "portsAttributes": {"3000": {"label": "web"}},
  "onCreateCommand": "echo \"onCreate $(cat /usr/local/share/hello.txt)\" >> order.log",
  "updateContentCommand": ["/bin/sh", "-c", "echo \"updateContent $(cat /etc/flavour)\" >> order.log"],
  "postCreateCommand": {
    "order": "echo postCreate >> order.log",
    "env": ["/bin/sh", "-c", "echo \"$GREETING $HELLO_FEATURE\" > env.txt"]
  },
  "postStartCommand": "echo \"postStart $GREETING\" >> order.log",
  "postAttachCommand": "echo postAttach >> attach.log"
}"#;

const FEATURE: &str = r#"{
  "id": "hello",
  "version": "1.0.0",
  "options": {"name": {"type": "string", "default": "world"}},
  "containerEnv": {"HELLO_FEATURE": "installed"}
}"#;

const INSTALL: &str =
    "#!/bin/sh\nset -e\nmkdir -p /usr/local/share\necho \"hello $NAME\" > /usr/local/share/hello.txt\n";

/// A bare repository (served from `root/repo.git`) holding the project.
fn repository(root: &Path, base: &str, salt: &str) {
    let work = root.join("work");
    std::fs::create_dir_all(work.join(".devcontainer/hello")).unwrap();
    std::fs::write(work.join(".devcontainer/devcontainer.json"), CONFIG).unwrap();
    // The salt makes this run's images its own, so an earlier run's cannot be reused.
    let dockerfile = format!("FROM {base}\n# run {salt}\nARG FLAVOUR\nRUN echo \"$FLAVOUR\" > /etc/flavour\n");
    std::fs::write(work.join(".devcontainer/Dockerfile"), dockerfile).unwrap();
    std::fs::write(work.join(".devcontainer/hello/devcontainer-feature.json"), FEATURE).unwrap();
    std::fs::write(work.join(".devcontainer/hello/install.sh"), INSTALL).unwrap();
    std::fs::write(work.join("README.md"), "# demo\n").unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "first"]);
    git(root, &["clone", "-q", "--bare", "work", "repo.git"]);
    git(&root.join("repo.git"), &["update-server-info"]);
}

/// The test's server, which also removes the images it built when the test ends: first
/// the server goes (so nothing makes containers again), then its containers, then images.
struct Building(TestServer);

impl std::ops::Deref for Building {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        self.0.kill();
        let filter = format!("label=cove.instance={}", self.0.instance);
        let out = Command::new("podman").args(["ps", "-aq", "--filter", &filter]).output().unwrap();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", id]).output();
        }
        let out = Command::new("podman").args(["images", "-q", "--filter", &filter]).output().unwrap();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("podman").args(["rmi", "-f", id]).output();
        }
    }
}

fn lines(server: &TestServer, name: &str, file: &str) -> Vec<String> {
    let out =
        server.cove(&["exec", name, "--", "sh", "-c", &format!("cat /home/cove/project/{file} 2>/dev/null || true")]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn exec(server: &TestServer, name: &str, script: &str) -> String {
    server.ok(&["exec", name, "--", "sh", "-c", script]).trim().to_string()
}

#[test]
fn a_dockerfile_devcontainer_from_a_git_server_is_built_cached_and_rebuilt() {
    let server = Building(TestServer::start());
    let base = Engine::base_image(&server.endpoint);
    let dir = tempfile::tempdir().unwrap();
    repository(dir.path(), &base, &server.instance);
    let http = GitHttp::start(&server, &base, dir.path());
    let url = format!("{}/repo.git", http.url);

    let out = server.cove(&["create", "one", "--image", &base, "--repo", &url]);
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create failed: {progress}");
    assert!(progress.contains("building image"), "no build progress shown: {progress}");
    let ws = server.show("one");
    let image = ws["image"].as_str().unwrap().to_string();
    assert!(image.starts_with("cove-devcontainer:"), "{ws}");
    assert_eq!(ws["agent"]["state"], "ready", "{ws}");
    assert_eq!(ws["devcontainer"]["build"]["cached"], false, "{ws}");
    assert_eq!(ws["devcontainer"]["ports"]["3000"], "web", "{ws}");
    let ports = server.ok(&["ports", "one"]);
    assert!(ports.lines().any(|l| l.starts_with("3000") && l.contains("web")), "{ports}");

    // The Dockerfile's build arg, the feature (its option, upper-cased, and its env) and
    // containerEnv are in the container the hooks ran in.
    assert_eq!(exec(&server, "one", "cat /etc/flavour"), "built-from-dockerfile");
    assert_eq!(exec(&server, "one", "cat /usr/local/share/hello.txt"), "hello cove");
    assert_eq!(exec(&server, "one", "echo \"$GREETING $HELLO_FEATURE\""), "hello installed");
    let first_run = vec![
        "onCreate hello cove".to_string(),
        "updateContent built-from-dockerfile".into(),
        "postCreate".into(),
        "postStart hello".into(),
    ];
    let order = poll("the hooks' files", WAIT, || {
        let order = lines(&server, "one", "order.log");
        (order.len() >= 4).then_some(order)
    });
    assert_eq!(order, first_run);
    assert_eq!(lines(&server, "one", "env.txt"), vec!["hello installed".to_string()]);

    // A restart runs postStart again, and only it; the image stays.
    server.ok(&["restart", "one"]);
    let order = poll("postStart after the restart", WAIT, || {
        let order = lines(&server, "one", "order.log");
        (order.len() >= 5).then_some(order)
    });
    let mut expected = first_run.clone();
    expected.push("postStart hello".into());
    assert_eq!(order, expected);
    let ws = server.wait_for_agent_ready_again("one", WAIT);
    assert_eq!(ws["image"], image.as_str(), "{ws}");
    // The hooks' files are in the build context (`..`), but code is no reason to rebuild.
    assert_eq!(ws["rebuild_needed"], false, "{ws}");

    // The same repository again: the same image, not built again.
    let out = server.cove(&["create", "two", "--image", &base, "--repo", &url]);
    assert!(out.status.success(), "second create failed: {}", String::from_utf8_lossy(&out.stderr));
    let two = server.show("two");
    assert_eq!(two["image"], image.as_str(), "{two}");
    assert_eq!(two["devcontainer"]["build"]["cached"], true, "{two}");
    assert_eq!(exec(&server, "two", "cat /usr/local/share/hello.txt"), "hello cove");

    // A change of containerEnv in the volume: "rebuild needed", then `cove rebuild`.
    exec(
        &server,
        "one",
        "sed -i 's/\"GREETING\": \"hello\"/\"GREETING\": \"bonjour\"/' project/.devcontainer/devcontainer.json",
    );
    server.wait_for("one", "rebuild needed", WAIT, |ws| ws["rebuild_needed"] == true);
    assert!(server.ok(&["ls"]).contains("rebuild needed"));
    let out = server.cove(&["rebuild", "one"]);
    assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(exec(&server, "one", "echo \"$GREETING\""), "bonjour");
    let ws = server.show("one");
    assert_eq!(ws["rebuild_needed"], false, "{ws}");
    // The files stay, and once-only hooks did not run again.
    let order = poll("postStart in the rebuilt container", WAIT, || {
        let order = lines(&server, "one", "order.log");
        (order.len() >= 6).then_some(order)
    });
    expected.push("postStart bonjour".into());
    assert_eq!(order, expected);
    assert_eq!(lines(&server, "one", "env.txt"), vec!["hello installed".to_string()]);
}

#[test]
fn compose_and_initialize_command_are_refused_clearly() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".devcontainer")).unwrap();
    let config = dir.path().join(".devcontainer/devcontainer.json");

    std::fs::write(&config, r#"{"dockerComposeFile": "compose.yml", "service": "app"}"#).unwrap();
    let err = server.fails(&["create", "composed", "--from-dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("composed") && err.contains("not supported yet"), "{err}");
    assert!(!server.ok(&["ls"]).contains("composed"), "a refused workspace was made");

    std::fs::write(&config, r#"{"initializeCommand": "touch /tmp/should-not-exist"}"#).unwrap();
    let err = server.fails(&["create", "init", "--from-dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("init") && err.contains("initializeCommand"), "{err}");
    assert!(err.contains("allow_initialize_command") || err.contains("does not allow"), "{err}");

    // No pulls: an image the engine lacks is named.
    std::fs::write(&config, r#"{"image": "example.com/nope/missing:1"}"#).unwrap();
    let err = server.fails(&["create", "missing", "--from-dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("example.com/nope/missing:1") && err.contains("not in the container engine"), "{err}");

    // More than one workspace may have.
    std::fs::write(&config, r#"{"hostRequirements": {"cpus": 4096}}"#).unwrap();
    let err = server.fails(&["create", "big", "--from-dir", dir.path().to_str().unwrap()]);
    assert!(err.contains("big") && err.contains("hostRequirements"), "{err}");
}

#[test]
fn devcontainer_volumes_are_the_workspaces_and_go_with_it() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".devcontainer")).unwrap();
    std::fs::write(
        dir.path().join(".devcontainer/devcontainer.json"),
        r#"{"mounts": ["source=cache,target=/cache,type=volume"], "containerEnv": {"IN": "cove"}}"#,
    )
    .unwrap();
    server.ok(&["create", "vol", "--from-dir", dir.path().to_str().unwrap()]);
    let ws = server.wait_for("vol", "its agent ready", WAIT, |ws| ws["agent"]["state"] == "ready");
    assert_eq!(ws["rebuild_needed"], false, "{ws}");
    assert_eq!(exec(&server, "vol", "echo $IN; test -d /cache && echo mounted"), "cove\nmounted");
    let volumes = |filter: &str| {
        let out = Command::new("podman")
            .args(["volume", "ls", "-q", "--filter", &format!("label=cove.instance={}", server.instance)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.ends_with(filter)).count()
    };
    assert_eq!(volumes("-cache"), 1, "the configuration's volume is not the workspace's");
    server.ok(&["rm", "vol"]);
    assert_eq!(volumes("-cache"), 0, "the configuration's volume outlived its workspace");
}
