//! Operational behaviour: health, readiness, metrics, the OpenAPI document, migrations
//! under concurrent start-up, 503 while Postgres is unreachable, and the indexes.

use std::{net::SocketAddr, time::Duration};

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    WsClient, create_database, cuttable_proxy, settings, spawn_app, spawn_app_with, spawn_node,
};

#[tokio::test]
async fn health_readiness_and_metrics_answer_without_auth() {
    let app = spawn_app().await;
    let health = app.http().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready =
        crate::helpers::reply(app.http().get(app.url("/readyz")).send().await.unwrap()).await;
    ready.assert_status(200);
    assert_eq!(ready.body["database"], true);
    assert_eq!(ready.body["nats"], true);

    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    app.send(&alice, room, "counted").await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("natter_http_responses_total{"),
        "{metrics}"
    );
    let stored = metrics
        .lines()
        .find(|l| l.starts_with("natter_messages_stored_total{"))
        .unwrap();
    assert!(stored.ends_with(" 1"), "{stored}");
}

#[tokio::test]
async fn metrics_follow_sockets_subscriptions_and_fan_out_across_nodes() {
    let first = spawn_app().await;
    let second = spawn_node(settings(&first.database_url)).await;
    let alice = first.register("alice").await;
    let room = first.create_room(&alice, "r", "public").await;
    let mut ws = WsClient::connect(second.addr, "/v1/ws", &alice.token).await;
    ws.subscribe(room, None).await;
    assert_eq!(second.metric("natter_websockets_open{").await, 1.0);
    assert_eq!(
        second.metric("natter_websocket_connections_total{").await,
        1.0
    );
    assert_eq!(second.metric("natter_subscriptions{").await, 1.0);
    assert_eq!(second.metric("natter_rooms_relayed{").await, 1.0);

    first.send(&alice, room, "counted").await;
    assert_eq!(ws.message_seqs(1).await, vec![1]);
    assert_eq!(first.metric("natter_messages_stored_total{").await, 1.0);
    // One send, one batch: its wait for a writer and its transaction were timed.
    let queue_waits = first.metric("natter_send_queue_wait_seconds_count{").await;
    let transactions = first.metric("natter_send_transaction_seconds_count{").await;
    assert_eq!((queue_waits, transactions), (1.0, 1.0));
    // The NATS copy may arrive after the delivery: on a loaded machine the relay's
    // catch-up tick can land between the commit and NATS, deliver the message from
    // Postgres (one gap repair) and drop the NATS copy as a duplicate when it comes.
    let received = async {
        while second.metric("natter_events_received_total{").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), received)
        .await
        .expect("the message arrives over NATS");
    assert!(second.metric("natter_events_delivered_total{").await >= 1.0);
    let fanned_out = second.metric("natter_fanout_latency_seconds_count{").await;
    assert_eq!(fanned_out, 1.0, "one message reached this node's sockets");
    assert_eq!(second.metric("natter_nats_connected{").await, 1.0);
    assert_eq!(second.metric("natter_draining{").await, 0.0);
    assert!(second.metric("natter_gap_repairs_total{").await <= 1.0);

    drop(ws);
    let closed = async {
        while second.metric("natter_websockets_open{").await != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the socket's close is counted");
    assert_eq!(second.metric("natter_subscriptions{").await, 0.0);
}

