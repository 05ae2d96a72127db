//! Users: built-in accounts and users provisioned from external issuers.

use crate::store::CachedQuery;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Store, StoreError, rooms::Page, unique_violation};
use crate::{domain::Username, model::User};

pub(super) const USER_COLUMNS: &str = "id, username, display_name, bot_owner IS NOT NULL AS bot";

pub(super) fn user_from_row(row: &Row) -> User {
    User {
        id: row.get("id"),
        username: row.get("username"),
        display_name: row.get("display_name"),
        bot: row.get("bot"),
        online: false,
    }
}

/// An external identity to provision on first sight.
pub struct ExternalIdentity<'a> {
    /// Stable for the same issuer and subject (see `auth`).
    pub id: Uuid,
    pub issuer: &'a str,
    pub subject: &'a str,
    pub username: &'a str,
    pub display_name: &'a str,
}

impl Store {
    /// Creates a built-in account; `username_taken` if the name is in use.
    #[tracing::instrument(skip(self, password_hash), fields(username = username.as_str()))]
    pub async fn create_user(
        &self,
        username: &Username,
        display_name: &str,
        password_hash: Option<&str>,
    ) -> Result<User, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO users (id, username, display_name, password_hash)
             VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}"
        );
        let id = Uuid::now_v7();
        match client
            .query_one_cached(
                &sql,
                &[&id, &username.as_str(), &display_name, &password_hash],
            )
            .await
        {
            Ok(row) => Ok(user_from_row(&row)),
            Err(e) if unique_violation(&e) == Some("users_username_key") => {
                Err(StoreError::UsernameTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The user with this username and their password hash, if any.
    #[tracing::instrument(skip(self))]
    pub async fn find_login(
        &self,
        username: &str,
    ) -> Result<Option<(User, Option<String>)>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1");
        let row = client.query_opt_cached(&sql, &[&username]).await?;
        Ok(row.map(|r| (user_from_row(&r), r.get("password_hash"))))
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_user(&self, id: Uuid) -> Result<User, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        client
            .query_opt_cached(&sql, &[&id])
            .await?
            .map(|r| user_from_row(&r))
            .ok_or(StoreError::UserNotFound)
    }

    /// The users with these ids that exist, in id order.
    pub async fn users_by_ids(&self, ids: &[Uuid]) -> Result<Vec<User>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1) ORDER BY id");
        let rows = client.query_cached(&sql, &[&ids]).await?;
        Ok(rows.iter().map(user_from_row).collect())
    }

    /// A page of the online users `online` (in id order) after `after`, at most
    /// `limit`: all of them, or with `contacts_only` only `viewer` and the users who
    /// share a room with them (SPEC §18).
    pub async fn online_users_page(
        &self,
        viewer: Uuid,
        online: &[Uuid],
        after: Option<Uuid>,
        limit: i64,
        contacts_only: bool,
    ) -> Result<Page<User>, StoreError> {
        let after_cursor = online.partition_point(|id| after.is_some_and(|after| *id <= after));
        let mut candidates = &online[after_cursor..];
        if !contacts_only {
            // Everyone online qualifies: ask only for the page (and one more, to tell
            // whether another page follows).
            candidates = &candidates[..candidates.len().min(limit as usize + 1)];
        }
        if candidates.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        }
        let client = self.client().await?;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users
             WHERE id = ANY($1)
               AND (NOT $2 OR id = $3 OR EXISTS (
                   SELECT 1 FROM members mine JOIN members theirs USING (room_id)
                   WHERE mine.user_id = $3 AND theirs.user_id = users.id))
             ORDER BY id LIMIT $4"
        );
        let rows = client
            .query_cached(&sql, &[&candidates, &contacts_only, &viewer, &(limit + 1)])
            .await?;
        let mut items: Vec<User> = rows.iter().map(user_from_row).collect();
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|user| user.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// The user named `username`, created without a password if missing (`natter token`).
    pub async fn get_or_create_user(&self, username: &Username) -> Result<User, StoreError> {
        match self.create_user(username, username.as_str(), None).await {
            Err(StoreError::UsernameTaken) => {
                let (user, _) = self
                    .find_login(username.as_str())
                    .await?
                    .ok_or(StoreError::UserNotFound)?;
                Ok(user)
            }
            other => other,
        }
    }

    /// Makes sure the user behind an external token exists. Idempotent and race-free:
    /// concurrent first requests of one user insert one row. `username_taken` if another
    /// account holds the username (never silently: the user would not exist).
    #[tracing::instrument(skip_all, fields(user_id = %identity.id))]
    pub async fn provision_external(
        &self,
        identity: &ExternalIdentity<'_>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let inserted = client
            .execute_cached(
                "INSERT INTO users (id, username, display_name, issuer, subject)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[
                    &identity.id,
                    &identity.username,
                    &identity.display_name,
                    &identity.issuer,
                    &identity.subject,
                ],
            )
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) == Some("users_username_key") => {
                Err(StoreError::UsernameTaken)
            }
            Err(e) => Err(e.into()),
        }
    }
}
