//! The NATS connection that carries room events between nodes.
//!
//! Connecting never blocks start-up on NATS: the client keeps retrying in the
//! background, and `/readyz` reports the node unready until it is connected.

use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid NATS_URL: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
}

impl Bus {
    /// Connects to the comma-separated servers of `urls`.
    pub async fn connect(urls: &str, node_id: &str) -> Result<Self, BusError> {
        let servers = urls
            .split(',')
            .map(|u| u.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::InvalidUrl(e.to_string()))?;
        let client = ConnectOptions::new()
            .name(format!("natter:{node_id}"))
            .connection_timeout(Duration::from_secs(3))
            .retry_on_initial_connect()
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
        Ok(Self { client })
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
