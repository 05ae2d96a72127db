//! Bot API keys (SPEC §11): `ntb_` and 32 random bytes in base64url, shown once, stored
//! only as their SHA-256, with no expiry.
//!
//! A node remembers a key it has verified for [`BOT_KEY_RECHECK`] and then asks Postgres
//! again, so a replaced or deleted key is refused on every node within that time; a
//! socket opened with a key re-checks it as often (`api::ws::session`), so it is closed
//! within twice that (2 s), well inside the 5 s SPEC §11 allows.
//!
//! It also remembers keys (and WebSocket tickets) Postgres did not know for
//! [`UNKNOWN_FOR`] ([`UnknownCredentials`], SPEC §18), so a client retrying a made-up or
//! revoked key in a loop costs one lookup a minute, not one a request. A key is 256
//! random bits shown only once created, so no one can present it before it exists; were
//! that to happen anyway, the key would work on that node within [`UNKNOWN_FOR`].

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

pub use crate::store::bots::KeyHash;

/// What every bot key starts with, so a token is told from a JWT at a glance (and
/// secret scanners can find leaked keys).
pub const BOT_KEY_PREFIX: &str = "ntb_";

/// How long a verified key is trusted without asking Postgres again.
pub const BOT_KEY_RECHECK: Duration = Duration::from_secs(1);

/// Keys remembered at most; past it the memory is cleared (each entry then costs one
/// lookup again).
const MAX_REMEMBERED: usize = 10_000;

/// How long a key or ticket Postgres did not know is refused without asking again.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(60);

/// A new key and its hash.
pub fn new_key() -> (String, KeyHash) {
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let key = format!("{BOT_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = hash(&key);
    (key, hash)
}

/// The hash of `key` if it is shaped like a bot key (the prefix and 32 bytes), else
/// `None`: a malformed key costs no database lookup.
pub fn key_hash(key: &str) -> Option<KeyHash> {
    let secret = key.strip_prefix(BOT_KEY_PREFIX)?;
    let decoded = URL_SAFE_NO_PAD.decode(secret).ok()?;
    (decoded.len() == 32).then(|| hash(key))
}

fn hash(key: &str) -> KeyHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

/// Keys this node verified lately: hash → (bot, when Postgres last confirmed it).
#[derive(Default)]
pub struct VerifiedKeys {
    keys: Mutex<HashMap<KeyHash, (Uuid, Instant)>>,
}

impl VerifiedKeys {
    /// The bot of `key` if Postgres confirmed it within [`BOT_KEY_RECHECK`].
    pub fn fresh(&self, key: &KeyHash) -> Option<Uuid> {
        let keys = self.keys.lock().expect("not poisoned");
        keys.get(key)
            .filter(|(_, confirmed)| confirmed.elapsed() < BOT_KEY_RECHECK)
            .map(|(bot, _)| *bot)
    }

    /// Records what Postgres just said about `key`.
    pub fn confirmed(&self, key: KeyHash, bot: Option<Uuid>) {
        let mut keys = self.keys.lock().expect("not poisoned");
        match bot {
            Some(bot) => {
                if keys.len() >= MAX_REMEMBERED {
                    keys.clear();
                }
                keys.insert(key, (bot, Instant::now()));
            }
            None => {
                keys.remove(&key);
            }
        }
    }
}

/// Credentials Postgres did not know lately, by hash: refused for [`UNKNOWN_FOR`]
/// without asking again. At most [`MAX_REMEMBERED`]; past it the memory is cleared, so
/// a flood of distinct made-up keys costs what it did without it, and no more memory.
#[derive(Default)]
pub struct UnknownCredentials {
    hashes: Mutex<HashMap<KeyHash, Instant>>,
}

impl UnknownCredentials {
    /// Whether `hash` was found unknown within [`UNKNOWN_FOR`].
    pub fn contains(&self, hash: &KeyHash) -> bool {
        let hashes = self.hashes.lock().expect("not poisoned");
        hashes
            .get(hash)
            .is_some_and(|since| since.elapsed() < UNKNOWN_FOR)
    }

    /// Records that Postgres did not know `hash`.
    pub fn insert(&self, hash: KeyHash) {
        let mut hashes = self.hashes.lock().expect("not poisoned");
        if hashes.len() >= MAX_REMEMBERED {
            hashes.clear();
        }
        hashes.insert(hash, Instant::now());
    }
}

/// The SHA-256 of a credential that is not a bot key (a WebSocket ticket), for
/// [`UnknownCredentials`]: the credential itself is not kept.
pub fn credential_hash(credential: &str) -> KeyHash {
    hash(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_has_the_prefix_and_hashes_to_its_hash_and_a_malformed_one_to_nothing() {
        let (key, hash) = new_key();
        assert!(key.starts_with("ntb_") && key.len() == 4 + 43, "{key}");
        assert_eq!(key_hash(&key), Some(hash));
        assert_ne!(new_key().1, hash);
        assert_eq!(key_hash("ntb_short"), None);
        assert_eq!(key_hash(&key[4..]), None);
        assert_eq!(key_hash(&format!("{key}AA")), None);
    }

    #[test]
    fn an_unknown_credential_is_remembered_for_a_minute_and_the_memory_is_bounded() {
        let unknown = UnknownCredentials::default();
        let (_, first) = new_key();
        assert!(!unknown.contains(&first));
        unknown.insert(first);
        assert!(unknown.contains(&first));
        unknown
            .hashes
            .lock()
            .unwrap()
            .insert(first, Instant::now() - UNKNOWN_FOR);
        assert!(!unknown.contains(&first), "forgotten after a minute");
        for _ in 0..MAX_REMEMBERED + 1 {
            unknown.insert(new_key().1);
        }
        assert!(unknown.hashes.lock().unwrap().len() <= MAX_REMEMBERED);
    }
}
