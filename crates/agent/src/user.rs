//! The workspace user: found in (or added to) the image's account files, and the one way
//! the agent starts processes on the user's behalf.
//!
//! The agent runs as root so it can prepare the image, but nothing it starts for the user
//! does: every command goes through [`WorkspaceUser::command`], which drops to the user's
//! uid and gid (std clears the supplementary groups on the way). If the agent itself is not
//! root (an image or engine that forces a user), commands simply run as that user.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

/// The uid (and gid) workspaces use unless the image says otherwise.
pub const DEFAULT_UID: u32 = 1000;
pub const DEFAULT_NAME: &str = "cove";
pub const DEFAULT_HOME: &str = "/home/cove";
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// Whether the agent can (and must) switch to `uid` for the user's processes.
    pub switch: bool,
    /// The workspace's environment secrets, in every process the agent starts for the user.
    pub secrets: SecretEnv,
}

/// Environment secrets: compared and cloned like a map, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub std::sync::Arc<BTreeMap<String, String>>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// What preparing the user did, for the startup log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    pub added_user: bool,
    pub added_group: bool,
    pub chowned_home: bool,
}

impl WorkspaceUser {
    /// The user running the tests, with `home`: processes run as it without switching.
    #[cfg(test)]
    pub(crate) fn current(home: &std::path::Path) -> Self {
        WorkspaceUser {
            name: "me".into(),
            uid: nix::unistd::Uid::effective().as_raw(),
            gid: nix::unistd::Gid::effective().as_raw(),
            home: home.to_path_buf(),
            shell: "/bin/sh".into(),
            switch: false,
            secrets: SecretEnv::default(),
        }
    }

    /// Finds the workspace user (uid 1000) in the passwd file under `root` (`/` in a
    /// workspace), adding it (and its group) if the image lacks it; makes its home (the
    /// persistent volume) the user's. When the agent is not root, the user is whoever the
    /// agent runs as.
    pub fn prepare(root: &Path) -> io::Result<(WorkspaceUser, Prepared)> {
        let etc = root.join("etc");
        let mut prepared = Prepared::default();
        if !Uid::effective().is_root() {
            let uid = Uid::effective().as_raw();
            let found = read_passwd(&etc.join("passwd")).into_iter().find(|u| u.uid == uid);
            let user = found.unwrap_or_else(|| WorkspaceUser {
                name: DEFAULT_NAME.into(),
                uid,
                gid: Gid::effective().as_raw(),
                home: std::env::var_os("HOME").map_or_else(|| PathBuf::from(DEFAULT_HOME), PathBuf::from),
                shell: "/bin/sh".into(),
                switch: false,
                secrets: SecretEnv::default(),
            });
            return Ok((WorkspaceUser { switch: false, ..user }, prepared));
        }
        let passwd = etc.join("passwd");
        let mut user = match read_passwd(&passwd).into_iter().find(|u| u.uid == DEFAULT_UID) {
            Some(user) => user,
            None => {
                let shell = if root.join("bin/bash").exists() { "/bin/bash" } else { "/bin/sh" };
                let line = format!(
                    "{DEFAULT_NAME}:x:{DEFAULT_UID}:{DEFAULT_UID}:Cove workspace user:{DEFAULT_HOME}:{shell}\n"
                );
                append(&passwd, &line)?;
                prepared.added_user = true;
                WorkspaceUser {
                    name: DEFAULT_NAME.into(),
                    uid: DEFAULT_UID,
                    gid: DEFAULT_UID,
                    home: DEFAULT_HOME.into(),
                    shell: shell.into(),
                    switch: true,
                    secrets: SecretEnv::default(),
                }
            }
        };
        user.switch = true;
        let group = etc.join("group");
        let groups = std::fs::read_to_string(&group).unwrap_or_default();
        if !groups.lines().any(|l| l.split(':').nth(2) == Some(&user.gid.to_string())) {
            append(&group, &format!("{}:x:{}:\n", user.name, user.gid))?;
            prepared.added_group = true;
        }
        let home = root.join(user.home.strip_prefix("/").unwrap_or(&user.home));
        std::fs::create_dir_all(&home)?;
        if std::fs::metadata(&home).map(|m| std::os::unix::fs::MetadataExt::uid(&m))? != user.uid {
            // A fresh volume is root's; the home must be the user's. Only the top directory:
            // whatever the user (or the image) put inside keeps its owner.
            nix::unistd::chown(&home, Some(Uid::from_raw(user.uid)), Some(Gid::from_raw(user.gid)))?;
            prepared.chowned_home = true;
        }
        Ok((user, prepared))
    }

