//! Rooms: create, list, read, rename, delete, join, leave, direct rooms and read
//! watermarks.

use super::examples;
use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{ApiTags, ChatText, ChatTextRule, NoContent, id_cursor};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::rooms::{CreateRoom, ReadUpTo},
    domain::PageLimit,
    model::{Room, RoomKind},
};

pub struct RoomsApi;

/// The kinds of room `POST /v1/rooms` makes (direct rooms come from `POST /v1/dms`).
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
enum NewRoomKind {
    Public,
    Private,
}

#[derive(Object)]
#[oai(example)]
struct CreateRoomRequest {
    /// 1–100 characters.
    #[oai(validator(max_length = 100, custom = "ChatTextRule"))]
    name: ChatText,
    kind: NewRoomKind,
    /// Users to add as members (at most 1000).
    #[oai(nullable, validator(max_items = 1000))]
    member_ids: Option<Vec<Uuid>>,
}

#[derive(Object)]
#[oai(example)]
struct RenameRoomRequest {
    /// 1–100 characters.
    #[oai(validator(max_length = 100, custom = "ChatTextRule"))]
    name: ChatText,
}

#[derive(Object)]
#[oai(example)]
struct RoomList {
    rooms: Vec<Room>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<String>,
}

#[derive(Object)]
#[oai(example)]
struct DirectRoomRequest {
    /// The other participant.
    user_id: Uuid,
}

#[derive(Object)]
#[oai(example)]
struct ReadRequest {
    /// The highest `seq` read; the watermark only moves forward.
    #[oai(validator(minimum(value = "0")))]
    seq: i64,
}

#[derive(ApiResponse)]
enum CreateRoomResponse {
    /// The room was created; the caller owns it.
    #[oai(status = 201)]
    Created(Json<Room>),
}

#[derive(ApiResponse)]
enum DirectRoomResponse {
    /// The direct room was created by this call.
    #[oai(status = 201)]
    Created(Json<Room>),
    /// The direct room already existed.
    #[oai(status = 200)]
    Existing(Json<Room>),
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Rooms")]
impl RoomsApi {
    /// Create a public or private room.
    #[oai(path = "/rooms", method = "post", operation_id = "create_room")]
    async fn create_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        body: Json<CreateRoomRequest>,
    ) -> Result<CreateRoomResponse, ApiError> {
        let request = CreateRoom {
            name: &body.name,
            kind: match body.kind {
                NewRoomKind::Public => RoomKind::Public,
                NewRoomKind::Private => RoomKind::Private,
            },
            member_ids: body.member_ids.as_deref().unwrap_or_default(),
        };
        let room = state.chat.create_room(auth.0.id, request).await?;
        Ok(CreateRoomResponse::Created(Json(room)))
    }

    /// Public rooms and the caller's rooms, oldest first.
    #[oai(path = "/rooms", method = "get", operation_id = "list_rooms")]
    async fn list_rooms(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        /// From a previous page's `next_cursor`.
        #[oai(validator(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))]
        cursor: Query<Option<String>>,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<RoomList>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let after = id_cursor(cursor.0)?;
        let page = state.chat.list_rooms(auth.0.id, after, limit.get()).await?;
        Ok(Json(RoomList {
            rooms: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    /// A room. A private room the caller is not in answers 404, like a missing one.
    #[oai(path = "/rooms/:room_id", method = "get", operation_id = "get_room")]
    async fn get_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<Json<Room>, ApiError> {
        Ok(Json(state.chat.get_room(auth.0.id, room_id.0).await?))
    }

    /// Rename a room (owner only).
    #[oai(
        path = "/rooms/:room_id",
        method = "patch",
        operation_id = "rename_room"
    )]
    async fn rename_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        body: Json<RenameRoomRequest>,
    ) -> Result<Json<Room>, ApiError> {
        let room = state
            .chat
            .rename_room(auth.0.id, room_id.0, &body.name)
            .await?;
        Ok(Json(room))
    }

    /// Delete a room and its messages (owner only).
    #[oai(
        path = "/rooms/:room_id",
        method = "delete",
        operation_id = "delete_room"
    )]
    async fn delete_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state.chat.delete_room(auth.0.id, room_id.0).await?;
        Ok(NoContent::Done)
    }

    /// Join a public room. Idempotent.
    #[oai(
        path = "/rooms/:room_id/join",
        method = "post",
        operation_id = "join_room"
    )]
    async fn join_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state.chat.join_room(auth.0.id, room_id.0).await?;
        Ok(NoContent::Done)
    }

    /// Leave a room. Idempotent; the owner cannot leave.
    #[oai(
        path = "/rooms/:room_id/leave",
        method = "post",
        operation_id = "leave_room"
    )]
    async fn leave_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state.chat.leave_room(auth.0.id, room_id.0).await?;
        Ok(NoContent::Done)
    }

    /// Move the caller's read watermark forward to `seq`.
    #[oai(
        path = "/rooms/:room_id/read",
        method = "post",
        operation_id = "mark_read"
    )]
    async fn mark_read(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        body: Json<ReadRequest>,
    ) -> Result<NoContent, ApiError> {
        let upto = ReadUpTo::Seq(body.seq);
        state.chat.mark_read(auth.0.id, room_id.0, upto).await?;
        Ok(NoContent::Done)
    }

    /// Get or create the direct room of the caller and another user.
    #[oai(path = "/dms", method = "post", operation_id = "open_direct_room")]
    async fn open_direct_room(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        body: Json<DirectRoomRequest>,
    ) -> Result<DirectRoomResponse, ApiError> {
        let (room, created) = state.chat.open_direct_room(auth.0.id, body.user_id).await?;
        Ok(if created {
            DirectRoomResponse::Created(Json(room))
        } else {
            DirectRoomResponse::Existing(Json(room))
        })
    }
}

impl Example for CreateRoomRequest {
    fn example() -> Self {
        CreateRoomRequest {
            name: ChatText("general".into()),
            kind: NewRoomKind::Public,
            member_ids: Some(vec![examples::BOB]),
        }
    }
}

impl Example for RenameRoomRequest {
    fn example() -> Self {
        RenameRoomRequest {
            name: ChatText("lunch".into()),
        }
    }
}

impl Example for RoomList {
    fn example() -> Self {
        RoomList {
            rooms: vec![Room::example()],
            next_cursor: None,
        }
    }
}

impl Example for DirectRoomRequest {
    fn example() -> Self {
        DirectRoomRequest {
            user_id: examples::BOB,
        }
    }
}

impl Example for ReadRequest {
    fn example() -> Self {
        ReadRequest { seq: 42 }
    }
}
