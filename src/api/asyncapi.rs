//! `GET /asyncapi.json` (SPEC §13): an AsyncAPI 3.0 document of the WebSocket API,
//! built once at start-up from the types that parse and write the frames, so it cannot
//! drift from them.
//!
//! One table per direction ([`client_frames`], [`server_frames`]) names every variant of
//! [`ClientFrame`] and [`ServerFrame`] with a summary and an example written as a value
//! of the variant itself: a variant the table misses, or a field it misses, does not
//! compile. Each field's schema is poem-openapi's schema of the field's Rust type (the
//! same machinery as `/openapi.json`, so `Message` is one schema in both documents),
//! turned into JSON Schema (draft 7, what AsyncAPI's schema format extends). Each
//! example is serialised by the real type (server frames through
//! [`ServerFrame::to_json`]); the unit tests parse every client example back through
//! [`ClientFrame::parse`] and check that each server example's keys are the fields the
//! table declares. The seeds' sockets (SPEC §12) are channels too: their examples are
//! what [`Dialect::outbound`] makes of the `/v1` examples, and a unit test checks that
//! each has exactly the fields its schema declares.

use poem_openapi::{
    registry::Registry,
    types::{Example, Type},
};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    rest::examples::{ALICE, BOB, GENERAL, MESSAGE, NOW_MS},
    ws::Dialect,
};
use crate::{
    model::{AccessLost, Message},
    protocol::{ClientFrame, PresenceStatus, ServerFrame},
};

/// How a field of a frame appears in its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appears {
    /// Always, never null.
    Always,
    /// Always; null when it has no value.
    Nullable,
    /// Only when it has a value.
    Omitted,
    /// A client may leave it out or send null.
    Optional,
}

#[derive(Debug)]
struct Field {
    name: &'static str,
    appears: Appears,
    /// The field's JSON Schema.
    schema: Value,
}

/// One frame of the table: what it is for, its fields and an example.
#[derive(Debug)]
struct Frame {
    summary: &'static str,
    fields: Vec<Field>,
    /// The example as the real type serialises it; its `type` is the frame's.
    example: Value,
}

impl Frame {
    fn kind(&self) -> &str {
        self.example["type"]
            .as_str()
            .expect("frames are tagged by `type`")
    }
}

/// Collects a frame's fields, registering the schemas they refer to.
struct Fields<'r> {
    registry: &'r mut Registry,
    fields: Vec<Field>,
}

impl Fields<'_> {
    fn add<T: Type>(&mut self, name: &'static str, appears: Appears, _value: &T) {
        assert_eq!(
            T::IS_REQUIRED,
            appears == Appears::Always,
            "`{name}`: only a field that is not an Option appears always"
        );
        T::register(self.registry);
        let schema = serde_json::to_value(T::schema_ref()).expect("schemas serialise");
        let nullable = matches!(appears, Appears::Nullable | Appears::Optional);
        self.fields.push(Field {
            name,
            appears,
            schema: json_schema(schema, nullable),
        });
    }
}

/// The JSON name of a field: its Rust name unless the table gives one (a serde rename).
macro_rules! json_name {
    ($json:literal, $field:expr) => {
        $json
    };
    ($field:expr) => {
        $field
    };
}

/// Builds the [`Frame`]s of one enum from a table of its variants. Each entry is
/// `Variant "summary" { field [as "json name"]: Appears = example value, … }`; the
/// example is built as that variant (so every field must be named) and destructured to
/// read each field's type, and a `match` over the entries fails to compile when the
/// enum gains a variant the table lacks.
macro_rules! frame_table {
    ($enum:ident, $registry:expr, $encode:expr; $(
        $variant:ident $summary:literal {
            $( $field:ident $(as $json:literal)? : $appears:ident = $value:expr ),* $(,)?
        }
    ),* $(,)?) => {{
        #[allow(dead_code)]
        fn every_variant_is_in_the_table(frame: &$enum) {
            match frame {
                $( $enum::$variant { .. } => {} )*
            }
        }
        let mut frames = Vec::new();
        $({
            let frame = $enum::$variant { $( $field: $value ),* };
            #[allow(unused_mut)]
            let mut fields = Fields { registry: &mut *$registry, fields: Vec::new() };
            let $enum::$variant { $( $field ),* } = &frame else { unreachable!() };
            $( fields.add(json_name!($($json,)? stringify!($field)), Appears::$appears, $field); )*
            frames.push(Frame { summary: $summary, fields: fields.fields, example: $encode(&frame) });
        })*
        frames
    }};
}

