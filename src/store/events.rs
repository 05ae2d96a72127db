//! Room changes: each decided once ([`RoomChange`]), and their durable record, which
//! webhooks deliver (SPEC §11).
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
use crate::model::{AccessLost, Message, Room};

/// A position in a room's history: `(seq, 0)` is message `seq`; `(seq, n)` the n-th
/// other change after it. Ordered as a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Position {
    pub seq: i64,
    pub n: i32,
}

/// A change to a room, decided once. The store makes it and, in the same transaction,
/// records it ([`record`]; a message is recorded by the `messages` table itself) and
/// returns it ([`Recorded`]); `Chat::emit` publishes what it returned. Everything a
/// change causes derives from this value: its webhook event here
/// ([`RoomChange::kind`], [`RoomChange::data`]), and what the room's live subscribers
/// get over NATS in `bus::event` (`RoomEvent::of`, which `store` cannot import: the
/// bus reaches the store through the relay). Adding an action is a variant here, its
/// store SQL and a `Chat` method; the exhaustive matches here and in `RoomEvent::of`
/// do not compile until its events are decided, and `bus::event`'s table test pins
/// each variant to one webhook type and one live event. Live-only events (typing, read
/// watermarks, presence) have no durable record and are not changes.
#[derive(Debug, Clone)]
pub enum RoomChange {
    /// A message the group commit stored, at position `(seq, 0)`. Never passed to
    /// [`record`]: the `messages` row is its record, read back by [`events_after`].
    MessageCreated(Message),
    MessageEdited(Message),
    /// The tombstone.
    MessageDeleted(Message),
    ReactionAdded(Reacted),
    ReactionRemoved(Reacted),
    MemberJoined(Membership),
    /// A member left or was removed. `lost` says why when that ended their access (the
    /// room is not public), which ends their live subscriptions to it on every node.
    MemberLeft {
        member: Membership,
        lost: Option<AccessLost>,
    },
    RoomCreated(Room),
    RoomDeleted(Room),
}

/// Whose reaction changed on which message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reacted {
    pub room_id: Uuid,
    pub message_id: Uuid,
    pub emoji: String,
    pub user_id: Uuid,
}

/// A user's membership of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub room_id: Uuid,
    pub user_id: Uuid,
}

impl RoomChange {
    /// The room changed.
    pub fn room_id(&self) -> Uuid {
        match self {
            RoomChange::MessageCreated(message)
            | RoomChange::MessageEdited(message)
            | RoomChange::MessageDeleted(message) => message.room_id,
            RoomChange::ReactionAdded(reacted) | RoomChange::ReactionRemoved(reacted) => {
                reacted.room_id
            }
            RoomChange::MemberJoined(member) | RoomChange::MemberLeft { member, .. } => {
                member.room_id
            }
            RoomChange::RoomCreated(room) | RoomChange::RoomDeleted(room) => room.id,
        }
    }

    /// The webhook event type (SPEC §11): one of `webhooks::EVENT_TYPES`, one per
    /// variant.
    pub fn kind(&self) -> &'static str {
        match self {
            RoomChange::MessageCreated(_) => "message.created",
            RoomChange::MessageEdited(_) => "message.edited",
            RoomChange::MessageDeleted(_) => "message.deleted",
            RoomChange::ReactionAdded(_) => "reaction.added",
            RoomChange::ReactionRemoved(_) => "reaction.removed",
            RoomChange::MemberJoined(_) => "member.joined",
            RoomChange::MemberLeft { .. } => "member.left",
            RoomChange::RoomCreated(_) => "room.created",
            RoomChange::RoomDeleted(_) => "room.deleted",
        }
    }

    /// The webhook event's `data` object.
    pub fn data(&self) -> serde_json::Value {
        match self {
            RoomChange::MessageCreated(message)
            | RoomChange::MessageEdited(message)
            | RoomChange::MessageDeleted(message) => json!({ "message": message }),
            RoomChange::ReactionAdded(reacted) | RoomChange::ReactionRemoved(reacted) => json!({
                "room_id": reacted.room_id, "message_id": reacted.message_id,
                "emoji": reacted.emoji, "user_id": reacted.user_id,
            }),
            RoomChange::MemberJoined(member) | RoomChange::MemberLeft { member, .. } => {
                json!({ "room_id": member.room_id, "user_id": member.user_id })
            }
            RoomChange::RoomCreated(room) | RoomChange::RoomDeleted(room) => {
                json!({ "room": room })
            }
        }
    }
}

/// What a store mutation returns: its answer, and the change it recorded in its
/// transaction (none if it changed nothing), for the caller to emit (`Chat::emit`).
#[must_use = "a recorded change is published by `Chat::emit`"]
#[derive(Debug)]
pub struct Recorded<T> {
    pub value: T,
    pub change: Option<RoomChange>,
}

impl<T> Recorded<T> {
    pub(super) fn new(value: T, change: impl Into<Option<RoomChange>>) -> Self {
        Self {
            value,
            change: change.into(),
        }
    }

    /// The answer of a mutation that changed nothing.
    pub(super) fn unchanged(value: T) -> Self {
        Self::new(value, None)
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

/// Records `change` at its room's next position, in the caller's transaction, and
/// hands it back for the mutation to return. Not for a new message (see
/// [`RoomChange::MessageCreated`]).
pub(super) async fn record(
    db: &impl GenericClient,
    change: RoomChange,
) -> Result<RoomChange, StoreError> {
    debug_assert!(
        !matches!(change, RoomChange::MessageCreated(_)),
        "a message is recorded by its `messages` row"
    );
    db.execute_cached(
        "SELECT record_room_event($1, $2, $3)",
        &[
            &change.room_id(),
            &change.kind(),
            &change.data().to_string(),
        ],
    )
    .await?;
    Ok(change)
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
            let (seq, id, timestamp) = (message.seq, message.id, message.created_at);
            let created = RoomChange::MessageCreated(message);
            HistoryEvent {
                position: Position { seq, n: 0 },
                id: format!("msg_{}", id.simple()),
                kind: created.kind().into(),
                timestamp,
                data: created.data().to_string(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ROOM: Uuid = Uuid::from_u128(1);
    const USER: Uuid = Uuid::from_u128(2);
    const MESSAGE: Uuid = Uuid::from_u128(3);

    #[test]
    fn webhook_data_carries_the_change_and_nothing_live_only() {
        let reacted = Reacted {
            room_id: ROOM,
            message_id: MESSAGE,
            emoji: "🎉".into(),
            user_id: USER,
        };
        let data = json!({"room_id": ROOM, "message_id": MESSAGE, "emoji": "🎉", "user_id": USER});
        assert_eq!(RoomChange::ReactionAdded(reacted.clone()).data(), data);
        assert_eq!(RoomChange::ReactionRemoved(reacted).data(), data);

        let member = Membership {
            room_id: ROOM,
            user_id: USER,
        };
        let left = RoomChange::MemberLeft {
            member,
            lost: Some(AccessLost::Left),
        };
        let membership = json!({"room_id": ROOM, "user_id": USER});
        assert_eq!(left.data(), membership);
        assert_eq!(RoomChange::MemberJoined(member).data(), membership);

        let message = Message::for_test(ROOM, 4, USER);
        let created = RoomChange::MessageCreated(message.clone());
        assert_eq!(created.data(), json!({ "message": message }));
        assert_eq!(created.room_id(), ROOM);
    }
}
