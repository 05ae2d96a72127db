//! The room event codec: what a NATS message on a room subject carries.
//!
//! The payload is the exact [`ServerFrame`] JSON that sockets receive, serialised once by
//! the publishing node. What a receiving node needs in order to route it (kind, `seq`,
//! the user it is about) travels in headers, so routing never parses the payload.

use std::sync::Arc;

use uuid::Uuid;

use crate::{
    model::{AccessLost, Message},
    protocol::{PresenceStatus, ServerFrame},
    store::events::RoomChange,
};

const KIND: &str = "Natter-Kind";
const SEQ: &str = "Natter-Seq";
const USER: &str = "Natter-User";
const TYPING: &str = "Natter-Typing";
const CREATED: &str = "Natter-Created";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Message,
    MessageEdited,
    MessageDeleted,
    Reaction,
    Typing,
    Read,
    Presence,
    /// Not for sockets: a user lost access to a private room (or the room is gone), so
    /// every node ends the affected live subscriptions to it.
    Revoke,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::MessageEdited => "message_edited",
            EventKind::MessageDeleted => "message_deleted",
            EventKind::Reaction => "reaction",
            EventKind::Typing => "typing",
            EventKind::Read => "read",
            EventKind::Presence => "presence",
            EventKind::Revoke => "revoke",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "message" => EventKind::Message,
            "message_edited" => EventKind::MessageEdited,
            "message_deleted" => EventKind::MessageDeleted,
            "reaction" => EventKind::Reaction,
            "typing" => EventKind::Typing,
            "read" => EventKind::Read,
            "presence" => EventKind::Presence,
            "revoke" => EventKind::Revoke,
            _ => return None,
        })
    }
}

/// One event of one room, ready to forward to sockets.
///
/// Aligned to a cache line so that, inside the `Arc` every subscribed socket's queue
/// holds, the event does not share a line with the reference counts: the relay bumps
/// those once per socket while writers on the other cores read the event, and sharing
/// the line made every writer's first read a cross-core miss (5 % of a node's fan-out).
#[derive(Debug, Clone)]
#[repr(align(64))]
pub struct RoomEvent {
    pub room_id: Uuid,
    pub kind: EventKind,
    /// For messages: the `seq` the relay orders, deduplicates and repairs by.
    pub seq: Option<i64>,
    /// The user the event is about, for typing, read and revoke.
    pub user_id: Option<Uuid>,
    /// For typing: started (`true`) or stopped.
    pub typing: Option<bool>,
    /// For messages: `created_at` (ms), from which `/metrics` measures fan-out latency.
    pub created_at: Option<i64>,
    /// The trace of the publish that brought the event, for the fan-out's span.
    pub traceparent: Option<Arc<str>>,
    /// The server frame, as JSON text: checked to be UTF-8 once per node, when it is
    /// made or received, so that each socket only copies it.
    pub payload: Arc<str>,
}

impl RoomEvent {
    /// What a stored change tells the room's live subscribers, if anything: a frame for
    /// sockets, or a revocation that ends the subscriptions of those who lost the room.
    /// The live half of a change's events; its webhook half is `RoomChange::kind` and
    /// `RoomChange::data`, decided from the same value.
    pub fn of(change: &RoomChange) -> Option<Self> {
        Some(match change {
            RoomChange::MessageCreated(message) => Self::message(message),
            RoomChange::MessageEdited(message) => Self::message_edited(message),
            RoomChange::MessageDeleted(message) => Self::message_deleted(message),
            RoomChange::ReactionAdded(r) => {
                Self::reaction(r.room_id, r.message_id, &r.emoji, r.user_id, true)
            }
            RoomChange::ReactionRemoved(r) => {
                Self::reaction(r.room_id, r.message_id, &r.emoji, r.user_id, false)
            }
            RoomChange::MemberJoined(_) | RoomChange::RoomCreated(_) => return None,
            RoomChange::MemberLeft { member, lost } => {
                Self::revoke(member.room_id, Some(member.user_id), (*lost)?)
            }
            RoomChange::RoomDeleted(room) => Self::revoke(room.id, None, AccessLost::RoomDeleted),
        })
    }

    fn new(room_id: Uuid, kind: EventKind, frame: &ServerFrame<'_>) -> Self {
        Self {
            room_id,
            kind,
            seq: None,
            user_id: None,
            typing: None,
            created_at: None,
            traceparent: None,
            payload: Arc::from(frame.to_json()),
        }
    }

    pub fn message(message: &Message) -> Self {
        Self {
            seq: Some(message.seq),
            created_at: Some(message.created_at),
            ..Self::new(
                message.room_id,
                EventKind::Message,
                &ServerFrame::Message { message },
            )
        }
    }

    pub fn message_edited(message: &Message) -> Self {
        Self::new(
            message.room_id,
            EventKind::MessageEdited,
            &ServerFrame::MessageEdited { message },
        )
    }