fn encode_client(frame: &ClientFrame) -> Value {
    let mut value = serde_json::to_value(frame).expect("client frames serialise");
    // An absent field and a null one read the same; the example shows it absent.
    if let Value::Object(fields) = &mut value {
        fields.retain(|_, v| !v.is_null());
    }
    value
}

fn encode_server(frame: &ServerFrame<'_>) -> Value {
    serde_json::from_str(&frame.to_json()).expect("server frames are JSON")
}

/// Every frame a client sends (SPEC §4).
fn client_frames(registry: &mut Registry) -> Vec<Frame> {
    frame_table! { ClientFrame, registry, encode_client;
        Subscribe "Start receiving a room's events. Answered by `subscribed`, then, if \
                   `since_seq` was given, every message with a greater `seq`, then live \
                   events. `room_id` may be left out on a single-room socket." {
            room_id: Optional = Some(GENERAL),
            since_seq: Optional = Some(41),
        },
        Unsubscribe "Stop receiving a room's events. Answered by `unsubscribed`." {
            room_id: Optional = Some(GENERAL),
        },
        Send "Post a message. Answered by `send_ack` with the stored message; everyone \
              subscribed (the sender too) gets the `message` event. A send retried with \
              the same `client_msg_id` is stored once." {
            room_id: Optional = Some(GENERAL),
            text: Always = "Lunch at noon?".into(),
            client_msg_id: Optional = Some("web-5f2a9c1e".into()),
        },
        Typing "Start or stop typing. Answered by `typing_ack`; the room's other \
                subscribers get a `typing` event." {
            room_id: Optional = Some(GENERAL),
            value: Always = true,
        },
        ReadUpto "Mark the room read up to `seq`. Answered by `read_ack`; others get a \
                  `read` event. On a single-room socket `created_at_ms` may stand for \
                  `seq`." {
            room_id: Optional = Some(GENERAL),
            seq: Optional = Some(42),
            created_at_ms: Optional = None,
        },
        Ping "Keep the socket alive. Answered by `pong`." {},
    }
}

/// Every frame the server sends (SPEC §4, §10), about the example `message`.
fn server_frames(registry: &mut Registry, message: &Message) -> Vec<Frame> {
    frame_table! { ServerFrame, registry, encode_server;
        Subscribed "The answer to `subscribe`: the room's latest `seq` when the \
                    subscription began." {
            room_id: Always = GENERAL,
            last_seq: Always = 42,
        },
        Unsubscribed "A subscription ended: as the socket asked (no `reason`), or because \
                      its user lost access to the room (`reason`, SPEC §10). Nothing of \
                      the room follows." {
            room_id: Always = GENERAL,
            reason: Omitted = Some(AccessLost::Removed),
        },
        SendAck "The answer to `send`: the stored message (the first one stored, for a \
                 retried `client_msg_id`)." {
            client_msg_id: Nullable = Some("web-5f2a9c1e"),
            message: Always = message,
        },
        TypingAck "The answer to `typing`." {
            room_id: Always = GENERAL,
            value: Always = true,
        },
        ReadAck "The answer to `read_upto`." {
            room_id: Always = GENERAL,
            seq: Always = 42,
        },
        Pong "The answer to `ping`." {},
        Message "A new message in a subscribed room (after `subscribed`, missed ones \
                 first when resuming with `since_seq`)." {
            message: Always = message,
        },
        MessageEdited "A message's text was edited." {
            message: Always = message,
        },
        MessageDeleted "A message was deleted: it stays as a tombstone with its `seq`." {
            room_id: Always = GENERAL,
            message_id: Always = MESSAGE,
            seq: Always = 42,
        },
        Reaction "A user added (`added: true`) or removed a reaction." {
            room_id: Always = GENERAL,
            message_id: Always = MESSAGE,
            emoji: Always = "👍",
            user_id: Always = BOB,
            added: Always = true,
        },
        Typing "Another user started or stopped typing (the typer gets `typing_ack`, \
                never this)." {
            room_id: Always = GENERAL,
            user_id: Always = BOB,
            value: Always = true,
        },
        Read "Another user marked the room read up to `seq`." {
            room_id: Always = GENERAL,
            user_id: Always = BOB,
            seq: Always = 42,
        },
        Presence "A user's first live subscription to the room began (`joined`, on any \
                  device or node) or their last one ended (`left`)." {
            room_id: Always = GENERAL,
            user_id: Always = ALICE,
            status: Always = PresenceStatus::Joined,
        },
        Error "A frame could not be read or done; the socket stays open. `code` is one \
               of `invalid_json`, `unknown_type`, `invalid_frame`, `invalid_input`, \
               `room_not_found`, `not_member`, `rate_limited`, `too_many_rooms`, \
               `unavailable`, `internal`; `ref` is the `client_msg_id` of a failed \
               `send` (or `send`), otherwise the type of the frame it answers." {
            code: Always = "rate_limited",
            message: Always = "Too many messages: slow down.",
            reference as "ref": Omitted = Some("send"),
        },
    }
}

