//! `POST /v1/ws/tickets`: a single-use ticket to open a WebSocket with, so no token ever
//! travels in a URL (SPEC §10).

use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json, types::Example};

use super::{ApiTags, examples};
use crate::{
    api::context::ApiContext,
    api::{error::ApiError, security::BearerAuth},
    chat::accounts::WsTicket,
};

pub struct TicketsApi;

/// A WebSocket ticket.
#[derive(Object)]
#[oai(example)]
struct Ticket {
    /// Open `GET /v1/ws?ticket=…` (or the single-room route) with it: once, on any
    /// node, within 30 seconds. The socket lives as long as the token that got it.
    ticket: String,
    /// When the ticket can no longer be used, in milliseconds since the epoch.
    expires_at: i64,
}

#[derive(ApiResponse)]
enum TicketResponse {
    /// A new ticket.
    #[oai(status = 201)]
    Created(Json<Ticket>),
}

#[OpenApi(prefix_path = "/v1/ws", tag = "ApiTags::Auth")]
impl TicketsApi {
    /// Get a single-use ticket to open a WebSocket with instead of the token.
    #[oai(path = "/tickets", method = "post", operation_id = "create_ws_ticket")]
    async fn create(
        &self,
        auth: BearerAuth,
        Data(state): Data<&ApiContext>,
    ) -> Result<TicketResponse, ApiError> {
        let WsTicket { ticket, expires_at } = state.chat.ws_ticket(auth.0).await?;
        Ok(TicketResponse::Created(Json(Ticket { ticket, expires_at })))
    }
}

impl Example for Ticket {
    fn example() -> Self {
        Ticket {
            ticket: "b3BhcXVlLXNpbmdsZS11c2UtdGlja2V0LTMyLWJ5dGVz".into(),
            expires_at: examples::NOW_MS + 30_000,
        }
    }
}
