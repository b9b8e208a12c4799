//! The typed `DevContainer`, read from an already parsed, normalised and substituted JSON
//! object. Every property Cove acts on is checked here, with an error naming it; the JSON is
//! kept as well (`raw`) so unknown properties pass through to the printed configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::Error;

#[derive(Debug, Clone, PartialEq)]
pub struct DevContainer {
    pub config_file: PathBuf,
    pub name: Option<String>,
    pub source: ImageSource,
    pub container_env: BTreeMap<String, String>,
    /// `None` unsets a variable, as the spec allows for `remoteEnv`.
    pub remote_env: BTreeMap<String, Option<String>>,
    pub container_user: Option<String>,
    pub remote_user: Option<String>,
    pub update_remote_user_uid: Option<bool>,
    pub workspace_folder: Option<String>,
    pub workspace_mount: Option<String>,
    pub mounts: Vec<Mount>,
    pub forward_ports: Vec<ForwardPort>,
    pub ports_attributes: BTreeMap<String, PortAttributes>,
    pub other_ports_attributes: Option<PortAttributes>,
    pub host_requirements: HostRequirements,
    pub override_command: Option<bool>,
    pub init: Option<bool>,
    pub privileged: Option<bool>,
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    pub run_args: Vec<String>,
    /// Feature reference -> options, as written (a string value is the `version` option).
    pub features: BTreeMap<String, Map<String, Value>>,
    pub override_feature_install_order: Vec<String>,
    pub vscode: VsCode,
    pub lifecycle: Lifecycle,
    pub wait_for: WaitFor,
    pub shutdown_action: Option<ShutdownAction>,
    /// The whole configuration after legacy moves and substitution, unknown keys included.
    pub raw: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Image(String),
    Build(Build),
}

