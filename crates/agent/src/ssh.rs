//! The workspace's SSH server, so that OpenSSH, scp, rsync, Git over SSH and the IDEs'
//! remote modes work against a workspace.
//!
//! It never listens on a port: the control plane authenticates the user (their Cove token)
//! and hands the agent an already-upgraded byte stream (`GET /ssh` on the agent's socket),
//! which [`serve`] speaks SSH on. Hence the SSH layer itself accepts any method (`none`,
//! any key, any password) for the workspace user: refusing would only confuse clients that
//! offer keys first. Everything a session starts runs as the workspace user.
//!
//! The host key is generated once and kept on the persistent volume, in a directory only
//! root can read, so clients see the same key after every stop, start and container
//! replacement.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::activity::SessionGuard;
use crate::pty::{Pty, Size};
use crate::user::WorkspaceUser;
use crate::Agent;

/// Where the host key lives, under the user's home (the persistent volume).
pub const HOST_KEY_DIR: &str = ".cove-agent";
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Where images keep OpenSSH's SFTP server (Debian/Ubuntu, Alpine/Arch, Fedora/RHEL).
const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/lib/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
];

/// After the program of a PTY session exits, how long its output may still drain (a
/// background job holding the terminal would otherwise keep the session open forever).
const PTY_DRAIN: Duration = Duration::from_secs(2);

static CONFIG: OnceLock<Arc<russh::server::Config>> = OnceLock::new();

/// Loads the host key, making it first if there is none; returns its SHA-256 fingerprint.
/// Called once at the agent's start, so the key exists before the first connection.
pub fn prepare(user: &WorkspaceUser) -> anyhow::Result<String> {
    let config = config(user)?;
    let key = config.keys.first().ok_or_else(|| anyhow::anyhow!("the SSH server has no host key"))?;
    Ok(key.public_key().fingerprint(HashAlg::Sha256).to_string())
}

