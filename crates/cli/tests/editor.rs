//! The editor end to end: `cove editor install` on a running server's data directory, a
//! workspace of the Debian base image (no Node.js in it) made afterwards, code-server run by
//! the agent answering on its socket in the run directory (VS Code's page, a WebSocket
//! upgrade), and a killed code-server brought back by the agent.
//!
//! The npm install is cached by version in `COVE_EDITOR_CACHE` (scripts/test sets
//! /var/cache/cove-test/editor), so only the first run on a machine downloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(120);

/// One HTTP/1.1 exchange on a unix socket: the response head and body as text. `None` when
/// the socket does not answer (yet).
fn exchange(socket: &Path, request: &str) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // An upgrade keeps the connection open: the head is all we want.
                if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

fn get(socket: &Path, path: &str) -> Option<String> {
    exchange(socket, &format!("GET {path} HTTP/1.1\r\nHost: code--ed--admin.localhost\r\nConnection: close\r\n\r\n"))
}

/// The agent's health answer, through its socket with this start's secret.
fn agent_health(run_dir: &Path) -> Option<Value> {
    let secret = std::fs::read_to_string(run_dir.join("secret")).ok()?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: agent\r\nx-cove-agent-secret: {}\r\nConnection: close\r\n\r\n",
        secret.trim()
    );
    let response = exchange(&run_dir.join("agent.sock"), &request)?;
    let body = response.split_once("\r\n\r\n")?.1;
    // A chunked body: the JSON is the one line that parses.
    body.lines().find_map(|l| serde_json::from_str(l).ok())
}

/// VS Code's workbench page, following code-server's redirect to the folder it opens (the
/// browser's workbench reads the folder from its address): (where it sent us, the page).
fn workbench(socket: &Path) -> Option<(String, String)> {
    let response = get(socket, "/")?;
    if !response.starts_with("HTTP/1.1 302") {
        return None;
    }
    let location =
        response.lines().find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))?;
    let location = location.trim().trim_start_matches('.');
    let location = if location.starts_with('/') { location.to_string() } else { format!("/{location}") };
    let page = get(socket, &location)?;
    (page.starts_with("HTTP/1.1 200") && page.contains("vscode-workbench-web-configuration"))
        .then_some((location, page))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("COVE_EDITOR_CACHE").map_or_else(|| PathBuf::from("/var/cache/cove-test/editor"), PathBuf::from)
}

