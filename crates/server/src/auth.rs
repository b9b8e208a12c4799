//! Who is calling: passwords (argon2id), API tokens (random, stored as SHA-256), and the
//! admin account made on first start.

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
use cove_core::{hash_token, Name, Role, TokenScope, User};
use cove_store::{NewToken, NewUser, Store};
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;

use crate::error::ApiError;
use crate::AppState;

pub const TOKEN_PREFIX: &str = "cove_";
pub const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

/// A new API token secret: 256 random bits, hex, with a recognisable prefix so that
/// secret scanners can find leaked ones.
pub fn new_token_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&rand_salt()).map_err(|e| ApiError::internal("salt", e))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal("password hash", e))
}

fn rand_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// Constant-time by construction: argon2's verifier compares digests, and an unknown
/// user is checked against a dummy hash so both paths cost the same.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$9cVnYHbP2AxuUUd7hSgK1uNd7J4PzXHZa3MzAcdNoi4";
    // A stored value that is no hash (an OIDC-only user's) costs the same as the rest.
    let parsed = stored.and_then(|h| PasswordHash::new(h).ok());
    let usable = parsed.is_some();
    let Some(parsed) = parsed.or_else(|| PasswordHash::new(DUMMY).ok()) else {
        return false;
    };
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && usable
}

/// On a fresh data directory: makes the `admin` account with a random password, written
/// to a 0600 file (as Jenkins does) rather than to the log.
pub async fn ensure_admin(store: &dyn Store, data_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    if store.user_count().await? > 0 {
        return Ok(None);
    }
    let password = Alphanumeric.sample_string(&mut rand::rng(), 24);
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let name = Name::parse("admin")?;
    store.user_create(NewUser { name, role: Role::Admin, password_hash: hash }).await?;
    let path = data_dir.join(INITIAL_PASSWORD_FILE);
    write_private(&path, &format!("{password}\n"))?;
    Ok(Some(path))
}

/// Writes a file only its owner can read, created that way (no window where it is 0644).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())
}

/// Makes a token for `user`; the secret is returned once and only its hash is stored.
pub async fn issue_token(
    store: &dyn Store,
    user: &User,
    name: &str,
    scope: TokenScope,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> Result<(String, cove_core::ApiToken), ApiError> {
    let secret = new_token_secret();
    let new = NewToken { user: user.id, name: name.to_string(), scope, token_hash: hash_token(&secret), expires_at };
    let token = store.token_create(new).await?;
    Ok((secret, token))
}

/// The user with this name and password, or `None`. The same work is done whether or not
/// the user exists, and argon2 runs off the async workers: it is deliberately slow.
pub async fn check_password(store: &dyn Store, username: &str, password: String) -> Result<Option<User>, ApiError> {
    let found = match Name::parse(username) {
        Ok(name) => store.user_get_by_name_with_password(&name).await?,
        Err(_) => None,
    };
    let stored = found.as_ref().map(|(_, hash)| hash.clone());
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, stored.as_deref()))
        .await
        .map_err(|e| ApiError::internal("password check", e))?;
    // A disabled user is refused like a wrong password: nothing tells the account exists.
    Ok(found.filter(|(user, _)| ok && !user.disabled).map(|(user, _)| user))
}

/// The authenticated caller of an API route, as far as its token lets it act: with a
/// token below `admin` scope an admin is treated as a member (`.0.role`), so every check
/// of the role also honours the scope. `.1` keeps the real role and the scope.
pub struct Caller(pub User, pub Access);

#[derive(Clone, Copy, Debug)]
pub struct Access {
    pub scope: TokenScope,
    /// The user's own role, whatever the token allows.
    pub role: Role,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header =
            parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                ApiError::Unauthenticated(
                    "missing API token; log in with `cove login` or send Authorization: Bearer <token>".into(),
                )
            })?;
        let secret = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Unauthenticated("the Authorization header must be `Bearer <token>`".into()))?;
        let hash = hash_token(secret);
        let now = Utc::now();
        let Some((token, mut user)) = state.store.token_authenticate(&hash, now).await? else {
            if state.store.token_expired(&hash, now).await? {
                return Err(ApiError::Unauthenticated(
                    "token expired; log in again with `cove login` or make a new one with `cove tokens create`".into(),
                ));
            }
            return Err(ApiError::Unauthenticated("invalid API token; log in again with `cove login`".into()));
        };
        // A token never outranks its user: an admin made a member loses admin at once.
        let scope = token.scope.min(TokenScope::widest_for(user.role));
        if let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>() {
            slot.set(Some(user.id), user.name.as_str());
        }
        let access = Access { scope, role: user.role };
        check_scope(scope, &parts.method, parts.uri.path())?;
        if scope < TokenScope::Admin {
            user.role = Role::Member;
        }
        Ok(Caller(user, access))
    }
}

/// What a `read` token may not do: change anything (any method but GET and HEAD), or open
/// a shell or a tunnel (GET WebSockets, which also wake the workspace).
fn check_scope(scope: TokenScope, method: &axum::http::Method, path: &str) -> Result<(), ApiError> {
    use axum::http::Method;
    if scope > TokenScope::Read {
        return Ok(());
    }
    let looks = *method == Method::GET || *method == Method::HEAD;
    let tunnel = path.ends_with("/ssh") || path.contains("/tcp/");
    if looks && !tunnel {
        return Ok(());
    }
    Err(ApiError::Forbidden("this token's scope is read; make one with `cove tokens create NAME --scope write`".into()))
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match (self.1.scope, self.1.role) {
            (TokenScope::Admin, _) => Ok(()),
            (scope, Role::Admin) => Err(ApiError::Forbidden(format!(
                "this token's scope is {scope}; make one with `cove tokens create NAME --scope admin`"
            ))),
            (_, Role::Member) => Err(ApiError::Forbidden("only admins may do this".into())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong horse", Some(&hash)));
        assert!(!verify_password("correct horse", None));
        assert!(!verify_password("correct horse", Some("not a hash")));
        assert!(!verify_password("", Some(crate::oidc::NO_PASSWORD)));
    }

    #[test]
    fn token_secrets_are_distinct_and_prefixed() {
        let (a, b) = (new_token_secret(), new_token_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
    }
}
