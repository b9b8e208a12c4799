//! Hand-off: an AI agent or a CI job makes a workspace with `handoff: {notify, message}`;
//! once the workspace is ready (running with its agent set up — the repository cloned — or
//! settled stopped when made with `start: false`), Cove POSTs
//! `{workspace, owner, state, url, terminal, ssh, message}` to `notify`, and the human opens
//! the URL, which wakes the workspace.
//!
//! Deliveries are signed: `X-Cove-Signature: sha256=<hex HMAC-SHA256 of the body>` under the
//! owner's hand-off key (`GET /api/v1/me/handoff-key`), derived from the instance key, so
//! nothing new is stored and no user can forge another's. A failed delivery (no answer, or
//! not 2xx) is retried with exponential backoff, up to [`MAX_ATTEMPTS`].

use std::time::Duration;

use chrono::Utc;
use cove_core::agent::AgentState;
use cove_core::{ActualState, DesiredState, UserId, Workspace};
use cove_store::{Handoff, NewHandoff};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::error::ApiError;
use crate::AppState;

pub const MAX_ATTEMPTS: u32 = 8;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(300);
const CHECK_EVERY: Duration = Duration::from_millis(500);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_URL_LEN: usize = 2048;
const MAX_MESSAGE_LEN: usize = 4096;
pub const SIGNATURE_HEADER: &str = "x-cove-signature";

/// Checks a create request's hand-off.
pub fn parse(notify: &str, message: Option<&str>) -> Result<NewHandoff, ApiError> {
    let notify = notify.trim();
    let scheme_ok = notify.starts_with("http://") || notify.starts_with("https://");
    if !scheme_ok || notify.len() > MAX_URL_LEN || notify.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::InvalidRequest(format!(
            "handoff.notify must be an http:// or https:// URL of at most {MAX_URL_LEN} characters"
        )));
    }
    if reqwest::Url::parse(notify).map(|u| u.host().is_none()).unwrap_or(true) {
        return Err(ApiError::InvalidRequest(format!("handoff.notify {notify:?} is not a URL with a host")));
    }
    let message = message.unwrap_or_default();
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ApiError::InvalidRequest(format!("handoff.message is longer than {MAX_MESSAGE_LEN} bytes")));
    }
    Ok(NewHandoff { notify_url: notify.to_string(), message: message.to_string() })
}

/// The key a user's hand-off deliveries are signed with, hex.
pub fn key_for(state: &AppState, user: UserId) -> String {
    hex::encode(state.signer.derive(&format!("cove handoff signing key v1|{user}")))
}

/// `sha256=<hex>` of `body` under `key` (hex, as [`key_for`] gives it).
pub fn signature(key_hex: &str, body: &[u8]) -> String {
    let key = hex::decode(key_hex).unwrap_or_default();
    // HMAC takes keys of any length; none can be refused.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether the workspace is where its hand-off should be sent, and how it is.
fn readiness(state: &AppState, ws: &Workspace) -> Option<&'static str> {
    let agent = state.agents.status(ws.id).map(|a| a.state);
    match (ws.desired, ws.actual, agent) {
        (DesiredState::Running, ActualState::Running, Some(AgentState::Ready)) => Some("ready"),
        (DesiredState::Running, ActualState::Running, Some(AgentState::Failed)) => Some("needs attention"),
        (DesiredState::Stopped, ActualState::Stopped, _) => Some("stopped"),
        _ => None,
    }
}

/// Delivers due hand-offs until the runtime shuts down.
pub fn spawn(state: AppState) {
    let http = match reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the hand-off webhook client; hand-offs will not be delivered");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let pending = match state.store.handoff_list_pending().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list pending hand-offs");
                    continue;
                }
            };
            for handoff in pending.into_iter().filter(|h| h.next_attempt_at <= Utc::now()) {
                let Ok(ws) = state.store.workspace_get(handoff.workspace).await else { continue };
                let Some(status) = readiness(&state, &ws) else { continue };
                deliver(&state, &http, &handoff, &ws, status).await;
            }
        }
    });
}

async fn deliver(state: &AppState, http: &reqwest::Client, handoff: &Handoff, ws: &Workspace, status: &str) {
    let body = json!({
        "event": "handoff",
        "workspace": ws.name.as_str(),
        "owner": ws.owner_name.as_str(),
        "state": status,
        "problem": state.agents.status(ws.id).filter(|a| a.state == AgentState::Failed).and_then(|a| a.message),
        "url": state.config.app_url("code", ws.name.as_str(), ws.owner_name.as_str()),
        "terminal": state.config.app_url("term", ws.name.as_str(), ws.owner_name.as_str()),
        "ssh": format!("cove ssh {}", ws.name),
        "message": handoff.message,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let signed = signature(&key_for(state, ws.owner), &bytes);
    let sent = http
        .post(&handoff.notify_url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signed)
        .header("x-cove-event", "handoff")
        .body(bytes)
        .send()
        .await;
    let outcome = match sent {
        Ok(r) if r.status().is_success() => Ok(Utc::now()),
        Ok(r) => Err(format!("the receiver answered {}", r.status())),
        Err(e) if e.is_timeout() => Err(format!("the receiver did not answer within {}s", DELIVERY_TIMEOUT.as_secs())),
        Err(e) if e.is_connect() => Err("cannot connect to the receiver".to_string()),
        Err(e) => Err(format!("the delivery failed: {e}")),
    };
    let record = match outcome {
        Ok(at) => {
            tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "hand-off delivered");
            Ok(at)
        }
        Err(error) => {
            let attempts = handoff.attempts + 1;
            let next = (attempts < MAX_ATTEMPTS).then(|| Utc::now() + backoff(attempts));
            tracing::warn!(workspace = %ws.name, %error, attempts, gave_up = next.is_none(), "hand-off not delivered");
            Err((error, next))
        }
    };
    if let Err(e) = state.store.handoff_record_attempt(handoff.workspace, record).await {
        tracing::warn!(workspace = %ws.name, error = %e, "cannot record a hand-off attempt");
    }
}

/// 1 s, 2 s, 4 s, … up to five minutes.
fn backoff(attempts: u32) -> chrono::Duration {
    let delay = FIRST_RETRY.saturating_mul(1 << attempts.saturating_sub(1).min(16)).min(LAST_RETRY);
    chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::seconds(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<i64> = (1..=11).map(|a| backoff(a).num_seconds()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = hex::encode("Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn notify_urls() {
        assert!(parse("https://hooks.example.com/x", Some("hi")).is_ok());
        assert!(parse("http://127.0.0.1:9/h", None).is_ok());
        for bad in ["ftp://x/y", "hooks.example.com", "https://", "http://a b/", ""] {
            assert!(parse(bad, None).is_err(), "{bad:?}");
        }
        assert!(parse("https://x.example", Some(&"m".repeat(5000))).is_err());
    }
}
