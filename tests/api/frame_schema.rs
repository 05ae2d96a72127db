//! Every frame a test's socket receives is checked against `/asyncapi.json` (SPEC §13)
//! the moment it arrives: [`WsClient`](crate::helpers::WsClient) calls
//! [`assert_frame_matches_document`], which panics with the frame, the socket's path and
//! the schema error when the frame is not one of the messages the server `send`s on
//! that path's channel. So the whole suite, not one scenario, keeps the document honest.
//!
//! The document is the one the node serves: [`natter::api::asyncapi::document`], built
//! once per test process (`tests/api/asyncapi.rs` checks that a node serves exactly it).
//! The validator is JSON Schema draft 7 (what AsyncAPI's schema format extends) cut down
//! to the keywords the document uses. A keyword or `format` it does not know panics
//! rather than passing unchecked, so a document that grows one cannot go unvalidated;
//! `tests/api/asyncapi.rs` checks that it agrees with Python's `jsonschema`.

use std::{collections::BTreeMap, sync::LazyLock};

use serde_json::Value;

/// One channel of the document: its address, split at `/`, and by frame `type` the
/// JSON pointer to the payload schema of each message the server sends on it.
struct Channel {
    name: String,
    address: Vec<String>,
    sent: BTreeMap<String, String>,
}

impl Channel {
    /// Whether a socket opened on `path` (without its query) is this channel: equal
    /// segments, where an address's `{parameter}` stands for any one segment.
    fn serves(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        segments.len() == self.address.len()
            && self
                .address
                .iter()
                .zip(&segments)
                .all(|(pattern, segment)| {
                    pattern == segment
                        || (pattern.starts_with('{')
                            && pattern.ends_with('}')
                            && !segment.is_empty())
                })
    }
}

/// The document and, per channel, what the server sends on it.
pub struct FrameSchemas {
    document: Value,
    channels: Vec<Channel>,
}

/// The document every node of this build serves, read once.
pub static DOCUMENT: LazyLock<FrameSchemas> =
    LazyLock::new(|| FrameSchemas::new(natter::api::asyncapi::document()));

/// Panics unless `frame`, received on a socket opened on `path`, is a message the
/// server sends on that path's channel, naming the frame, the path and what is wrong.
#[track_caller]
pub fn assert_frame_matches_document(path: &str, frame: &Value) {
    if let Err(error) = DOCUMENT.check(path, frame) {
        panic!("a frame received on {path} does not match /asyncapi.json: {error}\nframe: {frame}");
    }
}

impl FrameSchemas {
    /// Reads the channels and their `send` operations (what the server sends; AsyncAPI
    /// 3 describes the server's side) from `document`.
    pub fn new(document: Value) -> Self {
        let mut channels: Vec<Channel> = document["channels"]
            .as_object()
            .expect("the document has channels")
            .iter()
            .map(|(name, channel)| Channel {
                name: name.clone(),
                address: channel["address"]
                    .as_str()
                    .expect("a channel has an address")
                    .split('/')
                    .map(str::to_owned)
                    .collect(),
                sent: BTreeMap::new(),
            })
            .collect();
        let operations = document["operations"]
            .as_object()
            .expect("the document has operations");
        for operation in operations.values() {
            if operation["action"] != "send" {
                continue;
            }
            let channel_ref = operation["channel"]["$ref"]
                .as_str()
                .expect("an operation names its channel");
            let channel_name = channel_ref.rsplit('/').next().unwrap();
            let messages = operation["messages"]
                .as_array()
                .expect("an operation lists its messages");
            let mut sent = BTreeMap::new();
            for message in messages {
                let pointer = message["$ref"].as_str().expect("messages are references");
                // The operation refers to the channel's message, which refers to the
                // component: the payload pointer is the component's.
                let component = resolve_pointer(&document, pointer)["$ref"]
                    .as_str()
                    .expect("a channel's message refers to a component")
                    .to_owned();
                let kind = resolve_pointer(&document, &component)["name"]
                    .as_str()
                    .expect("a message has a name")
                    .to_owned();
                let previous = sent.insert(kind.clone(), format!("{component}/payload"));
                assert!(
                    previous.is_none(),
                    "{channel_name}: two messages named `{kind}`"
                );
            }
            let channel = channels
                .iter_mut()
                .find(|c| c.name == channel_name)
                .unwrap_or_else(|| panic!("an operation refers to no channel: {channel_ref}"));
            channel.sent.extend(sent);
        }
        assert!(
            channels.iter().all(|c| !c.sent.is_empty()),
            "a channel on which the server sends nothing"
        );
        Self { document, channels }
    }

