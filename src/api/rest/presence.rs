//! `GET /v1/presence` and `GET /v1/rooms/{room_id}/presence`: who is online, read from
//! this node's view of the cluster's presence (no round trip to NATS).

use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::ApiTags;
use crate::{
    api::{error::ApiError, security::BearerAuth},
    app::AppState,
    model::User,
};

pub struct PresenceApi;

#[derive(Object)]
#[oai(example)]
struct UserList {
    users: Vec<User>,
}

/// The users behind `ids`, all marked online (they come from the presence view).
async fn online_users(state: &AppState, ids: Vec<Uuid>) -> Result<Json<UserList>, ApiError> {
    let mut users = state.store.users_by_ids(&ids).await?;
    for user in &mut users {
        user.online = true;
    }
    Ok(Json(UserList { users }))
}

#[OpenApi(tag = "ApiTags::Users")]
impl PresenceApi {
    /// Users with a live connection anywhere in the cluster.
    #[oai(path = "/presence", method = "get", operation_id = "list_online_users")]
    async fn list_online_users(
        &self,
        _auth: BearerAuth,
        Data(state): Data<&AppState>,
    ) -> Result<Json<UserList>, ApiError> {
        online_users(state, state.presence.online_users()).await
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
        Data(state): Data<&AppState>,
        room_id: Path<Uuid>,
    ) -> Result<Json<UserList>, ApiError> {
        state.store.check_access(auth.0.id, room_id.0).await?;
        online_users(state, state.presence.room_users(room_id.0)).await
    }
}

impl Example for UserList {
    fn example() -> Self {
        UserList {
            users: vec![User::example()],
        }
    }
}
