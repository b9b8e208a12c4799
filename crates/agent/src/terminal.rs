//! The web terminal: a page with xterm.js and a WebSocket to a shell on a PTY, served on the
//! agent's socket for requests the gate marks `x-cove-app: term` (the proxy routes
//! `term--<workspace>--<owner>.<apps domain>` there).
//!
//! A shell belongs to a *session*, not to a WebSocket: the session outlives its clients, so
//! a page reload or a network blip reattaches to the same shell, and the session's
//! scrollback (the last [`Config::scrollback_bytes`] of output) is replayed before live
//! output continues. Several clients may watch one session; the last resize wins. A session
//! ends when its shell exits, or after [`Config::detached_timeout`] without any client (its
//! shell is hung up, as when a terminal window closes).
//!
//! # Protocol (`GET /ws?session=<id>&cols=<n>&rows=<n>`, all parameters optional)
//!
//! Without `session`, or with an id that no longer exists, a new session starts (with
//! `cols` x `rows`). Then:
//!
//! * client -> agent, **binary** frame: input bytes for the shell, as typed (UTF-8).
//! * client -> agent, **text** frame: one JSON control message;
//!   `{"type":"resize","cols":132,"rows":40}` is the only one.
//! * agent -> client, **text** frame: JSON control. First, always,
//!   `{"type":"attached","session":"<id>","new":true|false}`; the client clears its screen,
//!   as the scrollback follows. `{"type":"exit","code":0}` (or `"signal":9`) when the shell
//!   exited, after which the agent closes the socket. `{"type":"error","message":…}` for a
//!   message the agent cannot use.
//! * agent -> client, **binary** frame: output bytes, first the scrollback, then live.
//!   Output is sent as the PTY produced it; the client decodes the UTF-8 stream (xterm.js
//!   keeps a partial sequence across writes), so no frame boundary can corrupt a character.
//!
//! A client that falls too far behind the output is disconnected (close code 4000); it
//! reconnects and gets the scrollback, which is the state it missed.
//!
//! Input counts as activity (`terminal`), and every attached client is an open `terminal`
//! session for as long as it is attached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};

use crate::pty::{Pty, Size};
use crate::Agent;

const PAGE: &str = include_str!("../assets/terminal.html");
const PAGE_JS: &str = include_str!("../assets/terminal.js");
const PAGE_CSS: &str = include_str!("../assets/terminal.css");
const XTERM_JS: &str = include_str!("../assets/vendor/xterm.js");
const XTERM_CSS: &str = include_str!("../assets/vendor/xterm.css");
const FIT_JS: &str = include_str!("../assets/vendor/addon-fit.js");

/// The activity and session kind the terminal reports.
const KIND: &str = "terminal";
/// Output chunks a client may be behind before it is disconnected (and resynchronised by
/// its reconnect's replay).
const CLIENT_BACKLOG: usize = 1024;
/// How long a shell that exited may still flush output before its session ends (output
/// written just before `exit` is in the PTY, but a background job may keep it open).
const FLUSH_GRACE: Duration = Duration::from_millis(200);
/// How long a hung-up shell gets before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(5);
/// How often an idle WebSocket is pinged, and how long one may stay silent before it is
/// taken for dead (a blip the client will recover from by reconnecting).
const PING_INTERVAL: Duration = Duration::from_secs(25);
const CLIENT_SILENCE: Duration = Duration::from_secs(70);

#[derive(Clone, Debug)]
pub struct Config {
    /// Output kept per session and replayed on (re)attach.
    pub scrollback_bytes: usize,
    /// How long a session without clients lives on.
    pub detached_timeout: Duration,
    /// Sessions at most at once (each is a shell).
    pub max_sessions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { scrollback_bytes: 256 * 1024, detached_timeout: Duration::from_secs(3600), max_sessions: 32 }
    }
}

/// The terminal app with the default [`Config`].
pub fn app(agent: Agent) -> Router {
    app_with(agent, Config::default())
}

pub fn app_with(agent: Agent, config: Config) -> Router {
    let terminals = Terminals { agent, config, sessions: Arc::default(), title: Arc::from(page_title()) };
    Router::new()
        .route("/", get(page))
        .route("/assets/{file}", get(asset))
        .route("/ws", get(connect))
        .fallback(not_found)
        .with_state(terminals)
}