/// The seeds' sockets (SPEC §12): a channel key, its address and path parameter, and
/// the dialect that rewords its frames.
fn seed_channels() -> [(
    &'static str,
    &'static str,
    &'static str,
    Dialect,
    &'static str,
); 2] {
    [
        (
            "seed_room",
            "/ws/rooms/{room_id}",
            "room_id",
            Dialect::SeedRoom,
            "The FastAPI + Firebase seed's room socket (SPEC §12, with `COMPAT_ROUTES`): the \
             single-room session in that seed's frame shapes. Only the frames listed as sent \
             reach it (no `subscribed`, acks of sends, presence, receipts or edits).",
        ),
        (
            "seed_direct",
            "/ws/{receiver_id}",
            "receiver_id",
            Dialect::SeedDirect {
                me: BOB,
                other: ALICE,
            },
            "The FastAPI + Supabase seed's one-to-one socket (SPEC §12, with \
             `COMPAT_ROUTES`): the direct room with `receiver_id`, made on first contact. \
             `chat` sends; every message of the room arrives as `chat`.",
        ),
    ]
}

/// The fields of the frames a seed's socket gets in a shape of its own (what
/// [`Dialect::outbound`] makes of a `/v1` frame), by channel and `type`. The unit tests
/// check that each frame the dialect makes of the examples has exactly these fields.
fn seed_fields(registry: &mut Registry, channel: &str, kind: &str) -> Option<Vec<Field>> {
    let mut f = Fields {
        registry,
        fields: Vec::new(),
    };
    let (id, text, time, yes) = (Uuid::nil(), String::new(), 0_i64, true);
    match (channel, kind) {
        ("seed_room", "message") => {
            f.add("message_id", Appears::Always, &id);
            f.add("sender_id", Appears::Always, &id);
            f.add("text", Appears::Always, &text);
            f.add("created_at", Appears::Always, &time);
        }
        ("seed_room", "typing") => {
            f.add("user_id", Appears::Always, &id);
            f.add("value", Appears::Always, &yes);
        }
        ("seed_room", "typing_ack") => f.add("value", Appears::Always, &yes),
        // The `created_at_ms` the client sent, or the `seq` if it sent one.
        ("seed_room", "read_ack") => f.add("upto", Appears::Always, &time),
        ("seed_direct", "chat") => {
            f.add("message_id", Appears::Always, &id);
            f.add("sender_id", Appears::Always, &id);
            f.add("receiver_id", Appears::Always, &id);
            f.add("message", Appears::Always, &text);
            f.add("created_at", Appears::Always, &time);
        }
        _ => return None,
    }
    Some(f.fields)
}

/// What a seed's socket receives of each `/v1` server frame: the frame unchanged
/// (`error`, `pong`: its `/v1` message), reworded (a frame of its own), or nothing.
enum SeedFrame {
    Same(String),
    Own(Frame),
}

fn seed_server_frames(
    registry: &mut Registry,
    channel: &'static str,
    dialect: Dialect,
    server: &[Frame],
) -> Vec<SeedFrame> {
    let mut frames = Vec::new();
    for frame in server {
        let mut text = frame.example.to_string();
        if frame.kind() == "read_ack" {
            // As the session queues a `read_upto {created_at_ms}`'s answer.
            text = dialect.read_ack(text, Some(NOW_MS));
        }
        let Some(out) = dialect.outbound(text) else {
            continue;
        };
        let example: Value = serde_json::from_str(&out).expect("dialects write JSON");
        if example == frame.example {
            frames.push(SeedFrame::Same(format!("server.{}", frame.kind())));
            continue;
        }
        let kind = example["type"].as_str().expect("tagged").to_owned();
        let fields = seed_fields(registry, channel, &kind)
            .unwrap_or_else(|| panic!("{channel}: no fields for its `{kind}` frame"));
        frames.push(SeedFrame::Own(Frame {
            summary: frame.summary,
            fields,
            example,
        }));
    }
    frames
}

