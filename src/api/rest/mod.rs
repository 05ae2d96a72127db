//! The REST API (SPEC §3): one `#[OpenApi]` struct per resource. Handlers parse input
//! into `domain` types, call the store, and let `?` map failures through `ApiError`.

pub mod auth;
mod examples;
pub mod me;
pub mod members;
pub mod messages;
pub mod presence;
pub mod rooms;
pub mod users;

use std::borrow::Cow;

use poem_openapi::{
    ApiResponse, Tags,
    registry::MetaSchemaRef,
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
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
// domain types still decide. Patterns must be literals there; the recurring one,
// for names and message text, is: no control characters but tab and newline, and at
// least one character that is neither whitespace nor control.

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
