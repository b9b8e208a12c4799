//! Logging in through an OpenID Connect provider (Keycloak, Google, GitLab, ...): the
//! authorization code flow with PKCE, its `state` bound to the browser by a cookie and
//! its `nonce` checked in the ID token, ending in the same session cookie a password
//! login gives.
//!
//! A provider's account is linked to a Cove user by (issuer, subject), never by email
//! alone; the user is made on first login. Who may log in (email domains, groups) and
//! who is an admin (a group) is a pure decision, [`decide`], on what the provider said.
//!
//! Pending logins live in this process's memory for ten minutes: a restart only makes
//! a user who was at the provider start again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use cove_core::{Name, Role, User};
use cove_store::{NewUser, OidcIdentity, Store, StoreError};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{pages, AppState};

/// How long a login may stay at the provider before its state is forgotten.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// At most this many logins in flight: a bound on what unauthenticated requests can make
/// the server remember.
const PENDING_MAX: usize = 10_000;
/// Discovered metadata (endpoints and signing keys) is fetched again after this long, so a
/// provider's key rotation is picked up.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// What an OIDC-only user has as a password hash: not a PHC string, so no password
/// matches it (an admin can still set one).
pub const NO_PASSWORD: &str = "!oidc";
pub const STATE_COOKIE: &str = "cove_oidc_state";

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `cove server --oidc-*`.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The issuer URL, e.g. `https://keycloak.example.com/realms/team`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Shown on the login page: "Sign in with <display_name>".
    pub display_name: String,
    /// Requested besides `openid`.
    pub scopes: Vec<String>,
    pub policy: Policy,
}

/// Who may log in and who is an admin. Each list that is not empty must be satisfied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Lowercase domains; the provider must say the address is verified.
    pub allowed_domains: Vec<String>,
    /// The user must be in at least one of these groups.
    pub allowed_groups: Vec<String>,
    /// Members of this group are admins and everyone else a member, set at every login.
    /// `None`: the role is not taken from the provider (new users are members).
    pub admin_group: Option<String>,
    /// The claim that lists the user's groups (`groups` for Keycloak and GitLab).
    pub groups_claim: String,
}

/// What the provider said about the user, from the ID token and the userinfo endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub preferred_username: Option<String>,
}

/// Why a user may not log in; each says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Domains are restricted and the provider gave no verified address.
    NoVerifiedEmail,
    Domain(String),
    NotInGroup,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoVerifiedEmail => f.write_str(
                "your account at the identity provider has no verified email address, which this Cove requires; \
                 verify it there, then sign in again",
            ),
            Refusal::Domain(domain) => write!(
                f,
                "accounts with addresses at {domain} may not use this Cove; sign in with your work account, \
                 or ask an admin to allow the domain"
            ),
            Refusal::NotInGroup => {
                f.write_str("your account is not in a group allowed to use this Cove; ask an admin to add you to one")
            }
        }
    }
}

/// May this user log in, and with which role (`None`: leave the role as it is)?
pub fn decide(policy: &Policy, profile: &Profile) -> Result<Option<Role>, Refusal> {
    if !policy.allowed_domains.is_empty() {
        let email = profile.email.as_deref().filter(|_| profile.email_verified).ok_or(Refusal::NoVerifiedEmail)?;
        let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).ok_or(Refusal::NoVerifiedEmail)?;
        if !policy.allowed_domains.contains(&domain) {
            return Err(Refusal::Domain(domain));
        }
    }
    if !policy.allowed_groups.is_empty() && !profile.groups.iter().any(|g| policy.allowed_groups.contains(g)) {
        return Err(Refusal::NotInGroup);
    }
    Ok(policy.admin_group.as_ref().map(|admin| if profile.groups.contains(admin) { Role::Admin } else { Role::Member }))
}

/// A Cove user name from what the provider calls the user: lowercase letters, digits and
/// single dashes, starting with a letter.
pub fn username_base(profile: &Profile) -> String {
    let raw = profile
        .preferred_username
        .as_deref()
        .or_else(|| profile.email.as_deref().and_then(|e| e.split('@').next()))
        .unwrap_or("");
    let mut name = String::new();
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if (c == '-' && (name.is_empty() || name.ends_with('-'))) || (name.is_empty() && c.is_ascii_digit()) {
            continue;
        }
        name.push(c);
    }
    // Room for a "-NN" suffix when the name is taken.
    name.truncate(cove_core::name::MAX_NAME_LEN - 3);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "user".to_string()
    } else {
        name.to_string()
    }
}

struct Pending {
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    next: String,
    created: Instant,
}

