//! `cove git-token set|ls|rm`: the user's Git tokens, which workspaces' git gets through the
//! agent's credential helper. The token is read from standard input or a hidden prompt,
//! never from the command line (where `ps` and shell history would show it).

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use cove_core::percent_encode;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::Client;
use crate::output::{age, table};

#[derive(clap::Subcommand)]
pub enum GitTokenCommand {
    /// Store a token for HOST (as git names it: github.com, or 127.0.0.1:8080 with a port);
    /// the token is read from standard input or a hidden prompt.
    Set {
        host: String,
        /// The user name git sends with it (default x-access-token, which GitHub and
        /// GitLab accept with a token).
        #[arg(long)]
        username: Option<String>,
    },
    /// List the hosts you have tokens for (never the tokens).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Forget the token for HOST.
    Rm { host: String },
}

#[derive(Deserialize, serde::Serialize)]
struct GitTokenView {
    host: String,
    username: String,
    created_at: DateTime<Utc>,
}

pub async fn run(client: &Client, command: GitTokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        GitTokenCommand::Set { host, username } => {
            let token = if std::io::stdin().is_terminal() {
                rpassword::prompt_password(format!("token for {host}: ")).context("cannot read the token")?
            } else {
                let mut text = String::new();
                std::io::stdin()
                    .take(64 * 1024)
                    .read_to_string(&mut text)
                    .context("cannot read the token from stdin")?;
                text
            };
            let token = token.trim();
            if token.is_empty() {
                anyhow::bail!(
                    "no token given: pipe it in (`cove git-token set {host} < token-file`) or type it at the prompt"
                );
            }
            let path = format!("/api/v1/git-tokens/{}", percent_encode(&host));
            let stored: GitTokenView =
                client.json(Method::PUT, &path, Some(&json!({ "token": token, "username": username }))).await?;
            eprintln!("stored a Git token for {} (user {})", stored.host, stored.username);
        }
        GitTokenCommand::Ls { json } => {
            let list: Vec<GitTokenView> = client.get("/api/v1/git-tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let now = Utc::now();
                let rows: Vec<Vec<String>> =
                    list.iter().map(|t| vec![t.host.clone(), t.username.clone(), age(t.created_at, now)]).collect();
                println!("{}", table(&["HOST", "USERNAME", "AGE"], &rows));
            }
        }
        GitTokenCommand::Rm { host } => {
            client
                .send(client.request(Method::DELETE, &format!("/api/v1/git-tokens/{}", percent_encode(&host))))
                .await?;
            eprintln!("forgot the Git token for {host}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
