//! `GET /v1/me/rooms`: the caller's chat list.

use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};

use super::ApiTags;
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::ActivityCursor,
    domain::PageLimit,
    model::MyRoom,
};

pub struct MeApi;

#[derive(Object)]
#[oai(example)]
struct MyRoomList {
    rooms: Vec<MyRoom>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    next_cursor: Option<String>,
}

#[OpenApi(prefix_path = "/v1/me", tag = "ApiTags::Me")]
impl MeApi {
    /// The caller's rooms, most recently active first, each with its unread count, read
    /// watermark and last message.
    #[oai(path = "/rooms", method = "get", operation_id = "list_my_rooms")]
    async fn list_my_rooms(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        /// From a previous page's `next_cursor`.
        #[oai(validator(
            pattern = r"^[0-9]{1,15}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))]
        cursor: Query<Option<String>>,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<MyRoomList>, ApiError> {
        let limit = PageLimit::parse(limit.0)?;
        let after = cursor.0.as_deref().map(ActivityCursor::parse).transpose()?;
        let page = state.chat.my_rooms(auth.0.id, after, limit.get()).await?;
        Ok(Json(MyRoomList {
            rooms: page.items,
            next_cursor: page.next_cursor,
        }))
    }
}

impl Example for MyRoomList {
    fn example() -> Self {
        MyRoomList {
            rooms: vec![MyRoom::example()],
            next_cursor: None,
        }
    }
}
