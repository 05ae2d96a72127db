//! Password guessing against one username spread over nodes (SPEC §10): after five
//! failures each attempt must wait, on every node, the right password included, and an
//! unknown username gets exactly the same answers so the throttle reveals no accounts.
//! The throttle's arithmetic is unit-tested in `auth::throttle`.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, settings, spawn_app, spawn_node};

/// Logs in as `username` with `password` on `node`: (status, error code or "",
/// Retry-After).
async fn login(node: &TestApp, username: &str, password: &str) -> (u16, String, Option<u64>) {
    let body = json!({"username": username, "password": password});
    let reply = node
        .call(Method::POST, "/v1/auth/login", None, Some(body))
        .await;
    let retry_after = reply
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let code = match reply.status.as_u16() {
        200 => String::new(),
        _ => reply.error_code().to_string(),
    };
    (reply.status.as_u16(), code, retry_after)
}

#[tokio::test]
async fn twenty_bad_logins_over_three_nodes_are_throttled_the_same_for_known_and_unknown_names() {
    let first = spawn_app().await;
    let second = spawn_node(settings(&first.database_url)).await;
    let third = spawn_node(settings(&first.database_url)).await;
    let nodes = [&first, &second, &third];
    first.register("alice").await;
    for name in ["alice", "nobody"] {
        let mut answers = Vec::new();
        for attempt in 0..20 {
            answers.push(login(nodes[attempt % 3], name, "wrong password").await);
        }
        // Five failures are answered as failures, wherever they land...
        for answer in &answers[..5] {
            assert_eq!(
                (answer.0, answer.1.as_str()),
                (401, "invalid_credentials"),
                "{name}"
            );
        }
        // ...then the name must wait, on every node.
        assert_eq!(
            (answers[5].0, answers[5].1.as_str()),
            (429, "too_many_attempts")
        );
        let refused = answers[5..].iter().filter(|a| a.0 == 429).count();
        assert!(refused >= 10, "{name}: {answers:?}");
        for (status, code, retry_after) in &answers[5..] {
            match status {
                429 => {
                    assert_eq!(code, "too_many_attempts");
                    assert!(matches!(retry_after, Some(1..=900)), "{retry_after:?}");
                }
                // Allowed once a wait ran out (a slow machine): still a failure.
                _ => assert_eq!((*status, code.as_str()), (401, "invalid_credentials")),
            }
        }
    }
    // The right password is refused too while alice must wait; afterwards it signs her
    // in and the count starts again.
    let (status, code, retry_after) = login(&second, "alice", "correct horse").await;
    assert_eq!((status, code.as_str()), (429, "too_many_attempts"));
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap())).await;
    let mut signed_in = login(&third, "alice", "correct horse").await;
    // The wait may have doubled once more meanwhile on a slow machine.
    if let (429, _, Some(wait)) = signed_in {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        signed_in = login(&third, "alice", "correct horse").await;
    }
    assert_eq!(signed_in.0, 200, "{signed_in:?}");
    assert_eq!(login(&first, "alice", "wrong password").await.0, 401);
}