    pub fn message_deleted(message: &Message) -> Self {
        Self::new(
            message.room_id,
            EventKind::MessageDeleted,
            &ServerFrame::MessageDeleted {
                room_id: message.room_id,
                message_id: message.id,
                seq: message.seq,
            },
        )
    }

    pub fn reaction(
        room_id: Uuid,
        message_id: Uuid,
        emoji: &str,
        user_id: Uuid,
        added: bool,
    ) -> Self {
        Self::new(
            room_id,
            EventKind::Reaction,
            &ServerFrame::Reaction {
                room_id,
                message_id,
                emoji,
                user_id,
                added,
            },
        )
    }

    pub fn typing(room_id: Uuid, user_id: Uuid, value: bool) -> Self {
        Self {
            user_id: Some(user_id),
            typing: Some(value),
            ..Self::new(
                room_id,
                EventKind::Typing,
                &ServerFrame::Typing {
                    room_id,
                    user_id,
                    value,
                },
            )
        }
    }

    pub fn read(room_id: Uuid, user_id: Uuid, seq: i64) -> Self {
        Self {
            user_id: Some(user_id),
            ..Self::new(
                room_id,
                EventKind::Read,
                &ServerFrame::Read {
                    room_id,
                    user_id,
                    seq,
                },
            )
        }
    }

    pub fn presence(room_id: Uuid, user_id: Uuid, status: PresenceStatus) -> Self {
        Self::new(
            room_id,
            EventKind::Presence,
            &ServerFrame::Presence {
                room_id,
                user_id,
                status,
            },
        )
    }

    /// Ends `user_id`'s live subscriptions to a room on every node; everyone's with
    /// `None` (the room was deleted). The payload is the reason.
    pub fn revoke(room_id: Uuid, user_id: Option<Uuid>, reason: AccessLost) -> Self {
        Self {
            room_id,
            kind: EventKind::Revoke,
            seq: None,
            user_id,
            typing: None,
            created_at: None,
            traceparent: None,
            payload: Arc::from(reason.as_str()),
        }
    }

