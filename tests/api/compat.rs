//! SPEC §12: the seeds' own routes, called the way their clients call them (tokens in
//! query strings included), across two nodes.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{Reply, TestApp, WsClient, reply, settings, spawn_app, spawn_app_with, spawn_node},
    websocket_admission::refused_handshake,
};

/// A request as the seeds' clients send it: the token in `?token=`.
async fn with_query_token(
    node: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Reply {
    let separator = if path.contains('?') { '&' } else { '?' };
    let mut request = node
        .http()
        .request(method, node.url(&format!("{path}{separator}token={token}")));
    if let Some(body) = body {
        request = request.json(&body);
    }
    reply(request.send().await.unwrap()).await
}

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// The next frame of one of `kinds`, skipping others.
async fn next_of(socket: &mut WsClient, kinds: &[&str]) -> Value {
    loop {
        let frame = socket.recv().await;
        if kinds.iter().any(|kind| frame["type"] == *kind) {
            return frame;
        }
    }
}

#[tokio::test]
async fn the_firebase_seeds_rooms_messages_and_room_socket_work_unchanged_across_two_nodes() {
    let first = spawn_app().await;
    let second = spawn_node(settings(&first.database_url)).await;
    let alice = first.register("alice").await;
    let bob = second.register("bob").await;

    // Rooms: created with a query token, listed with a bearer header, slash and all.
    let created = with_query_token(
        &first,
        Method::POST,
        "/rooms/",
        &alice.token,
        Some(json!({"name": "general"})),
    )
    .await;
    created.assert_status(201);
    assert_eq!(
        (created.body["name"].clone(), created.body["kind"].clone()),
        (json!("general"), json!("public"))
    );
    let room: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    let listed = second.get("/rooms/", &bob.token).await;
    listed.assert_status(200);
    assert!(
        listed.body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == json!(room))
    );
    assert_eq!(second.get("/rooms", &bob.token).await.status, 200);
    let anonymous = reply(first.http().get(first.url("/rooms/")).send().await.unwrap()).await;
    assert_eq!(anonymous.status, 401);

    // The room socket on each node, with ?token=.
    let mut alice_socket =
        WsClient::connect(first.addr, &format!("/ws/rooms/{room}"), &alice.token).await;
    let mut bob_socket =
        WsClient::connect(second.addr, &format!("/ws/rooms/{room}"), &bob.token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Posting joins the public room first; both sockets get the seed's message frame.
    let posted = with_query_token(
        &first,
        Method::POST,
        &format!("/{room}/messages"),
        &bob.token,
        Some(json!({"text": "hi all"})),
    )
    .await;
    posted.assert_status(201);
    assert_eq!(posted.body["sender_id"], json!(bob.id));
    for socket in [&mut alice_socket, &mut bob_socket] {
        let frame = next_of(socket, &["message"]).await;
        assert_eq!(
            keys(&frame),
            ["created_at", "message_id", "sender_id", "text", "type"]
        );
        assert_eq!(
            (frame["sender_id"].clone(), frame["text"].clone()),
            (json!(bob.id), json!("hi all"))
        );
        assert_eq!(frame["message_id"], posted.body["id"]);
    }

    // Typing: acknowledged to the typer, told to the others, ended when the typer leaves.
    alice_socket
        .send(json!({"type": "typing", "value": true}))
        .await;
    assert_eq!(
        next_of(&mut alice_socket, &["typing_ack"]).await,
        json!({"type": "typing_ack", "value": true})
    );
    assert_eq!(
        next_of(&mut bob_socket, &["typing"]).await,
        json!({"type": "typing", "user_id": alice.id, "value": true})
    );
    // Read up to a time: acknowledged with that time, as seed 000 answers (its clients
    // compare `upto` with their messages' `created_at`), not with a seq.
    let now_ms = posted.body["created_at"].as_i64().unwrap() + 1;
    bob_socket
        .send(json!({"type": "read_upto", "created_at_ms": now_ms}))
        .await;
    assert_eq!(
        next_of(&mut bob_socket, &["read_ack"]).await,
        json!({"type": "read_ack", "upto": now_ms})
    );
    drop(alice_socket);
    assert_eq!(
        next_of(&mut bob_socket, &["typing"]).await,
        json!({"type": "typing", "user_id": alice.id, "value": false})
    );

    // History: the latest `limit`, oldest first, from either node.
    for text in ["two", "three"] {
        first.send(&alice, room, text).await;
    }
    let page = with_query_token(
        &second,
        Method::GET,
        &format!("/{room}/messages?limit=2"),
        &alice.token,
        None,
    )
    .await;
    page.assert_status(200);
    let texts: Vec<&str> = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["two", "three"]);

    // An unknown room: 404, at the handshake too.
    let unknown = Uuid::new_v4();
    assert_eq!(
        second
            .get(&format!("/{unknown}/messages"), &bob.token)
            .await
            .status,
        404
    );
    let posted = with_query_token(
        &first,
        Method::POST,
        &format!("/{unknown}/messages"),
        &bob.token,
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(posted.status, 404);
    let refused = refused_handshake(&format!(
        "ws://{}/ws/rooms/{unknown}?token={}",
        first.addr, bob.token
    ))
    .await;
    assert_eq!(refused, 404);
}

#[tokio::test]
async fn the_supabase_seeds_one_to_one_chat_routes_and_socket_work_unchanged_across_two_nodes() {
    let first = spawn_app().await;
    let second = spawn_node(settings(&first.database_url)).await;
    let alice = first.register("alice").await;
    let bob = second.register("bob").await;

    let empty = with_query_token(
        &first,
        Method::GET,
        &format!("/api/chat/{}/messages", bob.id),
        &alice.token,
        None,
    )
    .await;
    empty.assert_status(200);
    assert_eq!(empty.body["messages"], json!([]));

    // Each user's socket with the other, on different nodes; the room is made on contact.
    let mut alice_socket =
        WsClient::connect(first.addr, &format!("/ws/{}", bob.id), &alice.token).await;
    let mut bob_socket =
        WsClient::connect(second.addr, &format!("/ws/{}", alice.id), &bob.token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sent = first
        .call(
            Method::POST,
            &format!("/api/chat/{}/send", bob.id),
            Some(&alice.token),
            Some(json!({"message_text": "hey bob"})),
        )
        .await;
    sent.assert_status(201);
    for socket in [&mut alice_socket, &mut bob_socket] {
        let frame = next_of(socket, &["chat"]).await;
        assert_eq!(
            keys(&frame),
            [
                "created_at",
                "message",
                "message_id",
                "receiver_id",
                "sender_id",
                "type"
            ]
        );
        assert_eq!(
            (
                frame["sender_id"].clone(),
                frame["receiver_id"].clone(),
                frame["message"].clone()
            ),
            (json!(alice.id), json!(bob.id), json!("hey bob"))
        );
        assert_eq!(frame["message_id"], sent.body["id"]);
    }
    // A chat frame stores and delivers to both.
    bob_socket
        .send(json!({"type": "chat", "message": "hi alice"}))
        .await;
    for socket in [&mut alice_socket, &mut bob_socket] {
        let frame = next_of(socket, &["chat"]).await;
        assert_eq!(
            (
                frame["sender_id"].clone(),
                frame["receiver_id"].clone(),
                frame["message"].clone()
            ),
            (json!(bob.id), json!(alice.id), json!("hi alice"))
        );
    }
    bob_socket.send(json!({"type": "ping"})).await;
    assert_eq!(
        next_of(&mut bob_socket, &["pong"]).await,
        json!({"type": "pong"})
    );

    // The history, the chat list and who is online, from the other node.
    let history = with_query_token(
        &second,
        Method::GET,
        &format!("/api/chat/{}/messages?limit=50", alice.id),
        &bob.token,
        None,
    )
    .await;
    let texts: Vec<&str> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hey bob", "hi alice"]);
    let chats = second.get("/api/chats", &bob.token).await;
    chats.assert_status(200);
    let chat = &chats.body["chats"][0];
    assert_eq!(
        keys(chat),
        [
            "chat_id",
            "last_message_at",
            "other_user_id",
            "unread_count"
        ]
    );
    assert_eq!(
        (chat["other_user_id"].clone(), chat["unread_count"].clone()),
        (json!(alice.id), json!(1))
    );
    assert_eq!(chat["chat_id"], sent.body["room_id"]);
    assert!(chat["last_message_at"].as_i64().unwrap() >= sent.body["created_at"].as_i64().unwrap());
    let online =
        with_query_token(&first, Method::GET, "/api/online-users", &alice.token, None).await;
    online.assert_status(200);
    let ids: Vec<&Value> = online.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["id"])
        .collect();
    assert!(
        ids.contains(&&json!(alice.id)) && ids.contains(&&json!(bob.id)),
        "{ids:?}"
    );

    // Someone who does not exist: 404 everywhere.
    let nobody = Uuid::new_v4();
    let path = format!("/api/chat/{nobody}/messages");
    assert_eq!(first.get(&path, &alice.token).await.status, 404);
    let send = first
        .call(
            Method::POST,
            &format!("/api/chat/{nobody}/send"),
            Some(&alice.token),
            Some(json!({"message_text": "x"})),
        )
        .await;
    assert_eq!(send.status, 404);
    let refused = refused_handshake(&format!(
        "ws://{}/ws/{nobody}?token={}",
        first.addr, alice.token
    ))
    .await;
    assert_eq!(refused, 404);
}

#[tokio::test]
async fn with_compat_routes_off_the_seeds_paths_are_not_served() {
    let app = spawn_app_with(|s| s.compat_routes = false).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    for path in [
        "/rooms/".to_string(),
        format!("/{room}/messages"),
        "/api/chats".to_string(),
    ] {
        assert_eq!(app.get(&path, &alice.token).await.status, 404, "{path}");
    }
    let refused = refused_handshake(&format!(
        "ws://{}/ws/rooms/{room}?token={}",
        app.addr, alice.token
    ))
    .await;
    assert_eq!(refused, 404);
    assert_eq!(app.get("/v1/rooms", &alice.token).await.status, 200);
}
