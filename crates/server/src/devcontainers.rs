//! Applying a project's devcontainer.json to its workspace's container (issue 5): the
//! image it names or builds (with its local features), and the container settings it asks
//! for, within the admin's policy.
//!
//! The code reaches the volume in the workspace (the agent clones it, or `cove push`
//! drops it), so the control plane reads the configuration from there: a tar of
//! `~/project` through the engine, unpacked into a scratch folder under the data
//! directory. From it come a content hash of everything that decides the container (the
//! image's inputs, the settings, the resources) and, when that differs from the applied
//! one, a build and a new spec in the store; the reconciler then replaces the container,
//! keeping the volume.
//!
//! When it happens:
//! * At each agent start, before the lifecycle hooks (`POST /v1/devcontainer` on the
//!   control socket): a workspace whose configuration was never applied gets it applied
//!   (the agent waits, then runs the hooks in the new container); one whose configuration
//!   changed since is marked "rebuild needed" and left as it is.
//! * `cove rebuild` (`POST /api/v1/workspaces/{ws}/rebuild`): applies the current one.
//! * Reading one running workspace (`GET`) looks again now and then, for "rebuild needed".
//!
//! Images are tagged `cove-devcontainer:<hash>` by the content hash of their inputs
//! (Dockerfile, the context's files and modes without `.git`, build args and target; the
//! features' files and options), so the same inputs never build twice. No image is ever
//! pulled: an `image` missing from the engine is an error naming it.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cove_core::agent::{DevcontainerAction, DevcontainerAnswer, DevcontainerQuestion};
use cove_core::{Resources, Workspace, WorkspaceId, WorkspaceSpec};
use cove_devcontainer::model::ImageSource;
use cove_devcontainer::{DevContainer, Feature};
use cove_runtime::{ImageBuild, WORKSPACE_HOME};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::agents::ControlState;
use crate::error::ApiError;
use crate::AppState;

/// Built images are `cove-devcontainer:<first 16 hex digits of their content hash>`.
pub const IMAGE_REPO: &str = "cove-devcontainer";
/// The folder the project is in, inside the workspace.
const PROJECT: &str = "/home/cove/project";
/// How long an `initializeCommand` may run on the host.
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(600);
/// "Rebuild needed" is looked for at most this often per workspace by reads.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// The most of `~/project` copied to the Cove host to read its configuration and context.
const MAX_PROJECT_BYTES: u64 = crate::files::MAX_PUSH_BYTES;
/// Progress lines kept for `cove show`.
const LOG_LINES: usize = 40;

/// What the last look at a workspace's configuration did, as `cove show` and the agent see it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BuildStatus {
    /// `checking`, `building`, `applied`, `unchanged`, `rebuild_needed`, `none` or `failed`.
    pub state: String,
    pub message: Option<String>,
    /// The image the configuration resolves to.
    pub image: Option<String>,
    /// The image was already there (same content hash): nothing was built.
    pub cached: bool,
    /// What Cove accepted but does not apply (e.g. `overrideCommand: false`).
    pub notes: Vec<String>,
    /// The last lines of the build's output.
    pub log: Vec<String>,
}

impl BuildStatus {
    fn new(state: &str, message: Option<String>) -> Self {
        Self { state: state.into(), message, image: None, cached: false, notes: vec![], log: vec![] }
    }

    fn busy(&self) -> bool {
        matches!(self.state.as_str(), "checking" | "building")
    }
}

#[derive(Default)]
pub struct Builds {
    status: Mutex<HashMap<WorkspaceId, BuildStatus>>,
    checked: Mutex<HashMap<WorkspaceId, Instant>>,
    /// The status of the last application, per workspace.
    applied: Mutex<HashMap<WorkspaceId, BuildStatus>>,
}

impl Builds {
    pub fn status(&self, id: WorkspaceId) -> Option<BuildStatus> {
        lock(&self.status).get(&id).cloned()
    }

    fn set(&self, id: WorkspaceId, status: BuildStatus) {
        lock(&self.status).insert(id, status);
    }

