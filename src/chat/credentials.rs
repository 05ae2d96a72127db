//! Who is calling: the one use case that turns a credential into the caller, whatever
//! surface it arrives on (REST, the seeds' routes, a WebSocket upgrade).

use super::{Chat, ChatError};
use crate::auth::{AuthError, AuthUser, bots::BOT_KEY_PREFIX};

/// How a caller proves who they are.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// `Authorization: Bearer …`: Natter's own token, an external issuer's, or a bot key.
    Bearer(&'a str),
    /// `?token=…` in a URL, kept for the seeds' clients and old WebSocket clients: JWTs
    /// only (SPEC §18). Proxies log URLs, and a JWT found in a log expires; a bot key
    /// never does.
    UrlToken(&'a str),
    /// A single-use WebSocket ticket from `POST /v1/ws/tickets` (SPEC §10).
    Ticket(&'a str),
}

impl Chat {
    /// The caller behind `credential`, or why not.
    pub async fn authenticate(&self, credential: Credential<'_>) -> Result<AuthUser, ChatError> {
        match credential {
            Credential::UrlToken(token) if token.starts_with(BOT_KEY_PREFIX) => {
                Err(AuthError::Invalid(
                    "a bot key is not accepted in a URL; send it as Authorization: Bearer, \
                     or open the socket with a ticket from POST /v1/ws/tickets"
                        .into(),
                )
                .into())
            }
            Credential::Bearer(token) | Credential::UrlToken(token) => {
                Ok(self.auth.verify(token).await?)
            }
            // A ticket Postgres did not know lately is refused from memory (SPEC §18):
            // tickets are random and made by the server, so none becomes known later.
            Credential::Ticket(ticket) => {
                if self.auth.ticket_known_unknown(ticket) {
                    return Err(ChatError::InvalidTicket);
                }
                let redeemed = self.redeem_ws_ticket(ticket).await;
                if let Err(ChatError::InvalidTicket) = redeemed {
                    self.auth.ticket_unknown(ticket);
                }
                redeemed
            }
        }
    }
}