    /// Whether `frame`, received on `path`, is a message the server sends on its
    /// channel; the error says which channel and what is wrong.
    pub fn check(&self, path: &str, frame: &Value) -> Result<(), String> {
        let channel = self
            .channels
            .iter()
            .find(|c| c.serves(path))
            .ok_or_else(|| format!("no channel of the document has the address {path}"))?;
        let kind = frame["type"].as_str().ok_or_else(|| {
            format!(
                "channel `{}`: a frame without a string `type`",
                channel.name
            )
        })?;
        let pointer = channel.sent.get(kind).ok_or_else(|| {
            format!(
                "channel `{}`: the server sends no message of type `{kind}` (it sends {:?})",
                channel.name,
                channel.sent.keys().collect::<Vec<_>>()
            )
        })?;
        let schema = resolve_pointer(&self.document, pointer);
        Validator {
            document: &self.document,
        }
        .validate(schema, frame, "")
        .map_err(|error| format!("channel `{}`, message `{kind}`: {error}", channel.name))
    }
}

/// The value at a local JSON pointer (`#/a/b`) of `document`; panics on any other.
fn resolve_pointer<'d>(document: &'d Value, pointer: &str) -> &'d Value {
    let path = pointer
        .strip_prefix("#/")
        .unwrap_or_else(|| panic!("only local references are supported: {pointer}"));
    path.split('/').fold(document, |node, part| {
        let part = part.replace("~1", "/").replace("~0", "~");
        node.get(&part)
            .unwrap_or_else(|| panic!("the reference {pointer} points at nothing"))
    })
}

/// Keywords that describe and never constrain.
const ANNOTATIONS: &[&str] = &["title", "description", "examples"];

struct Validator<'d> {
    document: &'d Value,
}

impl Validator<'_> {
    /// Validates `instance` (at JSON pointer `at`) against `schema`: the first error, as
    /// `at: what is wrong`.
    fn validate(&self, schema: &Value, instance: &Value, at: &str) -> Result<(), String> {
        let schema = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return Err(format!("{at}: nothing is allowed here")),
            Value::Object(schema) => schema,
            other => panic!("a schema that is neither an object nor a boolean: {other}"),
        };
        if let Some(reference) = schema.get("$ref") {
            // Draft 7: a `$ref` stands alone; its siblings are ignored.
            let pointer = reference.as_str().expect("`$ref` is a string");
            return self.validate(resolve_pointer(self.document, pointer), instance, at);
        }
        for (keyword, value) in schema {
            match keyword.as_str() {
                "type" => check_type(value, instance, at)?,
                "enum" => {
                    let allowed = value.as_array().expect("`enum` is an array");
                    if !allowed.iter().any(|v| json_equal(v, instance)) {
                        return Err(format!("{at}: {instance} is not one of {value}"));
                    }
                }
                "const" => {
                    if !json_equal(value, instance) {
                        return Err(format!("{at}: {instance} is not {value}"));
                    }
                }
                "format" => {
                    check_format(value.as_str().expect("`format` is a string"), instance, at)?
                }
                "properties" => {
                    if let Value::Object(fields) = instance {
                        for (name, field_schema) in
                            value.as_object().expect("`properties` is an object")
                        {
                            if let Some(field) = fields.get(name) {
                                self.validate(field_schema, field, &format!("{at}/{name}"))?;
                            }
                        }
                    }
                }
                "required" => {
                    if let Value::Object(fields) = instance {
                        for name in value.as_array().expect("`required` is an array") {
                            let name = name.as_str().expect("required names are strings");
                            if !fields.contains_key(name) {
                                return Err(format!(
                                    "{at}: the required field `{name}` is missing"
                                ));
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Value::Object(fields) = instance {
                        let declared = schema.get("properties").and_then(Value::as_object);
                        for (name, field) in fields {
                            if declared.is_some_and(|d| d.contains_key(name)) {
                                continue;
                            }
                            if *value == Value::Bool(false) {
                                return Err(format!(
                                    "{at}: the field `{name}` is not in the schema"
                                ));
                            }
                            self.validate(value, field, &format!("{at}/{name}"))?;
                        }
                    }
                }
                "items" => {
                    if let Value::Array(items) = instance {
                        assert!(
                            value.is_object() || value.is_boolean(),
                            "tuple `items` is not supported"
                        );
                        for (i, item) in items.iter().enumerate() {
                            self.validate(value, item, &format!("{at}/{i}"))?;
                        }
                    }
                }
                annotation if ANNOTATIONS.contains(&annotation) => {}
                unknown => panic!(
                    "frame_schema: the document uses the keyword `{unknown}`, which this \
                     validator does not know; teach it (tests/api/frame_schema.rs) rather \
                     than let frames pass unchecked"
                ),
            }
        }
        Ok(())
    }
}

/// JSON equality as JSON Schema has it: `1` and `1.0` are the same number.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_equal(a, b)))
        }
        _ => a == b,
    }
}

