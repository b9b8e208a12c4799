//! The web terminal in a real workspace on Podman: a WebSocket to the agent's socket in the
//! workspace's run directory (as the proxy's `term--…` route will reach it), with the
//! secret the agent wrote next to it. The shell is the workspace user's, in the container.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use support::{state, TestServer};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(60);

struct Term {
    ws: WebSocketStream<UnixStream>,
    session: String,
    new: bool,
    output: Vec<u8>,
}

async fn attach(socket: &Path, secret: &str, session: Option<&str>) -> Term {
    let query = session.map(|s| format!("?session={s}")).unwrap_or_default();
    let mut request = format!("ws://agent/ws{query}").into_client_request().unwrap();
    request.headers_mut().insert("x-cove-agent-secret", secret.parse().unwrap());
    request.headers_mut().insert("x-cove-app", "term".parse().unwrap());
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    let hello = match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).unwrap(),
        other => panic!("expected the attached message, got {other:?}"),
    };
    assert_eq!(hello["type"], "attached", "{hello}");
    Term {
        ws,
        session: hello["session"].as_str().unwrap().into(),
        new: hello["new"].as_bool().unwrap(),
        output: Vec::new(),
    }
}

impl Term {
    async fn input(&mut self, text: &str) {
        self.ws.send(Message::Binary(text.as_bytes().to_vec().into())).await.unwrap();
    }

    /// Output up to and including `needle`.
    async fn until(&mut self, needle: &str) -> String {
        loop {
            let text = String::from_utf8(self.output.clone()).expect("output is UTF-8");
            if let Some(at) = text.find(needle) {
                self.output.drain(..at + needle.len());
                return text[..at + needle.len()].to_string();
            }
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(bytes)))) => self.output.extend_from_slice(&bytes),
                Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("no {needle:?} (got {other:?}) after {text:?}"),
            }
        }
    }
}

#[test]
fn the_web_terminal_runs_a_shell_in_a_real_workspace() {
    let server = TestServer::start();
    server.ok(&["create", "term", "--image", &server.image]);
    assert_eq!(state(&server.show("term")), ("Running", "Running"));
    let (socket, secret) = server.agent_endpoint("term", WAIT);

    let rt = support::rt();
    let mut again = rt.block_on(async {
        let mut t = attach(&socket, &secret, None).await;
        assert!(t.new);
        // "\165" is "u": the echo of the typed line cannot match. The shell is the
        // workspace user's, in ~/project, and speaks UTF-8.
        t.input("printf '\\165id=%s in %s\\n' \"$(id -u)\" \"$PWD\"; printf 'h\\303\\251llo \\342\\234\\223\\n'\n")
            .await;
        t.until("uid=1000 in /home/cove/project").await;
        t.until("héllo ✓").await;
        t.input("KEPT=kept-$((1+1)); stty size\n").await;
        t.until("24 80").await;
        let session = t.session.clone();
        t.ws.close(None).await.unwrap();
        drop(t);

        let mut again = attach(&socket, &secret, Some(&session)).await;
        assert!(!again.new, "the session outlived its socket");
        assert_eq!(again.session, session);
        again.until("héllo ✓").await;
        again.input("echo \"$KEPT\"-$((3*3))\n").await;
        again.until("kept-2-9").await;
        again
    });
    // The control plane hears of the attached terminal from the agent.
    server.wait_for("term", "the agent to report a terminal session", WAIT, |ws| {
        ws["agent"]["sessions"]["terminal"] == 1
    });
    rt.block_on(async {
        again.input("exit 4\n").await;
        loop {
            match tokio::time::timeout(WAIT, again.ws.next()).await.unwrap() {
                Some(Ok(Message::Text(text))) => {
                    let exit: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(exit, serde_json::json!({"type": "exit", "code": 4}));
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended without the exit message: {other:?}"),
            }
        }
    });
    server.wait_for("term", "the terminal session to be gone", WAIT, |ws| {
        ws["agent"]["sessions"].is_object() && ws["agent"]["sessions"].get("terminal").is_none()
    });
}

/// In a real Chromium, through the proxy: the term address of a stopped workspace logs in,
/// wakes it, shows a shell that runs what is typed, and a reload reattaches to that shell.
#[test]
fn the_web_terminal_works_in_a_browser_through_the_proxy_and_survives_a_reload() {
    let server = TestServer::start();
    server.ok(&["create", "shell"]);
    server.ok(&["stop", "shell"]);
    let url = format!("http://term--shell--admin.localhost:{}/", server.port());
    let summary = support::browser(&server, "terminal.mjs", &[("TERM_URL", url)]);
    assert_eq!(summary["sawStartingPage"], true, "{summary}");
    assert_eq!(summary["replayed"], true, "{summary}");
    assert_eq!(summary["sameShell"], true, "{summary}");
    assert_eq!(state(&server.show("shell")), ("Running", "Running"));
}

/// Typing in the terminal is activity the agent reports: it keeps a workspace with a short
/// idle timeout running well past the timeout; once the typing stops, the idle stop comes.
/// The terminal is reached on the agent's socket, not through the proxy, so the only
/// activity the control plane hears of is the agent's.
#[test]
fn terminal_input_postpones_the_idle_stop_and_its_absence_lets_it_come() {
    let server = TestServer::start();
    server.ok(&["create", "busy"]);
    let (socket, secret) = server.agent_endpoint("busy", WAIT);
    let rt = support::rt();
    let mut term = rt.block_on(attach(&socket, &secret, None));
    rt.block_on(async {
        term.input("echo ready-$((1+1))\n").await;
        term.until("ready-2\r\n").await;
    });
    // The short timeout is set once the shell answers (the change restarts the idle
    // window), so however slow the start, the window opens with the typing.
    server.ok(&["set", "busy", "--idle-timeout", "6s"]);
    // Well over two timeouts' worth of typing, a keystroke every half second.
    let typing_until = std::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while std::time::Instant::now() < typing_until {
        n += 1;
        rt.block_on(async {
            term.input(&format!("echo tick-$(({n}*1))\n")).await;
            term.until(&format!("tick-{n}\r\n")).await;
        });
        assert_eq!(state(&server.show("busy")), ("Running", "Running"), "stopped while typing (tick {n})");
        std::thread::sleep(Duration::from_millis(500));
    }
    let shown = server.show("busy");
    assert_eq!(shown["last_activity_kind"], "terminal", "{shown}");
    // The session stays open but idle: that alone does not keep the workspace awake.
    server.wait_for("busy", "the idle stop once typing stopped", WAIT, |ws| state(ws) == ("Stopped", "Stopped"));
    drop(term);
}
