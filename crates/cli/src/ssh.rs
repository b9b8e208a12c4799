//! `cove ssh`, `cove config-ssh`, `cove port-forward` and `cove ports`: SSH and TCP into a
//! workspace through the server's WebSocket tunnels (the token authenticates; no port of
//! the workspace is reachable otherwise).
//!
//! `cove ssh --stdio NAME` is the one piece OpenSSH needs: a `ProxyCommand` that joins its
//! standard input and output to the workspace's SSH server. Everything else (`cove ssh`,
//! the `~/.ssh/config` entries) is plain OpenSSH configured to use it, so scp, rsync, Git
//! and the IDEs' remote modes work unchanged.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use cove_core::{percent_encode, Name};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::config;
use crate::output::table;

/// The lines around the entries `cove config-ssh` manages in an ssh config file.
const BEGIN: &str = "# >>> cove: managed by `cove config-ssh`; edits between these lines are replaced >>>";
const END: &str = "# <<< cove <<<";

#[derive(clap::Args)]
pub struct SshArgs {
    /// The workspace.
    name: String,
    /// Join standard input and output to the workspace's SSH server (for `ProxyCommand`).
    #[arg(long)]
    stdio: bool,
    /// A command to run instead of a shell, after `--`; its exit code is `cove ssh`'s.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
pub struct ConfigSshArgs {
    /// The ssh config file to update.
    #[arg(long, default_value = "~/.ssh/config")]
    ssh_config: String,
}

#[derive(clap::Args)]
pub struct PortForwardArgs {
    /// The workspace.
    name: String,
    /// Ports to forward: `3000` (local 3000 to the workspace's 3000) or `8000:3000`.
    #[arg(required = true)]
    ports: Vec<String>,
}

#[derive(clap::Args)]
pub struct PortsArgs {
    /// The workspace.
    name: String,
    #[arg(long)]
    json: bool,
}

fn workspace_name(name: &str) -> anyhow::Result<Name> {
    Name::parse(name).map_err(|e| anyhow!("invalid workspace name {name:?}: {e}"))
}

/// The alias OpenSSH knows a workspace by (and files its host key under).
fn host_alias(name: &Name) -> String {
    format!("cove.{name}")
}

/// Where `cove ssh` keeps workspaces' host keys, next to the CLI's config.
fn known_hosts() -> anyhow::Result<PathBuf> {
    let config = config::config_path()?;
    Ok(config.parent().map_or_else(|| PathBuf::from("known_hosts"), |d| d.join("known_hosts")))
}

/// Single-quotes for `sh` (OpenSSH runs `ProxyCommand` through the shell).
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:+=@%,".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn proxy_command(url: &str, name: &Name) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the path of this cove binary")?;
    Ok(format!("{} --url {} ssh --stdio {name}", sh_quote(&exe.to_string_lossy()), sh_quote(url)))
}

/// The OpenSSH options every way in shares.
fn ssh_options(url: &str, name: &Name) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("ProxyCommand", proxy_command(url, name)?),
        ("User", "cove".into()),
        ("HostKeyAlias", host_alias(name)),
        ("UserKnownHostsFile", format!("\"{}\"", known_hosts()?.display())),
        // The key is the workspace's own, kept across restarts; the first use records it.
        ("StrictHostKeyChecking", "accept-new".into()),
        ("CheckHostIP", "no".into()),
    ])
}

pub async fn ssh(client: &Client, args: SshArgs) -> anyhow::Result<ExitCode> {
    let name = workspace_name(&args.name)?;
    if args.stdio {
        if !args.command.is_empty() {
            bail!("--stdio carries an SSH connection and takes no command; drop --stdio to run one");
        }
        let path = format!("/api/v1/workspaces/{}/ssh", percent_encode(name.as_str()));
        let socket = connect(client, &path).await?;
        stdio(socket).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = known_hosts()?.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut command = std::process::Command::new("ssh");
    for (key, value) in ssh_options(&client.url, &name)? {
        command.arg("-o").arg(format!("{key}={}", value.trim_matches('"')));
    }
    // The proxy command finds the server and token through the environment.
    command.env("COVE_URL", &client.url);
    if let Some(token) = client.token() {
        command.env("COVE_TOKEN", token);
    }
    command.arg(host_alias(&name));
    if !args.command.is_empty() {
        command.arg("--").args(&args.command);
    }
    let status = command.status().map_err(|e| {
        anyhow!("cannot run `ssh` ({e}); install the OpenSSH client (Debian: apt install openssh-client)")
    })?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        None => ExitCode::from(255),
    })
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a tunnel WebSocket on the API, with the token; API errors come back as one line.
async fn connect(client: &Client, path: &str) -> anyhow::Result<Socket> {
    let url = match client.url.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}{path}"),
        Some(("https", rest)) => format!("wss://{rest}{path}"),
        _ => bail!("the server URL {} must start with http:// or https://", client.url),
    };
    let mut request = url.as_str().into_client_request().with_context(|| format!("{url} is not a valid address"))?;
    if let Some(token) = client.token() {
        let value = format!("Bearer {token}").parse().context("the token has characters a header cannot carry")?;
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value =
                response.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            match body["error"]["message"].as_str() {
                Some(message) => bail!("{message}"),
                None => bail!("the server answered {} to the tunnel request", response.status()),
            }
        }
        Err(e) => {
            bail!("cannot open a tunnel through the Cove server at {} ({e}); is `cove server` running?", client.url)
        }
    }
}

