//! `baseline-server`: the ceiling for WebSocket fan-out on this machine. A bare tokio
//! WebSocket broadcaster with no auth, storage or NATS, speaking just enough of Natter's
//! frames (`subscribe`, `send`) that the same bench client drives it: each `send` gets a
//! per-room `seq` and is serialised once and offered to every subscriber's bounded queue.
//! Its `message` events carry every field of Natter's, so both put the same bytes on the
//! wire and into the client's parser: the ratio compares servers, not frame sizes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use uuid::Uuid;

use crate::client::ws_config;

/// Most queued frames written out together: a Natter node's `session::MAX_COALESCED`.
const MAX_COALESCED: usize = 16;

#[derive(Default)]
struct Room {
    seq: i64,
    subscribers: Vec<mpsc::Sender<Utf8Bytes>>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

pub async fn serve(listen: &str) -> Result<(), String> {
    // A node's accept queue, not the default 128 that a burst of connects overflows.
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| format!("{listen}: {e}"))?;
    let listener = natter::listener::listen(addr).map_err(|e| format!("{listen}: {e}"))?;
    eprintln!("[baseline] listening on {listen}");
    let rooms: Rooms = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors (a run larger than the limit): shed, as a node does.
            Err(err) => {
                eprintln!("[baseline] accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Ok(ws) = tokio_tungstenite::accept_async_with_config(
                stream,
                Some(ws_config().write_buffer_size(4096)),
            )
            .await
            {
                connection(ws, rooms).await;
            }
        });
    }
}

async fn connection(ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, rooms: Rooms) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(1024);
    // Writes what is queued together, one flush per burst, as a Natter node does: the
    // ceiling should be the best a bare broadcaster can do, not one syscall per frame.
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            let mut written = sink.feed(Message::Text(text)).await;
            for _ in 1..MAX_COALESCED {
                let (Ok(()), Ok(text)) = (&written, rx.try_recv()) else {
                    break;
                };
                written = sink.feed(Message::Text(text)).await;
            }
            if written.is_err() || sink.flush().await.is_err() {
                break;
            }
        }
    });
    let sender_id = Uuid::new_v4();
    let mut subscribed = Vec::new();
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let room = frame["room_id"].as_str().unwrap_or_default().to_string();
        match frame["type"].as_str() {
            Some("subscribe") => {
                rooms
                    .lock()
                    .unwrap()
                    .entry(room.clone())
                    .or_default()
                    .subscribers
                    .push(tx.clone());
                subscribed.push(room.clone());
                let reply = format!(
                    r#"{{"type":"subscribed","room_id":{},"last_seq":0}}"#,
                    json!(room)
                );
                let _ = tx.send(reply.into()).await;
            }
            Some("send") => {
                let ack = {
                    let mut rooms = rooms.lock().unwrap();
                    let entry = rooms.entry(room.clone()).or_default();
                    entry.seq += 1;
                    // Natter's fields in Natter's order (`type` first, as the bench client
                    // expects).
                    let created_at = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis());
                    let message = format!(
                        r#"{{"id":"{}","room_id":{},"seq":{},"sender_id":"{sender_id}","text":{},"created_at":{created_at},"edited_at":null,"deleted":false,"client_msg_id":null,"reply_to":null,"reactions":[]}}"#,
                        Uuid::new_v4(),
                        json!(room),
                        entry.seq,
                        frame["text"]
                    );
                    let event: Utf8Bytes =
                        format!(r#"{{"type":"message","message":{message}}}"#).into();
                    entry.subscribers.retain(|s| {
                        !matches!(
                            s.try_send(event.clone()),
                            Err(mpsc::error::TrySendError::Closed(_))
                        )
                    });
                    format!(r#"{{"type":"send_ack","client_msg_id":null,"message":{message}}}"#)
                };
                let _ = tx.send(ack.into()).await;
            }
            _ => {}
        }
    }
    // The rooms hold senders to this socket's writer; it ends, and the socket closes,
    // once they are gone.
    {
        let mut rooms = rooms.lock().unwrap();
        for room in subscribed {
            if let Some(entry) = rooms.get_mut(&room) {
                entry.subscribers.retain(|s| !s.same_channel(&tx));
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
