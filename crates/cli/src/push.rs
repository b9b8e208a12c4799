//! `cove push NAME DIR [--to PATH]`: a local tree (with its `.git`) into a workspace's home,
//! running or stopped, without starting it. The tree is streamed as a tar archive while it
//! is read, so nothing is staged on the client; the server checks the whole archive before
//! the workspace is touched.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bytes::Bytes;
use cove_core::percent_encode;
use reqwest::Method;
use serde::Deserialize;

use crate::client::Client;

#[derive(clap::Args)]
pub struct PushArgs {
    /// The workspace.
    name: String,
    /// The local folder to push (its contents go into the target folder).
    dir: PathBuf,
    /// Folder inside the workspace home to put the files in.
    #[arg(long, default_value = "project")]
    to: String,
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize, serde::Serialize)]
pub struct Pushed {
    pub to: String,
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

pub async fn push(client: &Client, args: PushArgs) -> anyhow::Result<ExitCode> {
    let pushed = upload(client, &args.name, &args.dir, &args.to).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&pushed)?);
    } else {
        println!(
            "pushed {} files ({}) into ~/{} of {}",
            pushed.files,
            cove_core::format_size(pushed.bytes),
            pushed.to,
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks that `dir` can be pushed, before anything is made for it.
pub fn check_dir(dir: &Path, to: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a folder; push a folder (its contents go into ~/{to})", dir.display());
    }
    Ok(())
}

/// Streams `dir` into workspace `name` at `~/to`.
pub async fn upload(client: &Client, name: &str, dir: &Path, to: &str) -> anyhow::Result<Pushed> {
    check_dir(dir, to)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let local = dir.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter { tx: tx.clone() };
        let result = pack(&local, writer);
        if let Err(e) = &result {
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
        result
    });
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let path = format!("/api/v1/workspaces/{}/files?to={}", percent_encode(name), percent_encode(to));
    let request = client.request(Method::PUT, &path).header("content-type", "application/x-tar").body(body);
    let sent = client.send(request).await;
    let packed = packer.await.context("the archive packer stopped")?;
    // A failure to read the local tree says more than the broken upload it caused; a
    // refusal by the server says more than the packer's broken pipe.
    match packed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context(format!("cannot pack {}", dir.display())));
        }
        _ => {}
    }
    sent?.json().await.context("the server's answer is not what this CLI expects")
}

/// Writes `dir`'s contents as a tar archive; symbolic links stay links.
fn pack(dir: &Path, writer: impl std::io::Write) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    // Plain entries: every tar reader (and the server's check) takes them.
    builder.sparse(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()?.flush()
}

/// Blocking writes into the upload's channel, in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended early"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
