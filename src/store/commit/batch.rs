//! One group commit's batch, stored by one statement: `store_sends` (migration 0013)
//! locks the batch's rooms, checks every send under those locks, numbers and inserts the
//! new messages and moves each room's `last_seq`, and is its own transaction.
//!
//! Sent on its own, the statement is one round trip and commits when it ends; an error
//! anywhere in it rolls all of it back, so a batch that fails stores nothing. The
//! decisions that make `seq` gapless and sends idempotent (SPEC §1.1, §1.5) are taken in
//! SQL, in batch order, and documented beside it; this module turns its answer, one row
//! per send, into each send's outcome.

use tokio_postgres::{Row, types::ToSql};
use uuid::Uuid;

use super::{PendingSend, Sent};
use crate::{
    domain::InvalidInput,
    model::Reaction,
    store::{Store, StoreError, rows::message_from_row},
};

/// The batch's statement; its answer is one row per send, in batch order.
const STORE_SENDS_SQL: &str = "SELECT * FROM store_sends($1::uuid[], $2::uuid[], $3::uuid[], \
     $4::text[], $5::text[], $6::uuid[])";

/// One send's answer from `store_sends`: what it became, with the message that answers
/// it when there is one.
fn outcome_of(row: &Row) -> Result<Sent, StoreError> {
    let created = match row.get::<_, &str>("outcome") {
        "inserted" => true,
        "repeat" | "existing" => false,
        "not_member" => return Err(StoreError::NotMember),
        "room_not_found" => return Err(StoreError::RoomNotFound),
        "bad_reply" => {
            return Err(InvalidInput::new("reply_to", "is not a message of this room").into());
        }
        other => {
            return Err(StoreError::Unavailable(format!(
                "store_sends answered an unknown outcome {other:?}"
            )));
        }
    };
    if row.get::<_, Option<Uuid>>("id").is_none() {
        return Err(StoreError::MessageNotFound);
    }
    let mut message = message_from_row(row);
    let emoji: Option<Vec<String>> = row.get("reaction_emoji");
    let count: Option<Vec<i64>> = row.get("reaction_count");
    let me: Option<Vec<bool>> = row.get("reaction_me");
    if let (Some(emoji), Some(count), Some(me)) = (emoji, count, me) {
        message.reactions = emoji
            .into_iter()
            .zip(count)
            .zip(me)
            .map(|((emoji, count), me)| Reaction { emoji, count, me })
            .collect();
    }
    Ok(Sent { message, created })
}

impl Store {
    /// One statement, one transaction: returns each send's outcome, in batch order (room
    /// by room, each room's sends in arrival order).
    pub(super) async fn store_batch(
        &self,
        batch: &super::queues::Batch,
    ) -> Result<Vec<Result<Sent, StoreError>>, StoreError> {
        let columns = Columns::of(
            batch
                .iter()
                .flat_map(|(room_id, sends)| sends.iter().map(move |p| (*room_id, p))),
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(STORE_SENDS_SQL).await?;
        let params: [&(dyn ToSql + Sync); 6] = [
            &columns.ids,
            &columns.rooms,
            &columns.senders,
            &columns.texts,
            &columns.keys,
            &columns.replies,
        ];
        let rows = client.query(&statement, &params).await?;
        if rows.len() != columns.ids.len() {
            return Err(StoreError::Unavailable(format!(
                "store_sends answered {} of {} sends",
                rows.len(),
                columns.ids.len()
            )));
        }
        Ok(rows.iter().map(outcome_of).collect())
    }
}

/// A batch's sends as arrays, one element per send in batch order, for `store_sends`;
/// each send gets the id its message will have if it is stored.
struct Columns<'a> {
    ids: Vec<Uuid>,
    rooms: Vec<Uuid>,
    senders: Vec<Uuid>,
    texts: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    replies: Vec<Option<Uuid>>,
}

impl<'a> Columns<'a> {
    fn of(sends: impl Iterator<Item = (Uuid, &'a PendingSend)>) -> Self {
        let mut columns = Columns {
            ids: Vec::new(),
            rooms: Vec::new(),
            senders: Vec::new(),
            texts: Vec::new(),
            keys: Vec::new(),
            replies: Vec::new(),
        };
        for (room_id, pending) in sends {
            columns.ids.push(Uuid::now_v7());
            columns.rooms.push(room_id);
            columns.senders.push(pending.sender);
            columns.texts.push(&pending.text);
            columns.keys.push(pending.client_msg_id.as_deref());
            columns.replies.push(pending.reply_to);
        }
        columns
    }
}
