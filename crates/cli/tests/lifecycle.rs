//! The foundation's user flow, end to end: the `cove` binary, a real server process, a
//! real SQLite file and real Podman (Docker Engine in `docker_engine_smoke`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use cove_core::ContainerState;
use cove_runtime::Backend;
use support::{poll, state, Options, TestServer};

const WAIT: Duration = Duration::from_secs(60);

fn container_state(server: &TestServer, name: &str) -> Option<ContainerState> {
    let id = server.workspace_id(name);
    server.engine.observe().get(&id).and_then(|o| o.container.as_ref().map(|c| c.state))
}

/// When the engine last started the workspace's container (nanoseconds, as Podman prints it).
fn started_at(id: cove_core::WorkspaceId) -> String {
    let filter = format!("label=cove.workspace={id}");
    let listed = std::process::Command::new("podman").args(["ps", "-aq", "--filter", &filter]).output().unwrap();
    let container = String::from_utf8(listed.stdout).unwrap();
    let container = container.trim();
    assert!(!container.is_empty(), "no container for workspace {id}");
    support::podman_inspect(container, "{{.State.StartedAt}}")
}

#[test]
fn full_user_flow() {
    let server = TestServer::start();
    server.ok(&["create", "api", "--cpus", "2", "--memory", "2g", "--image", &server.image]);
    assert_eq!(state(&server.show("api")), ("Running", "Running"));

    let ls = server.ok(&["ls"]);
    let row = ls.lines().find(|l| l.starts_with("api ")).expect("api is listed");
    for column in ["Running", &server.image, "2/2g"] {
        assert!(row.contains(column), "`cove ls` row {row:?} lacks {column:?}");
    }

    server.ok(&["exec", "api", "--", "sh", "-c", "echo hi > ~/project/note.txt"]);
    server.ok(&["stop", "api"]);
    assert_eq!(state(&server.show("api")), ("Stopped", "Stopped"));
    assert!(matches!(container_state(&server, "api"), Some(ContainerState::Exited { .. })));
    server.ok(&["start", "api"]);
    assert_eq!(server.ok(&["exec", "api", "--", "cat", "project/note.txt"]), "hi\n");
    assert_eq!(server.ok(&["exec", "api", "--", "id", "-u"]), "1000\n");

    // A command's exit code and stderr come back as they are.
    let out = server.cove(&["exec", "api", "--", "sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // The container's output: one start line per start so far (create, then start), the
    // second start's ready line last. The agent may say it is ready after `start` returns,
    // so the logs are read until it has.
    let logs = poll("the second start's ready line at the end of the logs", WAIT, || {
        let logs = server.ok(&["logs", "api"]);
        let second_start_seen = logs.matches("starting in workspace api").count() >= 2;
        (second_start_seen && logs.ends_with("cove agent: ready\n")).then_some(logs)
    });
    assert_eq!(logs.matches("starting in workspace api").count(), 2, "{logs:?}");
    assert_eq!(server.ok(&["logs", "api", "--tail", "1"]), "cove agent: ready\n");

    let before = server.show("api");
    server.ok(&["restart", "api"]);
    let after = server.show("api");
    assert_eq!(state(&after), ("Running", "Running"));
    assert!(after["actual_generation"].as_i64() > before["actual_generation"].as_i64());

    let id = server.workspace_id("api");
    server.ok(&["rm", "api"]);
    server.fails(&["show", "api"]);
    assert!(!server.engine.observe().contains_key(&id), "the container or volume outlived `cove rm`");
}

#[test]
fn files_survive_ten_stop_start_cycles_and_a_removed_container() {
    let server = TestServer::start();
    server.ok(&["create", "keep", "--image", &server.image, "--memory", "256m", "--cpus", "0.5"]);
    server.ok(&["exec", "keep", "--", "sh", "-c", "echo precious > ~/project/data.txt"]);
    for cycle in 0..10 {
        server.ok(&["stop", "keep"]);
        server.ok(&["start", "keep"]);
        assert_eq!(server.ok(&["exec", "keep", "--", "cat", "project/data.txt"]), "precious\n", "after cycle {cycle}");
    }

    // Someone removes the container by hand: the reconciler makes a new one on the same volume.
    let id = server.workspace_id("keep");
    server.engine.block_on(server.engine.backend.remove_container(id)).unwrap();
    poll("the container to be recreated and running", WAIT, || {
        let seen = server.engine.observe();
        let o = seen.get(&id)?;
        (o.container.as_ref()?.state == ContainerState::Running).then_some(())
    });
    server.wait_for("keep", "Running again", WAIT, |ws| state(ws) == ("Running", "Running"));
    assert_eq!(server.ok(&["exec", "keep", "--", "cat", "project/data.txt"]), "precious\n");
}

#[test]
fn a_container_started_by_hand_is_stopped_again() {
    let server = TestServer::start();
    server.ok(&["create", "idle", "--image", &server.image, "--stopped"]);
    // Created stopped: nothing runs, and no container need exist yet.
    assert_eq!(state(&server.show("idle")), ("Stopped", "Stopped"));
    server.ok(&["start", "idle"]);
    server.ok(&["stop", "idle"]);
    let id = server.workspace_id("idle");
    let stopped_run = started_at(id);
    server.engine.block_on(server.engine.backend.start_container(id)).unwrap();
    // The reconciler may stop it again before anyone looks, so the proof that it ran is its
    // start time, not a `Running` seen in passing.
    assert_ne!(started_at(id), stopped_run, "the container was not started by hand");
    poll("the hand-started container to be stopped", WAIT, || {
        matches!(container_state(&server, "idle"), Some(ContainerState::Exited { .. })).then_some(())
    });
    // The engine shows it stopped a moment before the reconciler records it.
    server.wait_for("idle", "Stopped recorded", WAIT, |ws| state(ws) == ("Stopped", "Stopped"));
}

#[test]
fn resources_change_recreates_the_container_and_keeps_the_volume() {
    let server = TestServer::start();
    server.ok(&["create", "grow", "--image", &server.image, "--memory", "256m"]);
    server.ok(&["exec", "grow", "--", "sh", "-c", "echo kept > ~/project/f"]);
    server.ok(&["set", "grow", "--memory", "512m"]);
    server.ok(&["restart", "grow"]);
    // cgroup v1 and v2 name the limit differently; one of them holds 512 MiB.
    let limit = server.ok(&[
        "exec",
        "grow",
        "--",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]);
    assert_eq!(limit.trim(), (512u64 * 1024 * 1024).to_string());
    assert_eq!(server.ok(&["exec", "grow", "--", "cat", "project/f"]), "kept\n");
}

#[test]
fn server_killed_during_create_finishes_it_after_restart() {
    let mut server = TestServer::start();
    server.ok(&["create", "phoenix", "--image", &server.image, "--no-wait"]);
    let id = server.workspace_id("phoenix");
    // Kill as soon as the engine shows anything of the workspace: mid-create.
    poll("the create to begin", WAIT, || server.engine.observe().contains_key(&id).then_some(()));
    server.kill();
    server.spawn();
    server.wait_for("phoenix", "Running after the restart", WAIT, |ws| state(ws) == ("Running", "Running"));
    assert_eq!(server.ok(&["exec", "phoenix", "--", "echo", "alive"]), "alive\n");
}

#[test]
fn an_unreachable_engine_is_reported_and_the_workspace_converges_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("podman.sock");
    let endpoint = format!("unix://{}", socket.display());
    let server =
        TestServer::start_with(Options { endpoint: endpoint.clone(), sweep_endpoint: support::podman_endpoint() });

    // Creating waits, then says clearly what is wrong, and exits non-zero.
    let err = server.fails(&["create", "later", "--image", &server.image, "--timeout", "30"]);
    assert!(err.contains("not reachable"), "unclear error: {err}");
    let ws = server.show("later");
    assert_eq!(state(&ws), ("Running", "Unknown"));
    assert!(ws["message"].as_str().unwrap().contains(&socket.display().to_string()));

    // The engine comes up on that socket; nothing half-made blocks the workspace.
    let mut podman = std::process::Command::new("podman")
        .args(["system", "service", "--time=0", &endpoint])
        .spawn()
        .expect("podman must be installed");
    server.wait_for("later", "Running once the engine is back", WAIT, |ws| state(ws) == ("Running", "Running"));
    assert_eq!(server.ok(&["exec", "later", "--", "echo", "ok"]), "ok\n");
    drop(server);
    let _ = podman.kill();
    let _ = podman.wait();
}

#[test]
fn docker_engine_smoke() {
    let endpoint = std::env::var("COVE_TEST_DOCKER_HOST")
        .expect("COVE_TEST_DOCKER_HOST is not set: run the tests through `scripts/test`, which starts dockerd");
    let server = TestServer::start_with(Options { endpoint: endpoint.clone(), sweep_endpoint: endpoint });
    let status = server.ok(&["status"]);
    assert!(status.contains("\"docker\""), "not talking to Docker Engine: {status}");
    server.ok(&["create", "dock", "--image", &server.image, "--cpus", "1", "--memory", "512m"]);
    server.ok(&["exec", "dock", "--", "sh", "-c", "echo hi > ~/project/note.txt"]);
    server.ok(&["stop", "dock"]);
    server.ok(&["start", "dock"]);
    assert_eq!(server.ok(&["exec", "dock", "--", "cat", "project/note.txt"]), "hi\n");
    server.ok(&["restart", "dock"]);
    let id = server.workspace_id("dock");
    server.ok(&["rm", "dock"]);
    assert!(!server.engine.observe().contains_key(&id));
}
