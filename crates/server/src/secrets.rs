//! Users' Git tokens, encrypted at rest: AES-256-GCM with a fresh random 96-bit nonce per
//! value, under an instance key kept outside the database (`<data-dir>/secret.key`, 0600,
//! made on the first start). A database copied without the key reveals no token; a wrong
//! or missing key for existing ciphertext fails loudly instead of handing out garbage.
//! The stored host and user are bound into each value (as associated data), so ciphertext
//! moved to another row does not decrypt.

use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use cove_core::UserId;
use cove_store::{GitToken, Store};
use rand::RngCore;

use crate::error::ApiError;

const KEY_FILE: &str = "secret.key";

pub struct Vault {
    cipher: Aes256Gcm,
    path: PathBuf,
}

impl Vault {
    /// The instance key in `data_dir`, made (32 random bytes, 0600) if there is none yet.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                anyhow::anyhow!("{} must hold 32 bytes: restore the instance key from a backup", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                crate::tickets::write_private_bytes(&path, &key)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                key
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        let cipher = Aes256Gcm::new(&key.into());
        Ok(Self { cipher, path })
    }

    fn aad(user: UserId, host: &str) -> Vec<u8> {
        format!("cove git token\0{user}\0{host}").into_bytes()
    }

    pub fn seal(&self, user: UserId, host: &str, username: &str, token: &str) -> Result<GitToken, ApiError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(user, host);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: token.as_bytes(), aad: &aad })
            .map_err(|_| ApiError::Internal(format!("cannot encrypt the Git token for {host}")))?;
        Ok(GitToken {
            user,
            host: host.into(),
            username: username.into(),
            nonce: nonce.to_vec(),
            ciphertext,
            created_at: chrono::Utc::now(),
        })
    }

    /// The token in clear. Fails (loudly, in the log) when the key is not the one it was
    /// stored with.
    pub fn open(&self, stored: &GitToken) -> Result<String, ApiError> {
        let aad = Self::aad(stored.user, &stored.host);
        let fail = || {
            ApiError::Internal(format!(
                "the Git token of user {} for {} cannot be decrypted: {} is not the key it was stored with",
                stored.user,
                stored.host,
                self.path.display()
            ))
        };
        if stored.nonce.len() != 12 {
            return Err(fail());
        }
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&stored.nonce), Payload { msg: &stored.ciphertext, aad: &aad })
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// The user's token for `host` in clear, if one is stored.
pub async fn git_token_for(
    store: &dyn Store,
    data_dir: &Path,
    user: UserId,
    host: &str,
) -> Result<Option<(String, String)>, ApiError> {
    let Some(stored) = store.git_token_get(user, host).await? else { return Ok(None) };
    let vault = Vault::load_or_create(data_dir).map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    Ok(Some((stored.username.clone(), vault.open(&stored)?)))
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
}
