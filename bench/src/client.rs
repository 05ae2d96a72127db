//! The bench's clients: REST calls to set a scenario up, and WebSocket connections that
//! subscribe, send at a fixed rate, and tally what they receive.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

pub type Ws = WebSocketStream<TcpStream>;

/// The WebSocket settings of the bench's clients and of the baseline server.
///
/// tungstenite zeroes its whole read buffer before every read, so its default of
/// 128 KiB made each read of a 300-byte frame a 128 KiB `memset`: 9 % of the machine's
/// CPU in a `rooms` run, taken from the servers being measured. 4 KiB still holds a
/// dozen chat frames per read.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// REST access to the cluster for set-up.
pub struct Api {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl Api {
    pub fn new(urls: &[String]) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            urls: urls.to_vec(),
        }
    }

    async fn post(
        &self,
        i: usize,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.urls[i % self.urls.len()]);
        let mut request = self.http.post(url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers a fresh user; returns its token.
    pub async fn register(&self, i: usize, run: &str) -> Result<String, String> {
        self.account(i, run).await.map(|(token, _)| token)
    }

    /// Registers a fresh user; returns its token and id.
    pub async fn account(&self, i: usize, run: &str) -> Result<(String, String), String> {
        let body = json!({"username": format!("b{run}-{i}"), "password": "bench-password"});
        let reply = self.post(i, "/v1/auth/register", None, body).await?;
        let field = |value: &Value| value.as_str().unwrap_or_default().to_string();
        Ok((field(&reply["token"]), field(&reply["user"]["id"])))
    }

    /// `GET path` on node `node`: the status (0 if the node did not answer) and body.
    pub async fn get(&self, node: usize, path: &str, token: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.urls[node % self.urls.len()]);
        let request = self
            .http
            .get(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(2));
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// `POST path` on node `node` with a JSON body; the status (0 if no answer).
    pub async fn post_status(&self, node: usize, path: &str, token: &str, body: Value) -> u16 {
        let url = format!("{}{path}", self.urls[node % self.urls.len()]);
        let request = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .timeout(Duration::from_secs(5));
        match request.send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn create_room(&self, i: usize, token: &str) -> Result<String, String> {
        let body = json!({"name": format!("bench {i}"), "kind": "public"});
        let reply = self.post(i, "/v1/rooms", Some(token), body).await?;
        Ok(reply["id"].as_str().unwrap_or_default().to_string())
    }

    /// Adds a webhook to `url` on `room` (its owner's `token`).
    pub async fn create_webhook(&self, token: &str, room: &str, url: &str) -> Result<(), String> {
        let body = json!({"url": url, "events": ["message.created"]});
        self.post(0, &format!("/v1/rooms/{room}/webhooks"), Some(token), body)
            .await
            .map(|_| ())
    }

    pub async fn join(&self, i: usize, token: &str, room: &str) -> Result<(), String> {
        self.post(i, &format!("/v1/rooms/{room}/join"), Some(token), json!({}))
            .await
            .map(|_| ())
    }
}

/// Opens a WebSocket to `base` (`http://host:port`) at `path`, from source address
/// 127.0.0.`source`.
pub async fn connect(base: &str, path: &str, source: u8) -> Result<Ws, String> {
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base}: only http:// URLs"))?;
    let addr: SocketAddr = tokio::net::lookup_host(host)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, source)),
            0,
        ))
        .map_err(|e| format!("bind 127.0.0.{source}: {e}"))?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{host}{path}"),
        stream,
        Some(ws_config()),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Which `seq`s of its room a connection received, how often, and in what order.
#[derive(Default)]
pub struct SeqLog {
    /// `seen[seq]` counts deliveries of that `seq`.
    pub seen: Vec<u8>,
    /// Deliveries whose `seq` was below one delivered before.
    pub reordered: u64,
    pub last_seq: i64,
}

impl SeqLog {
    pub fn saw(&mut self, seq: i64) {
        let index = seq.max(0) as usize;
        if self.seen.len() <= index {
            self.seen.resize(index + 1, 0);
        }
        self.seen[index] = self.seen[index].saturating_add(1);
        if seq < self.last_seq {
            self.reordered += 1;
        }
        self.last_seq = self.last_seq.max(seq);
    }

    /// How many of `1..=last` never arrived, and how many arrived more than once.
    pub fn lost_and_duplicated(&self, last: i64) -> (u64, u64) {
        let (mut lost, mut duplicated) = (0, 0);
        for seq in 1..=last.max(0) as usize {
            match self.seen.get(seq).copied().unwrap_or(0) {
                0 => lost += 1,
                n => duplicated += u64::from(n - 1),
            }
        }
        (lost, duplicated)
    }
}

/// What one connection saw.
#[derive(Default)]
pub struct Tally {
    /// The connection's room, and whether it subscribed to it.
    pub room: String,
    pub subscribed: bool,
    /// End-to-end latency of each delivered message, in microseconds.
    pub latencies_us: Vec<u32>,
    pub seqs: SeqLog,
    pub delivered: u64,
    /// From each acknowledged send to its `send_ack`, in microseconds.
    pub ack_latencies_us: Vec<u32>,
    /// Acknowledged sends and refused ones.
    pub acked: u64,
    pub errors: u64,
    /// Times the server closed the socket and the client resumed with `since_seq`.
    pub resumes: u64,
}

