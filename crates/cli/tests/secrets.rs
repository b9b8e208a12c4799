//! Secrets end to end (real Podman, real SQLite file): set with `cove secrets`, frozen at
//! creation, delivered by the agent into the user's processes (`cove exec`, SSH) and into
//! files on a tmpfs; found byte by byte in neither the database, the engine's inspect
//! output, the volume nor the server's log; a later change is seen only after `cove
//! secrets refresh`; the key rotates, and a wrong key stops the server at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// What a command typed into the workspace's web terminal (over the agent's socket, as the
/// proxy's `term` app reaches it) prints, up to `needle`.
fn in_terminal(socket: &Path, secret: &str, line: &str, needle: &str) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    rt().block_on(async {
        let mut request = "ws://agent/ws".into_client_request().unwrap();
        request.headers_mut().insert("x-cove-agent-secret", secret.parse().unwrap());
        request.headers_mut().insert("x-cove-app", "term".parse().unwrap());
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
        ws.send(Message::Binary(format!("{line}\r").into_bytes().into())).await.unwrap();
        let mut output = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !String::from_utf8_lossy(&output).contains(needle) {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Binary(bytes)))) => output.extend_from_slice(&bytes),
                Ok(Some(Ok(_))) => {}
                other => {
                    panic!("the terminal ended before {needle:?}: {other:?}\n{}", String::from_utf8_lossy(&output))
                }
            }
        }
        String::from_utf8_lossy(&output).to_string()
    })
}

fn set(server: &TestServer, args: &[&str], value: &str) -> String {
    let out = server.cove_fed(&[&["secrets", "set"], args].concat(), value);
    assert!(out.status.success(), "cove secrets set {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file of the data directory that is not the agents' run directories.
fn data_files_contain(dir: &Path, needle: &str) -> Option<String> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && contains(&std::fs::read(&path).unwrap_or_default(), needle) {
            return Some(path.display().to_string());
        }
    }
    None
}

