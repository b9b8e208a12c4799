//! Stage 2, admit: the seam between the proxy's mechanics and the server's decisions.
//!
//! Who may reach an app, whether a stopped workspace must be woken first and where its
//! container listens all need the store and the runtime, which this crate does not know.
//! The server implements [`Gate`]; the proxy asks it once per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use cove_core::WorkspaceId;

use crate::host::AppHost;
use crate::upstream::Upstream;

/// Where to send an admitted request, and how.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub workspace: WorkspaceId,
    /// `owner/workspace`: the `workspace` label of the metrics, and the name in error pages.
    pub label: Arc<str>,
    /// Where the app listens: its address inside the container network, or a UNIX socket.
    pub upstream: Upstream,
    /// Headers set on the upstream request after the rewrite (hop-by-hop headers and Cove's
    /// credentials removed): each replaces every header of that name the client sent, so a
    /// client cannot forge them (say, the secret the in-workspace agent requires).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The request authenticated with a Cove bearer token: remove `Authorization` before
    /// forwarding, so the app never sees the token.
    pub strip_authorization: bool,
    /// How long the upstream may take to start accepting connections (say, after a wake-up):
    /// the proxy retries a refused connection until this has passed. Zero means "connect once".
    /// A non-zero patience costs a probe connection per request: give it only while the
    /// workspace may still be starting.
    pub connect_patience: Duration,
    /// Which WebSocket traffic from the client is user activity.
    pub websocket_activity: WebSocketActivity,
}

/// Which data a client sends over a WebSocket counts as user activity (for the idle stop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WebSocketActivity {
    /// Any byte from the client: an app's traffic is its user's doing. The default.
    #[default]
    AnyData,
    /// Only data frames (text, binary, continuation) with more than this many bytes of
    /// payload; control frames (ping, pong, close) never. For apps whose open but idle
    /// clients send small keep-alive frames on a timer, which must not keep a workspace
    /// awake forever: see [`WebSocketActivity::code_server`].
    FramesLargerThan(u64),
}

impl WebSocketActivity {
    /// The rule for VS Code (code-server): an open tab, untouched, sends only
    /// `PersistentProtocol` control messages (keep-alive every few seconds, acks), which are
    /// a 13-byte header without a body, as one frame each (smaller still under
    /// permessage-deflate). Anything the user does (a keystroke in an editor or the
    /// terminal, opening or saving a file) sends an RPC message: a header and a body.
    pub const fn code_server() -> Self {
        WebSocketActivity::FramesLargerThan(CODE_SERVER_CONTROL_MESSAGE_BYTES)
    }
}

/// The size of VS Code's protocol header; frames no larger carry no user action.
pub const CODE_SERVER_CONTROL_MESSAGE_BYTES: u64 = 13;

/// The gate's answer about one request.
pub enum Verdict {
    /// Send the request upstream.
    Forward(Admitted),
    /// Answer it with this response, passed to the client unchanged (a login redirect,
    /// 403, 404, a "workspace is starting" page, ...).
    Respond(Response),
}

/// What kind of user activity [`Gate::activity`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivityKind {
    Http,
    WebSocket,
}

/// The server's side of the proxy.
#[async_trait::async_trait]
pub trait Gate: Send + Sync + 'static {
    /// Decides about one request to an app host. It may take long: it can wake a workspace
    /// and wait for its container. The request body has not been read yet.
    async fn admit(&self, request: &http::request::Parts, host: &AppHost, peer: SocketAddr) -> Verdict;

    /// Nothing accepted a connection at [`Admitted::upstream`] within the patience: the gate
    /// should forget a cached address. (Not called when the app answered badly: it was there.)
    fn upstream_failed(&self, workspace: WorkspaceId);

    /// Something the user did, for idle detection: an admitted HTTP request, or data the
    /// client sent over a WebSocket (at most once per second per connection).
    ///
    /// Requests whose `User-Agent` starts with `kube-probe/`, `Prometheus/` or `cove-probe`
    /// are health checks and scrapes that poll on a timer; they are not activity, or they would
    /// keep a workspace awake forever.
    ///
    /// Called on the request path and from WebSocket copy loops: keep it cheap and never block.
    fn activity(&self, workspace: WorkspaceId, kind: ActivityKind);
}
