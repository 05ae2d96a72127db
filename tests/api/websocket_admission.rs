//! Which WebSocket upgrades a node admits (SPEC §10): single-use tickets, so that no
//! token need appear in a URL (and so in a proxy's access log), redeemable once on any
//! node and never after they expire; and at most fifty sockets per user per node. Both
//! refusals come back as an HTTP status on the handshake, which the helpers here read
//! (compat.rs uses them too).

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, settings, spawn_app, spawn_node};

/// The status a refused WebSocket handshake to `url` is answered with.
pub(crate) async fn refused_handshake(url: &str) -> u16 {
    refused_handshake_with_body(url).await.0
}

/// The status and body a refused WebSocket handshake to `url` is answered with.
pub(crate) async fn refused_handshake_with_body(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            (response.status().as_u16(), body.into_owned())
        }
        other => panic!("{url} was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_user_has_at_most_fifty_sockets_on_a_node() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(crate::helpers::WsClient::connect(app.addr, "/v1/ws", &alice.token).await);
    }
    let url = format!("ws://{}/v1/ws?token={}", app.addr, alice.token);
    let (status, body) = refused_handshake_with_body(&url).await;
    assert_eq!(status, 429);
    assert!(body.contains("too_many_sockets"), "{body}");
    // Closing one makes room for another; other users were never limited.
    drop(sockets.pop());
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(&url).await {
            reopened = Some(socket);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        reopened.is_some(),
        "a closed socket's place was not given back"
    );
    let bob = app.register("bob").await;
    let mut ws = crate::helpers::WsClient::connect(app.addr, "/v1/ws", &bob.token).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

/// A new WebSocket ticket from `node` for the holder of `token`.
async fn ws_ticket(node: &TestApp, token: &str) -> String {
    let reply = node
        .call(Method::POST, "/v1/ws/tickets", Some(token), None)
        .await;
    reply.assert_status(201);
    assert!(reply.body["expires_at"].as_i64().unwrap() > 0);
    reply.body["ticket"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_websocket_ticket_opens_one_socket_on_any_node_once_and_never_after_it_expires() {
    let first = spawn_app().await;
    let second = spawn_node(settings(&first.database_url)).await;
    let alice = first.register("alice").await;
    let room = first.create_room(&alice, "r", "public").await;
    // Bought on one node, redeemed on the other: the socket works as alice's.
    let one = ws_ticket(&first, &alice.token).await;
    let url = format!("ws://{}/v1/ws?ticket={one}", second.addr);
    let mut socket = crate::helpers::WsClient::open(url.clone()).await;
    socket.subscribe(room, None).await;
    // Used once: refused on either node.
    assert_eq!(refused_handshake(&url).await, 401);
    let on_first = format!("ws://{}/v1/ws?ticket={one}", first.addr);
    assert_eq!(refused_handshake(&on_first).await, 401);
    // The single-room route takes tickets too.
    let two = ws_ticket(&second, &alice.token).await;
    let single = format!("ws://{}/v1/ws/rooms/{room}?ticket={two}", first.addr);
    crate::helpers::WsClient::open(single).await;
    // Unknown, malformed and expired tickets are refused.
    let unknown = "A".repeat(43);
    for bad in [unknown.as_str(), "not-a-ticket", ""] {
        let url = format!("ws://{}/v1/ws?ticket={bad}", first.addr);
        assert_eq!(refused_handshake(&url).await, 401, "{bad}");
    }
    let three = ws_ticket(&first, &alice.token).await;
    first
        .db()
        .await
        .execute(
            "UPDATE ws_tickets SET expires_at_ms = expires_at_ms - 31000",
            &[],
        )
        .await
        .unwrap();
    let url = format!("ws://{}/v1/ws?ticket={three}", first.addr);
    assert_eq!(refused_handshake(&url).await, 401);
    // A socket opened with a ticket still ends when the token that bought it expires.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let short = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": alice.id, "iss": "natter", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(crate::helpers::JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let four = ws_ticket(&second, &short).await;
    let url = format!("ws://{}/v1/ws?ticket={four}", first.addr);
    let mut expiring = crate::helpers::WsClient::open(url).await;
    assert_eq!(expiring.closed().await, 4001);
    // Without a token there is no ticket.
    let anonymous = first.call(Method::POST, "/v1/ws/tickets", None, None).await;
    assert_eq!(anonymous.status.as_u16(), 401);
}
