//! The REST API (SPEC §3): one `#[OpenApi]` struct per resource. Handlers parse input
//! into `domain` types, call the store, and let `?` map failures through `ApiError`.

pub mod auth;
pub mod me;
pub mod members;
pub mod messages;
pub mod presence;
pub mod rooms;
pub mod users;

use poem_openapi::{ApiResponse, Tags};
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

/// Parses a list cursor that is a plain id.
fn id_cursor(raw: Option<String>) -> Result<Option<Uuid>, ApiError> {
    raw.map(|c| {
        c.parse()
            .map_err(|_| ApiError::invalid("cursor", "is not a cursor this API returned"))
    })
    .transpose()
}