/// `cove editor install` into the server's data directory (from the npm cache): what it said.
fn install_editor(server: &TestServer) -> String {
    let out = Command::new(COVE)
        .args(["editor", "install", "--data-dir"])
        .arg(&server.data_dir)
        .arg("--cache")
        .arg(cache_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "cove editor install failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn code_server_runs_in_a_workspace_answers_on_its_socket_and_is_restarted() {
    let server = TestServer::start();
    // Installed while the server runs: the next workspace made must get it.
    let said = install_editor(&server);
    assert!(said.contains("code-server 4.100.3"), "{said}");

    let image = Engine::base_image(&server.endpoint);
    server.ok(&["create", "ed", "--image", &image, "--memory", "2g", "--cpus", "2"]);
    // The image has no Node.js: what runs is the mounted one.
    assert!(!server.cove(&["exec", "ed", "--", "sh", "-c", "command -v node"]).status.success());
    let run_dir = server.run_dir("ed");
    let socket = run_dir.join("user/code.sock");

    let (location, page) = poll("VS Code's page on code-server's socket", WAIT, || workbench(&socket));
    assert_eq!(location, "/?folder=/home/cove/project", "not sent to the project folder");
    assert!(page.contains("/home/cove/.local/share/code-server"), "user data not under the home:\n{page}");

    let upgrade = "GET /?reconnectionToken=cove-test&reconnection=false&skipWebSocketFrames=false HTTP/1.1\r\n\
         Host: code--ed--admin.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = exchange(&socket, upgrade).expect("no answer to the WebSocket upgrade");
    assert!(answer.starts_with("HTTP/1.1 101"), "the upgrade was refused:\n{answer}");
    assert!(answer.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "wrong Sec-WebSocket-Accept:\n{answer}");

    // The same through Cove's proxy, as a browser or script reaches it: the page, then a
    // WebSocket upgrade that code-server itself accepts (its Sec-WebSocket-Accept comes back).
    let host = format!("code--ed--admin.localhost:{}", server.port());
    let token = server.token();
    let via_proxy = |request: String| -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let page = via_proxy(format!(
        "GET {location} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    assert!(page.starts_with("HTTP/1.1 200"), "VS Code's page through the proxy:\n{}", &page[..page.len().min(400)]);
    assert!(page.contains("vscode-workbench-web-configuration"));
    let answer = via_proxy(format!(
        "GET /?reconnectionToken=cove-proxy&reconnection=false&skipWebSocketFrames=false HTTP/1.1\r\n\
         Host: {host}\r\nAuthorization: Bearer {token}\r\nOrigin: http://{host}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 101"), "the upgrade through the proxy was refused:\n{answer}");
    assert!(answer.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "wrong Sec-WebSocket-Accept:\n{answer}");

    // In a real Chromium: log in, the workbench on ~/project, a command typed into the
    // integrated terminal runs in the workspace (the file it writes is there).
    let summary = browser(&server, "vscode.mjs", &[("CODE_URL", format!("http://{host}/"))]);
    assert_eq!(summary["folder"], "/home/cove/project", "{summary}");
    assert_eq!(summary["typed"], true, "{summary}");
    let proof = poll("the file the integrated terminal wrote", WAIT, || {
        let out = server.cove(&["exec", "ed", "--", "cat", "project/vscode-proof.txt"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(proof, "typed in vscode 42\n");
    let owner = server.ok(&["exec", "ed", "--", "stat", "-c", "%u", "project/vscode-proof.txt"]);
    assert_eq!(owner.trim(), "1000", "the integrated terminal must run as the workspace user");

    // VS Code's integrated terminal runs on node-pty, a native module: it loads with the
    // bundled Node.js and libraries in the workspace and gives a shell a terminal.
    let script = "const p = require('/.cove/editor/node_modules/code-server/lib/vscode/node_modules/node-pty'); \
                  const t = p.spawn('/bin/sh', ['-c', 'test -t 1 && echo pty-ok'], {}); \
                  t.onData((d) => process.stdout.write(d)); t.onExit(() => process.exit(0));";
    let out = server.ok(&["exec", "ed", "--", "/.cove/editor/node/bin/node", "-e", script]);
    assert!(out.contains("pty-ok"), "node-pty did not run a shell on a terminal: {out:?}");

    // Kill code-server (as the workspace user, whose process it is): the agent restarts it.
    let health = poll("the agent's health", WAIT, || agent_health(&run_dir));
    let editor = &health["editor"];
    assert_eq!(editor["state"], "running", "{health}");
    let pid = editor["pid"].as_u64().unwrap();
    server.ok(&["exec", "ed", "--", "kill", "-9", &pid.to_string()]);
    let health = poll("the agent to restart code-server", WAIT, || {
        agent_health(&run_dir)
            .filter(|h| h["editor"]["restarts"].as_u64() >= Some(1) && h["editor"]["state"] == "running")
    });
    assert_ne!(health["editor"]["pid"].as_u64(), Some(pid), "{health}");
    poll("VS Code's page after the restart", WAIT, || workbench(&socket));
    let logs = server.ok(&["logs", "ed"]);
    assert!(logs.contains("cove agent: editor: code-server ended"), "{logs}");
}

/// A minimal VS Code extension package: `extension/package.json` and the manifest files a
/// `.vsix` carries, zipped (by Python's zipfile, on every machine the tests run on).
fn write_vsix(path: &Path, publisher: &str, name: &str, version: &str) {
    let package = serde_json::json!({
        "name": name, "publisher": publisher, "version": version,
        "engines": { "vscode": "^1.60.0" }, "displayName": "Cove test extension",
    });
    let manifest = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><PackageManifest Version="2.0.0" xmlns="http://schemas.microsoft.com/developer/vsx-schema/2011"><Metadata><Identity Language="en-US" Id="{name}" Version="{version}" Publisher="{publisher}"/><DisplayName>Cove test extension</DisplayName></Metadata><Installation><InstallationTarget Id="Microsoft.VisualStudio.Code"/></Installation><Dependencies/><Assets><Asset Type="Microsoft.VisualStudio.Code.Manifest" Path="extension/package.json" Addressable="true"/></Assets></PackageManifest>"#
    );
    let types = r#"<?xml version="1.0" encoding="utf-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension=".json" ContentType="application/json"/><Default Extension=".vsixmanifest" ContentType="text/xml"/></Types>"#;
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1], 'w')\n\
                  z.writestr('extension/package.json', sys.argv[2])\n\
                  z.writestr('extension.vsixmanifest', sys.argv[3])\n\
                  z.writestr('[Content_Types].xml', sys.argv[4])\n\
                  z.close()\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .args([package.to_string(), manifest, types.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "could not write {}", path.display());
}

#[test]
fn devcontainer_customizations_reach_the_editor() {
    let server = TestServer::start();
    install_editor(&server);

    let checkout = tempfile::tempdir().unwrap();
    let config_dir = checkout.path().join(".devcontainer");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = serde_json::json!({
        "containerEnv": { "COVE_EDITOR_PROBE": "from-devcontainer" },
        "customizations": { "vscode": {
            "settings": { "editor.fontSize": 19 },
            "extensions": ["cove-test.hello", "cove-test.absent"],
        } },
    });
    std::fs::write(config_dir.join("devcontainer.json"), config.to_string()).unwrap();
    write_vsix(&config_dir.join("cove-test.hello-0.0.1.vsix"), "cove-test", "hello", "0.0.1");

    let image = Engine::base_image(&server.endpoint);
    let from = checkout.path().to_str().unwrap();
    server.ok(&["create", "custom", "--from-dir", from, "--image", &image, "--memory", "2g", "--cpus", "2"]);

    // The .vsix next to devcontainer.json is installed into the user's extensions.
    let data = "/home/cove/.local/share/code-server";
    let listed = poll("the extension from the .vsix installed", WAIT, || {
        let out = server.cove(&["exec", "custom", "--", "ls", &format!("{data}/extensions")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("cove-test.hello-0.0.1").then_some(text)
    });
    assert!(listed.contains("cove-test.hello-0.0.1"), "{listed}");
    let owner = server.ok(&["exec", "custom", "--", "stat", "-c", "%u", &format!("{data}/extensions")]);
    assert_eq!(owner.trim(), "1000", "extensions must belong to the workspace user");

    // The settings are the editor's machine settings.
    let settings = server.ok(&["exec", "custom", "--", "cat", &format!("{data}/Machine/settings.json")]);
    let settings: Value = serde_json::from_str(&settings).unwrap();
    assert_eq!(settings["editor.fontSize"], 19, "{settings}");

    // An id with no .vsix and no reachable gallery: said clearly, by name, in the logs.
    let logs = poll("the message for the extension that has no .vsix", WAIT, || {
        let logs = server.ok(&["logs", "custom"]);
        logs.contains("extension cove-test.absent not installed").then_some(logs)
    });
    assert!(logs.contains(".vsix next to devcontainer.json"), "{logs}");

    // code-server runs (restarted for the new extension) with the configuration's environment.
    let run_dir = server.run_dir("custom");
    let environ = poll("code-server running with containerEnv", WAIT, || {
        let health = agent_health(&run_dir)?;
        let pid = health["editor"]["pid"].as_u64()?;
        let out = server.cove(&["exec", "custom", "--", "cat", &format!("/proc/{pid}/environ")]);
        let environ = String::from_utf8_lossy(&out.stdout).into_owned();
        environ.contains("COVE_EDITOR_PROBE=").then_some(environ)
    });
    assert!(environ.split('\0').any(|v| v == "COVE_EDITOR_PROBE=from-devcontainer"), "{environ:?}");
    poll("VS Code's page after the restart", WAIT, || workbench(&run_dir.join("user/code.sock")));

    // Once installed, not again on the next start.
    server.ok(&["stop", "custom"]);
    server.ok(&["start", "custom"]);
    poll("the editor back after the restart", WAIT, || workbench(&run_dir.join("user/code.sock")));
    let logs = server.ok(&["logs", "custom"]);
    assert_eq!(logs.matches("extension cove-test.hello installed").count(), 1, "installed twice:\n{logs}");
}
