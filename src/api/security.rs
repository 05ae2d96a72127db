//! Who is calling, for every surface: REST operations take a [`BearerAuth`], the seeds'
//! routes their own schemes (`rest::compat`), WebSocket upgrades [`socket_credential`];
//! all of them hand the credential to [`authenticate`], the one place it becomes the
//! caller (`Chat::authenticate`).

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use super::{context::ApiContext, error::ApiError};
use crate::{auth::AuthUser, chat::credentials::Credential};

/// The caller, proven by `Authorization: Bearer <token>` (Natter's own token, one from
/// a configured external issuer, or a bot key).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub AuthUser);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<AuthUser> {
    Ok(authenticate(req, Credential::Bearer(&bearer.token)).await?)
}

/// The caller behind `credential`.
pub async fn authenticate(req: &Request, credential: Credential<'_>) -> Result<AuthUser, ApiError> {
    Ok(context(req).chat.authenticate(credential).await?)
}

/// The context every route carries.
pub fn context(req: &Request) -> &ApiContext {
    req.data::<ApiContext>()
        .expect("the API context is attached to every route")
}

/// A WebSocket upgrade's credential: a `ticket` (what browsers should use), else an
/// `Authorization: Bearer` header, else a URL `token` (kept for compatibility).
pub fn socket_credential<'a>(
    req: &'a Request,
    ticket: Option<&'a str>,
    token: Option<&'a str>,
) -> Option<Credential<'a>> {
    if let Some(ticket) = ticket {
        return Some(Credential::Ticket(ticket));
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    header
        .map(Credential::Bearer)
        .or(token.map(Credential::UrlToken))
}
