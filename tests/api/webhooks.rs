//! SPEC §11 webhooks: what a receiver gets (every event type, in the room's order,
//! signed so the reference implementation verifies it), rotation, replay, the delivery
//! log, who may manage them, and which destinations are refused.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, Route, Server, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    post,
    web::Data,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::helpers::{NodeProcess, TestApp, create_database, settings, spawn_app_with, spawn_node};

/// A request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn event(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook bodies are JSON")
    }

    pub fn id(&self) -> &str {
        &self.headers["webhook-id"]
    }
}

#[derive(Clone)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    /// The status it answers with (200 unless told otherwise).
    status: Arc<AtomicU16>,
    /// How long it takes to answer, in milliseconds.
    delay_ms: Arc<AtomicU64>,
}

/// A webhook receiver that records what it gets and can be told to fail: answer with
/// another status, or stop listening for a while.
pub struct Receiver {
    pub addr: SocketAddr,
    state: ReceiverState,
    stop: Option<oneshot::Sender<()>>,
}

#[handler]
async fn receive(
    request: &poem::Request,
    body: String,
    Data(state): Data<&ReceiverState>,
) -> StatusCode {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_string()))
        .collect();
    state.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    pub async fn start() -> Self {
        let state = ReceiverState {
            received: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
        };
        let mut receiver = Receiver {
            addr: "127.0.0.1:0".parse().unwrap(),
            state,
            stop: None,
        };
        receiver.listen().await;
        receiver
    }

    async fn listen(&mut self) {
        let acceptor = TcpListener::bind(self.addr).into_acceptor().await.unwrap();
        self.addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let routes = Route::new()
            .at("/hook", post(receive))
            .data(self.state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
                routes,
                async move {
                    let _ = stopped.await;
                },
                Some(Duration::from_millis(100)),
            ),
        );
        self.stop = Some(stop);
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    pub async fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Listens again, on the same port.
    pub async fn up(&mut self) {
        self.listen().await;
    }

    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Takes `delay` over each answer from now on.
    pub fn slow_down(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received, for at most `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                started.elapsed() < limit,
                "not delivered within {limit:?}; got {} requests: {:#?}",
                received.len(),
                received
                    .iter()
                    .map(|r| r.event()["type"].clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Verifies each request's signature with the `standardwebhooks` package (the
/// reference implementation) under `secret`; returns the verified bodies, in order.
pub async fn verify_with_standard_webhooks(secret: &str, requests: &[Received]) -> Vec<Value> {
    let python = std::env::var("NATTER_TEST_PYTHON")
        .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`");
    let input: Vec<Value> = requests
        .iter()
        .map(|r| json!({"headers": r.headers, "body": r.body}))
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
hook = Webhook(sys.argv[1])
for request in json.load(sys.stdin):
    print(json.dumps(hook.verify(request["body"], request["headers"])))
"#;
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks refused a signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

pub async fn create_webhook(node: &TestApp, token: &str, room: Uuid, url: &str) -> (Uuid, String) {
    let reply = node
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/webhooks"),
            Some(token),
            Some(json!({"url": url})),
        )
        .await;
    reply.assert_status(201);
    let secret = reply.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (reply.body["id"].as_str().unwrap().parse().unwrap(), secret)
}

