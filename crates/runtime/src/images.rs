//! Images without a registry: Cove builds the images it needs through the engine's own
//! build API from a root file system made on this machine, so a fresh install works
//! with no registry access and no Dockerfile on disk.
//!
//! Both images are `FROM scratch` plus one `ADD rootfs.tar /`: the engine unpacks the
//! archive with its owners and modes intact, which `COPY` of a directory would not keep.
//! Each image is tagged by a hash of what it is made from, so an unchanged image is
//! never rebuilt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::query_parameters::{BuildImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::docker::{engine_error, negotiate};
use crate::{BackendError, Result};

pub const TINY_REPO: &str = "cove/tiny";
pub const BASE_REPO: &str = "cove/base";
/// Cove's default workspace image, once `bootstrap_base_image` has run.
pub const BASE_IMAGE: &str = "cove/base:latest";
/// The hash an image was built from.
pub const LABEL_CONTENT_HASH: &str = "cove.content-hash";

/// Named in messages where the functions here have only a client, not its address.
const ENGINE: &str = "the container engine";
/// A fixed time stamp keeps the tiny root file system, and so its hash, reproducible.
const MTIME: u64 = 1_704_067_200;

const TINY_DOCKERFILE: &str = "FROM scratch\nADD rootfs.tar /\nCMD [\"/bin/sh\"]\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ncove:x:1000:1000::/home/cove:/bin/sh\n";
const GROUP: &str = "root:x:0:\ncove:x:1000:\n";

const BASE_SUITE: &str = "bookworm";
const BASE_PACKAGES: &[&str] =
    &["bash", "git", "curl", "ca-certificates", "sudo", "openssh-server", "python3", "procps"];
const BASE_DOCKERFILE: &str = "FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD [\"/bin/bash\"]\n";
/// Run in the debootstrapped root. SSH host keys are removed because an image shared by
/// every workspace must not carry one key pair for all of them; each workspace makes
/// its own. The host's resolver and host name are not the image's business either.
const BASE_SETUP: &str = r#"set -eu
groupadd --gid 1000 cove
useradd --uid 1000 --gid 1000 --home-dir /home/cove --create-home --shell /bin/bash cove
mkdir -p /home/cove/project
chown -R 1000:1000 /home/cove
printf 'cove ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/cove
chmod 0440 /etc/sudoers.d/cove
rm -f /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
: > /etc/resolv.conf
echo cove > /etc/hostname
"#;

