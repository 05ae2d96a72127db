//! SPEC §10 tried as an attacker would: each test makes the attempt and asserts the
//! refusal (issue #20).

use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_upgrade_header_on_an_ordinary_request_does_not_exempt_its_streamed_body_from_the_limit()
{
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    // A body well over the 64 KiB limit, streamed (no Content-Length), on a request
    // that claims an upgrade it never asks a WebSocket route for.
    let body = json!({"text": "x".repeat(200 * 1024)}).to_string();
    let mut chunked = Vec::new();
    for chunk in body.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "POST /v1/rooms/{room}/messages HTTP/1.1\r\nHost: natter\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n",
        alice.token
    );
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The node may answer and close before it has read everything: that is the point.
    let _ = stream.write_all(&chunked).await;
    let mut answer = vec![0u8; 4096];
    let read = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A real handshake on a WebSocket route still upgrades.
    let mut ws = crate::helpers::WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn in_a_direct_room_only_a_messages_sender_may_delete_it() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    // Alice opens the direct room, which once made her its "owner".
    let opened = app
        .post("/v1/dms", &alice.token, json!({"user_id": bob.id}))
        .await;
    opened.assert_status(201);
    let room: uuid::Uuid = opened.body["id"].as_str().unwrap().parse().unwrap();
    let from_bob = app.send(&bob, room, "only I may take this back").await;
    let path = format!(
        "/v1/rooms/{room}/messages/{}",
        from_bob["id"].as_str().unwrap()
    );

    let by_alice = app
        .call(Method::DELETE, &path, Some(&alice.token), None)
        .await;
    by_alice.assert_status(403);
    assert_eq!(by_alice.error_code(), "not_sender");
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(page.body["messages"][0]["deleted"], Value::Bool(false));

    let by_bob = app
        .call(Method::DELETE, &path, Some(&bob.token), None)
        .await;
    by_bob.assert_status(200);
    assert_eq!(by_bob.body["deleted"], true);

    // Alice still deletes her own, and an owner of a group room still moderates it.
    let mine = app.send(&alice, room, "mine").await;
    let mine = format!("/v1/rooms/{room}/messages/{}", mine["id"].as_str().unwrap());
    app.call(Method::DELETE, &mine, Some(&alice.token), None)
        .await
        .assert_status(200);
    let group = app.create_room(&alice, "group", "public").await;
    app.post(&format!("/v1/rooms/{group}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    let in_group = app.send(&bob, group, "moderated").await;
    let in_group = format!(
        "/v1/rooms/{group}/messages/{}",
        in_group["id"].as_str().unwrap()
    );
    app.call(Method::DELETE, &in_group, Some(&alice.token), None)
        .await
        .assert_status(200);
}

/// Twenty-one distinct emoji.
const EMOJI: [&str; 21] = [
    "😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋", "😎", "😍", "😘", "🥰", "😗",
    "😙", "😚", "🙂", "🤗", "🤩",
];

#[tokio::test]
async fn a_message_carries_at_most_twenty_distinct_emoji_even_when_they_arrive_at_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "r", "public").await;
    app.post(&format!("/v1/rooms/{room}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    let react = |token: &str, message: &str, emoji: &str| {
        let path = format!("/v1/rooms/{room}/messages/{message}/reactions/{emoji}");
        let token = token.to_string();
        let app = &app;
        async move { app.call(Method::PUT, &path, Some(&token), None).await }
    };

    let first = app.send(&alice, room, "react to me").await;
    let first = first["id"].as_str().unwrap().to_string();
    for emoji in &EMOJI[..20] {
        react(&alice.token, &first, emoji).await.assert_status(200);
    }
    let refused = react(&alice.token, &first, EMOJI[20]).await;
    refused.assert_status(409);
    assert_eq!(refused.error_code(), "too_many_reactions");
    // An emoji the message already carries is still anyone's to add.
    let joined = react(&bob.token, &first, EMOJI[0]).await;
    joined.assert_status(200);
    assert_eq!(joined.body["reactions"].as_array().unwrap().len(), 20);
    // Making room lets a new one in.
    let path = format!("/v1/rooms/{room}/messages/{first}/reactions/{}", EMOJI[19]);
    app.call(Method::DELETE, &path, Some(&alice.token), None)
        .await
        .assert_status(200);
    react(&alice.token, &first, EMOJI[20])
        .await
        .assert_status(200);

    // Twenty-one different emoji at once: twenty get in, one is refused.
    let second = app.send(&alice, room, "and me, all at once").await;
    let second = second["id"].as_str().unwrap().to_string();
    let replies =
        futures_util::future::join_all(EMOJI.iter().map(|e| react(&bob.token, &second, e))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        1,
        "{statuses:?}"
    );
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    let carried = page.body["messages"][1]["reactions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(carried, 20);
}
