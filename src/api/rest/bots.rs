//! `/v1/bots` (SPEC §11): a user's bots and their API keys.

use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json, types::Example};
use uuid::Uuid;

use super::{ApiTags, ChatText, ChatTextRule, JsonString, NoContent, examples};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::OwnedBot,
    chat::bots::BotWithKey,
    model::User,
};

pub struct BotsApi;

#[derive(Object)]
#[oai(example)]
struct CreateBotRequest {
    /// 3–32 characters of `a-z`, `0-9`, `_`, `.`, `-`, unique among all users.
    #[oai(validator(pattern = r"^[a-z0-9_.-]{3,32}$"))]
    username: JsonString,
    /// Shown to others, 1–64 characters; defaults to the username.
    #[oai(nullable, validator(max_length = 64, custom = "ChatTextRule"))]
    display_name: Option<ChatText>,
}

/// A bot and its API key.
#[derive(Object)]
#[oai(example)]
struct BotKey {
    /// The bot (`bot: true`).
    user: User,
    /// The bot's API key: send as `Authorization: Bearer <token>` or `?token=`, as a
    /// user's token. Shown only now; it does not expire.
    token: String,
}

/// One of the caller's bots.
#[derive(Object)]
#[oai(example)]
struct Bot {
    user: User,
    /// Milliseconds since the epoch.
    created_at: i64,
}

#[derive(Object)]
#[oai(example)]
struct BotList {
    bots: Vec<Bot>,
}

#[derive(ApiResponse)]
enum CreatedBot {
    /// The bot and its key.
    #[oai(status = 201)]
    Created(Json<BotKey>),
}

#[OpenApi(prefix_path = "/v1/bots", tag = "ApiTags::Bots")]
impl BotsApi {
    /// Create a bot and get its API key.
    #[oai(path = "/", method = "post", operation_id = "create_bot")]
    async fn create(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        body: Json<CreateBotRequest>,
    ) -> Result<CreatedBot, ApiError> {
        let display_name = body.display_name.as_deref();
        let bot = state
            .chat
            .create_bot(auth.0.id, &body.username, display_name)
            .await?;
        Ok(CreatedBot::Created(Json(bot.into())))
    }

    /// The caller's bots.
    #[oai(path = "/", method = "get", operation_id = "list_bots")]
    async fn list(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<Json<BotList>, ApiError> {
        let bots = state.chat.list_bots(auth.0.id).await?;
        let bots = bots
            .into_iter()
            .map(|OwnedBot { user, created_at }| Bot { user, created_at })
            .collect();
        Ok(Json(BotList { bots }))
    }

    /// Replace a bot's API key: the old key stops working on every node within 5 s.
    #[oai(
        path = "/:id/token",
        method = "post",
        operation_id = "replace_bot_token"
    )]
    async fn replace_token(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        id: Path<Uuid>,
    ) -> Result<Json<BotKey>, ApiError> {
        let bot = state.chat.replace_bot_key(auth.0.id, id.0).await?;
        Ok(Json(bot.into()))
    }

    /// Delete a bot: its key stops working on every node within 5 s.
    #[oai(path = "/:id", method = "delete", operation_id = "delete_bot")]
    async fn delete(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
        id: Path<Uuid>,
    ) -> Result<NoContent, ApiError> {
        state.chat.delete_bot(auth.0.id, id.0).await?;
        Ok(NoContent::Done)
    }
}

impl From<BotWithKey> for BotKey {
    fn from(BotWithKey { user, key }: BotWithKey) -> Self {
        BotKey { user, token: key }
    }
}

fn example_bot() -> User {
    User {
        id: examples::BOT,
        username: "standup-bot".into(),
        display_name: "Standup bot".into(),
        bot: true,
        online: false,
    }
}

impl Example for CreateBotRequest {
    fn example() -> Self {
        CreateBotRequest {
            username: JsonString("standup-bot".into()),
            display_name: Some(ChatText("Standup bot".into())),
        }
    }
}

impl Example for BotKey {
    fn example() -> Self {
        BotKey {
            user: example_bot(),
            token: "ntb_3q2-7wAAAAC7u7u7ZmVlZGZhY2UtZGVhZGJlZWYtY2FmZWJhYmU".into(),
        }
    }
}

impl Example for Bot {
    fn example() -> Self {
        Bot {
            user: example_bot(),
            created_at: examples::NOW_MS - 3_600_000,
        }
    }
}

impl Example for BotList {
    fn example() -> Self {
        BotList {
            bots: vec![Bot::example()],
        }
    }
}
