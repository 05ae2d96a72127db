//! Bad input gets a 400 naming the field (or 413 for a body over the limit), in the
//! SPEC §5 envelope, and changes nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

#[track_caller]
fn assert_invalid(reply: &crate::helpers::Reply, field: Option<&str>, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {}", reply.body);
    assert_eq!(reply.error_code(), "invalid_input", "{what}");
    if let Some(field) = field {
        assert_eq!(reply.body["error"]["field"], field, "{what}");
    }
}

async fn register(app: &TestApp, body: Value) -> crate::helpers::Reply {
    app.call(Method::POST, "/v1/auth/register", None, Some(body))
        .await
}

#[tokio::test]
async fn registration_rejects_bad_usernames_passwords_and_display_names() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"username": "ab", "password": "12345678"}),
            "username",
        ),
        (
            json!({"username": "Alice", "password": "12345678"}),
            "username",
        ),
        (
            json!({"username": "al ice", "password": "12345678"}),
            "username",
        ),
        (
            json!({"username": "a".repeat(33), "password": "12345678"}),
            "username",
        ),
        (
            json!({"username": "alice", "password": "1234567"}),
            "password",
        ),
        (
            json!({"username": "alice", "password": "12345678", "display_name": " "}),
            "display_name",
        ),
        (
            json!({"username": "alice", "password": "12345678", "display_name": "x".repeat(65)}),
            "display_name",
        ),
    ];
    for (body, field) in cases {
        assert_invalid(
            &register(&app, body.clone()).await,
            Some(field),
            &body.to_string(),
        );
    }
    // Missing fields and wrong types are invalid input too.
    for body in [
        json!({"username": "alice"}),
        json!({"username": 5, "password": "12345678"}),
    ] {
        assert_invalid(&register(&app, body.clone()).await, None, &body.to_string());
    }
    // Nothing was created: the name is still free.
    app.register("alice").await;
}

#[tokio::test]
async fn rooms_and_messages_reject_invalid_fields_and_store_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let messages = format!("/v1/rooms/{room}/messages");

    let room_cases = [
        (json!({"name": "", "kind": "public"}), Some("name")),
        (json!({"name": "   ", "kind": "public"}), Some("name")),
        (
            json!({"name": "x".repeat(101), "kind": "public"}),
            Some("name"),
        ),
        (json!({"name": "x", "kind": "direct"}), None),
        (json!({"name": "x", "kind": "secret"}), None),
        (json!({"kind": "public"}), None),
    ];
    for (body, field) in room_cases {
        let reply = app.post("/v1/rooms", &alice.token, body.clone()).await;
        assert_invalid(&reply, field, &body.to_string());
    }

    let message_cases = [
        (json!({"text": ""}), Some("text")),
        (json!({"text": " \n\t "}), Some("text")),
        (json!({"text": "x".repeat(4001)}), Some("text")),
        (
            json!({"text": "ok", "client_msg_id": ""}),
            Some("client_msg_id"),
        ),
        (
            json!({"text": "ok", "client_msg_id": "k".repeat(129)}),
            Some("client_msg_id"),
        ),
        (
            json!({"text": "ok", "reply_to": uuid::Uuid::new_v4()}),
            Some("reply_to"),
        ),
        (json!({"text": "ok", "reply_to": "not-a-uuid"}), None),
        (json!({"txt": "typo"}), None),
    ];
    for (body, field) in message_cases {
        let reply = app.post(&messages, &alice.token, body.clone()).await;
        assert_invalid(&reply, field, &body.to_string());
    }
    // Exactly 4000 characters is fine (characters, not bytes).
    let longest = app
        .post(&messages, &alice.token, json!({"text": "é".repeat(4000)}))
        .await;
    longest.assert_status(201);
    assert_eq!(longest.body["seq"], 1, "no rejected send consumed a seq");

    let query_cases = [
        (format!("{messages}?limit=0"), Some("limit")),
        (format!("{messages}?limit=201"), Some("limit")),
        (format!("{messages}?limit=ten"), None),
        (format!("{messages}?before_seq=-1"), Some("before_seq")),
        (format!("{messages}/search?q=%20"), Some("q")),
        (format!("{messages}/search"), None),
        ("/v1/rooms?cursor=bogus".to_string(), Some("cursor")),
        ("/v1/me/rooms?cursor=bogus".to_string(), Some("cursor")),
        (
            format!("/v1/rooms/{room}/members?cursor=bogus"),
            Some("cursor"),
        ),
        ("/v1/rooms/not-a-uuid".to_string(), None),
    ];
    for (path, field) in query_cases {
        assert_invalid(&app.get(&path, &alice.token).await, field, &path);
    }
    let bad_emoji = app
        .call(
            Method::PUT,
            &format!(
                "{messages}/{}/reactions/a%20b",
                longest.body["id"].as_str().unwrap()
            ),
            Some(&alice.token),
            None,
        )
        .await;
    assert_invalid(&bad_emoji, Some("emoji"), "emoji with a space");
    let negative_read = app
        .post(
            &format!("/v1/rooms/{room}/read"),
            &alice.token,
            json!({"seq": -1}),
        )
        .await;
    assert_invalid(&negative_read, Some("seq"), "negative read seq");
}

#[tokio::test]
async fn malformed_json_is_a_400_in_the_error_envelope() {
    let app = spawn_app().await;
    let response = app
        .http()
        .post(app.url("/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    let reply = crate::helpers::reply(response).await;
    assert_invalid(&reply, None, "truncated JSON");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_declared_or_streamed() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let url = app.url(&format!("/v1/rooms/{room}/messages"));
    let huge = json!({"text": "x".repeat(70 * 1024)}).to_string();

    let declared = app
        .http()
        .post(&url)
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    let reply = crate::helpers::reply(declared).await;
    reply.assert_status(413);
    assert_eq!(reply.error_code(), "payload_too_large");

    let chunks: Vec<Result<String, std::io::Error>> = huge
        .as_bytes()
        .chunks(8192)
        .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
        .collect();
    let streamed = app
        .http()
        .post(&url)
        .bearer_auth(&alice.token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let reply = crate::helpers::reply(streamed).await;
    reply.assert_status(413);
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(page.body["messages"], json!([]));
}

#[tokio::test]
async fn unknown_routes_get_404_in_the_envelope() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let reply = app.get("/v1/nothing-here", &alice.token).await;
    reply.assert_status(404);
    assert_eq!(reply.error_code(), "not_found");
}
