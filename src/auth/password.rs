//! Password hashing with argon2id (OWASP's recommended parameters, the crate's default).
//!
//! Hashing is deliberately slow, so it runs on the blocking pool, never on the async
//! workers that serve sockets.

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

use crate::domain::Password;

/// Hashes `password` into a PHC string (`$argon2id$…`).
pub async fn hash(password: Password) -> String {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .expect("argon2 with default parameters hashes any password")
    })
    .await
    .expect("hashing task does not panic")
}

/// Checks `password` against `stored`. With no stored hash (an unknown user, or one who
/// has no password) it still spends the time of a real check, so response timing does
/// not reveal which usernames exist.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let argon2 = Argon2::default();
        match stored.as_deref().map(PasswordHash::new) {
            Some(Ok(hash)) => argon2.verify_password(password.as_bytes(), &hash).is_ok(),
            _ => {
                let salt = SaltString::generate(&mut OsRng);
                let _ = argon2.hash_password(password.as_bytes(), &salt);
                false
            }
        }
    })
    .await
    .unwrap_or(false)
}