#[tokio::test]
async fn every_series_the_grafana_dashboard_charts_is_exported() {
    // A node with every integration in use, so their series exist: a send hook (which
    // answers nothing useful, so sends fail open) and a room webhook, both received by
    // the test's receiver.
    let receiver = crate::webhooks::Receiver::start().await;
    let url = receiver.url();
    let app = spawn_app_with(|s| {
        s.webhook_allow_private = true;
        s.send_hook = Some(natter::webhooks::send_hook::SendHookSettings {
            url: url.clone(),
            secret: None,
            timeout: Duration::from_secs(1),
            fail_open: true,
        });
    })
    .await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "charted", "public").await;
    app.call(
        Method::POST,
        &format!("/v1/rooms/{room}/webhooks"),
        Some(&alice.token),
        Some(json!({"url": url})),
    )
    .await
    .assert_status(201);
    app.send(&alice, room, "for the charts").await;
    receiver
        .wait_for(Duration::from_secs(10), |r| {
            r.iter().any(|r| r.headers.contains_key("webhook-id"))
        })
        .await;
    let exported = app.metrics().await;
    let dashboard = include_str!("../../deploy/grafana-dashboard.json");
    let charted: std::collections::BTreeSet<&str> = dashboard
        .match_indices("natter_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(charted.len() >= 10, "{charted:?}");
    for series in charted {
        assert!(
            exported.contains(&format!("\n{series}{{")),
            "the dashboard charts {series}, which /metrics lacks"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_covers_every_operation_with_an_id_a_tag_its_statuses_and_examples() {
    let app = spawn_app().await;
    let spec = crate::helpers::reply(
        app.http()
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    spec.assert_status(200);
    let paths = spec.body["paths"].as_object().unwrap();
    let expected = [
        ("/v1/auth/register", "post", "201"),
        ("/v1/auth/login", "post", "200"),
        ("/v1/ws/tickets", "post", "201"),
        ("/v1/users/me", "get", "200"),
        ("/v1/users/{user_id}", "get", "404"),
        ("/v1/rooms", "post", "201"),
        ("/v1/rooms", "get", "200"),
        ("/v1/rooms/{room_id}", "get", "404"),
        ("/v1/rooms/{room_id}", "patch", "403"),
        ("/v1/rooms/{room_id}", "delete", "204"),
        ("/v1/rooms/{room_id}/join", "post", "204"),
        ("/v1/rooms/{room_id}/leave", "post", "409"),
        ("/v1/rooms/{room_id}/read", "post", "204"),
        ("/v1/rooms/{room_id}/members", "get", "200"),
        ("/v1/rooms/{room_id}/members/{user_id}", "put", "204"),
        ("/v1/rooms/{room_id}/members/{user_id}", "delete", "204"),
        ("/v1/dms", "post", "201"),
        ("/v1/me/rooms", "get", "200"),
        ("/v1/presence", "get", "200"),
        ("/v1/bots", "post", "201"),
        ("/v1/bots", "get", "200"),
        ("/v1/bots/{id}/token", "post", "404"),
        ("/v1/bots/{id}", "delete", "404"),
        ("/v1/rooms/{room_id}/webhooks", "post", "201"),
        ("/v1/rooms/{room_id}/webhooks", "get", "200"),
        ("/v1/rooms/{room_id}/webhooks/{id}", "delete", "404"),
        ("/v1/rooms/{room_id}/webhooks/{id}/rotate", "post", "200"),
        ("/v1/rooms/{room_id}/webhooks/{id}/replay", "post", "202"),
        ("/v1/rooms/{room_id}/webhooks/{id}/deliveries", "get", "200"),
        ("/v1/rooms/{room_id}/presence", "get", "404"),
        ("/v1/rooms/{room_id}/messages", "post", "429"),
        ("/v1/rooms/{room_id}/messages", "get", "200"),
        ("/v1/rooms/{room_id}/messages/search", "get", "200"),
        ("/v1/rooms/{room_id}/messages/{message_id}", "patch", "200"),
        ("/v1/rooms/{room_id}/messages/{message_id}", "delete", "200"),
        (
            "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
            "put",
            "200",
        ),
        (
            "/v1/rooms/{room_id}/messages/{message_id}/reactions/{emoji}",
            "delete",
            "200",
        ),
        ("/v1/rooms/{room_id}/notifications", "get", "404"),
        ("/v1/rooms/{room_id}/notifications", "put", "403"),
        ("/v1/push/vapid-public-key", "get", "401"),
        ("/v1/me/push-subscriptions", "post", "201"),
        ("/v1/me/push-subscriptions", "get", "200"),
        ("/v1/me/push-subscriptions/{id}", "delete", "404"),
        // Seed 000's clients call `/rooms/`; the document writes it without the slash.
        ("/rooms", "post", "201"),
        ("/rooms", "get", "200"),
        ("/{room_id}/messages", "post", "201"),
        ("/{room_id}/messages", "get", "404"),
        ("/api/chat/{receiver_id}/messages", "get", "404"),
        ("/api/chat/{receiver_id}/send", "post", "201"),
        ("/api/chats", "get", "200"),
        ("/api/online-users", "get", "200"),
    ];
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(operations, expected.len(), "paths: {:?}", paths.keys());
    let mut operation_ids = std::collections::HashSet::new();
    for (path, method, status) in expected {
        let op = &paths[path][method];
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}"));
        for s in [status, "400", "503"] {
            assert!(responses.contains_key(s), "{method} {path} documents {s}");
        }
        // Generated clients name their functions and modules after these.
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            !id.is_empty() && operation_ids.insert(id),
            "{method} {path}: {id:?}"
        );
        let tag = op["tags"][0].as_str().unwrap_or_default();
        assert!(!tag.is_empty(), "{method} {path} is tagged");
        assert_eq!(
            tag == "compat",
            !path.starts_with("/v1/"),
            "{method} {path}: {tag}"
        );
        assert!(op["summary"].is_string(), "{method} {path} is described");
    }
    // The sign-in throttle's answer (SPEC §10) is documented.
    assert!(paths["/v1/auth/login"]["post"]["responses"]["429"].is_object());
    // Every schema of a request or response body shows an example in Swagger UI and in
    // generated clients' docs.
    let schemas = spec.body["components"]["schemas"].as_object().unwrap();
    for (name, schema) in schemas {
        let is_object = schema["type"] == "object";
        assert!(
            !is_object || schema["example"].is_object(),
            "schema {name} has an example"
        );
    }
    // Text people write carries its rule in the schema, beside the field's own limits.
    let text = &schemas["SendMessageRequest"]["properties"]["text"];
    assert!(
        text["pattern"]
            .as_str()
            .is_some_and(|p| p.contains(r"\x7F-\x9F"))
    );
    let name = &schemas["CreateRoomRequest"]["properties"]["name"];
    assert_eq!(
        (name["maxLength"].as_u64(), &name["pattern"]),
        (Some(100), &text["pattern"])
    );
    // Paths are whole (`/v1/...` beside the drop-in routes at the root): no server prefix.
    assert!(spec.body["servers"].as_array().is_none_or(|s| s.is_empty()));
    let docs = app.http().get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn ten_nodes_starting_at_once_on_a_fresh_database_migrate_it_once() {
    let database_url = create_database().await;
    let nodes = join_all((0..10).map(|_| spawn_node(settings(&database_url)))).await;
    let alice = nodes[3].register("alice").await;
    let room = nodes[7].create_room(&alice, "r", "public").await;
    nodes[9].send(&alice, room, "works").await;
}

/// Migration 0009's index on `messages (room_id, created_at, seq)` cost every stored
/// message a btree insert; `read_upto` by time bisects the seq index instead and 0012
/// drops it. Neither a fresh database nor one upgraded from a release that had it keeps
/// it, so it cannot come back unnoticed.
#[tokio::test]
async fn no_index_on_messages_by_time_survives_the_migrations() {
    let app = spawn_app().await;
    let db = app.db().await;
    let by_time = "SELECT count(*) FROM pg_indexes
                    WHERE tablename = 'messages' AND indexname = 'messages_room_created'";
    let count: i64 = db.query_one(by_time, &[]).await.unwrap().get(0);
    assert_eq!(count, 0, "a fresh database has no messages_room_created");

    // As if the database came from the release before: 0009 applied, 0012 not.
    db.batch_execute(
        "CREATE INDEX messages_room_created ON messages (room_id, created_at, seq);
         DELETE FROM schema_migrations WHERE version = 12;",
    )
    .await
    .unwrap();
    let _upgraded = spawn_node(settings(&app.database_url)).await;
    let count: i64 = db.query_one(by_time, &[]).await.unwrap().get(0);
    assert_eq!(count, 0, "the upgrade dropped messages_room_created");
}

#[tokio::test]
async fn rest_answers_503_with_retry_after_while_postgres_is_unreachable_and_recovers() {
    let database_url = create_database().await;
    let mut parsed = url_parts(&database_url);
    let upstream: SocketAddr = format!("127.0.0.1:{}", parsed.1).parse().unwrap();
    let (proxy, cut) = cuttable_proxy(upstream).await;
    parsed.1 = proxy.port();
    let app = spawn_node(settings(&format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        parsed.1, parsed.2
    )))
    .await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    app.send(&alice, room, "before").await;

    cut.send(true).unwrap();
    let down = app.post_message(&alice.token, room, "during").await;
    down.assert_unavailable();
    assert!(!down.body.to_string().to_lowercase().contains("sql"));
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    ready.assert_status(503);
    assert_eq!(ready.body["database"], false);

    cut.send(false).unwrap();
    let mut recovered = None;
    for _ in 0..50 {
        let reply = app.post_message(&alice.token, room, "after").await;
        if reply.status == 201 {
            recovered = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = recovered.expect("the node recovers on its own");
    assert_eq!(recovered.body["seq"], 2, "the refused send stored nothing");
    app.call(Method::GET, "/readyz", None, None)
        .await
        .assert_status(200);
}

/// A failover as a node sees it: `DATABASE_URL` lists a dead host first and the real
/// server second, with `target_session_attrs=read-write`; the server is then "demoted"
/// (it turns read-only and drops every connection, as Patroni's demotion does) and
/// "promoted" back. The node answers 503 + Retry-After meanwhile (it refuses the
/// read-only server), stores nothing, and resumes on its own; a send refused during the
/// outage, retried with its key, is stored once with the next `seq`.
#[tokio::test]
async fn a_node_on_a_multi_host_url_waits_out_a_demoted_primary_with_503s_and_resumes() {
    let database_url = create_database().await;
    let (host, port, name) = url_parts(&database_url);
    let dead = crate::helpers::free_port();
    let app = spawn_node(settings(&format!(
        "postgres://postgres@{host}:{dead},{host}:{port}/{name}?target_session_attrs=read-write"
    )))
    .await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    assert_eq!(app.send(&alice, room, "before").await["seq"], 1);

    let admin = app.db().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = on;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{name}' AND pid <> pg_backend_pid();"
        ))
        .await
        .unwrap();
    let path = format!("/v1/rooms/{room}/messages");
    let keyed = json!({"text": "during", "client_msg_id": "k-1"});
    app.post(&path, &alice.token, keyed.clone())
        .await
        .assert_unavailable();
    app.call(Method::GET, "/readyz", None, None)
        .await
        .assert_status(503);

    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} RESET default_transaction_read_only"
        ))
        .await
        .unwrap();
    let mut stored = None;
    for _ in 0..50 {
        let reply = app.post(&path, &alice.token, keyed.clone()).await;
        if reply.status == 201 {
            stored = Some(reply);
            break;
        }
        reply.assert_unavailable();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = stored.expect("the node resumes without a restart");
    assert_eq!(stored.body["seq"], 2, "the refused sends stored nothing");
    let again = app.post(&path, &alice.token, keyed).await;
    again.assert_status(200);
    assert_eq!(again.body["id"], stored.body["id"]);
    assert_eq!(app.send(&alice, room, "after").await["seq"], 3);
}