    fn update(&self, id: WorkspaceId, f: impl FnOnce(&mut BuildStatus)) {
        if let Some(s) = lock(&self.status).get_mut(&id) {
            f(s);
        }
    }

    /// Marks the workspace busy, unless it already is: `false` then.
    fn claim(&self, id: WorkspaceId, state: &str, message: &str) -> bool {
        let mut all = lock(&self.status);
        if all.get(&id).is_some_and(BuildStatus::busy) {
            return false;
        }
        all.insert(id, BuildStatus::new(state, Some(message.into())));
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// An agent started: apply a configuration never applied; otherwise only look.
    Start,
    /// `cove rebuild`: apply whatever the volume holds now.
    Rebuild,
    /// Only record the hash seen (for "rebuild needed").
    Check,
}

/// The API routes of this module (merged into the API router).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/workspaces/{ws}/rebuild", post(rebuild))
}

/// `POST /api/v1/workspaces/{ws}/rebuild`: reads the configuration in the volume again and
/// applies it; 202 with the workspace, whose `devcontainer.build` says how it goes.
pub async fn rebuild(
    State(state): State<AppState>,
    crate::auth::Caller(user, _): crate::auth::Caller,
    UrlPath(key): UrlPath<String>,
) -> Result<Response, ApiError> {
    let ws = crate::workspaces::resolve(&state, &user, &key).await?;
    if ws.desired == cove_core::DesiredState::Terminated {
        return Err(ApiError::Conflict(format!("workspace {} is being deleted", ws.name)));
    }
    if !state.builds.claim(ws.id, "checking", "reading devcontainer.json") {
        return Err(ApiError::Conflict(format!(
            "workspace {} is already applying its devcontainer.json; wait for it (`cove show {}`)",
            ws.name, ws.name
        )));
    }
    tracing::info!(workspace = %ws.name, owner = %ws.owner_name, "rebuild requested");
    spawn(state.clone(), ws.id, Mode::Rebuild);
    let view = crate::workspaces::view(&state, &ws);
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// The agent's question before its hooks (see the module docs).
pub async fn agent_question(State(c): State<ControlState>, Json(q): Json<DevcontainerQuestion>) -> Response {
    let answer = |action, message: Option<String>| Json(DevcontainerAnswer { action, message }).into_response();
    let ws = match c.state.store.workspace_get(c.workspace).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::warn!(workspace = %c.workspace, error = %e, "cannot read a workspace for its agent");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    if q.spec_hash != ws.spec.hash() {
        return answer(DevcontainerAction::Wait, Some("the container is being replaced by the configured one".into()));
    }
    let builds = &c.state.builds;
    // A first question looks again; so does any question this server has no answer for
    // (it restarted while the agent waited).
    if (q.first || builds.status(ws.id).is_none()) && builds.claim(ws.id, "checking", "reading devcontainer.json") {
        spawn(c.state.clone(), ws.id, Mode::Start);
        return answer(DevcontainerAction::Wait, Some("reading devcontainer.json".into()));
    }
    match builds.status(ws.id) {
        Some(s) if s.busy() => answer(DevcontainerAction::Wait, s.message.or(Some(s.state))),
        Some(s) if s.state == "failed" => answer(DevcontainerAction::Failed, s.message),
        // Applied to this container already (its spec is the current one), or nothing to do.
        _ => answer(DevcontainerAction::Proceed, None),
    }
}

/// Looks for "rebuild needed" in the background, now and then, for a running workspace.
pub fn maybe_check(state: &AppState, ws: &Workspace) {
    if ws.actual != cove_core::ActualState::Running || ws.devcontainer.applied.is_none() {
        return;
    }
    {
        let mut checked = lock(&state.builds.checked);
        if checked.get(&ws.id).is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return;
        }
        checked.insert(ws.id, Instant::now());
    }
    if lock(&state.builds.status).get(&ws.id).is_some_and(BuildStatus::busy) {
        return;
    }
    let state = state.clone();
    let id = ws.id;
    tokio::spawn(async move {
        if let Err(e) = run(&state, id, Mode::Check).await {
            tracing::debug!(workspace = %id, error = %e, "cannot look at devcontainer.json");
        }
    });
}

