//! Accounts: register, log in, look up users.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    auth::{AuthUser, IssuedToken, password, throttle},
    client_address::ClientAddress,
    domain::{DisplayName, InvalidInput, Password, Username},
    model::User,
    store::credentials::TicketHolder,
};

/// Characters of a login's username that key its throttle record.
const MAX_THROTTLE_KEY_CHARS: usize = 64;

/// How long a WebSocket ticket can be redeemed.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// A WebSocket ticket, as the client gets it.
pub struct WsTicket {
    /// Opaque: pass as `?ticket=`.
    pub ticket: String,
    /// Milliseconds since the epoch.
    pub expires_at: i64,
}

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
    /// Creates a built-in account (password hashed with argon2id) and signs it in. Each
    /// client address may register a few accounts a minute (SPEC §18).
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        display_name: Option<&str>,
        from: ClientAddress,
    ) -> Result<SignedIn, ChatError> {
        meter(&self.registrations_by_address, from.network())?;
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
    /// tell them apart.
    ///
    /// Two limits apply (SPEC §10, §18): each client address may try a few logins a
    /// minute, whatever the names (so one source cannot fill the hashers); and the
    /// throttle counts failures per username *and* client address, cluster-wide, before
    /// the password is checked ([`throttle`]) — a stranger's failures never make the
    /// owner's correct password wait on another address. A success clears the count of
    /// its own address.
    pub async fn login(
        &self,
        username: &str,
        password: String,
        from: ClientAddress,
    ) -> Result<SignedIn, ChatError> {
        // No username has one, and Postgres refuses a NUL in text: bad input, not a 500,
        // and not an attempt to count.
        if username.chars().any(char::is_control) {
            return Err(
                InvalidInput::new("username", "must not contain control characters").into(),
            );
        }
        meter(&self.logins_by_address, from.network())?;
        // Bounded, so an attacker's made-up names cannot make huge keys.
        let throttle_key: String = username.chars().take(MAX_THROTTLE_KEY_CHARS).collect();
        let client = from.network().to_string();
        self.store
            .count_login_attempt(&throttle_key, &client, throttle::count_attempt)
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
        self.store
            .clear_login_failures(&throttle_key, &client)
            .await?;
        let token = self.auth.issue(user.id);
        Ok(SignedIn { user, token })
    }

    /// Admits a request from `from` that carries no credential, or whose credential was
    /// refused, within the address's budget (SPEC §18): the requests anyone can make
    /// without an account cannot be made without end from one place.
    pub fn admit_unauthenticated(&self, from: ClientAddress) -> Result<(), ChatError> {
        meter(&self.unauthenticated_by_address, from.network())
    }

    /// A single-use ticket standing in for `user`'s token in a WebSocket URL (SPEC §10),
    /// so the token never reaches a proxy's access log. Redeemable on any node within
    /// [`TICKET_LIFETIME`].
    pub async fn ws_ticket(&self, user: AuthUser) -> Result<WsTicket, ChatError> {
        meter(&self.tickets, user.id)?;
        let ticket = self
            .store
            .create_ticket(
                &TicketHolder {
                    user_id: user.id,
                    token_expires_at: user.expires_at,
                    bot_key: user.bot_key,
                },
                TICKET_LIFETIME,
            )
            .await?;
        Ok(WsTicket {
            ticket: URL_SAFE_NO_PAD.encode(ticket.value),
            expires_at: ticket.expires_at_ms,
        })
    }

    /// Who a ticket authenticates, once: a second redemption, an unknown or an expired
    /// ticket is [`ChatError::InvalidTicket`]. The socket keeps the expiry of the token
    /// that bought the ticket (or, for a bot, the key's re-checks).
    pub async fn redeem_ws_ticket(&self, ticket: &str) -> Result<AuthUser, ChatError> {
        let value = URL_SAFE_NO_PAD
            .decode(ticket)
            .ok()
            .filter(|value| value.len() == 32)
            .ok_or(ChatError::InvalidTicket)?;
        let holder = self
            .store
            .redeem_ticket(&value)
            .await?
            .ok_or(ChatError::InvalidTicket)?;
        Ok(AuthUser {
            id: holder.user_id,
            expires_at: holder.token_expires_at,
            bot_key: holder.bot_key,
        })
    }

    /// A user, with whether they are online anywhere in the cluster.
    pub async fn user(&self, id: Uuid) -> Result<User, ChatError> {
        let mut user = self.store.get_user(id).await?;
        user.online = self.presence.is_online(user.id);
        Ok(user)
    }
}
