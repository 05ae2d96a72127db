//! `POST /v1/auth/register` and `POST /v1/auth/login`: built-in accounts.

use super::examples;
use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, ChatText, ChatTextRule, JsonString};
use crate::{
    api::context::ApiContext, api::error::ApiError, chat::accounts::SignedIn,
    client_address::ClientAddress, model::User,
};

pub struct AuthApi;

#[derive(Object)]
#[oai(example)]
struct RegisterRequest {
    /// 3–32 characters of `a-z`, `0-9`, `_`, `.`, `-`.
    #[oai(validator(pattern = r"^[a-z0-9_.-]{3,32}$"))]
    username: JsonString,
    /// 8–1024 characters.
    #[oai(validator(min_length = 8, max_length = 1024))]
    password: JsonString,
    /// Shown to others, 1–64 characters; defaults to the username.
    #[oai(nullable, validator(max_length = 64, custom = "ChatTextRule"))]
    display_name: Option<ChatText>,
}

#[derive(Object)]
#[oai(example)]
struct LoginRequest {
    username: JsonString,
    password: JsonString,
}

/// A user and a bearer token for them.
#[derive(Object)]
#[oai(example)]
struct Session {
    user: User,
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    /// When the token expires, in milliseconds since the epoch.
    expires_at: i64,
}

#[derive(ApiResponse)]
enum RegisterResponse {
    /// The account was created.
    #[oai(status = 201)]
    Created(Json<Session>),
}

#[OpenApi(prefix_path = "/v1/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account and get a token. Each client address may register 5 accounts
    /// a minute.
    #[oai(path = "/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        Data(state): Data<&ApiContext>,
        Data(from): Data<&ClientAddress>,
        body: Json<RegisterRequest>,
    ) -> Result<RegisterResponse, ApiError> {
        let display_name = body.display_name.as_deref();
        let signed_in = state
            .chat
            .register(&body.username, &body.password, display_name, *from)
            .await?;
        Ok(RegisterResponse::Created(Json(signed_in.into())))
    }

    /// Exchange a username and password for a token. Each client address may try 10
    /// logins a minute; after 5 failures for a username from one address, that
    /// address's next attempts for it wait longer each time.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        Data(state): Data<&ApiContext>,
        Data(from): Data<&ClientAddress>,
        body: Json<LoginRequest>,
    ) -> Result<Json<Session>, ApiError> {
        let body = body.0;
        let signed_in = state
            .chat
            .login(&body.username, body.password.0, *from)
            .await?;
        Ok(Json(signed_in.into()))
    }
}

impl From<SignedIn> for Session {
    fn from(SignedIn { user, token }: SignedIn) -> Self {
        Session {
            user,
            token: token.token,
            expires_at: token.expires_at,
        }
    }
}

impl Example for RegisterRequest {
    fn example() -> Self {
        RegisterRequest {
            username: JsonString("alice".into()),
            password: JsonString("correct horse battery".into()),
            display_name: Some(ChatText("Alice".into())),
        }
    }
}

impl Example for LoginRequest {
    fn example() -> Self {
        LoginRequest {
            username: JsonString("alice".into()),
            password: JsonString("correct horse battery".into()),
        }
    }
}

impl Example for Session {
    fn example() -> Self {
        Session {
            user: User::example(),
            token: "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzNmYxYy0yYTQwLTdkM2UtOWIxYS00YzhlNWYyMGEwMDEifQ.signature".into(),
            expires_at: examples::NOW_MS + 86_400_000,
        }
    }
}
