//! The CLI's commands. Each parses its flags, calls the API, and prints for people
//! (or JSON with `--json`).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use chrono::Utc;
use cove_core::{format_duration, format_size, DesiredState};
use cove_server::views::{ExecFrame, TokenView, UserView, WorkspaceView};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::config;
use crate::output::{age, table};
use crate::wait::{self, Goal};
use cove_core::percent_encode;

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The server's URL, e.g. http://127.0.0.1:7080.
    url: Option<String>,
    #[arg(long, default_value = "admin")]
    username: String,
    /// Read the password from this file (first line).
    #[arg(long, conflicts_with = "password_stdin")]
    password_file: Option<PathBuf>,
    /// Read the password from standard input (first line).
    #[arg(long)]
    password_stdin: bool,
}

pub async fn login(url_flag: Option<String>, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let url = args
        .url
        .or(url_flag)
        .or(config::load()?.url)
        .unwrap_or_else(|| format!("http://{}", cove_server::DEFAULT_LISTEN));
    let url = url.trim_end_matches('/').to_string();
    let password = if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the password file {}", path.display()))?;
        first_line(&text)
    } else if args.password_stdin || !std::io::stdin().is_terminal() {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the password from standard input")?;
        first_line(&text)
    } else {
        rpassword::prompt_password(format!("password for {}: ", args.username)).context("cannot read the password")?
    };
    let client = Client::new(url.clone(), None)?;
    let host = hostname();
    let answer: Value = client
        .json(
            Method::POST,
            "/api/v1/auth/login",
            Some(&json!({ "username": args.username, "password": password, "token_name": format!("cli@{host}") })),
        )
        .await?;
    let token = answer["token"].as_str().context("the server's answer has no token")?;
    let path = config::save(&config::Saved { url: Some(url.clone()), token: Some(token.to_string()) })?;
    eprintln!("logged in to {url} as {}; token saved in {}", args.username, path.display());
    Ok(ExitCode::SUCCESS)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

#[derive(clap::Args)]
pub struct CreateArgs {
    name: String,
    /// Image to run (default: the server's default, cove/base:latest).
    #[arg(long)]
    image: Option<String>,
    #[command(flatten)]
    settings: Settings,
    /// Create it stopped.
    #[arg(long)]
    stopped: bool,
    /// Fill ~/project from a local folder (uploaded as a tar stream, `.git` kept) before
    /// the first start.
    #[arg(long, value_name = "DIR", conflicts_with = "repo")]
    from_dir: Option<std::path::PathBuf>,
    /// Clone this Git repository into ~/project at the first start (private ones through
    /// your stored Git token); waits until the code is there.
    #[arg(long, value_name = "URL")]
    repo: Option<String>,
    /// The branch to check out (default: the repository's).
    #[arg(long, requires = "repo")]
    branch: Option<String>,
    /// Hand-off: a webhook Cove POSTs {workspace, url, ssh, message} to once the workspace
    /// is ready (signed: see `GET /api/v1/me/handoff-key`).
    #[arg(long, value_name = "URL")]
    notify: Option<String>,
    /// The hand-off's message for the human.
    #[arg(long, requires = "notify")]
    message: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
    #[arg(long)]
    json: bool,
}

/// What `create` and `set` both take.
#[derive(clap::Args)]
pub struct Settings {
    /// CPUs, e.g. 2 or 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory, e.g. 2g or 512m.
    #[arg(long)]
    memory: Option<String>,
    /// Size of the persistent volume, where the engine can enforce one, e.g. 20g.
    #[arg(long)]
    disk: Option<String>,
    /// Time without activity before it is stopped: 90s, 30m, 2h; 0 for never.
    #[arg(long, value_parser = cove_core::parse_duration)]
    idle_timeout: Option<u32>,
}

impl Settings {
    /// Adds the given settings to an API request body.
    fn apply(self, body: &mut Value) {
        let fields = [
            ("cpus", self.cpus.map(|v| json!(v))),
            ("memory", self.memory.map(|v| json!(v))),
            ("disk", self.disk.map(|v| json!(v))),
            ("idle_timeout_seconds", self.idle_timeout.map(|v| json!(v))),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                body[key] = v;
            }
        }
    }

    fn changes_resources(&self) -> bool {
        self.cpus.is_some() || self.memory.is_some() || self.disk.is_some()
    }
}

