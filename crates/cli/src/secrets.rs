//! `cove secrets set|ls|rm|refresh`, `cove sessions ls|revoke`: secrets for workspaces (by
//! scope: instance, user, workspace) and the user's login sessions. A secret's value is read
//! from standard input, a file or a hidden prompt, never from the command line (where `ps`
//! and shell history would show it); listings show names, kinds and times, never values.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cove_core::percent_encode;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::Client;
use crate::output::{age, table};

const MAX_VALUE_BYTES: u64 = 32 * 1024;

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Scope {
    /// Every workspace of every user (admins only).
    Instance,
    /// Every workspace of yours (the default).
    User,
    /// One workspace of yours (with --workspace).
    Workspace,
}

#[derive(clap::Args)]
pub struct Target {
    /// Where the secret is kept; a later scope overrides an earlier one by name.
    #[arg(long, value_enum, default_value = "user")]
    scope: Scope,
    /// The workspace, for --scope workspace.
    #[arg(long, short = 'w')]
    workspace: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum SecretsCommand {
    /// Store a secret (replacing one of that name); the value is read from standard input,
    /// --from-file or a hidden prompt. Workspaces made from now on get it; existing ones
    /// with `cove secrets refresh NAME`.
    Set {
        name: String,
        #[command(flatten)]
        target: Target,
        /// Deliver it as a file in /run/cove/secrets/NAME instead of an environment variable.
        #[arg(long)]
        file: bool,
        /// Read the value from this file (exactly; otherwise one trailing newline is dropped
        /// from an environment variable's value).
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
    },
    /// List a scope's secrets (names, kinds and times; never values). With --scope workspace
    /// also the set the workspace was given (frozen).
    Ls {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Forget a secret.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Give a workspace the current values of its secrets (it keeps the set it was made
    /// with until then); they reach it at its next start.
    Refresh { workspace: String },
}

#[derive(Deserialize, Serialize)]
struct SecretView {
    name: String,
    kind: String,
    scope: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize, Serialize)]
struct FrozenView {
    name: String,
    kind: String,
    scope: String,
    frozen_at: DateTime<Utc>,
}

fn path_of(target: &Target, name: Option<&str>) -> anyhow::Result<String> {
    let base = match (target.scope, &target.workspace) {
        (Scope::Workspace, Some(ws)) => format!("/api/v1/workspaces/{}/secrets", percent_encode(ws)),
        (Scope::Workspace, None) => bail!("--scope workspace needs --workspace NAME"),
        (_, Some(_)) => bail!("--workspace goes with --scope workspace"),
        (Scope::Instance, None) => "/api/v1/secrets".into(),
        (Scope::User, None) => "/api/v1/secrets".into(),
    };
    let query = match target.scope {
        Scope::Instance => "?scope=instance",
        Scope::User => "?scope=user",
        Scope::Workspace => "",
    };
    Ok(match name {
        Some(name) => format!("{base}/{}{query}", percent_encode(name)),
        None => format!("{base}{query}"),
    })
}

fn read_value(name: &str, file: bool, from_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let raw = if let Some(path) = from_file {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.len() > MAX_VALUE_BYTES {
            bail!("{} is larger than {MAX_VALUE_BYTES} bytes", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("value of {name}: ")).context("cannot read the value")?
    } else {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_VALUE_BYTES + 1)
            .read_to_string(&mut text)
            .context("cannot read the value from stdin")?;
        text
    };
    let value = if file || from_file.is_some() {
        raw
    } else {
        raw.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&raw).to_string()
    };
    if value.is_empty() {
        bail!("no value given: pipe it in (`cove secrets set {name} < file`) or type it at the prompt");
    }
    Ok(value)
}

pub async fn run(client: &Client, command: SecretsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretsCommand::Set { name, target, file, from_file } => {
            let path = path_of(&target, Some(&name))?;
            let value = read_value(&name, file, from_file.as_deref())?;
            let kind = if file { "file" } else { "env" };
            let stored: SecretView =
                client.json(Method::PUT, &path, Some(&json!({ "value": value, "kind": kind }))).await?;
            eprintln!("stored {} secret {} ({})", stored.scope, stored.name, stored.kind);
            match &target.workspace {
                Some(ws) => eprintln!("workspace {ws} gets it after `cove secrets refresh {ws}` and a restart"),
                None => {
                    eprintln!("workspaces made from now on get it; existing ones after `cove secrets refresh NAME`")
                }
            }
        }
        SecretsCommand::Ls { target, json } => {
            let path = path_of(&target, None)?;
            let now = Utc::now();
            if target.scope == Scope::Workspace {
                let answer: Value = client.get(&path).await?;
                let own: Vec<SecretView> = serde_json::from_value(answer["secrets"].clone())?;
                let frozen: Vec<FrozenView> = serde_json::from_value(answer["frozen"].clone())?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&json!({ "secrets": own, "frozen": frozen }))?);
                    return Ok(ExitCode::SUCCESS);
                }
                print_secrets(&own, now);
                let rows: Vec<Vec<String>> = frozen
                    .iter()
                    .map(|s| vec![s.name.clone(), s.kind.clone(), s.scope.clone(), age(s.frozen_at, now)])
                    .collect();
                println!("\nthe workspace's set (frozen):");
                println!("{}", table(&["NAME", "KIND", "FROM", "FROZEN"], &rows));
            } else {
                let list: Vec<SecretView> = client.get(&path).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_secrets(&list, now);
                }
            }
        }
        SecretsCommand::Rm { name, target } => {
            let path = path_of(&target, Some(&name))?;
            client.send(client.request(Method::DELETE, &path)).await?;
            eprintln!("secret {name} removed; workspaces keep their frozen copy until `cove secrets refresh`");
        }
        SecretsCommand::Refresh { workspace } => {
            let path = format!("/api/v1/workspaces/{}/secrets/refresh", percent_encode(&workspace));
            let answer: Value = client.json(Method::POST, &path, None::<&()>).await?;
            let count = answer["frozen"].as_array().map_or(0, Vec::len);
            eprintln!("workspace {workspace} now has {count} secret(s) at their current values; restart it to apply (`cove restart {workspace}`)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_secrets(list: &[SecretView], now: DateTime<Utc>) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| vec![s.name.clone(), s.kind.clone(), s.scope.clone(), age(s.created_at, now), age(s.updated_at, now)])
        .collect();
    println!("{}", table(&["NAME", "KIND", "SCOPE", "CREATED", "UPDATED"], &rows));
}

#[derive(clap::Subcommand)]
pub enum SessionsCommand {
    /// Your login sessions (the CLI's and the dashboard's): when, from where, with what.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// End a session at once.
    Revoke { id: String },
}

#[derive(Deserialize, Serialize)]
struct SessionView {
    id: String,
    name: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    address: Option<String>,
    user_agent: Option<String>,
    current: bool,
}

pub async fn sessions(client: &Client, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SessionsCommand::Ls { json } => {
            let list: Vec<SessionView> = client.get("/api/v1/sessions").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        if s.current { format!("{} (this)", s.id) } else { s.id.clone() },
                        s.name.clone(),
                        age(s.created_at, now),
                        s.last_used_at.map_or("never".into(), |t| age(t, now)),
                        s.address.clone().unwrap_or_else(|| "-".into()),
                        s.user_agent.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            println!("{}", table(&["ID", "NAME", "CREATED", "LAST USED", "ADDRESS", "USER AGENT"], &rows));
        }
        SessionsCommand::Revoke { id } => {
            client.send(client.request(Method::DELETE, &format!("/api/v1/sessions/{}", percent_encode(&id)))).await?;
            eprintln!("session {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cove share NAME --with USER` / `--remove USER` / `--users`: sharing the workspace itself.
pub async fn share_with(client: &Client, name: &str, with: &[String], remove: &[String]) -> anyhow::Result<ExitCode> {
    let base = format!("/api/v1/workspaces/{}/shares", percent_encode(name));
    let mut users: Vec<Value> = Vec::new();
    for user in with {
        users = client.json(Method::PUT, &format!("{base}/{}", percent_encode(user)), None::<&()>).await?;
        eprintln!("shared {name} with {user}: they can open its apps and terminal");
    }
    for user in remove {
        users = client.json(Method::DELETE, &format!("{base}/{}", percent_encode(user)), None::<&()>).await?;
        eprintln!("{name} is no longer shared with {user}");
    }
    if with.is_empty() && remove.is_empty() {
        users = client.get(&base).await?;
    }
    let names: Vec<&str> = users.iter().filter_map(|u| u["user"].as_str()).collect();
    if names.is_empty() {
        eprintln!("{name} is shared with nobody");
    } else {
        println!("{}", names.join("\n"));
    }
    Ok(ExitCode::SUCCESS)
}
