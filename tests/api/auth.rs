use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_registered_user_can_use_their_token_at_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let me = app.get("/v1/users/me", &alice.token).await;
    me.assert_status(200);
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["display_name"], "alice");
    assert_eq!(me.body["id"], alice.id.to_string());
}

#[tokio::test]
async fn login_with_the_right_password_returns_a_working_token() {
    let app = spawn_app().await;
    app.register("alice").await;
    let login = app
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
    login.assert_status(200);
    assert!(login.body["expires_at"].as_i64().unwrap() > 0);
    let token = login.body["token"].as_str().unwrap();
    app.get("/v1/users/me", token).await.assert_status(200);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_401() {
    let app = spawn_app().await;
    app.register("alice").await;
    for (username, password) in [("alice", "wrong password"), ("nobody", "correct horse")] {
        let reply = app
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        reply.assert_status(401);
        assert_eq!(reply.error_code(), "invalid_credentials");
    }
}

#[tokio::test]
async fn registering_a_taken_username_is_a_conflict() {
    let app = spawn_app().await;
    app.register("alice").await;
    let again = app
        .call(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"username": "alice", "password": "another one"})),
        )
        .await;
    again.assert_status(409);
    assert_eq!(again.error_code(), "username_taken");
}

#[tokio::test]
async fn a_display_name_is_kept_and_users_can_be_looked_up_by_id() {
    let app = spawn_app().await;
    let reply = app
        .call(
            Method::POST,
            "/v1/auth/register",
            None,
            Some(json!({"username": "bob", "password": "12345678", "display_name": "Bob B."})),
        )
        .await;
    reply.assert_status(201);
    let alice = app.register("alice").await;
    let bob_id = reply.body["user"]["id"].as_str().unwrap();
    let bob = app.get(&format!("/v1/users/{bob_id}"), &alice.token).await;
    bob.assert_status(200);
    assert_eq!(bob.body["display_name"], "Bob B.");
    let missing = app
        .get(&format!("/v1/users/{}", uuid::Uuid::new_v4()), &alice.token)
        .await;
    missing.assert_status(404);
    assert_eq!(missing.error_code(), "user_not_found");
}

#[tokio::test]
async fn a_control_character_in_a_login_username_is_a_400_and_counts_no_attempt() {
    let app = spawn_app().await;
    app.register("alice").await;
    for username in ["al\u{0}ice", "alice\u{0}", "al\nice"] {
        let reply = app
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"username": username, "password": "correct horse"})),
            )
            .await;
        reply.assert_status(400);
        assert_eq!(reply.error_code(), "invalid_input");
    }
}
