//! `cove`: one binary for the control plane (`cove server`), the CLI, and image tools.

#![forbid(unsafe_code)]

mod client;
mod commands;
mod config;
mod devcontainer;
mod git_token;
mod output;
mod push;
mod secrets;
mod ssh;
mod wait;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cove", version, about = "Remote development workspaces on Podman or Docker")]
struct Cli {
    /// The Cove server's URL (default: the one `cove login` saved, else http://127.0.0.1:7080).
    #[arg(long, global = true, env = "COVE_URL")]
    url: Option<String>,
    /// An API token (default: the one `cove login` saved).
    #[arg(long, global = true, env = "COVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: API, reconciler and store.
    Server(Box<ServerArgs>),
    /// Run only the workspace proxy, next to a server on the same data directory.
    Proxy(ProxyArgs),
    /// Log in to a Cove server and save its URL and a new token.
    Login(commands::LoginArgs),
    /// Build workspace images without a registry.
    #[command(subcommand)]
    Image(commands::ImageCommand),
    /// Install the editor (code-server) that workspaces get at /.cove/editor.
    #[command(subcommand)]
    Editor(EditorCommand),
    /// Read a project's devcontainer.json as Cove understands it (local, no server).
    #[command(subcommand)]
    Devcontainer(devcontainer::DevcontainerCommand),
    /// Run as a workspace's agent (Cove starts this inside every workspace).
    #[command(hide = true)]
    Agent {
        #[command(subcommand)]
        command: Option<AgentCommand>,
    },
    /// Print shell completions, e.g. `cove completions bash > /etc/bash_completion.d/cove`.
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    Remote(Remote),
}

