//! Who is calling: passwords, Natter's own tokens and external identity providers
//! (SPEC §2).
//!
//! [`Authenticator::verify`] is the one place a bearer token becomes a user id. It picks
//! the verifier by the token's `iss` claim: Natter's own HS256 tokens, an external
//! issuer's shared HS256 secret, or an external issuer's JWKS (RS256/ES256). Each
//! verifier accepts only the algorithms of its key type, always requires `exp`, and
//! checks `nbf`, `iss` and `aud` where they apply, so `alg: none`, key-type confusion,
//! expired or not-yet-valid tokens and foreign issuers or audiences are all rejected.

pub mod bots;
pub mod jwks;
pub mod password;
pub mod throttle;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    config::{AuthSettings, IssuerConfig},
    domain::DisplayName,
    store::{Store, StoreError, users::ExternalIdentity},
};
use bots::{KeyHash, UnknownCredentials, VerifiedKeys};
use jwks::JwksCache;
use prometheus_client::metrics::counter::Counter;

pub use crate::config::LOCAL_ISSUER;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// The authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub id: Uuid,
    /// When the token expires (seconds since the epoch): a WebSocket authenticated by
    /// it is closed with 4001 then. [`NEVER`] for a bot key.
    pub expires_at: u64,
    /// The hash of the bot key the caller used, if they are a bot: a socket opened with
    /// it re-checks it, and is closed with 4001 once it is replaced or deleted.
    pub bot_key: Option<KeyHash>,
}

/// The `expires_at` of a credential that does not expire (a bot key): far past any
/// clock, yet a valid `i64` where it is stored.
pub const NEVER: u64 = i64::MAX as u64;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is missing, malformed, forged, expired or from an issuer we do not
    /// trust. The message says which, for the client developer.
    #[error("{0}")]
    Invalid(String),
    /// The token may be fine but we cannot check it now (issuer's keys or the
    /// database unreachable).
    #[error("{0}")]
    Unavailable(String),
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        AuthError::Invalid(format!("invalid token: {err}"))
    }
}

/// Claims of the tokens Natter issues.
#[derive(Debug, Serialize, Deserialize)]
struct LocalClaims {
    sub: Uuid,
    iss: String,
    #[serde(default)]
    iat: u64,
    exp: u64,
}

/// The claims Natter reads from an external issuer's token.
#[derive(Debug, Deserialize)]
struct ExternalClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// How one external issuer's tokens are verified.
enum IssuerKeys {
    Shared(DecodingKey),
    Jwks(JwksCache),
}

struct ExternalIssuer {
    config: IssuerConfig,
    keys: IssuerKeys,
}

/// A freshly issued token.
pub struct IssuedToken {
    pub token: String,
    /// Milliseconds since the epoch.
    pub expires_at: i64,
}

/// Issues Natter's tokens and verifies every kind of token it accepts.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    encoding_key: EncodingKey,
    local_validation: Validation,
    local_key: DecodingKey,
    token_ttl_secs: u64,
    issuers: HashMap<String, ExternalIssuer>,
    store: Store,
    /// External users already provisioned by this node, so a known user costs no write.
    /// Cleared when it grows past [`PROVISIONED_CACHE_MAX`]: bounded memory, and a
    /// cleared entry costs one idempotent insert.
    provisioned: Mutex<HashSet<Uuid>>,
    /// Bot keys verified lately (`bots`).
    bot_keys: VerifiedKeys,
    /// Bot keys and WebSocket tickets Postgres did not know lately (SPEC §18).
    unknown_keys: UnknownCredentials,
    unknown_tickets: UnknownCredentials,
    /// Postgres lookups of bot keys and tickets: what the unknown memories save.
    lookups: Counter,
}

const PROVISIONED_CACHE_MAX: usize = 100_000;

/// Namespace for the stable ids of external users: v5(namespace, issuer + "\n" + sub).
const EXTERNAL_USER_NAMESPACE: Uuid = Uuid::from_u128(0x6e61_7474_6572_4000_8000_6578_7465_726e);

/// The key of Natter's own tokens: `JWT_SECRET` if set, else the one the cluster
/// generated and keeps in Postgres (SPEC §10), so no deployment runs on a published key.
pub async fn local_signing_key(
    settings: &AuthSettings,
    store: &Store,
) -> Result<Vec<u8>, StoreError> {
    match &settings.jwt_secret {
        Some(secret) => Ok(secret.as_bytes().to_vec()),
        None => store.signing_key().await,
    }
}

