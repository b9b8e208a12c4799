//! Where the CLI finds its server and token: flags, then `COVE_URL`/`COVE_TOKEN`, then the
//! file `cove login` writes (`$COVE_CONFIG_DIR` or the user's config dir, `cove/config.toml`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Saved {
    pub url: Option<String>,
    pub token: Option<String>,
}

pub fn config_path() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COVE_CONFIG_DIR") {
        return Ok(PathBuf::from(dir).join("config.toml"));
    }
    let base = dirs::config_dir().context("cannot find a config directory; set COVE_CONFIG_DIR")?;
    Ok(base.join("cove").join("config.toml"))
}

pub fn data_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("COVE_DATA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::data_dir().context("cannot find a data directory; set COVE_DATA_DIR or --data-dir")?;
    Ok(base.join("cove"))
}

pub fn load() -> anyhow::Result<Saved> {
    let path = config_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{} is not valid; fix or delete it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn save(saved: &Saved) -> anyhow::Result<PathBuf> {
    let path = config_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(saved)?;
    // The file holds a token: create it readable by its owner only.
    cove_server::auth::write_private(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The server URL and token to use, or a message saying how to get them.
pub fn resolve(url: Option<String>, token: Option<String>) -> anyhow::Result<(String, String)> {
    let saved = load()?;
    let url = url.or(saved.url).unwrap_or_else(|| format!("http://{}", cove_server::DEFAULT_LISTEN));
    let Some(token) = token.or(saved.token) else {
        bail!("not logged in; run `cove login {url}` (or set COVE_TOKEN)");
    };
    Ok((url.trim_end_matches('/').to_string(), token))
}
