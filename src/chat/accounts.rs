//! Accounts: register, log in, look up users.

use uuid::Uuid;

use super::{Chat, ChatError};
use crate::{
    auth::{IssuedToken, password, throttle},
    domain::{DisplayName, Password, Username},
    model::User,
};

/// Characters of a login's username that key its throttle record.
const MAX_THROTTLE_KEY_CHARS: usize = 64;

/// A user and a token for them.
pub struct SignedIn {
    pub user: User,
    pub token: IssuedToken,
}

impl From<password::Busy> for ChatError {
    fn from(_: password::Busy) -> Self {
        ChatError::HasherBusy
    }
}

impl Chat {
    /// Creates a built-in account (password hashed with argon2id) and signs it in.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<SignedIn, ChatError> {
        let username = Username::parse(username)?;
        let password = Password::parse(password)?;
        let display_name = match display_name {
            Some(name) => DisplayName::parse(name)?.into_inner(),
            None => username.as_str().to_string(),
        };
        let hash = password::hash(password).await?;
        let user = self
            .store
            .create_user(&username, &display_name, Some(&hash))
            .await?;
        let token = self.auth.issue(user.id);
        Ok(SignedIn { user, token })
    }

    /// Exchanges a username and password for a token. An unknown username costs the
    /// same hashing, and the same throttle, as a wrong password, so the answer does not
    /// tell them apart. Attempts are counted cluster-wide before the password is
    /// checked ([`throttle`]); a success clears the count.
    pub async fn login(&self, username: &str, password: String) -> Result<SignedIn, ChatError> {
        // Bounded, so an attacker's made-up names cannot make huge keys.
        let throttle_key: String = username.chars().take(MAX_THROTTLE_KEY_CHARS).collect();
        self.store
            .count_login_attempt(&throttle_key, throttle::count_attempt)
            .await?
            .map_err(|retry_after| ChatError::TooManyAttempts { retry_after })?;
        let found = self.store.find_login(username).await?;
        let (user, stored_hash) = match found {
            Some((user, hash)) => (Some(user), hash),
            None => (None, None),
        };
        let valid = password::verify(password, stored_hash).await?;
        let user = user
            .filter(|_| valid)
            .ok_or(ChatError::InvalidCredentials)?;
        self.store.clear_login_failures(&throttle_key).await?;
        let token = self.auth.issue(user.id);
        Ok(SignedIn { user, token })
    }

    /// A user, with whether they are online anywhere in the cluster.
    pub async fn user(&self, id: Uuid) -> Result<User, ChatError> {
        let mut user = self.store.get_user(id).await?;
        user.online = self.presence.is_online(user.id);
        Ok(user)
    }
}
