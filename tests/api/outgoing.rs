//! SPEC §11 and §18: what an attacker can try with the requests a node makes for them
//! (webhook deliveries and the before-send hook) — reach an internal address through a
//! proxy or an IPv6 form of it, map internal names and ports from refusals and the
//! delivery log — and SPEC §6's promise that nodes configured with `WEBHOOKS` may all
//! start at once.

use std::sync::Arc;

use serde_json::json;

use crate::helpers::{create_database, settings, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_nodes_with_the_same_webhooks_started_at_once_all_start() {
    let database_url = create_database().await;
    // Migrated first, so the ten do not queue behind the migration lock and reach the
    // registration of WEBHOOKS together.
    let first = spawn_node(settings(&database_url)).await;
    const ROUNDS: usize = 5;
    const ENTRIES: usize = 20;
    for round in 0..ROUNDS {
        let config: Vec<_> = (0..ENTRIES)
            .map(|entry| {
                json!({
                    "url": format!("http://127.0.0.1:9/{round}/{entry}"),
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                })
            })
            .collect();
        let config = json!(config).to_string();
        let starts = (0..10).map(|_| {
            let mut node = settings(&database_url);
            node.webhook_allow_private = true;
            node.webhooks = natter::webhooks::parse_cluster_webhooks(&config, true).unwrap();
            let node = natter::app::Application::build(node);
            async move { node.await.map(drop).map_err(|err| err.to_string()) }
        });
        let results = futures_util::future::join_all(starts).await;
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "round {round}: nodes failed to start: {failed:?}"
        );
    }
    let webhooks: i64 = first
        .db()
        .await
        .query_one("SELECT count(*) FROM webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(webhooks, (ROUNDS * ENTRIES) as i64);
}

/// The same race as above, narrowed to what lost it: many nodes' registrations of one
/// `WEBHOOKS` entry at the same instant, many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registering_one_webhooks_entry_from_many_nodes_at_the_same_instant_never_fails() {
    let database_url = create_database().await;
    let first = spawn_node(settings(&database_url)).await;
    const NODES: usize = 12;
    let stores: Vec<natter::store::Store> = (0..NODES)
        .map(|_| natter::store::Store::connect(&database_url, 1, None).unwrap())
        .collect();
    for round in 0..100 {
        let id = uuid::Uuid::new_v4();
        let url = format!("http://127.0.0.1:9/{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(NODES));
        let registrations = stores.iter().cloned().map(|store| {
            let (barrier, url) = (barrier.clone(), url.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .ensure_cluster_webhook(id, &url, None, b"0123456789abcdef0123456789abcdef")
                    .await
                    .map_err(|err| format!("{err:?}"))
            })
        });
        for result in futures_util::future::join_all(registrations).await {
            if let Err(err) = result.unwrap() {
                panic!("round {round}: a registration failed: {err}");
            }
        }
    }
    let webhooks: i64 = first
        .db()
        .await
        .query_one("SELECT count(*) FROM webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(webhooks, 100);
}
