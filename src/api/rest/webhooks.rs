//! `/v1/rooms/{room_id}/webhooks` (SPEC §11): a room's outgoing webhooks, for its owner.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use uuid::Uuid;

use super::{ApiTags, JsonString, NoContent, examples};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::webhooks::NewWebhook,
    chat::{Attempt, Webhook},
};

pub struct WebhooksApi;

#[derive(Object)]
#[oai(example)]
struct CreateWebhookRequest {
    /// Where events are POSTed: an http(s) URL whose host resolves to public addresses
    /// only (`webhook_url_not_allowed` otherwise).
    #[oai(validator(max_length = 2048))]
    url: JsonString,
    /// The event types to receive; all of them when absent: `message.created`,
    /// `message.edited`, `message.deleted`, `reaction.added`, `reaction.removed`,
    /// `member.joined`, `member.left`, `room.deleted`.
    #[oai(validator(max_items = 16))]
    events: Option<Vec<String>>,
}

/// A webhook.
#[derive(Object)]
#[oai(example)]
struct WebhookView {
    id: Uuid,
    url: String,
    /// The event types it receives; null for all.
    #[oai(nullable)]
    events: Option<Vec<String>>,
    /// `active`, `failing` (retrying with backoff) or `disabled` (failing for 24 h: its
    /// backlog is kept; a replay resumes it).
    state: String,
    /// Milliseconds since the epoch.
    created_at: i64,
}

/// A new webhook and its signing secret.
#[derive(Object)]
#[oai(example)]
struct CreatedWebhook {
    id: Uuid,
    url: String,
    #[oai(nullable)]
    events: Option<Vec<String>>,
    /// `whsec_` + base64 of 32 bytes: verify `webhook-signature` with it (Standard
    /// Webhooks). Shown only now and on rotation.
    secret: String,
    created_at: i64,
}

#[derive(Object)]
#[oai(example)]
struct WebhookList {
    webhooks: Vec<WebhookView>,
}

#[derive(Object)]
#[oai(example)]
struct RotatedSecret {
    /// The new secret. For 24 h deliveries carry a signature by each.
    secret: String,
}

#[derive(Object)]
#[oai(example)]
struct ReplayRequest {
    /// Deliver the room's events again from this message on.
    #[oai(validator(minimum(value = "1")))]
    from_seq: i64,
}

/// One delivery attempt.
#[derive(Object)]
#[oai(example)]
struct DeliveryView {
    /// The `webhook-id` header: the same for every attempt at one event.
    event_id: String,
    #[oai(rename = "type")]
    kind: String,
    /// 1 for the first attempt at the event, then 2, 3, …
    attempt: i32,
    /// The receiver's status, if it answered.
    #[oai(nullable)]
    status_code: Option<i32>,
    /// Why there was no answer (or a refused destination).
    #[oai(nullable)]
    error: Option<String>,
    duration_ms: i32,
    /// Milliseconds since the epoch.
    at: i64,
}

#[derive(Object)]
#[oai(example)]
struct Deliveries {
    /// `active`, `failing` or `disabled`.
    state: String,
    /// Newest first: every failed attempt and the latest successes.
    deliveries: Vec<DeliveryView>,
}

#[derive(ApiResponse)]
enum CreateResponse {
    /// Created; it receives the room's events from now on.
    #[oai(status = 201)]
    Created(Json<CreatedWebhook>),
}

#[derive(ApiResponse)]
enum ReplayResponse {
    /// The replay is under way.
    #[oai(status = 202)]
    Accepted,
}

