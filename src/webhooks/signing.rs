//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), which SPEC §11
//! uses for every request Natter makes to an integration: `webhook-id`,
//! `webhook-timestamp` (seconds) and `webhook-signature`, `v1,` + base64 of
//! HMAC-SHA256(`id.timestamp.body`) under the secret's bytes. Receivers verify with any
//! Standard Webhooks library.

use base64::{Engine, engine::general_purpose::STANDARD};

/// What every secret starts with; the rest is the key's bytes in base64.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing secret's key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A new random secret of 32 bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        Self(key)
    }

    /// Reads `whsec_<base64>`: the form the libraries take, with at least 16 bytes of key.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or("must start with whsec_")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "must be whsec_ and base64")?;
        if key.len() < 16 {
            return Err("must hold at least 16 bytes of key");
        }
        Ok(Self(key))
    }

    /// The `whsec_` form, to show the secret's owner.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// The stored form: the key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// `v1,<base64 HMAC>` of one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }
}

/// The three headers of a request signed by each of `secrets` (several during a
/// rotation, space-separated in `webhook-signature`).
pub fn headers(
    secrets: &[&Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect();
    [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signatures.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_example() {
        // The specification's own example (standard-webhooks/spec.md).
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_must_be_whsec_base64_of_enough_bytes_and_round_trips() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
        let secret = Secret::generate();
        assert_eq!(Secret::parse(&secret.reveal()).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&secret.reveal()[6..]));
    }
}