#[tokio::test]
async fn a_room_webhook_receives_every_kind_of_event_in_order_signed_and_can_rotate_and_replay() {
    let receiver = Receiver::start().await;
    let first = spawn_app_with(|s| s.webhook_allow_private = true).await;
    let mut second_settings = settings(&first.database_url);
    second_settings.webhook_allow_private = true;
    let second = spawn_node(second_settings).await;
    let alice = first.register("alice").await;
    let bob = first.register("bob").await;
    let room = first.create_room(&alice, "ops", "public").await;
    let before = first.send(&alice, room, "before the webhook").await;

    // Only the owner manages webhooks.
    let path = format!("/v1/rooms/{room}/webhooks");
    let body = Some(json!({"url": receiver.url()}));
    let refused = first
        .call(Method::POST, &path, Some(&bob.token), body.clone())
        .await;
    assert_eq!(
        (refused.status.as_u16(), refused.error_code()),
        (403, "not_member")
    );
    let (webhook, secret) = create_webhook(&first, &alice.token, room, &receiver.url()).await;
    let listed = first.get(&path, &alice.token).await;
    assert_eq!(listed.body["webhooks"][0]["id"], json!(webhook));
    assert_eq!(listed.body["webhooks"][0]["state"], "active");
    assert!(listed.body["webhooks"][0].get("secret").is_none());

    // One of each change, through both nodes.
    let sent = second.send(&alice, room, "hello hooks").await;
    let message = sent["id"].as_str().unwrap().to_string();
    let message_path = format!("/v1/rooms/{room}/messages/{message}");
    first
        .call(
            Method::PATCH,
            &message_path,
            Some(&alice.token),
            Some(json!({"text": "hello, hooks"})),
        )
        .await
        .assert_status(200);
    second
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/join"),
            Some(&bob.token),
            None,
        )
        .await
        .assert_status(204);
    let reaction = format!("{message_path}/reactions/%F0%9F%8E%89");
    second
        .call(Method::PUT, &reaction, Some(&bob.token), None)
        .await
        .assert_status(200);
    first
        .call(Method::DELETE, &reaction, Some(&bob.token), None)
        .await
        .assert_status(200);
    second.send(&bob, room, "second message").await;
    first
        .call(Method::DELETE, &message_path, Some(&alice.token), None)
        .await
        .assert_status(200);
    second
        .call(
            Method::POST,
            &format!("/v1/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await
        .assert_status(204);

    let expected = [
        "message.created",
        "message.edited",
        "member.joined",
        "reaction.added",
        "reaction.removed",
        "message.created",
        "message.deleted",
        "member.left",
    ];
    let got = receiver
        .wait_for(Duration::from_secs(15), |r| r.len() >= expected.len())
        .await;
    let kinds: Vec<Value> = got.iter().map(|r| r.event()["type"].clone()).collect();
    assert_eq!(
        kinds,
        expected.map(|k| json!(k)),
        "in the room's order, nothing before the webhook"
    );
    let events: Vec<Value> = got.iter().map(Received::event).collect();
    assert_eq!(events[0]["data"]["message"]["id"], json!(message));
    assert_eq!(
        events[0]["data"]["message"]["seq"],
        before["seq"].as_i64().unwrap() + 1
    );
    assert_eq!(events[1]["data"]["message"]["text"], "hello, hooks");
    assert_eq!(
        events[2]["data"],
        json!({"room_id": room, "user_id": bob.id})
    );
    assert_eq!(
        events[3]["data"],
        json!({"room_id": room, "message_id": message, "emoji": "🎉", "user_id": bob.id})
    );
    assert_eq!(events[6]["data"]["message"]["deleted"], true);
    assert_eq!(events[6]["data"]["message"]["text"], "");
    for event in &events {
        assert!(event["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }
    let mut ids: Vec<&str> = got.iter().map(Received::id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "one webhook-id per event");
    assert_eq!(
        verify_with_standard_webhooks(&secret, &got).await.len(),
        got.len()
    );

    // Rotation: both signatures for a while, each verifiable on its own.
    let rotated = first
        .call(
            Method::POST,
            &format!("{path}/{webhook}/rotate"),
            Some(&alice.token),
            None,
        )
        .await;
    rotated.assert_status(200);
    let new_secret = rotated.body["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    first.send(&alice, room, "after rotation").await;
    let got = receiver
        .wait_for(Duration::from_secs(10), |r| r.len() > expected.len())
        .await;
    let last = got.last().unwrap().clone();
    assert_eq!(last.headers["webhook-signature"].split(' ').count(), 2);
    assert_eq!(
        verify_with_standard_webhooks(&secret, std::slice::from_ref(&last))
            .await
            .len(),
        1
    );
    assert_eq!(
        verify_with_standard_webhooks(&new_secret, &[last])
            .await
            .len(),
        1
    );

    // Replay from the first message the webhook saw: the same events again, same ids.
    let replay = first
        .call(
            Method::POST,
            &format!("{path}/{webhook}/replay"),
            Some(&alice.token),
            Some(json!({"from_seq": sent["seq"]})),
        )
        .await;
    replay.assert_status(202);
    let count = got.len();
    let again = receiver
        .wait_for(Duration::from_secs(10), |r| r.len() >= count + 8)
        .await;
    let first_ids: Vec<&str> = got[..count].iter().map(Received::id).collect();
    let replayed: Vec<&str> = again[count..].iter().map(Received::id).collect();
    assert_eq!(replayed[0], first_ids[0], "replay starts at from_seq");
    assert!(replayed.contains(&first_ids[5]), "{replayed:?}");

    // The delivery log.
    let log = first
        .get(
            &format!("{path}/{webhook}/deliveries?limit=5"),
            &alice.token,
        )
        .await;
    log.assert_status(200);
    assert_eq!(log.body["state"], "active");
    let entry = &log.body["deliveries"][0];
    assert_eq!(entry["status_code"], 200);
    assert!(entry["event_id"].as_str().unwrap().len() > 4);

    // A receiver answering 500: the event is retried (same id), the webhook is
    // `failing` with the attempts logged, and it recovers once the receiver does.
    receiver.answer(500);
    let failing = first.send(&alice, room, "while failing").await;
    let failing_id = format!("msg_{}", failing["id"].as_str().unwrap().replace('-', ""));
    let retried = |r: &[Received]| r.iter().filter(|r| r.id() == failing_id).count() >= 2;
    receiver.wait_for(Duration::from_secs(15), retried).await;
    let log = first
        .get(&format!("{path}/{webhook}/deliveries"), &alice.token)
        .await;
    assert_eq!(log.body["state"], "failing");
    assert_eq!(log.body["deliveries"][0]["status_code"], 500);
    assert_eq!(log.body["deliveries"][0]["event_id"], json!(failing_id));
    assert!(log.body["deliveries"][0]["attempt"].as_i64().unwrap() >= 1);
    receiver.answer(200);
    let delivered = |r: &[Received]| r.iter().filter(|r| r.id() == failing_id).count() >= 3;
    receiver.wait_for(Duration::from_secs(15), delivered).await;
    let started = Instant::now();
    loop {
        let log = first
            .get(&format!("{path}/{webhook}/deliveries"), &alice.token)
            .await;
        if log.body["state"] == "active" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still {}",
            log.body["state"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleting the room delivers room.deleted, then the webhook goes with the room.
    first
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}"),
            Some(&alice.token),
            None,
        )
        .await
        .assert_status(204);
    let got = receiver
        .wait_for(Duration::from_secs(10), |r| {
            r.last()
                .is_some_and(|r| r.event()["type"] == "room.deleted")
        })
        .await;
    assert_eq!(
        got.last().unwrap().event()["data"]["room"]["id"],
        json!(room)
    );
    let db = first.db().await;
    let remaining = || async {
        db.query_one("SELECT count(*) FROM webhooks WHERE id = $1", &[&webhook])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let started = Instant::now();
    while remaining().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the deleted room's webhook stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn webhooks_to_private_or_non_http_destinations_are_refused() {
    let app = spawn_app_with(|_| {}).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let path = format!("/v1/rooms/{room}/webhooks");
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/hook",
        "ftp://example.com/hook",
        "http://user:secret@example.com/hook",
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
    let reply = app
        .call(
            Method::POST,
            &path,
            Some(&alice.token),
            Some(json!({"url": "https://example.com/h", "events": ["room.created"]})),
        )
        .await;
    assert_eq!(
        (reply.status.as_u16(), reply.error_code()),
        (400, "invalid_input")
    );
    let count: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

/// The room an event belongs to.
fn room_of(event: &Value) -> Value {
    let data = &event["data"];
    [
        &data["message"]["room_id"],
        &data["room"]["id"],
        &data["room_id"],
    ]
    .into_iter()
    .find(|v| !v.is_null())
    .cloned()
    .unwrap_or(Value::Null)
}

/// The room's history after `after` as webhook ids, in the room's order, read from
/// Postgres: what a webhook that started there must deliver.
async fn history_ids(db: &tokio_postgres::Client, room: Uuid, after: (i64, i32)) -> Vec<String> {
    db.query(
        "SELECT id FROM (
             SELECT 'msg_' || replace(id::text, '-', '') AS id, seq AS s, 0 AS n
               FROM messages WHERE room_id = $1
             UNION ALL
             SELECT 'evt_' || replace(id::text, '-', ''), after_seq, n
               FROM room_events WHERE room_id = $1) history
          WHERE (s, n) > ($2, $3) ORDER BY s, n",
        &[&room, &after.0, &after.1],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test]
async fn with_the_receiver_down_20_s_and_the_delivering_node_killed_every_event_arrives_in_room_order()
 {
    const MESSAGES: usize = 500;
    const DOWN: Duration = Duration::from_secs(20);
    let mut receiver = Receiver::start().await;
    let database_url = create_database().await;
    let nats = std::env::var("NATTER_TEST_NATS_URL").unwrap();
    let prefix = database_url.rsplit('/').next().unwrap().to_string();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let node = NodeProcess::start_with(&database_url, &nats, &prefix, |command| {
            command.env("WEBHOOK_ALLOW_PRIVATE", "true");
        })
        .await;
        nodes.push(node);
    }
    let apis: Vec<TestApp> = nodes
        .iter()
        .map(|n| TestApp::at(n.addr, &database_url))
        .collect();
    let alice = apis[0].register("alice").await;
    let bob = apis[1].register("bob").await;
    let mut rooms = Vec::new();
    for name in ["alpha", "beta"] {
        let room = apis[0].create_room(&alice, name, "public").await;
        apis[2]
            .call(
                Method::POST,
                &format!("/v1/rooms/{room}/join"),
                Some(&bob.token),
                None,
            )
            .await
            .assert_status(204);
        let (webhook, secret) = create_webhook(&apis[1], &alice.token, room, &receiver.url()).await;
        rooms.push((room, webhook, secret));
    }
    let db = apis[0].db().await;
    let mut starts = Vec::new();
    for (room, webhook, _) in &rooms {
        let row = db
            .query_one(
                "SELECT seq, n FROM webhook_cursors WHERE webhook_id = $1 AND room_id = $2",
                &[webhook, room],
            )
            .await
            .unwrap();
        starts.push((row.get::<_, i64>(0), row.get::<_, i32>(1)));
    }

    // The receiver goes down; 500 messages, edits, deletes and reactions go in through
    // all three nodes.
    receiver.down().await;
    let down_at = Instant::now();
    let (mut edits, mut deletes, mut reactions) = (0, 0, 0);
    for i in 0..MESSAGES {
        let (room, ..) = rooms[i % 2];
        let api = &apis[i % 3];
        let sender = if i % 5 == 0 { &bob } else { &alice };
        let message = api.send(sender, room, format!("message {i}")).await;
        let path = format!(
            "/v1/rooms/{room}/messages/{}",
            message["id"].as_str().unwrap()
        );
        if i % 10 == 1 {
            let edited = apis[(i + 1) % 3]
                .call(
                    Method::PATCH,
                    &path,
                    Some(&sender.token),
                    Some(json!({"text": format!("edited {i}")})),
                )
                .await;
            edited.assert_status(200);
            edits += 1;
        }
        if i % 10 == 3 {
            let reacted = apis[(i + 2) % 3]
                .call(
                    Method::PUT,
                    &format!("{path}/reactions/%F0%9F%91%8D"),
                    Some(&bob.token),
                    None,
                )
                .await;
            reacted.assert_status(200);
            reactions += 1;
        }
        if i % 25 == 7 {
            apis[(i + 1) % 3]
                .call(Method::DELETE, &path, Some(&sender.token), None)
                .await
                .assert_status(200);
            deletes += 1;
        }
    }
    println!(
        "sent {MESSAGES} messages, {edits} edits, {reactions} reactions, {deletes} deletes in {:?}",
        down_at.elapsed()
    );
    tokio::time::sleep(DOWN.saturating_sub(down_at.elapsed())).await;

    // Back up, slowly enough that delivery takes a while; the node delivering is killed
    // once some events have arrived.
    receiver.slow_down(Duration::from_millis(5));
    receiver.up().await;
    let up_at = Instant::now();
    receiver
        .wait_for(Duration::from_secs(60), |r| r.len() >= 60)
        .await;
    let holder: Option<String> = db
        .query_opt(
            "SELECT leased_by FROM webhook_cursors WHERE leased_by IS NOT NULL AND lease_until > now_ms() LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .map(|row| row.get(0));
    let holder = holder.expect("a node is delivering");
    let killed = nodes
        .iter()
        .position(|n| format!("node-{}", n.addr.port()) == holder)
        .expect("the lease holder is one of the nodes");
    nodes[killed].signal("-KILL");
    let received_at_kill = receiver.received().len();
    println!("killed {holder} after {received_at_kill} requests");

    // Everything arrives: each room's history, in order, once repeats are dropped.
    let mut expected = Vec::new();
    for ((room, ..), start) in rooms.iter().zip(&starts) {
        expected.push(history_ids(&db, *room, *start).await);
    }
    let total: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(total, MESSAGES + edits + reactions + deletes);
    let everything = |received: &[Received]| {
        let ids: std::collections::HashSet<&str> = received.iter().map(Received::id).collect();
        expected
            .iter()
            .flatten()
            .all(|id| ids.contains(id.as_str()))
    };
    let received = receiver.wait_for(Duration::from_secs(90), everything).await;
    let caught_up = received.iter().map(|r| r.at).max().unwrap() - up_at;
    for (i, (room, _, secret)) in rooms.iter().enumerate() {
        let mine: Vec<Received> = received
            .iter()
            .filter(|r| room_of(&r.event()) == json!(room))
            .cloned()
            .collect();
        let mut seen = std::collections::HashSet::new();
        let order: Vec<String> = mine
            .iter()
            .map(|r| r.id().to_string())
            .filter(|id| seen.insert(id.clone()))
            .collect();
        assert_eq!(order, expected[i], "room {i}: in order, without a gap");
        assert_eq!(
            verify_with_standard_webhooks(secret, &mine).await.len(),
            mine.len()
        );
        let kinds = |kind: &str| {
            let mut seen = std::collections::HashSet::new();
            mine.iter()
                .filter(|r| r.event()["type"] == kind && seen.insert(r.id().to_string()))
                .count()
        };
        assert_eq!(kinds("message.created"), MESSAGES / 2, "room {i}");
    }
    println!(
        "webhook failure test: {total} events, {} requests, {} repeats, all delivered {caught_up:?} after the receiver came back",
        received.len(),
        received.len() - total
    );
}

#[tokio::test]
async fn a_cluster_wide_webhook_from_webhooks_receives_every_rooms_events_from_when_it_was_configured()
 {
    let receiver = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // Every node delivers any webhook's events, so every node of the cluster must
    // allow the receiver's private address, as a real cluster's shared settings would:
    // one that refused it claimed deliveries now and then, and backed them off.
    let first = spawn_app_with(|s| s.webhook_allow_private = true).await;
    let alice = first.register("alice").await;
    let old = first.create_room(&alice, "old", "public").await;
    first.send(&alice, old, "before the webhook").await;

    // A node configured with WEBHOOKS registers it for the whole cluster.
    let config = json!([{"url": receiver.url(), "secret": secret}]).to_string();
    let mut with_webhook = settings(&first.database_url);
    with_webhook.webhook_allow_private = true;
    with_webhook.webhooks = natter::webhooks::parse_cluster_webhooks(&config, true).unwrap();
    let second = spawn_node(with_webhook).await;
    let new = second.create_room(&alice, "new", "private").await;
    first.send(&alice, old, "in the old room").await;
    first.send(&alice, new, "in the new room").await;

    let got = receiver
        .wait_for(Duration::from_secs(15), |r| r.len() >= 3)
        .await;
    let mut seen: Vec<(String, Value)> = got
        .iter()
        .map(|r| {
            (
                r.event()["type"].as_str().unwrap().to_string(),
                room_of(&r.event()),
            )
        })
        .collect();
    seen.sort_by_key(|(kind, room)| (kind.clone(), room.to_string()));
    let mut expected = vec![
        ("message.created".to_string(), json!(old)),
        ("message.created".to_string(), json!(new)),
        ("room.created".to_string(), json!(new)),
    ];
    expected.sort_by_key(|(kind, room)| (kind.clone(), room.to_string()));
    assert_eq!(seen, expected);
    let in_new: Vec<Value> = got
        .iter()
        .filter(|r| room_of(&r.event()) == json!(new))
        .map(|r| r.event()["type"].clone())
        .collect();
    assert_eq!(in_new, [json!("room.created"), json!("message.created")]);
    assert_eq!(
        verify_with_standard_webhooks(secret, &got).await.len(),
        got.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "nothing from before it was configured"
    );
}

/// The README's walk-through, as written: a bot posts, a room webhook delivers to
/// `examples/webhook_receiver.py`, which verifies, drops the repeats a replay sends, and
/// prints each event once.
#[tokio::test]
async fn the_example_receiver_verifies_prints_each_event_once_and_refuses_forgeries() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let app = spawn_app_with(|s| s.webhook_allow_private = true).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "standup", "public").await;
    let bot = app
        .call(
            Method::POST,
            "/v1/bots",
            Some(&alice.token),
            Some(json!({"username": "standup-bot"})),
        )
        .await;
    bot.assert_status(201);
    let bot_key = bot.body["token"].as_str().unwrap().to_string();
    app.call(
        Method::POST,
        &format!("/v1/rooms/{room}/join"),
        Some(&bot_key),
        None,
    )
    .await
    .assert_status(204);
    let port = crate::helpers::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let (webhook, secret) = create_webhook(&app, &alice.token, room, &url).await;

    let mut receiver = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/webhook_receiver.py"
        ))
        .args(["--secret", &secret, "--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the example");
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    crate::helpers::wait_for_port(port).await;

    // A request without Natter's signature is refused.
    let forged = reqwest::Client::new()
        .post(&url)
        .header("webhook-id", "msg_forged")
        .header("webhook-timestamp", (unix_secs()).to_string())
        .header("webhook-signature", "v1,bm90IGEgc2lnbmF0dXJl")
        .body(r#"{"type":"message.created"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let posted = app
        .post_message(&bot_key, room, "Standup in 5 minutes")
        .await;
    posted.assert_status(201);
    let printed = printed_event(&mut lines).await;
    assert_eq!(printed["type"], "message.created");
    assert_eq!(printed["data"]["message"]["text"], "Standup in 5 minutes");
    assert_eq!(
        printed["data"]["message"]["sender_id"],
        bot.body["user"]["id"]
    );

    // A replay sends it again: the example drops the repeat and prints only what is new.
    app.call(
        Method::POST,
        &format!("/v1/rooms/{room}/webhooks/{webhook}/replay"),
        Some(&alice.token),
        Some(json!({"from_seq": posted.body["seq"]})),
    )
    .await
    .assert_status(202);
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.post_message(&bot_key, room, "Standup now")
        .await
        .assert_status(201);
    let printed = printed_event(&mut lines).await;
    assert_eq!(printed["data"]["message"]["text"], "Standup now");
}

/// The next event the example printed.
async fn printed_event(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the example prints within 10 s")
        .unwrap()
        .expect("the example is running");
    serde_json::from_str(&line).unwrap()
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