impl Tally {
    /// Records one text frame, parsed just enough (the frames' field order is fixed).
    /// Every delivery and every acknowledgement also bumps `progress`, so the run knows
    /// when traffic has drained (and, with no subscribers, how many sends were stored).
    pub fn record(&mut self, text: &str, epoch: Instant, progress: &AtomicU64) {
        if text.starts_with(r#"{"type":"message""#) {
            let (Some(seq), Some(sent)) = (field_i64(text, "\"seq\":"), sent_at(text)) else {
                return;
            };
            let now = epoch.elapsed().as_micros() as u64;
            self.latencies_us
                .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
            self.seqs.saw(seq);
            self.delivered += 1;
            progress.fetch_add(1, Ordering::Relaxed);
        } else if text.starts_with(r#"{"type":"send_ack""#) {
            self.acked += 1;
            if let Some(sent) = sent_at(text) {
                let now = epoch.elapsed().as_micros() as u64;
                self.ack_latencies_us
                    .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
            }
            progress.fetch_add(1, Ordering::Relaxed);
        } else if text.starts_with(r#"{"type":"error""#) {
            self.errors += 1;
        }
    }
}

fn field_i64(text: &str, key: &str) -> Option<i64> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The send time a bench message carries in its text: `"text":"bench:<µs>"`.
fn sent_at(text: &str) -> Option<u64> {
    let start = text.find("\"text\":\"bench:")? + "\"text\":\"bench:".len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A connection's role in a run.
pub struct Role {
    pub room: String,
    /// Messages per second this connection sends (0: it only listens).
    pub rate: f64,
    /// Where in its send period this connection sends, from 0 to 1, so that many
    /// connections spread their sends out instead of sending together.
    pub phase: f64,
    /// Whether it subscribes (publishers on their own only read acks).
    pub subscribe: bool,
    /// How to connect again, as a real client would, when the server closes the socket
    /// (4008 for a reader that fell behind, 1012 for a draining node).
    pub base: String,
    pub path: String,
    pub source: u8,
}

/// Subscribes (resuming after `since_seq` if given) and returns once the server
/// confirmed.
pub async fn subscribe(ws: &mut Ws, room: &str, since_seq: Option<i64>) -> Result<(), String> {
    let mut frame = json!({"type": "subscribe", "room_id": room});
    if let Some(since) = since_seq {
        frame["since_seq"] = json!(since);
    }
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(frame) = ws.next().await {
        if let Ok(Message::Text(text)) = frame {
            if text.starts_with(r#"{"type":"subscribed""#) {
                return Ok(());
            }
            if text.starts_with(r#"{"type":"error""#) {
                return Err(text.to_string());
            }
        }
    }
    Err("closed before subscribed".into())
}

/// Sends at the role's rate until `stop_sending`, and reads until `stop_reading`. When
/// the server closes the socket, reconnects and resumes after the last `seq` seen.
pub async fn drive(
    mut ws: Ws,
    role: Role,
    epoch: Instant,
    stop_sending: Instant,
    stop_reading: tokio::sync::watch::Receiver<bool>,
    progress: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally {
        room: role.room.clone(),
        subscribed: role.subscribe,
        ..Tally::default()
    };
    // Made once, not on every turn of the loop below (a waiter registered and dropped
    // per frame was 3 % of the client's time).
    let mut stop_reading = stop_reading;
    let stop = async move {
        let _ = stop_reading.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let period = if role.rate > 0.0 {
        Duration::from_secs_f64(1.0 / role.rate)
    } else {
        Duration::from_secs(3600)
    };
    let first_send = tokio::time::Instant::now() + period.mul_f64(role.phase);
    let mut ticker = tokio::time::interval_at(first_send, period);
    // A tick the runtime could not serve in time (the client shares the cores with the
    // servers it measures) is made up at once, so the offered rate holds; delaying it
    // instead made three-node fan-out runs offer half their rate.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        let closed = tokio::select! {
            _ = ticker.tick(), if role.rate > 0.0 && Instant::now() < stop_sending => {
                // The guard was checked when this wait began; the tick may come later.
                if Instant::now() >= stop_sending {
                    continue;
                }
                let text = format!("bench:{}", epoch.elapsed().as_micros());
                let frame = json!({"type": "send", "room_id": role.room, "text": text});
                ws.send(Message::text(frame.to_string())).await.is_err()
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    tally.record(&text, epoch, &progress);
                    false
                }
                Some(Ok(_)) => false,
                _ => true,
            },
            () = &mut stop => break,
        };
        if closed {
            match reconnect(&role, tally.seqs.last_seq).await {
                Some(fresh) => {
                    ws = fresh;
                    tally.resumes += 1;
                }
                None => return tally,
            }
        }
    }
    let _ = ws.close(None).await;
    tally
}

async fn reconnect(role: &Role, last_seq: i64) -> Option<Ws> {
    for _ in 0..20 {
        if let Ok(mut ws) = connect(&role.base, &role.path, role.source).await
            && (!role.subscribe || subscribe(&mut ws, &role.room, Some(last_seq)).await.is_ok())
        {
            return Some(ws);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
