//! `GET /v1/presence` and `GET /v1/rooms/{room_id}/presence`: who is online, read from
//! this node's view of the cluster's presence (no round trip to NATS).

use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::ApiTags;
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    model::User,
};

pub struct PresenceApi;

#[derive(Object)]
#[oai(example)]
struct UserList {
    users: Vec<User>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Users")]
impl PresenceApi {
    /// Users with a live connection anywhere in the cluster.
    #[oai(path = "/presence", method = "get", operation_id = "list_online_users")]
    async fn list_online_users(
        &self,
        _auth: BearerAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<UserList>, ApiError> {
        let users = state.chat.online_users().await?;
        Ok(Json(UserList { users }))
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