#[derive(Clone)]
struct Terminals {
    agent: Agent,
    config: Config,
    sessions: Arc<Mutex<HashMap<String, Arc<Session>>>>,
    title: Arc<str>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps and buffers stay consistent at every await-free step; a panic cannot
    // leave them half-changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The workspace's name (its container's hostname), for the page title.
fn page_title() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if host.is_empty() {
        "terminal".into()
    } else {
        format!("{host} terminal")
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn page(State(t): State<Terminals>) -> Response {
    let html = PAGE.replace("{{TITLE}}", &html_escape(&t.title));
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "xterm.js" => (XTERM_JS, "text/javascript; charset=utf-8"),
        "addon-fit.js" => (FIT_JS, "text/javascript; charset=utf-8"),
        "terminal.js" => (PAGE_JS, "text/javascript; charset=utf-8"),
        "xterm.css" => (XTERM_CSS, "text/css; charset=utf-8"),
        "terminal.css" => (PAGE_CSS, "text/css; charset=utf-8"),
        _ => return not_found().await,
    };
    // Not immutable: the names carry no version, and a new agent may bring new files.
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "the terminal serves /, /assets/… and /ws")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    session: Option<String>,
    cols: Option<u16>,
    rows: Option<u16>,
}

/// Session ids are the agent's own (random hex); anything else is a client's mistake.
fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

async fn connect(
    State(t): State<Terminals>,
    query: Result<Query<ConnectQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "give session as the id the terminal sent, and cols and rows as numbers from 1 to 65535",
        );
    };
    if let Some(id) = &query.session {
        if !valid_session_id(id) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "session must be an id the terminal sent (letters, digits and -)",
            );
        }
    }
    let Ok(upgrade) = upgrade else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "/ws is a WebSocket: connect with a WebSocket upgrade",
        );
    };
    let size = Size { cols: query.cols.unwrap_or(80).max(1), rows: query.rows.unwrap_or(24).max(1) };
    let (session, new) = match t.session(query.session.as_deref(), size) {
        Ok(found) => found,
        Err(SessionError::TooMany) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!(
                    "this workspace already has {} terminal sessions; exit a shell to open another",
                    t.config.max_sessions
                ),
            )
        }
        Err(SessionError::Spawn(e)) => {
            tracing::warn!(error = %e, "cannot start a terminal shell");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot start the shell for a terminal session; see the agent's log",
            );
        }
    };
    if !new && (query.cols.is_some() || query.rows.is_some()) {
        let _ = session.master.resize(size);
    }
    crate::lifecycle::on_attach(&t.agent);
    let activity = t.agent.activity.clone();
    upgrade.on_upgrade(move |socket| async move {
        let _open = activity.session(KIND);
        serve_client(socket, session, new, &activity).await;
    })
}

#[derive(Debug)]
enum SessionError {
    TooMany,
    Spawn(std::io::Error),
}

