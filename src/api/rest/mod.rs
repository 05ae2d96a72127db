//! The REST API (SPEC §3): one `#[OpenApi]` struct per resource. Handlers parse input
//! into `domain` types, call one use case of [`crate::chat`], and let `?` map failures
//! through `ApiError`.

pub mod auth;
pub mod bots;
pub mod compat;
pub(crate) mod examples;
pub mod me;
pub mod members;
pub mod messages;
pub mod presence;
pub mod push;
pub mod rooms;
pub mod tickets;
pub mod users;
pub mod webhooks;

use std::borrow::Cow;

use poem_openapi::{
    ApiResponse, Tags,
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type},
    validation::Validator,
};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;

/// Groups operations in the OpenAPI document.
#[derive(Tags)]
enum ApiTags {
    /// Registration and login.
    Auth,
    /// Users.
    Users,
    /// Rooms, direct rooms and read watermarks.
    Rooms,
    /// Room membership.
    Members,
    /// Messages and reactions.
    Messages,
    /// The caller's own view: their chat list.
    Me,
    /// Bots and their API keys.
    Bots,
    /// A room's outgoing webhooks.
    Webhooks,
    /// Notifications: a member's settings per room, the devices that receive them, and
    /// the key browsers subscribe with.
    Notifications,
    /// Drop-in routes for the original backends' clients (SPEC §12): their paths and
    /// shapes over the same use cases.
    #[oai(rename = "compat")]
    Compat,
}

/// A success with nothing to return.
#[derive(ApiResponse)]
pub enum NoContent {
    /// Done.
    #[oai(status = 204)]
    Done,
}

// Request fields and parameters carry `validator(...)` attributes that mirror what the
// domain types accept (`crate::domain`), so the OpenAPI document tells generated clients
// and fuzzers what is valid; poem-openapi checks them before a handler runs, and the
// domain types still decide. Text that people write is a `ChatText` checked by
// `ChatTextRule`, so its rule is stated once.

/// The rule for text people write (messages, room and display names, search queries),
/// as the OpenAPI document states it: no control characters but tab and newline, and at
/// least one character that is neither whitespace nor control.
const CHAT_TEXT_PATTERN: &str =
    r"^[^\x00-\x08\x0B-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$";

/// Text a person wrote: a JSON string (or query parameter) whose schema carries
/// [`CHAT_TEXT_PATTERN`]. Fields of this type take `validator(custom = "ChatTextRule")`,
/// which enforces the pattern with the domain's rule and names the field when it fails.
#[derive(Debug, Clone)]
pub struct ChatText(pub String);

/// Checks [`CHAT_TEXT_PATTERN`] with [`crate::domain::is_chat_text`]. (poem-openapi's
/// `pattern` validator compiles its regex on every request.)
pub struct ChatTextRule;

impl std::fmt::Display for ChatTextRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("must not be blank or contain control characters")
    }
}

impl Validator<String> for ChatTextRule {
    fn check(&self, value: &String) -> bool {
        crate::domain::is_chat_text(value)
    }
}

impl std::ops::Deref for ChatText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for ChatText {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            pattern: Some(CHAT_TEXT_PATTERN.to_string()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for ChatText {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        JsonString::parse_from_json(value)
            .map(|s| Self(s.0))
            .map_err(ParseError::propagate)
    }
}

impl ParseFromParameter for ChatText {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_string()))
    }
}

impl ToJSON for ChatText {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A request field that must be a JSON string. poem-openapi's `String` also takes
/// numbers and booleans (`"name": false` would name a room "false"); the schema says
/// string, so the server holds to it.
#[derive(Debug, Clone)]
pub struct JsonString(pub String);

impl std::ops::Deref for JsonString {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Type for JsonString {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }
}

impl ParseFromJSON for JsonString {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(text) => Ok(Self(text)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for JsonString {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// Parses a list cursor that is a plain id.
fn id_cursor(raw: Option<String>) -> Result<Option<Uuid>, ApiError> {
    raw.map(|c| {
        c.parse()
            .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::CHAT_TEXT_PATTERN;
    use crate::domain::is_chat_text;

    #[test]
    fn the_chat_text_rule_accepts_exactly_what_the_documented_pattern_matches() {
        let pattern = regex::Regex::new(CHAT_TEXT_PATTERN).unwrap();
        let samples = [
            "hello",
            " padded ",
            "two\nlines",
            "tab\tbed",
            "ünïcödé",
            "🎉",
            "",
            " ",
            "\n\t ",
            "\u{3000}",
            "\u{00a0}x",
            "bell\u{7}",
            "\r\nx",
            "x\u{85}",
            "\u{9f}",
            "\u{1}",
            "a\u{200b}",
            "\u{200b}",
            "x\u{7f}",
        ];
        for sample in samples {
            assert_eq!(is_chat_text(sample), pattern.is_match(sample), "{sample:?}");
        }
    }
}
