//! Bots (SPEC §11): users owned by another user, and their API keys, kept only as hashes.

use uuid::Uuid;

use super::{
    CachedQuery, Store, StoreError, unique_violation,
    users::{USER_COLUMNS, user_from_row},
};
use crate::{domain::Username, model::User};

/// The SHA-256 of a bot's API key: what is stored, and what identifies the key in
/// memory (the key itself is shown once and never kept).
pub type KeyHash = [u8; 32];

/// A bot as its owner lists it.
pub struct OwnedBot {
    pub user: User,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

impl Store {
    /// Creates a bot owned by `owner` with the key whose hash is `key`;
    /// `username_taken` if the name is in use.
    pub async fn create_bot(
        &self,
        owner: Uuid,
        username: &Username,
        display_name: &str,
        key: &KeyHash,
    ) -> Result<OwnedBot, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = Uuid::now_v7();
        let inserted = tx
            .query_one_cached(
                &format!(
                    "INSERT INTO users (id, username, display_name, bot_owner)
                     VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}, created_at"
                ),
                &[&id, &username.as_str(), &display_name, &owner],
            )
            .await;
        let row = match inserted {
            Ok(row) => row,
            Err(e) if unique_violation(&e) == Some("users_username_key") => {
                return Err(StoreError::UsernameTaken);
            }
            Err(e) => return Err(e.into()),
        };
        tx.execute_cached(
            "INSERT INTO bot_keys (key_hash, bot_id) VALUES ($1, $2)",
            &[&key.as_slice(), &id],
        )
        .await?;
        tx.commit().await?;
        Ok(OwnedBot {
            user: user_from_row(&row),
            created_at: row.get("created_at"),
        })
    }

    /// `owner`'s bots that are not deleted, oldest first.
    pub async fn list_bots(&self, owner: Uuid) -> Result<Vec<OwnedBot>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached(
                &format!(
                    "SELECT {USER_COLUMNS}, created_at FROM users
                     WHERE bot_owner = $1 AND deleted_at IS NULL ORDER BY id"
                ),
                &[&owner],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| OwnedBot {
                user: user_from_row(row),
                created_at: row.get("created_at"),
            })
            .collect())
    }

    /// Replaces the key of `owner`'s bot `bot_id`: from this commit the old key
    /// authenticates nothing. `user_not_found` if `owner` has no such bot.
    pub async fn replace_bot_key(
        &self,
        owner: Uuid,
        bot_id: Uuid,
        key: &KeyHash,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let replaced = client
            .execute_cached(
                "INSERT INTO bot_keys (key_hash, bot_id)
                 SELECT $1, id FROM users
                 WHERE id = $2 AND bot_owner = $3 AND deleted_at IS NULL
                 ON CONFLICT (bot_id) DO UPDATE
                     SET key_hash = excluded.key_hash, created_at = now_ms()",
                &[&key.as_slice(), &bot_id, &owner],
            )
            .await?;
        if replaced == 0 {
            return Err(StoreError::UserNotFound);
        }
        Ok(())
    }

    /// Deletes `owner`'s bot `bot_id` and every bot it owns, down the line (a bot's
    /// rights never outlive its owner's, SPEC §18): their keys go, their accounts are
    /// marked deleted (their messages and rooms still name them, so the rows stay).
    /// `user_not_found` if `owner` has no such bot.
    pub async fn delete_bot(&self, owner: Uuid, bot_id: Uuid) -> Result<(), StoreError> {
        let client = self.client().await?;
        let deleted = client
            .query_opt_cached(
                "WITH RECURSIVE doomed AS (
                     SELECT id FROM users
                     WHERE id = $1 AND bot_owner = $2 AND deleted_at IS NULL
                     UNION
                     SELECT users.id FROM users JOIN doomed ON users.bot_owner = doomed.id
                     WHERE users.deleted_at IS NULL),
                 bot AS (
                     UPDATE users SET deleted_at = now_ms()
                     WHERE id IN (SELECT id FROM doomed) RETURNING id),
                 key AS (DELETE FROM bot_keys WHERE bot_id IN (SELECT id FROM doomed))
                 SELECT id FROM bot WHERE id = $1",
                &[&bot_id, &owner],
            )
            .await?;
        deleted.map(|_| ()).ok_or(StoreError::UserNotFound)
    }

    /// The bot whose current key has this hash, if any.
    pub async fn bot_by_key(&self, key: &KeyHash) -> Result<Option<Uuid>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached(
                "SELECT bot_id FROM bot_keys WHERE key_hash = $1",
                &[&key.as_slice()],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }
}