/// The seed 004 client's own frame, which the dialect turns into a `send`.
fn seed_chat(registry: &mut Registry) -> Frame {
    let mut f = Fields {
        registry,
        fields: Vec::new(),
    };
    f.add("message", Appears::Always, &String::new());
    Frame {
        summary: "Send a message to the other user (a `send` of its text).",
        fields: f.fields,
        example: json!({"type": "chat", "message": "Lunch at noon?"}),
    }
}

/// poem-openapi's schema (OpenAPI 3.0) as JSON Schema draft 7: `nullable` becomes a
/// `null` type and `example` becomes `examples`.
fn json_schema(schema: Value, nullable: bool) -> Value {
    let Value::Object(mut schema) = schema else {
        return schema;
    };
    let nullable = nullable || schema.remove("nullable") == Some(Value::Bool(true));
    if let Some(example) = schema.remove("example") {
        schema.insert("examples".into(), json!([example]));
    }
    for (key, value) in schema.iter_mut() {
        *value = match (key.as_str(), value.take()) {
            ("properties", Value::Object(properties)) => Value::Object(
                properties
                    .into_iter()
                    .map(|(name, s)| (name, json_schema(s, false)))
                    .collect(),
            ),
            ("items" | "additionalProperties", s @ Value::Object(_)) => json_schema(s, false),
            ("allOf" | "anyOf" | "oneOf", Value::Array(list)) => {
                Value::Array(list.into_iter().map(|s| json_schema(s, false)).collect())
            }
            (_, other) => other,
        };
    }
    if !nullable {
        return Value::Object(schema);
    }
    match schema.get("type").cloned() {
        Some(Value::String(ty)) if !schema.contains_key("enum") => {
            schema.insert("type".into(), json!([ty, "null"]));
            Value::Object(schema)
        }
        _ => json!({"anyOf": [schema, {"type": "null"}]}),
    }
}

/// A frame's payload schema: an object tagged by its `type`. Server frames carry
/// nothing else; a client's unknown fields are ignored, so they are allowed.
fn payload(frame: &Frame, closed: bool) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "type".into(),
        json!({"type": "string", "const": frame.kind()}),
    );
    let mut required = vec![json!("type")];
    for field in &frame.fields {
        properties.insert(field.name.into(), field.schema.clone());
        if matches!(field.appears, Appears::Always | Appears::Nullable) {
            required.push(json!(field.name));
        }
    }
    let mut schema = json!({
        "type": "object",
        "required": required,
        "properties": properties,
    });
    if closed {
        schema["additionalProperties"] = json!(false);
    }
    schema
}

/// A component message: `{side}.{type}` (a client's `typing` and the server's differ).
fn message_object(side: &str, frame: &Frame, closed: bool) -> (String, Value) {
    let kind = frame.kind();
    (
        format!("{side}.{kind}"),
        json!({
            "name": kind,
            "title": format!("{kind} ({})", match side.starts_with("client") {
                true => "client → server",
                false => "server → client",
            }),
            "summary": frame.summary,
            "contentType": "application/json",
            "payload": payload(frame, closed),
            "examples": [{"name": kind, "payload": frame.example}],
        }),
    )
}

const ROOM_ID: &str = "room_id";

