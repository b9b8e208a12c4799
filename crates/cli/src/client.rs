//! A small client for the Cove API: JSON in, JSON out, API errors turned into one line.

use anyhow::{anyhow, Context};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Client {
    pub url: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An error the API answered with.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl Client {
    pub fn new(url: String, token: Option<String>) -> anyhow::Result<Self> {
        // The user agent is what `cove sessions ls` shows for a CLI login.
        let agent = format!("cove-cli/{} ({})", env!("CARGO_PKG_VERSION"), std::env::consts::OS);
        let http = reqwest::Client::builder().user_agent(agent).build().context("cannot set up the HTTP client")?;
        Ok(Self { url, token, http })
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|e| {
            let reason = if e.is_connect() { "connection refused or no route" } else { "request failed" };
            anyhow!("cannot reach the Cove server at {} ({reason}); is `cove server` running?", self.url)
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let error = &body["error"];
        Err(ApiError {
            status,
            message: error["message"].as_str().map_or_else(|| format!("the server answered {status}"), str::to_string),
        }
        .into())
    }

    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        let response = self.send(r).await?;
        response
            .json()
            .await
            .context("the server's answer is not what this CLI expects; is `cove server` the same version as `cove`?")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(Method::GET, path, None::<&()>).await
    }
}

/// Whether an error is the API saying "not found".
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>().is_some_and(|a| a.status == StatusCode::NOT_FOUND)
}
