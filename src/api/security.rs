//! The bearer-token extractor: every authenticated operation takes a [`BearerAuth`].

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use super::error::ApiError;
use crate::{app::AppState, auth::AuthUser};

/// The caller, proven by `Authorization: Bearer <token>` (Natter's own token or one from
/// a configured external issuer).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub AuthUser);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<AuthUser> {
    let state = req
        .data::<AppState>()
        .expect("the app state is attached to every route");
    state
        .auth
        .verify(&bearer.token)
        .await
        .map_err(|e| ApiError::from(e).into())
}