/// Adds `forwardPorts`/`portsAttributes` labels (`cove.port.<n>`) to the agent's list of
/// listening ports, and lists the configured ports nothing listens on yet (no addresses).
pub fn label_ports(ws: &Workspace, ports: &mut serde_json::Value) {
    let Some(list) = ports.as_array_mut() else { return };
    let labels: BTreeMap<u16, &String> = ws
        .spec
        .config
        .labels
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("cove.port.")?.parse().ok()?, v)))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for p in list.iter_mut() {
        let Some(n) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else { continue };
        seen.insert(n);
        if let Some(label) = labels.get(&n) {
            p["label"] = serde_json::Value::String((*label).clone());
        }
    }
    for (n, label) in labels.iter().filter(|(n, _)| !seen.contains(*n)) {
        list.push(serde_json::json!({"port": n, "addresses": [], "label": label, "forwarded": true}));
    }
}

fn spawn(state: AppState, id: WorkspaceId, mode: Mode) {
    tokio::spawn(async move {
        if let Err(message) = run(&state, id, mode).await {
            tracing::warn!(workspace = %id, error = %message, "applying devcontainer.json failed");
            state.builds.update(id, |s| {
                s.state = "failed".into();
                s.message = Some(message);
            });
        }
    });
}

/// What a configuration makes of a workspace, before anything is built.
struct Plan {
    /// Images to build, in order (a features image after its base); each may exist.
    builds: Vec<(ImageBuild, tempfile::TempDir)>,
    image: String,
    resources: Resources,
    config: cove_core::ContainerConfig,
    notes: Vec<String>,
    hash: String,
    initialize: Option<cove_devcontainer::model::Command>,
    root: PathBuf,
}

