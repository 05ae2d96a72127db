//! The one place where errors become HTTP responses (SPEC §5).
//!
//! Every layer's error converts into [`ApiError`], whose variants are the statuses the API
//! can answer with, each carrying the envelope `{"error": {"code", "message"}}`. Causes
//! of a `500` are logged here and never sent. [`envelope_poem_error`] does the same for
//! errors that poem itself raises (malformed JSON, unknown routes, oversized bodies), so
//! a client sees one envelope whatever went wrong.

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Object,
    error::{ParseParamError, ParseRequestPayloadError},
    payload::Json,
};

use crate::{
    auth::AuthError,
    chat::{ChatError, StoreError},
    domain::InvalidInput,
};

/// Seconds a client should wait before retrying while a dependency is down.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 2;

/// The body of every error response.
#[derive(Debug, Object)]
#[oai(example)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Object)]
#[oai(example)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_input`, `room_not_found`, `rate_limited`, …
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// With `invalid_input`: the request field at fault.
    #[oai(skip_serializing_if_is_none)]
    pub field: Option<String>,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        ErrorBody {
            error: ErrorDetail::example(),
        }
    }
}

impl poem_openapi::types::Example for ErrorDetail {
    fn example() -> Self {
        ErrorDetail {
            code: "invalid_input".into(),
            message: "text must not be blank".into(),
            field: Some("text".into()),
        }
    }
}

fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.into(),
            field: None,
        },
    })
}

/// Every error the API answers with.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The input is invalid (`invalid_input`): `error.field` names the field and
    /// `error.message` says why. Nothing was changed.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The bearer token is missing, malformed, expired, not yet valid, signed wrongly or
    /// from an untrusted issuer or audience (`unauthorized`); or the credentials are
    /// wrong (`invalid_credentials`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The caller may see this but not do it: `not_member` (join the public room first),
    /// `not_owner`, `not_sender`.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// `room_not_found` (also for a private room the caller is not in), `user_not_found`,
    /// `message_not_found`.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request clashes with the current state: `username_taken`, `message_deleted`,
    /// `owner_cannot_leave`, `direct_room`, `too_many_reactions` (and, on a socket,
    /// `too_many_rooms`).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The request body is over the body limit (`payload_too_large`).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not JSON, or says it is not (`unsupported_media_type`): send
    /// `Content-Type: application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The caller's budget for this action is spent (`rate_limited`), they have as
    /// many sockets open as they may (`too_many_sockets`), or this username has had too
    /// many failed logins (`too_many_attempts`); retry after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// An unexpected failure (`internal`); details are in the server log only.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// Postgres, NATS or an identity provider is unreachable (`unavailable`), or the node
    /// is draining; retry after `Retry-After` seconds.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
}

impl ApiError {
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::Unauthorized(body("unauthorized", message))
    }

    pub fn invalid_credentials() -> Self {
        ApiError::Unauthorized(body("invalid_credentials", "wrong username or password"))
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        ApiError::TooManyRequests(
            body("rate_limited", "too many requests; slow down"),
            retry_after_secs,
        )
    }

    /// `404 not_found`: a route that is not served.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(body("not_found", message))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable(body("unavailable", message), UNAVAILABLE_RETRY_AFTER_SECS)
    }

    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let mut json = body("invalid_input", format!("{field}: {reason}"));
        json.0.error.field = Some(field.to_string());
        ApiError::BadRequest(json)
    }
}

impl ApiError {
    /// The code and message of this error, for surfaces that are not HTTP responses
    /// (WebSocket `error` frames).
    pub fn detail(&self) -> &ErrorDetail {
        let (ApiError::BadRequest(json)
        | ApiError::Unauthorized(json)
        | ApiError::Forbidden(json)
        | ApiError::NotFound(json)
        | ApiError::Conflict(json)
        | ApiError::PayloadTooLarge(json)
        | ApiError::UnsupportedMediaType(json)
        | ApiError::TooManyRequests(json, _)
        | ApiError::Internal(json)
        | ApiError::Unavailable(json, _)) = self;
        &json.0.error
    }
}

