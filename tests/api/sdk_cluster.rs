//! The cluster both SDKs' suites run against (SPEC §13): three nodes on one database
//! (two of them processes, one to SIGKILL and one to drain with SIGTERM), a node whose
//! tokens live 3 s and one that closes a socket 64 events behind (4008). A suite finds
//! them through the `NATTER_SDK_*` variables [`SdkCluster::describe`] sets.
//!
//! SDK clients open their sockets with tickets, never with a token in the URL:
//! [`TokenUrlWatch`] reads every node's `natter_websocket_tokens_in_urls` while the
//! suite runs and at its end, and fails the test unless it stayed 0 everywhere.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{process::Command, task::JoinHandle};

use crate::helpers::{NodeProcess, TestApp, run_within, settings, spawn_app_with, spawn_node};

/// Builds the TypeScript SDK from this commit's sources into `out` (`bash
/// clients/typescript/build --out OUT`: `index.js`, `index.d.ts` and the browser bundle
/// `natter.js`), or fails the test with the build's output. Tests that run at once each
/// build into a directory of their own.
pub async fn build_typescript_sdk(out: &std::path::Path) {
    let build = run_within(
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/typescript/build"
            ))
            .arg("--out")
            .arg(out),
        Duration::from_secs(120),
        "the TypeScript SDK's build",
    )
    .await;
    assert!(
        build.status.success(),
        "bash clients/typescript/build failed (apt-get install node-typescript esbuild \
         node-ws, or run through `bash tests/run`):\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
}

pub struct SdkCluster {
    /// Stays up throughout; the last of `NATTER_SDK_NODES`.
    pub survivor: TestApp,
    pub killed: NodeProcess,
    pub drained: NodeProcess,
    pub short_lived: TestApp,
    pub slow: TestApp,
    watch: TokenUrlWatch,
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
        let watch = TokenUrlWatch::start(vec![
            killed.addr,
            drained.addr,
            survivor.addr,
            short_lived.addr,
            slow.addr,
        ]);
        Self {
            survivor,
            killed,
            drained,
            short_lived,
            slow,
            watch,
        }
    }

    /// Ends the cluster's test: no node saw a token in a WebSocket URL.
    pub async fn assert_no_token_in_any_url(self, suite: &str) {
        self.watch.assert_none(suite).await;
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

/// The counts of how a node's sockets were authenticated, from its `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct SocketAuth {
    tickets: f64,
    tokens_in_urls: f64,
}

async fn read_socket_auth(http: &reqwest::Client, node: SocketAddr) -> Option<SocketAuth> {
    let text = http
        .get(format!("http://{node}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(&format!("{name}{{")))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
    };
    Some(SocketAuth {
        tickets: value("natter_websocket_tickets_redeemed_total")?,
        tokens_in_urls: value("natter_websocket_tokens_in_urls_total")?,
    })
}

/// Reads `natter_websocket_tokens_in_urls` (and the tickets redeemed) on each node every
/// 100 ms, so a node a test kills is counted as of its last reading, and once more at
/// the end on every node still up. A killed node's last 100 ms go unread.
pub struct TokenUrlWatch {
    nodes: Vec<SocketAddr>,
    last: Arc<Mutex<HashMap<SocketAddr, SocketAuth>>>,
    poller: JoinHandle<()>,
}

impl TokenUrlWatch {
    pub fn start(nodes: Vec<SocketAddr>) -> Self {
        let last = Arc::new(Mutex::new(HashMap::new()));
        let poller = tokio::spawn({
            let (nodes, last) = (nodes.clone(), last.clone());
            async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                loop {
                    for &node in &nodes {
                        if let Some(counts) = read_socket_auth(&http, node).await {
                            last.lock().unwrap().insert(node, counts);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            nodes,
            last,
            poller,
        }
    }

    /// Fails unless every node was read at least once, none counted a token in a URL,
    /// and the sockets were opened at all (some ticket was redeemed).
    pub async fn assert_none(self, what: &str) {
        self.poller.abort();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut last = self.last.lock().unwrap().clone();
        for &node in &self.nodes {
            if let Some(counts) = read_socket_auth(&http, node).await {
                last.insert(node, counts);
            }
        }
        for node in &self.nodes {
            let counts = last
                .get(node)
                .unwrap_or_else(|| panic!("{what}: /metrics of {node} was never read"));
            assert_eq!(
                counts.tokens_in_urls, 0.0,
                "{what}: node {node} authenticated a socket by a token in its URL"
            );
        }
        let tickets: f64 = last.values().map(|counts| counts.tickets).sum();
        assert!(tickets > 0.0, "{what}: no socket was opened with a ticket");
        println!(
            "{what}: natter_websocket_tokens_in_urls 0 on all {} nodes; {tickets} tickets redeemed",
            self.nodes.len()
        );
    }
}