async fn run(state: &AppState, id: WorkspaceId, mode: Mode) -> Result<(), String> {
    let ws = state.store.workspace_get(id).await.map_err(|e| format!("cannot read the workspace: {e}"))?;
    let name = ws.name.to_string();
    let fail = |step: &str, e: String| format!("workspace {name}: step '{step}' failed: {e}");
    let scratch_root = state.config.data_dir.join("builds");
    std::fs::create_dir_all(&scratch_root).map_err(|e| fail("read devcontainer.json", e.to_string()))?;
    let scratch = tempfile::tempdir_in(&scratch_root).map_err(|e| fail("read devcontainer.json", e.to_string()))?;
    let Some(plan) = read(state, &ws, scratch.path()).await.map_err(|e| fail("read devcontainer.json", e))? else {
        // No configuration (or no project yet): nothing to apply.
        let _ = state.store.workspace_devcontainer_seen(id, None).await;
        if mode != Mode::Check {
            state.builds.set(id, BuildStatus::new("none", Some("no devcontainer.json in ~/project".into())));
        }
        return Ok(());
    };
    let _ = state.store.workspace_devcontainer_seen(id, Some(&plan.hash)).await;
    let applied = ws.devcontainer.applied.as_deref();
    let mut status = BuildStatus {
        image: Some(plan.image.clone()),
        notes: plan.notes.clone(),
        ..BuildStatus::new("unchanged", None)
    };
    let apply = match mode {
        Mode::Check => return Ok(()),
        Mode::Start => applied.is_none(),
        // The configuration, or the image its context makes, changed; or the image is gone.
        Mode::Rebuild => {
            applied != Some(plan.hash.as_str())
                || plan.image != ws.spec.image
                || !state.backend.image_exists(&plan.image).await.unwrap_or(false)
        }
    };
    if !apply {
        if applied == Some(plan.hash.as_str()) {
            // The container made by the last application starting: that status still says
            // what happened (built or cached).
            let last = lock(&state.builds.applied).get(&id).cloned();
            if let Some(last) = last.filter(|_| mode == Mode::Start) {
                state.builds.set(id, last);
                return Ok(());
            }
            status.message = Some("devcontainer.json is applied; nothing changed".into());
        } else {
            status.state = "rebuild_needed".into();
            status.message = Some(format!("devcontainer.json changed since it was applied; run `cove rebuild {name}`"));
        }
        state.builds.set(id, status);
        return Ok(());
    }
    if let Some(command) = &plan.initialize {
        state.builds.update(id, |s| s.message = Some("running initializeCommand on the Cove host".into()));
        initialize(command, &plan.root).await.map_err(|e| fail("initializeCommand", e))?;
    }
    let mut cached = true;
    for (build, _context) in &plan.builds {
        if state.backend.image_exists(&build.tag).await.map_err(|e| fail("build image", e.to_string()))? {
            tracing::info!(workspace = %name, image = %build.tag, "devcontainer image is cached; not building");
            continue;
        }
        cached = false;
        tracing::info!(workspace = %name, image = %build.tag, "building the devcontainer image");
        state.builds.update(id, |s| {
            s.state = "building".into();
            s.message = Some(format!("building image {}", build.tag));
        });
        let builds = state.builds.clone();
        let tag = build.tag.clone();
        let mut progress = move |line: &str| {
            tracing::info!(image = %tag, "build: {line}");
            builds.update(id, |s| {
                s.message = Some(format!("building image {tag}: {}", line.chars().take(200).collect::<String>()));
                s.log.push(line.to_string());
                if s.log.len() > LOG_LINES {
                    s.log.remove(0);
                }
            });
        };
        state.backend.build_image(build, &mut progress).await.map_err(|e| fail("build image", e.to_string()))?;
    }
    // The caller's quota, for what hostRequirements asks beyond the current resources.
    let ws = state.store.workspace_get(id).await.map_err(|e| fail("apply devcontainer.json", e.to_string()))?;
    // Held until the new resources are written, as for a patch.
    let _permit = if plan.resources != ws.spec.resources {
        let permit = crate::quotas::check_patch(state, &ws, Some(&plan.resources), None)
            .await
            .map_err(|e| fail("hostRequirements", e.to_string()))?;
        Some(permit)
    } else {
        None
    };
    let before = ws.spec.hash();
    let apply = cove_store::DevcontainerApply {
        image: plan.image.clone(),
        resources: plan.resources,
        config: plan.config.clone(),
        hash: plan.hash.clone(),
    };
    let ws = state
        .store
        .workspace_devcontainer_apply(id, apply)
        .await
        .map_err(|e| fail("apply devcontainer.json", e.to_string()))?;
    let replaced = ws.spec.hash() != before;
    tracing::info!(workspace = %name, image = %plan.image, cached, replaced, "devcontainer.json applied");
    status.state = "applied".into();
    status.cached = cached;
    status.message = Some(if cached {
        format!("devcontainer.json applied: image {} (cached, not rebuilt)", plan.image)
    } else {
        format!("devcontainer.json applied: image {} built", plan.image)
    });
    status.log = state.builds.status(id).map(|s| s.log).unwrap_or_default();
    lock(&state.builds.applied).insert(id, status.clone());
    state.builds.set(id, status);
    state.routes.invalidate();
    state.reconciler.poke();
    Ok(())
}

