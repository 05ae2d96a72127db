//! `POST /v1/auth/register` and `POST /v1/auth/login`: built-in accounts.

use super::examples;
use poem::web::Data;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use super::{ApiTags, ChatText, ChatTextRule, JsonString};
use crate::{
    api::error::ApiError,
    app::AppState,
    auth::password,
    domain::{DisplayName, Password, Username},
    model::User,
};

pub struct AuthApi;

fn busy(_: password::Busy) -> ApiError {
    ApiError::unavailable("too many logins in progress; retry shortly")
}

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

#[OpenApi(prefix_path = "/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create an account and get a token.
    #[oai(path = "/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        Data(state): Data<&AppState>,
        body: Json<RegisterRequest>,
    ) -> Result<RegisterResponse, ApiError> {
        let username = Username::parse(&body.username)?;
        let password = Password::parse(&body.password)?;
        let display_name = match &body.display_name {
            Some(name) => DisplayName::parse(name)?.into_inner(),
            None => username.as_str().to_string(),
        };
        let hash = password::hash(password).await.map_err(busy)?;
        let user = state
            .store
            .create_user(&username, &display_name, Some(&hash))
            .await?;
        let issued = state.auth.issue(user.id);
        Ok(RegisterResponse::Created(Json(Session {
            user,
            token: issued.token,
            expires_at: issued.expires_at,
        })))
    }

    /// Exchange a username and password for a token.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        Data(state): Data<&AppState>,
        body: Json<LoginRequest>,
    ) -> Result<Json<Session>, ApiError> {
        let found = state.store.find_login(&body.username).await?;
        let (user, stored_hash) = match found {
            Some((user, hash)) => (Some(user), hash),
            None => (None, None),
        };
        let valid = password::verify(body.0.password.0, stored_hash)
            .await
            .map_err(busy)?;
        let Some(user) = user.filter(|_| valid) else {
            return Err(ApiError::invalid_credentials());
        };
        let issued = state.auth.issue(user.id);
        Ok(Json(Session {
            user,
            token: issued.token,
            expires_at: issued.expires_at,
        }))
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
