//! Secrets, encrypted at rest: AES-256-GCM with a fresh random 96-bit nonce per value,
//! under an instance key kept outside the database — `<data-dir>/secret.key` (0600, made on
//! the first start) or, when set, the `COVE_SECRET_KEY` environment variable (64 hex
//! digits). A database copied without the key reveals nothing; a wrong key fails loudly at
//! start-up (a sealed check value is kept) instead of handing out garbage. Each value's
//! identity (row) is bound into it as associated data, so ciphertext moved to another row
//! does not decrypt.
//!
//! What is sealed: users' Git tokens, and the secrets of the three scopes (instance, user,
//! workspace) that workspaces get as environment variables and files. A workspace gets a
//! frozen copy of the resolved set when it is made (a later scope overrides an earlier one
//! by name); `refresh` opts in to the current values. Values leave the server only over the
//! workspace's control socket, to its agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use cove_core::{UserId, Workspace, WorkspaceId};
use cove_store::{FrozenSecret, GitToken, Sealed, SealedRef, Secret, SecretKind, SecretScope, Store};
use rand::RngCore;

use crate::error::ApiError;

const KEY_FILE: &str = "secret.key";
/// Where a rotation writes the new key until the database holds only values sealed with it.
const NEW_KEY_FILE: &str = "secret.key.new";
/// The instance key from the environment, instead of the key file: 64 hex digits.
pub const KEY_ENV: &str = "COVE_SECRET_KEY";
/// Longest secret value: secrets are tokens, keys and small config files.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
const MAX_NAME_CHARS: usize = 128;
const KEY_CHECK_PLAIN: &[u8] = b"cove instance key check";

/// Rotation re-encrypts everything at once: no value may be sealed under the old key
/// meanwhile (readers and writers hold it shared, a rotation alone).
static ROTATION: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[derive(Clone, Debug)]
enum KeySource {
    File(PathBuf),
    Env,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "{}", path.display()),
            KeySource::Env => write!(f, "${KEY_ENV}"),
        }
    }
}

pub struct Vault {
    cipher: Aes256Gcm,
    source: KeySource,
}

impl Vault {
    /// The instance key: from `COVE_SECRET_KEY` if set, else the key file in `data_dir`,
    /// made (32 random bytes, 0600) if there is none yet.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(data_dir, std::env::var(KEY_ENV).ok())
    }

    /// [`Self::load_or_create`] with the environment's key given (`None`: not set).
    fn load_with(data_dir: &Path, env_key: Option<String>) -> anyhow::Result<Self> {
        if let Some(text) = env_key {
            let key = parse_hex_key(text.trim()).ok_or_else(|| {
                anyhow::anyhow!("{KEY_ENV} must be 64 hex digits (32 bytes), such as `openssl rand -hex 32` prints")
            })?;
            return Ok(Self::with_key(key, KeySource::Env));
        }
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                anyhow::anyhow!("{} must hold 32 bytes: restore the instance key from a backup", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = random_key();
                crate::tickets::write_private_bytes(&path, &key)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                key
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(Self::with_key(key, KeySource::File(path)))
    }

    fn with_key(key: [u8; 32], source: KeySource) -> Self {
        Self { cipher: Aes256Gcm::new(&key.into()), source }
    }

    fn seal_bytes(&self, aad: &[u8], plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| ApiError::Internal("cannot encrypt a secret".into()))?;
        Ok((nonce.to_vec(), ciphertext))
    }

    fn open_bytes(&self, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
        if nonce.len() != 12 {
            return None;
        }
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad }).ok()
    }

    fn open_text(&self, aad: &[u8], nonce: &[u8], ciphertext: &[u8], what: &str) -> Result<String, ApiError> {
        self.open_bytes(aad, nonce, ciphertext).and_then(|p| String::from_utf8(p).ok()).ok_or_else(|| {
            ApiError::Internal(format!("{what} cannot be decrypted: {} is not the key it was stored with", self.source))
        })
    }

    fn aad(user: UserId, host: &str) -> Vec<u8> {
        format!("cove git token\0{user}\0{host}").into_bytes()
    }

    pub fn seal(&self, user: UserId, host: &str, username: &str, token: &str) -> Result<GitToken, ApiError> {
        let (nonce, ciphertext) = self.seal_bytes(&Self::aad(user, host), token.as_bytes())?;
        Ok(GitToken {
            user,
            host: host.into(),
            username: username.into(),
            nonce,
            ciphertext,
            created_at: chrono::Utc::now(),
        })
    }

    /// The token in clear. Fails (loudly, in the log) when the key is not the one it was
    /// stored with.
    pub fn open(&self, stored: &GitToken) -> Result<String, ApiError> {
        let what = format!("the Git token of user {} for {}", stored.user, stored.host);
        self.open_text(&Self::aad(stored.user, &stored.host), &stored.nonce, &stored.ciphertext, &what)
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
}