/// `build`, with paths resolved: `dockerfile` relative to the configuration file, `context`
/// relative to it too (default: the configuration file's folder), as the spec says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub dockerfile: PathBuf,
    pub context: PathBuf,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub cache_from: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    Volume,
    Bind,
    Tmpfs,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    /// Other `key=value` options of the string form, in order.
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPort {
    Port(u16),
    HostPort { host: String, port: u16 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortAttributes {
    pub label: Option<String>,
    pub on_auto_forward: Option<OnAutoForward>,
    pub protocol: Option<String>,
    pub require_local_port: Option<bool>,
    pub elevate_if_needed: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAutoForward {
    Notify,
    OpenBrowser,
    OpenBrowserOnce,
    OpenPreview,
    Silent,
    Ignore,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRequirements {
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub storage_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VsCode {
    pub extensions: Vec<String>,
    pub settings: Map<String, Value>,
}

/// A lifecycle command in one of its three forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A string: run by `/bin/sh -c`.
    Shell(String),
    /// An array: run directly, no shell.
    Exec(Vec<String>),
    /// An object: named commands run in parallel; all must succeed.
    Parallel(BTreeMap<String, Command>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub initialize: Option<Command>,
    pub on_create: Option<Command>,
    pub update_content: Option<Command>,
    pub post_create: Option<Command>,
    pub post_start: Option<Command>,
    pub post_attach: Option<Command>,
}

/// Which command the editor waits for before connecting; the spec's default is
/// `updateContentCommand`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitFor {
    InitializeCommand,
    OnCreateCommand,
    #[default]
    UpdateContentCommand,
    PostCreateCommand,
    PostStartCommand,
    PostAttachCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    None,
    StopContainer,
}

/// Reads the model from a normalised, substituted configuration object.
pub fn from_value(raw: Map<String, Value>, config_file: &Path) -> Result<DevContainer, Error> {
    let r = Reader { obj: &raw, file: config_file, prefix: String::new() };
    if raw.contains_key("dockerComposeFile") {
        return Err(Error::ComposeUnsupported { file: config_file.to_path_buf() });
    }
    let config_dir = config_file.parent().unwrap_or(Path::new("/"));
    let source = match (r.string("image")?, r.object("build")?) {
        (Some(_), Some(_)) => return Err(Error::ImageAndBuild { file: config_file.to_path_buf() }),
        (Some(image), None) if image.trim().is_empty() => return Err(r.invalid("image", "must not be empty")),
        (Some(image), None) => ImageSource::Image(image),
        (None, Some(build)) => ImageSource::Build(read_build(&r.nested(build, "build."), config_dir)?),
        (None, None) => match r.string("dockerFile")? {
            // The old top-level spelling, still read by the reference.
            Some(dockerfile) => ImageSource::Build(Build {
                dockerfile: config_dir.join(dockerfile),
                context: config_dir.join(r.string("context")?.unwrap_or_else(|| ".".into())),
                args: BTreeMap::new(),
                target: None,
                cache_from: vec![],
                options: vec![],
            }),
            None => return Err(Error::NoImage { file: config_file.to_path_buf() }),
        },
    };
    let mounts = match raw.get("mounts") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| read_mount(m).map_err(|message| r.invalid(&format!("mounts[{i}]"), &message)))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(r.invalid("mounts", "must be an array of strings or objects")),
    };
    let forward_ports = match raw.get("forwardPorts") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, p)| read_forward_port(p).map_err(|m| r.invalid(&format!("forwardPorts[{i}]"), &m)))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(r.invalid("forwardPorts", "must be an array of port numbers or \"host:port\" strings")),
    };
    let mut ports_attributes = BTreeMap::new();
    if let Some(map) = r.object("portsAttributes")? {
        for (port, attrs) in map {
            let Value::Object(attrs) = attrs else {
                return Err(r.invalid(&format!("portsAttributes.{port}"), "must be an object"));
            };
            ports_attributes
                .insert(port.clone(), read_port_attributes(&r.nested(attrs, &format!("portsAttributes.{port}.")))?);
        }
    }
    let other_ports_attributes = match r.object("otherPortsAttributes")? {
        Some(attrs) => Some(read_port_attributes(&r.nested(attrs, "otherPortsAttributes."))?),
        None => None,
    };
    let host_requirements = match r.object("hostRequirements")? {
        Some(h) => read_host_requirements(&r.nested(h, "hostRequirements."))?,
        None => HostRequirements::default(),
    };
    let mut features = BTreeMap::new();
    if let Some(map) = r.object("features")? {
        for (id, options) in map {
            let options = match options {
                Value::Object(o) => o.clone(),
                Value::String(version) => Map::from_iter([("version".to_string(), Value::String(version.clone()))]),
                Value::Bool(true) => Map::new(),
                _ => {
                    return Err(
                        r.invalid(&format!("features.{id}"), "must be an object of options (or a version string)")
                    )
                }
            };
            features.insert(id.clone(), options);
        }
    }
    let vscode = match r.object("customizations")?.and_then(|c| c.get("vscode")) {
        None | Some(Value::Null) => VsCode::default(),
        Some(Value::Object(v)) => {
            let vr = r.nested(v, "customizations.vscode.");
            VsCode {
                extensions: vr.strings("extensions")?,
                settings: vr.object("settings")?.cloned().unwrap_or_default(),
            }
        }
        Some(_) => return Err(r.invalid("customizations.vscode", "must be an object")),
    };
    let lifecycle = Lifecycle {
        initialize: r.command("initializeCommand")?,
        on_create: r.command("onCreateCommand")?,
        update_content: r.command("updateContentCommand")?,
        post_create: r.command("postCreateCommand")?,
        post_start: r.command("postStartCommand")?,
        post_attach: r.command("postAttachCommand")?,
    };
    let wait_for = match r.string("waitFor")?.as_deref() {
        None => WaitFor::default(),
        Some("initializeCommand") => WaitFor::InitializeCommand,
        Some("onCreateCommand") => WaitFor::OnCreateCommand,
        Some("updateContentCommand") => WaitFor::UpdateContentCommand,
        Some("postCreateCommand") => WaitFor::PostCreateCommand,
        Some("postStartCommand") => WaitFor::PostStartCommand,
        Some("postAttachCommand") => WaitFor::PostAttachCommand,
        Some(other) => return Err(r.invalid("waitFor", &format!("is \"{other}\"; use one of initializeCommand, onCreateCommand, updateContentCommand, postCreateCommand, postStartCommand, postAttachCommand"))),
    };
    let shutdown_action = match r.string("shutdownAction")?.as_deref() {
        None => None,
        Some("none") => Some(ShutdownAction::None),
        Some("stopContainer") => Some(ShutdownAction::StopContainer),
        Some("stopCompose") => {
            return Err(r.invalid(
                "shutdownAction",
                "is \"stopCompose\", which is for Docker Compose configurations; use \"none\" or \"stopContainer\"",
            ))
        }
        Some(other) => {
            return Err(r.invalid("shutdownAction", &format!("is \"{other}\"; use \"none\" or \"stopContainer\"")))
        }
    };
    let mut remote_env = BTreeMap::new();
    if let Some(map) = r.object("remoteEnv")? {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                _ => return Err(r.invalid(&format!("remoteEnv.{k}"), "must be a string (or null to unset it)")),
            };
            remote_env.insert(k.clone(), v);
        }
    }
    Ok(DevContainer {
        config_file: config_file.to_path_buf(),
        name: r.string("name")?,
        source,
        container_env: r.string_map("containerEnv")?,
        remote_env,
        container_user: r.string("containerUser")?,
        remote_user: r.string("remoteUser")?,
        update_remote_user_uid: r.bool("updateRemoteUserUID")?,
        workspace_folder: r.string("workspaceFolder")?,
        workspace_mount: r.string("workspaceMount")?,
        mounts,
        forward_ports,
        ports_attributes,
        other_ports_attributes,
        host_requirements,
        override_command: r.bool("overrideCommand")?,
        init: r.bool("init")?,
        privileged: r.bool("privileged")?,
        cap_add: r.strings("capAdd")?,
        security_opt: r.strings("securityOpt")?,
        run_args: r.strings("runArgs")?,
        features,
        override_feature_install_order: r.strings("overrideFeatureInstallOrder")?,
        vscode,
        lifecycle,
        wait_for,
        shutdown_action,
        raw,
    })
}

