//! Notifications (SPEC §14): a member's settings per room
//! (`/v1/rooms/{room_id}/notifications`), `GET /v1/push/vapid-public-key` and the
//! caller's push subscriptions under `/v1/me/push-subscriptions`.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi, param::Path, payload::Json, types::Example,
};
use uuid::Uuid;

use super::{ApiTags, NoContent};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::push::PushSubscription as StoredSubscription,
    chat::push::{NativeKind, NewPushSubscription},
    domain::InvalidInput,
    model::NotificationSettings,
};

pub struct PushApi;

/// The key a browser subscribes with.
#[derive(Object)]
#[oai(example)]
struct VapidPublicKey {
    /// The cluster's VAPID public key: an uncompressed P-256 point in base64url, to pass
    /// as `applicationServerKey` to `PushManager.subscribe`.
    key: String,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
enum PushKind {
    /// A browser's Web Push subscription.
    Webpush,
    /// An Android app's Firebase Cloud Messaging token, through the push gateway.
    Fcm,
    /// An iOS app's APNs device token, through the push gateway.
    Apns,
}

/// A browser's `PushSubscription.keys`.
#[derive(Object)]
#[oai(example)]
struct PushKeys {
    /// The browser's P-256 public key (base64url).
    p256dh: String,
    /// The browser's 16-byte authentication secret (base64url).
    auth: String,
}

/// A device to notify: for `webpush`, the browser's `PushSubscription` as its `toJSON()`
/// gives it (`endpoint`, `keys`); for `fcm` and `apns`, the app's device `token`.
#[derive(Object)]
#[oai(example)]
struct CreatePushSubscriptionRequest {
    kind: PushKind,
    /// `webpush`: the push service's URL for this browser.
    endpoint: Option<String>,
    /// `webpush`: the browser's keys.
    keys: Option<PushKeys>,
    /// `fcm`, `apns`: the device token.
    token: Option<String>,
}

/// A registered device (its endpoint, keys or token are never shown again).
#[derive(Object)]
#[oai(example)]
struct PushSubscription {
    id: Uuid,
    kind: PushKind,
    /// Milliseconds since the epoch.
    created_at: i64,
}

#[derive(Object)]
#[oai(example)]
struct PushSubscriptionList {
    subscriptions: Vec<PushSubscription>,
}

#[derive(ApiResponse)]
enum CreatedPushSubscription {
    /// The device is registered (or, registered before, now belongs to the caller).
    #[oai(status = 201)]
    Created(Json<PushSubscription>),
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Notifications")]
impl PushApi {
    /// The cluster's VAPID public key, for `PushManager.subscribe`.
    #[oai(
        path = "/push/vapid-public-key",
        method = "get",
        operation_id = "get_vapid_public_key"
    )]
    async fn vapid_public_key(
        &self,
        _auth: BearerAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<VapidPublicKey>, ApiError> {
        Ok(Json(VapidPublicKey {
            key: state.chat.vapid_public_key(),
        }))
    }

    /// The caller's notification settings for a room they are a member of.
    #[oai(
        path = "/rooms/:room_id/notifications",
        method = "get",
        operation_id = "get_notification_settings"
    )]
    async fn notification_settings(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<Json<NotificationSettings>, ApiError> {
        let settings = state
            .chat
            .notification_settings(auth.0.id, room_id.0)
            .await?;
        Ok(Json(settings))
    }

    /// Choose what notifies the caller of a room: `all`, `mentions` or `none`, and
    /// optionally nothing at all until `muted_until`.
    #[oai(
        path = "/rooms/:room_id/notifications",
        method = "put",
        operation_id = "set_notification_settings"
    )]
    async fn set_notification_settings(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        body: Json<NotificationSettings>,
    ) -> Result<Json<NotificationSettings>, ApiError> {
        let settings = state
            .chat
            .set_notification_settings(auth.0.id, room_id.0, body.0)
            .await?;
        Ok(Json(settings))
    }

    /// Register a device for notifications; at most 20 per user.
    #[oai(
        path = "/me/push-subscriptions",
        method = "post",
        operation_id = "create_push_subscription"
    )]
    async fn create(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        body: Json<CreatePushSubscriptionRequest>,
    ) -> Result<CreatedPushSubscription, ApiError> {
        let body = body.0;
        let new = match body.kind {
            PushKind::Webpush => {
                let endpoint = body
                    .endpoint
                    .ok_or_else(|| InvalidInput::new("endpoint", "is required for webpush"))?;
                let keys = body
                    .keys
                    .ok_or_else(|| InvalidInput::new("keys", "is required for webpush"))?;
                NewPushSubscription::WebPush {
                    endpoint,
                    p256dh: keys.p256dh,
                    auth: keys.auth,
                }
            }
            PushKind::Fcm | PushKind::Apns => NewPushSubscription::Native {
                kind: match body.kind {
                    PushKind::Fcm => NativeKind::Fcm,
                    _ => NativeKind::Apns,
                },
                token: body
                    .token
                    .ok_or_else(|| InvalidInput::new("token", "is required for fcm and apns"))?,
            },
        };
        let created = state.chat.add_push_subscription(auth.0.id, new).await?;
        Ok(CreatedPushSubscription::Created(Json(created.into())))
    }

    /// The caller's registered devices.
    #[oai(
        path = "/me/push-subscriptions",
        method = "get",
        operation_id = "list_push_subscriptions"
    )]
    async fn list(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<PushSubscriptionList>, ApiError> {
        let subscriptions = state.chat.list_push_subscriptions(auth.0.id).await?;
        Ok(Json(PushSubscriptionList {
            subscriptions: subscriptions.into_iter().map(Into::into).collect(),
        }))
    }

    /// Stop notifying a device.
    #[oai(
        path = "/me/push-subscriptions/:id",
        method = "delete",
        operation_id = "delete_push_subscription"
    )]
    async fn delete(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state.chat.delete_push_subscription(auth.0.id, id.0).await?;
        Ok(NoContent::Done)
    }
}