impl From<InvalidInput> for ApiError {
    fn from(err: InvalidInput) -> Self {
        ApiError::invalid(err.field, err.reason)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let message = err.to_string();
        match err {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                ApiError::unavailable("the database is unreachable; retry shortly")
            }
            StoreError::RoomNotFound => ApiError::NotFound(body("room_not_found", "no such room")),
            StoreError::UserNotFound => ApiError::NotFound(body("user_not_found", "no such user")),
            StoreError::TooManyWebhooks => ApiError::Conflict(body("too_many_webhooks", message)),
            StoreError::TooManyPushSubscriptions => {
                ApiError::Conflict(body("too_many_push_subscriptions", message))
            }
            StoreError::PushSubscriptionNotFound => {
                ApiError::NotFound(body("push_subscription_not_found", message))
            }
            StoreError::WebhookNotFound => {
                ApiError::NotFound(body("webhook_not_found", "no such webhook in this room"))
            }
            StoreError::MessageNotFound => {
                ApiError::NotFound(body("message_not_found", "no such message in this room"))
            }
            StoreError::NotMember => {
                ApiError::Forbidden(body("not_member", "join this room before writing to it"))
            }
            StoreError::NotOwner => ApiError::Forbidden(body("not_owner", message)),
            StoreError::NotSender | StoreError::NotSenderOrOwner => {
                ApiError::Forbidden(body("not_sender", message))
            }
            StoreError::UsernameTaken => ApiError::Conflict(body("username_taken", message)),
            StoreError::MessageDeleted => ApiError::Conflict(body("message_deleted", message)),
            StoreError::TooManyReactions => ApiError::Conflict(body("too_many_reactions", message)),
            StoreError::DirectRoomIsFixed => ApiError::Conflict(body("direct_room", message)),
            StoreError::OwnerCannotLeave => ApiError::Conflict(body("owner_cannot_leave", message)),
            StoreError::Invalid(invalid) => invalid.into(),
            StoreError::Database(cause) => {
                tracing::error!(error = ?cause, "database error");
                ApiError::Internal(body("internal", "internal error"))
            }
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(err: ChatError) -> Self {
        let message = err.to_string();
        match err {
            ChatError::Invalid(invalid) => invalid.into(),
            ChatError::Store(err) => err.into(),
            ChatError::Auth(err) => err.into(),
            ChatError::RateLimited { retry_after } => {
                ApiError::rate_limited(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            ChatError::TooManyRooms { .. } => ApiError::Conflict(body("too_many_rooms", message)),
            ChatError::TooManySockets { .. } => {
                ApiError::TooManyRequests(body("too_many_sockets", message), 1)
            }
            ChatError::Relay(_) => ApiError::unavailable(message),
            ChatError::InvalidCredentials => ApiError::invalid_credentials(),
            ChatError::InvalidTicket => ApiError::unauthorized(message),
            ChatError::HasherBusy | ChatError::HookUnavailable => ApiError::unavailable(message),
            ChatError::WebhookUrlNotAllowed(_) => {
                ApiError::BadRequest(body("webhook_url_not_allowed", message))
            }
            ChatError::PushEndpointNotAllowed(_) => {
                ApiError::BadRequest(body("push_endpoint_not_allowed", message))
            }
            ChatError::PushGatewayNotConfigured => {
                ApiError::BadRequest(body("push_gateway_not_configured", message))
            }
            ChatError::BotsCannotCreateBots => {
                ApiError::Forbidden(body("bots_cannot_create_bots", message))
            }
            ChatError::RejectedByHook { reason } => {
                ApiError::Forbidden(body("rejected_by_hook", reason))
            }
            ChatError::TooManyAttempts { retry_after } => ApiError::TooManyRequests(
                body("too_many_attempts", message),
                retry_after.as_secs_f64().ceil().max(1.0) as u64,
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Invalid(message) => ApiError::unauthorized(message),
            AuthError::Unavailable(message) => {
                tracing::warn!(%message, "cannot verify token now");
                ApiError::unavailable("cannot verify the token right now; retry shortly")
            }
        }
    }
}

/// A request poem-openapi refused before the handler ran (a parameter or body field
/// outside its schema), naming the field at fault as the handlers do.
fn invalid_request(err: &poem::Error, message: String) -> ApiError {
    if let Some(param) = err.downcast_ref::<ParseParamError>() {
        return ApiError::invalid(param.name, param.reason.clone());
    }
    let field = err
        .downcast_ref::<ParseRequestPayloadError>()
        .and_then(|payload| {
            let (_, rest) = payload.reason.split_once("field `")?;
            rest.split_once('`').map(|(field, _)| field.to_string())
        });
    match field {
        Some(field) => ApiError::invalid(&field, message),
        None => ApiError::BadRequest(body("invalid_input", message)),
    }
}

/// Turns any error poem raised outside our handlers into the SPEC's envelope; responses
/// our handlers built already are passed through.
pub async fn envelope_poem_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let message = err.to_string();
    let api_error = match status {
        StatusCode::BAD_REQUEST => invalid_request(&err, message),
        StatusCode::UNAUTHORIZED => ApiError::unauthorized("a valid bearer token is required"),
        StatusCode::NOT_FOUND => ApiError::NotFound(body("not_found", "no such route")),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(body("payload_too_large", "the request body is too large"))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(body(
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        )),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(message),
        s if s.is_server_error() => {
            tracing::error!(error = %message, "unhandled server error");
            ApiError::Internal(body("internal", "internal error"))
        }
        s => {
            let code = s
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_");
            return (
                s,
                poem::web::Json(serde_json::json!({
                    "error": { "code": code, "message": message }
                })),
            )
                .into_response();
        }
    };
    api_error.into_response()
}
