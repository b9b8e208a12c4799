//! Users and roles, and the one-way form in which API tokens are kept.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Name, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            _ => Err(format!("{s:?} is not a role; use admin or member")),
        }
    }
}

/// What an API token may do. `Read`: only look (GET); `Write`: also change the owner's
/// own workspaces, apps and tokens; `Admin`: everything, and only for admin users.
/// Ordered: a token never grants more than its scope, whatever its user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    Read,
    Write,
    Admin,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Write => "write",
            TokenScope::Admin => "admin",
        }
    }

    /// The widest scope a user of this role may hold.
    pub fn widest_for(role: Role) -> TokenScope {
        match role {
            Role::Admin => TokenScope::Admin,
            Role::Member => TokenScope::Write,
        }
    }
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(TokenScope::Read),
            "write" => Ok(TokenScope::Write),
            "admin" => Ok(TokenScope::Admin),
            _ => Err(format!("{s:?} is not a token scope; use read, write or admin")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: Name,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Set by an admin: no login, no token works.
    #[serde(default)]
    pub disabled: bool,
}

/// API tokens carry 256 random bits, so a plain SHA-256 is enough to store them:
/// unlike passwords there is nothing to guess.
pub fn hash_token(token: &str) -> String {
    hash_from_digest(&token_digest(token))
}

/// [`hash_token`] of a token whose [`token_digest`] is at hand.
pub fn hash_from_digest(digest: &[u8; 32]) -> String {
    hex::encode(digest)
}

/// The SHA-256 of a token, as bytes: [`hash_token`] is its hex form (what the store keeps).
/// For in-memory lookups on every request, which need no text.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// An API token's record. The secret itself is shown once at creation and kept only hashed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: crate::TokenId,
    pub user: UserId,
    pub name: String,
    pub scope: TokenScope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Who may open one app (port or named app) of a workspace through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareLevel {
    /// Only the workspace's owner (the default).
    Owner,
    /// Anyone logged in to this Cove.
    Authenticated,
    /// Anyone at all, without logging in.
    Public,
}

impl ShareLevel {
    /// Whether `caller` (`None` when nobody is logged in) may open an app at this level of a
    /// workspace owned by `owner`.
    pub fn allows(self, owner: UserId, caller: Option<UserId>) -> bool {
        match self {
            ShareLevel::Public => true,
            ShareLevel::Authenticated => caller.is_some(),
            ShareLevel::Owner => caller == Some(owner),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShareLevel::Owner => "owner",
            ShareLevel::Authenticated => "authenticated",
            ShareLevel::Public => "public",
        }
    }
}

impl FromStr for ShareLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(ShareLevel::Owner),
            "authenticated" => Ok(ShareLevel::Authenticated),
            "public" => Ok(ShareLevel::Public),
            _ => Err(format!("{s:?} is not a share level; use owner, authenticated or public")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_are_sha256_in_lowercase_hex() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hash_token("cove_x"), hex::encode(Sha256::digest(b"cove_x")));
    }

    #[test]
    fn share_levels() {
        let (owner, other) = (UserId::new_random(), UserId::new_random());
        for (level, anonymous, someone_else, the_owner) in [
            (ShareLevel::Owner, false, false, true),
            (ShareLevel::Authenticated, false, true, true),
            (ShareLevel::Public, true, true, true),
        ] {
            assert_eq!(
                (level.allows(owner, None), level.allows(owner, Some(other)), level.allows(owner, Some(owner))),
                (anonymous, someone_else, the_owner),
                "{level:?}"
            );
        }
    }
}
