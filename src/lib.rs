//! Natter: a clustered real-time chat server.
//!
//! Stateless nodes serve a versioned REST API and a WebSocket API. Postgres is the source of truth for users, rooms, members and messages; NATS
//! carries room events between nodes. Any node can serve any request, so a cluster is
//! just several copies of this process behind a load balancer.
//!
//! The contract every module serves is the product specification, `docs/SPEC.md`; a
//! comment's "SPEC §N" points to its section N. The guarantees it names are implemented
//! where [`store::messages`] says.
//!
//! # Layout
//!
//! - [`config`]: settings from the environment; a bad one stops start-up naming it.
//! - [`app`]: builds a node from settings (pool, migrations, NATS, the use cases, the
//!   API's context) and runs it until a shutdown future resolves, then drains.
//!   `main.rs` and the tests both go through it.
//! - [`listener`]: accepted connections: `TCP_NODELAY`, a cheap idle limit and the
//!   time a client may take to send a request (slowloris).
//! - [`telemetry`]: tracing subscriber set-up.
//! - [`domain`]: validated input types (`Username`, `RoomName`, `MessageText`, …); a value
//!   of one of them is valid by construction.
//! - [`auth`]: password hashing, Natter's own HS256 tokens and external issuers
//!   (HS256 secrets and JWKS).
//! - [`model`]: the resources the API returns (users, rooms, messages, …).
//! - [`chat`]: the use cases, one method per thing a user does (send, edit, react,
//!   subscribe, …): each validates, authorizes, meters, stores and emits its events, so
//!   every API surface gets the same rules. `chat::live` is the socket as a use case:
//!   its resume seam, credential re-checks and why it ends ([`model::CloseReason`]).
//!   The API imports nothing below this layer (`tests/api/layout.rs` checks).
//! - [`store`]: Postgres: pool, embedded migrations, one module per table group.
//! - [`bus`]: NATS subjects and the room event codec.
//! - [`relay`]: per-room fan-out to this node's sockets, interest routing and gap
//!   repair (SPEC §1.3).
//! - [`push`]: Web Push's encryption and VAPID signature (SPEC §14).
//! - [`presence`]: connection leases in NATS KV and the cluster-wide view (SPEC §1.6).
//! - [`protocol`]: WebSocket frames.
//! - [`rate_limit`]: the budgets the use cases spend (sends, edits, creations,
//!   tickets, subscribes), keyed by user or socket.
//! - [`metrics`]: prometheus-client's registry, rendered as OpenMetrics text, and what
//!   each scrape reads from the layers; [`histogram`] the latency histogram every layer
//!   records into.
//! - [`webhooks`]: requests to integrations, signed the Standard Webhooks way: room
//!   and cluster webhooks' durable delivery, the before-send moderation hook, and the
//!   destination rules both follow.
//! - [`api`]: HTTP routes, translating between wire formats and [`chat`], reaching the
//!   node only through its [`api::ApiContext`]: `api::rest` has one module per
//!   resource, `api::ws` the WebSocket upgrade, sessions and frame codec,
//!   `api::security` the one credential extractor, `api::error` maps every error once
//!   onto the SPEC §5 envelope and `api::close` every close reason onto its code.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod client_address;
pub mod config;
pub mod domain;
pub mod histogram;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod rate_limit;
pub mod relay;
pub mod store;
pub mod telemetry;
pub mod webhooks;