fn parse_hex_key(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// What each sealed value is bound to.
fn aad_for(what: &SealedRef) -> Vec<u8> {
    match what {
        SealedRef::KeyCheck => b"cove key check".to_vec(),
        SealedRef::GitToken { user, host } => Vault::aad(*user, host),
        SealedRef::Secret { scope, name, kind } => {
            format!("cove secret\0{}\0{}\0{name}\0{}", scope.as_str(), scope.owner(), kind.as_str()).into_bytes()
        }
        SealedRef::Frozen { workspace, name, kind } => {
            format!("cove frozen secret\0{workspace}\0{name}\0{}", kind.as_str()).into_bytes()
        }
    }
}

/// At start-up: the instance key must be the one the database was sealed with. The first
/// start (of a database without a check value) stores one. A rotation cut short between
/// the database and the key file is finished here.
pub async fn check_key(store: &dyn Store, data_dir: &Path) -> anyhow::Result<()> {
    let vault = Vault::load_or_create(data_dir)?;
    let opens = |vault: &Vault, check: &Sealed| {
        vault.open_bytes(&aad_for(&SealedRef::KeyCheck), &check.nonce, &check.ciphertext).as_deref()
            == Some(KEY_CHECK_PLAIN)
    };
    match store.key_check_get().await? {
        Some(check) if opens(&vault, &check) => Ok(()),
        Some(check) => {
            let pending = data_dir.join(NEW_KEY_FILE);
            if let (KeySource::File(path), Ok(bytes)) = (&vault.source, std::fs::read(&pending)) {
                if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    if opens(&Vault::with_key(key, KeySource::File(pending.clone())), &check) {
                        std::fs::rename(&pending, path)?;
                        tracing::warn!(
                            "finished an interrupted key rotation: {} is the new instance key",
                            path.display()
                        );
                        return Ok(());
                    }
                }
            }
            anyhow::bail!(
                "the instance key {} is not the key this database's secrets were encrypted with; \
                 restore the key from a backup (or set {KEY_ENV} to it) and start again",
                vault.source
            )
        }
        None => {
            // A database from before the check: its Git tokens tell whether the key fits.
            for sealed in store.sealed_list_all().await? {
                if vault.open_bytes(&aad_for(&sealed.what), &sealed.nonce, &sealed.ciphertext).is_none() {
                    anyhow::bail!(
                        "the instance key {} does not decrypt this database's secrets; restore the key from a backup",
                        vault.source
                    );
                }
            }
            let (nonce, ciphertext) = vault
                .seal_bytes(&aad_for(&SealedRef::KeyCheck), KEY_CHECK_PLAIN)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            store.key_check_set(Sealed { what: SealedRef::KeyCheck, nonce, ciphertext }).await?;
            Ok(())
        }
    }
}

/// Re-encrypts every stored value under a new random key and makes it the instance key.
/// The new key is written next to the old one first, the database is rewritten in one
/// transaction, then the new key replaces the old file: a crash in between is finished by
/// [`check_key`] at the next start. Returns how many values were re-encrypted.
pub async fn rotate_key(store: &dyn Store, data_dir: &Path) -> Result<usize, ApiError> {
    let _only = ROTATION.write().await;
    let old = Vault::load_or_create(data_dir).map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    let KeySource::File(key_path) = &old.source else {
        return Err(ApiError::Conflict(format!(
            "the instance key comes from {KEY_ENV}; re-encrypting needs the key file (unset {KEY_ENV}, \
             put the key in {}, restart, and rotate)",
            data_dir.join(KEY_FILE).display()
        )));
    };
    let key = random_key();
    let pending = data_dir.join(NEW_KEY_FILE);
    let new = Vault::with_key(key, KeySource::File(pending.clone()));
    let mut rows = Vec::new();
    for sealed in store.sealed_list_all().await? {
        let aad = aad_for(&sealed.what);
        let plain = old.open_bytes(&aad, &sealed.nonce, &sealed.ciphertext).ok_or_else(|| {
            ApiError::Internal(format!("a stored value ({:?}) does not decrypt with {}", sealed.what, old.source))
        })?;
        let (nonce, ciphertext) = new.seal_bytes(&aad, &plain)?;
        rows.push(Sealed { what: sealed.what, nonce, ciphertext });
    }
    let _ = std::fs::remove_file(&pending);
    crate::tickets::write_private_bytes(&pending, &key)
        .map_err(|e| ApiError::Internal(format!("cannot write {}: {e}", pending.display())))?;
    let count = rows.len();
    if let Err(e) = store.sealed_replace_all(rows).await {
        let _ = std::fs::remove_file(&pending);
        return Err(e.into());
    }
    std::fs::rename(&pending, key_path)
        .map_err(|e| ApiError::Internal(format!("cannot move {} to {}: {e}", pending.display(), key_path.display())))?;
    tracing::info!(values = count, "instance key rotated");
    Ok(count)
}

