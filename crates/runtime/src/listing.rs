//! Container listing with lenient parsing. bollard's typed list fails as a whole when an
//! engine reports a state name it does not know (Podman 4.3 says `stopped` for a
//! container between its stop and its clean-up), and a reconciler that cannot list sees
//! nothing at all. So the list is fetched raw here and every field is optional.

use std::collections::HashMap;

use bytes::Bytes;
use cove_core::ContainerState;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::{BackendError, Result};

/// One entry of `GET /containers/json`, as much of it as Cove reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    pub id: Option<String>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
}

impl Listed {
    pub fn is_running(&self) -> bool {
        self.state.as_deref() == Some("running")
    }

    pub fn has_name(&self, name: &str) -> bool {
        self.names.iter().flatten().any(|n| n.trim_start_matches('/') == name)
    }
}

/// Maps an engine's state name. `Exited` gets its code from the caller.
pub fn container_state(state: Option<&str>) -> ContainerState {
    match state.unwrap_or("") {
        "created" | "configured" | "initialized" => ContainerState::Created,
        "running" => ContainerState::Running,
        "paused" => ContainerState::Paused,
        "restarting" => ContainerState::Restarting,
        // Still running until the stop finishes; a stop request for it is harmless.
        "stopping" => ContainerState::Running,
        "exited" | "stopped" => ContainerState::Exited { code: -1 },
        "dead" => ContainerState::Dead,
        // Removing, or a name no engine used when this was written: leave it alone for
        // this pass rather than replace a container that may be fine.
        _ => ContainerState::Removing,
    }
}

/// `GET /containers/json?all=1&filters=...` on `endpoint` (`unix://` or `tcp://`).
pub async fn list(endpoint: &str, filters: &HashMap<String, Vec<String>>) -> Result<Vec<Listed>> {
    let filters = serde_json::to_string(filters).map_err(|e| BackendError::Engine(e.to_string()))?;
    let path = format!("/containers/json?all=1&filters={}", cove_core::percent_encode(&filters));
    let unreachable = |message: String| BackendError::Unreachable { endpoint: endpoint.to_string(), message };
    let response = if let Some(socket) = endpoint.strip_prefix("unix://") {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
        client.get(hyperlocal::Uri::new(socket, &path).into()).await
    } else {
        let base = endpoint.replacen("tcp://", "http://", 1);
        let uri = format!("{}{path}", base.trim_end_matches('/'))
            .parse()
            .map_err(|_| BackendError::Engine(format!("{endpoint} is not a usable engine address")))?;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        client.get(uri).await
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err(BackendError::Engine(format!(
            "list containers: the engine answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| BackendError::Engine(format!("list containers: unexpected answer from the engine ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        for (name, expected) in [
            (Some("running"), ContainerState::Running),
            (Some("created"), ContainerState::Created),
            (Some("configured"), ContainerState::Created),
            (Some("stopped"), ContainerState::Exited { code: -1 }),
            (Some("exited"), ContainerState::Exited { code: -1 }),
            (Some("stopping"), ContainerState::Running),
            (Some("dead"), ContainerState::Dead),
            (Some("removing"), ContainerState::Removing),
            (Some("brand-new-state"), ContainerState::Removing),
            (None, ContainerState::Removing),
        ] {
            assert_eq!(container_state(name), expected, "{name:?}");
        }
    }

    #[test]
    fn lenient_entries() {
        let body = r#"[{"Id":"a","Names":["/x"],"State":"stopped","Status":"Exited (0)","Labels":null},{"Id":"b"}]"#;
        let listed: Vec<Listed> = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].has_name("x"));
        assert!(!listed[1].is_running());
    }
}
