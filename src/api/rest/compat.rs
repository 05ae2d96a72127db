//! Drop-in routes (SPEC §12): the two original backends' paths and shapes, so their
//! clients and Postman collections work unchanged. Each is a thin translation onto the
//! same use cases as `/v1` (same rooms, messages, guarantees and limits). The WebSocket
//! halves are in `api::ws` (`connect_seed_room`, `connect_seed_direct`).
//!
//! - FastAPI + Firebase (seed 000): `/rooms/`, `/{room_id}/messages`.
//! - FastAPI + Supabase (seed 004): `/api/chat/{receiver_id}/messages|send`,
//!   `/api/chats`, `/api/online-users`.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, Object, OpenApi, SecurityScheme,
    auth::{ApiKey, Bearer},
    param::{Path, Query},
    payload::Json,
    types::Example,
};
use uuid::Uuid;

use super::{ApiTags, ChatText, ChatTextRule, examples};
use crate::{
    api::{context::ApiContext, error::ApiError, security},
    auth::AuthUser,
    chat::{PageBounds, credentials::Credential, messages::SendMessage, rooms::CreateRoom},
    domain::PageLimit,
    model::{Message, Room, RoomKind, User},
};

pub struct CompatApi;

/// The caller, as the seeds' clients prove it: `Authorization: Bearer <token>` or
/// `?token=` (any token `/v1` accepts).
#[derive(SecurityScheme)]
pub enum CompatAuth {
    Bearer(CompatBearer),
    Query(CompatQueryToken),
}

#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_bearer")]
pub struct CompatBearer(AuthUser);

#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "token",
    key_in = "query",
    checker = "check_query"
)]
pub struct CompatQueryToken(AuthUser);

async fn check_bearer(req: &poem::Request, bearer: Bearer) -> poem::Result<AuthUser> {
    verify(req, Credential::Bearer(&bearer.token)).await
}

async fn check_query(req: &poem::Request, key: ApiKey) -> poem::Result<AuthUser> {
    verify(req, Credential::UrlToken(&key.key)).await
}

/// The caller, while the drop-in routes are on.
async fn verify(req: &poem::Request, credential: Credential<'_>) -> poem::Result<AuthUser> {
    if !security::context(req).settings.compat_routes {
        return Err(ApiError::not_found("no such route (COMPAT_ROUTES=false)").into());
    }
    Ok(security::authenticate(req, credential).await?)
}

impl CompatAuth {
    fn user(&self) -> Uuid {
        match self {
            CompatAuth::Bearer(CompatBearer(user)) | CompatAuth::Query(CompatQueryToken(user)) => {
                user.id
            }
        }
    }
}

#[derive(Object)]
#[oai(example)]
struct SeedRoomRequest {
    /// 1–100 characters.
    #[oai(validator(max_length = 100, custom = "ChatTextRule"))]
    name: ChatText,
}

#[derive(Object)]
#[oai(example)]
struct SeedMessageRequest {
    /// 1–4000 characters.
    #[oai(validator(custom = "ChatTextRule"))]
    text: ChatText,
}

#[derive(Object)]
#[oai(example)]
struct SeedChatRequest {
    /// 1–4000 characters.
    #[oai(validator(custom = "ChatTextRule"))]
    message_text: ChatText,
}

#[derive(Object)]
#[oai(example)]
struct SeedRooms {
    rooms: Vec<Room>,
}

#[derive(Object)]
#[oai(example)]
struct SeedMessages {
    /// The latest `limit`, oldest first.
    messages: Vec<Message>,
}

/// One of the caller's one-to-one chats.
#[derive(Object)]
#[oai(example)]
struct SeedChat {
    /// The direct room's id.
    chat_id: Uuid,
    other_user_id: Uuid,
    /// Milliseconds since the epoch; null before the first message.
    #[oai(nullable)]
    last_message_at: Option<i64>,
    unread_count: i64,
}

#[derive(Object)]
#[oai(example)]
struct SeedChats {
    /// Most recently active first.
    chats: Vec<SeedChat>,
}

#[derive(Object)]
#[oai(example)]
struct SeedUsers {
    users: Vec<User>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<String>,
}

#[derive(ApiResponse)]
enum CreatedRoom {
    #[oai(status = 201)]
    Created(Json<Room>),
}

#[derive(ApiResponse)]
enum SentMessage {
    /// Stored (durably committed).
    #[oai(status = 201)]
    Created(Json<Message>),
}

/// Most rooms, chats or messages one of these lists returns (the seeds had no pages).
const MAX_LIST: i64 = 200;

#[OpenApi(tag = "ApiTags::Compat")]
impl CompatApi {
    /// Seed 000: create a public room.
    #[oai(path = "/rooms/", method = "post", operation_id = "compat_create_room")]
    async fn create_room(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
        body: Json<SeedRoomRequest>,
    ) -> Result<CreatedRoom, ApiError> {
        let request = CreateRoom {
            name: &body.name,
            kind: RoomKind::Public,
            member_ids: &[],
        };
        let room = state.chat.create_room(auth.user(), request).await?;
        Ok(CreatedRoom::Created(Json(room)))
    }