#[derive(clap::Args)]
pub struct WaitArgs {
    /// Return at once instead of waiting for the change.
    #[arg(long)]
    no_wait: bool,
    /// Seconds to wait before giving up (the change still goes on).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

impl WaitArgs {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

pub async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.from_dir {
        crate::push::check_dir(dir, "project")?;
        // What the server would refuse after the upload is refused before anything is made;
        // the rest (its policy) the server says once the files are there.
        use cove_devcontainer::Error as E;
        if let Err(e @ (E::ComposeUnsupported { .. } | E::Syntax { .. })) =
            cove_devcontainer::read_configuration(dir, None, &std::env::vars().collect())
        {
            bail!("workspace {} was not created: step 'read devcontainer.json' failed: {e}", args.name)
        }
    }
    // With a folder to fill it from, the workspace is made stopped, filled, then started.
    let start = !args.stopped && args.from_dir.is_none();
    let mut body = json!({ "name": args.name, "start": start });
    if let Some(v) = args.image {
        body["image"] = json!(v);
    }
    if let Some(repo) = &args.repo {
        body["repo"] = json!(repo);
    }
    if let Some(branch) = &args.branch {
        body["branch"] = json!(branch);
    }
    if let Some(notify) = &args.notify {
        body["handoff"] = json!({ "notify": notify, "message": args.message });
    }
    args.settings.apply(&mut body);
    let mut ws: WorkspaceView = client.json(Method::POST, "/api/v1/workspaces", Some(&body)).await?;
    if let Some(dir) = &args.from_dir {
        let path = format!("/api/v1/workspaces/{}", percent_encode(&ws.name));
        match crate::push::upload(client, &ws.name, dir, "project").await {
            Ok(pushed) => {
                eprintln!("{}: uploaded {} files ({}) into ~/project", ws.name, pushed.files, format_size(pushed.bytes))
            }
            Err(e) => {
                // No half-made workspace: the one made for this folder goes again.
                let _ = client.send(client.request(Method::DELETE, &path)).await;
                return Err(e.context(format!(
                    "workspace {} was not created: step 'upload {}' failed",
                    ws.name,
                    dir.display()
                )));
            }
        }
        if !args.stopped {
            let patch = json!({ "desired_state": DesiredState::Running });
            ws = client.json(Method::PATCH, &path, Some(&patch)).await?;
        }
    }
    if !args.wait.no_wait {
        let goal = match (args.stopped, args.repo.is_some() || args.from_dir.is_some()) {
            (true, _) => Goal::Stopped,
            // With code (a repository, a folder), "ready" means the code is there and its
            // devcontainer.json hooks up to `waitFor` ran: the agent says so.
            (false, true) => Goal::Ready,
            (false, false) => Goal::Running,
        };
        if let Some(done) = wait::until(client, &ws.name, goal, ws.actual_generation, args.wait.timeout()).await? {
            ws = done;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ws)?);
    } else if args.wait.no_wait {
        eprintln!("{}: {} (follow it with `cove show {}`)", ws.name, ws.actual_state, ws.name);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct LsArgs {
    /// Every user's workspaces (admins only).
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

pub async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<ExitCode> {
    let path = if args.all { "/api/v1/workspaces?all=true" } else { "/api/v1/workspaces" };
    let list: Vec<WorkspaceView> = client.get(path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        eprintln!("no workspaces yet; create one with `cove create NAME`");
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let mut header = vec!["NAME", "STATE", "IMAGE", "CPU/MEM", "AGE"];
    // Workspaces shared with the caller show whose they are (`cove show OWNER/NAME`).
    let with_owner = args.all || {
        let me: Value = client.get("/api/v1/me").await?;
        list.iter().any(|w| Some(w.owner.as_str()) != me["name"].as_str())
    };
    if with_owner {
        header.insert(1, "OWNER");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            let mut state = state_text(w);
            if w.rebuild_needed {
                state.push_str(" (rebuild needed)");
            }
            let mut row = vec![
                w.name.clone(),
                state,
                w.image.clone(),
                format!("{}/{}", w.cpus, format_size(w.memory_bytes)),
                age(w.created_at, now),
            ];
            if with_owner {
                row.insert(1, w.owner.clone());
            }
            row
        })
        .collect();
    println!("{}", table(&header, &rows));
    Ok(ExitCode::SUCCESS)
}

/// "Running", or "Stopping -> Stopped" while the two differ.
fn state_text(w: &WorkspaceView) -> String {
    let desired = match w.desired_state {
        DesiredState::Running | DesiredState::RestartRequested => "Running",
        DesiredState::Stopped => "Stopped",
        DesiredState::Terminated => "Terminated",
    };
    if w.actual_state.as_str() == desired {
        desired.to_string()
    } else {
        format!("{} -> {desired}", w.actual_state)
    }
}

#[derive(clap::Args)]
pub struct ShowArgs {
    name: String,
    #[arg(long)]
    json: bool,
}

pub async fn show(client: &Client, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let w: WorkspaceView = client.get(&format!("/api/v1/workspaces/{}", percent_encode(&args.name))).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&w)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let idle = match w.idle_timeout_seconds {
        0 => "never".to_string(),
        s => format!("after {} without activity", format_duration(u64::from(s))),
    };
    let mut lines = vec![
        ("name", w.name.clone()),
        ("id", w.id.clone()),
        ("owner", w.owner.clone()),
        ("state", format!("{} (desired {})", w.actual_state, w.desired_state)),
    ];
    if let Some(m) = &w.message {
        lines.push(("message", m.clone()));
    }
    if w.rebuild_needed {
        lines.push(("rebuild", format!("needed: devcontainer.json changed; run `cove rebuild {}`", w.name)));
    }
    if let Some(b) = w.devcontainer.as_ref().and_then(|d| d.build.as_ref()) {
        lines.push((
            "devcontainer",
            format!("{}{}", b.state, b.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()),
        ));
    }
    lines.extend([
        ("image", w.image.clone()),
        ("cpus", w.cpus.to_string()),
        ("memory", format_size(w.memory_bytes)),
        ("disk", w.disk_bytes.map_or_else(|| "-".into(), format_size)),
        ("idle stop", idle),
        ("awake", w.awake(now)),
        ("agent", w.agent_line(now)),
        ("sessions", w.sessions_line()),
        ("apps", w.app_url.replace("{app}", "PORT")),
        ("editor", w.app_url.replace("{app}", "code")),
        ("terminal", w.app_url.replace("{app}", "term")),
        ("created", format!("{} ({} ago)", w.created_at.format("%Y-%m-%d %H:%M:%S UTC"), age(w.created_at, now))),
        ("updated", format!("{} ago", age(w.updated_at, now))),
    ]);
    for (k, v) in lines {
        println!("{:<10} {v}", format!("{k}:"));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StateArgs {
    name: String,
    #[command(flatten)]
    wait: WaitArgs,
}

async fn set_desired(client: &Client, args: &StateArgs, desired: DesiredState) -> anyhow::Result<WorkspaceView> {
    client
        .json(
            Method::PATCH,
            &format!("/api/v1/workspaces/{}", percent_encode(&args.name)),
            Some(&json!({ "desired_state": desired })),
        )
        .await
}

async fn change(client: &Client, args: StateArgs, desired: DesiredState, goal: Goal) -> anyhow::Result<ExitCode> {
    let ws = set_desired(client, &args, desired).await?;
    if !args.wait.no_wait {
        wait::until(client, &args.name, goal, ws.actual_generation, args.wait.timeout()).await?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn start(client: &Client, args: StateArgs) -> anyhow::Result<ExitCode> {
    change(client, args, DesiredState::Running, Goal::Running).await
}

pub async fn stop(client: &Client, args: StateArgs) -> anyhow::Result<ExitCode> {
    change(client, args, DesiredState::Stopped, Goal::Stopped).await
}

pub async fn restart(client: &Client, args: StateArgs) -> anyhow::Result<ExitCode> {
    change(client, args, DesiredState::RestartRequested, Goal::Running).await
}

/// `cove rebuild`: the server reads devcontainer.json from the volume again and applies it;
/// its progress (the build's output) is printed as it comes, then the replaced container
/// is waited for.
pub async fn rebuild(client: &Client, args: StateArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/workspaces/{}", percent_encode(&args.name));
    let before: WorkspaceView = client.json(Method::POST, &format!("{path}/rebuild"), None::<&()>).await?;
    if args.wait.no_wait {
        eprintln!("{}: rebuilding (follow it with `cove show {}`)", args.name, args.name);
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = std::time::Instant::now() + args.wait.timeout();
    let mut printed = 0;
    let mut last_message = None;
    let build = loop {
        let ws: WorkspaceView = client.get(&path).await?;
        let build = ws.devcontainer.and_then(|d| d.build);
        if let Some(b) = &build {
            for line in b.log.iter().skip(printed.min(b.log.len())) {
                eprintln!("  {line}");
            }
            printed = printed.max(b.log.len());
            if b.message != last_message && b.log.is_empty() {
                if let Some(m) = &b.message {
                    eprintln!("{}: {m}", args.name);
                }
            }
            last_message = b.message.clone();
            if !matches!(b.state.as_str(), "checking" | "building") {
                break b.clone();
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{}: the rebuild did not finish in time; follow it with `cove show {}`",
                args.name,
                args.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let message = build.message.clone().unwrap_or_default();
    match build.state.as_str() {
        "failed" => anyhow::bail!("{message}"),
        "none" => anyhow::bail!("{}: {message}; nothing to rebuild", args.name),
        _ => eprintln!("{}: {message}", args.name),
    }
    for note in &build.notes {
        eprintln!("{}: note: {note}", args.name);
    }
    if build.state == "applied" && before.desired_state != DesiredState::Stopped {
        // The old container's agent may still say ready: wait for a report from after the apply.
        let applied_at = Utc::now();
        eprintln!("{}: replacing the container (the volume stays)", args.name);
        loop {
            let ws: WorkspaceView = client.get(&path).await?;
            if let Some(agent) = ws.agent.as_ref().filter(|a| a.reported_at > applied_at) {
                match agent.state {
                    cove_core::agent::AgentState::Ready if ws.actual_state == cove_core::ActualState::Running => {
                        eprintln!("{}: {}", ws.name, ws.actual_state);
                        break;
                    }
                    cove_core::agent::AgentState::Failed => bail!(
                        "workspace {} runs, but setting it up failed: {} (it stays usable: `cove ssh {}`)",
                        ws.name,
                        agent.message.as_deref().unwrap_or("no details"),
                        ws.name
                    ),
                    _ => {}
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{}: the new container is not ready in time; follow it with `cove show {}`",
                    args.name,
                    args.name
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rm(client: &Client, args: StateArgs) -> anyhow::Result<ExitCode> {
    let ws: WorkspaceView =
        client.json(Method::DELETE, &format!("/api/v1/workspaces/{}", percent_encode(&args.name)), None::<&()>).await?;
    if !args.wait.no_wait {
        wait::until(client, &args.name, Goal::Gone, ws.actual_generation, args.wait.timeout()).await?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct SetArgs {
    name: String,
    #[command(flatten)]
    settings: Settings,
}

pub async fn set(client: &Client, args: SetArgs) -> anyhow::Result<ExitCode> {
    let restarts = args.settings.changes_resources();
    let mut body = json!({});
    args.settings.apply(&mut body);
    let ws: WorkspaceView =
        client.json(Method::PATCH, &format!("/api/v1/workspaces/{}", percent_encode(&args.name)), Some(&body)).await?;
    if restarts {
        eprintln!("{}: updated; if it runs, it restarts with the new resources", ws.name);
    } else {
        eprintln!("{}: updated", ws.name);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ExecArgs {
    name: String,
    /// `KEY=value` to add to the command's environment.
    #[arg(long, short)]
    env: Vec<String>,
    /// Directory to run in (default: the workspace home).
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

pub async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let body = json!({ "cmd": args.cmd, "env": args.env, "workdir": args.workdir });
    let response = client
        .send(
            client
                .request(Method::POST, &format!("/api/v1/workspaces/{}/exec", percent_encode(&args.name)))
                .json(&body),
        )
        .await?;
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = vec![];
    let b64 = base64::engine::general_purpose::STANDARD;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk.context("the exec stream broke off")?);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let frame: ExecFrame = serde_json::from_slice(&line).context("the server sent a malformed exec frame")?;
            match frame {
                ExecFrame::Stdout(data) => {
                    out.write_all(&b64.decode(data)?)?;
                    out.flush()?;
                }
                ExecFrame::Stderr(data) => {
                    err.write_all(&b64.decode(data)?)?;
                    err.flush()?;
                }
                ExecFrame::Exit(code) => return Ok(ExitCode::from(u8::try_from(code.rem_euclid(256)).unwrap_or(1))),
                ExecFrame::Error(message) => bail!("exec in workspace {} failed: {message}", args.name),
            }
        }
    }
    bail!("the exec stream ended without an exit code")
}

#[derive(clap::Args)]
pub struct LogsArgs {
    name: String,
    /// Keep printing new output.
    #[arg(long, short)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<u64>,
}

pub async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/workspaces/{}/logs?follow={}", percent_encode(&args.name), args.follow);
    if let Some(n) = args.tail {
        path.push_str(&format!("&tail={n}"));
    }
    let response = client.send(client.request(Method::GET, &path)).await?;
    let mut stream = response.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.context("the log stream broke off")?)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Build Cove's default workspace image (Debian, offline from the package mirror),
    /// or with --tiny a busybox image for tests.
    Bootstrap {
        #[arg(long)]
        tiny: bool,
        /// The engine's API endpoint (default: detected).
        #[arg(long, env = "DOCKER_HOST")]
        engine: Option<String>,
    },
}

pub async fn image(command: ImageCommand) -> anyhow::Result<ExitCode> {
    let ImageCommand::Bootstrap { tiny, engine } = command;
    let engine = cove_runtime::engine::connect(&cove_runtime::engine::EngineConfig {
        endpoint: engine,
        state_dir: config::data_dir()?,
    })
    .await?;
    if let Some(note) = &engine.note {
        eprintln!("{note}");
    }
    let docker = engine.client()?;
    let progress = |line: &str| eprintln!("  {line}");
    let tag = if tiny {
        cove_runtime::images::ensure_tiny_image(&docker, progress).await?
    } else {
        eprintln!("Debian base image: built with debootstrap the first time (about a minute), then cached");
        cove_runtime::images::bootstrap_base_image(&docker, progress).await?
    };
    println!("{tag}");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// read: only look; write (default): also change your workspaces, apps and tokens;
        /// admin: everything (admins only).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        scope: Option<String>,
    },
    Ls {
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
    },
}

pub async fn tokens(client: &Client, command: TokensCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokensCommand::Create { name, expires_in_days, scope } => {
            let answer: Value = client
                .json(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(&json!({ "name": name, "expires_in_days": expires_in_days, "scope": scope })),
                )
                .await?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!("keep this token now; Cove stores only its hash");
        }
        TokensCommand::Ls { json } => {
            let list: Vec<TokenView> = client.get("/api/v1/tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let now = Utc::now();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.scope.to_string(),
                            age(t.created_at, now),
                            t.expires_at.map_or("never".into(), |e| {
                                let day = e.format("%Y-%m-%d").to_string();
                                if e <= now {
                                    format!("{day} (expired)")
                                } else {
                                    day
                                }
                            }),
                        ]
                    })
                    .collect();
                println!("{}", table(&["ID", "NAME", "SCOPE", "AGE", "EXPIRES"], &rows));
            }
        }
        TokensCommand::Revoke { id } => {
            client.send(client.request(Method::DELETE, &format!("/api/v1/tokens/{}", percent_encode(&id)))).await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Show the quotas, or change the ones given (`none` removes a limit).
    Quotas(QuotasArgs),
    /// Re-encrypt every stored secret under a new instance key (replaces <data-dir>/secret.key).
    RotateKey,
    /// The audit log of state-changing requests, oldest first.
    Audit {
        /// Only entries at or after this time (RFC 3339, such as 2026-12-01T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// The newest N entries (default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// JSON lines, one entry each (the export format).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct QuotasArgs {
    /// Workspaces each user may have.
    #[arg(long)]
    max_workspaces: Option<Limit>,
    /// Workspaces each user may have running at once.
    #[arg(long)]
    max_running: Option<Limit>,
    /// CPUs per workspace (such as 4 or 0.5).
    #[arg(long)]
    max_cpus: Option<Limit>,
    /// Memory per workspace (such as 8g).
    #[arg(long)]
    max_memory: Option<Limit>,
    #[arg(long)]
    json: bool,
}

/// A quota on the command line: a value, or `none` for no limit.
#[derive(Clone, Debug)]
enum Limit {
    None,
    Value(Value),
}

impl std::str::FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Limit::None);
        }
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Limit::Value(json!(n)));
        }
        if let Ok(x) = s.parse::<f64>() {
            return Ok(Limit::Value(json!(x)));
        }
        // Sizes such as 8g; the server says if it is not one.
        Ok(Limit::Value(json!(s)))
    }
}

pub async fn admin(client: &Client, command: AdminCommand) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Quotas(args) => quotas(client, args).await,
        AdminCommand::RotateKey => {
            let answer: Value = client.json(Method::POST, "/api/v1/admin/rotate-key", None::<&()>).await?;
            eprintln!(
                "re-encrypted {} value(s) under a new instance key; back up the new secret.key",
                answer["reencrypted"].as_u64().unwrap_or(0)
            );
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Audit { since, limit, json } => audit(client, since, limit, json).await,
    }
}

async fn audit(client: &Client, since: Option<String>, limit: Option<u32>, json: bool) -> anyhow::Result<ExitCode> {
    let mut query = vec![];
    if let Some(since) = since {
        query.push(format!("since={}", percent_encode(&since)));
    }
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    let path = format!("/api/v1/admin/audit?{}", query.join("&"));
    let entries: Vec<Value> = client.get(&path).await?;
    if json {
        for entry in &entries {
            println!("{}", serde_json::to_string(entry)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                text(&e["at"]),
                text(&e["actor_name"]),
                text(&e["action"]),
                text(&e["target"]),
                text(&e["outcome"]),
                text(&e["peer"]),
            ]
        })
        .collect();
    println!("{}", table(&["AT", "WHO", "ACTION", "TARGET", "OUTCOME", "FROM"], &rows));
    Ok(ExitCode::SUCCESS)
}

async fn quotas(client: &Client, args: QuotasArgs) -> anyhow::Result<ExitCode> {
    let mut quotas: Value = client.get("/api/v1/admin/quotas").await?;
    let changes =
        [("max_workspaces", args.max_workspaces), ("max_running", args.max_running), ("max_cpus", args.max_cpus)];
    let changed = changes.iter().any(|(_, c)| c.is_some()) || args.max_memory.is_some();
    if changed {
        // PUT replaces all quotas: send the current ones with the changes on top.
        let mut body = json!({
            "max_workspaces": quotas["max_workspaces"],
            "max_running": quotas["max_running"],
            "max_cpus": quotas["max_cpus"],
            "max_memory": quotas["max_memory_bytes"],
        });
        let memory = args.max_memory.map(|m| ("max_memory", m));
        for (key, change) in changes.into_iter().filter_map(|(k, c)| c.map(|c| (k, c))).chain(memory) {
            body[key] = match change {
                Limit::None => Value::Null,
                Limit::Value(v) => v,
            };
        }
        quotas = client.json(Method::PUT, "/api/v1/admin/quotas", Some(&body)).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&quotas)?);
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: &Value| if v.is_null() { "none".to_string() } else { v.to_string() };
    let memory = quotas["max_memory_bytes"].as_u64().map_or("none".into(), format_size);
    let rows = vec![
        vec!["workspaces per user".into(), show(&quotas["max_workspaces"])],
        vec!["running workspaces per user".into(), show(&quotas["max_running"])],
        vec!["CPUs per workspace".into(), show(&quotas["max_cpus"])],
        vec!["memory per workspace".into(), memory],
    ];
    println!("{}", table(&["QUOTA", "LIMIT"], &rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user; the password is read from standard input.
    Create {
        name: String,
        #[arg(long)]
        admin: bool,
    },
    /// Disable a user: no login, and their tokens stop working at once.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
    /// Set a user's password; the new one is read from standard input.
    ResetPassword { name: String },
}

pub async fn users(client: &Client, command: UsersCommand) -> anyhow::Result<ExitCode> {
    let (name, body) = match command {
        UsersCommand::Create { name, admin } => {
            let password = read_password(&name)?;
            let role = if admin { "admin" } else { "member" };
            let body = json!({ "username": name, "password": password, "role": role });
            let user: UserView = client.json(Method::POST, "/api/v1/users", Some(&body)).await?;
            eprintln!("user {} created ({})", user.name, user.role);
            return Ok(ExitCode::SUCCESS);
        }
        UsersCommand::Disable { name } => (name, json!({ "disabled": true })),
        UsersCommand::Enable { name } => (name, json!({ "disabled": false })),
        UsersCommand::ResetPassword { name } => {
            let password = read_password(&name)?;
            (name, json!({ "password": password }))
        }
    };
    let path = format!("/api/v1/users/{}", percent_encode(&name));
    let user: UserView = client.json(Method::PATCH, &path, Some(&body)).await?;
    let state = if user.disabled { "disabled" } else { "enabled" };
    eprintln!("user {} changed ({state})", user.name);
    Ok(ExitCode::SUCCESS)
}

fn read_password(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(format!("password for {name}: "))?);
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(first_line(&text))
}

pub async fn status(client: &Client) -> anyhow::Result<ExitCode> {
    let status: Value = client.get("/api/v1/status").await?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct OpenArgs {
    name: String,
    /// A port listening in the workspace (e.g. 8080) or an app name.
    app: String,
    /// Only print the address; do not start a browser.
    #[arg(long)]
    print: bool,
}

pub async fn open(client: &Client, args: OpenArgs) -> anyhow::Result<ExitCode> {
    let w: WorkspaceView = client.get(&format!("/api/v1/workspaces/{}", percent_encode(&args.name))).await?;
    let url = w.app_url.replace("{app}", &args.app);
    println!("{url}");
    if !args.print && std::io::stdout().is_terminal() && std::env::var_os("DISPLAY").is_some() {
        // Best effort: a desktop without xdg-open still has the printed address.
        let _ = std::process::Command::new("xdg-open").arg(&url).spawn();
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ShareArgs {
    name: String,
    /// A port (e.g. 8080) or an app name; without it, list the apps shared beyond the owner.
    app: Option<String>,
    /// owner (the default), authenticated (anyone logged in) or public (anyone).
    level: Option<String>,
    /// Share the workspace with this user: they can open its apps and terminal (repeatable).
    #[arg(long, value_name = "USER", conflicts_with_all = ["app", "level"])]
    with: Vec<String>,
    /// Stop sharing the workspace with this user (repeatable).
    #[arg(long, value_name = "USER", conflicts_with_all = ["app", "level"])]
    remove: Vec<String>,
    /// List the users the workspace is shared with.
    #[arg(long, conflicts_with_all = ["app", "level"])]
    users: bool,
}

pub async fn share(client: &Client, args: ShareArgs) -> anyhow::Result<ExitCode> {
    if args.users || !args.with.is_empty() || !args.remove.is_empty() {
        return crate::secrets::share_with(client, &args.name, &args.with, &args.remove).await;
    }
    let base = format!("/api/v1/workspaces/{}/apps", percent_encode(&args.name));
    match (args.app, args.level) {
        (Some(app), Some(level)) => {
            let v: Value = client
                .json(Method::PUT, &format!("{base}/{}", percent_encode(&app)), Some(&json!({ "share": level })))
                .await?;
            eprintln!(
                "{} {app}: {} ({})",
                args.name,
                v["share"].as_str().unwrap_or(&level),
                v["url"].as_str().unwrap_or("")
            );
        }
        (None, None) => {
            let apps: Vec<Value> = client.get(&base).await?;
            let rows: Vec<Vec<String>> = apps
                .iter()
                .map(|a| ["app", "share", "url"].iter().map(|k| a[*k].as_str().unwrap_or("").to_string()).collect())
                .collect();
            if rows.is_empty() {
                eprintln!("every app of {} is private to its owner", args.name);
            } else {
                println!("{}", table(&["APP", "SHARE", "URL"], &rows));
            }
        }
        _ => bail!("give both an app and a level, e.g. `cove share {} 8080 public`", args.name),
    }
    Ok(ExitCode::SUCCESS)
}
