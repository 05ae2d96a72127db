//! The resources Natter returns: what a client sees of users, rooms and messages.
//!
//! The store builds these from rows; REST (through poem-openapi) and WebSocket frames
//! (through serde) serialise them unchanged, so each shape is defined once. Ids are UUIDs; times are integer milliseconds since the epoch.

use poem_openapi::{Enum, Object};
use serde::Serialize;
use uuid::Uuid;

/// A user as others see them.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(example)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    /// Whether the user is a bot (SPEC §11): an account its owner created, which signs
    /// in with an API key.
    pub bot: bool,
    /// Whether the user has a live connection anywhere in the cluster.
    pub online: bool,
}

/// Who may see and join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    /// Anyone may read it and join it.
    Public,
    /// Only members see it; the owner adds members.
    Private,
    /// The room of exactly two users, made by `POST /v1/dms`.
    Direct,
}

/// How much of a room's traffic notifies a member who is away (SPEC §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum NotificationLevel {
    /// Every message.
    All,
    /// Messages that mention the member.
    Mentions,
    /// Nothing.
    None,
}

impl NotificationLevel {
    /// The level of a member who never chose one: direct rooms are conversations with
    /// one person, where every message is meant for them; elsewhere only mentions are.
    pub fn default_for(kind: RoomKind) -> Self {
        match kind {
            RoomKind::Direct => NotificationLevel::All,
            RoomKind::Public | RoomKind::Private => NotificationLevel::Mentions,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationLevel::All => "all",
            NotificationLevel::Mentions => "mentions",
            NotificationLevel::None => "none",
        }
    }

    /// The stored form back (`None` for a value the schema's CHECK would refuse).
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "all" => Some(NotificationLevel::All),
            "mentions" => Some(NotificationLevel::Mentions),
            "none" => Some(NotificationLevel::None),
            _ => None,
        }
    }
}

/// A member's notification settings for one room (SPEC §14): their `level`, or the room
/// kind's default (`all` in direct rooms, `mentions` elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Object)]
#[oai(example)]
pub struct NotificationSettings {
    // No doc comment: it would wrap the enum's reference in an `allOf`, which generated
    // clients (openapi-python-client) cannot read.
    pub level: NotificationLevel,
    /// Milliseconds since the epoch: nothing notifies before then, whatever the level.
    /// Absent or null: not muted.
    #[oai(nullable, skip_serializing_if_is_none)]
    pub muted_until: Option<i64>,
}

/// Why a user's subscriptions to a room ended without their asking (SPEC §10): the
/// `reason` of the `unsubscribed` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize)]
#[oai(rename = "UnsubscribeReason", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AccessLost {
    /// The owner removed them.
    Removed,
    /// They left.
    Left,
    /// The owner deleted the room.
    RoomDeleted,
}

impl AccessLost {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLost::Removed => "removed",
            AccessLost::Left => "left",
            AccessLost::RoomDeleted => "room_deleted",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "removed" => AccessLost::Removed,
            "left" => AccessLost::Left,
            "room_deleted" => AccessLost::RoomDeleted,
            _ => return None,
        })
    }
}

/// Why a socket ends, as decided by whoever ends it: the client's connection
/// (`chat::live`), the relay (a reader too slow for its room) or the node (a drain).
/// The WebSocket API turns each into a close code and reason in one table
/// (`api::close`), as `api::error` turns errors into statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The session ended normally (the client left, or the node closed it after the
    /// client's own close).
    Normal,
    /// The client sent nothing, not even a pong, for the idle limit.
    Idle,
    /// The client sent a frame over the frame limit (SPEC §5).
    FrameTooLarge,
    /// A write to the client failed or stalled.
    WriteFailed,
    /// The node is draining (SPEC §1.7): reconnect elsewhere and resume.
    Restart,
    /// History needed for a resume could not be read: resume again later.
    HistoryUnavailable,
    /// The token the socket was opened with expired (SPEC §2).
    TokenExpired,
    /// The bot key the socket was opened with was replaced or deleted (SPEC §11).
    KeyRevoked,
    /// The socket's outbound queue was full: the client reads too slowly for its rooms
    /// and resumes with `since_seq` (SPEC §5).
    TooSlow,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Direct => "direct",
        }
    }

    pub fn from_db(raw: &str) -> Self {
        match raw {
            "public" => RoomKind::Public,
            "private" => RoomKind::Private,
            _ => RoomKind::Direct,
        }
    }
}

/// A room.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(example)]
pub struct Room {
    pub id: Uuid,
    /// For a direct room, the other participant's display name.
    pub name: String,
    pub kind: RoomKind,
    pub owner_id: Uuid,
    pub created_at: i64,
    /// The `seq` of the room's latest message; 0 when it has none.
    pub last_seq: i64,
    pub member_count: i32,
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    pub fn from_db(raw: &str) -> Self {
        if raw == "owner" {
            Role::Owner
        } else {
            Role::Member
        }
    }
}

/// A room member.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct Member {
    pub user_id: Uuid,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub online: bool,
    pub joined_at: i64,
    /// The highest `seq` this member has marked read.
    pub last_read_seq: i64,
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(example)]
pub struct Reaction {
    pub emoji: String,
    pub count: i64,
    /// Whether the caller is among those who reacted.
    pub me: bool,
}

/// A chat message. A deleted message stays as a tombstone: `deleted` is true, `text` is
/// empty and `seq` is kept, so the sequence has no holes.
#[derive(Debug, Clone, Object, Serialize)]
#[oai(example)]
pub struct Message {
    pub id: Uuid,
    pub room_id: Uuid,
    /// Position in the room: 1, 2, 3, … with no gaps.
    pub seq: i64,
    pub sender_id: Uuid,
    pub text: String,
    pub created_at: i64,
    /// When the text was last edited; null if never.
    #[oai(nullable)]
    pub edited_at: Option<i64>,
    pub deleted: bool,
    /// The sender's idempotency key, if the send had one.
    #[oai(nullable)]
    pub client_msg_id: Option<String>,
    /// The message this one answers, if any.
    #[oai(nullable)]
    pub reply_to: Option<Uuid>,
    pub reactions: Vec<Reaction>,
}

#[cfg(test)]
impl Message {
    /// A plain message (`"hi"`, no key, reply or reactions) for unit tests.
    pub(crate) fn for_test(room_id: Uuid, seq: i64, sender_id: Uuid) -> Self {
        Message {
            id: Uuid::from_u128(seq as u128),
            room_id,
            seq,
            sender_id,
            text: "hi".into(),
            created_at: 0,
            edited_at: None,
            deleted: false,
            client_msg_id: None,
            reply_to: None,
            reactions: Vec::new(),
        }
    }
}

/// A room in the caller's chat list.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct MyRoom {
    #[oai(flatten)]
    pub room: Room,
    /// Messages from others after `last_read_seq` that are not deleted.
    pub unread_count: i64,
    pub last_read_seq: i64,
    /// Absent while the room has no messages.
    #[oai(skip_serializing_if_is_none)]
    pub last_message: Option<Message>,
    /// When the room last had a message (or was created), for ordering the list.
    pub last_activity_at: i64,
    /// What notifies the caller of this room while they are away.
    pub notifications: NotificationSettings,
}
