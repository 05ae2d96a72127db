//! SPEC §13: `GET /asyncapi.json` describes the WebSocket API. The document validates
//! against the AsyncAPI 3.0.0 JSON Schema (vendored in `tests/fixtures/asyncapi/`), and
//! every frame a node sends in a scenario that makes it send each kind of frame, on
//! `/v1`'s sockets and the seeds' (SPEC §12), validates against its message's schema
//! (both checked by Python's `jsonschema`, in `tests/api/asyncapi.py`).
//!
//! Every frame of every other test is checked as it arrives by the suite's own validator
//! (`tests/api/frame_schema.rs`); here it is shown to read the document the node serves
//! and to judge frames as Python's `jsonschema` does.

use std::{path::PathBuf, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    access_revocation::add_member,
    frame_schema,
    helpers::{RECEIVED_FRAMES, TestApp, WsClient, run_within, spawn_app},
    realtime::public_room_with,
};

const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/asyncapi/asyncapi-3.0.0.schema.json"
);

async fn document(app: &TestApp) -> Value {
    let response = app
        .http()
        .get(app.url("/asyncapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    response.json().await.unwrap()
}

/// Runs `tests/api/asyncapi.py` on `document` (and the `frames`, if any); returns what
/// it printed, and whether it passed.
async fn check(document: &Value, frames: Option<&[(String, Value)]>) -> (bool, String) {
    let python = PathBuf::from(
        std::env::var("NATTER_TEST_PYTHON")
            .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`"),
    );
    let work = std::env::temp_dir().join(format!("natter-asyncapi-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("asyncapi.json"), document.to_string()).unwrap();
    let mut command = Command::new(python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/asyncapi.py"
        ))
        .arg(SCHEMA)
        .arg(work.join("asyncapi.json"));
    if let Some(frames) = frames {
        let lines: String = frames
            .iter()
            .map(|(path, frame)| format!("{}\n", json!([path, frame])))
            .collect();
        std::fs::write(work.join("frames.jsonl"), lines).unwrap();
        command.arg(work.join("frames.jsonl"));
    }
    let out = run_within(&mut command, Duration::from_secs(60), "the AsyncAPI check").await;
    let _ = std::fs::remove_dir_all(&work);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[tokio::test]
async fn the_asyncapi_document_validates_against_the_asyncapi_3_0_0_schema() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|channel| channel["address"].as_str().unwrap())
        .collect();
    assert!(addresses.contains(&"/v1/ws"), "{addresses:?}");
    assert!(
        addresses.contains(&"/v1/ws/rooms/{room_id}"),
        "{addresses:?}"
    );
    // The document every frame of the suite is checked against is the one nodes serve.
    assert_eq!(doc, natter::api::asyncapi::document());
    let (passed, out) = check(&doc, None).await;
    assert!(passed, "{out}");
    // The broken copy the script makes fails, so the schema is really applied.
    assert!(
        out.contains("broken copy:") && !out.contains("broken copy: 0 "),
        "{out}"
    );

    // And a document that is wrong in a way the script does not arrange fails too.
    let mut wrong = doc.clone();
    wrong["operations"]["socket.send"]["action"] = json!("publish");
    let (passed, out) = check(&wrong, None).await;
    assert!(!passed, "an AsyncAPI 2 action validated:\n{out}");

    // Swagger UI's page is generated from `/openapi.json`, whose description links here.
    let openapi: Value = app
        .http()
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let description = openapi["info"]["description"].as_str().unwrap();
    assert!(description.contains("(/asyncapi.json)"), "{description}");
}

/// Makes a node send every kind of frame of SPEC §4 and §10 over `/v1/ws` and the
/// single-room socket, and every frame of the seeds' sockets (SPEC §12); returns the
/// node and every frame the test's sockets received (the helpers record them all).
async fn frames_of_every_kind() -> (TestApp, Vec<(String, Value)>) {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = public_room_with(&app, &alice, &[&bob]).await;
    let private = app.create_room(&alice, "secret", "private").await;
    add_member(&app, &alice, private, bob.id).await;
    let mut alice_ws = WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    let mut bob_ws = WsClient::connect(app.addr, "/v1/ws", &bob.token).await;
    bob_ws.subscribe(room, None).await;
    bob_ws.subscribe(private, None).await;
    alice_ws.subscribe(room, None).await;
    bob_ws.recv_type("presence").await;

    // send → send_ack and message, with and without a client_msg_id.
    alice_ws
        .send(json!({"type": "send", "room_id": room, "text": "hi", "client_msg_id": "c-1"}))
        .await;
    let ack = alice_ws.recv_type("send_ack").await;
    alice_ws
        .send(json!({"type": "send", "room_id": room, "text": "again"}))
        .await;
    assert_eq!(
        alice_ws.recv_type("send_ack").await["client_msg_id"],
        Value::Null
    );
    bob_ws.message_seqs(2).await;
    let id = ack["message"]["id"].as_str().unwrap().to_owned();

    // typing, read_upto, ping.
    alice_ws
        .send(json!({"type": "typing", "room_id": room, "value": true}))
        .await;
    alice_ws.recv_type("typing_ack").await;
    bob_ws.recv_type("typing").await;
    alice_ws
        .send(json!({"type": "read_upto", "room_id": room, "seq": 2}))
        .await;
    alice_ws.recv_type("read_ack").await;
    bob_ws.recv_type("read").await;
    alice_ws.send(json!({"type": "ping"})).await;
    alice_ws.recv_type("pong").await;

    // An edit, a reaction (with its emoji in the path) and a delete over REST.
    let path = format!("/v1/rooms/{room}/messages/{id}");
    app.call(
        Method::PATCH,
        &path,
        Some(&alice.token),
        Some(json!({"text": "edited"})),
    )
    .await
    .assert_status(200);
    bob_ws.recv_type("message_edited").await;
    app.call(
        Method::PUT,
        &format!("{path}/reactions/🎉"),
        Some(&bob.token),
        None,
    )
    .await
    .assert_status(200);
    bob_ws.recv_type("reaction").await;
    app.call(Method::DELETE, &path, Some(&alice.token), None)
        .await
        .assert_status(200);
    bob_ws.recv_type("message_deleted").await;

    // Errors: bad JSON, an unknown type, a missing field, a failed send with its ref.
    alice_ws.send_raw("{nope".into()).await;
    alice_ws.send(json!({"type": "dance"})).await;
    alice_ws
        .send(json!({"type": "send", "room_id": room}))
        .await;
    alice_ws
        .send(json!({"type": "send", "room_id": room, "text": " ", "client_msg_id": "c-2"}))
        .await;
    for _ in 0..4 {
        alice_ws.recv_type("error").await;
    }

    // unsubscribe (no reason), and an ended subscription (reason), with presence `left`.
    alice_ws
        .send(json!({"type": "unsubscribe", "room_id": room}))
        .await;
    alice_ws.recv_type("unsubscribed").await;
    let removed = format!("/v1/rooms/{private}/members/{}", bob.id);
    app.call(Method::DELETE, &removed, Some(&alice.token), None)
        .await
        .assert_status(204);
    let ended = bob_ws.recv_type("unsubscribed").await;
    assert_eq!(ended["reason"], "removed");

    // The single-room socket: subscribed at once, frames without room_id act on it.
    let mut room_ws =
        WsClient::connect(app.addr, &format!("/v1/ws/rooms/{room}"), &alice.token).await;
    room_ws.recv_type("subscribed").await;
    room_ws
        .send(json!({"type": "send", "text": "from the room socket"}))
        .await;
    room_ws.recv_type("send_ack").await;
    room_ws
        .send(json!({"type": "typing", "value": false}))
        .await;
    room_ws.recv_type("typing_ack").await;
    room_ws.send(json!({"type": "read_upto", "seq": 3})).await;
    room_ws.recv_type("read_ack").await;
    room_ws.send(json!({"type": "ping"})).await;
    room_ws.recv_type("pong").await;
    room_ws.send(json!({"type": "unsubscribe"})).await;
    room_ws.recv_type("unsubscribed").await;

    // The seeds' sockets (SPEC §12), in their own frame shapes.
    let seed_room = format!("/ws/rooms/{room}");
    let mut seed_alice = WsClient::connect(app.addr, &seed_room, &alice.token).await;
    let mut seed_bob = WsClient::connect(app.addr, &seed_room, &bob.token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.send(&alice, room, "to the seed room").await;
    seed_alice.recv_type("message").await;
    seed_bob.recv_type("message").await;
    seed_alice
        .send(json!({"type": "typing", "value": true}))
        .await;
    seed_alice.recv_type("typing_ack").await;
    seed_bob.recv_type("typing").await;
    seed_bob
        .send(json!({"type": "read_upto", "created_at_ms": 1_795_773_600_000_i64}))
        .await;
    seed_bob.recv_type("read_ack").await;
    seed_bob.send(json!({"type": "ping"})).await;
    seed_bob.recv_type("pong").await;
    seed_bob.send_raw("{nope".into()).await;
    seed_bob.recv_type("error").await;
    let mut chat_alice =
        WsClient::connect(app.addr, &format!("/ws/{}", bob.id), &alice.token).await;
    let mut chat_bob = WsClient::connect(app.addr, &format!("/ws/{}", alice.id), &bob.token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    chat_alice
        .send(json!({"type": "chat", "message": "hey bob"}))
        .await;
    chat_alice.recv_type("chat").await;
    chat_bob.recv_type("chat").await;
    chat_bob.send(json!({"type": "ping"})).await;
    chat_bob.recv_type("pong").await;
    chat_bob.send_raw("{nope".into()).await;
    chat_bob.recv_type("error").await;

    // Whatever else is on its way (presence, typing, …) is recorded too.
    for ws in [
        &mut alice_ws,
        &mut bob_ws,
        &mut room_ws,
        &mut seed_alice,
        &mut seed_bob,
        &mut chat_alice,
        &mut chat_bob,
    ] {
        while let Some(Ok(_)) = ws.next(Duration::from_millis(300)).await {}
    }

    let frames = RECEIVED_FRAMES.lock().unwrap().clone();
    assert!(frames.len() > 30, "{}", frames.len());
    (app, frames)
}

/// Validates every frame of [`frames_of_every_kind`] against `/asyncapi.json` with
/// Python's `jsonschema`, and checks that no kind was missed. A frame with a field the
/// schema lacks, a missing field or a wrong type fails.
#[tokio::test]
async fn every_frame_a_node_sends_validates_against_its_asyncapi_message_schema() {
    let (app, frames) = frames_of_every_kind().await;
    let doc = document(&app).await;
    let (passed, out) = check(&doc, Some(&frames)).await;
    assert!(passed, "{out}");
    // Every server frame of the document was sent at least once on /v1/ws and on each
    // seed's socket.
    for channel in ["socket", "seed_room", "seed_direct"] {
        assert!(out.contains(&format!("unseen {channel} \n")), "{out}");
    }

    // And the check can fail: a frame with a field its schema lacks, one missing a
    // field and one with a wrong type are each refused.
    let room = uuid::Uuid::new_v4();
    let mut wrong = frames[..1].to_vec();
    let (path, pong) = ("/v1/ws".to_owned(), json!({"type": "pong", "extra": 1}));
    wrong.push((path.clone(), pong));
    wrong.push((path.clone(), json!({"type": "subscribed", "room_id": room})));
    wrong.push((
        path,
        json!({"type": "read_ack", "room_id": room, "seq": "2"}),
    ));
    let (passed, out) = check(&doc, Some(&wrong)).await;
    assert!(!passed, "{out}");
    assert_eq!(out.matches("socket pong:").count(), 1, "{out}");
    assert_eq!(out.matches("socket subscribed:").count(), 1, "{out}");
    assert_eq!(out.matches("socket read_ack:").count(), 1, "{out}");
}

/// Variants of `frame` for two validators to judge: at every depth, each field left out,
/// each value replaced by values of other JSON types, by `null` and by another string,
/// and an unexpected field added to each object.
fn mutations(frame: &Value) -> Vec<Value> {
    fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                for (name, field) in fields {
                    pointers(field, format!("{at}/{name}"), out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    pointers(item, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }
    let mut all = Vec::new();
    pointers(frame, String::new(), &mut all);
    let mut variants = Vec::new();
    for pointer in all {
        let value = frame.pointer(&pointer).unwrap();
        if value.is_object() {
            let mut extra = frame.clone();
            extra.pointer_mut(&pointer).unwrap()["unexpected"] = json!(1);
            variants.push(extra);
        }
        if pointer.is_empty() {
            continue;
        }
        let replacements = match value {
            Value::String(_) => vec![json!(7), json!("mutated"), json!({})],
            Value::Number(_) => vec![json!("7"), json!(1.5), json!(-1)],
            Value::Bool(_) => vec![json!("true"), json!(0)],
            Value::Null => vec![json!(false), json!("x"), json!(7)],
            Value::Object(_) => vec![json!([])],
            Value::Array(_) => vec![json!({}), json!([7]), json!([])],
        };
        for replacement in replacements.into_iter().chain([Value::Null]) {
            let mut variant = frame.clone();
            *variant.pointer_mut(&pointer).unwrap() = replacement;
            variants.push(variant);
        }
        let (parent, name) = pointer.rsplit_once('/').unwrap();
        let mut variant = frame.clone();
        match variant.pointer_mut(parent).unwrap() {
            Value::Object(fields) => drop(fields.remove(name)),
            Value::Array(items) => drop(items.remove(name.parse().unwrap())),
            _ => unreachable!("a pointer's parent holds it"),
        }
        variants.push(variant);
    }
    variants
}

/// The suite's validator (`tests/api/frame_schema.rs`) is only worth its panics if it
/// judges frames as a real JSON Schema implementation does: on one frame of each kind
/// per channel from [`frames_of_every_kind`], and on hundreds of broken variants of
/// them, it and Python's `jsonschema` give the same verdict, frame by frame.
#[tokio::test]
async fn the_suites_frame_validator_agrees_with_python_jsonschema() {
    let (app, frames) = frames_of_every_kind().await;
    let mut kinds = std::collections::BTreeSet::new();
    let mut judged = Vec::new();
    for (path, frame) in &frames {
        // The single-room and seed sockets' paths end in an id: one kind per channel.
        let channel = path
            .rsplit_once('/')
            .map_or(path.as_str(), |(head, _)| head);
        if !kinds.insert((channel.to_owned(), frame["type"].to_string())) {
            continue;
        }
        judged.push((path.clone(), frame.clone()));
        judged.extend(mutations(frame).into_iter().map(|v| (path.clone(), v)));
    }
    judged.push(("/v1/nowhere".to_owned(), json!({"type": "pong"})));
    let doc = document(&app).await;
    let (_, out) = check(&doc, Some(&judged)).await;
    let python: Vec<bool> = out
        .lines()
        .filter_map(|line| line.strip_prefix("verdict "))
        .enumerate()
        .map(|(i, verdict)| match verdict.split_once(' ') {
            Some((index, "ok")) if index == i.to_string() => true,
            Some((index, "invalid")) if index == i.to_string() => false,
            _ => panic!("verdict {i} unreadable: {verdict}\n{out}"),
        })
        .collect();
    assert_eq!(python.len(), judged.len(), "{out}");
    let mut disagreements = Vec::new();
    for ((path, frame), python_ok) in judged.iter().zip(&python) {
        let ours = frame_schema::DOCUMENT.check(path, frame);
        if ours.is_ok() != *python_ok {
            disagreements.push(format!(
                "{path} {frame}: jsonschema ok={python_ok}, ours {ours:?}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    let accepted = python.iter().filter(|ok| **ok).count();
    let refused = python.len() - accepted;
    println!(
        "{} frames judged alike: {accepted} valid, {refused} invalid",
        python.len()
    );
    assert!(kinds.len() >= 14 + 5 + 6 + 3, "{kinds:?}");
    assert!(
        accepted >= 100 && refused >= 500,
        "{accepted} valid, {refused} invalid"
    );
}
