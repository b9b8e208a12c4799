//! devcontainer.json lifecycle commands in a real workspace on Podman: the files the hooks
//! write prove their order and once-only semantics across a restart, `postAttachCommand`
//! runs on a terminal attach, `remoteEnv` reaches hooks, shells and `~/.cove/on-start`, and a failing entry is
//! the agent's failed state while the workspace stays usable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use support::{poll, Engine, TestServer};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(90);

const CONFIG: &str = r#"{
  // All five hooks, in the three forms; entries of an object write files of their own.
  "containerEnv": {"GREETING": "hello"},
  "remoteEnv": {"SHOUT": "${containerEnv:GREETING}-loud"},
  "onCreateCommand": "echo onCreate >> order.log",
  "updateContentCommand": ["/bin/sh", "-c", "echo updateContent >> order.log"],
  "postCreateCommand": {
    "order": "echo postCreate >> order.log",
    "env": ["/bin/sh", "-c", "echo \"$SHOUT\" > env.txt"]
  },
  "postStartCommand": "echo \"postStart $(cat env.txt)\" >> order.log",
  "postAttachCommand": "echo postAttach >> order.log"
}"#;

fn project(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".devcontainer")).unwrap();
    std::fs::write(dir.path().join(".devcontainer/devcontainer.json"), config).unwrap();
    dir
}

fn lines(server: &TestServer, name: &str, file: &str) -> Vec<String> {
    let out =
        server.cove(&["exec", name, "--", "sh", "-c", &format!("cat /home/cove/project/{file} 2>/dev/null || true")]);
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The agent's socket and this start's secret, once it differs from `old`.
fn agent_socket(server: &TestServer, name: &str, old: Option<&str>) -> (PathBuf, String) {
    let run = server.data_dir.join("run").join(server.workspace_id(name).to_string());
    let socket = run.join("agent.sock");
    let secret = poll("the agent's socket and a fresh secret", WAIT, || {
        let secret = std::fs::read_to_string(run.join("secret")).ok()?.trim().to_string();
        std::os::unix::net::UnixStream::connect(&socket).ok()?;
        (Some(secret.as_str()) != old).then_some(secret)
    });
    (socket, secret)
}

/// Attaches a terminal, checks that its shell has `remoteEnv`, and leaves.
async fn attach_terminal(socket: &Path, secret: &str) {
    let mut request = "ws://agent/ws".into_client_request().unwrap();
    request.headers_mut().insert("x-cove-agent-secret", secret.parse().unwrap());
    request.headers_mut().insert("x-cove-app", "term".parse().unwrap());
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    // "\163" is "s": the echo of the typed line cannot match.
    ws.send(Message::Binary(b"printf '\\163hout=%s\\n' \"$SHOUT\"\n".to_vec().into())).await.unwrap();
    let mut output = Vec::new();
    while !String::from_utf8_lossy(&output).contains("shout=hello-loud") {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => output.extend_from_slice(&bytes),
            Ok(Some(Ok(_))) => {}
            other => {
                panic!("no remoteEnv in the terminal (got {other:?}) after {:?}", String::from_utf8_lossy(&output))
            }
        }
    }
    ws.close(None).await.unwrap();
}

/// Waits for the agent to have finished postStartCommand `starts` times (once per start,
/// in the container's log): only then does an attach run postAttachCommand. Its line in
/// order.log comes earlier, while the hook's shell is still exiting.
fn wait_for_post_start_done(server: &TestServer, name: &str, starts: usize) {
    poll(&format!("postStartCommand to be done {starts} time(s)"), WAIT, || {
        let logs = server.ok(&["logs", name]);
        (logs.matches("cove agent: postStartCommand done").count() >= starts).then_some(())
    });
}

fn wait_for_lines(server: &TestServer, name: &str, count: usize) -> Vec<String> {
    poll(&format!("{count} lines in order.log"), WAIT, || {
        let lines = lines(server, name, "order.log");
        (lines.len() >= count).then_some(lines)
    })
}