/// The document, as JSON.
pub fn document() -> Value {
    let mut registry = Registry::new();
    let message = Message::example();
    let client = client_frames(&mut registry);
    let server = server_frames(&mut registry, &message);

    let mut messages = Map::new();
    let mut client_refs = Vec::new();
    let mut server_refs = Vec::new();
    for (side, frames, refs, closed) in [
        ("client", &client, &mut client_refs, false),
        ("server", &server, &mut server_refs, true),
    ] {
        for frame in frames {
            let (key, object) = message_object(side, frame, closed);
            refs.push(key.clone());
            messages.insert(key, object);
        }
    }
    let channel_messages = |keys: &[&Vec<String>]| -> Value {
        keys.iter()
            .flat_map(|k| k.iter())
            .map(|key| {
                (
                    key.clone(),
                    json!({"$ref": format!("#/components/messages/{key}")}),
                )
            })
            .collect::<Map<_, _>>()
            .into()
    };
    let all = channel_messages(&[&client_refs, &server_refs]);
    let query = json!({
        "type": "object",
        "properties": {
            "ticket": {"type": "string", "description": "A single-use ticket from `POST /v1/ws/tickets`: what browsers should use."},
            "token": {"type": "string", "description": "The bearer token itself, for compatibility (it ends up in access logs); `Authorization: Bearer` works too."},
            "since_seq": {"type": "integer", "description": "Single-room form only: resume after this `seq`."},
        },
    });
    let bindings = json!({"ws": {"method": "GET", "query": query, "bindingVersion": "0.1.0"}});
    let mut channels = Map::new();
    channels.insert(
        "socket".into(),
        json!({
            "address": "/v1/ws",
            "title": "One socket, many rooms",
            "description": "Subscribes to rooms with `subscribe` frames; every frame that acts on a room names it with `room_id`.",
            "messages": all,
            "bindings": bindings,
        }),
    );
    channels.insert(
        "room".into(),
        json!({
            "address": format!("/v1/ws/rooms/{{{ROOM_ID}}}"),
            "title": "One room",
            "description": "The single-room form: subscribed to the room at once (from `since_seq` if given); frames without `room_id` act on it, and `read_upto` may give `created_at_ms` instead of `seq`. An unknown or hidden room is a 404 at the handshake.",
            "parameters": {ROOM_ID: {"description": "The room's id (a UUID)."}},
            "messages": all,
            "bindings": bindings,
        }),
    );
    let mut sent_on: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        ("socket", client_refs.clone(), server_refs.clone()),
        ("room", client_refs.clone(), server_refs.clone()),
    ];
    for (key, address, parameter, dialect, description) in seed_channels() {
        let mut receives = client_refs.clone();
        if matches!(dialect, Dialect::SeedDirect { .. }) {
            let (name, object) =
                message_object(&format!("client.{key}"), &seed_chat(&mut registry), false);
            receives.push(name.clone());
            messages.insert(name, object);
        }
        let mut sends = Vec::new();
        for frame in seed_server_frames(&mut registry, key, dialect, &server) {
            match frame {
                SeedFrame::Same(name) => sends.push(name),
                SeedFrame::Own(frame) => {
                    let (name, object) = message_object(&format!("server.{key}"), &frame, true);
                    sends.push(name.clone());
                    messages.insert(name, object);
                }
            }
        }
        channels.insert(
            key.into(),
            json!({
                "address": address,
                "title": format!("Drop-in: {address}"),
                "description": description,
                "parameters": {parameter: {"description": "A UUID."}},
                "messages": channel_messages(&[&receives, &sends]),
                "bindings": bindings,
            }),
        );
        sent_on.push((key, receives, sends));
    }
    let mut operations = Map::new();
    for (channel, receives, sends) in &sent_on {
        for (action, refs) in [("receive", receives), ("send", sends)] {
            operations.insert(
                format!("{channel}.{action}"),
                json!({
                    "action": action,
                    "channel": {"$ref": format!("#/channels/{channel}")},
                    "summary": if action == "receive" { "Frames a client sends." } else { "Frames the server sends." },
                    "messages": refs.iter().map(|key| json!({"$ref": format!("#/channels/{channel}/messages/{key}")})).collect::<Vec<_>>(),
                }),
            );
        }
    }
    let schemas: Map<String, Value> = registry
        .schemas
        .iter()
        .map(|(name, schema)| {
            let schema = serde_json::to_value(schema).expect("schemas serialise");
            (name.clone(), json_schema(schema, false))
        })
        .collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Natter WebSocket API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Natter's WebSocket frames (SPEC §4): JSON text objects tagged by `type`. \
                Open a socket with `?ticket=` (from `POST /v1/ws/tickets`), `Authorization: Bearer` \
                or `?token=`. Close codes: 1000 normal, 1001 idle, 1009 frame too large, 1011 write \
                failed, 1012 node restarting and 1013 history unavailable (reconnect and resume \
                with `since_seq`), 4001 token expired or bot key revoked (get a new credential), \
                4008 too slow (resume with `since_seq`). The REST API is described at `/openapi.json`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> (Vec<Frame>, Vec<Frame>) {
        let mut registry = Registry::new();
        let message = Message::example();
        (
            client_frames(&mut registry),
            server_frames(&mut registry, &message),
        )
    }

    #[test]
    fn every_client_example_is_a_frame_the_server_parses_back_to_itself() {
        let (client, _) = frames();
        assert_eq!(client.len(), 6);
        for frame in &client {
            let text = frame.example.to_string();
            let parsed = ClientFrame::parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(parsed.kind(), frame.kind());
            assert_eq!(encode_client(&parsed), frame.example);
        }
    }

    #[test]
    fn every_server_example_has_exactly_the_fields_its_schema_declares() {
        let (_, server) = frames();
        let mut kinds: Vec<&str> = server.iter().map(Frame::kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), server.len(), "one entry per `type`");
        for frame in &server {
            assert_example_has_exactly_the_declared_fields(frame, "");
        }
    }

    /// A frame's example carries `type` and the fields its schema declares, no more.
    fn assert_example_has_exactly_the_declared_fields(frame: &Frame, context: &str) {
        let mut declared: Vec<&str> = frame.fields.iter().map(|f| f.name).collect();
        declared.push("type");
        declared.sort();
        let mut written: Vec<&str> = frame
            .example
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        written.sort();
        assert_eq!(declared, written, "{context}{}", frame.kind());
    }

    #[test]
    fn the_seeds_frames_have_exactly_the_fields_their_schemas_declare() {
        let mut registry = Registry::new();
        let (_, server) = frames();
        for (key, _, _, dialect, _) in seed_channels() {
            let mut own = 0;
            for frame in seed_server_frames(&mut registry, key, dialect, &server) {
                let SeedFrame::Own(frame) = frame else {
                    continue;
                };
                own += 1;
                assert_example_has_exactly_the_declared_fields(&frame, &format!("{key} "));
            }
            assert_eq!(own, if key == "seed_room" { 4 } else { 1 }, "{key}");
        }
        // The seed chat's example is a `send` once the dialect has read it.
        let chat = seed_chat(&mut registry).example.to_string();
        let dialect = Dialect::SeedDirect {
            me: BOB,
            other: ALICE,
        };
        let parsed = ClientFrame::parse(&dialect.inbound(&chat)).unwrap();
        assert!(matches!(parsed, ClientFrame::Send { text, .. } if text == "Lunch at noon?"));
    }

    #[test]
    fn the_document_names_every_frame_and_refers_only_to_what_it_defines() {
        let doc = document();
        let messages = doc["components"]["messages"].as_object().unwrap();
        // /v1's frames, the seed room's four of its own, the seed chat's two.
        assert_eq!(messages.len(), 6 + 14 + 4 + 2);
        assert!(messages.contains_key("client.typing") && messages.contains_key("server.typing"));
        // The payload types poem-openapi registered, and the enums of the frames.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["Message", "Reaction", "PresenceStatus", "UnsubscribeReason"] {
            assert!(schemas.contains_key(name), "{name}");
        }
        assert_eq!(
            schemas["UnsubscribeReason"]["enum"],
            json!(["removed", "left", "room_deleted"])
        );
        let text = doc.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let pointer = &reference[1..reference.find('"').unwrap()];
            assert!(doc.pointer(pointer).is_some(), "dangling $ref #{pointer}");
        }
        assert!(
            !text.contains("nullable"),
            "OpenAPI's `nullable` is not JSON Schema"
        );
    }

    #[test]
    fn optional_fields_are_nullable_and_required_ones_are_required() {
        let doc = document();
        let send = &doc["components"]["messages"]["client.send"]["payload"];
        assert_eq!(send["required"], json!(["type", "text"]));
        assert_eq!(
            send["properties"]["client_msg_id"]["type"],
            json!(["string", "null"])
        );
        let ack = &doc["components"]["messages"]["server.send_ack"]["payload"];
        assert_eq!(ack["required"], json!(["type", "client_msg_id", "message"]));
        assert_eq!(ack["additionalProperties"], json!(false));
        let error = &doc["components"]["messages"]["server.error"]["payload"];
        assert_eq!(error["required"], json!(["type", "code", "message"]));
        assert!(error["properties"]["ref"].is_object());
        let message = &doc["components"]["schemas"]["Message"];
        assert_eq!(
            message["properties"]["edited_at"]["type"],
            json!(["integer", "null"])
        );
    }
}
