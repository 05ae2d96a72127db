//! Integration tests: real nodes over real HTTP against the harness's Postgres and NATS.
//! Run them with `bash tests/run`.

mod abuse;
mod auth;
mod browser;
mod cluster;
mod compat;
mod docs;
mod failover;
mod generated_client;
mod helpers;
mod integrations;
mod jwt;
mod layout;
mod messages;
mod openapi_fuzz;
mod ops;
mod own_postgres;
mod privacy;
mod realtime;
mod rooms;
mod security;
mod standby;
mod traces;
mod validation;
mod webhooks;
