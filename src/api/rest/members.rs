//! Room membership as seen and managed by the owner.

use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{
    Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::{ApiTags, NoContent, id_cursor};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    domain::PageLimit,
    model::Member,
};

pub struct MembersApi;

#[derive(Object)]
#[oai(example)]
struct MemberList {
    members: Vec<Member>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<String>,
}

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::Members")]
impl MembersApi {
    /// A room's members with their role, in user-id order.
    #[oai(
        path = "/rooms/:room_id/members",
        method = "get",
        operation_id = "list_members"
    )]
    async fn list_members(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        /// From a previous page's `next_cursor`.
        #[oai(validator(
            pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))]
        cursor: Query<Option<String>>,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<MemberList>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let after = id_cursor(cursor.0)?;
        let page = state
            .chat
            .list_members(auth.0.id, room_id.0, after, limit.get())
            .await?;
        Ok(Json(MemberList {
            members: page.items,
            next_cursor: page.next_cursor,
        }))
    }

    /// Add a member (owner only). Idempotent.
    #[oai(
        path = "/rooms/:room_id/members/:user_id",
        method = "put",
        operation_id = "add_member"
    )]
    async fn add_member(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        user_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state
            .chat
            .add_member(auth.0.id, room_id.0, user_id.0)
            .await?;
        Ok(NoContent::Done)
    }

    /// Remove a member (owner only). Idempotent.
    #[oai(
        path = "/rooms/:room_id/members/:user_id",
        method = "delete",
        operation_id = "remove_member"
    )]
    async fn remove_member(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        room_id: Path<Uuid>,
        user_id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state
            .chat
            .remove_member(auth.0.id, room_id.0, user_id.0)
            .await?;
        Ok(NoContent::Done)
    }
}

impl Example for MemberList {
    fn example() -> Self {
        MemberList {
            members: vec![Member::example()],
            next_cursor: None,
        }
    }
}