    /// The user when the image's account files cannot be read or written: uid 1000 with the
    /// standard home, so that nothing runs as root for want of a passwd entry.
    pub fn fallback() -> WorkspaceUser {
        WorkspaceUser {
            name: DEFAULT_NAME.into(),
            uid: DEFAULT_UID,
            gid: DEFAULT_UID,
            home: DEFAULT_HOME.into(),
            shell: "/bin/sh".into(),
            switch: Uid::effective().is_root(),
            secrets: SecretEnv::default(),
        }
    }

    /// The environment every user process starts with: the image's (what the agent was
    /// started with, minus Cove's own variables), then the user's identity.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> =
            std::env::vars().filter(|(k, _)| !k.starts_with("COVE_AGENT_")).collect();
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        env.entry("LANG".into()).or_insert_with(|| "C.UTF-8".into());
        env.extend(self.secrets.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("HOME".into(), self.home.display().to_string());
        env.insert("USER".into(), self.name.clone());
        env.insert("LOGNAME".into(), self.name.clone());
        env.insert("SHELL".into(), self.shell.clone());
        env
    }

    /// A command that runs as the workspace user, in its home, with [`Self::env`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command.env_clear().envs(self.env()).current_dir(&self.home).kill_on_drop(true);
        if self.switch {
            command.uid(self.uid).gid(self.gid);
        }
        command
    }

    /// The user's login shell as a command: `shell -l`, or `shell -c CMD` for a command.
    pub fn shell_command(&self, command_line: Option<&str>) -> tokio::process::Command {
        let mut command = self.command(&self.shell);
        match command_line {
            Some(line) => command.arg("-c").arg(line),
            None => command.arg("-l"),
        };
        command
    }
}

fn append(path: &Path, line: &str) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    file.write_all(line.as_bytes())
}

/// Entries of a passwd file; unreadable or malformed lines are skipped.
fn read_passwd(path: &Path) -> Vec<WorkspaceUser> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(parse_passwd_line).collect()
}

fn parse_passwd_line(line: &str) -> Option<WorkspaceUser> {
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || line.starts_with('#') {
        return None;
    }
    Some(WorkspaceUser {
        name: fields[0].to_string(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
        shell: if fields[6].is_empty() { "/bin/sh".into() } else { fields[6].to_string() },
        switch: true,
        secrets: SecretEnv::default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let u = parse_passwd_line("cove:x:1000:1000:Cove:/home/cove:/bin/bash").unwrap();
        assert_eq!((u.name.as_str(), u.uid, u.gid, u.shell.as_str()), ("cove", 1000, 1000, "/bin/bash"));
        assert_eq!(u.home, PathBuf::from("/home/cove"));
        assert_eq!(parse_passwd_line("x:x:1000:1000:::").unwrap().shell, "/bin/sh");
        assert_eq!(parse_passwd_line("garbage"), None);
        assert_eq!(parse_passwd_line("a:x:notanumber:1:::/bin/sh"), None);
    }

    #[test]
    fn prepare_as_root_adds_a_missing_user_once() {
        if !Uid::effective().is_root() {
            return; // The root path needs root; the tests run as root here and in CI.
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
        let (user, prepared) = WorkspaceUser::prepare(dir.path()).unwrap();
        assert!(prepared.added_user && prepared.added_group, "{prepared:?}");
        assert_eq!(user.uid, DEFAULT_UID);
        let (again, prepared) = WorkspaceUser::prepare(dir.path()).unwrap();
        assert_eq!(prepared, Prepared::default());
        assert_eq!(again.uid, user.uid);
        let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert_eq!(passwd.matches(":1000:").count(), 1, "{passwd}");
        let home = std::fs::metadata(dir.path().join("home/cove")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&home), DEFAULT_UID);
    }
}
