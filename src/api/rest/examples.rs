//! Examples for the OpenAPI document: one small, consistent conversation (Alice and Bob
//! in `#general`) that every schema's example is cut from, so Swagger UI and generated
//! clients show values that fit together. Request types keep their examples beside
//! their definitions and build them from the values here.

use poem_openapi::types::Example;
use uuid::Uuid;

use crate::model::{
    Member, Message, MyRoom, NotificationLevel, NotificationSettings, Reaction, Role, Room,
    RoomKind, User,
};

pub const ALICE: Uuid = Uuid::from_u128(0x0193_6f1c_2a40_7d3e_9b1a_4c8e_5f20_a001);
pub const BOB: Uuid = Uuid::from_u128(0x0193_6f1c_2a41_7a52_8c3d_1e9f_6b70_b002);
pub const GENERAL: Uuid = Uuid::from_u128(0x0193_6f1d_0c11_7f2a_a4b5_2d6e_7c80_c003);
pub const BOT: Uuid = Uuid::from_u128(0x0193_6f1c_2a42_7c11_9d2e_5a3b_7c81_b005);
pub const MESSAGE: Uuid = Uuid::from_u128(0x0193_6f1e_5d02_7b6c_9e7f_3a1b_8d90_d004);
/// 2026-11-26 10:00:00 UTC, in milliseconds since the epoch.
pub const NOW_MS: i64 = 1_795_773_600_000;

impl Example for User {
    fn example() -> Self {
        User {
            id: ALICE,
            username: "alice".into(),
            display_name: "Alice".into(),
            bot: false,
            online: true,
        }
    }
}

impl Example for Room {
    fn example() -> Self {
        Room {
            id: GENERAL,
            name: "general".into(),
            kind: RoomKind::Public,
            owner_id: ALICE,
            created_at: NOW_MS - 86_400_000,
            last_seq: 42,
            member_count: 2,
        }
    }
}

impl Example for Member {
    fn example() -> Self {
        Member {
            user_id: BOB,
            username: "bob".into(),
            display_name: "Bob".into(),
            role: Role::Member,
            online: false,
            joined_at: NOW_MS - 3_600_000,
            last_read_seq: 41,
        }
    }
}

impl Example for Reaction {
    fn example() -> Self {
        Reaction {
            emoji: "👍".into(),
            count: 1,
            me: false,
        }
    }
}

impl Example for Message {
    fn example() -> Self {
        Message {
            id: MESSAGE,
            room_id: GENERAL,
            seq: 42,
            sender_id: ALICE,
            text: "Lunch at noon?".into(),
            created_at: NOW_MS,
            edited_at: None,
            deleted: false,
            client_msg_id: Some("web-5f2a9c1e".into()),
            reply_to: None,
            reactions: vec![Reaction::example()],
        }
    }
}

impl Example for MyRoom {
    fn example() -> Self {
        MyRoom {
            room: Room::example(),
            unread_count: 1,
            last_read_seq: 41,
            last_message: Some(Message {
                sender_id: BOB,
                ..Message::example()
            }),
            last_activity_at: NOW_MS,
            notifications: NotificationSettings::example(),
        }
    }
}

impl Example for NotificationSettings {
    fn example() -> Self {
        NotificationSettings {
            level: NotificationLevel::Mentions,
            muted_until: None,
        }
    }
}