/// Builds (once) a tiny image from the host's static busybox: a shell, the usual tools,
/// the `cove` user (uid 1000) and its home. Made for tests: it builds in about a second.
/// Returns the tag, `cove/tiny:<hash>`.
pub async fn ensure_tiny_image(docker: &Docker, mut progress: impl FnMut(&str)) -> Result<String> {
    negotiate(docker).await.map_err(|e| engine_error(ENGINE, "ask the engine for its version", e))?;
    let busybox = tokio::fs::read("/bin/busybox")
        .await
        .map_err(|e| BackendError::Engine(format!("cannot read /bin/busybox ({e}); install busybox-static")))?;
    let listed = tokio::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .await
        .map_err(|e| BackendError::Engine(format!("cannot run /bin/busybox --list: {e}")))?;
    if !listed.status.success() {
        return Err(BackendError::Engine(
            "/bin/busybox --list failed; install busybox-static, whose busybox lists its applets".into(),
        ));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();

    let rootfs = tiny_rootfs(&busybox, &applets)
        .map_err(|e| BackendError::Engine(format!("cannot make the tiny root file system: {e}")))?;
    let hash = content_hash(&[&rootfs, TINY_DOCKERFILE.as_bytes()]);
    let tag = format!("{TINY_REPO}:{}", &hash[..12]);
    if image_exists(docker, &tag).await? {
        progress(&format!("image {tag} is present"));
        return Ok(tag);
    }
    let dockerfile = with_label(TINY_DOCKERFILE, &hash);
    let context = (|| {
        let mut b = tar::Builder::new(Vec::new());
        append_file(&mut b, "Dockerfile", dockerfile.as_bytes())?;
        append_file(&mut b, "rootfs.tar", &rootfs)?;
        b.into_inner()
    })()
    .map_err(|e| BackendError::Engine(format!("cannot make the build context: {e}")))?;
    progress(&format!("building {tag}"));
    build(docker, &tag, Context::Memory(context), &mut progress).await?;
    Ok(tag)
}

/// Builds (once per definition) Cove's default workspace image: Debian bookworm made by
/// debootstrap, with git, curl, python3, sudo and an SSH server, and the `cove` user
/// (uid 1000, passwordless sudo). Tags it `cove/base:<hash>` and `cove/base:latest`, where
/// the hash covers the package list and the set-up script; returns the hashed tag.
/// Needs root, `debootstrap` and a Debian mirror; takes about a minute.
pub async fn bootstrap_base_image(docker: &Docker, mut progress: impl FnMut(&str)) -> Result<String> {
    negotiate(docker).await.map_err(|e| engine_error(ENGINE, "ask the engine for its version", e))?;
    let hash = content_hash(&[
        BASE_SUITE.as_bytes(),
        BASE_PACKAGES.join(",").as_bytes(),
        BASE_SETUP.as_bytes(),
        BASE_DOCKERFILE.as_bytes(),
    ]);
    let tag = format!("{BASE_REPO}:{}", &hash[..12]);
    if image_exists(docker, &tag).await? {
        progress(&format!("image {tag} is present"));
        tag_latest(docker, &tag).await?;
        return Ok(tag);
    }
    let fail = |what: &str, e: std::io::Error| BackendError::Engine(format!("{what}: {e}"));
    let work = WorkDir::new().map_err(|e| fail("cannot make a temporary directory", e))?;
    let root = work.path.join("rootfs");
    let mirror = debian_mirror();
    progress(&format!("debootstrap {BASE_SUITE} from {mirror} into {}", root.display()));
    let include = format!("--include={}", BASE_PACKAGES.join(","));
    let mut debootstrap = tokio::process::Command::new("debootstrap");
    debootstrap.args(["--variant=minbase", &include, BASE_SUITE]).arg(&root).arg(&mirror);
    run(debootstrap, "debootstrap", "install debootstrap (apt-get install debootstrap) and run as root", &mut progress)
        .await?;

    progress("setting up the cove user");
    let mut setup = tokio::process::Command::new("chroot");
    setup
        .arg(&root)
        .args(["/bin/sh", "-c", BASE_SETUP])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LANG", "C");
    run(setup, "the set-up script in the new root", "see the lines above", &mut progress).await?;
    // Nothing of the host may remain mounted inside when it is archived.
    unmount_under(&root);

    progress("archiving the root file system");
    let rootfs_tar = work.path.join("rootfs.tar");
    // GNU tar keeps owners, modes, device nodes and hard links exactly.
    let mut archive = tokio::process::Command::new("tar");
    archive
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*", "-cf"])
        .arg(&rootfs_tar)
        .arg(".");
    run(archive, "tar", "install GNU tar", &mut progress).await?;

    let context_path = work.path.join("context.tar");
    let dockerfile = with_label(BASE_DOCKERFILE, &hash);
    {
        let context_path = context_path.clone();
        let rootfs_tar = rootfs_tar.clone();
        tokio::task::spawn_blocking(move || write_context(&context_path, &dockerfile, &rootfs_tar))
            .await
            .map_err(|e| BackendError::Engine(format!("the build context writer failed: {e}")))?
            .map_err(|e| fail("cannot make the build context", e))?;
    }
    progress(&format!("building {tag}"));
    build(docker, &tag, Context::File(context_path), &mut progress).await?;
    tag_latest(docker, &tag).await?;
    Ok(tag)
}

/// Runs a command, passing each line of its output to `progress`; on failure the error
/// names the command, its status and its last lines.
async fn run(
    mut command: tokio::process::Command,
    what: &str,
    hint: &str,
    progress: &mut impl FnMut(&str),
) -> Result<()> {
    // Killed if the build is abandoned; the work directory's guard then unmounts what
    // debootstrap left mounted.
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| BackendError::Engine(format!("cannot run {what} ({e}); {hint}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(BackendError::Engine(format!("cannot read the output of {what}")));
    };
    let mut out = BufReader::new(stdout).lines();
    let mut err = BufReader::new(stderr).lines();
    let (mut out_open, mut err_open) = (true, true);
    let mut tail: Vec<String> = Vec::new();
    while out_open || err_open {
        let (line, from_out) = tokio::select! {
            line = out.next_line(), if out_open => (line, true),
            line = err.next_line(), if err_open => (line, false),
        };
        match line {
            Ok(Some(line)) => {
                progress(&line);
                tail.push(line);
                if tail.len() > 8 {
                    tail.remove(0);
                }
            }
            Ok(None) | Err(_) if from_out => out_open = false,
            Ok(None) | Err(_) => err_open = false,
        }
    }
    let status = child.wait().await.map_err(|e| BackendError::Engine(format!("cannot wait for {what}: {e}")))?;
    if !status.success() {
        return Err(BackendError::Engine(format!("{what} failed ({status}); last output: {}", tail.join(" | "))));
    }
    Ok(())
}

async fn image_exists(docker: &Docker, tag: &str) -> Result<bool> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(engine_error(ENGINE, &format!("look up image {tag}"), e)),
    }
}

