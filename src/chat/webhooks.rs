//! A room's webhooks, managed by its owner (SPEC §11). Delivery itself is
//! `crate::webhooks::deliver`'s, on every node.

use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    domain::InvalidInput,
    store::webhooks::{Attempt, Webhook},
    webhooks::{destination, room_event_type, signing::Secret},
};

/// A new webhook and its secret, which is shown only here.
pub struct NewWebhook {
    pub webhook: Webhook,
    /// `whsec_…`
    pub secret: String,
}

/// Most attempts a delivery log page returns.
pub const MAX_DELIVERIES_PAGE: i64 = 200;

impl Chat {
    /// The room's owner adds a webhook for `events` (every type but `room.created` when
    /// `None`) at `url`, which must be a public http(s) destination (SPEC §11).
    pub async fn create_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        url: &str,
        events: Option<Vec<String>>,
    ) -> Result<NewWebhook, ChatError> {
        meter(&self.creations, owner)?;
        if let Some(events) = &events {
            if events.is_empty() {
                return Err(
                    InvalidInput::new("events", "must name at least one event type").into(),
                );
            }
            if let Some(unknown) = events.iter().find(|kind| !room_event_type(kind)) {
                let reason = format!("{unknown:?} is not an event type a room webhook receives");
                return Err(InvalidInput::new("events", reason).into());
            }
        }
        // Who may is settled before the URL is resolved: a stranger learns nothing.
        self.store.check_owner(owner, room_id).await?;
        destination::check_destination(url, self.webhook_allow_private)
            .await
            .map_err(|refused| ChatError::WebhookUrlNotAllowed(refused.0))?;
        let secret = Secret::generate();
        let webhook = self
            .store
            .create_webhook(owner, room_id, url, events.as_deref(), secret.as_bytes())
            .await?;
        Ok(NewWebhook {
            webhook,
            secret: secret.reveal(),
        })
    }

    pub async fn list_webhooks(
        &self,
        owner: Uuid,
        room_id: Uuid,
    ) -> Result<Vec<Webhook>, ChatError> {
        Ok(self.store.list_webhooks(owner, room_id).await?)
    }

    pub async fn delete_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
    ) -> Result<(), ChatError> {
        Ok(self.store.delete_webhook(owner, room_id, id).await?)
    }

    /// A new secret; deliveries carry signatures by both for 24 h.
    pub async fn rotate_webhook_secret(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
    ) -> Result<String, ChatError> {
        meter(&self.edits, owner)?;
        let secret = Secret::generate();
        self.store
            .rotate_webhook(owner, room_id, id, secret.as_bytes())
            .await?;
        Ok(secret.reveal())
    }

    /// Delivers the room's history again from message `from_seq` (and re-enables a
    /// disabled webhook).
    pub async fn replay_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
        from_seq: i64,
    ) -> Result<(), ChatError> {
        if from_seq < 1 {
            return Err(InvalidInput::new("from_seq", "must be at least 1").into());
        }
        meter(&self.edits, owner)?;
        Ok(self
            .store
            .replay_webhook(owner, room_id, id, from_seq)
            .await?)
    }

    /// The webhook's state and its latest `limit` attempts.
    pub async fn webhook_deliveries(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
        limit: i64,
    ) -> Result<(String, Vec<Attempt>), ChatError> {
        let limit = limit.clamp(1, MAX_DELIVERIES_PAGE);
        Ok(self
            .store
            .webhook_deliveries(owner, room_id, id, limit)
            .await?)
    }
}
