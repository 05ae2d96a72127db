//! A node: built from [`Settings`], run until a shutdown future resolves.
//!
//! `main.rs` and the integration tests both start nodes through [`Application`], so the
//! tests exercise exactly what production runs (tests bind port 0).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use poem::{
    Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, registry::Registry};
use tokio::sync::watch;

use crate::{
    api,
    auth::{self, Authenticator},
    bus::{Bus, BusError},
    chat::{self, Chat},
    config::Settings,
    listener::ChatAcceptor,
    metrics::{self, Metrics},
    presence::{Presence, PresenceError},
    relay::RoomHub,
    store::{Store, StoreError},
    webhooks::{
        deliver::{self, Deliverer, DeliveryMetrics},
        send_hook::SendHook,
    },
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
    /// The use cases: everything a client does goes through here.
    pub chat: Chat,
    /// Every series `/metrics` exports.
    metrics_registry: Registry,
    /// Turns bearer tokens into callers.
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    /// Turns `true` once shutdown begins: `/readyz` steers the load balancer away, new
    /// sockets are refused and open ones close with 1012.
    pub shutdown: watch::Sender<bool>,
    // The layers below the use cases, for the operational routes only.
    store: Store,
    bus: Bus,
    presence: Presence,
}

impl Node {
    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Whether Postgres and NATS are reachable now, for `/readyz`.
    pub async fn dependencies_reachable(&self) -> (bool, bool) {
        tokio::join!(self.store.ping(), async { self.bus.is_connected() })
    }

    /// `/metrics`: every series, as OpenMetrics text.
    pub fn render_metrics(&self) -> String {
        metrics::render(&self.metrics_registry)
    }
}

/// What `/metrics` reads from the layers at each scrape rather than counts.
struct LiveValues {
    store: Store,
    bus: Bus,
    hub: RoomHub,
    draining: watch::Receiver<bool>,
}

impl std::fmt::Debug for LiveValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveValues")
    }
}

impl Collector for LiveValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let counters = [
            (
                "natter_db_errors",
                "Postgres failures: pool checkouts and failed group commits",
                self.store.failures(),
            ),
            (
                "natter_db_connections_opened",
                "Postgres connections opened (beyond the pool's first, reconnects after failures)",
                self.store.connections_opened(),
            ),
            (
                "natter_nats_errors",
                "NATS failures: disconnections, failed publishes and subscriptions",
                self.bus.failures(),
            ),
        ];
        let (from_standby, from_primary) = self.store.standby_reads();
        let (access_checks, access_queries) = self.store.subscription_checks();
        let counters = counters.into_iter().chain([
            (
                "natter_subscription_access_checks",
                "Subscriptions whose access was checked in Postgres (public rooms served here need none)",
                access_checks,
            ),
            (
                "natter_subscription_access_queries",
                "Queries that answered those checks, many checks each in a burst",
                access_queries,
            ),
            (
                "natter_db_reads_from_standby",
                "Reads the standby (DATABASE_READ_URL) served, caught up",
                from_standby,
            ),
            (
                "natter_db_reads_from_primary",
                "Reads meant for the standby that the primary served (behind or down)",
                from_primary,
            ),
        ]);
        for (name, help, value) in counters {
            metrics::encode_counter(&mut encoder, name, help, value)?;
        }
        let pool = self.store.pool_status();
        let gauges = [
            (
                "natter_subscriptions",
                "Live room subscriptions of this node's sockets",
                self.hub.subscriptions() as i64,
            ),
            (
                "natter_rooms_relayed",
                "Rooms with a live subscription on this node",
                self.hub.active_rooms() as i64,
            ),
            (
                "natter_relay_nats_subscriptions",
                "NATS subscriptions of the relay: one per room shard it serves a room in",
                self.hub.nats_subscriptions() as i64,
            ),
            (
                "natter_db_pool_size",
                "Postgres connections open",
                pool.size as i64,
            ),
            (
                "natter_db_pool_available",
                "Idle Postgres connections",
                pool.available as i64,
            ),
            (
                "natter_db_pool_waiting",
                "Callers waiting for a Postgres connection",
                pool.waiting as i64,
            ),
            (
                "natter_nats_connected",
                "1 while connected to NATS",
                i64::from(self.bus.is_connected()),
            ),
            (
                "natter_draining",
                "1 once the node has begun its graceful drain",
                i64::from(*self.draining.borrow()),
            ),
        ];
        for (name, help, value) in gauges {
            metrics::encode_gauge(&mut encoder, name, help, value)?;
        }
        Ok(())
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
    /// `METRICS_ADDR`'s listener, and the address it bound.
    metrics: Option<(TcpAcceptor, SocketAddr)>,
    state: AppState,
}

