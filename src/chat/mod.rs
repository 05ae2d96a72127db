//! The use cases: one method per thing a user does, whatever surface they do it through.
//!
//! REST handlers and the WebSocket session only translate between their wire format and
//! these calls. Each method validates its input, authorizes the caller (through the
//! store's `store::access::Access` rules), meters what is metered, stores the change
//! and emits its events, in that order and in this one place, so a rule added here holds
//! on every surface and a mutation cannot be added without deciding what it emits.
//!
//! A store mutation returns the change it recorded (`store::events::Recorded`), and
//! `Chat::emit` publishes exactly that ([`Bus::publish`]: NATS, and this node's own
//! subscribers directly), so its live event and its webhook derive from one value.
//! Messages are the exception that proves the rule: a send is emitted by the group
//! commit's hook (`Chat::on_commit`), through the same `publish_change`, in `seq` order
//! and before its sender is answered, which is what SPEC §1.2 and §1.3 need. Live-only
//! events (typing, read watermarks, presence) have no durable record and are published
//! as they are.
//!
//! - [`accounts`]: register, log in, look up users.
//! - [`bots`]: a user's bots and their API keys.
//! - [`messages`]: send, page, search, edit, delete, react.
//! - [`rooms`]: create, list, read, rename, delete, join, leave, members, direct rooms,
//!   read watermarks, the caller's chat list.
//! - [`webhooks`]: a room's webhooks (delivery is `crate::webhooks`').
//! - [`live`]: a socket's connection: subscribe, unsubscribe, typing, presence.

pub mod accounts;
pub mod bots;
pub mod credentials;
mod health;
pub mod live;
pub mod messages;
pub mod push;
pub mod rooms;
pub mod webhooks;

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::trace::SpanKind;
use uuid::Uuid;

/// The store's types that the use cases take and return, under this layer's name: the
/// API surfaces depend on the use cases alone.
pub use crate::store::{
    StoreError,
    bots::OwnedBot,
    messages::PageBounds,
    rooms::ActivityCursor,
    webhooks::{Attempt, Webhook},
};

use crate::{
    auth::{AuthError, Authenticator},
    bus::{Bus, RoomEvent},
    client_address::ClientNetwork,
    config::Limits,
    domain::InvalidInput,
    metrics::Metrics,
    presence::Presence,
    rate_limit::Budget,
    relay::{RelayError, RoomHub},
    store::{
        Store,
        commit::{Committed, OnCommit},
        events::{Recorded, RoomChange},
    },
    telemetry::TraceSpan,
    webhooks::send_hook::SendHook,
};

/// Everything a use case may fail with. Each variant says what happened; the API maps
/// them once to SPEC §5's statuses and codes (`api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The input is invalid; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// What the store decided: not found, not allowed, a conflict, or unavailable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The credential is not good, or cannot be checked now.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller's budget for this action is spent for `retry_after`.
    #[error("too many requests; slow down")]
    RateLimited { retry_after: Duration },
    /// A socket asked for more rooms than it may have.
    #[error("a socket may subscribe to at most {limit} rooms")]
    TooManyRooms { limit: usize },
    /// The user has as many sockets open on this node as they may.
    #[error("at most {limit} open sockets per user; close one first")]
    TooManySockets { limit: usize },
    /// The room's relay on this node cannot take another subscription now.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A login with a wrong username or password (which one is not said).
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Every password hasher is busy; retry shortly.
    #[error("too many logins in progress; retry shortly")]
    HasherBusy,
    /// A WebSocket ticket that is unknown, used or expired.
    #[error("unknown, used or expired ticket; get a new one from POST /v1/ws/tickets")]
    InvalidTicket,
    /// Too many failed logins for this username from this client address lately (SPEC
    /// §10, §18).
    #[error("too many failed logins for this username; retry later")]
    TooManyAttempts { retry_after: Duration },
    /// The before-send hook refused the message; `reason` is the hook's (SPEC §11).
    #[error("{reason}")]
    RejectedByHook { reason: String },
    /// The before-send hook did not give a usable verdict in time, and sends fail
    /// closed; retry shortly.
    #[error("the moderation hook is unavailable; retry shortly")]
    HookUnavailable,
    /// A webhook URL that is not a public http(s) destination (SPEC §11).
    #[error("{0}")]
    WebhookUrlNotAllowed(String),
    /// A push endpoint that is not a destination webhooks could reach (SPEC §14, §11).
    #[error("{0}")]
    PushEndpointNotAllowed(String),
    /// An `fcm` or `apns` subscription while no `PUSH_GATEWAY_URL` is set.
    #[error("native push needs a push gateway (PUSH_GATEWAY_URL), which this cluster has not set")]
    PushGatewayNotConfigured,
    /// A bot asked to create a bot: only people own bots (SPEC §18).
    #[error("a bot cannot create bots; its owner can")]
    BotsCannotCreateBots,
}