#[test]
fn hooks_run_in_order_once_and_on_every_start_and_attach() {
    let server = TestServer::start();
    let base = Engine::base_image(&server.endpoint);
    let dir = project(CONFIG);
    server.ok(&["create", "hooks", "--from-dir", dir.path().to_str().unwrap(), "--image", &base]);
    // `create` waited for `waitFor` (updateContentCommand, the default).
    let at_ready = lines(&server, "hooks", "order.log");
    assert!(at_ready.len() >= 2 && at_ready[..2] == ["onCreate", "updateContent"], "{at_ready:?}");

    let started = wait_for_lines(&server, "hooks", 4);
    assert_eq!(started, ["onCreate", "updateContent", "postCreate", "postStart hello-loud"]);
    server.wait_for("hooks", "the agent to be ready", WAIT, |ws| ws["agent"]["state"] == "ready");
    wait_for_post_start_done(&server, "hooks", 1);

    let (socket, secret) = agent_socket(&server, "hooks", None);
    let rt = support::rt();
    rt.block_on(attach_terminal(&socket, &secret));
    assert_eq!(wait_for_lines(&server, "hooks", 5)[4], "postAttach");

    // ~/.cove/on-start (Cove's own start hook) gets the configuration's environment too.
    let hook =
        "mkdir -p ~/.cove && printf '#!/bin/sh\\necho \"$SHOUT\" > ~/project/on-start.txt\\n' > ~/.cove/on-start \
                && chmod +x ~/.cove/on-start";
    server.ok(&["exec", "hooks", "--", "sh", "-c", hook]);
    server.ok(&["restart", "hooks"]);
    agent_socket(&server, "hooks", Some(&secret));
    let on_start = poll("~/.cove/on-start to run with remoteEnv", WAIT, || {
        lines(&server, "hooks", "on-start.txt").into_iter().next()
    });
    assert_eq!(on_start, "hello-loud");
    let restarted = wait_for_lines(&server, "hooks", 6);
    assert_eq!(restarted[5], "postStart hello-loud", "{restarted:?}");
    server.wait_for_agent_ready_again("hooks", WAIT);
    wait_for_post_start_done(&server, "hooks", 2);
    let (socket, secret) = agent_socket(&server, "hooks", Some(&secret));
    rt.block_on(attach_terminal(&socket, &secret));
    let all = wait_for_lines(&server, "hooks", 7);
    assert_eq!(
        all,
        [
            "onCreate",
            "updateContent",
            "postCreate",
            "postStart hello-loud",
            "postAttach",
            "postStart hello-loud",
            "postAttach"
        ]
    );
    let logs = server.ok(&["logs", "hooks"]);
    assert!(logs.contains("cove agent: running postCreateCommand"), "{logs}");
}

#[test]
fn a_failing_entry_is_reported_by_name_and_the_workspace_stays_usable() {
    let server = TestServer::start();
    let base = Engine::base_image(&server.endpoint);
    let dir = project(
        r#"{
          "postCreateCommand": {"fine": "true", "broken": "echo about to fail; exit 5"},
          "postStartCommand": "touch post-start-ran",
          "waitFor": "postCreateCommand"
        }"#,
    );
    // `waitFor` postCreateCommand: the agent never says ready, and `create` says why.
    let out = server.fails(&["create", "broke", "--from-dir", dir.path().to_str().unwrap(), "--image", &base]);
    assert!(out.contains("setting it up failed: step 'postCreateCommand' (entry broken) failed (exit 5)"), "{out}");
    let ws = server.show("broke");
    assert_eq!(ws["agent"]["state"], "failed", "{ws}");
    assert_eq!(ws["agent"]["message"], "step 'postCreateCommand' (entry broken) failed (exit 5)", "{ws}");
    assert_eq!(server.ok(&["exec", "broke", "--", "echo", "still usable"]).trim(), "still usable");
    let exists = server.cove(&["exec", "broke", "--", "test", "-e", "/home/cove/project/post-start-ran"]);
    assert!(!exists.status.success(), "postStartCommand ran after a failed postCreateCommand");
    let logs = server.ok(&["logs", "broke"]);
    assert!(logs.contains("postCreateCommand[broken]: about to fail"), "{logs}");
}

#[test]
fn devcontainer_path_chooses_among_several_configurations() {
    let server = TestServer::start();
    let base = Engine::base_image(&server.endpoint);
    let dir = project(r#"{"postCreateCommand": "echo default > chosen.txt"}"#);
    let other = dir.path().join(".devcontainer/other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(
        other.join("devcontainer.json"),
        r#"{"containerEnv": {"WHICH": "other"}, "postCreateCommand": "echo \"$WHICH\" > chosen.txt"}"#,
    )
    .unwrap();
    let from = dir.path().to_str().unwrap();

    // A path that leaves the project is refused before anything is made.
    let out =
        server.fails(&["create", "pick", "--from-dir", from, "--image", &base, "--devcontainer-path", "../x.json"]);
    assert!(out.contains("must stay inside the project"), "{out}");
    assert!(!server.ok(&["ls"]).contains("pick"), "a refused create left a workspace");

    server.ok(&[
        "create",
        "pick",
        "--from-dir",
        from,
        "--image",
        &base,
        "--devcontainer-path",
        ".devcontainer/other/devcontainer.json",
    ]);
    let chosen = poll("the chosen configuration's postCreateCommand", WAIT, || {
        lines(&server, "pick", "chosen.txt").into_iter().next()
    });
    assert_eq!(chosen, "other", "the default devcontainer.json ran instead of the chosen one");
}
