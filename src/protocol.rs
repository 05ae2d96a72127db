//! WebSocket frames (SPEC §4): what clients send ([`ClientFrame`]) and what the server
//! sends ([`ServerFrame`]). Frames are JSON text objects tagged by `type`.
//!
//! Room events are serialised into a [`ServerFrame`] once, by the node that publishes
//! them, and travel over NATS as those exact bytes, so a receiving node forwards them to
//! its sockets without decoding or re-encoding them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{AccessLost, Message};

/// A frame from a client. Fields that name a room are optional so that the single-room
/// socket (`/v1/ws/rooms/{room_id}`) can omit them. (Serialize is for the examples of
/// `/asyncapi.json`, which are parsed back through [`ClientFrame::parse`].)
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Subscribe {
        room_id: Option<Uuid>,
        since_seq: Option<i64>,
    },
    Unsubscribe {
        room_id: Option<Uuid>,
    },
    Send {
        room_id: Option<Uuid>,
        text: String,
        client_msg_id: Option<String>,
    },
    Typing {
        room_id: Option<Uuid>,
        value: bool,
    },
    ReadUpto {
        room_id: Option<Uuid>,
        seq: Option<i64>,
        /// The single-room form may name a time instead of a `seq`.
        created_at_ms: Option<i64>,
    },
    Ping,
}

/// Why a client frame could not be understood.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Not a JSON object.
    InvalidJson(String),
    /// A JSON object without a known `type`.
    UnknownType(String),
    /// A known `type` with missing or mistyped fields.
    InvalidFrame(String),
}

impl ClientFrame {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        const TYPES: [&str; 6] = [
            "subscribe",
            "unsubscribe",
            "send",
            "typing",
            "read_upto",
            "ping",
        ];
        // Most frames are well formed: read them in one pass. Only a frame that fails
        // goes through a JSON value, to tell bad JSON, an unknown type and bad fields
        // apart (a frame that reads directly reads the same through the value).
        if let Ok(frame) = serde_json::from_str(text) {
            return Ok(frame);
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
        let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
            return Err(FrameError::UnknownType(
                "a frame needs a string `type`".into(),
            ));
        };
        if !TYPES.contains(&kind) {
            return Err(FrameError::UnknownType(format!(
                "unknown frame type {kind:?}"
            )));
        }
        serde_json::from_value(value).map_err(|e| FrameError::InvalidFrame(e.to_string()))
    }

    /// The frame's `type`, echoed as `ref` in errors about it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::ReadUpto { .. } => "read_upto",
            ClientFrame::Ping => "ping",
        }
    }
}

/// Whether a user's presence in a room began or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, poem_openapi::Enum)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
pub enum PresenceStatus {
    Joined,
    Left,
}

/// A frame from the server.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Subscribed {
        room_id: Uuid,
        last_seq: i64,
    },
    /// `reason` is absent when the socket asked; `removed`, `left` or `room_deleted`
    /// when its user lost access (SPEC §10).
    Unsubscribed {
        room_id: Uuid,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<AccessLost>,
    },
    SendAck {
        client_msg_id: Option<&'a str>,
        message: &'a Message,
    },
    TypingAck {
        room_id: Uuid,
        value: bool,
    },
    ReadAck {
        room_id: Uuid,
        seq: i64,
    },
    Pong,
    Message {
        message: &'a Message,
    },
    MessageEdited {
        message: &'a Message,
    },
    MessageDeleted {
        room_id: Uuid,
        message_id: Uuid,
        seq: i64,
    },
    Reaction {
        room_id: Uuid,
        message_id: Uuid,
        emoji: &'a str,
        user_id: Uuid,
        added: bool,
    },
    Typing {
        room_id: Uuid,
        user_id: Uuid,
        value: bool,
    },
    Read {
        room_id: Uuid,
        user_id: Uuid,
        seq: i64,
    },
    Presence {
        room_id: Uuid,
        user_id: Uuid,
        status: PresenceStatus,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_by_type() {
        let room = Uuid::new_v4();
        let frame = ClientFrame::parse(&format!(
            r#"{{"type":"subscribe","room_id":"{room}","since_seq":5}}"#
        ))
        .unwrap();
        assert!(matches!(
            frame,
            ClientFrame::Subscribe { room_id: Some(r), since_seq: Some(5) } if r == room
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
    }

    #[test]
    fn bad_frames_are_told_apart() {
        assert!(matches!(
            ClientFrame::parse("{nope"),
            Err(FrameError::InvalidJson(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"dance"}"#),
            Err(FrameError::UnknownType(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"no_type":1}"#),
            Err(FrameError::UnknownType(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"send"}"#),
            Err(FrameError::InvalidFrame(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"typing","value":"yes"}"#),
            Err(FrameError::InvalidFrame(_))
        ));
    }

    #[test]
    fn server_frames_are_tagged_and_omit_an_absent_ref() {
        let json = ServerFrame::Error {
            code: "invalid_json",
            message: "bad",
            reference: None,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"error","code":"invalid_json","message":"bad"}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