/// (host, port, database) of a `postgres://user@host:port/db` URL.
fn url_parts(url: &str) -> (String, u16, String) {
    let rest = url.split_once('@').unwrap().1;
    let (host_port, db) = rest.split_once('/').unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    (host.to_string(), port.parse().unwrap(), db.to_string())
}

#[tokio::test]
async fn pages_of_a_million_message_room_use_the_index_not_a_scan() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "huge", "public").await;
    let db = app.store_history(room, alice.id, 1_000_000).await;
    db.batch_execute("ANALYZE messages").await.unwrap();

    // The shapes of the store's page queries: latest, before, after.
    let plans = [
        "SELECT * FROM messages WHERE room_id = $1 AND ($2::bigint IS NULL OR seq < $2)
           AND ($3::bigint IS NULL OR seq > $3) ORDER BY seq DESC LIMIT 51",
        "SELECT * FROM messages WHERE room_id = $1 AND ($2::bigint IS NULL OR seq < $2)
           AND ($3::bigint IS NULL OR seq > $3) ORDER BY seq ASC LIMIT 51",
    ];
    let bounds: [(Option<i64>, Option<i64>); 3] =
        [(None, None), (Some(500_000), None), (None, Some(500_000))];
    for sql in plans {
        for (before, after) in bounds {
            let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
            let rows = db.query(&explain, &[&room, &before, &after]).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            let plan = plan.join("\n");
            assert!(plan.contains("messages_room_seq"), "{plan}");
            assert!(!plan.contains("Seq Scan"), "{plan}");
        }
    }
    // A read watermark set by time is the store's bisection, whose probes
    // `metering::read_upto_by_time_is_answered_from_an_index_before_between_and_after_messages`
    // counts.
    // And the API pages through it.
    let page = app
        .get(
            &format!("/v1/rooms/{room}/messages?before_seq=500001&limit=3"),
            &alice.token,
        )
        .await;
    assert_eq!(page.body["messages"][2]["seq"], 500_000);
    let mine = app.get("/v1/me/rooms", &alice.token).await;
    assert_eq!(mine.body["rooms"][0]["last_message"]["seq"], 1_000_000);
}

