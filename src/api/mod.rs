//! HTTP: the versioned REST API under `/v1`, its OpenAPI document and Swagger UI, the
//! WebSocket API's AsyncAPI document (`asyncapi`), and
//! the operational routes (`/healthz`, `/readyz`, `/metrics`) and the browser client
//! at `/`.
//!
//! Handlers reach the node through an [`ApiContext`] (the use cases, settings, counters)
//! and nothing else. `rest` has one `#[OpenApi]` struct per resource and `ws` the
//! WebSocket upgrade, sessions and frame codec; `security` turns every credential into
//! the caller; `error` maps every failure onto the SPEC §5 envelope, and `close` every
//! reason a socket ends onto its close code; `web` serves the client's three files.

pub mod asyncapi;
mod close;
pub mod context;
pub mod error;
mod ops;
pub mod postman;
pub mod rest;
mod security;
mod web;
mod ws;

use poem::{Endpoint, EndpointExt, IntoEndpoint, Route, get};
use poem_openapi::OpenApiService;

pub use context::ApiContext;

/// `/metrics` alone, for `METRICS_ADDR`'s listener: a port neither the balancer nor the
/// Ingress routes (SPEC §10).
pub fn metrics_routes(state: ApiContext) -> impl Endpoint {
    Route::new()
        .at("/metrics", get(ops::metrics))
        .catch_all_error(error::envelope_poem_error)
        .data(state)
        .into_endpoint()
}

/// The REST API as one OpenAPI service: `/v1` and the drop-in routes (SPEC §12), their
/// document and everything generated from it (Swagger UI, `/postman.json`).
pub fn openapi() -> OpenApiService<impl poem_openapi::OpenApi, ()> {
    OpenApiService::new(
        (
            rest::auth::AuthApi,
            rest::users::UsersApi,
            rest::rooms::RoomsApi,
            rest::members::MembersApi,
            rest::messages::MessagesApi,
            rest::me::MeApi,
            rest::presence::PresenceApi,
            rest::tickets::TicketsApi,
            rest::bots::BotsApi,
            rest::webhooks::WebhooksApi,
            rest::push::PushApi,
            rest::compat::CompatApi,
        ),
        "Natter",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A clustered real-time chat server. Every route needs `Authorization: Bearer <token>` \
         except registration and login. Errors are `{\"error\": {\"code\", \"message\"}}`. \
         The routes tagged `compat` speak the original backends' paths and shapes. \
         The WebSocket API (`/v1/ws`) is described by an AsyncAPI 3.0 document: \
         [/asyncapi.json](/asyncapi.json).",
    )
}

/// Builds the whole HTTP surface of a node (without `/metrics` when it has a listener
/// of its own).
pub fn routes(state: ApiContext) -> impl Endpoint {
    let api = openapi();
    let spec = api.spec_endpoint();
    let postman = postman_endpoint(&api.spec());
    let asyncapi = json_endpoint(&asyncapi::document());
    let docs = api.swagger_ui();
    // One service answers `/v1` and the drop-in routes at the root; the router hands it
    // only those paths, so the rest of the root stays the node's own.
    let api = std::sync::Arc::new(api.into_endpoint());
    let max_body_bytes = state.settings.limits.max_body_bytes;
    let cors_origins: std::sync::Arc<[String]> = state.settings.cors_origins.clone().into();
    let mut route = Route::new();
    if state.settings.metrics_addr.is_none() {
        route = route.at("/metrics", get(ops::metrics));
    }
    if state.settings.compat_routes {
        route = route
            .at("/rooms", api.clone())
            .at("/rooms/", without_trailing_slash(api.clone()))
            .at("/:room_id/messages", api.clone())
            .nest_no_strip("/api", api.clone())
            .at("/ws/rooms/:room_id", get(ws::connect_seed_room))
            .at("/ws/:receiver_id", get(ws::connect_seed_direct));
    }
    route
        .at("/v1/ws", get(ws::connect))
        .at("/v1/ws/rooms/:room_id", get(ws::connect_room))
        .nest_no_strip("/v1", api)
        .at("/openapi.json", spec)
        .at("/postman.json", postman)
        .at("/asyncapi.json", asyncapi)
        .nest("/docs", docs)
        .at("/healthz", get(ops::healthz))
        .at("/readyz", get(ops::readyz))
        .at("/", get(web::index))
        .at("/app.js", get(web::script))
        .at("/natter.js", get(web::sdk))
        .at("/app.css", get(web::style))
        .around(move |ep, req| ops::limit_body(ep, req, max_body_bytes))
        .around(ops::admit)
        .catch_all_error(error::envelope_poem_error)
        .around(move |ep, req| ops::cors(ep, req, cors_origins.clone()))
        .around(ops::observe_request)
        .data(state)
        .into_endpoint()
}

/// `GET /postman.json`: the collection generated once, at start-up, from the document.
fn postman_endpoint(spec: &str) -> impl Endpoint + use<> {
    let spec: serde_json::Value =
        serde_json::from_str(spec).expect("poem-openapi renders valid JSON");
    json_endpoint(&postman::collection(&spec))
}

/// `GET` of a JSON document made once, at start-up.
fn json_endpoint(document: &serde_json::Value) -> impl Endpoint + use<> {
    let body = bytes::Bytes::from(document.to_string());
    get(poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(body.clone())
    }))
}

/// Seed 000's clients call `/rooms/`; the document (like FastAPI's redirect) has `/rooms`.
fn without_trailing_slash<E: Endpoint>(endpoint: E) -> impl Endpoint {
    endpoint.before(|mut req: poem::Request| async move {
        let uri = req.uri();
        let path = uri.path().trim_end_matches('/');
        let trimmed = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        *req.uri_mut() = trimmed
            .parse()
            .map_err(|_| poem::Error::from_status(poem::http::StatusCode::BAD_REQUEST))?;
        Ok(req)
    })
}