/// What the provider's JSON may carry besides the standard claims: the groups claim,
/// whatever its configured name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct ExtraClaims {
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl openidconnect::AdditionalClaims for ExtraClaims {}

/// Why a callback did not log anyone in; the handler turns it into a page.
#[derive(Debug)]
pub enum CallbackError {
    /// Unknown, used or expired state, or not this browser's: start again.
    BadState,
    /// The provider sent an error instead of a code.
    Provider(String),
    /// The provider could not be reached or its answer did not verify.
    Exchange(String),
    Refused {
        who: String,
        why: Refusal,
    },
    Disabled(User),
    Store(StoreError),
}

/// The configured provider, its discovered metadata and the logins in flight.
pub struct Oidc {
    pub config: OidcConfig,
    redirect: RedirectUrl,
    issuer: IssuerUrl,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Oidc {
    /// Checks the configuration; the provider is contacted at the first login, so Cove
    /// starts while the provider is down.
    pub fn new(config: OidcConfig, public_url: &str) -> anyhow::Result<Self> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| anyhow::anyhow!("--oidc-issuer {:?} is not a URL: {e}", config.issuer))?;
        let redirect = RedirectUrl::new(format!("{}/auth/oidc/callback", public_url.trim_end_matches('/')))
            .map_err(|e| anyhow::anyhow!("the public URL {public_url:?} does not make a redirect URL: {e}"))?;
        if config.client_id.is_empty() {
            anyhow::bail!("--oidc-client-id is empty; give the client id registered at the provider");
        }
        // Following redirects would let a provider's answer point Cove's requests anywhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot make the HTTP client for OIDC: {e}"))?;
        Ok(Self { config, redirect, issuer, http, metadata: Default::default(), pending: Mutex::default() })
    }

    /// The URL to register at the provider as the client's redirect URI.
    pub fn redirect_url(&self) -> &str {
        self.redirect.as_str()
    }

    async fn provider(&self) -> Result<CoreProviderMetadata, String> {
        let mut cached = self.metadata.lock().await;
        if let Some((at, metadata)) = cached.as_ref() {
            if at.elapsed() < METADATA_TTL {
                return Ok(metadata.clone());
            }
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http).await.map_err(|e| {
            tracing::warn!(issuer = %self.issuer.as_str(), error = %error_chain(&e), "OIDC discovery failed");
            format!("cannot reach the identity provider at {}", self.issuer.as_str())
        })?;
        *cached = Some((Instant::now(), metadata.clone()));
        Ok(metadata)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> openidconnect::core::CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    > {
        // Basic is the default of the spec; some providers only take the secret in the body.
        let post_only = metadata.token_endpoint_auth_methods_supported().is_some_and(|methods| {
            !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && methods.contains(&CoreClientAuthMethod::ClientSecretPost)
        });
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.0.clone())),
        )
        .set_redirect_uri(self.redirect.clone());
        if post_only {
            client.set_auth_type(AuthType::RequestBody)
        } else {
            client
        }
    }

    /// Starts a login: the provider's URL to send the browser to, and the state to keep in
    /// the browser's cookie. `Err` says why the provider cannot be used now.
    pub async fn begin(&self, next: String) -> Result<(String, String), String> {
        let metadata = self.provider().await?;
        let client = self.client(metadata);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.created.elapsed() < PENDING_TTL);
        if pending.len() >= PENDING_MAX {
            return Err("too many logins are in progress; try again in a few minutes".into());
        }
        pending.insert(state.secret().clone(), Pending { nonce, verifier, next, created: Instant::now() });
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Takes a pending login, once: the query's state must be one this server issued, not
    /// expired, and the one in this browser's cookie.
    fn take(&self, state: &str, cookie: Option<&str>) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // A state not from this browser's cookie is left pending: it may be a forged link
        // sent to this user, and the real login can still finish.
        if cookie != Some(state) {
            return None;
        }
        pending.remove(state).filter(|p| p.created.elapsed() < PENDING_TTL)
    }

    /// Finishes a login: exchanges the code, verifies the ID token, applies the policy and
    /// finds or makes the user. Returns the user and where to send them.
    pub async fn finish(
        &self,
        store: &dyn Store,
        query: &CallbackQuery,
        cookie: Option<&str>,
    ) -> Result<(User, String), CallbackError> {
        let state = query.state.as_deref().ok_or(CallbackError::BadState)?;
        let pending = self.take(state, cookie).ok_or(CallbackError::BadState)?;
        // RFC 9207: a provider that names itself must be the one this login went to (a
        // mix-up attack sends the browser back from another).
        if query.iss.as_deref().is_some_and(|iss| iss != self.issuer.as_str()) {
            return Err(CallbackError::Provider("the answer came from another identity provider".into()));
        }
        if let Some(error) = &query.error {
            let detail = query.error_description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
            return Err(CallbackError::Provider(format!("{error}{detail}")));
        }
        let code = query.code.clone().ok_or_else(|| CallbackError::Provider("no authorization code".into()))?;
        let profile = self.profile(code, pending.verifier, &pending.nonce).await.map_err(CallbackError::Exchange)?;
        let who = profile.email.clone().unwrap_or_else(|| profile.subject.clone());
        let role = decide(&self.config.policy, &profile).map_err(|why| CallbackError::Refused { who, why })?;
        let user = self.link(store, &profile, role).await.map_err(CallbackError::Store)?;
        if user.disabled {
            return Err(CallbackError::Disabled(user));
        }
        Ok((user, pending.next))
    }

    async fn profile(&self, code: String, verifier: PkceCodeVerifier, nonce: &Nonce) -> Result<Profile, String> {
        let unverified = |what: &str, e: &dyn std::error::Error| {
            tracing::warn!(issuer = %self.issuer.as_str(), error = %error_chain(e), "OIDC login failed: {what}");
            format!("the identity provider's answer could not be verified ({what})")
        };
        let metadata = self.provider().await?;
        let client = self.client(metadata);
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| unverified("no token endpoint", &e))?
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| unverified("code exchange", &e))?;
        let id_token = response.id_token().ok_or_else(|| "the identity provider sent no ID token".to_string())?;
        let verifier = client.id_token_verifier();
        let claims = id_token.claims(&verifier, nonce).map_err(|e| unverified("ID token", &e))?;
        // The access token (used for userinfo below) must be the one the ID token vouches for.
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(|e| unverified("ID token algorithm", &e))?;
            let key = id_token.signing_key(&verifier).map_err(|e| unverified("ID token key", &e))?;
            let actual = openidconnect::AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|e| unverified("access token hash", &e))?;
            if actual != *expected {
                return Err("the identity provider's access token does not match its ID token".into());
            }
        }
        let mut profile = Profile {
            subject: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            groups: vec![],
            preferred_username: claims.preferred_username().map(|u| u.to_string()),
        };
        // The token was verified above, so its other claims (groups) can be read as JSON.
        if let Some(payload) = jwt_payload(&id_token.to_string()) {
            profile.groups = groups(&payload, &self.config.policy.groups_claim);
        }
        if let Ok(request) = client.user_info(response.access_token().clone(), Some(claims.subject().clone())) {
            let info: openidconnect::UserInfoClaims<ExtraClaims, CoreGenderClaim> =
                request.request_async(&self.http).await.map_err(|e| unverified("userinfo", &e))?;
            if profile.email.is_none() {
                profile.email = info.email().map(|e| e.to_string());
                profile.email_verified = info.email_verified().unwrap_or(false);
            }
            if profile.preferred_username.is_none() {
                profile.preferred_username = info.preferred_username().map(|u| u.to_string());
            }
            let more = groups(&Value::Object(info.additional_claims().rest.clone()), &self.config.policy.groups_claim);
            for g in more {
                if !profile.groups.contains(&g) {
                    profile.groups.push(g);
                }
            }
        }
        Ok(profile)
    }

    /// The linked user, updated for this login, or a new one.
    async fn link(&self, store: &dyn Store, profile: &Profile, role: Option<Role>) -> Result<User, StoreError> {
        let identity = OidcIdentity {
            issuer: self.issuer.to_string(),
            subject: profile.subject.clone(),
            email: profile.email.clone(),
        };
        if store.oidc_identity_user(&identity.issuer, &identity.subject).await?.is_some() {
            return store.oidc_identity_login(identity, role).await;
        }
        let base = username_base(profile);
        for n in 1..=99 {
            let candidate = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            let Ok(name) = Name::parse(&candidate) else { continue };
            let new = NewUser { name, role: role.unwrap_or(Role::Member), password_hash: NO_PASSWORD.into() };
            match store.oidc_user_create(new, identity.clone()).await {
                Ok(user) => {
                    tracing::info!(user = %user.name, issuer = %identity.issuer, "created a user on first OIDC login");
                    return Ok(user);
                }
                // Two first logins at once: the other one linked the account.
                Err(StoreError::Conflict(_)) => {
                    if store.oidc_identity_user(&identity.issuer, &identity.subject).await?.is_some() {
                        return store.oidc_identity_login(identity, role).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!("no free user name like {base}")))
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

fn jwt_payload(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The groups claim: a list of names, or one name.
fn groups(claims: &Value, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => vec![],
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(email: Option<&str>, verified: bool, groups: &[&str]) -> Profile {
        Profile {
            subject: "s".into(),
            email: email.map(str::to_string),
            email_verified: verified,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            preferred_username: None,
        }
    }

    #[test]
    fn the_policy_decides_who_logs_in_and_who_is_admin() {
        let open = Policy { groups_claim: "groups".into(), ..Policy::default() };
        let domains = Policy { allowed_domains: vec!["example.com".into()], ..open.clone() };
        let groups = Policy { allowed_groups: vec!["dev".into()], admin_group: Some("ops".into()), ..open.clone() };
        let both = Policy { allowed_domains: vec!["example.com".into()], ..groups.clone() };
        type Decision = Result<Option<Role>, Refusal>;
        let cases: &[(&Policy, Profile, Decision)] = &[
            (&open, profile(None, false, &[]), Ok(None)),
            (&domains, profile(Some("ada@example.com"), true, &[]), Ok(None)),
            (&domains, profile(Some("ada@EXAMPLE.com"), true, &[]), Ok(None)),
            (&domains, profile(Some("ada@example.com"), false, &[]), Err(Refusal::NoVerifiedEmail)),
            (&domains, profile(None, true, &[]), Err(Refusal::NoVerifiedEmail)),
            (&domains, profile(Some("eve@evil.test"), true, &[]), Err(Refusal::Domain("evil.test".into()))),
            // A subdomain is another domain.
            (&domains, profile(Some("a@x.example.com"), true, &[]), Err(Refusal::Domain("x.example.com".into()))),
            (&groups, profile(None, false, &["dev"]), Ok(Some(Role::Member))),
            (&groups, profile(None, false, &["dev", "ops"]), Ok(Some(Role::Admin))),
            // The admin group alone does not let anyone in.
            (&groups, profile(None, false, &["ops"]), Err(Refusal::NotInGroup)),
            (&groups, profile(None, false, &[]), Err(Refusal::NotInGroup)),
            (&both, profile(Some("ada@example.com"), true, &["dev"]), Ok(Some(Role::Member))),
            (&both, profile(Some("ada@other.test"), true, &["dev"]), Err(Refusal::Domain("other.test".into()))),
            (&both, profile(Some("ada@example.com"), true, &["sales"]), Err(Refusal::NotInGroup)),
        ];
        for (policy, profile, expected) in cases {
            assert_eq!(&decide(policy, profile), expected, "{policy:?} {profile:?}");
        }
    }

    #[test]
    fn user_names_from_the_provider() {
        let named = |username: Option<&str>, email: Option<&str>| Profile {
            preferred_username: username.map(str::to_string),
            email: email.map(str::to_string),
            ..Profile::default()
        };
        let cases = [
            (named(Some("Ada.Lovelace"), None), "ada-lovelace"),
            (named(None, Some("grace_hopper@example.com")), "grace-hopper"),
            (named(Some("42--bob--"), None), "bob"),
            (named(Some("été"), None), "t"),
            (named(Some("---"), Some("x@y")), "user"),
            (named(None, None), "user"),
            (named(Some(&"a".repeat(50)), None), &"a".repeat(29)),
        ];
        for (profile, expected) in cases {
            let name = username_base(&profile);
            assert_eq!(name, expected, "{profile:?}");
            assert!(Name::parse(&name).is_ok(), "{name}");
        }
    }

    #[test]
    fn groups_are_a_list_or_one_name() {
        let claims = serde_json::json!({ "groups": ["a", "b", 3], "role": "ops" });
        assert_eq!(groups(&claims, "groups"), ["a", "b"]);
        assert_eq!(groups(&claims, "role"), ["ops"]);
        assert!(groups(&claims, "none").is_empty());
    }

    #[test]
    fn the_client_secret_is_not_in_debug_output() {
        let config = OidcConfig {
            issuer: "https://id.example.com".into(),
            client_id: "cove".into(),
            client_secret: Secret::new("hunter2-very-secret".into()),
            display_name: "Example".into(),
            scopes: vec![],
            policy: Policy::default(),
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}

/// `/auth/oidc/login` and `/auth/oidc/callback`, on the dashboard's origin.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/auth/oidc/login", get(login)).route("/auth/oidc/callback", get(callback))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return pages::not_found();
    };
    let next = crate::dashboard::safe_next(q.next.as_deref().unwrap_or("/"));
    match oidc.begin(next).await {
        Ok((url, browser_state)) => {
            let mut response = pages::redirect(&url);
            let ttl = u32::try_from(PENDING_TTL.as_secs()).unwrap_or(600);
            pages::set_cookie(&mut response, STATE_COOKIE, &browser_state, state.config.https(), Some(ttl));
            response
        }
        Err(why) => {
            pages::html(StatusCode::SERVICE_UNAVAILABLE, "Cannot sign in", &format!("{why}; try again shortly."))
        }
    }
}

async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return pages::not_found();
    };
    let cookie = crate::gate::cookie(&headers, STATE_COOKIE);
    let peer = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.to_string());
    let provider = oidc.config.display_name.clone();
    let (mut response, actor, status) = match oidc.finish(state.store.as_ref(), &query, cookie).await {
        Ok((user, next)) => match crate::access::start_session(
            &state,
            &user,
            &crate::access::Origin::of(
                &headers,
                extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0),
            ),
            "browser session",
        )
        .await
        {
            Ok((secret, _)) => {
                tracing::info!(user = %user.name, "logged in to the dashboard through OIDC");
                let mut response = pages::redirect(&next);
                pages::set_cookie(&mut response, crate::dashboard::SESSION_COOKIE, &secret, state.config.https(), None);
                (response, (Some(user.id), user.name.to_string()), StatusCode::FOUND)
            }
            Err(_) => (
                pages::html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Cannot sign in",
                    "Cove could not store the session; try again.",
                ),
                (Some(user.id), user.name.to_string()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        },
        Err(CallbackError::BadState) => {
            // Nobody is known yet; a forged or replayed link is not worth an audit entry
            // per request, but the log sees it.
            tracing::warn!(peer = ?peer, "OIDC callback with an unknown, used or foreign state");
            let message = format!(
                "This sign-in link is not valid any more (it was used, expired or not started in this \
                 browser). Sign in with {provider} again."
            );
            return cannot_sign_in(StatusCode::BAD_REQUEST, &message);
        }
        Err(CallbackError::Provider(why)) => {
            return cannot_sign_in(StatusCode::UNAUTHORIZED, &format!("{provider} did not sign you in: {why}."));
        }
        Err(CallbackError::Exchange(why)) => {
            return cannot_sign_in(
                StatusCode::BAD_GATEWAY,
                &format!("Sign-in with {provider} failed: {why}. Try again."),
            );
        }
        Err(CallbackError::Refused { who, why }) => {
            let page =
                cannot_sign_in(StatusCode::FORBIDDEN, &format!("You signed in to {provider} as {who}, but {why}."));
            (page, (None, who), StatusCode::FORBIDDEN)
        }
        Err(CallbackError::Disabled(user)) => {
            let page = cannot_sign_in(
                StatusCode::FORBIDDEN,
                &format!("The Cove account {} is disabled; ask an admin to enable it.", user.name),
            );
            (page, (Some(user.id), user.name.to_string()), StatusCode::FORBIDDEN)
        }
        Err(CallbackError::Store(e)) => {
            tracing::error!(error = %e, "OIDC login: cannot find or make the user");
            return pages::html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot sign in",
                "Cove could not store the user; try again.",
            );
        }
    };
    pages::set_cookie(&mut response, STATE_COOKIE, "", state.config.https(), Some(0));
    audit(&state, actor, status, peer).await;
    response
}

/// Why a sign-in failed, with a way back to the login page.
fn cannot_sign_in(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>Cannot sign in</h1><p role=\"alert\">{}</p><p><a href=\"/login\">Back to the login page</a></p>",
        pages::escape(message)
    );
    let mut response = pages::html_raw("Cannot sign in", &body);
    *response.status_mut() = status;
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    response
}

/// OIDC logins go into the audit log like password logins through the API: who (or the
/// address the provider gave, when refused), the outcome and from where.
async fn audit(
    state: &AppState,
    (actor_id, actor_name): (Option<cove_core::UserId>, String),
    status: StatusCode,
    peer: Option<String>,
) {
    let outcome = match crate::error::code_for(status) {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => status.as_u16().to_string(),
    };
    let entry = cove_store::AuditEntry {
        id: 0,
        at: chrono::Utc::now(),
        actor_id,
        actor_name: Some(actor_name),
        action: "GET /auth/oidc/callback".into(),
        target: "/auth/oidc/callback".into(),
        outcome,
        peer,
    };
    if let Err(e) = state.store.audit_record(entry).await {
        tracing::error!(error = %e, "cannot write the audit log for an OIDC login");
    }
}