fn vault(data_dir: &Path) -> Result<Vault, ApiError> {
    Vault::load_or_create(data_dir).map_err(|e| ApiError::Internal(format!("{e:#}")))
}

/// The user's token for `host` in clear, if one is stored.
pub async fn git_token_for(
    store: &dyn Store,
    data_dir: &Path,
    user: UserId,
    host: &str,
) -> Result<Option<(String, String)>, ApiError> {
    let _shared = ROTATION.read().await;
    let Some(stored) = store.git_token_get(user, host).await? else { return Ok(None) };
    Ok(Some((stored.username.clone(), vault(data_dir)?.open(&stored)?)))
}

/// Seals a Git token for storing, under the current key.
pub async fn git_token_store(
    store: &dyn Store,
    data_dir: &Path,
    user: UserId,
    host: &str,
    username: &str,
    token: &str,
) -> Result<GitToken, ApiError> {
    let _shared = ROTATION.read().await;
    let sealed = vault(data_dir)?.seal(user, host, username, token)?;
    Ok(store.git_token_set(sealed).await?)
}

/// Checks a secret's name for its kind: an environment variable's name, or a plain file name.
pub fn check_name(name: &str, kind: SecretKind) -> Result<(), ApiError> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::InvalidRequest(format!("a secret's name must have 1 to {MAX_NAME_CHARS} characters")));
    }
    match kind {
        SecretKind::Env => {
            let mut chars = name.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ApiError::InvalidRequest(format!(
                    "{name:?} is not an environment variable name: use letters, digits and _, not starting with a digit"
                )));
            }
        }
        SecretKind::File => {
            if name.starts_with('.') || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                return Err(ApiError::InvalidRequest(format!(
                    "{name:?} is not a secret file name: use letters, digits, '.', '_' and '-', not starting with '.'"
                )));
            }
        }
    }
    Ok(())
}

fn check_value(name: &str, kind: SecretKind, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::PayloadTooLarge(format!("secret {name} is larger than {MAX_VALUE_BYTES} bytes")));
    }
    if kind == SecretKind::Env && value.contains('\0') {
        return Err(ApiError::InvalidRequest(format!(
            "secret {name} is an environment variable and cannot hold a NUL byte"
        )));
    }
    Ok(())
}

/// Stores a secret in a scope (replacing one of that name).
pub async fn set(
    store: &dyn Store,
    data_dir: &Path,
    scope: SecretScope,
    name: &str,
    kind: SecretKind,
    value: &str,
) -> Result<Secret, ApiError> {
    check_name(name, kind)?;
    check_value(name, kind, value)?;
    let _shared = ROTATION.read().await;
    let what = SealedRef::Secret { scope, name: name.to_string(), kind };
    let (nonce, ciphertext) = vault(data_dir)?.seal_bytes(&aad_for(&what), value.as_bytes())?;
    let now = chrono::Utc::now();
    let secret = Secret { scope, name: name.into(), kind, nonce, ciphertext, created_at: now, updated_at: now };
    Ok(store.secret_set(secret).await?)
}

/// The set a workspace would get now: instance, then its owner's, then its own secrets,
/// each overriding the earlier by name; sealed for the workspace.
async fn resolve(store: &dyn Store, vault: &Vault, ws: &Workspace) -> Result<Vec<FrozenSecret>, ApiError> {
    let mut merged: BTreeMap<String, Secret> = BTreeMap::new();
    for scope in [SecretScope::Instance, SecretScope::User(ws.owner), SecretScope::Workspace(ws.id)] {
        for secret in store.secret_list(scope).await? {
            merged.insert(secret.name.clone(), secret);
        }
    }
    let mut set = Vec::with_capacity(merged.len());
    for (name, secret) in merged {
        let from = SealedRef::Secret { scope: secret.scope, name: name.clone(), kind: secret.kind };
        let what = format!("secret {name} ({} scope)", secret.scope.as_str());
        let value = vault.open_text(&aad_for(&from), &secret.nonce, &secret.ciphertext, &what)?;
        let to = SealedRef::Frozen { workspace: ws.id, name: name.clone(), kind: secret.kind };
        let (nonce, ciphertext) = vault.seal_bytes(&aad_for(&to), value.as_bytes())?;
        set.push(FrozenSecret {
            workspace: ws.id,
            name,
            kind: secret.kind,
            scope: secret.scope.as_str().to_string(),
            nonce,
            ciphertext,
            frozen_at: chrono::Utc::now(),
        });
    }
    Ok(set)
}

