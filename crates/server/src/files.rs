//! `cove push`: a tree of files into a workspace's home, running or stopped, without
//! starting it — the "grove" an AI agent or a CI job fills for a human to open later.
//!
//! The client sends a tar archive. Before anything reaches the workspace, the server reads
//! it whole into a spool file and rewrites every entry: paths are made relative to the
//! target folder and may not climb out of it (no absolute paths, no `..`, nothing through a
//! symbolic link the same archive made), everything belongs to the workspace user, and no
//! set-uid/set-gid bit, device or FIFO gets in. A bad archive is refused before the
//! workspace's files are touched, so a refusal changes nothing.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{workspaces, AppState};

/// The most a push may carry, after the archive is unpacked entry by entry.
pub const MAX_PUSH_BYTES: u64 = 4 << 30;
const OWNER: u64 = cove_runtime::WORKSPACE_UID as u64;

/// What a push put where.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// The folder, relative to the home, the files went into.
    pub to: String,
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("the upload is not a readable tar archive ({0}); send `tar -c` output")]
    Malformed(String),
    #[error("archive entry {0:?} leaves the target folder (absolute path or `..`); send paths relative to the folder")]
    Escapes(String),
    #[error("archive entry {0:?} goes through the symbolic link {1:?} made earlier in the archive")]
    ThroughLink(String, String),
    #[error("archive entry {0:?} is a {1}; only files, directories and symbolic links can be pushed")]
    Unsupported(String, &'static str),
    #[error("the archive unpacks to more than {} GiB; push less at a time", MAX_PUSH_BYTES >> 30)]
    TooLarge,
    #[error("cannot spool the upload: {0}")]
    Spool(String),
}

/// Checks `to` (a folder relative to the workspace home) and returns it normalised.
pub fn target_folder(to: &str) -> Result<PathBuf, ApiError> {
    relative_path(Path::new(to.trim_matches('/'))).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "to={to:?} must be a folder inside the workspace home, like project or project/src"
        ))
    })
}

/// Copies the archive `input` to `output`, rewritten under `to/` as the module docs say.
pub fn rewrite(input: impl Read, output: impl Write, to: &Path) -> Result<Pushed, ArchiveError> {
    let malformed = |e: std::io::Error| ArchiveError::Malformed(e.to_string());
    let mut archive = tar::Archive::new(input);
    let mut builder = tar::Builder::new(output);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut pushed = Pushed { to: to.display().to_string(), ..Pushed::default() };
    let mut links: HashSet<PathBuf> = HashSet::new();
    // The target folder and its parents, owned by the user, so extraction can make them.
    let mut prefix = PathBuf::new();
    for part in to.components() {
        prefix.push(part);
        append_dir(&mut builder, &prefix).map_err(malformed)?;
    }
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let raw = entry.path().map_err(malformed)?.into_owned();
        let shown = raw.display().to_string();
        let relative = relative_path(&raw).ok_or_else(|| ArchiveError::Escapes(shown.clone()))?;
        if relative.as_os_str().is_empty() {
            continue; // "./" itself: the target folder, already there.
        }
        if let Some(link) = relative.ancestors().skip(1).find(|a| links.contains(*a)) {
            return Err(ArchiveError::ThroughLink(shown, link.display().to_string()));
        }
        let path = to.join(&relative);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(malformed)? & 0o777;
        let mut header = tar::Header::new_gnu();
        header.set_uid(OWNER);
        header.set_gid(OWNER);
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        match kind {
            tar::EntryType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode | 0o700);
                header.set_size(0);
                builder.append_data(&mut header, &path, std::io::empty()).map_err(malformed)?;
                pushed.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // A sparse entry reads back whole (holes as zeros): its real size counts.
                let size = match kind {
                    tar::EntryType::GNUSparse => {
                        entry.header().as_gnu().map(|g| g.real_size()).transpose().map_err(malformed)?.unwrap_or(0)
                    }
                    _ => entry.size(),
                };
                pushed.bytes += size;
                if pushed.bytes > MAX_PUSH_BYTES {
                    return Err(ArchiveError::TooLarge);
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode | 0o600);
                header.set_size(size);
                builder.append_data(&mut header, &path, &mut entry).map_err(malformed)?;
                pushed.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(malformed)?.unwrap_or_default().into_owned();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &path, &target).map_err(malformed)?;
                links.insert(relative);
                pushed.files += 1;
            }
            tar::EntryType::Link => return Err(ArchiveError::Unsupported(shown, "hard link")),
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            tar::EntryType::Char | tar::EntryType::Block => return Err(ArchiveError::Unsupported(shown, "device")),
            tar::EntryType::Fifo => return Err(ArchiveError::Unsupported(shown, "FIFO")),
            _ => return Err(ArchiveError::Unsupported(shown, "special entry")),
        }
    }
    builder.into_inner().map_err(malformed)?.flush().map_err(malformed)?;
    Ok(pushed)
}

