//! What can go wrong reading a dev container configuration. Every message names the file
//! or property at fault and, where there is one, what to do about it.

use std::path::PathBuf;

use crate::jsonc::SyntaxError;
use crate::policy::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no dev container configuration in {}: looked for {}; add one or pass --devcontainer-path", dir.display(), list(looked))]
    NotFound { dir: PathBuf, looked: Vec<PathBuf> },
    #[error("several dev container configurations in {}: {}; choose one with --devcontainer-path", dir.display(), list(candidates))]
    Ambiguous { dir: PathBuf, candidates: Vec<PathBuf> },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {error}", file.display())]
    Syntax { file: PathBuf, error: SyntaxError },
    #[error("{}: `{property}` {message}", file.display())]
    Invalid { file: PathBuf, property: String, message: String },
    #[error("{}: Docker Compose configurations (`dockerComposeFile`) are not supported yet; use `image` or `build` instead", file.display())]
    ComposeUnsupported { file: PathBuf },
    #[error("{}: the configuration names no image; set `image`, or `build.dockerfile`", file.display())]
    NoImage { file: PathBuf },
    #[error("{}: set either `image` or `build`, not both", file.display())]
    ImageAndBuild { file: PathBuf },
    #[error("feature `{id}`: {message}")]
    Feature { id: String, message: String },
    #[error("feature `{id}` needs a registry; none is reachable from this machine: use a local feature (`./{name}` with devcontainer-feature.json and install.sh) instead", name = short_name(id))]
    FeatureNeedsRegistry { id: String },
    #[error("features depend on each other in a cycle: {}; remove one of the `dependsOn`/`installsAfter` entries", ids.join(" -> "))]
    FeatureCycle { ids: Vec<String> },
    #[error("{}", refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused { refusals: Vec<Refusal> },
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// `ghcr.io/devcontainers/features/node:1` -> `node`.
fn short_name(id: &str) -> &str {
    let last = id.rsplit('/').next().unwrap_or(id);
    last.split([':', '@']).next().unwrap_or(last)
}