    /// Seed 000: public rooms and the caller's rooms (the first 200).
    #[oai(path = "/rooms/", method = "get", operation_id = "compat_list_rooms")]
    async fn list_rooms(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<SeedRooms>, ApiError> {
        let page = state.chat.list_rooms(auth.user(), None, MAX_LIST).await?;
        Ok(Json(SeedRooms { rooms: page.items }))
    }

    /// Seed 000: send a message, joining the (public) room first if needed.
    #[oai(
        path = "/:room_id/messages",
        method = "post",
        operation_id = "compat_send_message"
    )]
    async fn send(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        body: Json<SeedMessageRequest>,
    ) -> Result<SentMessage, ApiError> {
        let user = auth.user();
        state.chat.join_room(user, room_id.0).await?;
        let request = SendMessage {
            room_id: room_id.0,
            text: &body.text,
            client_msg_id: None,
            reply_to: None,
        };
        let sent = state.chat.send(user, request).await?.stored().await?;
        Ok(SentMessage::Created(Json(sent.message)))
    }

    /// Seed 000: the room's latest messages, oldest first.
    #[oai(
        path = "/:room_id/messages",
        method = "get",
        operation_id = "compat_list_messages"
    )]
    async fn messages(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        /// 1–200, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<SeedMessages>, ApiError> {
        let page = state
            .chat
            .list_messages(
                auth.user(),
                room_id.0,
                PageBounds::default(),
                limit.0.unwrap_or(50),
            )
            .await?;
        Ok(Json(SeedMessages {
            messages: page.messages,
        }))
    }

    /// Seed 004: the latest messages with a user, oldest first (none before the first).
    #[oai(
        path = "/api/chat/:receiver_id/messages",
        method = "get",
        operation_id = "compat_chat_messages"
    )]
    async fn chat_messages(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
        receiver_id: Path<Uuid>,
        /// 1–200, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<SeedMessages>, ApiError> {
        let user = auth.user();
        let Some(room) = state.chat.find_direct_room(user, receiver_id.0).await? else {
            return Ok(Json(SeedMessages {
                messages: Vec::new(),
            }));
        };
        let page = state
            .chat
            .list_messages(user, room, PageBounds::default(), limit.0.unwrap_or(50))
            .await?;
        Ok(Json(SeedMessages {
            messages: page.messages,
        }))
    }

    /// Seed 004: send a message to a user (their direct room is made on first contact).
    #[oai(
        path = "/api/chat/:receiver_id/send",
        method = "post",
        operation_id = "compat_chat_send"
    )]
    async fn chat_send(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
        receiver_id: Path<Uuid>,
        body: Json<SeedChatRequest>,
    ) -> Result<SentMessage, ApiError> {
        let user = auth.user();
        let room_id = state.chat.direct_room(user, receiver_id.0).await?;
        let request = SendMessage {
            room_id,
            text: &body.message_text,
            client_msg_id: None,
            reply_to: None,
        };
        let sent = state.chat.send(user, request).await?.stored().await?;
        Ok(SentMessage::Created(Json(sent.message)))
    }

    /// Seed 004: the caller's one-to-one chats, most recently active first.
    #[oai(path = "/api/chats", method = "get", operation_id = "compat_chats")]
    async fn chats(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<SeedChats>, ApiError> {
        let chats = state.chat.direct_chats(auth.user(), MAX_LIST).await?;
        let chats = chats
            .into_iter()
            .map(|chat| SeedChat {
                chat_id: chat.room_id,
                other_user_id: chat.other_user_id,
                last_message_at: chat.last_message_at,
                unread_count: chat.unread_count,
            })
            .collect();
        Ok(Json(SeedChats { chats }))
    }

    /// Seed 004: users online anywhere in the cluster, in user-id order (with
    /// `ONLINE_USERS=contacts`, the caller and those who share a room with them).
    #[oai(
        path = "/api/online-users",
        method = "get",
        operation_id = "compat_online_users"
    )]
    async fn online_users(
        &self,
        auth: CompatAuth,
        Data(state): Data<&ApiContext>,
        /// From a previous page's `next_cursor`.
        #[oai(validator(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))]
        cursor: Query<Option<String>>,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<SeedUsers>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let after = super::id_cursor(cursor.0)?;
        let page = state
            .chat
            .online_users(auth.user(), after, limit.get())
            .await?;
        Ok(Json(SeedUsers {
            users: page.items,
            next_cursor: page.next_cursor,
        }))
    }
}

impl Example for SeedRoomRequest {
    fn example() -> Self {
        SeedRoomRequest {
            name: ChatText("general".into()),
        }
    }
}

impl Example for SeedMessageRequest {
    fn example() -> Self {
        SeedMessageRequest {
            text: ChatText("Lunch at noon?".into()),
        }
    }
}

impl Example for SeedChatRequest {
    fn example() -> Self {
        SeedChatRequest {
            message_text: ChatText("Lunch at noon?".into()),
        }
    }
}

impl Example for SeedRooms {
    fn example() -> Self {
        SeedRooms {
            rooms: vec![Room::example()],
        }
    }
}

impl Example for SeedMessages {
    fn example() -> Self {
        SeedMessages {
            messages: vec![Message::example()],
        }
    }
}

impl Example for SeedChat {
    fn example() -> Self {
        SeedChat {
            chat_id: examples::GENERAL,
            other_user_id: examples::BOB,
            last_message_at: Some(examples::NOW_MS),
            unread_count: 2,
        }
    }
}

impl Example for SeedChats {
    fn example() -> Self {
        SeedChats {
            chats: vec![SeedChat::example()],
        }
    }
}

impl Example for SeedUsers {
    fn example() -> Self {
        SeedUsers {
            users: vec![User::example()],
            next_cursor: None,
        }
    }
}
