//! NATS: how room events travel between nodes.
//!
//! Every room has one subject, `<prefix>.room.<shard>.<room_id>`, where the shard (two
//! hex digits, one of [`SHARDS`]) is derived from the room's id. A node publishes each
//! committed event there once ([`Bus::publish`]) and subscribes to a shard's wildcard,
//! `<prefix>.room.<shard>.*`, only while it has a local subscriber to a room of that
//! shard (see [`crate::relay`]): a node in thousands of rooms holds at most 256 NATS
//! subscriptions. The prefix lets several clusters (or test runs) share one NATS
//! deployment.
//!
//! A node's own events reach its own sockets without the round trip: the connection is
//! `no_echo`, and [`Bus::publish`] hands each event to the relay of its own node as it
//! publishes it. That saves NATS and the node a copy of every event in each direction,
//! and a hop of latency.
//!
//! Connecting never blocks start-up on NATS: the client keeps retrying in the
//! background, and `/readyz` reports the node unready until it is connected. NATS core
//! is at-most-once; what that costs is repaired from Postgres by [`crate::relay`].

pub mod event;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{ConnectOptions, Event, ServerAddr, jetstream};
use opentelemetry::trace::SpanKind;
use tokio::sync::watch;
use uuid::Uuid;

pub use event::{EventKind, RoomEvent};

use crate::{config::NatsAuth, telemetry::TraceSpan};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid NATS_URL: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("NATS subscription failed: {0}")]
    Subscribe(String),
}

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    /// First token of every subject and of the presence bucket's name.
    prefix: Arc<str>,
    /// Counts (re)connections, so the relay can look for events it missed while NATS
    /// was away and presence can rewrite leases that expired meanwhile; each follower
    /// holds its own receiver.
    connections: watch::Sender<u64>,
    /// Disconnections and failed publishes and subscriptions, for `/metrics`.
    failures: Arc<AtomicU64>,
    /// This node, for the spans of its publishes.
    node_id: Arc<str>,
    /// Where this node's own events go, since NATS does not echo them back: the relay
    /// ([`Bus::deliver_locally_to`]).
    local: Arc<OnceLock<LocalDelivery>>,
}

/// Credentials given in `NATS_URL` (async-nats reads only those set on its options).
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    UserPassword(String, String),
    /// A user alone: with `NATS_PASSWORD_FILE`, or else a token (`nats://token@host`).
    User(String),
}

/// The credentials the URLs carry: the same on every server, or none.
fn url_credentials(servers: &[ServerAddr]) -> Result<Option<UrlCredentials>, BusError> {
    let of = |server: &ServerAddr| {
        let user = server.username()?;
        Some(match server.password() {
            Some(password) => UrlCredentials::UserPassword(user.into(), password.into()),
            None => UrlCredentials::User(user.into()),
        })
    };
    let first = servers.first().and_then(of);
    if servers.iter().any(|server| of(server) != first) {
        return Err(BusError::InvalidUrl(
            "give the same credentials on every server, or none".into(),
        ));
    }
    Ok(first)
}

/// async-nats options that authenticate as `NATS_URL`'s credentials, a `.creds` file or
/// a user and password file say, and verify the servers with a CA file if given.
async fn connect_options(
    servers: &[ServerAddr],
    auth: &NatsAuth,
) -> Result<ConnectOptions, BusError> {
    let unreadable = |what: &str, err: std::io::Error| BusError::Connect(format!("{what}: {err}"));
    let mut options = match &auth.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| unreadable("NATS_CREDS_FILE", e))?,
        None => ConnectOptions::new(),
    };
    options = match (url_credentials(servers)?, &auth.password_file) {
        (Some(UrlCredentials::User(user)), Some(path)) => {
            let password = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| unreadable("NATS_PASSWORD_FILE", e))?;
            options.user_and_password(user, password.trim().to_string())
        }
        (_, Some(_)) => {
            return Err(BusError::InvalidUrl(
                "NATS_PASSWORD_FILE needs a user and no password in NATS_URL (nats://natter@host)"
                    .into(),
            ));
        }
        (Some(UrlCredentials::UserPassword(user, password)), None) => {
            options.user_and_password(user, password)
        }
        (Some(UrlCredentials::User(token)), None) => options.token(token),
        (None, None) => options,
    };
    if let Some(ca) = &auth.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options)
}

/// Takes an event this node publishes to its own subscribers.
pub type LocalDelivery = Box<dyn Fn(RoomEvent) + Send + Sync>;

