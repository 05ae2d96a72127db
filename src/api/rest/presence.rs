//! `GET /v1/presence` and `GET /v1/rooms/{room_id}/presence`: who is online, read from
//! this node's view of the cluster's presence (no round trip to NATS). The first is
//! paginated, and with `ONLINE_USERS=contacts` lists only the caller's contacts (SPEC §18).

use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{
    Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{ApiTags, id_cursor};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    domain::PageLimit,
    model::User,
};

pub struct PresenceApi;

#[derive(Object)]
#[oai(example)]
struct UserList {
    users: Vec<User>,
}

#[derive(Object)]
#[oai(example)]
struct OnlineUserList {
    users: Vec<User>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<String>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Users")]
impl PresenceApi {
    /// Users with a live connection anywhere in the cluster, in user-id order: everyone,
    /// or with `ONLINE_USERS=contacts` the caller and those who share a room with them.
    #[oai(path = "/presence", method = "get", operation_id = "list_online_users")]
    async fn list_online_users(
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
    ) -> Result<Json<OnlineUserList>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let after = id_cursor(cursor.0)?;
        let page = state
            .chat
            .online_users(auth.0.id, after, limit.get())
            .await?;
        Ok(Json(OnlineUserList {
            users: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    /// Users with a live subscription to the room, on any node.
    #[oai(
        path = "/rooms/:room_id/presence",
        method = "get",
        operation_id = "list_room_presence"
    )]
    async fn list_room_presence(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
    ) -> Result<Json<UserList>, ApiError> {
        let users = state.chat.room_presence(auth.0.id, room_id.0).await?;
        Ok(Json(UserList { users }))
    }
}

impl Example for UserList {
    fn example() -> Self {
        UserList {
            users: vec![User::example()],
        }
    }
}

impl Example for OnlineUserList {
    fn example() -> Self {
        OnlineUserList {
            users: vec![User::example()],
            next_cursor: None,
        }
    }
}
