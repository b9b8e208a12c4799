//! The dev container lifecycle commands of the project's devcontainer.json, run by the
//! agent as the workspace user in `~/project` (issue 5).
//!
//! * `onCreateCommand`, `updateContentCommand`, `postCreateCommand` run once per workspace:
//!   a marker on the volume (`~/.cove/lifecycle/<hook>.done`, written only on success)
//!   remembers each, so a restart does not run them again and a failed one runs again.
//! * `postStartCommand` runs on every start, `postAttachCommand` on every terminal attach
//!   and interactive SSH session ([`on_attach`]), once the start's hooks succeeded.
//! * `waitFor` (default `updateContentCommand`) says when the agent reports ready; the later
//!   hooks go on in the background, and their failure is still reported.
//! * A failure is the agent's state `Failed`, naming the hook, the entry and the exit
//!   status; later hooks do not run, and the workspace stays usable to fix it.
//!
//! Cove keeps the code in `~/project`, so both `${localWorkspaceFolder}` and
//! `${containerWorkspaceFolder}` are `~/project` (a `workspaceFolder` in the file is
//! overridden), and a configuration without `image` or `build` is fine: the image is
//! whatever the workspace runs. `initializeCommand` runs on the Cove host, the control
//! plane's business (`server::devcontainers`), never here. `containerEnv` and `remoteEnv`
//! are added to the environment of the hooks and of the terminal's and SSH's processes
//! ([`Lifecycle::apply_env`]).
//! Before the hooks, [`configured`] waits until the control plane says this container is the
//! one the configuration wants (it may build an image and replace the container first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cove_core::agent::AgentState;
use cove_devcontainer::model::{Command, WaitFor};
use tokio::io::{AsyncBufReadExt, AsyncRead};

use crate::user::WorkspaceUser;
use crate::{Agent, StateReporter};

const MARKERS: &str = ".cove/lifecycle";

/// One lifecycle hook, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    OnCreate,
    UpdateContent,
    PostCreate,
    PostStart,
    PostAttach,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::OnCreate => "onCreateCommand",
            Hook::UpdateContent => "updateContentCommand",
            Hook::PostCreate => "postCreateCommand",
            Hook::PostStart => "postStartCommand",
            Hook::PostAttach => "postAttachCommand",
        }
    }

    /// Whether the hook runs once per workspace (a marker remembers it).
    pub fn once(self) -> bool {
        matches!(self, Hook::OnCreate | Hook::UpdateContent | Hook::PostCreate)
    }

    fn command(self, lifecycle: &cove_devcontainer::model::Lifecycle) -> Option<&Command> {
        match self {
            Hook::OnCreate => lifecycle.on_create.as_ref(),
            Hook::UpdateContent => lifecycle.update_content.as_ref(),
            Hook::PostCreate => lifecycle.post_create.as_ref(),
            Hook::PostStart => lifecycle.post_start.as_ref(),
            Hook::PostAttach => lifecycle.post_attach.as_ref(),
        }
    }
}

/// The hooks of a start, in order; the one after which the agent is ready is `waitFor`'s.
const START_HOOKS: [Hook; 4] = [Hook::OnCreate, Hook::UpdateContent, Hook::PostCreate, Hook::PostStart];

/// How many of [`START_HOOKS`] must finish before the agent reports ready. `waitFor:
/// postAttachCommand` cannot wait for an attach nobody makes: ready after postStart.
fn ready_after(wait_for: WaitFor) -> usize {
    match wait_for {
        WaitFor::InitializeCommand => 0,
        WaitFor::OnCreateCommand => 1,
        WaitFor::UpdateContentCommand => 2,
        WaitFor::PostCreateCommand => 3,
        WaitFor::PostStartCommand | WaitFor::PostAttachCommand => 4,
    }
}

/// Why a hook failed: "step 'postCreateCommand' (entry NAME) failed (exit N)".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step '{hook}'{} failed ({reason})", entry.as_ref().map(|e| format!(" (entry {e})")).unwrap_or_default())]
pub struct Failure {
    pub hook: &'static str,
    pub entry: Option<String>,
    /// `exit N`, `signal N`, or why it could not run.
    pub reason: String,
}

/// Environment changes for the user's processes: `Some` sets, `None` removes.
pub type EnvOverrides = BTreeMap<String, Option<String>>;

/// What [`on_attach`] and the user's processes need from the configuration, shared through
/// [`Agent`]: empty until the configuration is read.
#[derive(Clone, Default)]
pub struct Lifecycle {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    env: EnvOverrides,
    /// Set once the start's hooks all succeeded.
    post_attach: Option<Command>,
    reporter: Option<StateReporter>,
}