/// Reads and resolves the configuration in the workspace's `~/project` into `scratch`;
/// `None` when there is no project or no configuration.
async fn read(state: &AppState, ws: &Workspace, scratch: &Path) -> Result<Option<Plan>, String> {
    let archive = scratch.join("project.tar");
    let spec = cove_reconciler::container_spec(ws);
    if !state.backend.get_archive(&spec, PROJECT, &archive, MAX_PROJECT_BYTES).await.map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let unpacked = scratch.join("files");
    let (archive2, unpacked2) = (archive.clone(), unpacked.clone());
    tokio::task::spawn_blocking(move || unpack(&archive2, &unpacked2))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot unpack the project: {e}"))?;
    let _ = std::fs::remove_file(&archive);
    let root = unpacked.join("project");
    let file = match cove_devcontainer::find(&root, ws.devcontainer_path.as_deref().map(Path::new)) {
        Ok(file) => file,
        Err(cove_devcontainer::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(virtual_paths(&e.to_string(), &root)),
    };
    let file = within(&root, &file)?;
    let text = cove_devcontainer::load::read(&file).map_err(|e| virtual_paths(&e.to_string(), &root))?;
    let config = resolve(ws, &root, &file, &text).map_err(|e| virtual_paths(&e, &root))?;
    let policy = &state.config.devcontainer_policy;
    cove_devcontainer::policy::check(&config, PROJECT, policy).map_err(|e| virtual_paths(&e.to_string(), &root))?;
    // Every path the configuration names must stay in the project once symbolic links are
    // followed: the copy is on the Cove host, and a link to /etc must not end up in an image.
    let real = |p: &Path| within(&root, &root.join(p.strip_prefix(PROJECT).unwrap_or(p)));
    let read_inside = |p: &Path| {
        let path = real(p).map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        std::fs::read_to_string(path)
    };
    let features = cove_devcontainer::features::resolve(&config, &read_inside)
        .map_err(|e| virtual_paths(&e.to_string(), &root))?;
    cove_devcontainer::policy::check_features(&features, policy).map_err(|e| e.to_string())?;

    let dockerfile_text = match &config.source {
        ImageSource::Build(b) => std::fs::read(real(&b.dockerfile)?)
            .map_err(|e| format!("cannot read the Dockerfile {} ({e})", b.dockerfile.display()))?,
        ImageSource::Image(_) => vec![],
    };
    let (config2, root2, features2, df2) = (config.clone(), root.clone(), features.clone(), dockerfile_text.clone());
    let seen_hash = tokio::task::spawn_blocking(move || config_hash(&config2, &df2, &root2, &features2))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the features: {e}"))?;
    let mut builds = vec![];
    let (mut image, input_hash) = match &config.source {
        ImageSource::Image(image) => {
            if !state.backend.image_exists(image).await.map_err(|e| e.to_string())? {
                return Err(format!(
                    "image {image:?} (devcontainer.json `image`) is not in the container engine, and Cove pulls no images; build it on the Cove host, or use `build.dockerfile`"
                ));
            }
            (image.clone(), content_hash(&[b"image", image.as_bytes()]))
        }
        ImageSource::Build(b) => {
            let dir = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
            let context = dir.path().join("context.tar");
            let (ctx, df) = (real(&b.context)?, dockerfile_text.clone());
            let context2 = context.clone();
            let files_hash = tokio::task::spawn_blocking(move || pack_context(&ctx, &df, &context2))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot pack the build context {}: {e}", b.context.display()))?;
            let args = serde_json::to_vec(&b.args).unwrap_or_default();
            let target = b.target.clone().unwrap_or_default();
            let hash = content_hash(&[b"build", files_hash.as_bytes(), &args, target.as_bytes()]);
            let tag = tag(&hash);
            builds.push((
                ImageBuild {
                    tag: tag.clone(),
                    context,
                    dockerfile: DOCKERFILE_IN_CONTEXT.into(),
                    args: b.args.clone(),
                    target: b.target.clone(),
                    labels: BTreeMap::from([(cove_runtime::images::LABEL_CONTENT_HASH.to_string(), hash.clone())]),
                },
                dir,
            ));
            (tag, hash)
        }
    };
    if !features.is_empty() {
        let dir = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
        let context = dir.path().join("context.tar");
        let dockerfile = cove_devcontainer::apply::features_dockerfile(&image, &features);
        for f in &features {
            real(&f.dir)?;
        }
        let (features2, context2, df) = (features.clone(), context.clone(), dockerfile.clone());
        let root2 = root.clone();
        let files_hash = tokio::task::spawn_blocking(move || pack_features(&root2, &features2, &df, &context2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot pack the features: {e}"))?;
        let hash = content_hash(&[b"features", input_hash.as_bytes(), files_hash.as_bytes()]);
        let tag = tag(&hash);
        builds.push((
            ImageBuild {
                tag: tag.clone(),
                context,
                dockerfile: DOCKERFILE_IN_CONTEXT.into(),
                labels: BTreeMap::from([(cove_runtime::images::LABEL_CONTENT_HASH.to_string(), hash.clone())]),
                ..Default::default()
            },
            dir,
        ));
        image = tag;
    }
    let (container, notes) = cove_devcontainer::apply::container_config(&config, &features);
    let resources = at_least(ws.spec.resources, &config.host_requirements)?;
    // Not the image's tag: it follows the context's files, and code edits are no reason
    // to call a rebuild needed.
    let settings = WorkspaceSpec { image: String::new(), resources, config: container.clone() };
    let hash = content_hash(&[b"applied", seen_hash.as_bytes(), settings.hash().as_bytes()]);
    Ok(Some(Plan {
        builds,
        image,
        resources,
        config: container,
        notes,
        hash,
        initialize: config.lifecycle.initialize.clone(),
        root,
    }))
}

/// The configuration as the workspace sees it: at `~/project`, and, without `image` or
/// `build`, on the workspace's current image (as the agent reads it for its hooks).
fn resolve(ws: &Workspace, root: &Path, file: &Path, text: &str) -> Result<DevContainer, String> {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let config_file = Path::new(PROJECT).join(rel);
    let text = match cove_devcontainer::jsonc::parse(text) {
        Ok(serde_json::Value::Object(mut raw)) => {
            if !["image", "build", "dockerFile", "dockerfile", "dockerComposeFile"].iter().any(|k| raw.contains_key(*k))
            {
                raw.insert("image".into(), ws.spec.image.clone().into());
            }
            serde_json::Value::Object(raw).to_string()
        }
        // Malformed or not an object: the resolver says so, with line and column.
        _ => text.to_string(),
    };
    // The Cove host's environment is not the user's: `${localEnv:...}` sees none of it.
    let env = BTreeMap::from([("HOME".to_string(), WORKSPACE_HOME.to_string())]);
    let input = cove_devcontainer::Input {
        local_folder: Path::new(PROJECT),
        config_file: &config_file,
        text: &text,
        env: &env,
    };
    cove_devcontainer::resolve(&input).map(|r| r.config).map_err(|e| e.to_string())
}

/// `path` with its symbolic links followed, if that is still inside `root`.
fn within(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let shown = || virtual_paths(&path.display().to_string(), root);
    let root = root.canonicalize().map_err(|e| format!("cannot read the project: {e}"))?;
    let real = path.canonicalize().map_err(|e| format!("cannot read {} ({e})", shown()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "{} leads outside the project (a symbolic link); Cove reads only the project's own files",
            shown()
        ));
    }
    Ok(real)
}

/// Messages name the files as the user knows them, in `~/project`, not the scratch copy.
fn virtual_paths(message: &str, root: &Path) -> String {
    message.replace(&root.display().to_string(), PROJECT)
}

/// hostRequirements are minimums: the workspace keeps more if it has more.
fn at_least(current: Resources, req: &cove_devcontainer::model::HostRequirements) -> Result<Resources, String> {
    let wanted = req.resources(current);
    let cpus_milli = wanted.cpus_milli.max(current.cpus_milli);
    let memory = wanted.memory_bytes.max(current.memory_bytes);
    let disk = match (wanted.disk_bytes, current.disk_bytes) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Resources::new(f64::from(cpus_milli) / 1000.0, memory, disk)
        .map_err(|e| format!("hostRequirements asks for more than this instance gives one workspace: {e}"))
}

fn tag(hash: &str) -> String {
    format!("{IMAGE_REPO}:{}", &hash[..16])
}

fn content_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Unpacks the project's archive; the tar crate refuses entries that would land outside
/// `into` (absolute paths, `..`, through symbolic links).
fn unpack(archive: &Path, into: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(into)?;
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    tar.unpack(into)
}

/// The Dockerfile's name in a context Cove packs (next to the user's files, out of the way).
const DOCKERFILE_IN_CONTEXT: &str = ".cove-devcontainer.Dockerfile";

/// Packs `context` (without `.git`) plus the Dockerfile into a tar at `out`, with fixed
/// times and owners, and returns the hash of what is in it (names, modes, contents).
fn pack_context(context: &Path, dockerfile: &[u8], out: &Path) -> std::io::Result<String> {
    let mut packer = Packer::new(out)?;
    packer.dir(context, Path::new(""))?;
    packer.file(Path::new(DOCKERFILE_IN_CONTEXT), 0o644, dockerfile)?;
    packer.finish()
}

/// What decides the configuration apart from the build context's files: the configuration
/// itself, the Dockerfile, the features' folders. Edits of the project's code do not make
/// a rebuild "needed"; `cove rebuild` still builds a new image when the context changed.
fn config_hash(config: &DevContainer, dockerfile: &[u8], root: &Path, features: &[Feature]) -> std::io::Result<String> {
    let mut packer = Packer::hashing();
    let raw = serde_json::to_vec(&config.raw).unwrap_or_default();
    packer.file(Path::new("devcontainer.json"), 0, &raw)?;
    packer.file(Path::new("Dockerfile"), 0, dockerfile)?;
    for (i, f) in features.iter().enumerate() {
        packer.dir(&root.join(f.dir.strip_prefix(PROJECT).unwrap_or(&f.dir)), Path::new(&format!("features/{i}")))?;
    }
    packer.finish()
}

/// The features' folders at `features/<i>/`, each with its `devcontainer-features.env`, and
/// the Dockerfile that installs them.
fn pack_features(root: &Path, features: &[Feature], dockerfile: &str, out: &Path) -> std::io::Result<String> {
    let mut packer = Packer::new(out)?;
    for (i, f) in features.iter().enumerate() {
        let dir = root.join(f.dir.strip_prefix(PROJECT).unwrap_or(&f.dir));
        let at = PathBuf::from(format!("features/{i}"));
        packer.dir(&dir, &at)?;
        let env = cove_devcontainer::apply::feature_env(f);
        packer.file(&at.join("devcontainer-features.env"), 0o644, env.as_bytes())?;
    }
    packer.file(Path::new(DOCKERFILE_IN_CONTEXT), 0o644, dockerfile.as_bytes())?;
    packer.finish()
}

struct Packer {
    tar: tar::Builder<Box<dyn std::io::Write + Send>>,
    hash: Sha256,
}

impl Packer {
    fn new(out: &Path) -> std::io::Result<Self> {
        let file = std::io::BufWriter::new(std::fs::File::create(out)?);
        Ok(Self { tar: tar::Builder::new(Box::new(file)), hash: Sha256::new() })
    }

    /// Only the hash: the archive goes nowhere.
    fn hashing() -> Self {
        Self { tar: tar::Builder::new(Box::new(std::io::sink())), hash: Sha256::new() }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn note(&mut self, kind: &[u8], path: &Path, mode: u32, content: &[u8]) {
        let path = path.to_string_lossy();
        for part in [kind, path.as_bytes(), &mode.to_le_bytes(), content] {
            self.hash.update((part.len() as u64).to_le_bytes());
            self.hash.update(part);
        }
    }

    fn file(&mut self, at: &Path, mode: u32, content: &[u8]) -> std::io::Result<()> {
        self.note(b"f", at, mode, content);
        let mut h = Self::header(tar::EntryType::Regular, mode, content.len() as u64);
        self.tar.append_data(&mut h, at, content)
    }

    /// Everything under `src`, sorted, at `at` in the archive; `.git` folders are left out.
    fn dir(&mut self, src: &Path, at: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<_> = std::fs::read_dir(src)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if name == ".git" {
                continue;
            }
            let path = entry.path();
            let inside = at.join(&name);
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                self.note(b"l", &inside, 0, target.to_string_lossy().as_bytes());
                let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
                self.tar.append_link(&mut h, &inside, &target)?;
            } else if meta.is_dir() {
                self.note(b"d", &inside, mode, b"");
                let mut h = Self::header(tar::EntryType::Directory, mode, 0);
                self.tar.append_data(&mut h, &inside, std::io::empty())?;
                self.dir(&path, &inside)?;
            } else if meta.is_file() {
                let mut content = vec![];
                std::fs::File::open(&path)?.read_to_end(&mut content)?;
                self.file(&inside, mode, &content)?;
            }
        }
        Ok(())
    }

    fn finish(self) -> std::io::Result<String> {
        let mut file = self.tar.into_inner()?;
        std::io::Write::flush(&mut file)?;
        Ok(hex::encode(self.hash.finalize()))
    }
}

/// `initializeCommand`, on the Cove host, in the scratch copy of the project (the admin
/// allowed it: the policy check refuses it otherwise).
async fn initialize(command: &cove_devcontainer::model::Command, dir: &Path) -> Result<(), String> {
    for (name, argv) in command.processes() {
        let Some((program, args)) = argv.split_first() else { continue };
        let run = tokio::process::Command::new(program).args(args).current_dir(dir).kill_on_drop(true).output();
        let out = tokio::time::timeout(INITIALIZE_TIMEOUT, run)
            .await
            .map_err(|_| format!("did not finish within {} s", INITIALIZE_TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
            tracing::info!("initializeCommand{}: {line}", name.map(|n| format!("[{n}]")).unwrap_or_default());
        }
        if !out.status.success() {
            let entry = name.map(|n| format!(" (entry {n})")).unwrap_or_default();
            return Err(format!("the command{entry} exited with {}", out.status));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_hash_follows_content_not_times() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join(".git")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(ctx.join("a.txt"), "a").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(ctx.join(".git/index"), "1").unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("c.tar");
        let first = pack_context(&ctx, b"FROM x\n", &out).unwrap_or_else(|e| panic!("{e}"));
        // Another clone: new times, another .git.
        std::fs::write(ctx.join(".git/index"), "2").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(ctx.join("a.txt"), "a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pack_context(&ctx, b"FROM x\n", &out).unwrap_or_else(|e| panic!("{e}")), first);
        std::fs::write(ctx.join("a.txt"), "b").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(pack_context(&ctx, b"FROM x\n", &out).unwrap_or_else(|e| panic!("{e}")), first);
        assert_ne!(pack_context(&ctx, b"FROM y\n", &out).unwrap_or_else(|e| panic!("{e}")), first);
        let names: Vec<String> = tar::Archive::new(std::fs::File::open(&out).unwrap_or_else(|e| panic!("{e}")))
            .entries()
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path().unwrap_or_else(|e| panic!("{e}")).display().to_string())
            .collect();
        assert_eq!(names, vec!["a.txt".to_string(), DOCKERFILE_IN_CONTEXT.to_string()]);
    }

    #[test]
    fn paths_that_leave_the_project_through_a_link_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().join("project");
        std::fs::create_dir_all(root.join(".devcontainer")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("secret"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join(".devcontainer/Dockerfile"), "FROM x").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join(".devcontainer/evil"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(within(&root, &root.join(".devcontainer/Dockerfile")).is_ok());
        let err = within(&root, &root.join(".devcontainer/evil")).err().unwrap_or_default();
        assert!(err.contains("/home/cove/project/.devcontainer/evil") && err.contains("outside"), "{err}");
    }

    #[test]
    fn host_requirements_are_minimums() {
        let current = Resources { cpus_milli: 2000, memory_bytes: 4 << 30, disk_bytes: None };
        let req = cove_devcontainer::model::HostRequirements {
            cpus: Some(1),
            memory_bytes: Some(8 << 30),
            storage_bytes: None,
        };
        let r = at_least(current, &req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.cpus_milli, r.memory_bytes), (2000, 8 << 30));
        let too_much = cove_devcontainer::model::HostRequirements { cpus: Some(100_000), ..Default::default() };
        assert!(matches!(at_least(current, &too_much), Err(e) if e.contains("hostRequirements")));
    }
}