async fn tag_latest(docker: &Docker, tag: &str) -> Result<()> {
    let (repo, _) = tag.split_once(':').unwrap_or((tag, ""));
    let options = TagImageOptionsBuilder::new().repo(repo).tag("latest").build();
    docker
        .tag_image(tag, Some(options))
        .await
        .map_err(|e| engine_error(ENGINE, &format!("tag {tag} as {repo}:latest"), e))
}

/// A build context: small ones are sent from memory, large ones streamed from a file.
enum Context {
    Memory(Vec<u8>),
    File(PathBuf),
}

async fn build(docker: &Docker, tag: &str, context: Context, progress: &mut impl FnMut(&str)) -> Result<()> {
    let body = match context {
        Context::Memory(bytes) => bollard::body_full(bytes.into()),
        Context::File(path) => {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| BackendError::Engine(format!("cannot open the build context {}: {e}", path.display())))?;
            bollard::body_try_stream(tokio_util::io::ReaderStream::new(file))
        }
    };
    // forcerm: a failed build on Podman otherwise leaves a hidden buildah container.
    let options = BuildImageOptionsBuilder::new().dockerfile("Dockerfile").t(tag).rm(true).forcerm(true).build();
    let context = format!("build image {tag}");
    let mut stream = docker.build_image(options, None, Some(body));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| engine_error(ENGINE, &context, e))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(BackendError::Engine(format!("{context}: {message}")));
        }
        for text in [info.stream, info.status].into_iter().flatten() {
            for line in text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()) {
                progress(line);
            }
        }
    }
    // A build that ends without an error must have made the image; check rather than trust.
    if !image_exists(docker, tag).await? {
        return Err(BackendError::Engine(format!("{context}: the engine finished without making the image")));
    }
    Ok(())
}

fn content_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so that moving bytes between parts changes the hash.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

fn with_label(dockerfile: &str, hash: &str) -> String {
    format!("{dockerfile}LABEL {LABEL_CONTENT_HASH}={hash}\n")
}

/// The Debian mirror this machine uses (the first `URIs:` of its deb822 sources), so the
/// bootstrap goes where apt already goes.
fn debian_mirror() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    mirror_from_sources(&sources).unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

fn mirror_from_sources(sources: &str) -> Option<String> {
    sources
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .find_map(|uris| uris.split_whitespace().next())
        .map(String::from)
}