fn read_build(r: &Reader<'_>, config_dir: &Path) -> Result<Build, Error> {
    let Some(dockerfile) = r.string("dockerfile")?.or(r.string("dockerFile")?) else {
        return Err(r.invalid("dockerfile", "is missing; name the Dockerfile, relative to devcontainer.json"));
    };
    let context = r.string("context")?.unwrap_or_else(|| ".".into());
    let options = r.strings("options")?;
    let cache_from = match r.obj.get("cacheFrom") {
        Some(Value::String(s)) => vec![s.clone()],
        _ => r.strings("cacheFrom")?,
    };
    Ok(Build {
        dockerfile: normalize(&config_dir.join(dockerfile)),
        context: normalize(&config_dir.join(context)),
        args: r.string_map("args")?,
        target: r.string("target")?,
        cache_from,
        options,
    })
}

/// Removes `.` and resolves `..` lexically, so printed paths read cleanly.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `type=volume,source=x,target=/y[,readonly]` or `{"type", "source", "target"}`.
pub fn read_mount(value: &Value) -> Result<Mount, String> {
    match value {
        Value::String(s) => parse_mount_string(s),
        Value::Object(o) => {
            let field = |k: &str| match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("`{k}` must be a string")),
            };
            let kind = match field("type")?.as_deref() {
                Some(kind) => mount_kind(kind),
                None => return Err("needs a `type` (\"volume\" or \"bind\")".into()),
            };
            let Some(target) = field("target")? else { return Err("needs a `target`".into()) };
            let read_only = matches!(o.get("readonly").or(o.get("readOnly")), Some(Value::Bool(true)));
            Ok(Mount { kind, source: field("source")?, target, read_only, options: vec![] })
        }
        _ => Err("must be a string like \"type=volume,source=name,target=/path\" or an object".into()),
    }
}

