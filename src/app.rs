//! A node: built from [`Settings`], run until a shutdown future resolves.
//!
//! `main.rs` and the integration tests both start nodes through [`Application`], so the
//! tests exercise exactly what production runs (tests bind port 0).

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::trace::SpanKind;
use poem::{Server, listener::Acceptor};
use tokio::sync::watch;

use crate::{
    api,
    auth::Authenticator,
    bus::{Bus, BusError, RoomEvent},
    config::Settings,
    listener::ChatAcceptor,
    metrics::Metrics,
    presence::{Presence, PresenceError},
    rate_limit::SendLimiter,
    relay::{RoomHub, SocketId},
    store::{
        Store, StoreError,
        commit::{Committed, OnCommit},
    },
    telemetry::TraceSpan,
};

/// Everything a request handler may need: one shared [`Node`]. Cloning it is one
/// reference count (every socket's two tasks hold one).
#[derive(Clone)]
pub struct AppState(Arc<Node>);

impl std::ops::Deref for AppState {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.0
    }
}

/// The node's shared parts.
pub struct Node {
    pub settings: Settings,
    pub store: Store,
    pub bus: Bus,
    pub auth: Authenticator,
    pub limiter: SendLimiter,
    pub metrics: Arc<Metrics>,
    pub hub: RoomHub,
    pub presence: Presence,
    /// Turns `true` once shutdown begins: `/readyz` steers the load balancer away, new
    /// sockets are refused and open ones close with 1012.
    pub shutdown: watch::Sender<bool>,
    socket_ids: AtomicU64,
}

impl Node {
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn next_socket_id(&self) -> SocketId {
        self.socket_ids.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long start-up keeps retrying a database that is not up yet.
const DATABASE_STARTUP_WAIT: Duration = Duration::from_secs(30);
/// Connections with no traffic either way for this long are closed (see
/// [`crate::listener`]); sockets are pinged well within this.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open sockets get to close with 1012 once shutdown begins.
const SOCKET_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the last presence changes get to reach the KV bucket once sockets closed.
const PRESENCE_FLUSH_GRACE: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A built node, bound to its port but not yet serving.
pub struct Application {
    acceptor: ChatAcceptor,
    local_addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Connects to Postgres (migrating it) and NATS, and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let store = Store::connect(
            &settings.database_url,
            settings.database_pool_size,
            settings.database_ca_file.as_deref(),
        )?;
        migrate_when_reachable(&store).await?;
        let bus =
            Bus::connect(&settings.nats_url, &settings.node_id, &settings.nats_prefix).await?;
        let auth = Authenticator::new(&settings.auth, store.clone());
        let hub = RoomHub::new(store.clone(), bus.clone(), settings.reorder_wait);
        let presence = Presence::start(
            &bus,
            &settings.node_id,
            settings.presence_ttl,
            settings.presence_replicas,
            hub.clone(),
        )
        .await?;
        let acceptor = ChatAcceptor::bind(
            settings.listen_addr,
            IDLE_CONNECTION_TIMEOUT,
            settings.limits.request_read_timeout,
        )
        .map_err(|source| StartError::Listen {
            addr: settings.listen_addr,
            source,
        })?;
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(settings.listen_addr);
        let metrics = Arc::new(Metrics::default());
        store.on_commit(publish_committed(
            bus.clone(),
            metrics.clone(),
            settings.node_id.as_str().into(),
        ));
        let state = AppState(Arc::new(Node {
            limiter: SendLimiter::new(settings.limits.sends_per_second, settings.limits.send_burst),
            settings,
            store,
            bus,
            auth,
            metrics,
            hub,
            presence,
            shutdown: watch::channel(false).0,
            socket_ids: AtomicU64::new(1),
        }));
        Ok(Self {
            acceptor,
            local_addr,
            state,
        })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then drains (SPEC §1.7): marks the node as
    /// draining, closes every socket with 1012 so clients resume elsewhere, stops
    /// accepting and gives in-flight requests [`SHUTDOWN_GRACE`] to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("draining");
            state.shutdown.send_replace(true);
            // Sockets are upgraded connections the server no longer tracks: give them
            // time to send their 1012 before the server stops.
            let closed = async {
                while state.metrics.sockets_open() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            if tokio::time::timeout(SOCKET_CLOSE_GRACE, closed)
                .await
                .is_err()
            {
                tracing::warn!("some sockets did not close in time");
            }
            // Other nodes should see this node's users leave now, not at lease expiry.
            state.presence.flush(PRESENCE_FLUSH_GRACE).await;
        };
        tracing::info!(addr = %self.local_addr, node_id = %self.state.settings.node_id, "serving");
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(api::routes(self.state), signal, Some(SHUTDOWN_GRACE))
            .await
    }
}

/// Publishes each batch of committed messages once, in `seq` order, each in the trace of
/// the request that sent it (the publishing half of SPEC §1.3).
fn publish_committed(bus: Bus, metrics: Arc<Metrics>, node_id: Arc<str>) -> OnCommit {
    Arc::new(move |committed: Vec<Committed>| {
        let (bus, metrics, node_id) = (bus.clone(), metrics.clone(), node_id.clone());
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
                    &node_id,
                    Some(transaction_began),
                );
                commit.set_attribute("natter.room_id", message.room_id.to_string());
                commit.set_attribute("natter.seq", message.seq);
                let event = RoomEvent::message(&message);
                let traceparent = commit.traceparent().clone();
                crate::telemetry::in_trace(traceparent, bus.publish(&event)).await;
            }
        })
    })
}

/// Applies migrations, retrying while the database is still starting.
async fn migrate_when_reachable(store: &Store) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + DATABASE_STARTUP_WAIT;
    loop {
        match store.migrate().await {
            Err(StoreError::Unavailable(cause)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%cause, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}