/// The commands that talk to a server.
#[derive(Subcommand)]
enum Remote {
    /// Create a workspace and wait until it runs.
    Create(commands::CreateArgs),
    /// List workspaces.
    #[command(alias = "list")]
    Ls(commands::LsArgs),
    /// Show one workspace.
    Show(commands::ShowArgs),
    /// Start a stopped workspace.
    Start(commands::StateArgs),
    /// Stop a workspace; its files stay.
    Stop(commands::StateArgs),
    /// Stop and start a workspace again.
    Restart(commands::StateArgs),
    /// Apply a changed devcontainer.json (new image, env, mounts); the files stay.
    Rebuild(commands::StateArgs),
    /// Delete a workspace with its container and volume.
    #[command(alias = "delete")]
    Rm(commands::StateArgs),
    /// Change a workspace's resources or idle timeout.
    Set(commands::SetArgs),
    /// Run a command in a running workspace, e.g. `cove exec api -- make test`.
    Exec(commands::ExecArgs),
    /// Open a shell (or run a command: `cove ssh api -- make test`) over SSH; wakes the workspace.
    Ssh(ssh::SshArgs),
    /// Write `Host cove.<name>` entries for your workspaces to ~/.ssh/config (for ssh, scp, rsync, git, IDEs).
    ConfigSsh(ssh::ConfigSshArgs),
    /// Forward local ports to ports in a workspace: `cove port-forward api 3000 8000:3000`.
    PortForward(ssh::PortForwardArgs),
    /// List the TCP ports listening inside a workspace.
    Ports(ssh::PortsArgs),
    /// Print a workspace's container output.
    Logs(commands::LogsArgs),
    /// Put a local folder into a workspace's home (running or stopped; it is not started).
    Push(push::PushArgs),
    /// Print (and open) the address of an app in a workspace: `cove open api 8080`.
    Open(commands::OpenArgs),
    /// Set who may open an app: `cove share api 8080 public`; list with `cove share api`;
    /// share the workspace with users: `cove share api --with bob` (`--remove bob`).
    Share(commands::ShareArgs),
    /// Git tokens workspaces' git uses (`cove git-token set github.com`).
    #[command(subcommand)]
    GitToken(git_token::GitTokenCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(commands::TokensCommand),
    /// Secrets workspaces get as environment variables and files (`cove secrets set API_KEY`).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Your login sessions: list and revoke.
    #[command(subcommand)]
    Sessions(secrets::SessionsCommand),
    /// Manage users (admins only).
    #[command(subcommand)]
    Users(commands::UsersCommand),
    /// Instance administration (admins only).
    #[command(subcommand)]
    Admin(commands::AdminCommand),
    /// Show the server's engine and reconciler status.
    Status,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// git's credential helper (wired into the workspace's /etc/gitconfig): get|store|erase.
    GitCredential { operation: String },
    /// Run a command with the workspace's environment secrets (`cove exec` uses it).
    WithSecrets {
        /// Leave this variable as it is (the exec set it itself); repeatable.
        #[arg(long)]
        keep: Vec<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
}

#[derive(Subcommand)]
enum EditorCommand {
    /// Install code-server into <data-dir>/editor (run on the Cove host, as the server's
    /// data directory owner); workspaces made or recreated afterwards get it.
    Install(EditorInstallArgs),
}

#[derive(clap::Args)]
struct EditorInstallArgs {
    /// The code-server version (4.100.3 is the last that accepts Node.js 20).
    #[arg(long, default_value = cove_runtime::editor::DEFAULT_VERSION)]
    version: String,
    /// The server's data directory (default: the user's data dir, `cove/`).
    #[arg(long, env = "COVE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep npm's download here by version and reuse it (CI keeps one outside the repo).
    #[arg(long, env = "COVE_EDITOR_CACHE")]
    cache: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "COVE_LISTEN", default_value = cove_server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
    /// Image for workspaces created without one.
    #[arg(long, env = "COVE_DEFAULT_IMAGE", default_value = cove_server::DEFAULT_IMAGE)]
    default_image: String,
    /// Milliseconds between reconcile passes when nothing pokes the loop.
    #[arg(long, default_value_t = 2000)]
    reconcile_interval_ms: u64,
    /// Longest retry delay, in milliseconds, for a workspace whose last step failed.
    #[arg(long, default_value_t = 30_000)]
    max_backoff_ms: u64,
    /// The dashboard's address as browsers reach it (default http://localhost:<port>).
    #[arg(long, env = "COVE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Milliseconds between checks for idle workspaces.
    #[arg(long, default_value_t = 10_000)]
    idle_check_interval_ms: u64,
    /// Let devcontainer.json's `initializeCommand` run on this host (host code execution).
    #[arg(long, env = "COVE_ALLOW_INITIALIZE_COMMAND")]
    allow_initialize_command: bool,
    /// Host path prefixes devcontainer.json bind mounts may come from (repeatable).
    #[arg(long = "allow-bind", value_name = "PATH")]
    allow_binds: Vec<String>,
    /// Let devcontainer.json ask for privileged containers and any security option.
    #[arg(long)]
    allow_privileged: bool,
    /// Capabilities devcontainer.json `capAdd` may name (repeatable), e.g. SYS_PTRACE.
    #[arg(long = "allow-cap-add", value_name = "CAP")]
    allow_cap_add: Vec<String>,
    #[command(flatten)]
    oidc: OidcArgs,
}

/// Login through an OpenID Connect provider (docs/architecture.md, "OpenID Connect").
#[derive(clap::Args)]
struct OidcArgs {
    /// The provider's issuer URL, e.g. https://keycloak.example.com/realms/team; enables
    /// "Sign in with" on the login page.
    #[arg(long, env = "COVE_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The client id registered at the provider.
    #[arg(long, env = "COVE_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    oidc_client_id: Option<String>,
    /// A file holding the client secret (or set COVE_OIDC_CLIENT_SECRET; never a flag, so
    /// that it stays out of `ps`).
    #[arg(long, env = "COVE_OIDC_CLIENT_SECRET_FILE", requires = "oidc_issuer")]
    oidc_client_secret_file: Option<PathBuf>,
    /// The provider's name on the login page's button (default: the issuer's host).
    #[arg(long, env = "COVE_OIDC_NAME", requires = "oidc_issuer")]
    oidc_name: Option<String>,
    /// Only addresses at these domains (comma-separated) may log in; the provider must
    /// say the address is verified.
    #[arg(long, env = "COVE_OIDC_ALLOWED_DOMAINS", value_delimiter = ',', requires = "oidc_issuer")]
    oidc_allowed_domains: Vec<String>,
    /// Only members of one of these groups (comma-separated) may log in.
    #[arg(long, env = "COVE_OIDC_ALLOWED_GROUPS", value_delimiter = ',', requires = "oidc_issuer")]
    oidc_allowed_groups: Vec<String>,
    /// Members of this group are admins, others members; set at every login.
    #[arg(long, env = "COVE_OIDC_ADMIN_GROUP", requires = "oidc_issuer")]
    oidc_admin_group: Option<String>,
    /// The claim listing the user's groups.
    #[arg(long, env = "COVE_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
    /// Scopes to ask for besides openid (comma-separated).
    #[arg(long, env = "COVE_OIDC_SCOPES", value_delimiter = ',', default_value = "email,profile")]
    oidc_scopes: Vec<String>,
}

impl OidcArgs {
    fn config(self) -> anyhow::Result<Option<cove_server::oidc::OidcConfig>> {
        use anyhow::Context as _;
        let Some(issuer) = self.oidc_issuer else {
            return Ok(None);
        };
        let client_id = self
            .oidc_client_id
            .context("--oidc-issuer needs --oidc-client-id, the client registered at the provider")?;
        let secret = match (&self.oidc_client_secret_file, std::env::var("COVE_OIDC_CLIENT_SECRET")) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the OIDC client secret file {}", path.display()))?
                .trim()
                .to_string(),
            (None, Ok(secret)) => secret.trim().to_string(),
            (None, Err(_)) => anyhow::bail!(
                "--oidc-issuer needs the client secret: give --oidc-client-secret-file or set COVE_OIDC_CLIENT_SECRET"
            ),
        };
        if secret.is_empty() {
            anyhow::bail!(
                "the OIDC client secret is empty; put the secret the provider gave into the file or variable"
            );
        }
        let display_name = match self.oidc_name {
            Some(name) => name,
            None => issuer.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or(&issuer).to_string(),
        };
        let clean = |list: Vec<String>| -> Vec<String> {
            list.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
        };
        let policy = cove_server::oidc::Policy {
            allowed_domains: clean(self.oidc_allowed_domains).into_iter().map(|d| d.to_ascii_lowercase()).collect(),
            allowed_groups: clean(self.oidc_allowed_groups),
            admin_group: self.oidc_admin_group.filter(|g| !g.trim().is_empty()),
            groups_claim: self.oidc_groups_claim,
        };
        let mut scopes = clean(self.oidc_scopes);
        scopes.retain(|s| s != "openid");
        Ok(Some(cove_server::oidc::OidcConfig {
            issuer,
            client_id,
            client_secret: cove_server::oidc::Secret::new(secret),
            display_name,
            scopes,
            policy,
        }))
    }
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7081")]
    listen: SocketAddr,
    #[command(flatten)]
    common: CommonArgs,
    /// The server's dashboard address, where browsers are sent to log in.
    #[arg(long, env = "COVE_PUBLIC_URL", default_value = "http://localhost:7080")]
    public_url: String,
}

/// What `cove server` and `cove proxy` both take.
#[derive(clap::Args)]
struct CommonArgs {
    /// Where the database and server state live (default: the user's data dir, `cove/`);
    /// `cove proxy` uses the server's.
    #[arg(long, env = "COVE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The container engine's API endpoint (default: DOCKER_HOST, then the Podman and Docker sockets).
    #[arg(long, env = "DOCKER_HOST")]
    engine: Option<String>,
    /// Label objects with this instance id instead of the stored one.
    #[arg(long, env = "COVE_INSTANCE", hide = true)]
    instance: Option<String>,
    /// App hosts are `<app>--<workspace>--<owner>.<apps-domain>`; `localhost` needs no DNS.
    #[arg(long, env = "COVE_APPS_DOMAIN", default_value = "localhost")]
    apps_domain: String,
    /// Seconds a script's request to a stopped workspace waits for it to start.
    #[arg(long, default_value_t = 60)]
    wake_wait: u32,
}

impl CommonArgs {
    /// A configuration listening on `listen`, with these settings and defaults for the rest.
    fn config(self, listen: SocketAddr, public_url: &str) -> anyhow::Result<cove_server::Config> {
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => config::data_dir()?,
        };
        let mut config = cove_server::Config::new(listen, data_dir);
        config.engine_endpoint = self.engine;
        config.instance = self.instance;
        config.apps_domain = self.apps_domain;
        config.public_url = public_url.trim_end_matches('/').to_string();
        config.wake_wait = std::time::Duration::from_secs(u64::from(self.wake_wait));
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (url, token) = (cli.url, cli.token);
    match cli.command {
        Command::Server(args) => server(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Proxy(args) => proxy(args).await.map(|()| ExitCode::SUCCESS),
        Command::Login(args) => commands::login(url, args).await,
        Command::Image(c) => commands::image(c).await,
        Command::Editor(EditorCommand::Install(args)) => editor_install(args).map(|()| ExitCode::SUCCESS),
        Command::Agent { command: None } => agent().await.map(|()| ExitCode::SUCCESS),
        Command::Agent { command: Some(AgentCommand::WithSecrets { keep, cmd }) } => {
            let cmd = if cmd.first().is_some_and(|a| a == "--") { &cmd[1..] } else { &cmd[..] };
            cove_agent::with_secrets(cmd, &keep).map(|_| ExitCode::SUCCESS)
        }
        Command::Agent { command: Some(AgentCommand::GitCredential { operation }) } => {
            cove_agent::git_credential(&operation).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Devcontainer(c) => devcontainer::run(c),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cove", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Remote(command) => {
            let (url, token) = config::resolve(url, token)?;
            let client = client::Client::new(url, Some(token))?;
            remote(&client, command).await
        }
    }
}

async fn remote(client: &client::Client, command: Remote) -> anyhow::Result<ExitCode> {
    match command {
        Remote::Create(a) => commands::create(client, a).await,
        Remote::Ls(a) => commands::ls(client, a).await,
        Remote::Show(a) => commands::show(client, a).await,
        Remote::Start(a) => commands::start(client, a).await,
        Remote::Stop(a) => commands::stop(client, a).await,
        Remote::Restart(a) => commands::restart(client, a).await,
        Remote::Rebuild(a) => commands::rebuild(client, a).await,
        Remote::Rm(a) => commands::rm(client, a).await,
        Remote::Set(a) => commands::set(client, a).await,
        Remote::Exec(a) => commands::exec(client, a).await,
        Remote::Ssh(a) => ssh::ssh(client, a).await,
        Remote::ConfigSsh(a) => ssh::config_ssh(client, a).await,
        Remote::PortForward(a) => ssh::port_forward(client, a).await,
        Remote::Ports(a) => ssh::ports(client, a).await,
        Remote::Logs(a) => commands::logs(client, a).await,
        Remote::Push(a) => push::push(client, a).await,
        Remote::Open(a) => commands::open(client, a).await,
        Remote::Share(a) => commands::share(client, a).await,
        Remote::Tokens(c) => commands::tokens(client, c).await,
        Remote::Secrets(c) => secrets::run(client, c).await,
        Remote::Sessions(c) => secrets::sessions(client, c).await,
        Remote::GitToken(c) => git_token::run(client, c).await,
        Remote::Users(c) => commands::users(client, c).await,
        Remote::Admin(c) => commands::admin(client, c).await,
        Remote::Status => commands::status(client).await,
    }
}

async fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    init_logging();
    let config = args.common.config(args.listen, &args.public_url)?;
    let proxy = cove_server::start_proxy(config).await?;
    for note in &proxy.notes {
        eprintln!("{note}");
    }
    println!("cove proxy listening on http://{}", proxy.addr);
    proxy.run_until_signal().await
}

fn editor_install(args: EditorInstallArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => config::data_dir()?,
    };
    use anyhow::Context as _;
    let install =
        cove_runtime::editor::InstallConfig { data_dir, version: args.version.clone(), cache_dir: args.cache };
    let started = std::time::Instant::now();
    let installed = cove_runtime::editor::install(&install, &mut |line| eprintln!("editor: {line}"))
        .with_context(|| format!("cannot install code-server {}", args.version))?;
    match installed {
        cove_runtime::editor::Installed::Already(dir) => {
            println!("code-server {} is installed in {}", args.version, dir.display())
        }
        cove_runtime::editor::Installed::Fresh(dir) => println!(
            "installed code-server {} in {} ({} s); workspaces made from now on get it",
            args.version,
            dir.display(),
            started.elapsed().as_secs()
        ),
    }
    Ok(())
}

