//! Messages: send, page, search, edit, delete, react.

use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    domain::{ClientMsgId, Emoji, InvalidInput, MessageText},
    model::Message,
    store::{
        commit::{SendReceipt, Sent, sent_of},
        messages::{NewMessage, PageBounds},
    },
    webhooks::send_hook::{Proposed, SendHook, Verdict},
};

/// Longest search query, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// A message as a client asks to send it, unvalidated.
pub struct SendMessage<'a> {
    pub room_id: Uuid,
    pub text: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub reply_to: Option<Uuid>,
}

/// A send queued for its room's group commit (or, after a moderated retry, already
/// known); [`Queued::stored`] waits for the commit.
#[must_use = "a queued send is answered only by awaiting `stored`"]
pub struct Queued(Pending);

enum Pending {
    Commit(SendReceipt),
    Known(Sent),
}

impl Queued {
    /// The stored message (or the original, for a retried `client_msg_id`), once it is
    /// committed (SPEC §1.2).
    pub async fn stored(self) -> Result<Sent, ChatError> {
        match self.0 {
            Pending::Commit(receipt) => Ok(sent_of(receipt).await?),
            Pending::Known(sent) => Ok(sent),
        }
    }
}

/// A page of messages in ascending `seq`, and whether more lie beyond it.
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

impl Chat {
    /// Validates and meters a send, has the before-send hook moderate it when one is
    /// configured, and queues it for its room's next group commit. Without a hook this
    /// completes at its first poll, so the sends a caller queues are numbered in the
    /// order it queued them, however many are in flight; a caller with a hook awaits
    /// each send before queueing the next. Membership, `reply_to` and the idempotency
    /// key are checked under the room's lock when the batch runs; the message is emitted
    /// by the commit hook (`Chat::on_commit`).
    pub async fn send(&self, sender: Uuid, request: SendMessage<'_>) -> Result<Queued, ChatError> {
        let mut text = MessageText::parse(request.text, self.limits.max_text_chars)?;
        let client_msg_id = request.client_msg_id.map(ClientMsgId::parse).transpose()?;
        self.meter_send(sender)?;
        if let Some(hook) = &self.send_hook {
            // A retry of a stored send is answered without asking the hook again; a
            // send the commit would refuse is refused before the hook hears of it.
            let key = client_msg_id.as_ref();
            if let Some(message) = self.store.sent_before(sender, request.room_id, key).await? {
                let sent = Sent {
                    message,
                    created: false,
                };
                return Ok(Queued(Pending::Known(sent)));
            }
            let proposed = Proposed {
                room_id: request.room_id,
                sender_id: sender,
                text: text.as_str(),
                client_msg_id: key.map(ClientMsgId::as_str),
                reply_to: request.reply_to,
                message_id: None,
                edit: false,
            };
            text = self.moderate(hook, &proposed).await?.unwrap_or(text);
        }
        let new = NewMessage {
            text: &text,
            client_msg_id: client_msg_id.as_ref(),
            reply_to: request.reply_to,
            traceparent: crate::telemetry::current_traceparent(),
        };
        let receipt = self.store.queue_message(sender, request.room_id, new)?;
        Ok(Queued(Pending::Commit(receipt)))
    }

    /// The hook's verdict on a send or an edit applied: `None` to store the text as
    /// proposed, a replacement, or why not. A verdict that cannot be used (an invalid
    /// replacement text) counts as the hook failing.
    async fn moderate(
        &self,
        hook: &SendHook,
        proposed: &Proposed<'_>,
    ) -> Result<Option<MessageText>, ChatError> {
        let failure = match hook.check(proposed).await {
            Ok(Verdict::Allow) => return Ok(None),
            Ok(Verdict::Reject { reason }) => return Err(ChatError::RejectedByHook { reason }),
            Ok(Verdict::Modify { text: new }) => {
                match MessageText::parse(&new, self.limits.max_text_chars) {
                    Ok(new) => return Ok(Some(new)),
                    Err(invalid) => {
                        format!("the send hook's text is not a valid message: {invalid}")
                    }
                }
            }
            Err(failed) => failed.to_string(),
        };
        if hook.fails_open() {
            tracing::warn!(%failure, "send hook failed; storing the message unmoderated (SEND_HOOK_FAIL_OPEN)");
            Ok(None)
        } else {
            tracing::warn!(%failure, "send hook failed; refusing the send");
            Err(ChatError::HookUnavailable)
        }
    }

    /// A page of a room's history: by default the latest `limit`.
    pub async fn list_messages(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        bounds: PageBounds,
        limit: i64,
    ) -> Result<MessagePage, ChatError> {
        let (messages, has_more) = self
            .store
            .list_messages(viewer, room_id, bounds, limit)
            .await?;
        Ok(MessagePage { messages, has_more })
    }

    /// Full-text search within a room: the latest `limit` matches. Metered per user
    /// (SPEC §18): each search reads the room's text index.
    pub async fn search_messages(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        query: &str,
        limit: i64,
    ) -> Result<MessagePage, ChatError> {
        let query = query.trim();
        if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
            let reason = format!("must be 1-{MAX_QUERY_CHARS} characters");
            return Err(InvalidInput::new("q", reason).into());
        }
        meter(&self.searches, viewer)?;
        let (messages, has_more) = self
            .store
            .search_messages(viewer, room_id, query, limit)
            .await?;
        Ok(MessagePage { messages, has_more })
    }

    /// The sender changes their message's text; the room hears `message_edited`. Edits,
    /// deletes and reaction changes share one budget per user (SPEC §10). With a
    /// before-send hook, the new text is moderated as a send's would be (SPEC §15), once
    /// the edit is known to be one the store would make.
    pub async fn edit_message(
        &self,
        editor: Uuid,
        room_id: Uuid,
        message_id: Uuid,
        text: &str,
    ) -> Result<Message, ChatError> {
        let mut text = MessageText::parse(text, self.limits.max_text_chars)?;
        meter(&self.edits, editor)?;
        if let Some(hook) = &self.send_hook {
            self.store.editable(editor, room_id, message_id).await?;
            let proposed = Proposed {
                room_id,
                sender_id: editor,
                text: text.as_str(),
                client_msg_id: None,
                reply_to: None,
                message_id: Some(message_id),
                edit: true,
            };
            text = self.moderate(hook, &proposed).await?.unwrap_or(text);
        }
        let edited = self
            .store
            .edit_message(editor, room_id, message_id, &text)
            .await?;
        Ok(self.emit(edited).await)
    }

    /// The sender or the room's owner deletes a message, leaving a tombstone; the room
    /// hears `message_deleted` (not again for a tombstone deleted again).
    pub async fn delete_message(
        &self,
        deleter: Uuid,
        room_id: Uuid,
        message_id: Uuid,
    ) -> Result<Message, ChatError> {
        meter(&self.edits, deleter)?;
        let deleted = self
            .store
            .delete_message(deleter, room_id, message_id)
            .await?;
        Ok(self.emit(deleted).await)
    }

    /// Adds (`add`) or removes the caller's reaction, idempotently; the room hears a
    /// `reaction` event only when that changed something.
    pub async fn react(
        &self,
        user: Uuid,
        room_id: Uuid,
        message_id: Uuid,
        emoji: &str,
        add: bool,
    ) -> Result<Message, ChatError> {
        let emoji = Emoji::parse(emoji)?;
        meter(&self.edits, user)?;
        let reacted = self
            .store
            .set_reaction(user, room_id, message_id, &emoji, add)
            .await?;
        Ok(self.emit(reacted).await)
    }
}
