//! Signing keys of an external issuer, fetched from its JWKS URL and cached.
//!
//! Keys are refetched when a token names a `kid` the cache does not have (the issuer
//! rotated its keys) or when the cache is an hour old, but never more than once per
//! [`MIN_REFETCH_INTERVAL`]: a flood of tokens with made-up `kid`s cannot turn into a
//! flood of requests to the issuer. A fetch in flight never holds up a token whose key
//! is cached: only tokens that need the new keys wait for it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use tokio::sync::{Mutex, RwLock};

const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key: how to verify and which algorithms it may verify.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    /// The algorithms that match this key's type; a token whose header names any other
    /// (HS256 against an RSA key, say) is rejected.
    pub algorithms: Vec<Algorithm>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the issuer's JWKS could not be fetched: {0}")]
    Fetch(String),
}

/// The cached key set of one issuer.
pub struct JwksCache {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, VerifyingKey>>>,
    /// When the last fetch was attempted (held only to read or set it, never across one).
    last_fetch: std::sync::Mutex<Option<Instant>>,
    /// Held for the length of a fetch: one at a time.
    fetching: Mutex<()>,
}

impl JwksCache {
    pub fn new(url: String, http: reqwest::Client) -> Self {
        Self {
            url,
            http,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: std::sync::Mutex::new(None),
            fetching: Mutex::new(()),
        }
    }

    /// The key for `kid` (or the only key, when the token names none), fetching the key
    /// set if needed. `Ok(None)` means the issuer has no such key.
    pub async fn key(&self, kid: Option<&str>) -> Result<Option<VerifyingKey>, JwksError> {
        let cached = self.cached(kid).await;
        let fetch = match &cached {
            Some(_) if !self.is_stale() => return Ok(cached),
            // Stale but usable: refresh unless someone already is, and meanwhile keep
            // verifying with what we hold.
            Some(_) => match self.fetching.try_lock() {
                Ok(fetch) => fetch,
                Err(_) => return Ok(cached),
            },
            None => self.fetching.lock().await,
        };
        let refreshed = self.refresh().await;
        drop(fetch);
        match refreshed {
            Ok(()) => Ok(self.cached(kid).await),
            // An issuer that is down does not invalidate keys we already hold.
            Err(err) if cached.is_some() => {
                tracing::warn!(url = %self.url, error = %err, "keeping stale JWKS keys");
                Ok(cached)
            }
            Err(err) => Err(err),
        }
    }

    async fn cached(&self, kid: Option<&str>) -> Option<VerifyingKey> {
        let keys = self.keys.read().await.clone();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    fn is_stale(&self) -> bool {
        self.last_fetch
            .lock()
            .expect("not poisoned")
            .is_none_or(|at| at.elapsed() > MAX_KEY_AGE)
    }

    /// Fetches the key set, unless the last attempt was under [`MIN_REFETCH_INTERVAL`]
    /// ago. The caller holds `fetching`.
    async fn refresh(&self) -> Result<(), JwksError> {
        {
            let mut last_fetch = self.last_fetch.lock().expect("not poisoned");
            if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
                return Ok(());
            }
            *last_fetch = Some(Instant::now());
        }
        let set: JwkSet = self
            .http
            .get(&self.url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| JwksError::Fetch(e.to_string()))?
            .json()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let keys: HashMap<String, VerifyingKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let algorithms = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => {
                        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
                    }
                    AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                        EllipticCurve::P256 => vec![Algorithm::ES256],
                        EllipticCurve::P384 => vec![Algorithm::ES384],
                        _ => return None,
                    },
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let kid = jwk.common.key_id.clone().unwrap_or_default();
                Some((kid, VerifyingKey { key, algorithms }))
            })
            .collect();
        tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
        *self.keys.write().await = Arc::new(keys);
        Ok(())
    }
}
