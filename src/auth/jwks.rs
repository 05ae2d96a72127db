//! Signing keys of an external issuer, fetched from its JWKS URL and cached.
//!
//! Keys are refetched when a token names a `kid` the cache does not have (the issuer
//! rotated its keys) or when the cache is an hour old, but never more than once per
//! [`MIN_REFETCH_INTERVAL`]: a flood of tokens with made-up `kid`s cannot turn into a
//! flood of requests to the issuer.

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
    /// When the last fetch was attempted; also serialises fetches.
    last_fetch: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(url: String, http: reqwest::Client) -> Self {
        Self {
            url,
            http,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: Mutex::new(None),
        }
    }

    /// The key for `kid` (or the only key, when the token names none), fetching the key
    /// set if needed. `Ok(None)` means the issuer has no such key.
    pub async fn key(&self, kid: Option<&str>) -> Result<Option<VerifyingKey>, JwksError> {
        let cached = self.cached(kid).await;
        if cached.is_some() && !self.is_stale().await {
            return Ok(cached);
        }
        match self.refresh().await {
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

    async fn is_stale(&self) -> bool {
        self.last_fetch
            .lock()
            .await
            .is_none_or(|at| at.elapsed() > MAX_KEY_AGE)
    }

    async fn refresh(&self) -> Result<(), JwksError> {
        let mut last_fetch = self.last_fetch.lock().await;
        if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
            return Ok(());
        }
        *last_fetch = Some(Instant::now());
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