#[OpenApi(prefix_path = "/v1/rooms", tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Add a webhook to a room (owner only).
    #[oai(
        path = "/:room_id/webhooks",
        method = "post",
        operation_id = "create_webhook"
    )]
    async fn create(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        body: Json<CreateWebhookRequest>,
    ) -> Result<CreateResponse, ApiError> {
        let body = body.0;
        let NewWebhook { webhook, secret } = state
            .chat
            .create_webhook(auth.0.id, room_id.0, &body.url, body.events)
            .await?;
        Ok(CreateResponse::Created(Json(CreatedWebhook {
            id: webhook.id,
            url: webhook.url,
            events: webhook.events,
            secret,
            created_at: webhook.created_at,
        })))
    }

    /// A room's webhooks (owner only).
    #[oai(
        path = "/:room_id/webhooks",
        method = "get",
        operation_id = "list_webhooks"
    )]
    async fn list(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<Json<WebhookList>, ApiError> {
        let webhooks = state.chat.list_webhooks(auth.0.id, room_id.0).await?;
        let webhooks = webhooks.into_iter().map(WebhookView::from).collect();
        Ok(Json(WebhookList { webhooks }))
    }

    /// Delete a webhook (owner only).
    #[oai(
        path = "/:room_id/webhooks/:id",
        method = "delete",
        operation_id = "delete_webhook"
    )]
    async fn delete(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state
            .chat
            .delete_webhook(auth.0.id, room_id.0, id.0)
            .await?;
        Ok(NoContent::Done)
    }

    /// Replace a webhook's secret (owner only); the old one signs too for 24 h.
    #[oai(
        path = "/:room_id/webhooks/:id/rotate",
        method = "post",
        operation_id = "rotate_webhook_secret"
    )]
    async fn rotate(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        id: Path<Uuid>,
    ) -> Result<Json<RotatedSecret>, ApiError> {
        let secret = state
            .chat
            .rotate_webhook_secret(auth.0.id, room_id.0, id.0)
            .await?;
        Ok(Json(RotatedSecret { secret }))
    }

    /// Deliver the room's events again from a `seq` (owner only).
    #[oai(
        path = "/:room_id/webhooks/:id/replay",
        method = "post",
        operation_id = "replay_webhook"
    )]
    async fn replay(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        id: Path<Uuid>,
        body: Json<ReplayRequest>,
    ) -> Result<ReplayResponse, ApiError> {
        state
            .chat
            .replay_webhook(auth.0.id, room_id.0, id.0, body.from_seq)
            .await?;
        Ok(ReplayResponse::Accepted)
    }

    /// A webhook's state and recent delivery attempts (owner only).
    #[oai(
        path = "/:room_id/webhooks/:id/deliveries",
        method = "get",
        operation_id = "list_webhook_deliveries"
    )]
    async fn deliveries(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        id: Path<Uuid>,
        /// 1–200, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<Deliveries>, ApiError> {
        let (webhook_state, attempts) = state
            .chat
            .webhook_deliveries(auth.0.id, room_id.0, id.0, limit.0.unwrap_or(50))
            .await?;
        Ok(Json(Deliveries {
            state: webhook_state,
            deliveries: attempts.into_iter().map(DeliveryView::from).collect(),
        }))
    }
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        WebhookView {
            id: w.id,
            url: w.url,
            events: w.events,
            state: w.state,
            created_at: w.created_at,
        }
    }
}

impl From<Attempt> for DeliveryView {
    fn from(a: Attempt) -> Self {
        DeliveryView {
            event_id: a.event_id,
            kind: a.kind,
            attempt: a.attempt,
            status_code: a.status_code,
            error: a.error,
            duration_ms: a.duration_ms,
            at: a.at,
        }
    }
}

const WEBHOOK: Uuid = Uuid::from_u128(0x0193_6f1f_1a00_7e01_8a2b_3c4d_5e6f_e006);
const EXAMPLE_URL: &str = "https://hooks.example.com/natter";

impl Example for CreateWebhookRequest {
    fn example() -> Self {
        CreateWebhookRequest {
            url: JsonString(EXAMPLE_URL.into()),
            events: Some(vec!["message.created".into(), "message.edited".into()]),
        }
    }
}

impl Example for WebhookView {
    fn example() -> Self {
        WebhookView {
            id: WEBHOOK,
            url: EXAMPLE_URL.into(),
            events: None,
            state: "active".into(),
            created_at: examples::NOW_MS - 3_600_000,
        }
    }
}

impl Example for CreatedWebhook {
    fn example() -> Self {
        CreatedWebhook {
            id: WEBHOOK,
            url: EXAMPLE_URL.into(),
            events: None,
            secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
            created_at: examples::NOW_MS,
        }
    }
}

impl Example for WebhookList {
    fn example() -> Self {
        WebhookList {
            webhooks: vec![WebhookView::example()],
        }
    }
}

impl Example for RotatedSecret {
    fn example() -> Self {
        RotatedSecret {
            secret: "whsec_QnJhbmQtbmV3LXNlY3JldC0zMi1ieXRlcy1sb25n".into(),
        }
    }
}

impl Example for ReplayRequest {
    fn example() -> Self {
        ReplayRequest { from_seq: 40 }
    }
}

impl Example for DeliveryView {
    fn example() -> Self {
        DeliveryView {
            event_id: format!("msg_{}", examples::MESSAGE.simple()),
            kind: "message.created".into(),
            attempt: 1,
            status_code: Some(200),
            error: None,
            duration_ms: 12,
            at: examples::NOW_MS,
        }
    }
}

impl Example for Deliveries {
    fn example() -> Self {
        Deliveries {
            state: "active".into(),
            deliveries: vec![DeliveryView::example()],
        }
    }
}