impl Lifecycle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `containerEnv` and `remoteEnv`, as changes to [`WorkspaceUser::env`].
    pub fn env(&self) -> EnvOverrides {
        self.lock().env.clone()
    }

    /// Adds `containerEnv` and `remoteEnv` to a command made by [`WorkspaceUser::command`].
    pub fn apply_env(&self, command: &mut tokio::process::Command) {
        apply(command, &self.lock().env);
    }
}

pub(crate) fn apply(command: &mut tokio::process::Command, env: &EnvOverrides) {
    for (key, value) in env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
}

/// devcontainer.json's path in the project, when the workspace was made with one: set once
/// from the control plane's answer about the workspace, before anything reads the file.
static CONFIG_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Remembers the workspace's chosen devcontainer.json (relative to `~/project`).
pub fn choose_config(path: &str) {
    let _ = CONFIG_PATH.set(PathBuf::from(path));
}

/// The project's devcontainer.json: the chosen one, or the specification's search order.
fn find_config(project: &Path) -> Result<PathBuf, cove_devcontainer::Error> {
    cove_devcontainer::find(project, CONFIG_PATH.get().map(PathBuf::as_path))
}

/// The project's configuration as Cove uses it, or `None` when the project has none.
pub fn read(user: &WorkspaceUser) -> Result<Option<cove_devcontainer::DevContainer>, cove_devcontainer::Error> {
    use cove_devcontainer::Error;
    let project = user.home.join("project");
    let file = match find_config(&project) {
        Ok(file) => file,
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let text = cove_devcontainer::load::read(&file)?;
    let value = cove_devcontainer::jsonc::parse(&text).map_err(|error| Error::Syntax { file: file.clone(), error })?;
    let text = match value {
        serde_json::Value::Object(mut raw) => {
            // The code is in ~/project, whatever the file says; the image is the workspace's.
            raw.insert("workspaceFolder".into(), project.display().to_string().into());
            if !["image", "build", "dockerFile", "dockerfile", "dockerComposeFile"].iter().any(|k| raw.contains_key(*k))
            {
                raw.insert("image".into(), "cove-workspace".into());
            }
            serde_json::Value::Object(raw).to_string()
        }
        // Not an object: the resolver says so.
        _ => text,
    };
    let env = user.env();
    let input = cove_devcontainer::Input { local_folder: &project, config_file: &file, text: &text, env: &env };
    Ok(Some(cove_devcontainer::resolve(&input)?.config))
}

/// `containerEnv`, then `remoteEnv` (with `${containerEnv:VAR}` filled in), over `base`.
pub fn env_overrides(
    config: &cove_devcontainer::DevContainer,
    base: &BTreeMap<String, String>,
) -> Result<EnvOverrides, cove_devcontainer::Error> {
    let mut container = base.clone();
    container.extend(config.container_env.clone());
    let mut env: EnvOverrides = config.container_env.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
    env.extend(config.remote_env_with(&container)?);
    Ok(env)
}

/// Where a hook runs: as `user`, in `dir`, with `env` over the user's environment.
pub struct Runner<'a> {
    pub user: &'a WorkspaceUser,
    pub dir: PathBuf,
    pub env: &'a EnvOverrides,
}

impl Runner<'_> {
    /// Runs `command` for `hook` (object entries in parallel, all of them to the end),
    /// passing every output line to stdout prefixed with the hook (and entry). The first
    /// failing entry, by name, is the failure.
    pub async fn run(&self, hook: Hook, command: &Command) -> Result<(), Failure> {
        let processes = command.processes();
        let runs = processes.iter().map(|(entry, argv)| self.process(hook, *entry, argv));
        let results = futures::future::join_all(runs).await;
        results.into_iter().collect::<Result<Vec<()>, Failure>>().map(|_| ())
    }

    async fn process(&self, hook: Hook, entry: Option<&str>, argv: &[String]) -> Result<(), Failure> {
        let fail = |reason: String| Failure { hook: hook.name(), entry: entry.map(str::to_string), reason };
        let Some((program, args)) = argv.split_first() else {
            return Err(fail("the command is empty".into()));
        };
        let prefix = match entry {
            Some(entry) => format!("{}[{entry}]", hook.name()),
            None => hook.name().to_string(),
        };
        let mut command = self.user.command(program);
        apply(&mut command, self.env);
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(|e| fail(format!("cannot run {program}: {e}")))?;
        let stdout = child.stdout.take().map(|out| tokio::spawn(pass_on(out, prefix.clone())));
        let stderr = child.stderr.take().map(|err| tokio::spawn(pass_on(err, prefix.clone())));
        let status = child.wait().await;
        // The pipes close when the process (and anything it left holding them) is done.
        for task in [stdout, stderr].into_iter().flatten() {
            let _ = task.await;
        }
        let status = status.map_err(|e| fail(format!("cannot wait for {program}: {e}")))?;
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        Err(fail(match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => format!("{status}"),
        }))
    }

    /// Runs a once-per-workspace hook unless its marker says it succeeded before, and
    /// writes the marker when it succeeds now. `Ok(false)`: it had run before.
    pub async fn run_once(&self, hook: Hook, command: &Command) -> Result<bool, Failure> {
        let marker = marker(self.user, hook);
        if marker.exists() {
            return Ok(false);
        }
        self.run(hook, command).await?;
        if let Err(e) = crate::write_marker(self.user, &marker) {
            println!("cove agent: cannot remember that {} ran ({e}); it runs again at the next start", hook.name());
        }
        Ok(true)
    }
}

