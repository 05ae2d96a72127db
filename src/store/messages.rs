//! Messages: send, page, edit, delete, react, search.
//!
//! This is where the storage guarantees of SPEC §1 live:
//!
//! - **Per-room total order (§1.1).** [`Store::queue_message`] hands a send to the
//!   node's group commit ([`super::commit`]): one transaction locks the rows of the
//!   batch's rooms, checks the batch, numbers each room's messages from its
//!   `last_seq + 1` and sets each `last_seq` once. Concurrent batches on any number of
//!   nodes queue on those locks; a batch that fails stores nothing, so there are no
//!   holes.
//! - **Durable before acknowledged (§1.2).** A send's receipt resolves only after
//!   `COMMIT`.
//! - **Idempotent send (§1.5).** A retry is answered from the stored original, found
//!   under the room lock (or, within one batch, from the first send of its key); the
//!   unique index on `(room_id, sender_id, client_msg_id)` of keyed messages backs this up.

use std::{collections::HashMap, sync::Arc};

use deadpool_postgres::GenericClient;
use uuid::Uuid;

/// A room's counters, as the relay compares them with what it delivered and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomPosition {
    /// The highest `seq` committed.
    pub last_seq: i64,
    /// Bumped by every loss of access to the room ([`Store::lost_access`]).
    pub access_version: i64,
    /// Anyone may see the room (a room's kind never changes).
    pub public: bool,
}

use super::{
    CachedQuery, Store, StoreError,
    access::Access,
    commit::{PendingSend, SendReceipt},
    events::{self, Reacted, Recorded, RoomChange},
    rows::{MESSAGE_COLUMNS, attach_reactions, message_from_row, page_of},
};
use crate::{
    domain::{ClientMsgId, Emoji, MessageText},
    model::Message,
};

/// A new message as the sender asked for it.
pub struct NewMessage<'a> {
    pub text: &'a MessageText,
    pub client_msg_id: Option<&'a ClientMsgId>,
    pub reply_to: Option<Uuid>,
    /// The trace of the request that sent it, which its commit and fan-out continue.
    pub traceparent: Option<Arc<str>>,
}

/// Which part of a room's history to page through.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageBounds {
    /// Only messages with `seq` below this.
    pub before_seq: Option<i64>,
    /// Only messages with `seq` above this; the page then starts right after it.
    pub after_seq: Option<i64>,
}

/// Distinct emoji one message may carry (SPEC §10): a page, or a chat list's
/// `last_message`, cannot be grown without bound through one message's reactions.
const MAX_DISTINCT_REACTIONS: i64 = 20;

/// [`Store::seq_at_time`]'s bisection of a room's `seq` index: `$1` the room, `$2` the
/// time. `ends` is the room's first and last message (no row for an empty room, which
/// answers nothing: 0). `bisect` keeps `lo`, a message created at or before `$2`, and
/// `hi`, a `seq` from which every message is created after it; each step probes the
/// first message in `[mid, hi)` and moves `lo` to it if it is at or before `$2`, else
/// `hi` to `mid` (an empty `[mid, hi)`, a hole in `seq`, does the same), so the range
/// halves each time. The answer is the last `lo`; `bisect` runs only when neither end
/// answers.
const SEQ_AT_TIME_SQL: &str = "
    WITH RECURSIVE
        ends AS (
            SELECT f.seq AS first_seq, f.created_at AS first_at,
                   l.seq AS last_seq, l.created_at AS last_at
              FROM (SELECT seq, created_at FROM messages WHERE room_id = $1
                     ORDER BY seq LIMIT 1) f,
                   (SELECT seq, created_at FROM messages WHERE room_id = $1
                     ORDER BY seq DESC LIMIT 1) l),
        bisect (lo, hi) AS (
            SELECT first_seq, last_seq FROM ends WHERE first_at <= $2 AND last_at > $2
            UNION ALL
            SELECT CASE WHEN probe.created_at <= $2 THEN probe.seq ELSE b.lo END,
                   CASE WHEN probe.created_at <= $2 THEN b.hi ELSE b.lo + (b.hi - b.lo) / 2 END
              FROM bisect b
              LEFT JOIN LATERAL (
                    SELECT seq, created_at FROM messages
                     WHERE room_id = $1 AND seq >= b.lo + (b.hi - b.lo) / 2 AND seq < b.hi
                     ORDER BY seq LIMIT 1) probe ON true
             WHERE b.hi - b.lo > 1)
    SELECT CASE WHEN last_at <= $2 THEN last_seq
                WHEN first_at > $2 THEN 0
                ELSE (SELECT max(lo) FROM bisect) END
      FROM ends";

