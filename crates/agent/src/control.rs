//! The agent's side of the control socket: reports to the control plane (state, activity)
//! and questions to it (Git credentials). One short HTTP/1.1 exchange per call over the
//! unix socket the control plane listens on in the run directory; the control plane knows
//! which workspace is asking by the socket the request came in on.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long one exchange may take; the control plane answers from memory or one query.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the control plane is not reachable on {path}: {source}")]
    Unreachable { path: String, source: std::io::Error },
    #[error("the control plane answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the exchange with the control plane failed: {0}")]
    Protocol(String),
}

#[derive(Clone, Debug)]
pub struct Control {
    socket: PathBuf,
}

impl Control {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ControlError> {
        let body = serde_json::to_vec(body).map_err(|e| ControlError::Protocol(e.to_string()))?;
        self.exchange(Method::POST, path, Bytes::from(body)).await.map(|_| ())
    }

    /// A question with a body and an answer.
    pub async fn ask<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ControlError> {
        let body = serde_json::to_vec(body).map_err(|e| ControlError::Protocol(e.to_string()))?;
        let answer = self.exchange(Method::POST, path, Bytes::from(body)).await?;
        serde_json::from_slice(&answer).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// `None` when the control plane answers 404 (it has nothing for this question).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ControlError> {
        match self.exchange(Method::GET, path, Bytes::new()).await {
            Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| ControlError::Protocol(e.to_string())),
            Err(ControlError::Refused { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn exchange(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, ControlError> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange_once(method, path, body))
            .await
            .map_err(|_| ControlError::Protocol("no answer in time".into()))?
    }

    async fn exchange_once(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, ControlError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ControlError::Unreachable { path: self.socket.display().to_string(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "cove-control")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| ControlError::Protocol(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| ControlError::Protocol(e.to_string()))?.to_bytes();
        if !status.is_success() {
            let message = String::from_utf8_lossy(&body).chars().take(500).collect();
            return Err(ControlError::Refused { status, message });
        }
        Ok(body)
    }
}
