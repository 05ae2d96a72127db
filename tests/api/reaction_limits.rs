//! What a reaction may be and how many a message carries (SPEC §10): at most twenty
//! distinct emoji per message, also when they arrive at once, and nothing but Unicode
//! emoji, stored fully qualified. Without these one client could grow every page and
//! chat list that shows the message. The ordinary reaction round trip is in
//! messages.rs.

use reqwest::Method;
use serde_json::json;

use crate::{helpers::spawn_app, realtime::public_room_with};

/// Twenty-one distinct emoji.
const EMOJI: [&str; 21] = [
    "😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋", "😎", "😍", "😘", "🥰", "😗",
    "😙", "😚", "🙂", "🤗", "🤩",
];

#[tokio::test]
async fn a_message_carries_at_most_twenty_distinct_emoji_even_when_they_arrive_at_once() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = public_room_with(&app, &alice, &[&bob]).await;
    let react = |token: &str, message: &str, emoji: &str| {
        let path = format!("/v1/rooms/{room}/messages/{message}/reactions/{emoji}");
        let token = token.to_string();
        let app = &app;
        async move { app.call(Method::PUT, &path, Some(&token), None).await }
    };

    let first = app.send(&alice, room, "react to me").await;
    let first = first["id"].as_str().unwrap().to_string();
    for emoji in &EMOJI[..20] {
        react(&alice.token, &first, emoji).await.assert_status(200);
    }
    let refused = react(&alice.token, &first, EMOJI[20]).await;
    refused.assert_status(409);
    assert_eq!(refused.error_code(), "too_many_reactions");
    // An emoji the message already carries is still anyone's to add.
    let joined = react(&bob.token, &first, EMOJI[0]).await;
    joined.assert_status(200);
    assert_eq!(joined.body["reactions"].as_array().unwrap().len(), 20);
    // Making room lets a new one in.
    let path = format!("/v1/rooms/{room}/messages/{first}/reactions/{}", EMOJI[19]);
    app.call(Method::DELETE, &path, Some(&alice.token), None)
        .await
        .assert_status(200);
    react(&alice.token, &first, EMOJI[20])
        .await
        .assert_status(200);

    // Twenty-one different emoji at once: twenty get in, one is refused.
    let second = app.send(&alice, room, "and me, all at once").await;
    let second = second["id"].as_str().unwrap().to_string();
    let replies =
        futures_util::future::join_all(EMOJI.iter().map(|e| react(&bob.token, &second, e))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        1,
        "{statuses:?}"
    );
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    let carried = page.body["messages"][1]["reactions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(carried, 20);
}

#[tokio::test]
async fn a_reaction_must_be_unicode_emoji() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let message = app.send(&alice, room, "hi").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = |emoji: &str| format!("/v1/rooms/{room}/messages/{message}/reactions/{emoji}");
    for bad in [":tada:", "x", "%3Cb%3E", "%F0%9F%91%8Dx", "%E2%80%8D"] {
        let reply = app
            .call(Method::PUT, &path(bad), Some(&alice.token), None)
            .await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            (400, "invalid_input"),
            "{bad}"
        );
    }
    // A heart with or without its emoji presentation selector is one reaction.
    app.call(Method::PUT, &path("❤"), Some(&alice.token), None)
        .await
        .assert_status(200);
    let both = app
        .call(Method::PUT, &path("❤\u{fe0f}"), Some(&alice.token), None)
        .await;
    both.assert_status(200);
    assert_eq!(
        both.body["reactions"],
        json!([{"emoji": "❤\u{fe0f}", "count": 1, "me": true}])
    );
}