impl Authenticator {
    /// `signing_key`: from [`local_signing_key`].
    pub fn new(settings: &AuthSettings, signing_key: &[u8], store: Store) -> Self {
        let http = reqwest::Client::builder()
            .user_agent("natter")
            .build()
            .expect("an HTTP client with default TLS settings builds");
        let issuers = settings
            .issuers
            .iter()
            .map(|config| {
                let keys = match (&config.hs256_secret, &config.jwks_url) {
                    (Some(secret), _) => {
                        IssuerKeys::Shared(DecodingKey::from_secret(secret.as_bytes()))
                    }
                    (None, Some(url)) => {
                        IssuerKeys::Jwks(JwksCache::new(url.clone(), http.clone()))
                    }
                    (None, None) => unreachable!("config rejects an issuer without keys"),
                };
                (
                    config.issuer.clone(),
                    ExternalIssuer {
                        config: config.clone(),
                        keys,
                    },
                )
            })
            .collect();
        let mut local_validation = Validation::new(Algorithm::HS256);
        local_validation.leeway = LEEWAY_SECS;
        local_validation.validate_nbf = true;
        local_validation.set_issuer(&[LOCAL_ISSUER]);
        local_validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            inner: Arc::new(Inner {
                encoding_key: EncodingKey::from_secret(signing_key),
                local_key: DecodingKey::from_secret(signing_key),
                local_validation,
                token_ttl_secs: settings.token_ttl.as_secs(),
                issuers,
                store,
                provisioned: Mutex::new(HashSet::new()),
                bot_keys: VerifiedKeys::default(),
                unknown_keys: UnknownCredentials::default(),
                unknown_tickets: UnknownCredentials::default(),
                lookups: Counter::default(),
            }),
        }
    }

    /// Signs a token for `user_id` that expires after the configured lifetime.
    pub fn issue(&self, user_id: Uuid) -> IssuedToken {
        let now = unix_now();
        let exp = now + self.inner.token_ttl_secs;
        let claims = LocalClaims {
            sub: user_id,
            iss: LOCAL_ISSUER.into(),
            iat: now,
            exp,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding_key,
        )
        .expect("HS256 signing of plain claims cannot fail");
        IssuedToken {
            token,
            expires_at: (exp * 1000) as i64,
        }
    }

    /// Verifies a bearer token and returns the user it names, provisioning users of
    /// external issuers on first sight.
    pub async fn verify(&self, token: &str) -> Result<AuthUser, AuthError> {
        if token.starts_with(bots::BOT_KEY_PREFIX) {
            let key = bots::key_hash(token)
                .ok_or_else(|| AuthError::Invalid("malformed bot key".into()))?;
            let id = self
                .bot_of_key(&key)
                .await?
                .ok_or_else(|| AuthError::Invalid("unknown, replaced or deleted bot key".into()))?;
            return Ok(AuthUser {
                id,
                expires_at: NEVER,
                bot_key: Some(key),
            });
        }
        // Parsing the header rejects unknown algorithms, `none` included.
        let header = jsonwebtoken::decode_header(token)?;
        match unverified_issuer(token)?.as_deref() {
            None | Some(LOCAL_ISSUER) => {
                let data = jsonwebtoken::decode::<LocalClaims>(
                    token,
                    &self.inner.local_key,
                    &self.inner.local_validation,
                )?;
                Ok(AuthUser {
                    id: data.claims.sub,
                    expires_at: data.claims.exp,
                    bot_key: None,
                })
            }
            Some(iss) => {
                let issuer =
                    self.inner.issuers.get(iss).ok_or_else(|| {
                        AuthError::Invalid("token from an untrusted issuer".into())
                    })?;
                let (key, algorithms) = match &issuer.keys {
                    IssuerKeys::Shared(key) => (key.clone(), vec![Algorithm::HS256]),
                    IssuerKeys::Jwks(cache) => {
                        let found = cache
                            .key(header.kid.as_deref())
                            .await
                            .map_err(|e| AuthError::Unavailable(e.to_string()))?
                            .ok_or_else(|| {
                                AuthError::Invalid("token signed by an unknown key".into())
                            })?;
                        (found.key, found.algorithms)
                    }
                };
                if !algorithms.contains(&header.alg) {
                    return Err(AuthError::Invalid(format!(
                        "algorithm {:?} does not match the issuer's key",
                        header.alg
                    )));
                }
                let mut validation = Validation::new(header.alg);
                validation.algorithms = algorithms;
                validation.leeway = LEEWAY_SECS;
                validation.validate_nbf = true;
                validation.set_issuer(&[&issuer.config.issuer]);
                validation.set_audience(&[&issuer.config.audience]);
                validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
                let claims =
                    jsonwebtoken::decode::<ExternalClaims>(token, &key, &validation)?.claims;
                self.provision(&issuer.config.issuer, &claims).await
            }
        }
    }

    /// The bot whose current key has hash `key`: from memory if Postgres confirmed it
    /// within `bots::BOT_KEY_RECHECK`, else from Postgres.
    /// A key Postgres did not know within `bots::UNKNOWN_FOR` is refused from memory.
    pub async fn bot_of_key(&self, key: &KeyHash) -> Result<Option<Uuid>, AuthError> {
        if let Some(bot) = self.inner.bot_keys.fresh(key) {
            return Ok(Some(bot));
        }
        if self.inner.unknown_keys.contains(key) {
            return Ok(None);
        }
        self.inner.lookups.inc();
        let bot = self
            .inner
            .store
            .bot_by_key(key)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        self.inner.bot_keys.confirmed(*key, bot);
        if bot.is_none() {
            self.inner.unknown_keys.insert(*key);
        }
        Ok(bot)
    }

    /// Whether the WebSocket ticket `ticket` was found unknown (used, expired or never
    /// issued) within `bots::UNKNOWN_FOR`; if not, counts the lookup about to be made.
    pub fn ticket_known_unknown(&self, ticket: &str) -> bool {
        if self
            .inner
            .unknown_tickets
            .contains(&bots::credential_hash(ticket))
        {
            return true;
        }
        self.inner.lookups.inc();
        false
    }

    /// Records that Postgres did not know the ticket `ticket`.
    pub fn ticket_unknown(&self, ticket: &str) {
        self.inner
            .unknown_tickets
            .insert(bots::credential_hash(ticket));
    }

    /// The count of Postgres lookups of bot keys and tickets, for `/metrics`.
    pub fn credential_lookups(&self) -> Counter {
        self.inner.lookups.clone()
    }

    async fn provision(
        &self,
        issuer: &str,
        claims: &ExternalClaims,
    ) -> Result<AuthUser, AuthError> {
        let id = external_user_id(issuer, &claims.sub);
        let user = AuthUser {
            id,
            expires_at: claims.exp,
            bot_key: None,
        };
        if self
            .inner
            .provisioned
            .lock()
            .expect("not poisoned")
            .contains(&id)
        {
            return Ok(user);
        }
        let base = claims
            .preferred_username
            .as_deref()
            .or_else(|| claims.email.as_deref().and_then(|e| e.split('@').next()))
            .unwrap_or("user");
        let username = external_username(base, id);
        // The provider's name, if it is a valid display name (SPEC §5's rules apply to
        // it as to any other); else the username.
        let display_name = [claims.name.as_deref(), claims.preferred_username.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|name| DisplayName::parse(name).ok())
            .map_or_else(|| username.clone(), DisplayName::into_inner);
        let identity = ExternalIdentity {
            id,
            issuer,
            subject: &claims.sub,
            username: &username,
            display_name: &display_name,
        };
        let mut provisioned = self.inner.store.provision_external(&identity).await;
        if let Err(StoreError::UsernameTaken) = provisioned {
            // Someone registered the name first (it is predictable). The long form is
            // longer than registration allows, so no one can take it before them.
            let unclaimable = external_username_unclaimable(base, id);
            let identity = ExternalIdentity {
                username: &unclaimable,
                ..identity
            };
            provisioned = self.inner.store.provision_external(&identity).await;
        }
        provisioned.map_err(|e| match e {
            StoreError::Unavailable(msg) => AuthError::Unavailable(msg),
            other => {
                tracing::error!(error = ?other, "provisioning an external user failed");
                AuthError::Unavailable("could not provision the user".into())
            }
        })?;
        let mut provisioned = self.inner.provisioned.lock().expect("not poisoned");
        if provisioned.len() >= PROVISIONED_CACHE_MAX {
            provisioned.clear();
        }
        provisioned.insert(id);
        Ok(user)
    }
}