/// Joins a byte stream and a tunnel WebSocket until the workspace's side ends.
async fn join<R, W>(socket: Socket, mut reader: R, mut writer: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = socket.split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
        // Keep the sending half alive until the other side is done with us.
        std::future::pending::<()>().await;
    };
    let downstream = async {
        while let Some(message) = rx.next().await {
            let message = match message {
                Ok(m) => m,
                // The server ends tunnels without waiting for our close; what was carried (an
                // SSH session ends itself) is complete, and a truncated stream is its reader's
                // to report.
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) | WsError::ConnectionClosed) => {
                    break
                }
                Err(e) => return Err(anyhow::Error::new(e).context("the tunnel broke off")),
            };
            let data = match message {
                Message::Binary(data) => data,
                Message::Text(text) => text.as_bytes().to_vec().into(),
                Message::Close(_) => break,
                _ => continue,
            };
            // Our reader went away (ssh exited, a forwarded connection closed): done.
            if writer.write_all(&data).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = downstream => result,
        () = upstream => Ok(()),
    }
}

async fn stdio(socket: Socket) -> anyhow::Result<()> {
    join(socket, tokio::io::stdin(), tokio::io::stdout()).await
}

pub async fn config_ssh(client: &Client, args: ConfigSshArgs) -> anyhow::Result<ExitCode> {
    let path = expand_home(&args.ssh_config)?;
    let list: Vec<Value> = client.get("/api/v1/workspaces").await?;
    let mut names: Vec<Name> =
        list.iter().filter_map(|w| w["name"].as_str()).filter_map(|n| Name::parse(n).ok()).collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut block = String::new();
    for name in &names {
        block.push_str(&format!("Host {}\n", host_alias(name)));
        for (key, value) in ssh_options(&client.url, name)? {
            block.push_str(&format!("    {key} {value}\n"));
        }
    }
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let new = replace_block(&old, &block).with_context(|| format!("{} has a broken cove block", path.display()))?;
    if new != old {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            }
        }
        let staged = path.with_extension("cove-new");
        cove_server::auth::write_private(&staged, &new)
            .with_context(|| format!("cannot write {}", staged.display()))?;
        if let Ok(meta) = std::fs::metadata(&path) {
            std::fs::set_permissions(&staged, meta.permissions())?;
        }
        std::fs::rename(&staged, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if names.is_empty() {
        eprintln!("no workspaces yet; the cove block in {} is empty", path.display());
    } else {
        let hosts: Vec<String> = names.iter().map(host_alias).collect();
        eprintln!("{}: {} (try `ssh {}`)", path.display(), hosts.join(", "), hosts[0]);
    }
    Ok(ExitCode::SUCCESS)
}

fn expand_home(path: &str) -> anyhow::Result<PathBuf> {
    match path.strip_prefix("~/") {
        Some(rest) => Ok(dirs::home_dir().context("cannot find your home directory; pass --ssh-config")?.join(rest)),
        None => Ok(PathBuf::from(path)),
    }
}

/// `text` with the cove block replaced by `block` (or the block appended); `None` if the
/// block is opened and never closed.
fn replace_block(text: &str, block: &str) -> Option<String> {
    let managed = format!("{BEGIN}\n{block}{END}\n");
    let Some(start) = text.find(BEGIN) else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&managed);
        return Some(out);
    };
    let end = start + text[start..].find(END)? + END.len();
    let rest = text[end..].strip_prefix('\n').unwrap_or(&text[end..]);
    Some(format!("{}{managed}{rest}", &text[..start]))
}