fn mount_kind(kind: &str) -> MountKind {
    match kind {
        "volume" => MountKind::Volume,
        "bind" => MountKind::Bind,
        "tmpfs" => MountKind::Tmpfs,
        other => MountKind::Other(other.to_string()),
    }
}

pub fn parse_mount_string(s: &str) -> Result<Mount, String> {
    let (mut kind, mut source, mut target, mut read_only, mut options) = (None, None, None, false, vec![]);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part, None),
        };
        match (key, value) {
            ("type", Some(v)) => kind = Some(mount_kind(v)),
            ("source" | "src", Some(v)) => source = Some(v.to_string()),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v.to_string()),
            ("readonly" | "ro", None | Some("true" | "1")) => read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => read_only = false,
            (k, v) => options.push((k.to_string(), v.unwrap_or_default().to_string())),
        }
    }
    // The engine's default for `--mount` without a type is a volume.
    let kind = kind.unwrap_or(MountKind::Volume);
    let Some(target) = target else { return Err(format!("\"{s}\" has no `target=`")) };
    Ok(Mount { kind, source, target, read_only, options })
}

fn read_forward_port(value: &Value) -> Result<ForwardPort, String> {
    let port = |n: u64| u16::try_from(n).ok().filter(|p| *p > 0);
    match value {
        Value::Number(n) => {
            n.as_u64().and_then(port).map(ForwardPort::Port).ok_or_else(|| format!("{n} is not a port (1-65535)"))
        }
        Value::String(s) => {
            let Some((host, p)) = s.rsplit_once(':') else {
                return Err(format!("\"{s}\" is not \"host:port\"; write a bare port as a number"));
            };
            match p.parse::<u64>().ok().and_then(port) {
                Some(port) if !host.is_empty() => Ok(ForwardPort::HostPort { host: host.to_string(), port }),
                _ => Err(format!("\"{s}\" is not \"host:port\" with a port 1-65535")),
            }
        }
        _ => Err("must be a port number or a \"host:port\" string".into()),
    }
}

fn read_port_attributes(r: &Reader<'_>) -> Result<PortAttributes, Error> {
    let on_auto_forward = match r.string("onAutoForward")?.as_deref() {
        None => None,
        Some("notify") => Some(OnAutoForward::Notify),
        Some("openBrowser") => Some(OnAutoForward::OpenBrowser),
        Some("openBrowserOnce") => Some(OnAutoForward::OpenBrowserOnce),
        Some("openPreview") => Some(OnAutoForward::OpenPreview),
        Some("silent") => Some(OnAutoForward::Silent),
        Some("ignore") => Some(OnAutoForward::Ignore),
        Some(other) => {
            return Err(r.invalid(
                "onAutoForward",
                &format!("is \"{other}\"; use notify, openBrowser, openBrowserOnce, openPreview, silent or ignore"),
            ))
        }
    };
    let protocol = r.string("protocol")?;
    if let Some(p) = protocol.as_deref().filter(|p| !matches!(*p, "http" | "https")) {
        return Err(r.invalid("protocol", &format!("is \"{p}\"; use \"http\" or \"https\"")));
    }
    Ok(PortAttributes {
        label: r.string("label")?,
        on_auto_forward,
        protocol,
        require_local_port: r.bool("requireLocalPort")?,
        elevate_if_needed: r.bool("elevateIfNeeded")?,
    })
}

fn read_host_requirements(r: &Reader<'_>) -> Result<HostRequirements, Error> {
    let cpus = match r.obj.get("cpus") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => return Err(r.invalid("cpus", &format!("is {n}; use a whole number of CPUs, at least 1"))),
        },
        Some(_) => return Err(r.invalid("cpus", "must be a number")),
    };
    let size = |key: &str| -> Result<Option<u64>, Error> {
        match r.string(key)? {
            None => Ok(None),
            Some(s) => cove_core::resources::parse_size(&s)
                .map(Some)
                .map_err(|_| r.invalid(key, &format!("is \"{s}\"; write a size like \"4gb\" or \"512mb\""))),
        }
    };
    Ok(HostRequirements { cpus, memory_bytes: size("memory")?, storage_bytes: size("storage")? })
}