fn config(user: &WorkspaceUser) -> anyhow::Result<Arc<russh::server::Config>> {
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let key = host_key(&user.home.join(HOST_KEY_DIR))?;
    let mut methods = MethodSet::empty();
    for method in [MethodKind::None, MethodKind::PublicKey, MethodKind::Password, MethodKind::KeyboardInteractive] {
        methods.push(method);
    }
    let config = russh::server::Config {
        server_id: russh::SshId::Standard(format!("SSH-2.0-cove_{}", crate::VERSION).into()),
        methods,
        auth_rejection_time: Duration::from_millis(0),
        keys: vec![key],
        // Sessions may sit idle for hours (an editor's remote mode); dead peers are found
        // by keepalives, which the client answers without it counting as activity.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    };
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// Reads the ed25519 host key in `dir`, or makes one (dir 0700, key 0600, both root's).
pub fn host_key(dir: &Path) -> anyhow::Result<PrivateKey> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(HOST_KEY_FILE);
    match std::fs::read(&path) {
        Ok(pem) => {
            return PrivateKey::from_openssh(&pem).with_context(|| {
                format!("the SSH host key {} is damaged; delete it to make a new one", path.display())
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read the SSH host key {}", path.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", dir.display()))?;
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key.to_openssh(LineEnding::LF).context("encode the SSH host key")?;
    let staged = dir.join(format!(".{HOST_KEY_FILE}.new"));
    crate::write_private(&staged, pem.as_bytes()).with_context(|| format!("write {}", staged.display()))?;
    std::fs::rename(&staged, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(key)
}

/// Speaks SSH on `stream` until the client goes away.
pub async fn serve<S>(agent: Agent, stream: S) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = config(&agent.user)?;
    let handler = Connection { _session: agent.activity.session("ssh"), agent };
    let running = russh::server::run_stream(config, stream, handler).await?;
    running.await?;
    Ok(())
}

/// One SSH connection; counted as an open "ssh" session while it lasts.
struct Connection {
    agent: Agent,
    _session: SessionGuard,
}

impl russh::server::Handler for Connection {
    type Error = anyhow::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        tokio::spawn(run_session(self.agent.clone(), channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(port) = u16::try_from(port) else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let host = host.to_string();
        tokio::spawn(async move {
            let connect = tokio::net::TcpStream::connect((host.as_str(), port));
            match tokio::time::timeout(Duration::from_secs(10), connect).await {
                Ok(Ok(mut tcp)) => {
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                }
                _ => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }

    async fn data(&mut self, _channel: ChannelId, _data: &[u8], _session: &mut Session) -> Result<(), Self::Error> {
        // Input from the user (keystrokes, uploads, forwarded requests) is what counts.
        self.agent.activity.touch("ssh");
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reply(channel, session, true)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reply(channel, session, allowed_env(name))
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.reply(channel, session, true)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reply(channel, session, true)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = name == "sftp" && sftp_server().is_some();
        self.reply(channel, session, ok)
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl Connection {
    /// Answers a channel request; the channel's task (see [`run_session`]) does the work.
    fn reply(&self, channel: ChannelId, session: &mut Session, ok: bool) -> anyhow::Result<()> {
        if ok {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }
}

/// The environment variables a client may set, as OpenSSH's default `AcceptEnv`.
fn allowed_env(name: &str) -> bool {
    name == "LANG" || name == "TERM" || name == "COLORTERM" || name.starts_with("LC_")
}

fn sftp_server() -> Option<PathBuf> {
    SFTP_SERVERS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// What a session channel runs.
enum Program {
    Shell,
    Exec(String),
    Sftp,
    Unknown(String),
}

/// Runs one session channel: collects its pty and env requests, starts its program as the
/// workspace user, and joins the program's input and output to the channel until it exits.
async fn run_session(agent: Agent, channel: Channel<Msg>) {
    let (mut read, write) = channel.split();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut pty: Option<(String, Size)> = None;
    let program = loop {
        match read.wait().await {
            None | Some(ChannelMsg::Close) => return,
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                pty = Some((term, size(col_width, row_height)));
            }
            Some(ChannelMsg::SetEnv { variable_name, variable_value, .. }) => {
                if allowed_env(&variable_name) {
                    env.push((variable_name, variable_value));
                }
            }
            Some(ChannelMsg::RequestShell { .. }) => break Program::Shell,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Program::Exec(String::from_utf8_lossy(&command).into_owned())
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break Program::Sftp,
            Some(ChannelMsg::RequestSubsystem { name, .. }) => break Program::Unknown(name),
            Some(_) => {}
        }
    };
    let mut command = match &program {
        Program::Shell => agent.user.shell_command(None),
        Program::Exec(line) => agent.user.shell_command(Some(line)),
        Program::Sftp => match sftp_server() {
            Some(path) => agent.user.command(path),
            None => {
                let message = format!(
                    "cove: this image has no SFTP server (looked for {}); install openssh-sftp-server, or use `scp -O`\r\n",
                    SFTP_SERVERS.join(", ")
                );
                return finish_with_error(&write, &message).await;
            }
        },
        Program::Unknown(name) => {
            return finish_with_error(&write, &format!("cove: unknown subsystem {name:?}\r\n")).await;
        }
    };
    agent.lifecycle.apply_env(&mut command);
    command.envs(env);
    if matches!(program, Program::Shell) {
        // An interactive session is an attach; `ssh host cmd`, scp and git are not.
        crate::lifecycle::on_attach(&agent);
    }
    let mut stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>;
    let mut outputs = Vec::new();
    let mut master = None;
    let mut child = match pty {
        Some((term, size)) => {
            command.env("TERM", term);
            match Pty::spawn(command, size) {
                Ok(pty) => {
                    let mut reader = pty.master.clone();
                    let mut writer = write.make_writer();
                    outputs.push(tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut reader, &mut writer).await;
                    }));
                    stdin = Some(Box::new(pty.master.clone()));
                    master = Some(pty.master);
                    pty.child
                }
                Err(e) => return finish_with_error(&write, &format!("cove: cannot start the session: {e}\r\n")).await,
            }
        }
        None => {
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            match command.spawn() {
                Ok(mut child) => {
                    stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
                    if let Some(mut out) = child.stdout.take() {
                        let mut writer = write.make_writer();
                        outputs.push(tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut out, &mut writer).await;
                            let _ = writer.flush().await;
                        }));
                    }
                    if let Some(mut err) = child.stderr.take() {
                        let mut writer = write.make_writer_ext(Some(1));
                        outputs.push(tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut err, &mut writer).await;
                            let _ = writer.flush().await;
                        }));
                    }
                    child
                }
                Err(e) => return finish_with_error(&write, &format!("cove: cannot start the session: {e}\n")).await,
            }
        }
    };
    let is_pty = master.is_some();
    let done = async move {
        let status = child.wait().await;
        let drained = futures::future::join_all(outputs);
        if is_pty {
            let _ = tokio::time::timeout(PTY_DRAIN, drained).await;
        } else {
            drained.await;
        }
        status
    };
    tokio::pin!(done);
    loop {
        tokio::select! {
            status = &mut done => {
                let code = match status {
                    Ok(status) => exit_code(status),
                    Err(_) => 255,
                };
                let _ = write.exit_status(code).await;
                let _ = write.eof().await;
                let _ = write.close().await;
                return;
            }
            message = read.wait() => match message {
                // The client went away: dropping `done` kills the program.
                None | Some(ChannelMsg::Close) => return,
                Some(ChannelMsg::Data { data }) => {
                    if let Some(sink) = stdin.as_mut() {
                        if sink.write_all(&data).await.is_err() || sink.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                // End of input closes a pipe; a terminal has no end of input of its own.
                Some(ChannelMsg::Eof) if !is_pty => stdin = None,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some(master) = &master {
                        let _ = master.resize(size(col_width, row_height));
                    }
                }
                Some(_) => {}
            }
        }
    }
}

fn size(cols: u32, rows: u32) -> Size {
    let clamp = |n: u32, default: u16| if n == 0 { default } else { u16::try_from(n).unwrap_or(u16::MAX) };
    Size { cols: clamp(cols, 80), rows: clamp(rows, 24) }
}

fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u32::try_from(code).unwrap_or(255),
        (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
        (None, None) => 255,
    }
}

async fn finish_with_error(write: &russh::ChannelWriteHalf<Msg>, message: &str) {
    let mut err = write.make_writer_ext(Some(1));
    let _ = err.write_all(message.as_bytes()).await;
    let _ = err.flush().await;
    let _ = write.exit_status(127).await;
    let _ = write.eof().await;
    let _ = write.close().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_host_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join(HOST_KEY_DIR);
        let first = host_key(&keys).unwrap();
        let again = host_key(&keys).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join(HOST_KEY_FILE)), 0o600);
        std::fs::write(keys.join(HOST_KEY_FILE), "garbage").unwrap();
        let err = host_key(&keys).unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
    }

    #[test]
    fn only_locale_and_terminal_variables_pass() {
        for ok in ["LANG", "LC_ALL", "LC_CTYPE", "TERM", "COLORTERM"] {
            assert!(allowed_env(ok), "{ok}");
        }
        for no in ["PATH", "LD_PRELOAD", "HOME", "BASH_ENV"] {
            assert!(!allowed_env(no), "{no}");
        }
    }
}