    pub(super) fn headers(&self) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(KIND, self.kind.as_str());
        if let Some(seq) = self.seq {
            headers.insert(SEQ, seq.to_string().as_str());
        }
        if let Some(user) = self.user_id {
            headers.insert(USER, user.to_string().as_str());
        }
        if let Some(value) = self.typing {
            headers.insert(TYPING, if value { "1" } else { "0" });
        }
        if let Some(created_at) = self.created_at {
            headers.insert(CREATED, created_at.to_string().as_str());
        }
        headers
    }

    /// Decodes a NATS message of `room_id`'s subject; `None` for anything malformed
    /// (which no Natter node sends).
    pub fn decode(room_id: Uuid, message: async_nats::Message) -> Option<Self> {
        let headers = message.headers.as_ref()?;
        let kind = EventKind::parse(headers.get(KIND)?.as_str())?;
        let traceparent = headers
            .get("traceparent")
            .map(|v| Arc::<str>::from(v.as_str()));
        if let Some(traceparent) = &traceparent {
            tracing::debug!(%room_id, kind = kind.as_str(), %traceparent, "event received");
        }
        let seq = match headers.get(SEQ) {
            Some(v) => Some(v.as_str().parse().ok()?),
            None => None,
        };
        if kind == EventKind::Message && seq.is_none() {
            return None;
        }
        let user_id = match headers.get(USER) {
            Some(v) => Some(v.as_str().parse().ok()?),
            None => None,
        };
        let typing = headers.get(TYPING).map(|v| v.as_str() == "1");
        let created_at = headers.get(CREATED).and_then(|v| v.as_str().parse().ok());
        let payload = Arc::from(std::str::from_utf8(&message.payload).ok()?);
        Some(Self {
            room_id,
            kind,
            seq,
            user_id,
            typing,
            created_at,
            traceparent,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        model::{Room, RoomKind},
        store::events::{Membership, Reacted},
        webhooks::EVENT_TYPES,
    };

    const ROOM: Uuid = Uuid::from_u128(1);
    const USER: Uuid = Uuid::from_u128(2);
    const MESSAGE: Uuid = Uuid::from_u128(3);
    const MEMBER: Membership = Membership {
        room_id: ROOM,
        user_id: USER,
    };

    fn reacted() -> Reacted {
        Reacted {
            room_id: ROOM,
            message_id: MESSAGE,
            emoji: "🎉".into(),
            user_id: USER,
        }
    }

    fn room() -> Room {
        Room {
            id: ROOM,
            name: "general".into(),
            kind: RoomKind::Private,
            owner_id: USER,
            created_at: 7,
            last_seq: 0,
            member_count: 1,
        }
    }

    /// One change of each variant, with the webhook type and the live event kind it must
    /// have: a change's events, decided in one table.
    fn every_change() -> Vec<(RoomChange, &'static str, Option<EventKind>)> {
        let message = Message::for_test(ROOM, 1, USER);
        let left = RoomChange::MemberLeft {
            member: MEMBER,
            lost: Some(AccessLost::Removed),
        };
        vec![
            (
                RoomChange::MessageCreated(message.clone()),
                "message.created",
                Some(EventKind::Message),
            ),
            (
                RoomChange::MessageEdited(message.clone()),
                "message.edited",
                Some(EventKind::MessageEdited),
            ),
            (
                RoomChange::MessageDeleted(message),
                "message.deleted",
                Some(EventKind::MessageDeleted),
            ),
            (
                RoomChange::ReactionAdded(reacted()),
                "reaction.added",
                Some(EventKind::Reaction),
            ),
            (
                RoomChange::ReactionRemoved(reacted()),
                "reaction.removed",
                Some(EventKind::Reaction),
            ),
            (RoomChange::MemberJoined(MEMBER), "member.joined", None),
            (left, "member.left", Some(EventKind::Revoke)),
            (RoomChange::RoomCreated(room()), "room.created", None),
            (
                RoomChange::RoomDeleted(room()),
                "room.deleted",
                Some(EventKind::Revoke),
            ),
        ]
    }

    /// The variant's index: a new variant does not compile here until it has one, and
    /// then fails `each_change_decides_its_webhook_type_and_live_event` until
    /// `every_change` says what it emits.
    fn variant(change: &RoomChange) -> usize {
        match change {
            RoomChange::MessageCreated(_) => 0,
            RoomChange::MessageEdited(_) => 1,
            RoomChange::MessageDeleted(_) => 2,
            RoomChange::ReactionAdded(_) => 3,
            RoomChange::ReactionRemoved(_) => 4,
            RoomChange::MemberJoined(_) => 5,
            RoomChange::MemberLeft { .. } => 6,
            RoomChange::RoomCreated(_) => 7,
            RoomChange::RoomDeleted(_) => 8,
        }
    }
    const VARIANTS: usize = 9;

    #[test]
    fn each_change_decides_its_webhook_type_and_live_event() {
        let changes = every_change();
        let mut variants: Vec<usize> = changes.iter().map(|(c, ..)| variant(c)).collect();
        variants.sort_unstable();
        assert_eq!(variants, (0..VARIANTS).collect::<Vec<_>>());
        for (change, kind, live) in &changes {
            assert_eq!(change.kind(), *kind, "{change:?}");
            let event = RoomEvent::of(change);
            assert_eq!(event.as_ref().map(|e| e.kind), *live, "{change:?}");
            assert_eq!(change.room_id(), ROOM, "{change:?}");
            if let Some(event) = event {
                assert_eq!(event.room_id, ROOM, "{change:?}");
            }
        }
    }

    #[test]
    fn each_webhook_type_is_one_change() {
        let mut kinds: Vec<&str> = every_change().iter().map(|(c, ..)| c.kind()).collect();
        let mut types = EVENT_TYPES.to_vec();
        kinds.sort_unstable();
        types.sort_unstable();
        assert_eq!(kinds, types);
    }

    #[test]
    fn a_member_leaving_a_public_room_revokes_nothing() {
        let left = RoomChange::MemberLeft {
            member: MEMBER,
            lost: None,
        };
        assert_eq!(left.kind(), "member.left");
        assert!(RoomEvent::of(&left).is_none());
    }

    #[test]
    fn those_who_lose_a_room_are_told_why() {
        for lost in [AccessLost::Left, AccessLost::Removed] {
            let left = RoomChange::MemberLeft {
                member: MEMBER,
                lost: Some(lost),
            };
            let event = RoomEvent::of(&left).expect("a revocation");
            assert_eq!(event.user_id, Some(USER));
            assert_eq!(&*event.payload, lost.as_str());
        }
        let event = RoomEvent::of(&RoomChange::RoomDeleted(room())).expect("a revocation");
        assert_eq!(event.user_id, None);
        assert_eq!(&*event.payload, AccessLost::RoomDeleted.as_str());
    }

    #[test]
    fn live_frames_carry_what_the_webhook_data_does() {
        let frame = |change: &RoomChange| -> Value {
            serde_json::from_str(&RoomEvent::of(change).unwrap().payload).unwrap()
        };
        let added = RoomChange::ReactionAdded(reacted());
        let mut expected = added.data();
        expected["type"] = json!("reaction");
        expected["added"] = json!(true);
        assert_eq!(frame(&added), expected);
        assert_eq!(
            frame(&RoomChange::ReactionRemoved(reacted()))["added"],
            false
        );

        let message = Message::for_test(ROOM, 4, USER);
        let created = RoomChange::MessageCreated(message);
        let event = RoomEvent::of(&created).unwrap();
        assert_eq!((event.seq, event.created_at), (Some(4), Some(0)));
        assert_eq!(frame(&created)["message"], created.data()["message"]);
        let edited = RoomChange::MessageEdited(Message::for_test(ROOM, 4, USER));
        assert_eq!(frame(&edited)["message"], edited.data()["message"]);
    }
}
