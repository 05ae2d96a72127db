//! The cluster both SDKs' suites run against (SPEC §13): three nodes on one database
//! (two of them processes, one to SIGKILL and one to drain with SIGTERM), a node whose
//! tokens live 3 s and one that closes a socket 64 events behind (4008). A suite finds
//! them through the `NATTER_SDK_*` variables [`SdkCluster::describe`] sets.

use std::time::Duration;

use tokio::process::Command;

use crate::helpers::{NodeProcess, TestApp, settings, spawn_app_with, spawn_node};

pub struct SdkCluster {
    /// Stays up throughout; the last of `NATTER_SDK_NODES`.
    pub survivor: TestApp,
    pub killed: NodeProcess,
    pub drained: NodeProcess,
    pub short_lived: TestApp,
    pub slow: TestApp,
}

impl SdkCluster {
    pub async fn start() -> Self {
        let survivor = spawn_app_with(|s| {
            // The slow-reader case sends 1,200 messages at once.
            s.limits.sends_per_second = 10_000.0;
            s.limits.send_burst = 10_000;
            s.webhook_allow_private = true;
        })
        .await;
        let cluster = settings(&survivor.database_url);
        let start = || {
            NodeProcess::start_with(
                &survivor.database_url,
                &cluster.nats_url,
                &cluster.nats_prefix,
                |command| {
                    command.env("WEBHOOK_ALLOW_PRIVATE", "true");
                },
            )
        };
        let (killed, drained) = tokio::join!(start(), start());
        let mut short_lived = settings(&survivor.database_url);
        short_lived.auth.token_ttl = Duration::from_secs(3);
        let short_lived = spawn_node(short_lived).await;
        let mut slow = settings(&survivor.database_url);
        slow.limits.outbound_queue = 64;
        let slow = spawn_node(slow).await;
        Self {
            survivor,
            killed,
            drained,
            short_lived,
            slow,
        }
    }

    /// Tells a suite where the nodes are: `NATTER_SDK_NODES` (the one to kill, the one
    /// to drain, the survivor), the two PIDs, and the short-token and slow nodes.
    pub fn describe<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let nodes = [self.killed.addr, self.drained.addr, self.survivor.addr]
            .map(|addr| format!("http://{addr}"))
            .join(",");
        let pid = |node: &NodeProcess| node.child.id().expect("runs").to_string();
        command
            .env("NATTER_SDK_NODES", nodes)
            .env("NATTER_SDK_KILL_PID", pid(&self.killed))
            .env("NATTER_SDK_DRAIN_PID", pid(&self.drained))
            .env(
                "NATTER_SDK_SHORT_TOKEN_URL",
                format!("http://{}", self.short_lived.addr),
            )
            .env("NATTER_SDK_SLOW_URL", format!("http://{}", self.slow.addr))
    }
}
