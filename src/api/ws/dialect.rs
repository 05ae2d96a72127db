//! The seeds' WebSocket frame shapes (SPEC §12), translated at the socket's edge: a
//! drop-in socket runs the same session as `/v1/ws/rooms/{room_id}` (same use cases,
//! guarantees and limits), and only its frames are reworded, both ways.
//!
//! - [`Dialect::SeedRoom`] (`/ws/rooms/{room_id}`, the FastAPI + Firebase seed): new
//!   messages as `{type: "message", message_id, sender_id, text, created_at}`, `typing`
//!   as `{type, user_id, value}`, `typing_ack` and `read_ack` without the room. Clients
//!   send `typing` and `read_upto {created_at_ms}` as to a single-room socket already;
//!   `read_ack`'s `upto` is the `created_at_ms` they sent, as seed 000 answers (its
//!   clients compare it with their messages' times), not a `seq`.
//! - [`Dialect::SeedDirect`] (`/ws/{receiver_id}`, the FastAPI + Supabase seed): the
//!   direct room with one user; `{type: "chat", message}` sends, and every message of
//!   the room arrives as `{type: "chat", message_id, sender_id, receiver_id, message,
//!   created_at}`.
//!
//! Frames a seed client never had (presence, receipts, edits, `subscribed`, acks of
//! sends) are not sent to it; errors and `pong` are sent as they are.

use std::borrow::Cow;

use serde_json::{Value, json};
use uuid::Uuid;

/// Which frame shapes a socket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SPEC §4's frames, unchanged.
    Natter,
    SeedRoom,
    /// `me` and `other` are the direct room's two users.
    SeedDirect {
        me: Uuid,
        other: Uuid,
    },
}

