//! Bots (SPEC §11): accounts a user creates for their automations, signed in by an API
//! key instead of a password.

use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    auth::bots,
    domain::{DisplayName, Username},
    model::User,
    store::bots::OwnedBot,
};

/// A bot and its key, which is shown only here.
pub struct BotWithKey {
    pub user: User,
    /// `Authorization: Bearer ntb_…`; Natter keeps only its hash.
    pub key: String,
}

impl Chat {
    /// `owner` creates a bot. Counts against their room-creation budget: both make
    /// rows that outlive the request. Only people own bots (SPEC §18): a bot's children
    /// would be invisible to the person behind it and survive its deletion, so a leaked
    /// key could breed keys its owner can neither list nor revoke.
    pub async fn create_bot(
        &self,
        owner: Uuid,
        username: &str,
        display_name: Option<&str>,
    ) -> Result<BotWithKey, ChatError> {
        let username = Username::parse(username)?;
        let display_name = match display_name {
            Some(name) => DisplayName::parse(name)?.into_inner(),
            None => username.as_str().to_owned(),
        };
        meter(&self.creations, owner)?;
        // Whether a user is a bot is fixed when the account is made, so this check
        // cannot go stale before the insert.
        if self.store.get_user(owner).await?.bot {
            return Err(ChatError::BotsCannotCreateBots);
        }
        let (key, hash) = bots::new_key();
        let bot = self
            .store
            .create_bot(owner, &username, &display_name, &hash)
            .await?;
        Ok(BotWithKey {
            user: bot.user,
            key,
        })
    }

    /// `owner`'s bots.
    pub async fn list_bots(&self, owner: Uuid) -> Result<Vec<OwnedBot>, ChatError> {
        let mut bots = self.store.list_bots(owner).await?;
        for bot in &mut bots {
            bot.user.online = self.presence.is_online(bot.user.id);
        }
        Ok(bots)
    }

    /// Gives `owner`'s bot a new key; the old one is refused on every node within
    /// `auth::bots::BOT_KEY_RECHECK`, and sockets opened with it close soon after.
    pub async fn replace_bot_key(&self, owner: Uuid, bot: Uuid) -> Result<BotWithKey, ChatError> {
        meter(&self.edits, owner)?;
        let (key, hash) = bots::new_key();
        self.store.replace_bot_key(owner, bot, &hash).await?;
        let user = self.user(bot).await?;
        Ok(BotWithKey { user, key })
    }

    /// Deletes `owner`'s bot, and any bot it owns (made before bots were refused
    /// that): their keys stop working as a replaced one does.
    pub async fn delete_bot(&self, owner: Uuid, bot: Uuid) -> Result<(), ChatError> {
        Ok(self.store.delete_bot(owner, bot).await?)
    }
}
