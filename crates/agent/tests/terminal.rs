//! The web terminal over a real WebSocket to real shells on PTYs: the agent's endpoint on a
//! loopback port, a `WorkspaceUser` for whoever runs the tests (no uid switch), and
//! tokio-tungstenite as the browser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cove_agent::control::Control;
use cove_agent::user::WorkspaceUser;
use cove_agent::{endpoint, terminal, Agent};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "test-secret";
const DEADLINE: Duration = Duration::from_secs(15);

struct Harness {
    addr: std::net::SocketAddr,
    agent: Agent,
    _home: tempfile::TempDir,
}

fn user(home: PathBuf) -> WorkspaceUser {
    let shell = if std::path::Path::new("/bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
    WorkspaceUser {
        name: "tester".into(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        home,
        shell: shell.into(),
        switch: false,
        secrets: cove_agent::user::SecretEnv::default(),
    }
}

/// The agent's whole endpoint (secret check, app dispatch), with the terminal's `config`.
async fn start(config: Option<terminal::Config>) -> Harness {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("project")).unwrap();
    let agent = Agent::new(
        user(home.path().to_path_buf()),
        Control::new("/nonexistent/control.sock".into()),
        Arc::from(SECRET),
    );
    let router = match config {
        None => endpoint::router(agent.clone()),
        // The app alone, as the endpoint's dispatch would call it.
        Some(config) => terminal::app_with(agent.clone(), config),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Harness { addr, agent, _home: home }
}

struct Term {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    new: bool,
    output: Vec<u8>,
    controls: Vec<Value>,
    closed: bool,
}

impl Harness {
    async fn attach(&self, query: &str) -> Term {
        let mut request = format!("ws://{}/ws{query}", self.addr).into_client_request().unwrap();
        request.headers_mut().insert("x-cove-agent-secret", SECRET.parse().unwrap());
        request.headers_mut().insert("x-cove-app", "term".parse().unwrap());
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request)).await.unwrap().unwrap();
        let mut term =
            Term { ws, session: String::new(), new: false, output: Vec::new(), controls: Vec::new(), closed: false };
        let hello = term.next_control().await;
        assert_eq!(hello["type"], "attached", "{hello}");
        term.session = hello["session"].as_str().unwrap().to_string();
        term.new = hello["new"].as_bool().unwrap();
        term
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await.unwrap().unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }
}

impl Term {
    /// Reads one frame into `output`/`controls`; false once the socket is closed.
    async fn read_frame(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let frame = tokio::time::timeout(DEADLINE, self.ws.next()).await.unwrap_or_else(|_| {
            panic!("nothing from the terminal in time; output so far: {:?}", String::from_utf8_lossy(&self.output))
        });
        match frame {
            Some(Ok(Message::Binary(bytes))) => self.output.extend_from_slice(&bytes),
            Some(Ok(Message::Text(text))) => self.controls.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => self.closed = true,
            Some(Ok(_)) => {}
        }
        !self.closed
    }

    async fn next_control(&mut self) -> Value {
        let seen = self.controls.len();
        while self.controls.len() == seen {
            assert!(self.read_frame().await, "closed before a control message");
        }
        self.controls[seen].clone()
    }

    /// Output (decoded as UTF-8) up to and including `needle`, which must arrive in time.
    async fn until(&mut self, needle: &str) -> String {
        loop {
            let text = String::from_utf8(self.output.clone()).unwrap_or_else(|e| panic!("output is not UTF-8: {e}"));
            if let Some(at) = text.find(needle) {
                self.output.drain(..at + needle.len());
                return text[..at + needle.len()].to_string();
            }
            assert!(self.read_frame().await, "closed before {needle:?}: {text:?}");
        }
    }

    async fn input(&mut self, text: &str) {
        self.ws.send(Message::Binary(text.as_bytes().to_vec().into())).await.unwrap();
    }

    async fn resize(&mut self, cols: u16, rows: u16) {
        let message = serde_json::json!({"type": "resize", "cols": cols, "rows": rows}).to_string();
        self.ws.send(Message::Text(message.into())).await.unwrap();
    }
}

#[tokio::test]
async fn input_reaches_the_shell_and_its_output_comes_back() {
    let h = start(None).await;
    let mut t = h.attach("").await;
    assert!(t.new);
    // The marker is computed by the shell, so the echo of the typed line cannot match it.
    t.input("echo $((6*7))-ok; pwd\n").await;
    let out = t.until("42-ok").await;
    assert!(!out.is_empty());
    let out = t.until("/project").await;
    assert!(out.contains(&h._home.path().display().to_string()), "the shell starts in ~/project: {out:?}");
}

#[tokio::test]
async fn the_terminal_has_the_size_the_client_says() {
    let h = start(None).await;
    let mut t = h.attach("?cols=100&rows=30").await;
    t.input("stty size\n").await;
    t.until("30 100").await;
    t.resize(132, 40).await;
    t.input("stty size\n").await;
    t.until("40 132").await;
}