async fn agent() -> anyhow::Result<()> {
    init_logging();
    cove_agent::run(cove_agent::Config::default()).await
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COVE_LOG").unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let mut config = args.common.config(args.listen, args.public_url.as_deref().unwrap_or_default())?;
    config.default_image = args.default_image;
    config.reconcile = cove_reconciler_config(args.reconcile_interval_ms, args.max_backoff_ms);
    config.idle_check_interval = std::time::Duration::from_millis(args.idle_check_interval_ms.max(100));
    config.activity_flush_interval = config.idle_check_interval.min(std::time::Duration::from_secs(5));
    config.devcontainer_policy = cove_devcontainer::Policy {
        allow_binds: args.allow_binds,
        allow_privileged: args.allow_privileged,
        allow_cap_add: args.allow_cap_add,
        allow_initialize_command: args.allow_initialize_command,
        max: None,
    };
    config.oidc = args.oidc.config()?;
    let server = cove_server::start(config).await?;
    for note in &server.notes {
        eprintln!("{note}");
    }
    println!("cove server listening on http://{}", server.addr);
    server.run_until_signal().await
}

fn cove_reconciler_config(interval_ms: u64, max_backoff_ms: u64) -> cove_server::ReconcileConfig {
    let mut c = cove_server::ReconcileConfig::default();
    c.interval = std::time::Duration::from_millis(interval_ms.max(50));
    c.backoff_max = std::time::Duration::from_millis(max_backoff_ms.max(100));
    c.backoff_base = c.backoff_base.min(c.backoff_max);
    c
}
