//! Devices for notifications (SPEC §14): the cluster's VAPID key, push subscriptions,
//! and a Web Push request as a browser and its push service read it — decrypted and
//! verified by `webpush_check.py` with Mozilla's reference `http_ece` and
//! `cryptography`, not by Natter's own code.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use natter::push::{
    vapid::VapidKey,
    webpush::{self, BrowserKeys, Urgency},
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::{TestApp, TestUser, run_within, settings, spawn_app_with, spawn_node};

/// Runs `webpush_check.py` with `args`; its JSON answer, or the test fails with its
/// complaint.
async fn browser(args: &[&str]) -> Value {
    let python = std::env::var("NATTER_TEST_PYTHON")
        .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/webpush_check.py");
    let output = run_within(
        Command::new(python).arg(script).args(args),
        Duration::from_secs(30),
        "webpush_check.py",
    )
    .await;
    assert!(
        output.status.success(),
        "webpush_check.py {args:?} refused: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("webpush_check.py answers JSON")
}

/// A browser's `PushSubscription.toJSON()` for `endpoint`, with keys the browser made.
fn subscription(endpoint: &str, keys: &Value) -> Value {
    json!({
        "kind": "webpush",
        "endpoint": endpoint,
        "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]},
        "expirationTime": null,
    })
}

/// A node that lets endpoints be local and devices be registered quickly.
async fn node() -> TestApp {
    spawn_app_with(|settings| {
        settings.webhook_allow_private = true;
        settings.limits.room_creations_per_minute = 1000;
    })
    .await
}

async fn subscriptions(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let list = app.get("/v1/me/push-subscriptions", &user.token).await;
    list.assert_status(200);
    list.body["subscriptions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_vapid_key_is_one_p256_point_shared_by_every_node_and_kept_across_restarts() {
    let first = spawn_app_with(|_| {}).await;
    let alice = first.register("alice").await;
    let key = first.get("/v1/push/vapid-public-key", &alice.token).await;
    key.assert_status(200);
    let key = key.body["key"].as_str().unwrap().to_owned();
    let point = URL_SAFE_NO_PAD
        .decode(&key)
        .expect("base64url without padding");
    assert_eq!(
        (point.len(), point[0]),
        (65, 0x04),
        "an uncompressed P-256 point"
    );

    // A second node on the same database, and the first restarted: the same key, or every
    // browser's subscription would stop working.
    let second = spawn_node(settings(&first.database_url)).await;
    let database_url = first.database_url.clone();
    drop(first);
    let restarted = spawn_node(settings(&database_url)).await;
    for node in [&second, &restarted] {
        let again = node.get("/v1/push/vapid-public-key", &alice.token).await;
        assert_eq!(again.body["key"], key.as_str());
    }
    // Only for signed-in callers, like every /v1 route but registration and login.
    let anonymous = second
        .call(Method::GET, "/v1/push/vapid-public-key", None, None)
        .await;
    anonymous.assert_status(401);
}

#[tokio::test]
async fn a_vapid_private_key_given_by_the_operator_is_the_one_served() {
    let operator_key = browser(&["keys"]).await; // any P-256 key in PKCS#8 PEM will do
    let pem = operator_key["private_pem"].as_str().unwrap().to_owned();
    let expected = VapidKey::parse(&pem, None).unwrap().public_key();
    let app = spawn_app_with(|settings| {
        settings.push.vapid_key = Some(VapidKey::parse(&pem, None).unwrap());
    })
    .await;
    let alice = app.register("alice").await;
    let key = app.get("/v1/push/vapid-public-key", &alice.token).await;
    assert_eq!(key.body["key"], expected.as_str());
    assert_eq!(
        key.body["key"], operator_key["p256dh"],
        "the PEM's own public point"
    );
}

#[tokio::test]
async fn a_browser_subscription_is_registered_listed_and_deleted_by_its_owner_only() {
    let app = node().await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let keys = browser(&["keys"]).await;
    let endpoint = "http://127.0.0.1:9/push/alice-laptop";

    let created = app
        .post(
            "/v1/me/push-subscriptions",
            &alice.token,
            subscription(endpoint, &keys),
        )
        .await;
    created.assert_status(201);
    assert_eq!(created.body["kind"], "webpush");
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(created.body["created_at"].as_i64().unwrap() > 1_700_000_000_000);
    // Neither the endpoint nor the keys are ever shown again.
    assert_eq!(
        created.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["created_at", "id", "kind"]
    );
    assert_eq!(
        subscriptions(&app, &alice).await,
        std::slice::from_ref(&created.body)
    );
    assert!(subscriptions(&app, &bob).await.is_empty());

    // Bob cannot delete Alice's device, nor tell it from one that does not exist.
    let path = format!("/v1/me/push-subscriptions/{id}");
    let refused = app
        .call(Method::DELETE, &path, Some(&bob.token), None)
        .await;
    refused.assert_status(404);
    assert_eq!(refused.error_code(), "push_subscription_not_found");
    let unknown = format!("/v1/me/push-subscriptions/{}", Uuid::new_v4());
    let none = app
        .call(Method::DELETE, &unknown, Some(&bob.token), None)
        .await;
    assert_eq!((none.status, &none.body), (refused.status, &refused.body));

    app.call(Method::DELETE, &path, Some(&alice.token), None)
        .await
        .assert_status(204);
    assert!(subscriptions(&app, &alice).await.is_empty());
    app.call(Method::DELETE, &path, Some(&alice.token), None)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn a_device_registered_again_keeps_its_id_and_moves_to_whoever_registered_it_last() {
    let app = node().await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let keys = browser(&["keys"]).await;
    let endpoint = "http://127.0.0.1:9/push/shared-tablet";
    let first = app
        .post(
            "/v1/me/push-subscriptions",
            &alice.token,
            subscription(endpoint, &keys),
        )
        .await;
    let again = app
        .post(
            "/v1/me/push-subscriptions",
            &alice.token,
            subscription(endpoint, &keys),
        )
        .await;
    again.assert_status(201);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(subscriptions(&app, &alice).await.len(), 1);

    // Bob signs in on the same browser: its notifications are his now, not Alice's.
    let new_keys = browser(&["keys"]).await;
    let bobs = app
        .post(
            "/v1/me/push-subscriptions",
            &bob.token,
            subscription(endpoint, &new_keys),
        )
        .await;
    bobs.assert_status(201);
    assert_eq!(bobs.body["id"], first.body["id"]);
    assert!(subscriptions(&app, &alice).await.is_empty());
    assert_eq!(subscriptions(&app, &bob).await.len(), 1);
    let stored: Vec<u8> = app
        .db()
        .await
        .query_one("SELECT p256dh FROM push_subscriptions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        URL_SAFE_NO_PAD.encode(stored),
        new_keys["p256dh"].as_str().unwrap()
    );
}

#[tokio::test]
async fn a_users_twenty_first_device_is_refused_but_a_known_one_is_still_renewed() {
    let app = node().await;
    let alice = app.register("alice").await;
    let keys = browser(&["keys"]).await;
    for n in 0..20 {
        let endpoint = format!("http://127.0.0.1:9/push/device-{n}");
        app.post(
            "/v1/me/push-subscriptions",
            &alice.token,
            subscription(&endpoint, &keys),
        )
        .await
        .assert_status(201);
    }
    let extra = app
        .post(
            "/v1/me/push-subscriptions",
            &alice.token,
            subscription("http://127.0.0.1:9/push/device-20", &keys),
        )
        .await;
    extra.assert_status(409);
    assert_eq!(extra.error_code(), "too_many_push_subscriptions");
    assert_eq!(subscriptions(&app, &alice).await.len(), 20);
    // A browser that renews its subscription is not a new device.
    app.post(
        "/v1/me/push-subscriptions",
        &alice.token,
        subscription("http://127.0.0.1:9/push/device-7", &keys),
    )
    .await
    .assert_status(201);
}

#[tokio::test]
async fn bad_keys_endpoints_and_missing_fields_are_refused_and_store_nothing() {
    let app = node().await;
    let alice = app.register("alice").await;
    let keys = browser(&["keys"]).await;
    let endpoint = "http://127.0.0.1:9/push/x";
    let mut off_curve = URL_SAFE_NO_PAD
        .decode(keys["p256dh"].as_str().unwrap())
        .unwrap();
    off_curve[64] ^= 1;
    let cases = [
        (
            json!({"kind": "webpush", "endpoint": endpoint, "keys": {"p256dh": URL_SAFE_NO_PAD.encode(&off_curve), "auth": keys["auth"]}}),
            "invalid_input",
            "keys.p256dh",
        ),
        (
            json!({"kind": "webpush", "endpoint": endpoint, "keys": {"p256dh": keys["p256dh"], "auth": "c2hvcnQ"}}),
            "invalid_input",
            "keys.auth",
        ),
        (
            json!({"kind": "webpush", "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}),
            "invalid_input",
            "endpoint",
        ),
        (
            json!({"kind": "webpush", "endpoint": endpoint}),
            "invalid_input",
            "keys",
        ),
        (
            json!({"kind": "webpush", "endpoint": "ftp://127.0.0.1/x", "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]}}),
            "push_endpoint_not_allowed",
            "",
        ),
        (
            json!({"kind": "carrier-pigeon", "token": "x"}),
            "invalid_input",
            "",
        ),
    ];
    for (body, code, field) in cases {
        let refused = app
            .post("/v1/me/push-subscriptions", &alice.token, body.clone())
            .await;
        refused.assert_status(400);
        assert_eq!(refused.error_code(), code, "{body}: {:?}", refused.body);
        if !field.is_empty() {
            let message = refused.body["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(field), "{body}: {message}");
        }
    }
    // Push services are public: without WEBHOOK_ALLOW_PRIVATE a local endpoint, or one
    // that is not https, is refused as a webhook's would be.
    let strict = spawn_app_with(|_| {}).await;
    let bob = strict.register("bob").await;
    for endpoint in [
        "https://127.0.0.1/push/x",
        "https://10.0.0.8/push/x",
        "http://push.example.com/x",
    ] {
        let refused = strict
            .post(
                "/v1/me/push-subscriptions",
                &bob.token,
                subscription(endpoint, &keys),
            )
            .await;
        refused.assert_status(400);
        assert_eq!(
            refused.error_code(),
            "push_endpoint_not_allowed",
            "{endpoint}"
        );
    }
    assert!(subscriptions(&app, &alice).await.is_empty());
    assert!(subscriptions(&strict, &bob).await.is_empty());
}

#[tokio::test]
async fn native_devices_need_the_operators_push_gateway() {
    let without = node().await;
    let alice = without.register("alice").await;
    let apns = json!({"kind": "apns", "token": "a".repeat(64)});
    let refused = without
        .post("/v1/me/push-subscriptions", &alice.token, apns.clone())
        .await;
    refused.assert_status(400);
    assert_eq!(refused.error_code(), "push_gateway_not_configured");
    assert!(subscriptions(&without, &alice).await.is_empty());

    let with = spawn_app_with(|settings| {
        settings.push.gateway_url = Some("http://127.0.0.1:8088".into());
    })
    .await;
    let bob = with.register("bob").await;
    let created = with
        .post("/v1/me/push-subscriptions", &bob.token, apns)
        .await;
    created.assert_status(201);
    assert_eq!(created.body["kind"], "apns");
    let fcm = with
        .post(
            "/v1/me/push-subscriptions",
            &bob.token,
            json!({"kind": "fcm", "token": "fcm-token-1"}),
        )
        .await;
    assert_eq!(fcm.body["kind"], "fcm");
    let kinds: Vec<_> = subscriptions(&with, &bob)
        .await
        .iter()
        .map(|s| s["kind"].clone())
        .collect();
    assert_eq!(kinds, ["apns", "fcm"]);
    let blank = with
        .post(
            "/v1/me/push-subscriptions",
            &bob.token,
            json!({"kind": "fcm", "token": "  "}),
        )
        .await;
    blank.assert_status(400);
    assert_eq!(blank.error_code(), "invalid_input");
}

#[tokio::test]
async fn a_web_push_request_decrypts_with_the_browsers_key_under_a_valid_vapid_token() {
    let browser_keys = browser(&["keys"]).await;
    let keys = BrowserKeys::decode(
        browser_keys["p256dh"].as_str().unwrap(),
        browser_keys["auth"].as_str().unwrap(),
    )
    .unwrap();
    let vapid = VapidKey::from_pkcs8(
        &VapidKey::generate_pkcs8(),
        Some("mailto:ops@example.com".into()),
    )
    .unwrap();
    let endpoint = "https://push.example.net/wpush/v2/gAAAAABh-some-browser";
    let payload = json!({"type": "message", "preview": "héllo 👋 ".repeat(20)}).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut headers: serde_json::Map<String, Value> = webpush::headers(Urgency::High)
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Value::from(value)))
        .collect();
    headers.insert(
        "authorization".into(),
        vapid.authorization(&endpoint.parse().unwrap(), now).into(),
    );
    let body = webpush::encrypt(&keys, payload.as_bytes()).unwrap();
    let request = |body: &[u8], vapid_public: &str| {
        json!({
            "private_pem": browser_keys["private_pem"],
            "auth": browser_keys["auth"],
            "vapid_public": vapid_public,
            "endpoint": endpoint,
            "headers": headers,
            "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
        })
    };
    let file = std::env::temp_dir().join(format!("webpush-{}.json", Uuid::new_v4()));
    std::fs::write(&file, request(&body, &vapid.public_key()).to_string()).unwrap();
    let read = browser(&["check", file.to_str().unwrap()]).await;
    assert_eq!(read["payload"], payload.as_str());
    assert_eq!(read["claims"]["sub"], "mailto:ops@example.com");
    assert_eq!(read["headers"], Value::Null);

    // The checker can say no: a flipped ciphertext bit, or another cluster's key.
    let mut tampered = body.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let other = VapidKey::from_pkcs8(&VapidKey::generate_pkcs8(), None).unwrap();
    for (body, key) in [(&tampered, vapid.public_key()), (&body, other.public_key())] {
        std::fs::write(&file, request(body, &key).to_string()).unwrap();
        let python = std::env::var("NATTER_TEST_PYTHON").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/webpush_check.py");
        let output = run_within(
            Command::new(python)
                .arg(script)
                .args(["check", file.to_str().unwrap()]),
            Duration::from_secs(30),
            "webpush_check.py",
        )
        .await;
        assert!(!output.status.success(), "a bad request was read as good");
    }
    let _ = std::fs::remove_file(file);
}

/// `GET /v1/me/rooms`' entry for `room`.
async fn my_room(app: &TestApp, user: &TestUser, room: &str) -> Value {
    let list = app.get("/v1/me/rooms", &user.token).await;
    list.assert_status(200);
    list.body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["id"] == room)
        .unwrap_or_else(|| panic!("{room} is not in {}", list.body))
        .clone()
}

#[tokio::test]
async fn each_member_chooses_a_rooms_notification_level_with_the_room_kinds_default() {
    let app = node().await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let general = app
        .create_room(&alice, "general", "public")
        .await
        .to_string();
    let direct = app
        .post("/v1/dms", &alice.token, json!({"user_id": bob.id}))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let settings = |room: &str| format!("/v1/rooms/{room}/notifications");

    // Defaults: every message of a direct chat, only mentions elsewhere.
    for (room, level) in [(&general, "mentions"), (&direct, "all")] {
        let got = app.get(&settings(room), &alice.token).await;
        got.assert_status(200);
        assert_eq!(got.body, json!({"level": level}), "{room}");
        assert_eq!(my_room(&app, &alice, room).await["notifications"], got.body);
    }

    // Alice mutes #general for an hour at level `all`; Bob's settings do not move.
    let until = 1_900_000_000_000_i64;
    let chosen = json!({"level": "all", "muted_until": until});
    let put = app
        .call(
            Method::PUT,
            &settings(&general),
            Some(&alice.token),
            Some(chosen.clone()),
        )
        .await;
    put.assert_status(200);
    assert_eq!(put.body, chosen);
    assert_eq!(
        app.get(&settings(&general), &alice.token).await.body,
        chosen
    );
    assert_eq!(
        my_room(&app, &alice, &general).await["notifications"],
        chosen
    );
    app.post(&format!("/v1/rooms/{general}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    assert_eq!(
        app.get(&settings(&general), &bob.token).await.body,
        json!({"level": "mentions"})
    );
    // Unmuted by leaving `muted_until` out; `none` silences the direct chat.
    let none = json!({"level": "none"});
    for (room, body) in [(&general, json!({"level": "mentions"})), (&direct, none)] {
        app.call(
            Method::PUT,
            &settings(room),
            Some(&alice.token),
            Some(body.clone()),
        )
        .await
        .assert_status(200);
        assert_eq!(my_room(&app, &alice, room).await["notifications"], body);
    }
    // Leaving forgets the choice: a member who comes back starts from the default.
    app.call(
        Method::PUT,
        &settings(&general),
        Some(&bob.token),
        Some(json!({"level": "none"})),
    )
    .await
    .assert_status(200);
    app.post(&format!("/v1/rooms/{general}/leave"), &bob.token, json!({}))
        .await
        .assert_status(204);
    app.post(&format!("/v1/rooms/{general}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    assert_eq!(
        app.get(&settings(&general), &bob.token).await.body,
        json!({"level": "mentions"})
    );
}

#[tokio::test]
async fn notification_settings_are_a_members_only_and_bad_ones_change_nothing() {
    let app = node().await;
    let (alice, mallory) = (app.register("alice").await, app.register("mallory").await);
    let general = app.create_room(&alice, "general", "public").await;
    let secret = app.create_room(&alice, "secret", "private").await;
    let path = |room: Uuid| format!("/v1/rooms/{room}/notifications");
    let all = json!({"level": "all"});

    // A public room Mallory has not joined: join it first; a private one: no such room.
    for (room, status, code) in [
        (general, 403, "not_member"),
        (secret, 404, "room_not_found"),
        (Uuid::new_v4(), 404, "room_not_found"),
    ] {
        let get = app.get(&path(room), &mallory.token).await;
        get.assert_status(status);
        assert_eq!(get.error_code(), code);
        let put = app
            .call(
                Method::PUT,
                &path(room),
                Some(&mallory.token),
                Some(all.clone()),
            )
            .await;
        put.assert_status(status);
        assert_eq!(put.error_code(), code);
    }
    for bad in [
        json!({"level": "loud"}),
        json!({}),
        json!({"level": "all", "muted_until": "tomorrow"}),
        json!({"level": "all", "muted_until": -5}),
    ] {
        let refused = app
            .call(
                Method::PUT,
                &path(general),
                Some(&alice.token),
                Some(bad.clone()),
            )
            .await;
        refused.assert_status(400);
        assert_eq!(refused.error_code(), "invalid_input", "{bad}");
    }
    assert_eq!(
        app.get(&path(general), &alice.token).await.body,
        json!({"level": "mentions"})
    );
}