/// Freezes the current resolved set into the workspace: at its creation, and when its
/// owner refreshes it.
pub async fn freeze(store: &dyn Store, data_dir: &Path, ws: &Workspace) -> Result<Vec<FrozenSecret>, ApiError> {
    let _shared = ROTATION.read().await;
    let set = resolve(store, &vault(data_dir)?, ws).await?;
    store.workspace_secret_freeze(ws.id, set).await?;
    Ok(store.workspace_secret_list(ws.id).await?)
}

/// A workspace's frozen set in clear, for its agent.
pub async fn delivered(
    store: &dyn Store,
    data_dir: &Path,
    ws: WorkspaceId,
) -> Result<Vec<cove_core::agent::DeliveredSecret>, ApiError> {
    let _shared = ROTATION.read().await;
    let vault = vault(data_dir)?;
    let mut out = Vec::new();
    for s in store.workspace_secret_list(ws).await? {
        let what = SealedRef::Frozen { workspace: ws, name: s.name.clone(), kind: s.kind };
        let value = vault.open_text(
            &aad_for(&what),
            &s.nonce,
            &s.ciphertext,
            &format!("secret {} of workspace {ws}", s.name),
        )?;
        out.push(cove_core::agent::DeliveredSecret { name: s.name, file: s.kind == SecretKind::File, value });
    }
    Ok(out)
}

#[allow(clippy::unwrap_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_wrong_keys() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::load_or_create(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let user = UserId::new_random();
        let a = vault.seal(user, "github.com", "git", "ghp_secret").unwrap();
        let b = vault.seal(user, "github.com", "git", "ghp_secret").unwrap();
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per value");
        assert!(!a.ciphertext.windows(10).any(|w| w == b"ghp_secret"));
        assert_eq!(vault.open(&a).unwrap(), "ghp_secret");
        // The same key from the file.
        assert_eq!(Vault::load_or_create(dir.path()).unwrap().open(&a).unwrap(), "ghp_secret");
        // Moved to another host's row: refused.
        let moved = GitToken { host: "evil.example".into(), ..a.clone() };
        assert!(vault.open(&moved).is_err());
        // Another instance key: refused, naming the key file.
        let other = tempfile::tempdir().unwrap();
        let err = Vault::load_or_create(other.path()).unwrap().open(&a).unwrap_err();
        assert!(err.to_string().contains("internal") || format!("{err:?}").contains("secret.key"), "{err:?}");
        std::fs::write(other.path().join(KEY_FILE), b"short").unwrap();
        assert!(Vault::load_or_create(other.path()).is_err());
    }

    #[test]
    fn the_key_from_the_environment_wins_and_makes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let from_env = Vault::load_with(dir.path(), Some(format!("{}\n", hex::encode(key)))).unwrap();
        assert!(!dir.path().join(KEY_FILE).exists());
        let sealed = from_env.seal(UserId::new_random(), "h", "u", "value").unwrap();
        assert_eq!(Vault::with_key(key, KeySource::Env).open(&sealed).unwrap(), "value");
        // Not the file's key, even once a file exists.
        let file = Vault::load_with(dir.path(), None).unwrap();
        assert!(file.open(&sealed).is_err());
        assert_eq!(Vault::load_with(dir.path(), Some(hex::encode(key))).unwrap().open(&sealed).unwrap(), "value");
        for bad in ["", "abc", &"zz".repeat(32), &hex::encode([1u8; 31])] {
            let err = Vault::load_with(dir.path(), Some(bad.to_string())).err().unwrap();
            assert!(err.to_string().contains("COVE_SECRET_KEY must be 64 hex digits"), "{err}");
        }
    }

    #[test]
    fn secret_names_by_kind() {
        for (name, kind, ok) in [
            ("API_KEY", SecretKind::Env, true),
            ("_x1", SecretKind::Env, true),
            ("1X", SecretKind::Env, false),
            ("A-B", SecretKind::Env, false),
            ("", SecretKind::Env, false),
            ("cert.pem", SecretKind::File, true),
            ("id_rsa-2", SecretKind::File, true),
            (".hidden", SecretKind::File, false),
            ("..", SecretKind::File, false),
            ("a/b", SecretKind::File, false),
            ("a b", SecretKind::File, false),
        ] {
            assert_eq!(check_name(name, kind).is_ok(), ok, "{name:?} as {kind:?}");
        }
        assert!(check_name(&"A".repeat(129), SecretKind::Env).is_err());
    }
}
