//! What the cluster shares to tell callers apart safely (SPEC §10): its generated signing
//! key, failed logins per username and client address, and single-use WebSocket
//! tickets.

use std::time::Duration;

use uuid::Uuid;

use super::{CachedQuery, Store, StoreError};

/// The row of `signing_keys` holding the key of Natter's own tokens.
pub(super) const LOCAL_SIGNING_KEY: &str = "local";

/// Rows of expired throttles or tickets removed by each write: the tables stay as small
/// as the last quarter hour's traffic without a sweeper task.
const CLEANUP_BATCH: i64 = 10;

/// The database's clock in milliseconds: the one clock every node shares.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Failed logins remembered for one username from one client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedLogins {
    pub failures: i32,
    pub last_failure_ms: i64,
    /// Attempts before this are refused.
    pub retry_at_ms: Option<i64>,
}

/// How one login attempt changes a username's record: counted (`Ok`, the new record,
/// written before the password is checked so concurrent attempts are all counted) or
/// refused for a while (`Err`).
pub type LoginPolicy = fn(Option<FailedLogins>, i64) -> Result<FailedLogins, Duration>;

/// A ticket handed out by [`Store::create_ticket`].
pub struct Ticket {
    pub value: [u8; 32],
    pub expires_at_ms: i64,
}

/// Who a redeemed ticket authenticates.
pub struct TicketHolder {
    pub user_id: Uuid,
    /// Seconds since the epoch: when the token that bought the ticket expires.
    pub token_expires_at: u64,
    /// The hash of the bot key that bought the ticket, if a bot did.
    pub bot_key: Option<super::bots::KeyHash>,
}

impl Store {
    /// The key the cluster generated for its own tokens (made by the first migration).
    pub async fn signing_key(&self) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one_cached(
                "SELECT secret FROM signing_keys WHERE name = $1",
                &[&LOCAL_SIGNING_KEY],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Counts a login attempt for `username` from the client address written `from`
    /// under `policy`, atomically across nodes: `Err(retry_after)` when the policy
    /// refuses it.
    pub async fn count_login_attempt(
        &self,
        username: &str,
        from: &str,
        policy: LoginPolicy,
    ) -> Result<Result<(), Duration>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A placeholder row first, so the row lock below serialises even the first
        // attempts for a name.
        tx.execute_cached(
            "INSERT INTO login_failures_by_client (username, client, failures, last_failure_ms)
             VALUES ($1, $2, 0, 0) ON CONFLICT DO NOTHING",
            &[&username, &from],
        )
        .await?;
        let row = tx
            .query_one_cached(
                &format!(
                    "SELECT failures, last_failure_ms, retry_at_ms, {NOW_MS} AS now_ms
                     FROM login_failures_by_client
                     WHERE username = $1 AND client = $2 FOR UPDATE"
                ),
                &[&username, &from],
            )
            .await?;
        let previous = Some(FailedLogins {
            failures: row.get("failures"),
            last_failure_ms: row.get("last_failure_ms"),
            retry_at_ms: row.get("retry_at_ms"),
        })
        .filter(|record| record.failures > 0);
        let decision = policy(previous, row.get("now_ms"));
        if let Ok(next) = decision {
            tx.execute_cached(
                "UPDATE login_failures_by_client
                 SET failures = $3, last_failure_ms = $4, retry_at_ms = $5
                 WHERE username = $1 AND client = $2",
                &[
                    &username,
                    &from,
                    &next.failures,
                    &next.last_failure_ms,
                    &next.retry_at_ms,
                ],
            )
            .await?;
        }
        tx.execute_cached(
            "DELETE FROM login_failures_by_client WHERE (username, client) IN (
                 SELECT username, client FROM login_failures_by_client
                 WHERE last_failure_ms < $1::bigint - 900000 ORDER BY last_failure_ms LIMIT $2)",
            &[&row.get::<_, i64>("now_ms"), &CLEANUP_BATCH],
        )
        .await?;
        tx.commit().await?;
        Ok(decision.map(drop))
    }

    /// Forgets the failed logins of `username` from `from` (a success resets the
    /// throttle of its own address; a stranger's count elsewhere stays).
    pub async fn clear_login_failures(&self, username: &str, from: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute_cached(
                "DELETE FROM login_failures_by_client WHERE username = $1 AND client = $2",
                &[&username, &from],
            )
            .await?;
        Ok(())
    }

    /// Stores a new single-use ticket for `holder`, valid for `lifetime`.
    pub async fn create_ticket(
        &self,
        holder: &TicketHolder,
        lifetime: Duration,
    ) -> Result<Ticket, StoreError> {
        let mut value = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut value);
        let client = self.client().await?;
        let row = client
            .query_one_cached(
                &format!(
                    "WITH expired AS (
                         DELETE FROM ws_tickets WHERE ticket IN (
                             SELECT ticket FROM ws_tickets WHERE expires_at_ms < {NOW_MS}
                             ORDER BY expires_at_ms LIMIT $5))
                     INSERT INTO ws_tickets
                         (ticket, user_id, token_expires_at, expires_at_ms, bot_key)
                     VALUES ($1, $2, $3, {NOW_MS} + $4, $6) RETURNING expires_at_ms"
                ),
                &[
                    &value.as_slice(),
                    &holder.user_id,
                    &(holder.token_expires_at.min(i64::MAX as u64) as i64),
                    &(lifetime.as_millis() as i64),
                    &CLEANUP_BATCH,
                    &holder.bot_key.as_ref().map(|key| key.as_slice()),
                ],
            )
            .await?;
        Ok(Ticket {
            value,
            expires_at_ms: row.get(0),
        })
    }

    /// Redeems a ticket: the holder if it exists and has not expired, and never again.
    pub async fn redeem_ticket(&self, value: &[u8]) -> Result<Option<TicketHolder>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached(
                &format!(
                    "DELETE FROM ws_tickets WHERE ticket = $1
                     RETURNING user_id, token_expires_at, bot_key,
                               expires_at_ms >= {NOW_MS} AS valid"
                ),
                &[&value],
            )
            .await?;
        Ok(row
            .filter(|row| row.get::<_, bool>("valid"))
            .map(|row| TicketHolder {
                user_id: row.get("user_id"),
                token_expires_at: row.get::<_, i64>("token_expires_at") as u64,
                bot_key: row
                    .get::<_, Option<&[u8]>>("bot_key")
                    .and_then(|key| key.try_into().ok()),
            }))
    }
}