/// `podman inspect` of every container of this test's instance.
fn inspect(server: &TestServer) -> Vec<u8> {
    let filter = format!("label=cove.instance={}", server.instance);
    let ids = Command::new("podman").args(["ps", "-a", "-q", "--filter", &filter]).output().unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_string).collect();
    assert!(!ids.is_empty(), "no container to inspect");
    let out = Command::new("podman").arg("inspect").args(&ids).output().unwrap();
    assert!(out.status.success(), "podman inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The value split by an empty quote, so the pattern a shell in the workspace is given is
/// not the value's bytes (which would be in the exec's own command line).
fn split(value: &str) -> String {
    let (a, b) = value.split_at(4);
    format!("{a}''{b}")
}

fn env_of(server: &TestServer, ws: &str, key: &str) -> String {
    let out = server.cove(&["exec", ws, "--", "sh", "-c", &format!("printf %s \"${key}\"")]);
    assert!(out.status.success(), "`cove exec {ws}` of ${key} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn restart(server: &TestServer, ws: &str) {
    server.ok(&["restart", ws]);
    server.wait_for_agent_ready_again(ws, WAIT);
}

#[test]
fn secrets_are_frozen_delivered_on_a_tmpfs_and_never_stored_or_shown_in_clear() {
    let mut server = TestServer::start();
    let log = server.data_dir.parent().unwrap().join("server.log");
    server.kill();
    server.log = Some(log.clone());
    server.spawn();

    let id = uuid::Uuid::new_v4().simple().to_string();
    let instance_value = format!("inst-{id}");
    let user_value = format!("user-{id}");
    let api_value = format!("api key {id} with spaces");
    let file_value = format!("-----BEGIN KEY-----\nfile-{id}\n-----END KEY-----\n");
    set(&server, &["SHARED", "--scope", "instance"], &instance_value);
    set(&server, &["ONLY_INSTANCE", "--scope", "instance"], "from-the-instance");
    let said = set(&server, &["SHARED"], &format!("{user_value}\n"));
    assert!(!said.contains(&user_value), "the CLI printed a value: {said}");
    set(&server, &["API_KEY"], &api_value);
    set(&server, &["cert.pem", "--file"], &file_value);
    // Bad input: a clear error, nothing stored.
    let err = server.fails(&["secrets", "set", "9LIVES"]);
    assert!(err.contains("no value given") || err.contains("environment variable name"), "{err}");
    let err = server.fails(&["secrets", "ls", "--scope", "workspace"]);
    assert!(err.contains("--workspace"), "{err}");

    let listed = server.ok(&["secrets", "ls"]);
    assert!(listed.contains("API_KEY") && listed.contains("cert.pem") && listed.contains("file"), "{listed}");
    let listed_json = server.ok(&["secrets", "ls", "--json", "--scope", "instance"]);
    assert!(listed_json.contains("ONLY_INSTANCE"), "{listed_json}");
    for value in [&instance_value, &user_value, &api_value] {
        assert!(!listed.contains(value.as_str()) && !listed_json.contains(value.as_str()), "a value is listed");
    }

    server.ok(&["create", "sec"]);
    server.wait_for("sec", "the agent to be ready", WAIT, |w| w["agent"]["state"] == "ready");

    // The frozen set, in `cove exec`'s processes (the user scope overrides the instance).
    assert_eq!(env_of(&server, "sec", "SHARED"), user_value);
    assert_eq!(env_of(&server, "sec", "API_KEY"), api_value);
    assert_eq!(env_of(&server, "sec", "ONLY_INSTANCE"), "from-the-instance");
    assert_eq!(server.ok(&["exec", "sec", "--", "cat", "/run/cove/secrets/cert.pem"]), file_value);
    // What the exec sets itself wins.
    let mine = server.ok(&["exec", "sec", "-e", "API_KEY=mine", "--", "sh", "-c", "printf %s \"$API_KEY $SHARED\""]);
    assert_eq!(mine, format!("mine {user_value}"));
    // The secrets live on a tmpfs, the user's alone.
    let mounts = server.ok(&["exec", "sec", "--", "cat", "/proc/mounts"]);
    assert!(mounts.lines().any(|l| l.starts_with("tmpfs /run/cove ")), "{mounts}");
    let perms =
        server.ok(&["exec", "sec", "--", "stat", "-c", "%a %u", "/run/cove/secrets", "/run/cove/secrets/cert.pem"]);
    assert_eq!(perms, "700 1000\n600 1000\n");
    // And in the processes the agent starts: SSH (the terminal shares the same environment).
    let out = server.cove(&["ssh", "sec", "--", "printf '%s\\n' \"$API_KEY\"; cat /run/cove/secrets/cert.pem"]);
    assert!(out.status.success(), "cove ssh failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{api_value}\n{file_value}"));
    // And the web terminal's shell.
    let (socket, secret) = server.agent_endpoint("sec", WAIT);
    in_terminal(&socket, &secret, "echo \"got:$API_KEY:$SHARED:end\"", &format!("got:{api_value}:{user_value}:end"));

    // Nowhere in clear: not on the volume (nor anywhere else the container writes to
    // disk), not in the engine's metadata, not in the database, not in the server's log.
    for value in [&user_value, &api_value, &format!("file-{id}")] {
        let grep =
            format!("grep -rlF -e \"$(printf %s {})\" /home /tmp /scratch /etc 2>/dev/null; echo done", split(value));
        let found = server.ok(&["exec", "sec", "--", "sh", "-c", &grep]);
        assert_eq!(found, "done\n", "a value is in the workspace's files");
    }
    let inspected = inspect(&server);
    for value in [&instance_value, &user_value, &api_value, &format!("file-{id}")] {
        assert!(!contains(&inspected, value), "a value is in the engine's inspect output");
        assert_eq!(data_files_contain(&server.data_dir, value), None, "a value is in the data directory");
    }

    // A change is not seen until the workspace opts in, even after a restart.
    let newer = format!("newer-{id}");
    set(&server, &["API_KEY"], &newer);
    set(&server, &["EXTRA"], "extra");
    restart(&server, "sec");
    assert_eq!(env_of(&server, "sec", "API_KEY"), api_value);
    assert_eq!(env_of(&server, "sec", "EXTRA"), "");
    // A workspace's own secret overrides the user's.
    set(&server, &["SHARED", "--scope", "workspace", "--workspace", "sec"], &format!("own-{id}"));
    let said = server.cove(&["secrets", "refresh", "sec"]);
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    restart(&server, "sec");
    assert_eq!(env_of(&server, "sec", "API_KEY"), newer);
    assert_eq!(env_of(&server, "sec", "EXTRA"), "extra");
    assert_eq!(env_of(&server, "sec", "SHARED"), format!("own-{id}"));
    let frozen = server.ok(&["secrets", "ls", "--scope", "workspace", "--workspace", "sec"]);
    assert!(frozen.contains("frozen") && frozen.contains("EXTRA") && !frozen.contains(&newer), "{frozen}");

    // Rotation: everything re-encrypted, the workspace still gets its set after a restart
    // of both the server and the workspace.
    let old_key = std::fs::read(server.data_dir.join("secret.key")).unwrap();
    let said = server.cove(&["admin", "rotate-key"]);
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    assert_ne!(std::fs::read(server.data_dir.join("secret.key")).unwrap(), old_key);
    server.kill();
    server.spawn();
    restart(&server, "sec");
    assert_eq!(env_of(&server, "sec", "API_KEY"), newer);

    let log_text = std::fs::read(&log).unwrap();
    assert!(contains(&log_text, "secrets handed to the agent"), "the log is not the server's");
    for value in [&instance_value, &user_value, &api_value, &newer, &format!("file-{id}")] {
        assert!(!contains(&log_text, value), "a value is in the server's log");
        assert_eq!(data_files_contain(&server.data_dir, value), None, "a value is in the data directory");
    }

    // The old key: the server refuses to start, saying why.
    server.kill();
    let new_key = std::fs::read(server.data_dir.join("secret.key")).unwrap();
    std::fs::write(server.data_dir.join("secret.key"), &old_key).unwrap();
    let mut child = Command::new(COVE)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--engine", &server.endpoint, "--instance", &server.instance])
        .env_remove("COVE_SECRET_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with the wrong key");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("is not the key this database's secrets were encrypted with"), "{stderr}");
    std::fs::write(server.data_dir.join("secret.key"), &new_key).unwrap();
}