/// `type`: one name or a list of them.
fn check_type(expected: &Value, instance: &Value, at: &str) -> Result<(), String> {
    let names: Vec<&str> = match expected {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names
            .iter()
            .map(|n| n.as_str().expect("type names are strings"))
            .collect(),
        other => panic!("`type` is neither a name nor a list: {other}"),
    };
    let matches = |name: &str| match name {
        "null" => instance.is_null(),
        "boolean" => instance.is_boolean(),
        "string" => instance.is_string(),
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "number" => instance.is_number(),
        // Draft 7: a number with no fractional part, `1.0` included.
        "integer" => {
            instance.is_i64()
                || instance.is_u64()
                || instance.as_f64().is_some_and(|n| n.fract() == 0.0)
        }
        unknown => panic!("frame_schema: unknown type `{unknown}`"),
    };
    if names.iter().any(|name| matches(name)) {
        Ok(())
    } else {
        Err(format!("{at}: {instance} is not of type {expected}"))
    }
}

/// `format`: the ones the document uses. A string format applies to strings and a
/// numeric one to numbers, as in draft 7, where a format never constrains the type.
fn check_format(format: &str, instance: &Value, at: &str) -> Result<(), String> {
    let ok = match format {
        "uuid" => instance
            .as_str()
            .is_none_or(|text| uuid::Uuid::try_parse(text).is_ok() && text.len() == 36),
        "int64" => !instance.is_number() || instance.is_i64(),
        unknown => panic!(
            "frame_schema: the document uses the format `{unknown}`, which this validator \
             does not know; teach it (tests/api/frame_schema.rs)"
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{at}: {instance} is not a valid `{format}`"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{DOCUMENT, FrameSchemas};

    /// A concrete path for a channel's address: each `{parameter}` a UUID.
    fn path_of(address: &[String]) -> String {
        address
            .iter()
            .map(|segment| match segment.starts_with('{') {
                true => uuid::Uuid::new_v4().to_string(),
                false => segment.clone(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    const ROOM: &str = "01936f1d-0c11-7f2a-a4b5-2d6e7c80c003";
    const USER: &str = "01936f1c-2a40-7d3e-9b1a-4c8e5f20a001";

    fn refused(path: &str, frame: Value) -> String {
        DOCUMENT
            .check(path, &frame)
            .expect_err(&format!("{frame} on {path} was accepted"))
    }

    /// A stored message as a `message` frame carries it.
    fn message() -> Value {
        json!({
            "id": "01936f1e-5d02-7b6c-9e7f-3a1b8d90d004", "room_id": ROOM, "seq": 1,
            "sender_id": USER, "text": "hi", "created_at": 1_795_773_600_000_i64,
            "edited_at": null, "deleted": false, "client_msg_id": null, "reply_to": null,
            "reactions": [{"emoji": "👍", "count": 1, "me": false}],
        })
    }

    #[test]
    fn every_example_of_the_document_is_accepted_on_each_channel_that_sends_it() {
        let mut checked = 0;
        for channel in &DOCUMENT.channels {
            let path = path_of(&channel.address);
            for pointer in channel.sent.values() {
                let component = pointer.strip_suffix("/payload").unwrap();
                let example = &super::resolve_pointer(&DOCUMENT.document, component)["examples"][0]
                    ["payload"];
                assert!(example.is_object(), "{component} has no example");
                DOCUMENT
                    .check(&path, example)
                    .unwrap_or_else(|e| panic!("{component}'s example on {path}: {e}"));
                checked += 1;
            }
        }
        // 14 frames on each `/v1` socket, 6 on the seed room's and 3 on the seed chat's.
        assert_eq!(checked, 14 + 14 + 6 + 3);
        DOCUMENT
            .check("/v1/ws", &json!({"type": "message", "message": message()}))
            .unwrap();
    }

    #[test]
    fn a_frame_missing_a_required_field_is_refused() {
        let error = refused("/v1/ws", json!({"type": "subscribed", "room_id": ROOM}));
        assert!(error.contains("required field `last_seq`"), "{error}");
        let mut incomplete = message();
        incomplete.as_object_mut().unwrap().remove("seq");
        let error = refused("/v1/ws", json!({"type": "message", "message": incomplete}));
        assert!(
            error.contains("/message: the required field `seq`"),
            "{error}"
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused() {
        let path = format!("/v1/ws/rooms/{ROOM}");
        let error = refused(
            &path,
            json!({"type": "read_ack", "room_id": ROOM, "seq": "2"}),
        );
        assert!(
            error.contains("/seq: \"2\" is not of type \"integer\""),
            "{error}"
        );
        let error = refused(
            &path,
            json!({"type": "read_ack", "room_id": ROOM, "seq": 2.5}),
        );
        assert!(error.contains("/seq"), "{error}");
        let error = refused(
            &path,
            json!({"type": "read_ack", "room_id": "c003", "seq": 2}),
        );
        assert!(
            error.contains("/room_id: \"c003\" is not a valid `uuid`"),
            "{error}"
        );
        let mut nested = message();
        nested["reactions"][0]["me"] = json!("no");
        let error = refused(&path, json!({"type": "message_edited", "message": nested}));
        assert!(error.contains("/message/reactions/0/me"), "{error}");
        let error = refused(&path, json!({"type": "send_ack", "message": message()}));
        assert!(
            error.contains("`client_msg_id`"),
            "a null field left out: {error}"
        );
    }

    #[test]
    fn an_unknown_frame_type_is_refused() {
        let error = refused("/v1/ws", json!({"type": "dance"}));
        assert!(error.contains("no message of type `dance`"), "{error}");
        let error = refused("/v1/ws", json!({"kind": "pong"}));
        assert!(error.contains("without a string `type`"), "{error}");
        // A frame of `/v1` is not one of a seed's socket, and the other way round.
        let seed = format!("/ws/rooms/{ROOM}");
        let error = refused(
            &seed,
            json!({"type": "subscribed", "room_id": ROOM, "last_seq": 1}),
        );
        assert!(error.contains("channel `seed_room`"), "{error}");
        let chat = json!({"type": "chat", "message_id": ROOM, "sender_id": USER,
                          "receiver_id": USER, "message": "hi", "created_at": 1});
        DOCUMENT.check(&format!("/ws/{USER}"), &chat).unwrap();
        refused("/v1/ws", chat);
        let error = refused("/v2/ws", json!({"type": "pong"}));
        assert!(error.contains("no channel"), "{error}");
    }

    #[test]
    fn a_value_outside_its_enum_is_refused() {
        let presence = |status| json!({"type": "presence", "room_id": ROOM, "user_id": USER, "status": status});
        DOCUMENT.check("/v1/ws", &presence("left")).unwrap();
        let error = refused("/v1/ws", presence("away"));
        assert!(error.contains("/status: \"away\" is not one of"), "{error}");
        let error = refused(
            "/v1/ws",
            json!({"type": "unsubscribed", "room_id": ROOM, "reason": "kicked"}),
        );
        assert!(error.contains("/reason"), "{error}");
    }

    #[test]
    fn a_field_the_document_does_not_declare_is_refused() {
        let error = refused("/v1/ws", json!({"type": "pong", "extra": 1}));
        assert!(
            error.contains("the field `extra` is not in the schema"),
            "{error}"
        );
    }

    /// The document with `pong`'s payload given one more keyword.
    fn with_keyword_on_pong(keyword: &str, value: Value) -> FrameSchemas {
        let mut document = natter::api::asyncapi::document();
        document["components"]["messages"]["server.pong"]["payload"]["properties"]["type"]
            [keyword] = value;
        FrameSchemas::new(document)
    }

    #[test]
    #[should_panic(expected = "the keyword `pattern`, which this validator does not know")]
    fn a_keyword_the_validator_does_not_know_panics_rather_than_passing() {
        let _ = with_keyword_on_pong("pattern", json!("^pong$"))
            .check("/v1/ws", &json!({"type": "pong"}));
    }

    #[test]
    #[should_panic(expected = "the format `date-time`, which this validator does not know")]
    fn a_format_the_validator_does_not_know_panics_rather_than_passing() {
        let _ = with_keyword_on_pong("format", json!("date-time"))
            .check("/v1/ws", &json!({"type": "pong"}));
    }
}