/// `3000` or `8000:3000` as (local, remote).
fn parse_forward(spec: &str) -> anyhow::Result<(u16, u16)> {
    let port = |s: &str, zero_ok: bool| {
        s.parse::<u16>().ok().filter(|p| zero_ok || *p != 0).ok_or_else(|| {
            anyhow!("{spec:?} is not a port forward; use REMOTE or LOCAL:REMOTE with ports 1-65535 (LOCAL 0 picks one)")
        })
    };
    match spec.split_once(':') {
        Some((local, remote)) => Ok((port(local, true)?, port(remote, false)?)),
        None => {
            let p = port(spec, false)?;
            Ok((p, p))
        }
    }
}

pub async fn port_forward(client: &Client, args: PortForwardArgs) -> anyhow::Result<ExitCode> {
    let name = workspace_name(&args.name)?;
    let forwards = args.ports.iter().map(|s| parse_forward(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let client = std::sync::Arc::new(Client::new(client.url.clone(), client.token().map(str::to_string))?);
    let mut tasks = Vec::new();
    for (local, remote) in forwards {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local)).await.with_context(|| {
            format!("cannot listen on 127.0.0.1:{local}; is the port in use? pick another with LOCAL:{remote}")
        })?;
        let bound = listener.local_addr()?;
        println!("forwarding {bound} -> {name}:{remote}");
        let path = format!("/api/v1/workspaces/{}/tcp/{remote}", percent_encode(name.as_str()));
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { continue };
                let (client, path) = (client.clone(), path.clone());
                tokio::spawn(async move {
                    match connect(&client, &path).await {
                        Ok(socket) => {
                            let (reader, writer) = conn.into_split();
                            let _ = join(socket, reader, writer).await;
                        }
                        Err(e) => eprintln!("error: port {remote}: {}", crate::output::one_line(&e)),
                    }
                });
            }
        }));
    }
    tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
    for task in tasks {
        task.abort();
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ports(client: &Client, args: PortsArgs) -> anyhow::Result<ExitCode> {
    let name = workspace_name(&args.name)?;
    let ports: Vec<Value> = client.get(&format!("/api/v1/workspaces/{}/ports", percent_encode(name.as_str()))).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ports)?);
        return Ok(ExitCode::SUCCESS);
    }
    if ports.is_empty() {
        eprintln!("nothing listens on a TCP port in workspace {name}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            let addresses: Vec<&str> =
                p["addresses"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let process = match (p["process"].as_str(), p["pid"].as_u64()) {
                (Some(name), Some(pid)) => format!("{name} ({pid})"),
                _ => "-".into(),
            };
            let address = if addresses.is_empty() { "(not listening)".to_string() } else { addresses.join(", ") };
            let label = p["label"].as_str().filter(|l| !l.is_empty()).unwrap_or("-").to_string();
            vec![p["port"].to_string(), address, process, label]
        })
        .collect();
    println!("{}", table(&["PORT", "ADDRESS", "PROCESS", "LABEL"], &rows));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwards() {
        assert_eq!(parse_forward("3000").unwrap(), (3000, 3000));
        assert_eq!(parse_forward("8000:3000").unwrap(), (8000, 3000));
        assert_eq!(parse_forward("0:3000").unwrap(), (0, 3000));
        for bad in ["", "0", "x", "3000:", ":3000", "70000", "1:2:3", "8000:0"] {
            let err = parse_forward(bad).unwrap_err().to_string();
            assert!(err.contains("LOCAL:REMOTE"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_managed_block_is_added_once_and_replaced_in_place() {
        let block = "Host cove.api\n    User cove\n";
        let first = replace_block("Host other\n    User me", block).unwrap();
        assert_eq!(first, format!("Host other\n    User me\n\n{BEGIN}\n{block}{END}\n"));
        assert_eq!(replace_block(&first, block).unwrap(), first, "idempotent");
        let changed = replace_block(&format!("{first}Host after\n"), "Host cove.web\n").unwrap();
        assert_eq!(changed, format!("Host other\n    User me\n\n{BEGIN}\nHost cove.web\n{END}\nHost after\n"));
        assert_eq!(replace_block("", block).unwrap(), format!("{BEGIN}\n{block}{END}\n"));
        assert_eq!(replace_block(&format!("{BEGIN}\nHost x\n"), block), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/usr/bin/cove"), "/usr/bin/cove");
        assert_eq!(sh_quote("/my dir/it's"), r"'/my dir/it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
