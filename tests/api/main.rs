//! Integration tests: real nodes over real HTTP against the harness's Postgres and NATS.
//! Run them with `bash tests/run`.

mod access_revocation;
mod auth;
mod body_limit;
mod browser;
mod client_addresses;
mod cluster;
mod compat;
mod docs;
mod doors;
mod failover;
mod generated_client;
mod helpers;
mod integrations;
mod jwt;
mod layout;
mod messages;
mod metering;
mod online_users;
mod openapi_fuzz;
mod ops;
mod outgoing;
mod own_postgres;
mod privacy;
mod reaction_limits;
mod realtime;
mod rooms;
mod secrets;
mod security;
mod sign_in_throttle;
mod standby;
mod traces;
mod typing;
mod validation;
mod webhooks;
mod websocket_admission;