fn append_dir(builder: &mut tar::Builder<impl Write>, path: &Path) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_uid(OWNER);
    header.set_gid(OWNER);
    header.set_mode(0o755);
    header.set_size(0);
    builder.append_data(&mut header, path, std::io::empty())
}

/// `a/./b` -> `a/b`; `None` for anything absolute or with `..`.
fn relative_path(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/workspaces/{ws}/files", put(push))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    /// Folder inside the home; default `project`.
    to: Option<String>,
}

async fn push(
    State(state): State<AppState>,
    Caller(user, _): Caller,
    UrlPath(key): UrlPath<String>,
    query: Result<Query<PushQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let ws = workspaces::resolve(&state, &user, &key).await?;
    if ws.desired == cove_core::DesiredState::Terminated {
        return Err(ApiError::Conflict(format!("workspace {} is being deleted", ws.name)));
    }
    let to = target_folder(query.to.as_deref().unwrap_or("project"))?;
    if to.as_os_str().is_empty() {
        return Err(ApiError::InvalidRequest("to must name a folder inside the home, like project".into()));
    }
    let spool_dir = state.config.data_dir.join("spool");
    std::fs::create_dir_all(&spool_dir)
        .map_err(|e| ApiError::Internal(format!("cannot make the spool folder: {e}")))?;
    let spool = tempfile::NamedTempFile::new_in(&spool_dir)
        .map_err(|e| ApiError::Internal(format!("cannot make a spool file: {e}")))?;
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let (file, target) = (spool.reopen().map_err(|e| ApiError::Internal(e.to_string()))?, to.clone());
    let pushed =
        tokio::task::spawn_blocking(move || rewrite(SyncIoBridge::new(reader), std::io::BufWriter::new(file), &target))
            .await
            .map_err(|e| ApiError::Internal(format!("the archive check stopped: {e}")))?
            .map_err(|e| match e {
                ArchiveError::TooLarge => ApiError::PayloadTooLarge(e.to_string()),
                ArchiveError::Spool(m) => ApiError::Internal(m),
                other => ApiError::InvalidRequest(format!("workspace {}: {other}", ws.name)),
            })?;
    let spec = cove_reconciler::container_spec(&ws);
    state
        .backend
        .put_archive(&spec, cove_runtime::WORKSPACE_HOME, spool.path())
        .await
        .map_err(|e| workspaces::backend_error(&ws, e))?;
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, files = pushed.files, bytes = pushed.bytes, to = %pushed.to, "pushed files");
    Ok((StatusCode::OK, Json(pushed)).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    /// (path, kind, content, mode, link target)
    type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], u32, Option<&'a str>);

    fn archive(entries: &[Entry]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, mode, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            // Written raw, so the test can make paths a well-behaved builder refuses.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn check(entries: &[Entry]) -> Result<Vec<(String, u64, u32)>, ArchiveError> {
        let mut out = Vec::new();
        rewrite(&archive(entries)[..], &mut out, Path::new("project/src"))?;
        let mut seen = vec![];
        for e in tar::Archive::new(&out[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((e.path().unwrap().display().to_string(), h.uid().unwrap(), h.mode().unwrap()));
        }
        Ok(seen)
    }

    use tar::EntryType::{Block, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn entries_land_under_the_target_owned_by_the_user_without_special_bits() {
        let seen = check(&[
            ("./", Directory, b"", 0o755, None),
            ("./a.txt", Regular, b"hello", 0o4755, None),
            ("./bin/", Directory, b"", 0o2775, None),
            ("bin/tool", Regular, b"#!/bin/sh\n", 0o755, None),
            ("link", Symlink, b"", 0o777, Some("a.txt")),
        ])
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("project".into(), 1000, 0o755),
                ("project/src".into(), 1000, 0o755),
                ("project/src/a.txt".into(), 1000, 0o755),
                ("project/src/bin".into(), 1000, 0o775),
                ("project/src/bin/tool".into(), 1000, 0o755),
                ("project/src/link".into(), 1000, 0o777),
            ]
        );
    }

    #[test]
    fn archives_that_climb_out_or_carry_specials_are_refused() {
        let escapes = |p: &str| ArchiveError::Escapes(p.to_string());
        assert_eq!(check(&[("../x", Regular, b"x", 0o644, None)]), Err(escapes("../x")));
        assert_eq!(check(&[("a/../../x", Regular, b"x", 0o644, None)]), Err(escapes("a/../../x")));
        assert_eq!(check(&[("/etc/passwd", Regular, b"x", 0o644, None)]), Err(escapes("/etc/passwd")));
        assert_eq!(
            check(&[("l", Symlink, b"", 0o777, Some("/etc")), ("l/passwd", Regular, b"x", 0o644, None)]),
            Err(ArchiveError::ThroughLink("l/passwd".into(), "l".into()))
        );
        assert_eq!(
            check(&[("h", Link, b"", 0o644, Some("/etc/shadow"))]),
            Err(ArchiveError::Unsupported("h".into(), "hard link"))
        );
        assert_eq!(check(&[("d", Block, b"", 0o644, None)]), Err(ArchiveError::Unsupported("d".into(), "device")));
        assert_eq!(check(&[("f", Fifo, b"", 0o644, None)]), Err(ArchiveError::Unsupported("f".into(), "FIFO")));
        assert!(matches!(
            rewrite(&b"not a tar archive at all"[..], Vec::new(), Path::new("p")),
            Err(ArchiveError::Malformed(_))
        ));
    }

    #[test]
    fn sparse_files_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holes.bin");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(4 << 20).unwrap();
        use std::io::{Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(3 << 20)).unwrap();
        file.write_all(b"data in the middle").unwrap();
        drop(file);
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all(".", dir.path()).unwrap();
        let mut out = Vec::new();
        let pushed = rewrite(&b.into_inner().unwrap()[..], &mut out, Path::new("p")).unwrap();
        assert_eq!((pushed.files, pushed.bytes), (1, 4 << 20));
        let mut archive = tar::Archive::new(&out[..]);
        let mut entry = archive
            .entries()
            .unwrap()
            .find(|e| e.as_ref().unwrap().path().unwrap().ends_with("holes.bin"))
            .unwrap()
            .unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, std::fs::read(&path).unwrap());
    }

    #[test]
    fn target_folders() {
        assert_eq!(target_folder("project").unwrap(), PathBuf::from("project"));
        assert_eq!(target_folder("/project/src/").unwrap(), PathBuf::from("project/src"));
        assert_eq!(target_folder("./a/./b").unwrap(), PathBuf::from("a/b"));
        assert!(target_folder("../etc").is_err());
        assert!(target_folder("a/../../b").is_err());
    }
}
