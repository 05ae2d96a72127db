//! The cluster's VAPID key (RFC 8292): one P-256 key pair that signs every Web Push
//! request, generated once by the first node (kept in Postgres beside the token key) or
//! given as `VAPID_PRIVATE_KEY`.
//!
//! Browsers bind a subscription to the public key the page gave them
//! (`applicationServerKey`), and push services refuse requests signed by any other: the
//! key must be the same on every node and must outlive every node, or every subscription
//! dies with it.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use url::Url;

/// How long a VAPID token is good for: RFC 8292 allows at most 24 h; SPEC §14 asks for
/// at most 12 h, and a push service may refuse longer.
pub const TOKEN_LIFETIME_SECS: u64 = 12 * 60 * 60;

/// Why a VAPID key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("not a P-256 private key in PKCS#8 (PEM or base64url DER): {0}")]
pub struct BadVapidKey(String);

/// The cluster's VAPID key pair and the contact it names.
#[derive(Clone)]
pub struct VapidKey {
    pkcs8: Vec<u8>,
    /// The uncompressed public point (65 bytes, `0x04 || x || y`).
    public: Vec<u8>,
    signing: EncodingKey,
    /// `mailto:` or `https:` URL a push service may use to reach the operator.
    subject: Option<String>,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public_key())
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// A new key pair, as PKCS#8 DER: what the first node stores for the cluster.
    pub fn generate_pkcs8() -> Vec<u8> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .expect("the system's random source works")
            .as_ref()
            .to_vec()
    }

    /// The key in `pkcs8` (DER), with `subject` as the contact.
    pub fn from_pkcs8(pkcs8: &[u8], subject: Option<String>) -> Result<Self, BadVapidKey> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|err| BadVapidKey(err.to_string()))?;
        Ok(Self {
            pkcs8: pkcs8.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
            signing: EncodingKey::from_ec_der(pkcs8),
            subject,
        })
    }

    /// The same key naming `subject` as the operator's contact.
    pub fn with_subject(self, subject: Option<String>) -> Self {
        Self { subject, ..self }
    }

    /// Reads `VAPID_PRIVATE_KEY`: a PEM `PRIVATE KEY` block (what `openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes) or its DER in base64url.
    pub fn parse(text: &str, subject: Option<String>) -> Result<Self, BadVapidKey> {
        let text = text.trim();
        let der = if text.starts_with("-----BEGIN") {
            let body: String = text
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|err| BadVapidKey(err.to_string()))?
        } else {
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|err| BadVapidKey(err.to_string()))?
        };
        Self::from_pkcs8(&der, subject)
    }

    /// The public key as browsers take it for `applicationServerKey`: the uncompressed
    /// point in base64url without padding.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public)
    }

    /// The PKCS#8 DER of the private key (stored by the first node).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The `Authorization` header of a push to `endpoint`, signed now (`now_secs`: seconds
    /// since the epoch): `vapid t=<ES256 JWT>, k=<public key>` with `aud` the endpoint's
    /// origin and `exp` [`TOKEN_LIFETIME_SECS`] ahead.
    pub fn authorization(&self, endpoint: &Url, now_secs: u64) -> String {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            aud: String,
            exp: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            sub: Option<&'a str>,
        }
        let claims = Claims {
            aud: endpoint.origin().ascii_serialization(),
            exp: now_secs + TOKEN_LIFETIME_SECS,
            sub: self.subject.as_deref(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing)
            .expect("an ES256 key from a checked PKCS#8 document signs");
        format!("vapid t={token}, k={}", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_with_the_same_public_point() {
        let pkcs8 = VapidKey::generate_pkcs8();
        let key = VapidKey::from_pkcs8(&pkcs8, None).unwrap();
        let again = VapidKey::parse(&URL_SAFE_NO_PAD.encode(&pkcs8), None).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let point = URL_SAFE_NO_PAD.decode(key.public_key()).unwrap();
        assert_eq!(
            (point.len(), point[0]),
            (65, 0x04),
            "uncompressed P-256 point"
        );
    }

    #[test]
    fn a_key_that_is_not_p256_pkcs8_is_refused() {
        assert!(VapidKey::parse("bm90IGEga2V5", None).is_err());
        assert!(VapidKey::parse("-----BEGIN PRIVATE KEY-----\n!!\n-----END", None).is_err());
    }

    #[test]
    fn the_token_names_the_endpoints_origin_and_expires_within_twelve_hours() {
        let key = VapidKey::from_pkcs8(
            &VapidKey::generate_pkcs8(),
            Some("mailto:ops@example.com".into()),
        )
        .unwrap();
        let endpoint = Url::parse("https://push.example.net:8443/wpush/v2/abc?x=1").unwrap();
        let header = key.authorization(&endpoint, 1_000);
        let (token, k) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .expect("vapid t=…, k=…");
        assert_eq!(k, key.public_key());
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"aud": "https://push.example.net:8443", "exp": 1_000 + 43_200,
                               "sub": "mailto:ops@example.com"})
        );
    }
}
