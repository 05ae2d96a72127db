//! SPEC §11: bots (API keys on REST and WebSocket, revoked everywhere within 5 s) and the
//! before-send moderation hook.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use natter::webhooks::{send_hook::SendHookSettings, signing::Secret};
use poem::{
    EndpointExt, IntoResponse, Route, Server, handler,
    listener::{Acceptor, Listener, TcpListener},
    post,
    web::Data,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Reply, TestApp, TestUser, WsClient, settings, spawn_app, spawn_app_with, spawn_node,
};

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

    // Sockets: tickets bought with the key (never the key itself in a URL, SPEC §18),
    // each opening a socket on one node.
    let ticket = ws_ticket(&first, &key).await;
    let mut by_key = WsClient::open(format!("ws://{}/v1/ws?ticket={ticket}", second.addr)).await;
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
    let ticket = ws_ticket(&first, &new_key).await;
    let mut socket = WsClient::open(format!("ws://{}/v1/ws?ticket={ticket}", first.addr)).await;
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

/// A request as a test service received it: its headers and its raw body.
type Received = (Vec<(String, String)>, String);

/// A stand-in moderation service. Its verdict follows the text: "spam" is rejected,
/// "darn" is rewritten, "slow" is answered after 3 s, "boom" gets a 500; anything else
/// is allowed. It records every request as it arrived (headers and raw body).
struct ModerationService {
    url: String,
    requests: Arc<Mutex<Vec<Received>>>,
}

#[handler]
async fn moderate(
    request: &poem::Request,
    body: String,
    Data(requests): Data<&Arc<Mutex<Vec<Received>>>>,
) -> poem::Response {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_string()))
        .collect();
    requests.lock().unwrap().push((headers, body.clone()));
    let text = serde_json::from_str::<Value>(&body).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    let verdict = if text.contains("spam") {
        json!({"action": "reject", "reason": "no spam here"})
    } else if text.contains("darn") {
        json!({"action": "modify", "text": text.replace("darn", "d**n")})
    } else if text.contains("slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
        json!({"action": "allow"})
    } else if text.contains("boom") {
        return poem::Response::builder()
            .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
            .finish();
    } else {
        json!({"action": "allow"})
    };
    poem::web::Json(verdict).into_response()
}

async fn moderation_service() -> ModerationService {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    let routes = Route::new()
        .at("/moderate", post(moderate))
        .data(requests.clone());
    tokio::spawn(Server::new_with_acceptor(acceptor).run(routes));
    ModerationService {
        url: format!("http://{addr}/moderate"),
        requests,
    }
}

impl ModerationService {
    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn settings(&self, fail_open: bool) -> SendHookSettings {
        SendHookSettings {
            url: self.url.clone(),
            secret: Some(Secret::parse(HOOK_SECRET).unwrap()),
            timeout: Duration::from_millis(500),
            fail_open,
        }
    }
}

