//! `GET /v1/users/me` and `GET /v1/users/{user_id}`.

use poem::web::Data;
use poem_openapi::{OpenApi, param::Path, payload::Json};
use uuid::Uuid;

use super::ApiTags;
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    model::User,
};

pub struct UsersApi;

#[OpenApi(prefix_path = "/v1/users", tag = "ApiTags::Users")]
impl UsersApi {
    /// The caller.
    #[oai(path = "/me", method = "get", operation_id = "get_me")]
    async fn get_me(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<User>, ApiError> {
        Ok(Json(state.chat.user(auth.0.id).await?))
    }

    /// A user by id.
    #[oai(path = "/:user_id", method = "get", operation_id = "get_user")]
    async fn get_user(
        &self,
        _auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        user_id: Path<Uuid>,
    ) -> Result<Json<User>, ApiError> {
        Ok(Json(state.chat.user(user_id.0).await?))
    }
}
