//! The WebSocket API (SPEC §4): `GET /v1/ws` (many rooms per socket) and
//! `GET /v1/ws/rooms/{room_id}` (one room, subscribed at once); and the seeds' sockets
//! (SPEC §12), the single-room session in their frame shapes ([`Dialect`]).
//!
//! The upgrade authenticates (`?ticket=` from `POST /v1/ws/tickets`, `Authorization:
//! Bearer`, or `?token=` for compatibility), refuses new sockets while the node drains,
//! and hands the socket to a [`session::Session`].

mod dialect;
mod session;
mod writer;

pub use dialect::Dialect;

use poem::{
    IntoResponse, Request, Response, handler,
    web::{
        Data, Path, Query,
        websocket::{WebSocket, WebSocketConfig},
    },
};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    context::ApiContext,
    error::ApiError,
    security::{authenticate, socket_credential},
};
use crate::{auth::AuthUser, chat::credentials::Credential};

#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    /// A single-use ticket (`POST /v1/ws/tickets`): what browsers should use.
    ticket: Option<String>,
    /// The bearer token itself, kept for compatibility: it ends up in access logs.
    token: Option<String>,
    /// For the single-room form: resume after this `seq`.
    since_seq: Option<i64>,
}

/// `GET /v1/ws`: a socket that subscribes to rooms with `subscribe` frames.
#[handler]
pub async fn connect(
    req: &Request,
    ws: WebSocket,
    Data(state): Data<&ApiContext>,
    Query(params): Query<ConnectParams>,
) -> Response {
    match caller(req, state, &params).await {
        Ok(user) => upgrade(ws, state, user, None, Dialect::Natter),
        Err(err) => err.into_response(),
    }
}

/// `GET /v1/ws/rooms/{room_id}`: a socket bound to one room, subscribed at once (from
/// `since_seq` if given); frames without `room_id` act on that room.
#[handler]
pub async fn connect_room(
    req: &Request,
    ws: WebSocket,
    Data(state): Data<&ApiContext>,
    Path(room_id): Path<Uuid>,
    Query(params): Query<ConnectParams>,
) -> Response {
    single_room(
        req,
        ws,
        state,
        room_id,
        &params,
        params.since_seq,
        Dialect::Natter,
    )
    .await
}

/// A socket bound to one room the caller can see (`404` at the handshake otherwise),
/// subscribed at once from `since_seq`, speaking `dialect`.
async fn single_room(
    req: &Request,
    ws: WebSocket,
    state: &ApiContext,
    room_id: Uuid,
    params: &ConnectParams,
    since_seq: Option<i64>,
    dialect: Dialect,
) -> Response {
    let user = match caller(req, state, params).await {
        Ok(user) => user,
        Err(err) => return err.into_response(),
    };
    if let Err(err) = state.chat.check_access(user.id, room_id).await {
        return ApiError::from(err).into_response();
    }
    if since_seq.is_some_and(|s| s < 0) {
        return ApiError::invalid("since_seq", "must be zero or more").into_response();
    }
    upgrade(ws, state, user, Some((room_id, since_seq)), dialect)
}

/// `GET /ws/rooms/{room_id}?token=` (SPEC §12, seed 000): the single-room socket in the
/// seed's frame shapes; `404` at the handshake for a room the caller cannot see.
#[handler]
pub async fn connect_seed_room(
    req: &Request,
    ws: WebSocket,
    Data(state): Data<&ApiContext>,
    Path(room_id): Path<Uuid>,
    Query(params): Query<ConnectParams>,
) -> Response {
    // The seed's clients never resume: `since_seq` is not theirs.
    single_room(req, ws, state, room_id, &params, None, Dialect::SeedRoom).await
}

/// `GET /ws/{receiver_id}?token=` (SPEC §12, seed 004): a socket on the caller's direct
/// room with `receiver_id`, made on first contact; `404` for an unknown user.
#[handler]
pub async fn connect_seed_direct(
    req: &Request,
    ws: WebSocket,
    Data(state): Data<&ApiContext>,
    Path(receiver_id): Path<Uuid>,
    Query(params): Query<ConnectParams>,
) -> Response {
    let admitted = async {
        let user = caller(req, state, &params).await?;
        let room_id = state.chat.direct_room(user.id, receiver_id).await?;
        Ok::<_, ApiError>((user, room_id))
    };
    match admitted.await {
        Ok((user, room_id)) => {
            let dialect = Dialect::SeedDirect {
                me: user.id,
                other: receiver_id,
            };
            upgrade(ws, state, user, Some((room_id, None)), dialect)
        }
        Err(err) => err.into_response(),
    }
}

/// The caller of an upgrade, unless the node is draining.
async fn caller(
    req: &Request,
    state: &ApiContext,
    params: &ConnectParams,
) -> Result<AuthUser, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable(
            "this node is shutting down; reconnect",
        ));
    }
    let credential = socket_credential(req, params.ticket.as_deref(), params.token.as_deref())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "a ticket or token is required (?ticket=, a bearer header or ?token=)",
            )
        })?;
    let user = authenticate(req, credential).await?;
    match credential {
        Credential::Ticket(_) => state.metrics.count_ticket_redeemed(),
        Credential::UrlToken(_) => state.metrics.count_token_in_url(),
        Credential::Bearer(_) => {}
    }
    Ok(user)
}

/// Upgrades the connection to a session, unless the user already has as many sockets
/// open on this node as they may (`429 too_many_sockets`).
fn upgrade(
    ws: WebSocket,
    state: &ApiContext,
    user: AuthUser,
    room: Option<(Uuid, Option<i64>)>,
    dialect: Dialect,
) -> Response {
    let permit = match state.chat.admit_socket(user.id) {
        Ok(permit) => permit,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let max = state.settings.limits.max_frame_bytes;
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max);
    config.max_frame_size = Some(max);
    // Idle sockets should cost little memory: small buffers, grown only when needed
    // (tungstenite zeroes its whole read buffer before each read, so all of it is
    // resident; 1 KiB still holds several chat frames). Frames are buffered until the
    // writer flushes what it found queued (`session::MAX_COALESCED` at most), or until
    // 4 KiB are waiting: the buffer keeps its capacity for the socket's life.
    config.read_buffer_size = 1024;
    config.write_buffer_size = 4096;
    config.max_write_buffer_size = 1024 * 1024;
    let state = state.clone();
    ws.config(config)
        .on_upgrade(move |socket| session::Session::run(socket, state, user, permit, room, dialect))
        .into_response()
}