const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Verifies each recorded request with the `standardwebhooks` package (the reference
/// implementation, not Natter's code); returns the bodies it verified.
async fn verified_by_standard_webhooks(requests: &[Received]) -> Vec<Value> {
    let requests: Vec<crate::webhooks::Received> = requests
        .iter()
        .map(|(headers, body)| crate::webhooks::Received {
            headers: headers.iter().cloned().collect(),
            body: body.clone(),
            at: Instant::now(),
        })
        .collect();
    crate::webhooks::verify_with_standard_webhooks(HOOK_SECRET, &requests).await
}

#[tokio::test]
async fn an_edit_is_moderated_by_the_before_send_hook_as_a_send_is() {
    let hook = moderation_service().await;
    let app = spawn_app_with(|s| s.send_hook = Some(hook.settings(false))).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "moderated", "public").await;
    app.post(&format!("/v1/rooms/{room}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    let sent = post_text(&app, &alice, room, "hello", None).await;
    sent.assert_status(201);
    let id = sent.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/rooms/{room}/messages/{id}");
    let edit = |user: &TestUser, text: &str| {
        let (token, body) = (user.token.clone(), json!({"text": text}));
        let (app, path) = (&app, &path);
        async move {
            app.call(Method::PATCH, path, Some(&token), Some(body))
                .await
        }
    };

    // What a send could not say, an edit cannot either; a rewrite applies to edits too.
    let rejected = edit(&alice, "now buy spam").await;
    rejected.assert_status(403);
    assert_eq!(rejected.error_code(), "rejected_by_hook");
    let rewritten = edit(&alice, "oh darn").await;
    rewritten.assert_status(200);
    assert_eq!(rewritten.body["text"], "oh d**n");
    // No verdict: the edit is refused (fail closed), the text stays.
    edit(&alice, "boom").await.assert_unavailable();

    // An edit the store would refuse never reaches the hook.
    let calls = hook.calls();
    let not_sender = edit(&bob, "spam from bob").await;
    not_sender.assert_status(403);
    assert_eq!(not_sender.error_code(), "not_sender");
    assert_eq!(hook.calls(), calls);

    let history = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(history.body["messages"][0]["text"], "oh d**n");
    // The hook was told each was an edit, and of which message.
    let requests = hook.requests.lock().unwrap().clone();
    let bodies = verified_by_standard_webhooks(&requests).await;
    assert_eq!(
        bodies[1],
        json!({"room_id": room, "sender_id": alice.id, "text": "now buy spam",
               "client_msg_id": null, "reply_to": null, "message_id": id, "edit": true})
    );
    assert_eq!(bodies.len(), 4, "the send and three edits");
}

async fn post_text(
    node: &TestApp,
    user: &TestUser,
    room: Uuid,
    text: &str,
    key: Option<&str>,
) -> Reply {
    let mut body = json!({"text": text});
    if let Some(key) = key {
        body["client_msg_id"] = json!(key);
    }
    let path = format!("/v1/rooms/{room}/messages");
    node.call(Method::POST, &path, Some(&user.token), Some(body))
        .await
}

#[tokio::test]
async fn the_before_send_hook_allows_rejects_and_rewrites_fails_closed_or_open_and_is_not_asked_again_for_a_retry()
 {
    let hook = moderation_service().await;
    let closed = spawn_app_with(|s| s.send_hook = Some(hook.settings(false))).await;
    let mut open_settings = settings(&closed.database_url);
    open_settings.send_hook = Some(hook.settings(true));
    let open = spawn_node(open_settings).await;
    let alice = closed.register("alice").await;
    let mallory = closed.register("mallory").await;
    let room = closed.create_room(&alice, "moderated", "private").await;

    // Allowed, then retried: one call to the hook, the same message twice.
    let first = post_text(&closed, &alice, room, "hello", Some("k1")).await;
    first.assert_status(201);
    assert_eq!(hook.calls(), 1);
    let retry = post_text(&open, &alice, room, "hello", Some("k1")).await;
    retry.assert_status(200);
    assert_eq!(retry.body["id"], first.body["id"]);
    assert_eq!(hook.calls(), 1, "a retry is not moderated twice");

    // Rejected with the hook's reason; rewritten.
    let rejected = post_text(&closed, &alice, room, "buy spam", None).await;
    rejected.assert_status(403);
    assert_eq!(rejected.error_code(), "rejected_by_hook");
    assert_eq!(rejected.body["error"]["message"], "no spam here");
    let rewritten = post_text(&closed, &alice, room, "oh darn", Some("k2")).await;
    rewritten.assert_status(201);
    assert_eq!(rewritten.body["text"], "oh d**n");

    // No usable verdict: refused with 503 and Retry-After where sends fail closed,
    // stored unmoderated where they fail open.
    for text in ["slow", "boom"] {
        let started = Instant::now();
        let refused = post_text(&closed, &alice, room, text, None).await;
        refused.assert_unavailable();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{text}: waited {:?}",
            started.elapsed()
        );
        post_text(&open, &alice, room, &format!("{text} but open"), None)
            .await
            .assert_status(201);
    }

    // Over a socket: the same verdicts, as an error frame and a rewritten ack and event.
    let mut socket = WsClient::connect(closed.addr, "/v1/ws", &alice.token).await;
    socket.subscribe(room, None).await;
    socket
        .send(json!({"type": "send", "room_id": room, "text": "spam again", "client_msg_id": "w1"}))
        .await;
    let error = socket.recv_type("error").await;
    assert_eq!(
        (error["code"].clone(), error["ref"].clone()),
        (json!("rejected_by_hook"), json!("w1"))
    );
    socket
        .send(
            json!({"type": "send", "room_id": room, "text": "darn socket", "client_msg_id": "w2"}),
        )
        .await;
    // The ack and the event, in whichever order they come.
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let frame = socket.recv().await;
        if frame["type"] == "send_ack" || frame["type"] == "message" {
            texts.push((frame["type"].clone(), frame["message"]["text"].clone()));
        }
    }
    texts.sort_by_key(|(kind, _)| kind.to_string());
    assert_eq!(
        texts,
        [
            (json!("message"), json!("d**n socket")),
            (json!("send_ack"), json!("d**n socket"))
        ]
    );

    // A send the commit would refuse never reaches the hook.
    let calls = hook.calls();
    let outsider = post_text(&closed, &mallory, room, "hi", None).await;
    assert_eq!(outsider.status, 404);
    assert_eq!(hook.calls(), calls);

    // What was stored: exactly the allowed and rewritten texts.
    let history = closed
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    let texts: Vec<&str> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "hello",
            "oh d**n",
            "slow but open",
            "boom but open",
            "d**n socket"
        ]
    );

    // Every request verifies with the reference implementation, and its signed body is
    // the send as proposed.
    let requests = hook.requests.lock().unwrap().clone();
    let bodies = verified_by_standard_webhooks(&requests).await;
    assert_eq!(bodies.len(), requests.len());
    assert_eq!(
        bodies[0],
        json!({"room_id": room, "sender_id": alice.id, "text": "hello", "client_msg_id": "k1", "reply_to": null, "edit": false})
    );
    let metrics = closed.metrics().await;
    for outcome in ["allow", "reject", "modify", "timeout", "error"] {
        let counted = metrics.lines().any(|line| {
            line.starts_with("natter_send_hook_verdicts_total")
                && line.contains(&format!("outcome=\"{outcome}\""))
        });
        assert!(counted, "{outcome}:\n{metrics}");
    }
}