impl Bus {
    /// Connects to the comma-separated servers of `urls`, authenticated as they and
    /// `auth` say (SPEC §10).
    pub async fn connect(
        urls: &str,
        auth: &NatsAuth,
        node_id: &str,
        prefix: &str,
    ) -> Result<Self, BusError> {
        let servers = urls
            .split(',')
            .map(|u| u.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::InvalidUrl(e.to_string()))?;
        let options = connect_options(&servers, auth).await?;
        let connections = watch::Sender::new(0);
        let failures = Arc::new(AtomicU64::new(0));
        let (on_event, on_failure) = (connections.clone(), failures.clone());
        let client = options
            .name(format!("natter:{node_id}"))
            .no_echo()
            .connection_timeout(Duration::from_secs(3))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let (on_event, on_failure) = (on_event.clone(), on_failure.clone());
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!("NATS connected");
                            on_event.send_modify(|count| *count += 1);
                        }
                        Event::Disconnected => {
                            on_failure.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("NATS disconnected");
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        // Give the first connection a moment so a healthy node starts ready; if NATS is
        // down, start anyway and let `/readyz` say so until it is back.
        let connected = async {
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), connected)
            .await
            .is_err()
        {
            tracing::warn!("NATS not reachable yet; serving as unready until it is");
        }
        Ok(Self {
            client,
            prefix: prefix.into(),
            connections,
            failures,
            node_id: node_id.into(),
            local: Arc::default(),
        })
    }

    /// Sets where this node's own events are delivered; the first call wins.
    pub fn deliver_locally_to(&self, deliver: LocalDelivery) {
        let _ = self.local.set(deliver);
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// NATS failures this node has seen, for `/metrics`.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Changes on every (re)connection to NATS.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connections.subscribe()
    }

    pub fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// `<prefix>.room.<shard>.<room>`: a room's events, under its shard's wildcard.
    fn room_subject(&self, room_id: Uuid) -> String {
        format!(
            "{}.room.{:02x}.{}",
            self.prefix,
            shard_of(room_id),
            room_id.simple()
        )
    }

    /// Publishes a committed event once: to this node's subscribers directly, to other
    /// nodes' through NATS. A failure is logged, not returned: the event is already
    /// durable (or, for ephemeral events, not worth failing the request), and the relay's
    /// gap repair delivers lost messages from Postgres.
    #[tracing::instrument(skip_all, fields(room_id = %event.room_id, kind = ?event.kind, seq = event.seq))]
    pub async fn publish(&self, event: &RoomEvent) {
        let mut headers = event.headers();
        let parent = crate::telemetry::current_traceparent();
        let mut span = TraceSpan::start(
            "nats publish",
            SpanKind::Producer,
            parent.as_ref(),
            &self.node_id,
        );
        span.set_attribute("natter.room_id", event.room_id.to_string());
        // The receiving nodes' fan-out continues this span's trace.
        headers.insert("traceparent", &**span.traceparent());
        if let Some(deliver) = self.local.get() {
            deliver(RoomEvent {
                traceparent: Some(span.traceparent().clone()),
                ..event.clone()
            });
        }
        let result = self
            .client
            .publish_with_headers(
                self.room_subject(event.room_id),
                headers,
                bytes::Bytes::copy_from_slice(event.payload.as_bytes()),
            )
            .await;
        if let Err(err) = result {
            self.count_failure();
            tracing::warn!(error = %err, "publishing a room event failed");
        }
    }

    /// Subscribes to the events of every room in `shard` and makes sure the server
    /// knows before returning, so nothing published after this call is missed.
    pub async fn subscribe_shard(&self, shard: u8) -> Result<async_nats::Subscriber, BusError> {
        let subscribed = self.try_subscribe_shard(shard).await;
        if subscribed.is_err() {
            self.count_failure();
        }
        subscribed
    }

    async fn try_subscribe_shard(&self, shard: u8) -> Result<async_nats::Subscriber, BusError> {
        let subscriber = self
            .client
            .subscribe(format!("{}.room.{shard:02x}.*", self.prefix))
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| BusError::Subscribe("flush timed out".into()))?
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        Ok(subscriber)
    }
}

/// Rooms are spread over this many NATS subjects' wildcards, by the last byte of their
/// id (random in v4 and v7 ids alike).
///
/// A node subscribes to a shard while it serves a room in it, rather than to each room:
/// every async-nats subscription owns a channel of its own (about 6 KiB), so a node
/// serving 200,000 rooms would spend over a gigabyte on them. With 256 shards a node
/// that serves a few rooms still receives only their shards' traffic; one that serves
/// thousands receives every room's, and drops what no local socket wants with one
/// lookup.
pub const SHARDS: usize = 256;

/// The shard a room's events are published under.
pub fn shard_of(room_id: Uuid) -> u8 {
    room_id.as_bytes()[15]
}

/// The room a message on a room subject belongs to (the subject's last token).
pub fn room_of_subject(subject: &str) -> Option<Uuid> {
    Uuid::try_parse(subject.rsplit('.').next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(urls: &[&str]) -> Vec<ServerAddr> {
        urls.iter().map(|u| u.parse().unwrap()).collect()
    }

    #[test]
    fn credentials_in_the_urls_are_read_and_must_agree() {
        let both = servers(&["nats://natter:secret@a:4222", "nats://natter:secret@b:4222"]);
        assert_eq!(
            url_credentials(&both).unwrap(),
            Some(UrlCredentials::UserPassword(
                "natter".into(),
                "secret".into()
            ))
        );
        let token = servers(&["tls://s3cr3t-token@a:4222"]);
        assert_eq!(
            url_credentials(&token).unwrap(),
            Some(UrlCredentials::User("s3cr3t-token".into()))
        );
        assert_eq!(url_credentials(&servers(&["nats://a:4222"])).unwrap(), None);
        let mixed = servers(&["nats://natter:secret@a:4222", "nats://b:4222"]);
        assert!(url_credentials(&mixed).is_err());
    }
}