impl Terminals {
    /// The live session `id`, or a new one; `true` when new.
    fn session(&self, id: Option<&str>, size: Size) -> Result<(Arc<Session>, bool), SessionError> {
        let mut sessions = lock(&self.sessions);
        if let Some(session) = id.and_then(|id| sessions.get(id)) {
            return Ok((session.clone(), false));
        }
        if sessions.len() >= self.config.max_sessions {
            return Err(SessionError::TooMany);
        }
        let user = &self.agent.user;
        let mut command = user.shell_command(None);
        let project = user.home.join("project");
        if project.is_dir() {
            command.current_dir(project);
        }
        self.agent.lifecycle.apply_env(&mut command);
        command.env("COLORTERM", "truecolor");
        let pty = Pty::spawn(command, size).map_err(SessionError::Spawn)?;
        let id = hex::encode(rand::random::<[u8; 16]>());
        let (input, input_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(CLIENT_BACKLOG);
        let session = Arc::new(Session {
            id: id.clone(),
            master: pty.master.clone(),
            input,
            events,
            clients: watch::Sender::new(0),
            state: Mutex::new(SessionState { scrollback: Scrollback::new(self.config.scrollback_bytes), exit: None }),
        });
        sessions.insert(id.clone(), session.clone());
        tracing::info!(session = %id, "terminal session started");
        tokio::spawn(run_session(session.clone(), pty, input_rx, self.clone()));
        Ok((session, true))
    }
}

struct Session {
    id: String,
    master: crate::pty::Master,
    input: mpsc::Sender<Bytes>,
    events: broadcast::Sender<Event>,
    /// Clients attached now: the detached timeout runs while this is 0.
    clients: watch::Sender<usize>,
    state: Mutex<SessionState>,
}

struct SessionState {
    scrollback: Scrollback,
    exit: Option<Exit>,
}

#[derive(Clone, Copy, Debug)]
enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn message(self) -> String {
        match self {
            Exit::Code(code) => json!({"type": "exit", "code": code}).to_string(),
            Exit::Signal(signal) => json!({"type": "exit", "signal": signal}).to_string(),
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Output(Bytes),
    Exit(Exit),
}

/// What attaching gives a client: the scrollback so far and every event after it, with no
/// gap and no overlap between the two (both are taken under the session's lock).
struct Attachment {
    replay: Vec<u8>,
    events: broadcast::Receiver<Event>,
    exit: Option<Exit>,
    session: Arc<Session>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.session.clients.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Session {
    fn attach(self: &Arc<Self>) -> Attachment {
        let state = lock(&self.state);
        let events = self.events.subscribe();
        self.clients.send_modify(|n| *n += 1);
        Attachment { replay: state.scrollback.contents(), events, exit: state.exit, session: self.clone() }
    }

    fn output(&self, bytes: &[u8]) {
        let mut state = lock(&self.state);
        state.scrollback.push(bytes);
        // No receiver is fine: the scrollback keeps it for the next client.
        let _ = self.events.send(Event::Output(Bytes::copy_from_slice(bytes)));
    }
}

/// Runs one shell: copies its output to the scrollback and the clients, its input from
/// them, and ends the session when it exits (or hangs it up when nobody came back).
async fn run_session(session: Arc<Session>, mut pty: Pty, mut input: mpsc::Receiver<Bytes>, terminals: Terminals) {
    let mut writer = pty.master.clone();
    let writing = tokio::spawn(async move {
        while let Some(bytes) = input.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let pid = pty.child.id();
    let orphaned =
        hang_up_when_detached(session.clients.subscribe(), terminals.config.detached_timeout, pid, session.id.clone());
    tokio::pin!(orphaned);
    let mut reader = pty.master.clone();
    let mut buf = vec![0u8; 16 * 1024];
    let status = loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(n) if n > 0 => session.output(&buf[..n]),
                // The end of output: every process holding the terminal is gone.
                _ => break pty.child.wait().await,
            },
            status = pty.child.wait() => {
                while let Ok(Ok(n)) = tokio::time::timeout(FLUSH_GRACE, reader.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                    session.output(&buf[..n]);
                }
                break status;
            }
            () = &mut orphaned => {}
        }
    };
    writing.abort();
    let exit = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            status.code().map(Exit::Code).or(status.signal().map(Exit::Signal)).unwrap_or(Exit::Code(-1))
        }
        Err(e) => {
            tracing::warn!(session = %session.id, error = %e, "cannot wait for a terminal shell");
            Exit::Code(-1)
        }
    };
    lock(&terminals.sessions).remove(&session.id);
    {
        let mut state = lock(&session.state);
        state.exit = Some(exit);
        let _ = session.events.send(Event::Exit(exit));
    }
    tracing::info!(session = %session.id, ?exit, "terminal session ended");
}

/// Completes never; once no client has been attached for `timeout`, hangs the shell's
/// session up (SIGHUP to its process group, as a closing terminal does), then kills it.
async fn hang_up_when_detached(mut clients: watch::Receiver<usize>, timeout: Duration, pid: Option<u32>, id: String) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    loop {
        if *clients.borrow_and_update() == 0 {
            tokio::select! {
                () = tokio::time::sleep(timeout) => break,
                changed = clients.changed() => if changed.is_err() { break },
            }
        } else if clients.changed().await.is_err() {
            break;
        }
    }
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        tracing::info!(session = %id, "terminal session without clients for {timeout:?}; hanging up");
        let _ = killpg(Pid::from_raw(pid), Signal::SIGHUP);
        tokio::time::sleep(HANGUP_GRACE).await;
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    std::future::pending::<()>().await;
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Resize { cols: u16, rows: u16 },
}

