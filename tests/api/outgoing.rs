//! SPEC §11 and §18: what an attacker can try with the requests a node makes for them
//! (webhook deliveries and the before-send hook) — reach an internal address through a
//! proxy or an IPv6 form of it, map internal names and ports from refusals and the
//! delivery log — and SPEC §6's promise that nodes configured with `WEBHOOKS` may all
//! start at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use poem::{
    IntoResponse, Route, Server, handler,
    listener::{Acceptor, Listener, TcpListener},
    post,
};
use reqwest::Method;
use serde_json::json;

use crate::{
    helpers::{
        NodeProcess, TestApp, create_database, free_port, settings, spawn_app_with, spawn_node,
    },
    webhooks::{Receiver, create_webhook},
};

/// A listener that counts the connections made to it and answers none: a proxy that
/// must never be used.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (format!("http://{addr}"), connections)
}

#[handler]
async fn allow_everything() -> impl IntoResponse {
    poem::web::Json(json!({"action": "allow"}))
}

/// A before-send hook that allows every message; its URL.
async fn allowing_hook() -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    tokio::spawn(
        Server::new_with_acceptor(acceptor).run(Route::new().at("/check", post(allow_everything))),
    );
    format!("http://{addr}/check")
}

#[tokio::test]
async fn webhook_deliveries_and_the_send_hook_never_go_through_a_proxy_from_the_environment() {
    let receiver = Receiver::start().await;
    let (proxy, proxied) = counting_listener().await;
    let hook = allowing_hook().await;
    let database_url = create_database().await;
    let nats = std::env::var("NATTER_TEST_NATS_URL").unwrap();
    let prefix = database_url.rsplit('/').next().unwrap().to_string();
    let node = NodeProcess::start_with(&database_url, &nats, &prefix, |command| {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            command.env(name, &proxy).env(name.to_lowercase(), &proxy);
        }
        command
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env("WEBHOOK_ALLOW_PRIVATE", "true")
            .env("SEND_HOOK_URL", &hook);
    })
    .await;
    let api = TestApp::at(node.addr, &database_url);
    let alice = api.register("alice").await;
    let room = api.create_room(&alice, "r", "public").await;
    create_webhook(&api, &alice.token, room, &receiver.url()).await;

    // The hook is asked directly (through the proxy it would fail, and the send with it).
    api.post_message(&alice.token, room, "hello")
        .await
        .assert_status(201);
    let got = receiver
        .wait_for(Duration::from_secs(15), |r| !r.is_empty())
        .await;
    assert_eq!(got[0].event()["type"], "message.created");
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "a request went to the proxy"
    );
}

#[tokio::test]
async fn webhooks_to_ipv6_forms_of_internal_ipv4_addresses_and_special_ranges_are_refused() {
    let app = spawn_app_with(|_| {}).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let path = format!("/v1/rooms/{room}/webhooks");
    for url in [
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::a00:1]/hook",
        "http://[::127.0.0.1]/hook",
        "http://[::ffff:0:7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
        "http://[fec0::1]/hook",
        "http://198.18.0.1/hook",
        "http://192.0.0.1/hook",
    ] {
        let reply = app
            .call(
                Method::POST,
                &path,
                Some(&alice.token),
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (400, "webhook_url_not_allowed"),
            "{url}: {}",
            reply.body
        );
    }
    let count: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_refused_webhook_url_does_not_tell_an_internal_name_from_one_that_does_not_resolve() {
    let app = spawn_app_with(|_| {}).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let path = format!("/v1/rooms/{room}/webhooks");
    let mut messages = Vec::new();
    for url in [
        "http://localhost:5432/hook",
        "http://no-such-host.invalid/hook",
        "http://10.0.0.8/hook",
    ] {
        let reply = app
            .call(
                Method::POST,
                &path,
                Some(&alice.token),
                Some(json!({"url": url})),
            )
            .await;
        assert_eq!(reply.error_code(), "webhook_url_not_allowed", "{url}");
        messages.push(reply.body["error"]["message"].clone());
    }
    assert!(
        messages.iter().all(|m| *m == messages[0]),
        "refusals differ: {messages:?}"
    );
    let text = messages[0].as_str().unwrap();
    assert!(text.contains("not allowed"), "{text}");
    for detail in ["127.0.0.1", "::1", "resolve", "10.0.0.8"] {
        assert!(!text.contains(detail), "{text} mentions {detail}");
    }
}

/// The delivery log's latest `error`, once there is one.
async fn latest_error(app: &TestApp, token: &str, path: &str) -> String {
    let started = Instant::now();
    loop {
        let log = app.get(path, token).await;
        log.assert_status(200);
        if let Some(error) = log.body["deliveries"][0]["error"].as_str() {
            return error.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no failed attempt: {}",
            log.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_delivery_log_says_only_what_kind_of_failure_an_attempt_met() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| s.webhook_allow_private = true).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    // TLS to a server that speaks plain HTTP.
    let not_tls = format!("https://{}/hook", receiver.addr);
    let (to_closed, _) = create_webhook(&app, &alice.token, room, &closed).await;
    let (to_plain, _) = create_webhook(&app, &alice.token, room, &not_tls).await;
    app.send(&alice, room, "hello").await;
    let path = |webhook| format!("/v1/rooms/{room}/webhooks/{webhook}/deliveries");
    assert_eq!(
        latest_error(&app, &alice.token, &path(to_closed)).await,
        "connect failed"
    );
    assert_eq!(
        latest_error(&app, &alice.token, &path(to_plain)).await,
        "tls failed"
    );
}

#[tokio::test]
async fn a_deleted_webhooks_metric_series_leave_metrics() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(|s| s.webhook_allow_private = true).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let (webhook, _) = create_webhook(&app, &alice.token, room, &receiver.url()).await;
    app.send(&alice, room, "hello").await;
    receiver
        .wait_for(Duration::from_secs(15), |r| !r.is_empty())
        .await;
    let series = format!("webhook=\"{webhook}\"");
    let started = Instant::now();
    while !app.metrics().await.contains(&series) {
        assert!(started.elapsed() < Duration::from_secs(10), "no {series}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    app.call(
        Method::DELETE,
        &format!("/v1/rooms/{room}/webhooks/{webhook}"),
        Some(&alice.token),
        None,
    )
    .await
    .assert_status(204);
    let started = Instant::now();
    while app.metrics().await.contains(&series) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{series} outlived its webhook"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
