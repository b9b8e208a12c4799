//! Signed, short-lived proofs of identity for app hosts.
//!
//! The dashboard session never leaves its origin. To open an app host, the dashboard
//! issues a *ticket*: signed, bound to one host, valid for a minute, usable once. The app
//! host trades it for an *app session*: a signed cookie bound to that host alone. Both
//! are HMAC-SHA256 over a small JSON payload, keyed by a secret kept in the data directory
//! (not the database), so the proxy needs no database write to check a session.
//!
//! Both carry the id of the dashboard session they came from: an app session lasts only
//! as long as that session does (the gate checks it, through a short cache), so logging
//! out, revoking the session or disabling the user closes the app hosts too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use cove_core::{TokenId, UserId};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const TICKET_TTL: Duration = Duration::seconds(60);
pub const SESSION_TTL: Duration = Duration::hours(12);
const KEY_FILE: &str = "proxy.key";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The app host (with port) it may be traded on.
    pub host: String,
    pub user: UserId,
    /// The dashboard session (its token) that asked for the ticket.
    pub session: TokenId,
    /// Where to go on that host afterwards.
    pub path: String,
    pub expires: i64,
    pub nonce: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppSession {
    pub host: String,
    pub user: UserId,
    /// The dashboard session it came from: it ends with it. (A cookie from before this
    /// field existed fails to parse, so it is refused: fail closed.)
    pub session: TokenId,
    pub expires: i64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed")]
    Malformed,
    #[error("bad signature")]
    Forged,
    #[error("expired")]
    Expired,
    #[error("issued for another host")]
    WrongHost,
    #[error("already used")]
    Reused,
}

pub struct Signer {
    key: [u8; 32],
    /// Nonces of tickets already traded, until they expire anyway.
    used: Mutex<HashMap<String, i64>>,
}

impl Signer {
    /// Loads the key from the data directory, making it (0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| anyhow::anyhow!("{} must hold 32 bytes; delete it to make a new one", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private_bytes(&path, &key)?;
                key
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(Self::with_key(key))
    }

    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key, used: Mutex::new(HashMap::new()) }
    }

    /// A key for another purpose, derived from this one (HMAC-SHA256 of `label`), so that
    /// one secret on disk serves several uses without any two sharing a key.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn ticket(&self, host: &str, user: UserId, session: TokenId, path: &str, now: DateTime<Utc>) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let ticket = Ticket {
            host: host.to_string(),
            user,
            session,
            path: path.to_string(),
            expires: (now + TICKET_TTL).timestamp(),
            nonce: hex::encode(nonce),
        };
        self.sign(&ticket)
    }

    /// Checks a ticket for `host` and marks it used.
    pub fn redeem(&self, token: &str, host: &str, now: DateTime<Utc>) -> Result<Ticket, TicketError> {
        let ticket: Ticket = self.verify(token)?;
        if ticket.expires <= now.timestamp() {
            return Err(TicketError::Expired);
        }
        if ticket.host != host {
            return Err(TicketError::WrongHost);
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, expires| *expires > now.timestamp());
        if used.insert(ticket.nonce.clone(), ticket.expires).is_some() {
            return Err(TicketError::Reused);
        }
        Ok(ticket)
    }

    /// The app session a redeemed ticket is traded for, bound to the same dashboard session.
    pub fn session(&self, host: &str, ticket: &Ticket, now: DateTime<Utc>) -> String {
        let expires = (now + SESSION_TTL).timestamp();
        self.sign(&AppSession { host: host.to_string(), user: ticket.user, session: ticket.session, expires })
    }

    pub fn check_session(&self, token: &str, host: &str, now: DateTime<Utc>) -> Result<AppSession, TicketError> {
        let session: AppSession = self.verify(token)?;
        if session.expires <= now.timestamp() {
            return Err(TicketError::Expired);
        }
        if session.host != host {
            return Err(TicketError::WrongHost);
        }
        Ok(session)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot be refused.
        #[allow(clippy::expect_used)]
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    fn sign<T: Serialize>(&self, payload: &T) -> String {
        let body = B64.encode(serde_json::to_vec(payload).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        format!("{body}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    fn verify<T: for<'de> Deserialize<'de>>(&self, token: &str) -> Result<T, TicketError> {
        let (body, signature) = token.split_once('.').ok_or(TicketError::Malformed)?;
        let signature = B64.decode(signature).map_err(|_| TicketError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).map_err(|_| TicketError::Forged)?;
        let json = B64.decode(body).map_err(|_| TicketError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)
    }
}

pub(crate) fn write_private_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOST: &str = "8080--api--ada.localhost:7080";

    #[test]
    fn tickets_are_single_use_host_bound_and_expire() {
        let signer = Signer::with_key([7; 32]);
        let user = UserId::new_random();
        let now = Utc::now();
        let t = signer.ticket(HOST, user, TokenId::new_random(), "/x?y=1", now);
        assert_eq!(signer.redeem(&t, "8080--web--ada.localhost:7080", now), Err(TicketError::WrongHost));
        let ticket = signer.redeem(&t, HOST, now).unwrap();
        assert_eq!((ticket.user, ticket.path.as_str()), (user, "/x?y=1"));
        assert_eq!(signer.redeem(&t, HOST, now), Err(TicketError::Reused));
        let late = signer.ticket(HOST, user, TokenId::new_random(), "/", now);
        assert_eq!(signer.redeem(&late, HOST, now + TICKET_TTL), Err(TicketError::Expired));
    }

    #[test]
    fn forgeries_are_refused() {
        let signer = Signer::with_key([7; 32]);
        let other = Signer::with_key([8; 32]);
        let now = Utc::now();
        let t = other.ticket(HOST, UserId::new_random(), TokenId::new_random(), "/", now);
        assert_eq!(signer.redeem(&t, HOST, now), Err(TicketError::Forged));
        let genuine = signer.ticket(HOST, UserId::new_random(), TokenId::new_random(), "/", now);
        let (body, sig) = genuine.split_once('.').unwrap();
        let tampered = format!("{}A.{sig}", &body[..body.len() - 1]);
        assert!(matches!(signer.redeem(&tampered, HOST, now), Err(TicketError::Forged | TicketError::Malformed)));
        assert_eq!(signer.redeem("nonsense", HOST, now), Err(TicketError::Malformed));
    }

    #[test]
    fn sessions_are_host_bound_and_expire() {
        let signer = Signer::with_key([7; 32]);
        let user = UserId::new_random();
        let now = Utc::now();
        let session = TokenId::new_random();
        let ticket = signer.redeem(&signer.ticket(HOST, user, session, "/", now), HOST, now).unwrap();
        let s = signer.session(HOST, &ticket, now);
        let checked = signer.check_session(&s, HOST, now).unwrap();
        assert_eq!((checked.user, checked.session), (user, session));
        assert_eq!(signer.check_session(&s, "8080--web--ada.localhost:7080", now), Err(TicketError::WrongHost));
        assert_eq!(signer.check_session(&s, HOST, now + SESSION_TTL), Err(TicketError::Expired));
    }
}
