//! HTTP: the versioned REST API under `/v1`, its OpenAPI document and Swagger UI, and
//! the operational routes (`/healthz`, `/readyz`, `/metrics`) and the browser client
//! at `/`.
//!
//! `rest` has one `#[OpenApi]` struct per resource; `security` turns the bearer token
//! into the caller; `error` maps every failure onto the SPEC §5 envelope; `web` serves
//! the client's three files.

pub mod error;
mod ops;
pub mod postman;
pub mod rest;
mod security;
mod web;
mod ws;

use poem::{Endpoint, EndpointExt, IntoEndpoint, Route, get};
use poem_openapi::OpenApiService;

use crate::app::AppState;

/// `/metrics` alone, for `METRICS_ADDR`'s listener: a port neither the balancer nor the
/// Ingress routes (SPEC §10).
pub fn metrics_routes(state: AppState) -> impl Endpoint {
    Route::new()
        .at("/metrics", get(ops::metrics))
        .catch_all_error(error::envelope_poem_error)
        .data(state)
        .into_endpoint()
}

/// The REST API under `/v1` as one OpenAPI service: the routes, their document and
/// everything generated from it (Swagger UI, `/postman.json`).
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
        ),
        "Natter",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "A clustered real-time chat server. Every route needs `Authorization: Bearer <token>` \
         except registration and login. Errors are `{\"error\": {\"code\", \"message\"}}`.",
    )
    .server("/v1")
}

/// Builds the whole HTTP surface of a node (without `/metrics` when it has a listener
/// of its own).
pub fn routes(state: AppState) -> impl Endpoint {
    let api = openapi();
    let spec = api.spec_endpoint();
    let postman = postman_endpoint(&api.spec());
    let docs = api.swagger_ui();
    let max_body_bytes = state.settings.limits.max_body_bytes;
    let cors_origins: std::sync::Arc<[String]> = state.settings.cors_origins.clone().into();
    let mut route = Route::new();
    if state.settings.metrics_addr.is_none() {
        route = route.at("/metrics", get(ops::metrics));
    }
    route
        .at("/v1/ws", get(ws::connect))
        .at("/v1/ws/rooms/:room_id", get(ws::connect_room))
        .nest("/v1", api)
        .at("/openapi.json", spec)
        .at("/postman.json", postman)
        .nest("/docs", docs)
        .at("/healthz", get(ops::healthz))
        .at("/readyz", get(ops::readyz))
        .at("/", get(web::index))
        .at("/app.js", get(web::script))
        .at("/app.css", get(web::style))
        .around(move |ep, req| ops::limit_body(ep, req, max_body_bytes))
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
    let body = bytes::Bytes::from(postman::collection(&spec).to_string());
    get(poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(body.clone())
    }))
}
