//! Users' push subscriptions (SPEC §14): the devices notifications go to.

use uuid::Uuid;

use super::{Store, StoreError};

/// Devices one user may register.
pub const MAX_PUSH_SUBSCRIPTIONS_PER_USER: i64 = 20;

/// A push subscription as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSubscription {
    pub id: Uuid,
    /// `webpush`, `fcm` or `apns`.
    pub kind: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

/// Where a new subscription delivers: a browser's endpoint and keys, or an app's token.
pub enum Device<'a> {
    WebPush {
        endpoint: &'a str,
        p256dh: &'a [u8],
        auth: &'a [u8],
    },
    /// `fcm` or `apns` with the device token.
    Native { kind: &'a str, token: &'a str },
}

impl Store {
    /// The cluster's VAPID key (PKCS#8): the first node to ask stores `generated`, and
    /// every node reads back the one that won.
    pub async fn vapid_key(&self, generated: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO signing_keys (name, secret) VALUES ('vapid', $1)
                 ON CONFLICT DO NOTHING",
                &[&generated],
            )
            .await?;
        let row = client
            .query_one("SELECT secret FROM signing_keys WHERE name = 'vapid'", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Registers `device` for `user`. A device registered again (by its endpoint or token)
    /// keeps its id and takes the new keys and owner; a new one past the user's
    /// [`MAX_PUSH_SUBSCRIPTIONS_PER_USER`] is refused.
    pub async fn add_push_subscription(
        &self,
        user: Uuid,
        device: Device<'_>,
    ) -> Result<PushSubscription, StoreError> {
        let (kind, address, p256dh, auth) = match device {
            Device::WebPush {
                endpoint,
                p256dh,
                auth,
            } => ("webpush", endpoint, Some(p256dh), Some(auth)),
            Device::Native { kind, token } => (kind, token, None, None),
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One user's registrations in turn, so two at once cannot both take the last place.
        tx.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
            .await?;
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM push_subscriptions
                 WHERE user_id = $1 AND NOT (kind = $2 AND address = $3)",
                &[&user, &kind, &address],
            )
            .await?
            .get(0);
        if count >= MAX_PUSH_SUBSCRIPTIONS_PER_USER {
            return Err(StoreError::TooManyPushSubscriptions);
        }
        let row = tx
            .query_one(
                "INSERT INTO push_subscriptions (id, user_id, kind, address, p256dh, auth)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (kind, address) DO UPDATE
                     SET user_id = excluded.user_id, p256dh = excluded.p256dh,
                         auth = excluded.auth
                 RETURNING id, kind, created_at",
                &[&Uuid::now_v7(), &user, &kind, &address, &p256dh, &auth],
            )
            .await?;
        tx.commit().await?;
        Ok(subscription_from_row(&row))
    }

    /// The user's subscriptions, oldest first.
    pub async fn list_push_subscriptions(
        &self,
        user: Uuid,
    ) -> Result<Vec<PushSubscription>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, kind, created_at FROM push_subscriptions
                 WHERE user_id = $1 ORDER BY created_at, id",
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(subscription_from_row).collect())
    }

    /// Deletes one of the user's subscriptions (`PushSubscriptionNotFound` for anyone
    /// else's: a stranger cannot tell theirs from none).
    pub async fn delete_push_subscription(&self, user: Uuid, id: Uuid) -> Result<(), StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM push_subscriptions WHERE id = $1 AND user_id = $2",
                &[&id, &user],
            )
            .await?;
        match deleted {
            0 => Err(StoreError::PushSubscriptionNotFound),
            _ => Ok(()),
        }
    }
}

fn subscription_from_row(row: &tokio_postgres::Row) -> PushSubscription {
    PushSubscription {
        id: row.get("id"),
        kind: row.get("kind"),
        created_at: row.get("created_at"),
    }
}
