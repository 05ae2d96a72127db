//! What every handler works with: the use cases ([`Chat`]), the node's settings, its
//! counters and whether it is draining. Built once by `app` and attached to every route
//! with poem's `.data(..)`; cloning it is one reference count (every socket's two tasks
//! hold one).

use std::{ops::Deref, sync::Arc};

use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{chat::Chat, config::Settings, metrics::Metrics};

#[derive(Clone)]
pub struct ApiContext(Arc<Shared>);

/// The parts of the node the API reaches.
pub struct Shared {
    pub settings: Settings,
    /// The use cases: everything a client does goes through here.
    pub chat: Chat,
    /// The API's own counters (sockets, tickets, responses).
    pub metrics: Arc<Metrics>,
    /// Every series `/metrics` exports.
    registry: Registry,
    /// Turns `true` once the node begins its drain: `/readyz` steers the balancer away,
    /// new sockets are refused and open ones close (SPEC §1.7).
    draining: watch::Receiver<bool>,
}

impl Deref for ApiContext {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ApiContext {
    pub fn new(
        settings: Settings,
        chat: Chat,
        metrics: Arc<Metrics>,
        registry: Registry,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(Shared {
            settings,
            chat,
            metrics,
            registry,
            draining,
        }))
    }
}

impl Shared {
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once the node begins its drain (borrowing nothing, so a session can
    /// wait on it for its whole life).
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.clone();
        async move {
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }

    /// `/metrics`: every series, as OpenMetrics text.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(&self.registry)
    }
}