impl Dialect {
    /// A client's frame in Natter's shape.
    pub fn inbound<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let Dialect::SeedDirect { .. } = self else {
            return Cow::Borrowed(text);
        };
        match serde_json::from_str::<Value>(text) {
            Ok(frame) if frame["type"] == "chat" => {
                let text = frame.get("message").cloned().unwrap_or(Value::Null);
                Cow::Owned(json!({"type": "send", "text": text}).to_string())
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// The acknowledgement of a `read_upto` (`ack`, SPEC §4's `read_ack`) as the session
    /// queues it: for [`Dialect::SeedRoom`] it also carries the `created_at_ms` the
    /// client sent, which [`Dialect::outbound`] answers as `upto` (SPEC §12).
    pub fn read_ack(&self, ack: String, created_at_ms: Option<i64>) -> String {
        let (Dialect::SeedRoom, Some(at)) = (self, created_at_ms) else {
            return ack;
        };
        match serde_json::from_str::<Value>(&ack) {
            Ok(mut frame) => {
                frame["created_at_ms"] = json!(at);
                frame.to_string()
            }
            Err(_) => ack,
        }
    }

    /// A server frame in this dialect's shape, or `None` if its clients never get one.
    pub fn outbound(&self, text: String) -> Option<String> {
        if *self == Dialect::Natter {
            return Some(text);
        }
        let frame: Value = serde_json::from_str(&text).ok()?;
        let kind = frame["type"].as_str()?;
        if matches!(kind, "error" | "pong") {
            return Some(text);
        }
        let translated = match (self, kind) {
            (Dialect::SeedRoom, "message") => {
                let message = &frame["message"];
                json!({
                    "type": "message",
                    "message_id": message["id"],
                    "sender_id": message["sender_id"],
                    "text": message["text"],
                    "created_at": message["created_at"],
                })
            }
            (Dialect::SeedRoom, "typing") => {
                json!({"type": "typing", "user_id": frame["user_id"], "value": frame["value"]})
            }
            (Dialect::SeedRoom, "typing_ack") => {
                json!({"type": "typing_ack", "value": frame["value"]})
            }
            (Dialect::SeedRoom, "read_ack") => {
                let upto = frame.get("created_at_ms").unwrap_or(&frame["seq"]);
                json!({"type": "read_ack", "upto": upto})
            }
            (Dialect::SeedDirect { me, other }, "message") => {
                let message = &frame["message"];
                let receiver = match message["sender_id"] == json!(me) {
                    true => other,
                    false => me,
                };
                json!({
                    "type": "chat",
                    "message_id": message["id"],
                    "sender_id": message["sender_id"],
                    "receiver_id": receiver,
                    "message": message["text"],
                    "created_at": message["created_at"],
                })
            }
            _ => return None,
        };
        Some(translated.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender: Uuid) -> String {
        json!({"type": "message", "message": {
            "id": "0193a000-0000-7000-8000-000000000001", "room_id": "0193a000-0000-7000-8000-000000000002",
            "seq": 7, "sender_id": sender, "text": "hi", "created_at": 1_795_773_600_000_i64,
            "edited_at": null, "deleted": false, "client_msg_id": null, "reply_to": null, "reactions": []
        }})
        .to_string()
    }

    #[test]
    fn a_seed_room_socket_gets_flat_messages_and_typing_and_nothing_it_never_had() {
        let sender = Uuid::new_v4();
        let out: Value =
            serde_json::from_str(&Dialect::SeedRoom.outbound(message(sender)).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"type": "message", "message_id": "0193a000-0000-7000-8000-000000000001",
                   "sender_id": sender, "text": "hi", "created_at": 1_795_773_600_000_i64})
        );
        let typing =
            json!({"type": "typing", "room_id": Uuid::nil(), "user_id": sender, "value": false});
        let out: Value =
            serde_json::from_str(&Dialect::SeedRoom.outbound(typing.to_string()).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"type": "typing", "user_id": sender, "value": false})
        );
        let ack = json!({"type": "read_ack", "room_id": Uuid::nil(), "seq": 7}).to_string();
        assert_eq!(
            Dialect::SeedRoom.outbound(ack.clone()).unwrap(),
            r#"{"type":"read_ack","upto":7}"#
        );
        let sent_a_time = Dialect::SeedRoom.read_ack(ack.clone(), Some(1_795_773_600_000));
        assert_eq!(
            Dialect::SeedRoom.outbound(sent_a_time).unwrap(),
            r#"{"type":"read_ack","upto":1795773600000}"#
        );
        assert_eq!(Dialect::Natter.read_ack(ack.clone(), Some(1)), ack);
        let presence = json!({"type": "presence", "room_id": Uuid::nil(), "user_id": sender, "status": "joined"});
        assert_eq!(Dialect::SeedRoom.outbound(presence.to_string()), None);
        let error = r#"{"type":"error","code":"rate_limited","message":"slow down"}"#.to_string();
        assert_eq!(Dialect::SeedRoom.outbound(error.clone()), Some(error));
        assert_eq!(
            Dialect::SeedRoom.inbound(r#"{"type":"typing","value":true}"#),
            r#"{"type":"typing","value":true}"#
        );
    }

    #[test]
    fn a_seed_direct_socket_sends_and_receives_chat_frames_naming_the_receiver() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let dialect = Dialect::SeedDirect { me, other };
        let sent: Value =
            serde_json::from_str(&dialect.inbound(r#"{"type":"chat","message":"hello"}"#)).unwrap();
        assert_eq!(sent, json!({"type": "send", "text": "hello"}));
        for (sender, receiver) in [(me, other), (other, me)] {
            let out: Value =
                serde_json::from_str(&dialect.outbound(message(sender)).unwrap()).unwrap();
            assert_eq!(out["type"], "chat");
            assert_eq!(
                (out["sender_id"].clone(), out["receiver_id"].clone()),
                (json!(sender), json!(receiver))
            );
            assert_eq!(out["message"], "hi");
        }
        assert_eq!(
            dialect.outbound(r#"{"type":"pong"}"#.into()).unwrap(),
            r#"{"type":"pong"}"#
        );
        let ack = json!({"type": "send_ack", "client_msg_id": null, "message": {}}).to_string();
        assert_eq!(dialect.outbound(ack), None);
    }
}