fn marker(user: &WorkspaceUser, hook: Hook) -> PathBuf {
    user.home.join(MARKERS).join(format!("{}.done", hook.name()))
}

async fn pass_on(stream: impl AsyncRead + Unpin, prefix: String) {
    let mut lines = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => println!("{prefix}: {}", String::from_utf8_lossy(&line).trim_end()),
        }
    }
}

/// Reads the project's configuration and runs the start's hooks in the background, calling
/// `ready` once `waitFor`'s hook is done (or at once without a configuration, or when it
/// cannot be read: then the state is `Failed` with the parser's message first).
pub fn start(agent: &Agent, reporter: StateReporter, ready: impl FnOnce() + Send + 'static) {
    let agent = agent.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut call_ready = || {
            if let Some(ready) = ready.take() {
                ready();
            }
        };
        let user = agent.user.clone();
        let read = read(&user).and_then(|config| match config {
            Some(config) => Ok(Some((env_overrides(&config, &user.env())?, config))),
            None => Ok(None),
        });
        let (env, config) = match read {
            Ok(Some(found)) => found,
            Ok(None) => return call_ready(),
            Err(e) => {
                let message = format!("step 'read devcontainer.json' failed: {e}");
                println!("cove agent: {message}");
                reporter.report(AgentState::Failed, Some(message));
                return call_ready();
            }
        };
        {
            let mut shared = agent.lifecycle.lock();
            shared.env = env.clone();
            shared.reporter = Some(reporter.clone());
        }
        if let Some(editor) = agent.editor.clone() {
            tokio::spawn(customize_editor(user.clone(), editor, config.vscode.clone(), env.clone()));
        }
        let runner = Runner { user: &user, dir: user.home.join("project"), env: &env };
        let ready_at = ready_after(config.wait_for);
        for (i, hook) in START_HOOKS.into_iter().enumerate() {
            if i == ready_at {
                call_ready();
            }
            let Some(command) = hook.command(&config.lifecycle) else { continue };
            if hook.once() && marker(&user, hook).exists() {
                continue;
            }
            println!("cove agent: running {}", hook.name());
            if i < ready_at {
                reporter.report(AgentState::Starting, Some(format!("running {}", hook.name())));
            }
            let result = if hook.once() {
                runner.run_once(hook, command).await.map(|_| ())
            } else {
                runner.run(hook, command).await
            };
            if let Err(failure) = result {
                println!("cove agent: {failure}");
                reporter.report(AgentState::Failed, Some(failure.to_string()));
                return call_ready();
            }
            println!("cove agent: {} done", hook.name());
        }
        agent.lifecycle.lock().post_attach = config.lifecycle.post_attach.clone();
        call_ready();
    });
}

