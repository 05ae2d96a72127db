//! What the operational routes ask of the node's dependencies.

use super::Chat;

impl Chat {
    /// Whether Postgres and NATS are reachable now, for `/readyz`.
    pub async fn dependencies_reachable(&self) -> (bool, bool) {
        tokio::join!(self.store.ping(), async { self.bus.is_connected() })
    }
}
