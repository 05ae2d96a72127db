//! A node: built from [`Settings`], run until a shutdown future resolves.
//!
//! `main.rs` and the integration tests both start nodes through [`Application`], so the
//! tests exercise exactly what production runs (tests bind port 0). Building wires the
//! layers together (Postgres, NATS, the relay, presence, the use cases) and hands the
//! API its [`ApiContext`]; running serves it and, on shutdown, drains (SPEC §1.7).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use poem::{
    Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};
use tokio::sync::watch;

use crate::{
    api::{self, ApiContext},
    auth::{self, Authenticator},
    bus::{Bus, BusError},
    chat::{self, Chat},
    config::Settings,
    listener::ChatAcceptor,
    metrics::{self, Metrics},
    presence::{Presence, PresenceError},
    push::vapid::VapidKey,
    relay::RoomHub,
    store::{Store, StoreError},
    webhooks::{
        deliver::{self, Deliverer, DeliveryMetrics},
        send_hook::SendHook,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error("the VAPID key kept in the database: {0}")]
    VapidKey(#[from] crate::push::vapid::BadVapidKey),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The key that signs Web Push requests: `VAPID_PRIVATE_KEY`, else the one the first
/// node generated and stored, the same on every node and across restarts (SPEC §14).
async fn vapid_key(settings: &Settings, store: &Store) -> Result<VapidKey, StartError> {
    if let Some(key) = &settings.push.vapid_key {
        return Ok(key.clone());
    }
    let pkcs8 = store.vapid_key(&VapidKey::generate_pkcs8()).await?;
    Ok(VapidKey::from_pkcs8(
        &pkcs8,
        settings.push.vapid_subject.clone(),
    )?)
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
    /// What the routes work with.
    context: ApiContext,
    /// Turns `true` once shutdown begins: `/readyz` steers the load balancer away, new
    /// sockets are refused and open ones close (SPEC §1.7).
    shutdown: watch::Sender<bool>,
    /// Asked to publish the last presence changes before the node exits.
    presence: Presence,
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
        let live = metrics::LiveValues {
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
        metrics_registry.register(
            "natter_credential_lookups",
            "Postgres lookups of bot keys and WebSocket tickets (unknown ones are remembered for 60 s)",
            auth.credential_lookups(),
        );
        let push = chat::push::PushSetup {
            vapid: Arc::new(vapid_key(&settings, &store).await?),
            gateway_url: settings.push.gateway_url.clone(),
        };
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
            push,
            webhook_waker,
        });
        let context = ApiContext::new(
            settings,
            chat,
            metrics,
            metrics_registry,
            shutdown.subscribe(),
        );
        Ok(Self {
            acceptor,
            local_addr,
            metrics: metrics_listener,
            context,
            shutdown,
            presence,
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
        let context = self.context.clone();
        let (draining, presence) = (self.shutdown, self.presence);
        let signal = async move {
            shutdown.await;
            tracing::info!("draining");
            draining.send_replace(true);
            // Sockets are upgraded connections the server no longer tracks: give them
            // time to send their 1012 before the server stops.
            let closed = async {
                while context.metrics.sockets_open() > 0 {
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
            presence.flush(PRESENCE_FLUSH_GRACE).await;
        };
        tracing::info!(addr = %self.local_addr, node_id = %self.context.settings.node_id, "serving");
        // Scrapes need no drain: the metrics listener ends with the node.
        let metrics = self.metrics.map(|(acceptor, addr)| {
            tracing::info!(%addr, "serving /metrics");
            let routes = api::metrics_routes(self.context.clone());
            tokio::spawn(Server::new_with_acceptor(acceptor).run(routes))
        });
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(api::routes(self.context), signal, Some(SHUTDOWN_GRACE))
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