/// Before the hooks: asks the control plane whether this container is the one the project's
/// devcontainer.json wants (it may build an image and replace the container first), and
/// waits while it works, passing its progress on as the agent's state. `true` to run the
/// hooks here. Without a configuration there is nothing to ask; without an answer (an
/// older control plane, or none) the hooks run.
pub async fn configured(user: &WorkspaceUser, control: &crate::control::Control, reporter: &StateReporter) -> bool {
    use cove_core::agent::{DevcontainerAction, DevcontainerAnswer, DevcontainerQuestion};
    if matches!(find_config(&user.home.join("project")), Err(cove_devcontainer::Error::NotFound { .. })) {
        return true;
    }
    let Ok(spec_hash) = std::env::var("COVE_SPEC_HASH") else { return true };
    let mut first = true;
    let mut last = None;
    let mut errors = 0;
    loop {
        let question = DevcontainerQuestion { spec_hash: spec_hash.clone(), first };
        match control.ask::<_, DevcontainerAnswer>("/v1/devcontainer", &question).await {
            Ok(answer) => {
                first = false;
                errors = 0;
                match answer.action {
                    DevcontainerAction::Proceed => return true,
                    DevcontainerAction::Failed => {
                        let message = answer.message.unwrap_or_else(|| "applying devcontainer.json failed".into());
                        println!("cove agent: {message}");
                        reporter.report(AgentState::Failed, Some(message));
                        return false;
                    }
                    DevcontainerAction::Wait => {
                        let message = answer.message.map(|m| format!("devcontainer.json: {m}"));
                        if message != last {
                            if let Some(m) = &message {
                                println!("cove agent: {m}");
                            }
                            reporter.report(AgentState::Starting, message.clone());
                            last = message;
                        }
                    }
                }
            }
            Err(crate::control::ControlError::Refused { status, .. }) if status == http::StatusCode::NOT_FOUND => {
                return true
            }
            Err(e) => {
                errors += 1;
                if errors > 30 {
                    println!("cove agent: cannot ask the control plane about devcontainer.json ({e}); running the hooks here");
                    return true;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `customizations.vscode` into the editor, which restarts when it has new extensions or
/// runs without the configuration's environment.
async fn customize_editor(
    user: Arc<WorkspaceUser>,
    editor: crate::editor::Editor,
    vscode: cove_devcontainer::model::VsCode,
    env: EnvOverrides,
) {
    let project = user.home.join("project");
    let config_dir =
        find_config(&project).ok().and_then(|file| file.parent().map(Path::to_path_buf)).unwrap_or(project);
    let applied = crate::customize::apply(&user, editor.config(), &vscode, &config_dir, &env).await;
    if !applied.installed.is_empty() || editor.env_differs(&env) {
        editor.restart();
    }
}

/// `postAttachCommand`, in the background, for one terminal attach or SSH session; nothing
/// until the start's hooks succeeded.
pub fn on_attach(agent: &Agent) {
    let (command, env, reporter) = {
        let shared = agent.lifecycle.lock();
        let Some(command) = shared.post_attach.clone() else { return };
        (command, shared.env.clone(), shared.reporter.clone())
    };
    let user = agent.user.clone();
    tokio::spawn(async move {
        println!("cove agent: running {}", Hook::PostAttach.name());
        let runner = Runner { user: &user, dir: user.home.join("project"), env: &env };
        match runner.run(Hook::PostAttach, &command).await {
            Ok(()) => println!("cove agent: {} done", Hook::PostAttach.name()),
            Err(failure) => {
                println!("cove agent: {failure}");
                if let Some(reporter) = reporter {
                    reporter.report(AgentState::Failed, Some(failure.to_string()));
                }
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn user(home: &Path) -> WorkspaceUser {
        WorkspaceUser::current(home)
    }

    fn shell(s: &str) -> Command {
        Command::Shell(s.into())
    }

    struct Home {
        dir: tempfile::TempDir,
        user: WorkspaceUser,
        env: EnvOverrides,
    }

    impl Home {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("project")).unwrap();
            let user = user(dir.path());
            Home { dir, user, env: EnvOverrides::new() }
        }
        fn runner(&self) -> Runner<'_> {
            Runner { user: &self.user, dir: self.dir.path().join("project"), env: &self.env }
        }
        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.dir.path().join("project").join(name)).unwrap_or_default()
        }
    }

    #[tokio::test]
    async fn the_three_forms_run_in_the_project_with_the_env() {
        let mut home = Home::new();
        home.env.insert("GREETING".into(), Some("hi there".into()));
        home.env.insert("HOME_AWAY".into(), None);
        let runner = home.runner();
        runner.run(Hook::PostStart, &shell("echo \"$GREETING\" > string; pwd >> string")).await.unwrap();
        let argv = Command::Exec(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"$1\" > array".into(),
            "x".into(),
            "a b; c".into(),
        ]);
        runner.run(Hook::PostStart, &argv).await.unwrap();
        let object = Command::Parallel(BTreeMap::from([
            ("one".into(), shell("echo 1 > one")),
            ("two".into(), Command::Exec(vec!["/bin/sh".into(), "-c".into(), "echo 2 > two".into()])),
        ]));
        runner.run(Hook::PostStart, &object).await.unwrap();
        let project = home.dir.path().join("project");
        assert_eq!(home.read("string"), format!("hi there\n{}\n", project.display()));
        // No shell: the argument with a space and a semicolon arrives as it was written.
        assert_eq!(home.read("array"), "a b; c\n");
        assert_eq!((home.read("one").as_str(), home.read("two").as_str()), ("1\n", "2\n"));
    }

    #[tokio::test]
    async fn object_entries_run_in_parallel() {
        // Each entry waits for the other's file: only parallel entries can both finish.
        let home = Home::new();
        let wait_for = |mine: &str, theirs: &str| {
            shell(&format!(
                "touch {mine}; i=0; while [ ! -e {theirs} ]; do i=$((i+1)); [ $i -gt 200 ] && exit 7; sleep 0.05; done"
            ))
        };
        let object =
            Command::Parallel(BTreeMap::from([("a".into(), wait_for("a", "b")), ("b".into(), wait_for("b", "a"))]));
        home.runner().run(Hook::PostCreate, &object).await.unwrap();
    }

    #[tokio::test]
    async fn a_failure_names_the_hook_the_entry_and_the_exit_status() {
        let home = Home::new();
        let object = Command::Parallel(BTreeMap::from([
            ("fine".into(), shell("sleep 0.2; echo done > fine")),
            ("broken".into(), shell("exit 3")),
        ]));
        let failure = home.runner().run(Hook::PostCreate, &object).await.unwrap_err();
        assert_eq!(failure.to_string(), "step 'postCreateCommand' (entry broken) failed (exit 3)");
        // The other entries still ran to their end.
        assert_eq!(home.read("fine"), "done\n");
        let failure = home.runner().run(Hook::PostStart, &shell("kill -9 $$")).await.unwrap_err();
        assert_eq!(failure.to_string(), "step 'postStartCommand' failed (signal 9)");
        let missing = Command::Exec(vec!["/no/such/program".into()]);
        let failure = home.runner().run(Hook::OnCreate, &missing).await.unwrap_err();
        assert!(
            failure.to_string().starts_with("step 'onCreateCommand' failed (cannot run /no/such/program"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn markers_make_once_only_and_are_written_only_on_success() {
        let home = Home::new();
        let runner = home.runner();
        let append = shell("echo ran >> count");
        assert!(runner.run_once(Hook::OnCreate, &append).await.unwrap());
        assert!(!runner.run_once(Hook::OnCreate, &append).await.unwrap());
        assert_eq!(home.read("count"), "ran\n");
        let flaky = shell("echo try >> tries; [ -e fixed ]");
        runner.run_once(Hook::PostCreate, &flaky).await.unwrap_err();
        assert!(!marker(&home.user, Hook::PostCreate).exists());
        std::fs::write(home.dir.path().join("project/fixed"), "").unwrap();
        assert!(runner.run_once(Hook::PostCreate, &flaky).await.unwrap());
        assert!(!runner.run_once(Hook::PostCreate, &flaky).await.unwrap());
        assert_eq!(home.read("tries"), "try\ntry\n");
    }

    #[test]
    fn configuration_env_and_defaults() {
        let home = Home::new();
        assert!(read(&home.user).unwrap().is_none());
        let dir = home.dir.path().join("project/.devcontainer");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("devcontainer.json"),
            r#"{ // no image: the workspace's
              "containerEnv": {"A": "1"},
              "remoteEnv": {"B": "${containerEnv:A}-${containerWorkspaceFolder}", "PATH": null},
              "postStartCommand": "true" }"#,
        )
        .unwrap();
        let config = read(&home.user).unwrap().unwrap();
        assert_eq!(config.wait_for, WaitFor::UpdateContentCommand);
        assert_eq!(config.lifecycle.post_start, Some(shell("true")));
        let env = env_overrides(&config, &BTreeMap::new()).unwrap();
        let project = home.dir.path().join("project");
        assert_eq!(
            env,
            BTreeMap::from([
                ("A".into(), Some("1".into())),
                ("B".into(), Some(format!("1-{}", project.display()))),
                ("PATH".into(), None),
            ])
        );
        std::fs::write(dir.join("devcontainer.json"), "{\n  \"postStartCommand\": \"true\"\n  \"x\": 1 }").unwrap();
        let error = read(&home.user).unwrap_err().to_string();
        assert!(error.contains("devcontainer.json") && error.contains("line 3"), "{error}");
    }

    #[test]
    fn wait_for_decides_how_many_hooks_come_first() {
        assert_eq!(START_HOOKS[..ready_after(WaitFor::default())], [Hook::OnCreate, Hook::UpdateContent]);
        assert_eq!(ready_after(WaitFor::PostAttachCommand), START_HOOKS.len());
    }
}
