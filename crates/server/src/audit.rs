//! The audit log: one entry for every state-changing API request (any method but GET and
//! HEAD), written by a layer around the routes so that a new route cannot forget it.
//!
//! It records the route, the concrete path, the status and the client's address; the
//! `Caller` extractor (or the login handler) fills in who. It never reads a body, so
//! passwords, tokens, Git tokens and exec environments cannot end up in it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use cove_core::UserId;
use cove_store::AuditEntry;

use crate::AppState;

/// Who made a request: a user, or only the name tried (a failed login).
type Actor = (Option<UserId>, String);

/// Where the request's handler says who the caller was.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Option<Actor>>>);

impl AuditSlot {
    pub fn set(&self, id: Option<UserId>, name: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, name.to_string()));
    }

    fn take(&self) -> Option<Actor> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map_or("?", |p| p.as_str()).to_string();
    let target = request.uri().path().to_string();
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
    let slot = AuditSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let status = response.status();
    let outcome = match crate::error::code_for(status) {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => status.as_u16().to_string(),
    };
    let actor = slot.take();
    let entry = AuditEntry {
        id: 0,
        at: Utc::now(),
        actor_id: actor.as_ref().and_then(|(id, _)| *id),
        actor_name: actor.map(|(_, name)| name),
        action: format!("{method} {route}"),
        target,
        outcome,
        peer,
    };
    if let Err(e) = state.store.audit_record(entry.clone()).await {
        // The action happened; losing its record must not fail it, but must be seen.
        tracing::error!(error = %e, action = %entry.action, target = %entry.target, "cannot write the audit log");
    }
    response
}