#[tokio::test]
async fn postgres_over_tls_is_used_when_required_and_the_server_is_verified() {
    let database_url = create_database().await;
    let ca = std::env::var("NATTER_TEST_PG_CA").expect("run through `bash tests/run`");
    let mut tls_settings = settings(&format!("{database_url}?sslmode=require"));
    tls_settings.database_ca_file = Some(ca.into());
    let app = spawn_node(tls_settings).await;
    app.register("alice").await;

    let database = database_url.rsplit('/').next().unwrap().to_string();
    let (admin, connection) = tokio_postgres::connect(
        &std::env::var("NATTER_TEST_DATABASE_URL").unwrap(),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = $1 AND s.ssl",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted > 0, "the node's connections use TLS");

    // Without the private CA the server's certificate is not trusted: no connection.
    let untrusted =
        natter::store::Store::connect(&format!("{database_url}?sslmode=require"), 1, None).unwrap();
    assert!(untrusted.migrate().await.is_err());
}

#[tokio::test]
async fn the_web_client_is_served_with_a_strict_content_security_policy_and_revalidated() {
    let app = spawn_app().await;
    for (path, content_type, marker) in [
        ("/", "text/html", "<script src=\"/app.js\" type=\"module\""),
        ("/app.js", "text/javascript", "from \"./natter.js\""),
        ("/natter.js", "text/javascript", "since_seq"),
        ("/app.css", "text/css", "@media"),
    ] {
        let response = app.http().get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-cache");
        assert!(response.text().await.unwrap().contains(marker), "{path}");
        // A browser that holds this build's copy gets a 304 without the body.
        let etag = headers["etag"].clone();
        let again = app
            .http()
            .get(app.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.text().await.unwrap().is_empty());
    }
}

/// Runs the `natter` binary with no environment at all.
fn natter_without_environment(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(args)
        .env_clear()
        .output()
        .expect("natter runs")
}

#[test]
fn natter_help_lists_its_commands_and_serve_help_every_setting_with_its_variable_and_default() {
    let help = natter_without_environment(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["serve", "migrate", "token", "health"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
    let help = natter_without_environment(&["serve", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for (flag, variable) in [
        ("--database-url", "DATABASE_URL"),
        ("--nats-url", "NATS_URL"),
        ("--jwt-secret", "JWT_SECRET"),
        ("--listen-addr", "LISTEN_ADDR"),
        ("--node-id", "NODE_ID"),
        (
            "--otel-exporter-otlp-endpoint",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    ] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
        assert!(
            text.contains(&format!("env: {variable}")),
            "{variable} missing"
        );
    }
    assert!(text.contains("[default: 0.0.0.0:8080]"), "{text}");
}

#[test]
fn a_bad_flag_or_setting_stops_natter_with_a_line_that_names_it() {
    let unknown = natter_without_environment(&["serve", "--no-such-flag"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--no-such-flag"));
    let missing = natter_without_environment(&["serve"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--database-url / DATABASE_URL"), "{stderr}");
    let bad = natter_without_environment(&[
        "serve",
        "--database-url=postgres://u@localhost/db",
        "--nats-url=nats://localhost:4222",
        "--send-burst=lots",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--send-burst / SEND_BURST"), "{stderr}");
    // A secret this repository once shipped as compose's default (SPEC §10).
    let shipped = natter_without_environment(&[
        "serve",
        "--database-url=postgres://u@localhost/db",
        "--nats-url=nats://localhost:4222",
        "--jwt-secret=local-only-secret-change-me-in-production",
    ]);
    assert_eq!(shipped.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&shipped.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--jwt-secret / JWT_SECRET"), "{stderr}");
}