async fn serve_client(socket: WebSocket, session: Arc<Session>, new: bool, activity: &crate::activity::Activity) {
    let mut attachment = session.attach();
    let (mut tx, mut rx) = socket.split();
    let hello = json!({"type": "attached", "session": session.id, "new": new}).to_string();
    if tx.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    for chunk in attachment.replay.chunks(64 * 1024) {
        if tx.send(Message::Binary(Bytes::copy_from_slice(chunk))).await.is_err() {
            return;
        }
    }
    attachment.replay = Vec::new();
    if let Some(exit) = attachment.exit {
        let _ = tx.send(Message::Text(exit.message().into())).await;
        let _ = tx.close().await;
        return;
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            event = attachment.events.recv() => match event {
                Ok(Event::Output(bytes)) => {
                    if tx.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Exit(exit)) => {
                    let _ = tx.send(Message::Text(exit.message().into())).await;
                    let _ = tx.close().await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let frame = CloseFrame { code: 4000, reason: "fell behind the output; reconnect for the scrollback".into() };
                    let _ = tx.send(Message::Close(Some(frame))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            message = rx.next() => {
                last_heard = tokio::time::Instant::now();
                match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        activity.touch(KIND);
                        if session.input.send(bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                        Ok(Control::Resize { cols, rows }) => {
                            if let Err(e) = session.master.resize(Size { cols: cols.max(1), rows: rows.max(1) }) {
                                tracing::debug!(session = %session.id, error = %e, "cannot resize a terminal");
                            }
                        }
                        Err(_) => {
                            let message = r#"unknown control message; send {"type":"resize","cols":N,"rows":N}, and input as binary frames"#;
                            let reply = json!({"type": "error", "message": message}).to_string();
                            if tx.send(Message::Text(reply.into())).await.is_err() {
                                return;
                            }
                        }
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > CLIENT_SILENCE {
                    return;
                }
                if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The last `capacity` bytes of a session's output. When old output is dropped, the
/// replay starts at a line start if one is near, and never inside a UTF-8 sequence.
struct Scrollback {
    bytes: VecDeque<u8>,
    capacity: usize,
}

/// How far past the cut a line start is looked for.
const LINE_SEARCH: usize = 4096;

impl Scrollback {
    fn new(capacity: usize) -> Self {
        Self { bytes: VecDeque::new(), capacity }
    }

    fn push(&mut self, data: &[u8]) {
        let sliced = data.len() > self.capacity;
        let data = if sliced { &data[data.len() - self.capacity..] } else { data };
        self.bytes.extend(data);
        let excess = self.bytes.len().saturating_sub(self.capacity);
        if excess == 0 && !sliced {
            return;
        }
        self.bytes.drain(..excess);
        let line = self.bytes.iter().take(LINE_SEARCH).position(|&b| b == b'\n');
        match line {
            Some(i) => drop(self.bytes.drain(..=i)),
            None => {
                let partial = self.bytes.iter().take_while(|&&b| b & 0xC0 == 0x80).count();
                self.bytes.drain(..partial);
            }
        }
    }

    fn contents(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scrollback_keeps_the_tail_from_a_clean_start() {
        // (capacity, pushes, expected contents)
        let cases: &[(usize, &[&str], &str)] = &[
            (16, &["hello"], "hello"),
            (16, &["hello\n", "world\n"], "hello\nworld\n"),
            // Over capacity: the cut lands mid-line, so the replay starts at the next line.
            (12, &["first line\n", "second\n", "third\n"], "third\n"),
            // No line start near: the cut lands inside "é" (2 bytes), which is dropped whole.
            (5, &["aé✓✓"], "✓"),
            (7, &["xé", "✓✓"], "✓✓"),
            // One push larger than the whole buffer.
            (4, &["abcdefgh"], "efgh"),
        ];
        for (capacity, pushes, expected) in cases {
            let mut scrollback = Scrollback::new(*capacity);
            for push in *pushes {
                scrollback.push(push.as_bytes());
            }
            let contents = scrollback.contents();
            assert!(contents.len() <= *capacity, "{capacity} {pushes:?}");
            assert_eq!(String::from_utf8(contents).as_deref(), Ok(*expected), "{capacity} {pushes:?}");
        }
    }

    #[test]
    fn session_ids_are_checked() {
        assert!(valid_session_id("0123abcdef"));
        assert!(!valid_session_id(""));
        assert!(!valid_session_id("../x"));
        assert!(!valid_session_id(&"a".repeat(65)));
    }
}