/// The tiny image's root file system as a tar archive, every owner and mode set here
/// rather than taken from the host.
fn tiny_rootfs(busybox: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, uid) in [
        ("bin", 0o755, 0),
        ("dev", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/cove", 0o755, 1000),
        ("home/cove/project", 0o755, 1000),
        ("proc", 0o555, 0),
        ("root", 0o700, 0),
        ("run", 0o755, 0),
        ("sys", 0o555, 0),
        ("tmp", 0o1777, 0),
        ("usr", 0o755, 0),
        ("var", 0o755, 0),
        ("var/tmp", 0o1777, 0),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, uid);
        b.append_data(&mut h, path, std::io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, 0);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", busybox)?;
    for (path, content) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, path, content.as_bytes())?;
    }
    // Scripts look in /usr/bin and /sbin too (`#!/usr/bin/env`), so those lead to /bin.
    let links = [("sbin", "bin"), ("usr/bin", "../bin"), ("usr/sbin", "../bin")];
    let applet_links = applets.iter().map(|a| (format!("bin/{a}"), "busybox"));
    for (path, target) in links.iter().map(|(p, t)| (p.to_string(), *t)).chain(applet_links) {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, &path, target)?;
    }
    b.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

fn append_file<W: Write>(b: &mut tar::Builder<W>, path: &str, content: &[u8]) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, path, content)
}

fn write_context(path: &Path, dockerfile: &str, rootfs_tar: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    append_file(&mut b, "Dockerfile", dockerfile.as_bytes())?;
    let rootfs = std::fs::File::open(rootfs_tar)?;
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    h.set_size(rootfs.metadata()?.len());
    b.append_data(&mut h, "rootfs.tar", rootfs)?;
    b.into_inner()?.flush()
}

/// A temporary directory for the bootstrap. debootstrap bind-mounts host devices (and
/// /proc, /sys) into the new root; if it dies midway they stay mounted, and deleting the
/// directory blindly would reach into them. So leftovers are unmounted first, and the
/// directory is kept (with a warning) if anything is still mounted.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("cove-base-").tempdir()?;
        Ok(Self { path: dir.keep() })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        unmount_under(&self.path);
        if !mounts_under(&self.path).is_empty() {
            tracing::warn!(dir = %self.path.display(), "file systems are still mounted under the bootstrap directory; leaving it");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the bootstrap directory");
        }
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        // Lazy, so that a process still holding a file open cannot keep it mounted.
        let status = std::process::Command::new("umount").arg("-l").arg(&mount).status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(mount = %mount.display(), "cannot unmount a leftover of debootstrap");
        }
    }
}

/// mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors() {
        let sources = "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://mirror.example/debian http://b\nSuites: bookworm\n\nTypes: deb\nURIs: http://security\n";
        assert_eq!(mirror_from_sources(sources).as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(mirror_from_sources("Types: deb\n"), None);
    }

    #[test]
    fn mount_paths() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b/c"), "/tmp/a b/c");
        assert_eq!(unescape_mount_path(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mount_path(r"/plain\"), r"/plain\");
    }

    #[test]
    fn tiny_rootfs_is_reproducible_and_owned_right() -> std::io::Result<()> {
        let applets = vec!["sh".to_string(), "ls".to_string()];
        let a = tiny_rootfs(b"binary", &applets)?;
        assert_eq!(a, tiny_rootfs(b"binary", &applets)?);
        let mut archive = tar::Archive::new(a.as_slice());
        let mut seen = vec![];
        for entry in archive.entries()? {
            let entry = entry?;
            let h = entry.header();
            seen.push((entry.path()?.display().to_string(), h.mode()?, h.uid()?, h.gid()?));
        }
        let find = |p: &str| seen.iter().find(|e| e.0.trim_end_matches('/') == p).cloned();
        assert_eq!(find("home/cove/project"), Some(("home/cove/project".into(), 0o755, 1000, 1000)));
        assert_eq!(find("tmp").map(|e| e.1), Some(0o1777));
        assert_eq!(find("bin/busybox").map(|e| (e.1, e.2)), Some((0o755, 0)));
        assert!(find("bin/sh").is_some() && find("bin/ls").is_some());
        Ok(())
    }
}