impl Store {
    /// Queues a message for its room's next group commit and returns at once; the
    /// receipt resolves when it is stored (see the module docs for the guarantees).
    /// Sends queued by one caller are numbered in the order they were queued.
    pub fn queue_message(
        &self,
        sender: Uuid,
        room_id: Uuid,
        new: NewMessage<'_>,
    ) -> Result<SendReceipt, StoreError> {
        let text = new.text.as_str().to_string();
        let client_msg_id = new.client_msg_id.map(|key| key.as_str().to_string());
        self.queue_send(room_id, |done| PendingSend {
            sender,
            text,
            client_msg_id,
            reply_to: new.reply_to,
            traceparent: new.traceparent,
            queued_at: std::time::Instant::now(),
            done,
        })
    }

    /// A page of a room's messages in ascending `seq`, and whether more lie beyond it:
    /// older ones when paging backwards (the default, from the latest), newer ones when
    /// `after_seq` is given.
    #[tracing::instrument(skip(self))]
    pub async fn list_messages(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        bounds: PageBounds,
        limit: i64,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let client = self.reader().await?;
        Access::of(&client, room_id, viewer).await?;
        let forwards = bounds.after_seq.is_some();
        let order = if forwards { "ASC" } else { "DESC" };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE room_id = $1
                AND ($2::bigint IS NULL OR seq < $2)
                AND ($3::bigint IS NULL OR seq > $3)
              ORDER BY seq {order} LIMIT $4"
        );
        let rows = client
            .query_cached(
                &sql,
                &[
                    &room_id,
                    &bounds.before_seq,
                    &bounds.after_seq,
                    &(limit + 1),
                ],
            )
            .await?;
        let (mut messages, has_more) = page_of(&rows, limit);
        if !forwards {
            messages.reverse();
        }
        attach_reactions(&client, viewer, &mut messages).await?;
        Ok((messages, has_more))
    }

    /// Messages of a room with `after < seq <= upto`, ascending, at most `limit`, with
    /// reactions as `viewer` sees them. No access check: for the relay, which checked
    /// access when the subscription began.
    #[tracing::instrument(skip(self))]
    pub async fn messages_in_range(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE room_id = $1 AND seq > $2 AND seq <= $3
              ORDER BY seq LIMIT $4"
        );
        let rows = client
            .query_cached(&sql, &[&room_id, &after, &upto, &limit])
            .await?;
        let mut messages: Vec<Message> = rows.iter().map(message_from_row).collect();
        attach_reactions(&client, viewer, &mut messages).await?;
        Ok(messages)
    }

    /// Where each of `room_ids` that still exists stands now.
    pub async fn rooms_positions(
        &self,
        room_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, RoomPosition>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached(
                "SELECT id, last_seq, access_version, kind = 'public' FROM rooms
                  WHERE id = ANY($1)",
                &[&room_ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let position = RoomPosition {
                    last_seq: r.get(1),
                    access_version: r.get(2),
                    public: r.get(3),
                };
                (r.get(0), position)
            })
            .collect())
    }

    /// The rooms that changed (a send, a loss of access, a deletion) in the last
    /// `lookback_secs` seconds of Postgres's clock, with their position now; `None` for a
    /// room deleted since. One index range: the cost follows traffic, not rooms.
    pub async fn recent_activity(
        &self,
        lookback_secs: i64,
    ) -> Result<Vec<(Uuid, Option<RoomPosition>)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached(
                "SELECT a.room_id, r.last_seq, r.access_version, r.kind = 'public'
                   FROM (SELECT DISTINCT room_id FROM room_activity
                          WHERE at >= now_ms() / 1000 - $1) a
                   LEFT JOIN rooms r ON r.id = a.room_id",
                &[&lookback_secs],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let position = r
                    .get::<_, Option<i64>>(1)
                    .zip(r.get::<_, Option<i64>>(2))
                    .map(|(last_seq, access_version)| RoomPosition {
                        last_seq,
                        access_version,
                        public: r.get::<_, Option<bool>>(3).unwrap_or(false),
                    });
                (r.get(0), position)
            })
            .collect())
    }

    /// Drops activity older than `keep_secs` seconds; any node may, as often as it likes.
    pub async fn forget_activity(&self, keep_secs: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute_cached(
                "DELETE FROM room_activity WHERE at < now_ms() / 1000 - $1",
                &[&keep_secs],
            )
            .await?)
    }

    /// The highest `seq` of a room's messages created at or before `created_at_ms`
    /// (0 if none, or if the room has no messages), for a member's `read_upto` by time.
    /// Access is checked first, so a stranger costs one lookup.
    ///
    /// Then one statement, [`SEQ_AT_TIME_SQL`], bisects the room's `seq` index
    /// `(room_id, seq)`: it reads the first and the last message (a time at or after the
    /// last answers its `seq`, one before the first answers 0), then probes the first
    /// message at or after the middle of the range still open until the range is one
    /// message wide: about log2(n) + 2 probes of a row each, 21 on a room of 300,000
    /// messages, whatever the time. Walking that index down from the newest message
    /// instead read every newer message (the whole room for a time before its first);
    /// an index on `(room_id, created_at)` (migration 0009's, dropped by 0012) made it
    /// one descent, but every stored message paid its btree insert on the send path,
    /// which is what bounds a hot room. One statement, so one round trip and one
    /// snapshot: sends committing meanwhile cannot move the range under it.
    ///
    /// The bisection relies on `created_at` never decreasing as `seq` grows within a
    /// room, which the send path keeps: the group commit numbers a room's messages
    /// under its row lock and inserts them in `seq` order in one statement, each row's
    /// `created_at` defaulting to `now_ms()` (Postgres's `clock_timestamp()`, read as
    /// the row is inserted), and the room's next batch takes the lock only once this
    /// one has committed. Edits (`edited_at`) and deletions (the row stays, its text
    /// blanked) leave `created_at` and `seq` alone; a hole in `seq` (none is made, but
    /// a room being deleted loses its messages in batches) is bisected like any other
    /// range. If times ever did go backwards (Postgres's clock stepped back, a failover
    /// to a server whose clock is behind, rows written by hand with their own times),
    /// the answer is still a message created at or before `created_at_ms` (or 0 when
    /// the first is after it), but not necessarily the highest such: messages on either
    /// side of the step may be marked read or not, depending on where the probes fall.
    pub async fn seq_at_time(
        &self,
        reader: Uuid,
        room_id: Uuid,
        created_at_ms: i64,
    ) -> Result<i64, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, reader)
            .await?
            .require_member()?;
        let row = client
            .query_opt_cached(SEQ_AT_TIME_SQL, &[&room_id, &created_at_ms])
            .await?;
        Ok(row.map_or(0, |row| row.get(0)))
    }

    /// Checks that `sender` may write to `room_id`, and returns the message they already
    /// stored there under `key`, if any: what the group commit would decide, asked
    /// before a send is moderated.
    pub async fn sent_before(
        &self,
        sender: Uuid,
        room_id: Uuid,
        key: Option<&ClientMsgId>,
    ) -> Result<Option<Message>, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, sender)
            .await?
            .require_member()?;
        let Some(key) = key else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
        );
        let Some(row) = client
            .query_opt_cached(&sql, &[&room_id, &sender, &key.as_str()])
            .await?
        else {
            return Ok(None);
        };
        let mut found = vec![message_from_row(&row)];
        attach_reactions(&client, sender, &mut found).await?;
        Ok(found.pop())
    }

    /// Checks that `editor` may edit the message now (a member, its sender, not deleted):
    /// what [`Store::edit_message`] would decide, asked before an edit is moderated.
    pub async fn editable(
        &self,
        editor: Uuid,
        room_id: Uuid,
        message_id: Uuid,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, editor)
            .await?
            .require_member()?;
        match message_owner(&client, room_id, message_id).await? {
            (sender_id, _) if sender_id != editor => Err(StoreError::NotSender),
            (_, true) => Err(StoreError::MessageDeleted),
            (_, false) => Ok(()),
        }
    }

    /// The sender edits their message's text.
    #[tracing::instrument(skip(self, text))]
    pub async fn edit_message(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        message_id: Uuid,
        text: &MessageText,
    ) -> Result<Recorded<Message>, StoreError> {
        let mut client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_member()?;
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        let sql = format!(
            "UPDATE messages SET text = $4, edited_at = now_ms()
              WHERE id = $1 AND room_id = $2 AND sender_id = $3 AND NOT deleted
              RETURNING {MESSAGE_COLUMNS}"
        );
        let row = tx
            .query_opt_cached(&sql, &[&message_id, &room_id, &viewer, &text.as_str()])
            .await?;
        let Some(row) = row else {
            let (sender_id, deleted) = message_owner(&tx, room_id, message_id).await?;
            return Err(if sender_id != viewer {
                StoreError::NotSender
            } else {
                debug_assert!(deleted);
                StoreError::MessageDeleted
            });
        };
        let mut messages = vec![message_from_row(&row)];
        attach_reactions(&tx, viewer, &mut messages).await?;
        let message = messages.remove(0);
        let edited = events::record(&tx, RoomChange::MessageEdited(message.clone())).await?;
        tx.commit().await?;
        Ok(Recorded::new(message, edited))
    }

    /// The sender or the room's owner deletes a message, leaving a tombstone. Deleting a
    /// tombstone again is a no-op that returns it and changes nothing.
    #[tracing::instrument(skip(self))]
    pub async fn delete_message(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        message_id: Uuid,
    ) -> Result<Recorded<Message>, StoreError> {
        let mut client = self.client().await?;
        let access = Access::of(&client, room_id, viewer).await?;
        access.require_member()?;
        let (sender_id, already_deleted) = message_owner(&client, room_id, message_id).await?;
        if sender_id != viewer {
            access.require_moderator()?;
        }
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        tx.execute_cached(
            "DELETE FROM reactions WHERE message_id = $1",
            &[&message_id],
        )
        .await?;
        let sql = format!(
            "UPDATE messages SET deleted = true, text = '' WHERE id = $1
             RETURNING {MESSAGE_COLUMNS}"
        );
        let row = tx.query_one_cached(&sql, &[&message_id]).await?;
        let tombstone = message_from_row(&row);
        let deleted = if already_deleted {
            None
        } else {
            let deleted = RoomChange::MessageDeleted(tombstone.clone());
            Some(events::record(&tx, deleted).await?)
        };
        tx.commit().await?;
        Ok(Recorded::new(tombstone, deleted))
    }

    /// Adds (`add`) or removes the caller's `emoji` reaction; idempotent both ways (a
    /// call that changed nothing records nothing).
    #[tracing::instrument(skip(self))]
    pub async fn set_reaction(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        message_id: Uuid,
        emoji: &Emoji,
        add: bool,
    ) -> Result<Recorded<Message>, StoreError> {
        let mut client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_member()?;
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        // The message's row lock orders concurrent reactions to it, so the cap on its
        // distinct emoji holds however many arrive at once.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND room_id = $2 FOR UPDATE"
        );
        let message = tx
            .query_opt_cached(&sql, &[&message_id, &room_id])
            .await?
            .map(|r| message_from_row(&r))
            .ok_or(StoreError::MessageNotFound)?;
        if message.deleted {
            return Err(StoreError::MessageDeleted);
        }
        let changed = if add {
            let row = tx
                .query_one_cached(
                    "SELECT count(DISTINCT emoji), COALESCE(bool_or(emoji = $2), false)
                       FROM reactions WHERE message_id = $1",
                    &[&message_id, &emoji.as_str()],
                )
                .await?;
            let (distinct, present): (i64, bool) = (row.get(0), row.get(1));
            if !present && distinct >= MAX_DISTINCT_REACTIONS {
                return Err(StoreError::TooManyReactions);
            }
            tx.execute_cached(
                "INSERT INTO reactions (message_id, emoji, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&message_id, &emoji.as_str(), &viewer],
            )
            .await?
        } else {
            tx.execute_cached(
                "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
                &[&message_id, &emoji.as_str(), &viewer],
            )
            .await?
        } > 0;
        let mut messages = vec![message];
        attach_reactions(&tx, viewer, &mut messages).await?;
        let reaction = if changed {
            let reacted = Reacted {
                room_id,
                message_id,
                emoji: emoji.as_str().to_string(),
                user_id: viewer,
            };
            let change = if add {
                RoomChange::ReactionAdded(reacted)
            } else {
                RoomChange::ReactionRemoved(reacted)
            };
            Some(events::record(&tx, change).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Recorded::new(messages.remove(0), reaction))
    }

    /// The latest `limit` messages of a room matching `query` (Postgres full-text search,
    /// `websearch_to_tsquery` syntax), in ascending `seq`, and whether older matches exist.
    #[tracing::instrument(skip(self))]
    pub async fn search_messages(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        query: &str,
        limit: i64,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let client = self.reader().await?;
        Access::of(&client, room_id, viewer).await?;
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE room_id = $1 AND tsv @@ websearch_to_tsquery('simple', $2)
              ORDER BY seq DESC LIMIT $3"
        );
        let rows = client
            .query_cached(&sql, &[&room_id, &query, &(limit + 1)])
            .await?;
        let (mut messages, has_more) = page_of(&rows, limit);
        messages.reverse();
        attach_reactions(&client, viewer, &mut messages).await?;
        Ok((messages, has_more))
    }
}

/// The sender of a message in a room and whether it is deleted.
async fn message_owner(
    db: &impl GenericClient,
    room_id: Uuid,
    message_id: Uuid,
) -> Result<(Uuid, bool), StoreError> {
    let row = db
        .query_opt_cached(
            "SELECT sender_id, deleted FROM messages WHERE id = $1 AND room_id = $2",
            &[&message_id, &room_id],
        )
        .await?
        .ok_or(StoreError::MessageNotFound)?;
    Ok((row.get(0), row.get(1)))
}