/// The stable user id of `sub` at `issuer`.
pub fn external_user_id(issuer: &str, sub: &str) -> Uuid {
    Uuid::new_v5(
        &EXTERNAL_USER_NAMESPACE,
        format!("{issuer}\n{sub}").as_bytes(),
    )
}

/// A valid, unique-in-practice username for an external user: their preferred name
/// reduced to the username alphabet, plus a suffix from their id.
fn external_username(base: &str, id: Uuid) -> String {
    let cleaned: String = base
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(*c))
        .take(24)
        .collect();
    let cleaned = if cleaned.is_empty() {
        "user".to_string()
    } else {
        cleaned
    };
    format!("{cleaned}-{}", &id.simple().to_string()[..7])
}

/// The username of an external user whose short form was taken: their name and their
/// whole id, longer than the 32 characters registration allows.
fn external_username_unclaimable(base: &str, id: Uuid) -> String {
    let short = external_username(base, id);
    let name = short.rsplit_once('-').map_or("user", |(name, _)| name);
    format!("{name}-{}", id.simple())
}

/// The `iss` claim of a token, read before verification only to pick the verifier.
fn unverified_issuer(token: &str) -> Result<Option<String>, AuthError> {
    #[derive(Deserialize)]
    struct IssOnly {
        #[serde(default)]
        iss: Option<String>,
    }
    let malformed = || AuthError::Invalid("malformed token".into());
    let payload = token.split('.').nth(1).ok_or_else(malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())?;
    let claims: IssOnly = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    Ok(claims.iss)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_usernames_are_valid_usernames() {
        let id = external_user_id("https://issuer", "abc");
        for base in [
            "Jane Doe!",
            "",
            "ÄÖÜ",
            "a_very_long_preferred_username_indeed",
        ] {
            let name = external_username(base, id);
            assert!(crate::domain::Username::parse(&name).is_ok(), "{name}");
        }
    }

    #[test]
    fn external_user_ids_are_stable_per_issuer_and_subject() {
        assert_eq!(external_user_id("a", "1"), external_user_id("a", "1"));
        assert_ne!(external_user_id("a", "1"), external_user_id("b", "1"));
    }
}
