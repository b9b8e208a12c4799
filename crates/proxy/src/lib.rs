//! Cove's HTTP forwarding engine: how a request to a workspace app gets from the user's
//! browser to a port inside the workspace's container.
//!
//! Cove's server has one listener for everything. [`serve`] accepts connections on it (HTTP/1.1
//! or HTTP/2 with prior knowledge), sends requests for app hosts
//! (`<app>--<workspace>--<owner>.<apps-domain>`) through [`Proxy::handle`] and every other
//! request to the dashboard/API router.
//!
//! A proxied request goes through one stage after the other, each a function of its own:
//!
//! 1. **resolve host** — [`parse_host`]: which app of which workspace of which owner;
//! 2. **admit** — [`Gate::admit`]: the server authenticates, wakes the workspace if needed and
//!    names the upstream (a TCP address or a UNIX socket), or answers the request itself ([`Verdict::Respond`]);
//! 3. **rewrite** — hop-by-hop headers out, `X-Forwarded-*` in, Cove's own cookie and
//!    credentials removed (`rewrite`);
//! 4. **forward** — wait for the upstream if it may still be starting, send over an HTTP/1.1
//!    connection (the client connection's own, `affinity`, or a pooled one), stream both
//!    bodies, join WebSocket upgrades (`proxy`, `tunnel`); bodiless GET/HEAD/OPTIONS are
//!    written and read by the proxy itself (`h1`);
//! 5. **account** — activity for idle detection ([`Gate::activity`]) and per-workspace
//!    [`Metrics`], counted while bodies stream and recorded when the response ends.
//!
//! Architecture invariant: this crate knows nothing about users, tokens, the store or
//! containers. Everything that needs them is behind the [`Gate`] the server implements.

#![forbid(unsafe_code)]

mod account;
mod affinity;
mod gate;
mod h1;
mod host;
mod linger;
mod metrics;
mod proxy;
mod rewrite;
mod serve;
mod tunnel;
mod upstream;

pub use gate::{ActivityKind, Admitted, Gate, Verdict, WebSocketActivity, CODE_SERVER_CONTROL_MESSAGE_BYTES};
pub use host::{parse_host, App, AppHost};
pub use linger::linger;
pub use metrics::Metrics;
pub use proxy::{Config, Proxy};
pub use serve::serve;
pub use upstream::Upstream;

/// The name of Cove's own cookie on app hosts (the server's session for the app). The proxy
/// never forwards it upstream: the app must not see — or be able to replay — Cove credentials.
pub const APP_COOKIE: &str = "cove_app";
