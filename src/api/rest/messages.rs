//! Messages: send, page, edit, delete, react, search.

use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{ApiTags, ChatText, ChatTextRule, JsonString};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::PageBounds,
    chat::messages::SendMessage,
    domain::{PageLimit, parse_seq},
    model::Message,
};

pub struct MessagesApi;

#[derive(Object)]
#[oai(example)]
struct SendMessageRequest {
    /// 1–4000 characters (`MAX_TEXT_CHARS`), not blank.
    #[oai(validator(custom = "ChatTextRule"))]
    text: ChatText,
    /// Idempotency key, unique per room and sender: a retry with the same key returns
    /// the original message instead of storing another. 1–128 printable characters.
    #[oai(
        nullable,
        validator(max_length = 128, pattern = r"^[^\x00-\x1F\x7F-\x9F]+$")
    )]
    client_msg_id: Option<JsonString>,
    /// A message of the same room this one answers.
    #[oai(nullable)]
    reply_to: Option<Uuid>,
}

#[derive(Object)]
#[oai(example)]
struct EditMessageRequest {
    /// 1–4000 characters (`MAX_TEXT_CHARS`), not blank.
    #[oai(validator(custom = "ChatTextRule"))]
    text: ChatText,
}

#[derive(Object)]
#[oai(example)]
struct MessagePage {
    /// In ascending `seq`.
    messages: Vec<Message>,
    /// Whether more messages lie beyond this page: older ones when paging backwards
    /// (`before_seq`, or the default latest page), newer ones with `after_seq`.
    has_more: bool,
}

#[derive(ApiResponse)]
enum SendMessageResponse {
    /// Stored (durably committed) with its `seq`.
    #[oai(status = 201)]
    Created(Json<Message>),
    /// A retry of an earlier `client_msg_id`: the original message.
    #[oai(status = 200)]
    Existing(Json<Message>),
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Messages")]
impl MessagesApi {
    /// Send a message. Answered only after it is committed.
    #[oai(
        path = "/rooms/:room_id/messages",
        method = "post",
        operation_id = "send_message"
    )]
    async fn send_message(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        body: Json<SendMessageRequest>,
    ) -> Result<SendMessageResponse, ApiError> {
        let request = SendMessage {
            room_id: room_id.0,
            text: &body.text,
            client_msg_id: body.client_msg_id.as_deref(),
            reply_to: body.reply_to,
        };
        let sent = state.chat.send(auth.0.id, request).await?.stored().await?;
        Ok(if sent.created {
            SendMessageResponse::Created(Json(sent.message))
        } else {
            SendMessageResponse::Existing(Json(sent.message))
        })
    }

    /// A page of messages in ascending `seq`: by default the latest `limit`; with
    /// `before_seq` the `limit` just before it; with `after_seq` the `limit` just after it.
    #[oai(
        path = "/rooms/:room_id/messages",
        method = "get",
        operation_id = "list_messages"
    )]
    async fn list_messages(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        /// Only messages with a smaller `seq`.
        #[oai(validator(minimum(value = "0")))]
        before_seq: Query<Option<i64>>,
        /// Only messages with a greater `seq`; the page starts right after it.
        #[oai(validator(minimum(value = "0")))]
        after_seq: Query<Option<i64>>,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<MessagePage>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let bounds = PageBounds {
            before_seq: before_seq
                .0
                .map(|s| parse_seq("before_seq", s))
                .transpose()?,
            after_seq: after_seq.0.map(|s| parse_seq("after_seq", s)).transpose()?,
        };
        let page = state
            .chat
            .list_messages(auth.0.id, room_id.0, bounds, limit.get())
            .await?;
        Ok(Json(MessagePage::from(page)))
    }

    /// Full-text search within a room: the latest matches, in ascending `seq`.
    #[oai(
        path = "/rooms/:room_id/messages/search",
        method = "get",
        operation_id = "search_messages"
    )]
    async fn search_messages(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        /// Words to find (web-search syntax: `"exact phrase"`, `-excluded`, `or`), 1–200
        /// characters.
        #[oai(validator(max_length = 200, custom = "ChatTextRule"))]
        q: Query<ChatText>,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<MessagePage>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let page = state
            .chat
            .search_messages(auth.0.id, room_id.0, &q.0, limit.get())
            .await?;
        Ok(Json(MessagePage::from(page)))
    }

    /// Edit a message's text (sender only).
    #[oai(
        path = "/rooms/:room_id/messages/:message_id",
        method = "patch",
        operation_id = "edit_message"
    )]
    async fn edit_message(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        body: Json<EditMessageRequest>,
    ) -> Result<Json<Message>, ApiError> {
        let message = state
            .chat
            .edit_message(auth.0.id, room_id.0, message_id.0, &body.text)
            .await?;
        Ok(Json(message))
    }

    /// Delete a message (sender or room owner), leaving a tombstone that keeps its `seq`.
    #[oai(
        path = "/rooms/:room_id/messages/:message_id",
        method = "delete",
        operation_id = "delete_message"
    )]
    async fn delete_message(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
    ) -> Result<Json<Message>, ApiError> {
        let message = state
            .chat
            .delete_message(auth.0.id, room_id.0, message_id.0)
            .await?;
        Ok(Json(message))
    }

    /// Add the caller's reaction. Idempotent.
    #[oai(
        path = "/rooms/:room_id/messages/:message_id/reactions/:emoji",
        method = "put",
        operation_id = "add_reaction"
    )]
    async fn add_reaction(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        /// 1–32 characters of Unicode emoji (`👍`, `👍🏽`, `🇫🇷`), nothing else.
        #[oai(validator(pattern = r"^[^\s\x00-\x1F\x7F-\x9F]{1,32}$"))]
        emoji: Path<String>,
    ) -> Result<Json<Message>, ApiError> {
        let message = state
            .chat
            .react(auth.0.id, room_id.0, message_id.0, &emoji.0, true)
            .await?;
        Ok(Json(message))
    }

    /// Remove the caller's reaction. Idempotent.
    #[oai(
        path = "/rooms/:room_id/messages/:message_id/reactions/:emoji",
        method = "delete",
        operation_id = "remove_reaction"
    )]
    async fn remove_reaction(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        /// 1–32 characters of Unicode emoji (`👍`, `👍🏽`, `🇫🇷`), nothing else.
        #[oai(validator(pattern = r"^[^\s\x00-\x1F\x7F-\x9F]{1,32}$"))]
        emoji: Path<String>,
    ) -> Result<Json<Message>, ApiError> {
        let message = state
            .chat
            .react(auth.0.id, room_id.0, message_id.0, &emoji.0, false)
            .await?;
        Ok(Json(message))
    }
}

impl Example for SendMessageRequest {
    fn example() -> Self {
        SendMessageRequest {
            text: ChatText("Lunch at noon?".into()),
            client_msg_id: Some(JsonString("web-5f2a9c1e".into())),
            reply_to: None,
        }
    }
}

impl Example for EditMessageRequest {
    fn example() -> Self {
        EditMessageRequest {
            text: ChatText("Lunch at one?".into()),
        }
    }
}

impl From<crate::chat::messages::MessagePage> for MessagePage {
    fn from(page: crate::chat::messages::MessagePage) -> Self {
        MessagePage {
            messages: page.messages,
            has_more: page.has_more,
        }
    }
}

impl Example for MessagePage {
    fn example() -> Self {
        MessagePage {
            messages: vec![Message::example()],
            has_more: true,
        }
    }
}