/// Typed access to one JSON object, with errors naming `prefix` + the key.
struct Reader<'a> {
    obj: &'a Map<String, Value>,
    file: &'a Path,
    prefix: String,
}

impl<'a> Reader<'a> {
    fn nested<'b>(&self, obj: &'b Map<String, Value>, prefix: &str) -> Reader<'b>
    where
        'a: 'b,
    {
        Reader { obj, file: self.file, prefix: format!("{}{prefix}", self.prefix) }
    }

    fn invalid(&self, key: &str, message: &str) -> Error {
        Error::Invalid {
            file: self.file.to_path_buf(),
            property: format!("{}{key}", self.prefix),
            message: message.to_string(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, Error> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.invalid(key, "must be a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(key, "must be true or false")),
        }
    }

    fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, Error> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(self.invalid(key, "must be an object")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, Error> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(self.invalid(&format!("{key}[{i}]"), "must be a string")),
                })
                .collect(),
            Some(_) => Err(self.invalid(key, "must be an array of strings")),
        }
    }

    /// An object of strings; numbers and booleans are accepted and written as text, since
    /// environment variables and build args are text anyway.
    fn string_map(&self, key: &str) -> Result<BTreeMap<String, String>, Error> {
        let Some(map) = self.object(key)? else { return Ok(BTreeMap::new()) };
        map.iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(n) => Ok((k.clone(), n.to_string())),
                Value::Bool(b) => Ok((k.clone(), b.to_string())),
                _ => Err(self.invalid(&format!("{key}.{k}"), "must be a string")),
            })
            .collect()
    }

    fn command(&self, key: &str) -> Result<Option<Command>, Error> {
        let Some(value) = self.obj.get(key) else { return Ok(None) };
        let single = |v: &Value, at: &str| -> Result<Option<Command>, Error> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(Command::Shell(s.clone()))),
                Value::Array(items) if items.is_empty() => Ok(None),
                Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(self.invalid(at, "must be an array of strings")),
                    })
                    .collect::<Result<_, _>>()
                    .map(|argv| Some(Command::Exec(argv))),
                _ => Err(self.invalid(at, "must be a string (run by a shell), an array (run directly) or an object of named commands (run in parallel)")),
            }
        };
        match value {
            Value::Object(named) => {
                let mut out = BTreeMap::new();
                for (name, v) in named {
                    if matches!(v, Value::Object(_)) {
                        return Err(self.invalid(
                            &format!("{key}.{name}"),
                            "must be a string or an array; parallel commands do not nest",
                        ));
                    }
                    if let Some(c) = single(v, &format!("{key}.{name}"))? {
                        out.insert(name.clone(), c);
                    }
                }
                Ok(Some(Command::Parallel(out)))
            }
            v => single(v, key),
        }
    }
}

impl HostRequirements {
    /// The resources to give the workspace: what the configuration asks for, the instance's
    /// defaults for the rest. The policy check refuses requests above the maximum first.
    pub fn resources(&self, defaults: cove_core::Resources) -> cove_core::Resources {
        cove_core::Resources {
            cpus_milli: self.cpus.map_or(defaults.cpus_milli, |c| c.saturating_mul(1000)),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            disk_bytes: self.storage_bytes.or(defaults.disk_bytes),
        }
    }
}

impl Command {
    /// What to run: one `(name, argv)` per process (a name only for the object form, whose
    /// processes run in parallel). A string runs under `/bin/sh -c`, as the spec says.
    pub fn processes(&self) -> Vec<(Option<&str>, Vec<String>)> {
        match self {
            Command::Shell(s) => vec![(None, vec!["/bin/sh".into(), "-c".into(), s.clone()])],
            Command::Exec(argv) => vec![(None, argv.clone())],
            Command::Parallel(named) => named
                .iter()
                .flat_map(|(name, c)| c.processes().into_iter().map(move |(_, argv)| (Some(name.as_str()), argv)))
                .collect(),
        }
    }
}