/// The use cases and the parts of the node they work with.
pub struct Chat {
    store: Store,
    bus: Bus,
    hub: RoomHub,
    presence: Presence,
    auth: Authenticator,
    /// Sends per user (SPEC §5).
    sends: Budget,
    /// Edits, deletes and reaction changes per user (SPEC §10).
    edits: Budget,
    /// Rooms and direct rooms created per user (SPEC §10).
    creations: Budget,
    /// WebSocket tickets issued per user (SPEC §10): one a second, a burst as large as
    /// the sockets a user may open.
    tickets: Budget,
    /// Subscribes and unsubscribes per socket (SPEC §10).
    subscribes: Budget<crate::relay::SocketId>,
    /// Typing events broadcast per socket; searches and read watermark moves per user
    /// (SPEC §18).
    typing_events: Budget<crate::relay::SocketId>,
    searches: Budget,
    reads: Budget,
    /// Logins, registrations and requests without a credential per client address
    /// (SPEC §18).
    logins_by_address: Budget<ClientNetwork>,
    registrations_by_address: Budget<ClientNetwork>,
    unauthenticated_by_address: Budget<ClientNetwork>,
    /// Open sockets per user on this node (SPEC §10).
    open_sockets: Arc<Mutex<HashMap<Uuid, usize>>>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Numbers this node's sockets, for the relay's subscriber lists.
    socket_ids: AtomicU64,
    /// Asked before each message is stored, when configured (SPEC §11).
    send_hook: Option<Arc<SendHook>>,
    /// Whether webhooks may target private addresses (`WEBHOOK_ALLOW_PRIVATE`).
    webhook_allow_private: bool,
    /// The VAPID key and push gateway (SPEC §14).
    push: push::PushSetup,
}

/// What [`Chat::new`] works with.
pub struct Parts {
    pub store: Store,
    pub bus: Bus,
    pub hub: RoomHub,
    pub presence: Presence,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub send_hook: Option<Arc<SendHook>>,
    pub webhook_allow_private: bool,
    pub push: push::PushSetup,
    /// Woken when messages commit, so webhooks deliver them without waiting for a poll.
    pub webhook_waker: Arc<tokio::sync::Notify>,
}

impl Chat {
    /// Builds the use cases and has the group commit emit each stored message.
    pub fn new(parts: Parts) -> Self {
        let Parts {
            store,
            bus,
            hub,
            presence,
            auth,
            metrics,
            limits,
            send_hook,
            webhook_allow_private,
            push,
            webhook_waker,
        } = parts;
        store.on_commit(Self::on_commit(bus.clone(), metrics.clone(), webhook_waker));
        Self {
            sends: Budget::new(limits.sends_per_second, limits.send_burst),
            edits: Budget::new(limits.edits_per_second, limits.edit_burst),
            creations: per_minute(limits.room_creations_per_minute),
            tickets: Budget::new(1.0, limits.sockets_per_user as u32),
            subscribes: Budget::new(
                f64::from(limits.subscribes_per_second),
                limits.subscribes_per_second,
            ),
            typing_events: per_second(limits.typing_events_per_second),
            searches: per_second(limits.searches_per_second),
            reads: per_second(limits.reads_per_second),
            logins_by_address: per_minute(limits.logins_per_minute_per_address),
            registrations_by_address: per_minute(limits.registrations_per_minute_per_address),
            unauthenticated_by_address: per_second(limits.unauthenticated_per_second_per_address),
            open_sockets: Arc::default(),
            store,
            bus,
            hub,
            presence,
            auth,
            metrics,
            limits,
            socket_ids: AtomicU64::new(1),
            send_hook,
            webhook_allow_private,
            push,
        }
    }

    /// Emits each batch of committed messages once, in `seq` order, each in the trace of
    /// the request that sent it (the publishing half of SPEC §1.3).
    fn on_commit(bus: Bus, metrics: Arc<Metrics>, webhooks: Arc<tokio::sync::Notify>) -> OnCommit {
        Arc::new(move |committed: Vec<Committed>| {
            webhooks.notify_one();
            let (bus, metrics) = (bus.clone(), metrics.clone());
            Box::pin(async move {
                for Committed {
                    message,
                    traceparent,
                    transaction_began,
                } in committed
                {
                    metrics.count_message_stored();
                    let mut commit = TraceSpan::start_at(
                        "postgres commit",
                        SpanKind::Internal,
                        traceparent.as_ref(),
                        bus.node_id(),
                        Some(transaction_began),
                    );
                    commit.set_attribute("natter.room_id", message.room_id.to_string());
                    commit.set_attribute("natter.seq", message.seq);
                    let created = RoomChange::MessageCreated(message);
                    let traceparent = commit.traceparent().clone();
                    crate::telemetry::in_trace(traceparent, publish_change(&bus, &created)).await;
                }
            })
        })
    }

    /// Publishes the change a store mutation recorded, if it made one, and returns the
    /// mutation's answer.
    async fn emit<T>(&self, recorded: Recorded<T>) -> T {
        if let Some(change) = &recorded.change {
            publish_change(&self.bus, change).await;
        }
        recorded.value
    }

    /// Spends one send of `user`'s budget (SPEC §5), or says how long to wait.
    fn meter_send(&self, user: Uuid) -> Result<(), ChatError> {
        meter(&self.sends, user).inspect_err(|_| self.metrics.count_rate_limited())
    }

    fn next_socket_id(&self) -> crate::relay::SocketId {
        self.socket_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Publishes what a stored change tells the room's live subscribers, if anything: the
/// one way a durable change reaches them.
async fn publish_change(bus: &Bus, change: &RoomChange) {
    if let Some(event) = RoomEvent::of(change) {
        bus.publish(&event).await;
    }
}

/// `rate` actions a second per key, `rate` of them at once.
fn per_second<K: Hash + Eq + Clone>(rate: u32) -> Budget<K> {
    Budget::new(f64::from(rate), rate)
}

/// `rate` actions a minute per key, `rate` of them at once.
fn per_minute<K: Hash + Eq + Clone>(rate: u32) -> Budget<K> {
    Budget::new(f64::from(rate) / 60.0, rate)
}

/// Spends one action of `key`'s budget, or says how long to wait.
fn meter<K: Hash + Eq + Clone>(budget: &Budget<K>, key: K) -> Result<(), ChatError> {
    budget
        .check(key)
        .map_err(|wait| ChatError::RateLimited { retry_after: wait })
}
