//! The 64 KiB request body limit, tried as an attacker would (SPEC §10): a streamed
//! (chunked) body past the limit is refused with `413 payload_too_large` even when the
//! request carries `Upgrade` headers, which once exempted it; only a real WebSocket
//! handshake skips reading a body. Raw TCP, because an HTTP client will not send such a
//! request.

use serde_json::json;
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