#[tokio::test]
async fn utf8_passes_intact_both_ways() {
    let h = start(None).await;
    let mut t = h.attach("").await;
    // Octal escapes in, UTF-8 out: the typed line's echo does not contain the answer.
    t.input("printf 'h\\303\\251llo \\342\\234\\223 done\\n'\n").await;
    t.until("héllo ✓ done").await;
    // UTF-8 typed: the shell sees the two bytes of "ü" and the three of "✓".
    t.input("printf %s 'ü✓' | od -An -tx1\n").await;
    t.until("c3 bc e2 9c 93").await;
}

#[tokio::test]
async fn a_reattached_client_gets_the_scrollback_and_the_same_shell() {
    let h = start(None).await;
    let mut t = h.attach("").await;
    t.input("KEPT=still-$((1+1)); echo marker-$((3*3))\n").await;
    t.until("marker-9").await;
    let session = t.session.clone();
    t.ws.close(None).await.unwrap();
    drop(t);

    let mut again = h.attach(&format!("?session={session}")).await;
    assert!(!again.new, "the session outlived its socket");
    assert_eq!(again.session, session);
    // The scrollback arrives before anything new is typed.
    let replay = again.until("marker-9").await;
    assert!(replay.contains("echo marker-"), "the typed line is in the scrollback too: {replay:?}");
    again.input("echo \"$KEPT\"-$((2*2))\n").await;
    again.until("still-2-4").await;

    // A second client on the same session sees what the first one's input produces.
    let mut other = h.attach(&format!("?session={session}")).await;
    other.until("still-2-4").await;
    again.input("echo both-$((5*5))\n").await;
    other.until("both-25").await;
    again.until("both-25").await;
}

#[tokio::test]
async fn the_session_ends_when_the_shell_exits() {
    let h = start(None).await;
    let mut t = h.attach("").await;
    t.input("exit 3\n").await;
    let exit = t.next_control().await;
    assert_eq!(exit, serde_json::json!({"type": "exit", "code": 3}));
    while t.read_frame().await {}
    let fresh = h.attach(&format!("?session={}", t.session)).await;
    assert!(fresh.new, "an ended session is not reattached");
    assert_ne!(fresh.session, t.session);
}

#[tokio::test]
async fn a_session_without_clients_is_hung_up_after_the_timeout() {
    let config = terminal::Config { detached_timeout: Duration::from_millis(300), ..Default::default() };
    let h = start(Some(config)).await;
    let mut t = h.attach("").await;
    // "\160" is "p": the typed line's echo does not contain "pid=".
    t.input("printf '\\160id=%s.\\n' $$\n").await;
    t.until("pid=").await;
    let pid: u32 = t.until(".").await.trim_end_matches('.').parse().unwrap();
    t.ws.close(None).await.unwrap();
    drop(t);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // The shell is a child of this process: gone from /proc once it is reaped.
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(tokio::time::Instant::now() < deadline, "shell {pid} still runs with no client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn input_is_activity_and_an_attached_client_is_a_session() {
    let h = start(None).await;
    let _ = h.agent.activity.take_report();
    let mut t = h.attach("").await;
    t.input("echo hi-$((1+2))\n").await;
    t.until("hi-3").await;
    let report = h.agent.activity.take_report().expect("activity after input");
    assert!(report.kinds.contains(&"terminal".to_string()), "{report:?}");
    assert_eq!(report.sessions.get("terminal"), Some(&1), "{report:?}");
    t.ws.close(None).await.unwrap();
    while t.read_frame().await {}
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.agent.activity.sessions().contains_key("terminal") {
        assert!(tokio::time::Instant::now() < deadline, "the closed client is still a session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_page_and_assets_are_behind_the_secret_and_the_app_header() {
    let h = start(None).await;
    let (status, _, body) = h.get("/", &[("x-cove-app", "term")]).await;
    assert_eq!(status, 401, "no secret: {body}");
    let (status, head, body) = h.get("/", &[("x-cove-agent-secret", SECRET), ("x-cove-app", "term")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.contains(" terminal</title>") && body.contains("assets/xterm.js"), "{body}");
    for (asset, kind, marker) in [
        ("xterm.js", "text/javascript", "Terminal"),
        ("addon-fit.js", "text/javascript", "FitAddon"),
        ("terminal.js", "text/javascript", "reconnecting"),
        ("xterm.css", "text/css", ".xterm"),
    ] {
        let (status, head, body) =
            h.get(&format!("/assets/{asset}"), &[("x-cove-agent-secret", SECRET), ("x-cove-app", "term")]).await;
        assert_eq!(status, 200, "{asset}");
        assert!(head.contains(&format!("content-type: {kind}")), "{asset}: {head}");
        assert!(body.contains(marker), "{asset}");
    }
    let (status, _, body) = h.get("/assets/nope.js", &[("x-cove-agent-secret", SECRET), ("x-cove-app", "term")]).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = h.get("/", &[("x-cove-agent-secret", SECRET), ("x-cove-app", "nope")]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no app \\\"nope\\\""), "{body}");
    let (status, _, body) =
        h.get("/ws?session=../etc", &[("x-cove-agent-secret", SECRET), ("x-cove-app", "term")]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_request"), "{body}");
    // Without the app header, the agent's own routes are as before.
    let (status, _, body) = h.get("/health", &[("x-cove-agent-secret", SECRET)]).await;
    assert_eq!(status, 200, "{body}");
}
