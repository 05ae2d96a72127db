//! SPEC §11: bots (API keys on REST and WebSocket, revoked everywhere within 5 s) and the
//! before-send moderation hook.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, WsClient, settings, spawn_app, spawn_node};

/// How long SPEC §11 gives every node to refuse a replaced or deleted bot key.
const REVOCATION_LIMIT: Duration = Duration::from_secs(5);

async fn ws_ticket(node: &TestApp, token: &str) -> String {
    let reply = node
        .call(Method::POST, "/v1/ws/tickets", Some(token), None)
        .await;
    reply.assert_status(201);
    reply.body["ticket"].as_str().unwrap().to_string()
}

/// Waits until `key` is refused by every node, and every socket is closed with 4001;
/// returns how long that took.
async fn refused_everywhere(nodes: [&TestApp; 2], key: &str, sockets: &mut [WsClient]) -> Duration {
    let started = Instant::now();
    for node in nodes {
        loop {
            let status = node.get("/v1/users/me", key).await.status;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                started.elapsed() < REVOCATION_LIMIT,
                "still accepted after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for socket in sockets {
        let closed = tokio::time::timeout_at((started + REVOCATION_LIMIT).into(), socket.closed())
            .await
            .expect("the socket is closed within 5 s");
        assert_eq!(closed, 4001);
    }
    started.elapsed()
}

#[tokio::test]
async fn a_bot_key_signs_in_on_rest_and_websocket_and_once_replaced_or_deleted_is_refused_on_every_node_within_five_seconds()
 {
    let first = spawn_app().await;
    let second = spawn_node(settings(&first.database_url)).await;
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    let room = first.create_room(&alice, "standup", "private").await;

    let created = first
        .call(
            Method::POST,
            "/v1/bots",
            Some(&alice.token),
            Some(json!({"username": "standup-bot", "display_name": "Standup bot"})),
        )
        .await;
    created.assert_status(201);
    let bot: Uuid = created.body["user"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(created.body["user"]["bot"], true);
    let key = created.body["token"].as_str().unwrap().to_string();
    assert!(key.starts_with("ntb_"), "{key}");
    // Stored only as a hash.
    let stored: Vec<u8> = first
        .db()
        .await
        .query_one("SELECT key_hash FROM bot_keys WHERE bot_id = $1", &[&bot])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&key[4..]));
    let listed = first.get("/v1/bots", &alice.token).await;
    listed.assert_status(200);
    assert_eq!(listed.body["bots"][0]["user"]["id"], json!(bot));
    assert!(listed.body["bots"][0]["created_at"].as_i64().unwrap() > 0);
    assert_eq!(
        first.get("/v1/bots", &bob.token).await.body["bots"],
        json!([])
    );

    // Like anyone: a private room's owner adds it, then it posts through either node.
    let before = second.post_message(&key, room, "not yet").await;
    before.assert_status(404);
    first
        .call(
            Method::PUT,
            &format!("/v1/rooms/{room}/members/{bot}"),
            Some(&alice.token),
            None,
        )
        .await
        .assert_status(204);
    let me = second.get("/v1/users/me", &key).await;
    me.assert_status(200);
    assert_eq!(
        (me.body["id"].clone(), me.body["bot"].clone()),
        (json!(bot), json!(true))
    );
    let posted = second
        .post_message(&key, room, "Standup in 5 minutes")
        .await;
    posted.assert_status(201);
    assert_eq!(posted.body["sender_id"], json!(bot));

    // Sockets: the key as ?token= on one node, a ticket bought with it on the other.
    let mut by_key = WsClient::connect(second.addr, "/v1/ws", &key).await;
    let ticket = ws_ticket(&second, &key).await;
    let mut by_ticket = WsClient::open(format!("ws://{}/v1/ws?ticket={ticket}", first.addr)).await;
    by_key.subscribe(room, None).await;
    by_ticket.subscribe(room, None).await;
    first.send(&alice, room, "hello bot").await;
    for socket in [&mut by_key, &mut by_ticket] {
        assert_eq!(
            socket.recv_type("message").await["message"]["text"],
            "hello bot"
        );
    }

    // Only the owner manages it.
    for (method, path) in [
        (Method::POST, format!("/v1/bots/{bot}/token")),
        (Method::DELETE, format!("/v1/bots/{bot}")),
    ] {
        first
            .call(method, &path, Some(&bob.token), None)
            .await
            .assert_status(404);
    }
    first
        .call(Method::DELETE, &format!("/v1/bots/{bot}"), Some(&key), None)
        .await
        .assert_status(404);

    // Replace: the old key is refused everywhere and its sockets close; the new works.
    let replaced = first
        .call(
            Method::POST,
            &format!("/v1/bots/{bot}/token"),
            Some(&alice.token),
            None,
        )
        .await;
    replaced.assert_status(200);
    let new_key = replaced.body["token"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    let took = refused_everywhere([&first, &second], &key, &mut [by_key, by_ticket]).await;
    println!("replaced key refused everywhere, sockets closed, in {took:?}");
    second
        .post_message(&new_key, room, "new key")
        .await
        .assert_status(201);
    let mut socket = WsClient::connect(first.addr, "/v1/ws", &new_key).await;
    socket.subscribe(room, None).await;

    // Delete: the same for its current key; the bot is no longer listed, its messages stay.
    first
        .call(
            Method::DELETE,
            &format!("/v1/bots/{bot}"),
            Some(&alice.token),
            None,
        )
        .await
        .assert_status(204);
    let took = refused_everywhere([&second, &first], &new_key, &mut [socket]).await;
    println!("deleted bot's key refused everywhere, socket closed, in {took:?}");
    assert_eq!(
        first.get("/v1/bots", &alice.token).await.body["bots"],
        json!([])
    );
    let history = first
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    let senders: Vec<Value> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["sender_id"].clone())
        .collect();
    assert_eq!(senders.iter().filter(|s| **s == json!(bot)).count(), 2);
    // A malformed or made-up key is refused like a bad token.
    for bad in [
        "ntb_",
        "ntb_not-base64!",
        &format!("ntb_{}", "A".repeat(43)),
    ] {
        assert_eq!(first.get("/v1/users/me", bad).await.status, 401, "{bad}");
    }
}