impl DevContainer {
    /// The attributes for `port`: an exact `portsAttributes` key, else a range key
    /// (`"5000-5010"`), else `otherPortsAttributes`. (Regular-expression keys, which the
    /// spec also allows, match only as written.)
    pub fn port_attributes(&self, port: u16) -> Option<&PortAttributes> {
        let exact = self.ports_attributes.get(&port.to_string());
        let ranged = || {
            self.ports_attributes.iter().find_map(|(key, attrs)| {
                let (lo, hi) = key.split_once('-')?;
                let (lo, hi) = (lo.trim().parse::<u16>().ok()?, hi.trim().parse::<u16>().ok()?);
                (lo..=hi).contains(&port).then_some(attrs)
            })
        };
        exact.or_else(ranged).or(self.other_ports_attributes.as_ref())
    }

    /// `remoteEnv` once the container runs: `${containerEnv:VAR}` filled from its
    /// environment (the only place the spec allows that variable).
    pub fn remote_env_with(
        &self,
        container_env: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Option<String>>, Error> {
        self.remote_env
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Some(v) => Some(crate::vars::substitute_container_env(v, container_env).map_err(|missing| {
                        Error::Invalid {
                            file: self.config_file.clone(),
                            property: format!("remoteEnv.{k}"),
                            message: format!("{} names no variable; write ${{containerEnv:NAME}}", missing.0),
                        }
                    })?),
                    None => None,
                };
                Ok((k.clone(), v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn model(v: Value) -> DevContainer {
        let Value::Object(m) = v else { panic!("not an object") };
        from_value(m, Path::new("/p/.devcontainer/devcontainer.json")).unwrap()
    }

    #[test]
    fn port_attributes_exact_then_range_then_other() {
        let dc =
            model(json!({"image": "x", "portsAttributes": {"3000": {"label": "web"}, "5000-5010": {"label": "range"}},
            "otherPortsAttributes": {"label": "other"}}));
        let label = |p| dc.port_attributes(p).and_then(|a| a.label.clone());
        assert_eq!(label(3000).as_deref(), Some("web"));
        assert_eq!(label(5005).as_deref(), Some("range"));
        assert_eq!(label(5011).as_deref(), Some("other"));
        let bare = model(json!({"image": "x"}));
        assert_eq!(bare.port_attributes(1), None);
    }

    #[test]
    fn processes_of_the_three_forms() {
        let dc = model(json!({"image": "x", "onCreateCommand": "make", "postCreateCommand": ["a", "b"],
            "postStartCommand": {"s": "x y", "t": ["z"]}}));
        assert_eq!(
            dc.lifecycle.on_create.unwrap().processes(),
            [(None, vec!["/bin/sh".into(), "-c".into(), "make".into()])]
        );
        assert_eq!(dc.lifecycle.post_create.unwrap().processes(), [(None, vec!["a".to_string(), "b".into()])]);
        assert_eq!(
            dc.lifecycle.post_start.unwrap().processes(),
            [(Some("s"), vec!["/bin/sh".to_string(), "-c".into(), "x y".into()]), (Some("t"), vec!["z".to_string()])]
        );
    }

    #[test]
    fn remote_env_gets_container_env_later() {
        let dc = model(json!({"image": "x", "remoteEnv": {"PATH": "${containerEnv:PATH}:/x", "GONE": null}}));
        let env = BTreeMap::from([("PATH".to_string(), "/bin".to_string())]);
        let got = dc.remote_env_with(&env).unwrap();
        assert_eq!(got["PATH"].as_deref(), Some("/bin:/x"));
        assert_eq!(got["GONE"], None);
    }

    #[test]
    fn host_requirements_become_resources() {
        let dc = model(json!({"image": "x", "hostRequirements": {"cpus": 4, "memory": "8gb"}}));
        let r = dc.host_requirements.resources(cove_core::Resources::default());
        assert_eq!((r.cpus_milli, r.memory_bytes, r.disk_bytes), (4000, 8 << 30, None));
    }
}
