//! One Web Push message (RFC 8030) for one browser subscription: the body encrypted with
//! `aes128gcm` (RFC 8188 as RFC 8291 applies it), the headers a push service reads.
//!
//! RFC 8291 in short: the node makes a one-use P-256 key pair, agrees a secret with the
//! browser's public key (`p256dh`), mixes in the browser's 16-byte `auth` secret with
//! HKDF, and derives from that and a random salt the AES-128-GCM key and nonce of the
//! one record the body is. The body starts with the salt, the record size and the node's
//! one-use public key, which is all the browser needs to reverse it.

use ring::{
    aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey},
    agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral},
    hkdf::{HKDF_SHA256, KeyType, Salt},
    rand::{SecureRandom, SystemRandom},
};

/// The browser's half of a subscription, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserKeys {
    /// Its P-256 public key, uncompressed (65 bytes).
    pub p256dh: [u8; 65],
    /// Its authentication secret.
    pub auth: [u8; 16],
}

/// Why a subscription's keys cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadKeys {
    #[error("p256dh must be an uncompressed P-256 public key (65 bytes) in base64url")]
    P256dh,
    #[error("auth must be 16 bytes in base64url")]
    Auth,
}

impl BrowserKeys {
    /// Decodes a `PushSubscription`'s `keys` (base64url, with or without padding) and
    /// checks that `p256dh` is a point on the curve, so a bad key is refused when the
    /// subscription is made, not at every push.
    pub fn decode(p256dh: &str, auth: &str) -> Result<Self, BadKeys> {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let p256dh: [u8; 65] = URL_SAFE_NO_PAD
            .decode(p256dh.trim_end_matches('='))
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(BadKeys::P256dh)?;
        let auth: [u8; 16] = URL_SAFE_NO_PAD
            .decode(auth.trim_end_matches('='))
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(BadKeys::Auth)?;
        // ring checks the point only when it is used: use it once.
        let probe = EphemeralPrivateKey::generate(&ECDH_P256, &SystemRandom::new())
            .expect("the system's random source works");
        agree_ephemeral(probe, &UnparsedPublicKey::new(&ECDH_P256, &p256dh), |_| ())
            .map_err(|_| BadKeys::P256dh)?;
        Ok(Self { p256dh, auth })
    }
}

/// The record size written in the header. The body is one record, so this only has to
/// exceed it; 4096 is what browsers and push services expect.
const RECORD_SIZE: u32 = 4096;

/// The most plaintext one push carries: push services accept bodies of 4096 bytes, of
/// which the header takes 86 and the padding delimiter and tag 17.
pub const MAX_PLAINTEXT: usize = 4096 - 86 - 17;

/// Why a message cannot be encrypted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncryptError {
    #[error("the payload is {0} bytes; a push carries at most {MAX_PLAINTEXT}")]
    TooLarge(usize),
    #[error("the subscription's p256dh key is not a P-256 point")]
    BadKey,
}

/// HKDF output lengths for ring's `expand`.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF-SHA-256 yields up to 8160 bytes");
}

/// `plaintext` encrypted for `keys` as an `aes128gcm` body (RFC 8291 §3–4).
pub fn encrypt(keys: &BrowserKeys, plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLarge(plaintext.len()));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    rng.fill(&mut salt)
        .expect("the system's random source works");
    let own = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("random source works");
    let own_public = own
        .compute_public_key()
        .expect("a fresh key has a public half");
    let own_public = own_public.as_ref();
    let ikm = agree_ephemeral(
        own,
        &UnparsedPublicKey::new(&ECDH_P256, &keys.p256dh),
        |shared| {
            // IKM = HKDF(auth, ECDH secret, "WebPush: info" || 0 || ua_public || as_public)
            let mut ikm = [0u8; 32];
            hkdf(
                &keys.auth,
                shared,
                &[b"WebPush: info\0", &keys.p256dh, own_public],
                &mut ikm,
            );
            ikm
        },
    )
    .map_err(|_| EncryptError::BadKey)?;
    let mut cek = [0u8; 16];
    hkdf(&salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], &mut cek);
    let mut nonce = [0u8; 12];
    hkdf(&salt, &ikm, &[b"Content-Encoding: nonce\0"], &mut nonce);

    // Header: salt (16) || record size (4) || key id length (1) || key id (our public key).
    let mut body = Vec::with_capacity(86 + plaintext.len() + 17);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(own_public.len() as u8);
    body.extend_from_slice(own_public);
    let header_len = body.len();
    // The one record: the plaintext and the last-record delimiter 0x02, no padding.
    body.extend_from_slice(plaintext);
    body.push(0x02);
    let mut record = body.split_off(header_len);
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).expect("a 16-byte key"))
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut record,
        )
        .expect("one record is far below AES-GCM's limit");
    body.extend_from_slice(&record);
    Ok(body)
}

/// How soon the push service should wake the device (RFC 8030 §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// How long a push service keeps a notification for a device that is offline: a day,
/// as SPEC §14 sets.
pub const TTL_SECS: u32 = 86_400;

/// The headers of a push request besides `Authorization` (the VAPID token).
pub fn headers(urgency: Urgency) -> [(&'static str, String); 4] {
    [
        ("content-encoding", "aes128gcm".to_string()),
        ("content-type", "application/octet-stream".to_string()),
        ("ttl", TTL_SECS.to_string()),
        ("urgency", urgency.as_str().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    /// RFC 8291 Appendix A's subscription keys.
    fn rfc_keys() -> BrowserKeys {
        BrowserKeys::decode(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "BTBZMqHH6r4Tts7J_aSIgg",
        )
        .unwrap()
    }

    #[test]
    fn the_body_has_rfc_8291s_header_and_one_sealed_record() {
        let body = encrypt(&rfc_keys(), b"When I grow up, I want to be a watermelon").unwrap();
        assert_eq!(&body[16..20], &4096u32.to_be_bytes(), "record size");
        assert_eq!(body[20], 65, "key id length");
        assert_eq!(body[21], 0x04, "the key id is an uncompressed point");
        // 86 header bytes, the 41-byte text, its delimiter and the 16-byte tag.
        assert_eq!(body.len(), 86 + 41 + 1 + 16);
    }

    #[test]
    fn keys_that_are_not_a_point_or_the_wrong_length_are_refused() {
        let mut point = URL_SAFE_NO_PAD.decode(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        ).unwrap();
        point[64] ^= 1;
        let off_curve = URL_SAFE_NO_PAD.encode(&point);
        assert_eq!(
            BrowserKeys::decode(&off_curve, "BTBZMqHH6r4Tts7J_aSIgg"),
            Err(BadKeys::P256dh)
        );
        assert_eq!(
            BrowserKeys::decode("AAAA", "BTBZMqHH6r4Tts7J_aSIgg"),
            Err(BadKeys::P256dh)
        );
        let good = URL_SAFE_NO_PAD.encode(rfc_keys().p256dh);
        assert_eq!(BrowserKeys::decode(&good, "AAAA"), Err(BadKeys::Auth));
        assert_eq!(
            BrowserKeys::decode(&good, "not base64!"),
            Err(BadKeys::Auth)
        );
    }

    #[test]
    fn a_payload_too_large_for_a_push_is_refused() {
        let big = vec![b'x'; MAX_PLAINTEXT + 1];
        assert_eq!(
            encrypt(&rfc_keys(), &big),
            Err(EncryptError::TooLarge(MAX_PLAINTEXT + 1))
        );
        assert_eq!(encrypt(&rfc_keys(), &big[1..]).unwrap().len(), 4096);
    }
}
