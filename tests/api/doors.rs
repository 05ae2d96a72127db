//! SPEC §18's closed doors: a bot cannot create bots and a bot's rights never outlive its
//! owner's; query-string tokens are JWTs only, never bot keys.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{TestApp, WsClient, reply, settings, spawn_app, spawn_node},
    websocket_admission::refused_handshake_with_body,
};

/// `owner` creates a bot named `username`: its id and key.
async fn create_bot(app: &TestApp, owner: &str, username: &str) -> (Uuid, String) {
    let created = app
        .call(
            Method::POST,
            "/v1/bots",
            Some(owner),
            Some(json!({ "username": username })),
        )
        .await;
    created.assert_status(201);
    let id = created.body["user"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (id, created.body["token"].as_str().unwrap().to_string())
}

/// A bot owned by the bot `owner`, written straight into the database as the server
/// allowed before SPEC §18 (the API no longer can): its id and key.
async fn bot_made_by_a_bot(app: &TestApp, owner: Uuid, username: &str) -> (Uuid, String) {
    let (key, hash) = natter::auth::bots::new_key();
    let id = Uuid::now_v7();
    let db = app.db().await;
    db.execute(
        "INSERT INTO users (id, username, display_name, bot_owner) VALUES ($1, $2, $2, $3)",
        &[&id, &username, &owner],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO bot_keys (key_hash, bot_id) VALUES ($1, $2)",
        &[&hash.as_slice(), &id],
    )
    .await
    .unwrap();
    (id, key)
}

#[tokio::test]
async fn a_bot_cannot_create_a_bot() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (bot, key) = create_bot(&app, &alice.token, "deploy-bot").await;

    let refused = app
        .call(
            Method::POST,
            "/v1/bots",
            Some(&key),
            Some(json!({ "username": "child-bot" })),
        )
        .await;
    refused.assert_status(403);
    assert_eq!(refused.error_code(), "bots_cannot_create_bots");
    // Nothing was made: the name is still free, and the owner lists only their bot.
    let listed = app.get("/v1/bots", &alice.token).await;
    assert_eq!(listed.body["bots"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["bots"][0]["user"]["id"], json!(bot));
    assert_eq!(app.get("/v1/bots", &key).await.body["bots"], json!([]));
    create_bot(&app, &alice.token, "child-bot").await;
}

#[tokio::test]
async fn deleting_a_bot_deletes_the_bots_it_made_and_their_keys_stop_working() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (parent, parent_key) = create_bot(&app, &alice.token, "parent-bot").await;
    let (child, child_key) = bot_made_by_a_bot(&app, parent, "child-bot").await;
    let (_, grandchild_key) = bot_made_by_a_bot(&app, child, "grandchild-bot").await;
    for key in [&parent_key, &child_key, &grandchild_key] {
        app.get("/v1/users/me", key).await.assert_status(200);
    }

    app.call(
        Method::DELETE,
        &format!("/v1/bots/{parent}"),
        Some(&alice.token),
        None,
    )
    .await
    .assert_status(204);
    // Within the verified-key memory's re-check (1 s) every key of the line is refused.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for key in [&parent_key, &child_key, &grandchild_key] {
        app.get("/v1/users/me", key).await.assert_status(401);
    }
}

#[tokio::test]
async fn bots_that_bots_made_before_the_upgrade_are_deleted_by_its_migration() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let (parent, parent_key) = create_bot(&app, &alice.token, "parent-bot").await;
    let (_, child_key) = bot_made_by_a_bot(&app, parent, "child-bot").await;
    app.get("/v1/users/me", &child_key).await.assert_status(200);

    // As if the database came from the release before: the migration not yet applied.
    app.db()
        .await
        .execute("DELETE FROM schema_migrations WHERE version = 10", &[])
        .await
        .unwrap();
    let upgraded = spawn_node(settings(&app.database_url)).await;

    upgraded
        .get("/v1/users/me", &child_key)
        .await
        .assert_status(401);
    upgraded
        .get("/v1/users/me", &parent_key)
        .await
        .assert_status(200);
}

/// `path` with the bot key `key` as `?token=`, answered 401 with a message that says
/// where the key goes instead.
async fn refused_in_url(app: &TestApp, path: &str, key: &str) {
    let response = app
        .http()
        .get(app.url(&format!("{path}?token={key}")))
        .send()
        .await
        .unwrap();
    let reply = reply(response).await;
    reply.assert_status(401);
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Authorization") && message.contains("ticket"),
        "{message}"
    );
}

#[tokio::test]
async fn a_bot_key_in_a_query_string_is_refused_and_a_jwt_there_still_works() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "general", "public").await;
    let (bot, key) = create_bot(&app, &alice.token, "relay-bot").await;
    app.call(
        Method::POST,
        &format!("/v1/rooms/{room}/join"),
        Some(&key),
        None,
    )
    .await
    .assert_status(204);

    // The seeds' REST routes.
    refused_in_url(&app, "/api/online-users", &key).await;
    refused_in_url(&app, "/rooms/", &key).await;
    // The WebSocket routes: /v1/ws, the single-room one and both seeds' sockets.
    for path in [
        "/v1/ws".to_string(),
        format!("/v1/ws/rooms/{room}"),
        format!("/ws/rooms/{room}"),
        format!("/ws/{}", alice.id),
    ] {
        let (status, body) =
            refused_handshake_with_body(&format!("ws://{}{path}?token={key}", app.addr)).await;
        assert_eq!(status, 401, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("Authorization") && message.contains("ticket"),
            "{message}"
        );
    }

    // The same key works in the header, and a JWT in the URL still does.
    let me = app.get("/v1/users/me", &key).await;
    me.assert_status(200);
    assert_eq!(me.body["id"], json!(bot));
    let mut socket = WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    socket.subscribe(room, None).await;
    let online = app
        .http()
        .get(app.url(&format!("/api/online-users?token={}", alice.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(online.status(), 200);
}

/// `/metrics`' count of Postgres lookups of bot keys and tickets.
async fn credential_lookups(app: &TestApp) -> f64 {
    app.metric("natter_credential_lookups_total{").await
}

#[tokio::test]
async fn unknown_bot_keys_and_tickets_cost_one_lookup_a_minute_not_one_a_request() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;

    let (made_up, _) = natter::auth::bots::new_key();
    let before = credential_lookups(&app).await;
    for _ in 0..20 {
        app.get("/v1/users/me", &made_up).await.assert_status(401);
    }
    let after_keys = credential_lookups(&app).await;
    assert!(
        after_keys - before <= 1.0,
        "20 requests with one unknown key cost {} lookups",
        after_keys - before
    );

    let ticket = app
        .call(Method::POST, "/v1/ws/tickets", Some(&alice.token), None)
        .await;
    ticket.assert_status(201);
    let ticket = ticket.body["ticket"].as_str().unwrap().to_string();
    let url = format!("ws://{}/v1/ws?ticket={ticket}", app.addr);
    let _socket = WsClient::open(url.clone()).await;
    let after_use = credential_lookups(&app).await;
    for _ in 0..20 {
        assert_eq!(refused_handshake_with_body(&url).await.0, 401);
    }
    let after_tickets = credential_lookups(&app).await;
    assert!(
        after_tickets - after_use <= 1.0,
        "20 upgrades with one used ticket cost {} lookups",
        after_tickets - after_use
    );

    // A real key still signs in; it was never unknown.
    let (_, key) = create_bot(&app, &alice.token, "fresh-bot").await;
    app.get("/v1/users/me", &key).await.assert_status(200);
}