impl From<StoredSubscription> for PushSubscription {
    fn from(stored: StoredSubscription) -> Self {
        Self {
            id: stored.id,
            kind: match stored.kind.as_str() {
                "fcm" => PushKind::Fcm,
                "apns" => PushKind::Apns,
                _ => PushKind::Webpush,
            },
            created_at: stored.created_at,
        }
    }
}

impl Example for VapidPublicKey {
    fn example() -> Self {
        Self {
            key: "BEl62iUYgUivxIkv69yViEuiBIa-Ib9-SkvMeAtA3LFgDzkrxZJjSgSnfckjBJuBkr3qBUYIHBQFLXYp5Nksh8U"
                .into(),
        }
    }
}

impl Example for CreatePushSubscriptionRequest {
    fn example() -> Self {
        Self {
            kind: PushKind::Webpush,
            endpoint: Some("https://updates.push.services.mozilla.com/wpush/v2/gAAAAABh…".into()),
            keys: Some(PushKeys::example()),
            token: None,
        }
    }
}

impl Example for PushKeys {
    /// RFC 8291's example subscription.
    fn example() -> Self {
        Self {
            p256dh: "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
                .into(),
            auth: "BTBZMqHH6r4Tts7J_aSIgg".into(),
        }
    }
}

impl Example for PushSubscription {
    fn example() -> Self {
        Self {
            id: Uuid::from_u128(0x0193_6f1f_1b20_7e41_8a5c_2f3d_9e10_e006),
            kind: PushKind::Webpush,
            created_at: super::examples::NOW_MS,
        }
    }
}

impl Example for PushSubscriptionList {
    fn example() -> Self {
        Self {
            subscriptions: vec![PushSubscription::example()],
        }
    }
}
