//! Rows to resources: the column lists and row readers that several table groups share,
//! so none of them imports another for them.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{CachedQuery, StoreError};
use crate::model::{Message, Reaction};

/// The columns [`message_from_row`] reads.
pub(super) const MESSAGE_COLUMNS: &str =
    "id, room_id, seq, sender_id, text, created_at, edited_at, deleted, client_msg_id, reply_to";

/// A message without its reactions (see [`attach_reactions`]).
pub(super) fn message_from_row(row: &Row) -> Message {
    Message {
        id: row.get("id"),
        room_id: row.get("room_id"),
        seq: row.get("seq"),
        sender_id: row.get("sender_id"),
        text: row.get("text"),
        created_at: row.get("created_at"),
        edited_at: row.get("edited_at"),
        deleted: row.get("deleted"),
        client_msg_id: row.get("client_msg_id"),
        reply_to: row.get("reply_to"),
        reactions: Vec::new(),
    }
}

/// The first `limit` of `rows` (queried with `LIMIT limit + 1`) as messages, and whether
/// there were more.
pub(super) fn page_of(rows: &[Row], limit: i64) -> (Vec<Message>, bool) {
    let messages = rows
        .iter()
        .take(limit as usize)
        .map(message_from_row)
        .collect();
    (messages, rows.len() as i64 > limit)
}

/// The messages at the given (room, seq) positions, with reactions as `viewer` sees them.
pub(super) async fn fetch_at(
    db: &impl GenericClient,
    viewer: Uuid,
    positions: &[(Uuid, i64)],
) -> Result<Vec<Message>, StoreError> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let (rooms, seqs): (Vec<Uuid>, Vec<i64>) = positions.iter().copied().unzip();
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
          WHERE (room_id, seq) IN (SELECT * FROM unnest($1::uuid[], $2::bigint[]))"
    );
    let rows = db.query_cached(&sql, &[&rooms, &seqs]).await?;
    let mut messages: Vec<Message> = rows.iter().map(message_from_row).collect();
    attach_reactions(db, viewer, &mut messages).await?;
    Ok(messages)
}

/// Fills in each message's reactions (one query for the whole page).
pub(super) async fn attach_reactions(
    db: &impl GenericClient,
    viewer: Uuid,
    messages: &mut [Message],
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = messages
        .iter()
        .filter(|m| !m.deleted)
        .map(|m| m.id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let rows = db
        .query_cached(
            "SELECT message_id, emoji, count(*) AS count, bool_or(user_id = $2) AS me
               FROM reactions WHERE message_id = ANY($1)
              GROUP BY message_id, emoji ORDER BY min(created_at), emoji",
            &[&ids, &viewer],
        )
        .await?;
    for row in rows {
        let message_id: Uuid = row.get("message_id");
        if let Some(message) = messages.iter_mut().find(|m| m.id == message_id) {
            message.reactions.push(Reaction {
                emoji: row.get("emoji"),
                count: row.get("count"),
                me: row.get("me"),
            });
        }
    }
    Ok(())
}
