//! The durable record of room changes that webhooks deliver (SPEC §11).
//!
//! A room's history, in order, is its messages (`messages`, position `(seq, 0)`) merged
//! with every other change (`room_events`, position `(after_seq, n)`: the n-th change
//! since message `after_seq`). Each change is recorded by [`record`] in the transaction
//! that makes it, after [`lock_room`]: the room's row lock, which the group commit takes
//! too, hands out positions in commit order, so a reader always sees a prefix of the
//! history and a webhook's place in a room is one position.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    CachedQuery, StoreError,
    rows::{MESSAGE_COLUMNS, message_from_row},
};
use crate::model::{Message, Room};

/// A position in a room's history: `(seq, 0)` is message `seq`; `(seq, n)` the n-th
/// other change after it. Ordered as a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Position {
    pub seq: i64,
    pub n: i32,
}

/// A change to a room other than a new message, as webhooks receive it.
pub enum RoomChange<'a> {
    MessageEdited(&'a Message),
    /// The tombstone.
    MessageDeleted(&'a Message),
    Reaction {
        added: bool,
        room_id: Uuid,
        message_id: Uuid,
        emoji: &'a str,
        user_id: Uuid,
    },
    Member {
        joined: bool,
        room_id: Uuid,
        user_id: Uuid,
    },
    RoomCreated(&'a Room),
    RoomDeleted(&'a Room),
}

impl RoomChange<'_> {
    /// The event type (SPEC §11).
    pub fn kind(&self) -> &'static str {
        match self {
            RoomChange::MessageEdited(_) => "message.edited",
            RoomChange::MessageDeleted(_) => "message.deleted",
            RoomChange::Reaction { added: true, .. } => "reaction.added",
            RoomChange::Reaction { added: false, .. } => "reaction.removed",
            RoomChange::Member { joined: true, .. } => "member.joined",
            RoomChange::Member { joined: false, .. } => "member.left",
            RoomChange::RoomCreated(_) => "room.created",
            RoomChange::RoomDeleted(_) => "room.deleted",
        }
    }

    /// The event's `data` object.
    fn data(&self) -> serde_json::Value {
        match self {
            RoomChange::MessageEdited(message) | RoomChange::MessageDeleted(message) => {
                json!({ "message": message })
            }
            RoomChange::Reaction {
                room_id,
                message_id,
                emoji,
                user_id,
                ..
            } => json!({
                "room_id": room_id, "message_id": message_id, "emoji": emoji, "user_id": user_id,
            }),
            RoomChange::Member {
                room_id, user_id, ..
            } => json!({ "room_id": room_id, "user_id": user_id }),
            RoomChange::RoomCreated(room) | RoomChange::RoomDeleted(room) => {
                json!({ "room": room })
            }
        }
    }
}

/// Takes the room's row lock for the rest of the transaction, before anything else it
/// locks (message rows), so changes and the group commit always lock in one order.
/// `room_not_found` if the room is gone.
pub(super) async fn lock_room(db: &impl GenericClient, room_id: Uuid) -> Result<(), StoreError> {
    db.query_opt_cached(
        "SELECT 1 FROM rooms WHERE id = $1 FOR NO KEY UPDATE",
        &[&room_id],
    )
    .await?
    .map(|_| ())
    .ok_or(StoreError::RoomNotFound)
}

/// Records `change` at the room's next position, in the caller's transaction.
pub(super) async fn record(
    db: &impl GenericClient,
    room_id: Uuid,
    change: RoomChange<'_>,
) -> Result<(), StoreError> {
    db.execute_cached(
        "SELECT record_room_event($1, $2, $3)",
        &[&room_id, &change.kind(), &change.data().to_string()],
    )
    .await?;
    Ok(())
}

/// One event of a room's history, ready to deliver.
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub position: Position,
    /// Stable across retries: `webhook-id`.
    pub id: String,
    pub kind: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// The `data` object as JSON text.
    pub data: String,
}

impl HistoryEvent {
    /// The request body: `{"type", "timestamp", "data"}`.
    pub fn body(&self) -> String {
        format!(
            r#"{{"type":"{}","timestamp":{},"data":{}}}"#,
            self.kind, self.timestamp, self.data
        )
    }
}

/// Up to about `limit` events of `room_id` after `after`, in order: its messages and
/// its other changes merged by position. Where one of the two reads was cut at `limit`,
/// the merge stops at its last position, so nothing later is returned ahead of an
/// event not yet read.
pub async fn events_after(
    db: &impl GenericClient,
    room_id: Uuid,
    after: Position,
    limit: i64,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
          WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    );
    let messages = db
        .query_cached(&sql, &[&room_id, &after.seq, &limit])
        .await?;
    let changes = db
        .query_cached(
            "SELECT after_seq, n, id, type, data, created_at FROM room_events
              WHERE room_id = $1 AND (after_seq, n) > ($2, $3)
              ORDER BY after_seq, n LIMIT $4",
            &[&room_id, &after.seq, &after.n, &limit],
        )
        .await?;
    let mut events: Vec<HistoryEvent> = messages
        .iter()
        .map(|row| {
            let message = message_from_row(row);
            HistoryEvent {
                position: Position {
                    seq: message.seq,
                    n: 0,
                },
                id: format!("msg_{}", message.id.simple()),
                kind: "message.created".into(),
                timestamp: message.created_at,
                data: json!({ "message": message }).to_string(),
            }
        })
        .collect();
    let message_cut = (messages.len() as i64 == limit).then(|| events.last().map(|e| e.position));
    events.extend(changes.iter().map(|row| HistoryEvent {
        position: Position {
            seq: row.get("after_seq"),
            n: row.get("n"),
        },
        id: format!("evt_{}", row.get::<_, Uuid>("id").simple()),
        kind: row.get("type"),
        timestamp: row.get("created_at"),
        data: row.get("data"),
    }));
    let change_cut = (changes.len() as i64 == limit).then(|| {
        let last = changes.last().expect("limit > 0 rows");
        Position {
            seq: last.get("after_seq"),
            n: last.get("n"),
        }
    });
    events.sort_by_key(|event| event.position);
    let cut = [message_cut.flatten(), change_cut]
        .into_iter()
        .flatten()
        .min();
    if let Some(cut) = cut {
        events.retain(|event| event.position <= cut);
    }
    Ok(events)
}