impl Application {
    /// Connects to Postgres (migrating it) and NATS, and binds the listener.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let mut store = Store::connect(
            &settings.database_url,
            settings.database_pool_size,
            settings.database_ca_file.as_deref(),
        )?;
        if let Some(read_url) = &settings.database_read_url {
            store = store.with_standby(
                read_url,
                settings.database_pool_size,
                settings.database_ca_file.as_deref(),
            )?;
        }
        migrate_when_reachable(&store).await?;
        let bus = Bus::connect(
            &settings.nats_url,
            &settings.nats_auth,
            &settings.node_id,
            &settings.nats_prefix,
        )
        .await?;
        let signing_key = auth::local_signing_key(&settings.auth, &store).await?;
        let auth = Authenticator::new(&settings.auth, &signing_key, store.clone());
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
        let local_addr = bound_addr(&acceptor, settings.listen_addr);
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => {
                let acceptor = TcpListener::bind(addr)
                    .into_acceptor()
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?;
                let bound = bound_addr(&acceptor, addr);
                Some((acceptor, bound))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let (shutdown, draining) = watch::channel(false);
        let live = LiveValues {
            store: store.clone(),
            bus: bus.clone(),
            hub: hub.clone(),
            draining,
        };
        let send_hook = settings
            .send_hook
            .clone()
            .map(|hook| Arc::new(SendHook::new(hook)));
        for hook in &settings.webhooks {
            let id = deliver::cluster_webhook_id(&hook.url, &hook.secret);
            let events = hook.events.as_deref();
            store
                .ensure_cluster_webhook(id, &hook.url, events, hook.secret.as_bytes())
                .await?;
        }
        let delivery_metrics = DeliveryMetrics::default();
        let deliverer = Deliverer::new(
            store.clone(),
            settings.node_id.clone(),
            settings.webhook_allow_private,
            delivery_metrics.clone(),
        );
        let webhook_waker = deliverer.waker();
        tokio::spawn(deliverer.run(shutdown.subscribe()));
        let mut metrics_registry = metrics::registry(
            &settings.node_id,
            &metrics,
            hub.stats(),
            store.commit_timings(),
            live,
        );
        if let Some(hook) = &send_hook {
            metrics::register_send_hook(&mut metrics_registry, hook);
        }
        metrics::register_webhooks(&mut metrics_registry, &delivery_metrics);
        let chat = Chat::new(chat::Parts {
            store: store.clone(),
            bus: bus.clone(),
            hub: hub.clone(),
            presence: presence.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
            limits: settings.limits.clone(),
            send_hook,
            webhook_allow_private: settings.webhook_allow_private,
            webhook_waker,
        });
        let state = AppState(Arc::new(Node {
            settings,
            chat,
            metrics_registry,
            auth,
            metrics,
            shutdown,
            store,
            bus,
            presence,
        }));
        Ok(Self {
            acceptor,
            local_addr,
            metrics: metrics_listener,
            state,
        })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served when `METRICS_ADDR` is set (the real port).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
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
        // Scrapes need no drain: the metrics listener ends with the node.
        let metrics = self.metrics.map(|(acceptor, addr)| {
            tracing::info!(%addr, "serving /metrics");
            let routes = api::metrics_routes(self.state.clone());
            tokio::spawn(Server::new_with_acceptor(acceptor).run(routes))
        });
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(api::routes(self.state), signal, Some(SHUTDOWN_GRACE))
            .await;
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        served
    }
}

/// The address `acceptor` really bound (the port chosen for port 0), else `configured`.
fn bound_addr(acceptor: &impl Acceptor, configured: SocketAddr) -> SocketAddr {
    acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .unwrap_or(configured)
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
