//! What reaches a user who is away (SPEC §14): their per-room notification settings, the
//! cluster's VAPID public key, and push subscriptions registered, listed and deleted by
//! their owner.

use std::sync::Arc;

use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    domain::InvalidInput,
    model::NotificationSettings,
    push::{vapid::VapidKey, webpush::BrowserKeys},
    store::push::Device,
    webhooks::destination,
};

pub use crate::store::push::PushSubscription;

/// Longest endpoint URL accepted (real ones are a few hundred bytes).
const MAX_ENDPOINT_LEN: usize = 2048;
/// Longest native device token accepted (APNs tokens are 64 hex digits, FCM's ~160).
const MAX_TOKEN_LEN: usize = 4096;

/// What the node's notifications are set up with.
pub struct PushSetup {
    /// Signs Web Push requests; its public half is what browsers subscribe with.
    pub vapid: Arc<VapidKey>,
    /// `PUSH_GATEWAY_URL`: where `fcm` and `apns` notifications go; without it such
    /// subscriptions are refused.
    pub gateway_url: Option<String>,
}

/// A subscription as a client asks for it, before it is checked.
pub enum NewPushSubscription {
    /// A browser's `PushSubscription`: its endpoint and `keys`.
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    /// A native app's device token, `fcm` or `apns`.
    Native { kind: NativeKind, token: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeKind {
    Fcm,
    Apns,
}

impl NativeKind {
    fn as_str(self) -> &'static str {
        match self {
            NativeKind::Fcm => "fcm",
            NativeKind::Apns => "apns",
        }
    }
}

impl Chat {
    /// The VAPID public key browsers subscribe with (`applicationServerKey`).
    pub fn vapid_public_key(&self) -> String {
        self.push.vapid.public_key()
    }

    /// Registers a device of `user`'s. A browser's endpoint must be a destination
    /// webhooks could reach (SPEC §11) and its keys a P-256 point and a 16-byte secret;
    /// a native token needs the operator's push gateway.
    pub async fn add_push_subscription(
        &self,
        user: Uuid,
        new: NewPushSubscription,
    ) -> Result<PushSubscription, ChatError> {
        meter(&self.creations, user)?;
        match new {
            NewPushSubscription::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                if endpoint.len() > MAX_ENDPOINT_LEN {
                    let reason = format!("must be at most {MAX_ENDPOINT_LEN} bytes");
                    return Err(InvalidInput::new("endpoint", reason).into());
                }
                let keys = BrowserKeys::decode(&p256dh, &auth).map_err(|bad| {
                    let field = match bad {
                        crate::push::webpush::BadKeys::P256dh => "keys.p256dh",
                        crate::push::webpush::BadKeys::Auth => "keys.auth",
                    };
                    ChatError::from(InvalidInput::new(field, bad.to_string()))
                })?;
                // Push services are reached over TLS; plain http only where private
                // destinations are allowed (a local stand-in in development).
                if !endpoint.starts_with("https://") && !self.webhook_allow_private {
                    return Err(ChatError::PushEndpointNotAllowed(
                        "the endpoint must be an https URL".into(),
                    ));
                }
                destination::check_destination(&endpoint, self.webhook_allow_private)
                    .await
                    .map_err(|refused| ChatError::PushEndpointNotAllowed(refused.0))?;
                let device = Device::WebPush {
                    endpoint: &endpoint,
                    p256dh: &keys.p256dh,
                    auth: &keys.auth,
                };
                Ok(self.store.add_push_subscription(user, device).await?)
            }
            NewPushSubscription::Native { kind, token } => {
                if self.push.gateway_url.is_none() {
                    return Err(ChatError::PushGatewayNotConfigured);
                }
                let token = token.trim();
                if token.is_empty()
                    || token.len() > MAX_TOKEN_LEN
                    || token.contains(char::is_control)
                {
                    let reason = format!("must be 1–{MAX_TOKEN_LEN} printable characters");
                    return Err(InvalidInput::new("token", reason).into());
                }
                let device = Device::Native {
                    kind: kind.as_str(),
                    token,
                };
                Ok(self.store.add_push_subscription(user, device).await?)
            }
        }
    }

    pub async fn list_push_subscriptions(
        &self,
        user: Uuid,
    ) -> Result<Vec<PushSubscription>, ChatError> {
        Ok(self.store.list_push_subscriptions(user).await?)
    }

    /// The caller's notification settings for a room they are a member of.
    pub async fn notification_settings(
        &self,
        user: Uuid,
        room_id: Uuid,
    ) -> Result<NotificationSettings, ChatError> {
        Ok(self.store.notification_settings(user, room_id).await?)
    }

    /// Sets them; a `muted_until` already past is kept as given (it simply mutes nothing).
    pub async fn set_notification_settings(
        &self,
        user: Uuid,
        room_id: Uuid,
        settings: NotificationSettings,
    ) -> Result<NotificationSettings, ChatError> {
        meter(&self.edits, user)?;
        if settings.muted_until.is_some_and(|at| at < 0) {
            return Err(
                InvalidInput::new("muted_until", "must be milliseconds since the epoch").into(),
            );
        }
        self.store
            .set_notification_settings(user, room_id, &settings)
            .await?;
        Ok(settings)
    }

    pub async fn delete_push_subscription(&self, user: Uuid, id: Uuid) -> Result<(), ChatError> {
        Ok(self.store.delete_push_subscription(user, id).await?)
    }
}
