//! Rate budgets against a client that floods (SPEC §10, §18): edits, deletes, reaction
//! toggles, joins, leaves and member changes share one per-user budget, room creation
//! has its own per minute, searches and read watermark moves their own per second, and
//! a socket's subscribe/unsubscribe churn is metered per socket without closing it. Each
//! of these is broadcast, stored or costs a query, so an unmetered loop would cost every
//! node; and a read by time, which any member may repeat, costs a bisection of the
//! room's seq index. The send rate limit is tested in messages.rs.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

/// Makes `attempt` until it is refused with `429 rate_limited` (at most `limit` times);
/// returns how many succeeded first.
async fn until_rate_limited<F, Fut>(limit: usize, mut attempt: F) -> usize
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = crate::helpers::Reply>,
{
    for i in 0..limit {
        let reply = attempt(i).await;
        if reply.status.as_u16() == 429 {
            assert_eq!(reply.error_code(), "rate_limited");
            let retry_after: u64 = reply.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry_after >= 1);
            return i;
        }
        assert!(reply.status.is_success(), "attempt {i}: {:?}", reply.body);
    }
    panic!("{limit} attempts and no 429");
}

#[tokio::test]
async fn edits_deletes_and_reaction_changes_share_one_metered_budget_per_user() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "r", "public").await;
    let message = app.send(&alice, room, "toggle me").await;
    let path = format!(
        "/v1/rooms/{room}/messages/{}/reactions/👍",
        message["id"].as_str().unwrap()
    );
    // Reaction toggles, as fast as one client can: the burst (60) goes through, then 429.
    let allowed = until_rate_limited(1000, |i| {
        let method = if i % 2 == 0 {
            Method::PUT
        } else {
            Method::DELETE
        };
        let (app, path, token) = (&app, path.clone(), alice.token.clone());
        async move { app.call(method, &path, Some(&token), None).await }
    })
    .await;
    assert!(
        (60..100).contains(&allowed),
        "{allowed} toggles before the 429"
    );
    // The same budget covers edits; sends and other users have their own.
    let edit = format!(
        "/v1/rooms/{room}/messages/{}",
        message["id"].as_str().unwrap()
    );
    let refused = app
        .call(
            Method::PATCH,
            &edit,
            Some(&alice.token),
            Some(json!({"text": "edited"})),
        )
        .await;
    refused.assert_status(429);
    app.send(&alice, room, "sending is another budget").await;
    app.post(&format!("/v1/rooms/{room}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    app.call(Method::PUT, &path, Some(&bob.token), None)
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_user_creates_at_most_thirty_rooms_a_minute() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let allowed = until_rate_limited(60, |i| {
        let (app, token) = (&app, alice.token.clone());
        async move {
            let body = json!({"name": format!("room {i}"), "kind": "public"});
            app.post("/v1/rooms", &token, body).await
        }
    })
    .await;
    // The burst of 30, and at most a few that the budget refilled (one every 2 s).
    assert!(
        (30..35).contains(&allowed),
        "{allowed} rooms before the 429"
    );
    let bob = app.register("bob").await;
    app.create_room(&bob, "bob's", "public").await;
}

#[tokio::test]
async fn subscribe_churn_is_metered_per_socket_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    let mut ws = crate::helpers::WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    for _ in 0..300 {
        ws.send(json!({"type": "unsubscribe", "room_id": room}))
            .await;
    }
    let mut answered = 0;
    let mut limited = 0;
    for _ in 0..300 {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("unsubscribed") => answered += 1,
            Some("error") => {
                assert_eq!(frame["code"], "rate_limited");
                assert_eq!(frame["ref"], "unsubscribe");
                limited += 1;
            }
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    assert!(answered >= 100, "{answered} answered");
    assert!(limited > 0, "no churn was refused");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn joins_leaves_and_member_changes_spend_the_edits_budget() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let public = app.create_room(&alice, "public", "public").await;
    // Each join or leave writes a room event kept for days: a loop of them is refused
    // once the burst of the edits budget (60) is spent.
    let allowed = until_rate_limited(1000, |i| {
        let action = if i % 2 == 0 { "join" } else { "leave" };
        let (app, path, token) = (&app, format!("/v1/rooms/{public}/{action}"), &bob.token);
        async move { app.post(&path, token, json!({})).await }
    })
    .await;
    assert!(
        (60..100).contains(&allowed),
        "{allowed} joins and leaves before the 429"
    );
    // The same budget as reactions.
    let message = app.send(&alice, public, "react to me").await;
    let react = format!(
        "/v1/rooms/{public}/messages/{}/reactions/👍",
        message["id"].as_str().unwrap()
    );
    app.call(Method::PUT, &react, Some(&bob.token), None)
        .await
        .assert_status(429);
    // An owner adding and removing a member, likewise.
    let private = app.create_room(&alice, "private", "private").await;
    let member = format!("/v1/rooms/{private}/members/{}", carol.id);
    let allowed = until_rate_limited(1000, |i| {
        let method = if i % 2 == 0 {
            Method::PUT
        } else {
            Method::DELETE
        };
        let (app, path, token) = (&app, member.clone(), alice.token.clone());
        async move { app.call(method, &path, Some(&token), None).await }
    })
    .await;
    assert!(
        (60..100).contains(&allowed),
        "{allowed} member changes before the 429"
    );
    // Others keep their own budgets.
    app.post(&format!("/v1/rooms/{public}/join"), &carol.token, json!({}))
        .await
        .assert_status(204);
}

#[tokio::test]
async fn a_user_searches_at_most_five_times_a_second() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    app.send(&alice, room, "needle in a haystack").await;
    let path = format!("/v1/rooms/{room}/messages/search?q=needle");
    let allowed = until_rate_limited(200, |_| {
        let (app, path, token) = (&app, path.clone(), &alice.token);
        async move { app.get(&path, token).await }
    })
    .await;
    assert!(
        (5..10).contains(&allowed),
        "{allowed} searches before the 429"
    );
    let bob = app.register("bob").await;
    app.get(&path, &bob.token).await.assert_status(200);
}

#[tokio::test]
async fn read_watermark_moves_over_rest_and_the_socket_share_twenty_a_second_per_user() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    app.send(&alice, room, "read me").await;
    let path = format!("/v1/rooms/{room}/read");
    let allowed = until_rate_limited(500, |_| {
        let (app, path, token) = (&app, path.clone(), &alice.token);
        async move { app.post(&path, token, json!({"seq": 1})).await }
    })
    .await;
    assert!(
        (20..30).contains(&allowed),
        "{allowed} reads before the 429"
    );
    // The socket's read_upto spends the same budget, by seq or by time, and the socket
    // stays open.
    let mut ws = crate::helpers::WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    ws.send(json!({"type": "read_upto", "room_id": room, "created_at_ms": 0}))
        .await;
    let refused = ws.recv_type("error").await;
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv_type("pong").await, json!({"type": "pong"}));
    // Bad input is still a 400, not a spent budget's 429.
    app.post(&path, &alice.token, json!({"seq": -1}))
        .await
        .assert_status(400);
}

/// `read_upto {created_at_ms}` bisects the room's `seq` index: the highest `seq`
/// created at or before the time, for every place the time can fall, holes in `seq`
/// and messages sharing a millisecond included, in a bounded number of single-row
/// probes whatever the time; an empty room answers 0 and a stranger is refused.
#[tokio::test]
async fn read_upto_by_time_is_answered_from_an_index_before_between_and_after_messages() {
    let app = spawn_app_with(|s| s.limits.reads_per_second = 1000).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    // 5,000 messages, the n-th created at n seconds after the epoch, except that 2001
    // to 2010 share one millisecond (a batch) and 3001 to 3999 are gone (holes in `seq`
    // are never made, but the search must not depend on their absence).
    let db = app.db().await;
    db.execute(
        "INSERT INTO messages (id, room_id, seq, sender_id, text, created_at)
         SELECT gen_random_uuid(), $1, s, $2, 'message ' || s,
                CASE WHEN s BETWEEN 2001 AND 2010 THEN 2001000 ELSE s * 1000 END
           FROM generate_series(1, 5000) s WHERE s NOT BETWEEN 3001 AND 3999",
        &[&room, &alice.id],
    )
    .await
    .unwrap();
    db.execute("UPDATE rooms SET last_seq = 5000 WHERE id = $1", &[&room])
        .await
        .unwrap();
    let empty = app.create_room(&alice, "empty", "public").await;
    let mut ws = crate::helpers::WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    let cases = [
        // Before the first message.
        (room, 0, 0),
        (room, 999, 0),
        // Exactly a message's time, and between two.
        (room, 1000, 1),
        (room, 1500, 1),
        (room, 2_500_000, 2500),
        (room, 2_500_999, 2500),
        // Ten messages in one millisecond: the last of them, from any time in it on.
        (room, 2_000_999, 2000),
        (room, 2_001_000, 2010),
        (room, 2_010_999, 2010),
        (room, 2_011_000, 2011),
        // Across the hole.
        (room, 3_000_000, 3000),
        (room, 3_500_000, 3000),
        (room, 3_999_999, 3000),
        (room, 4_000_000, 4000),
        // The last message, and after it.
        (room, 4_999_999, 4999),
        (room, 5_000_000, 5000),
        (room, i64::MAX, 5000),
        // A room without messages.
        (empty, 0, 0),
        (empty, i64::MAX, 0),
    ];
    for (room, at, seq) in cases {
        ws.send(json!({"type": "read_upto", "room_id": room, "created_at_ms": at}))
            .await;
        let ack = ws.recv_type("read_ack").await;
        assert_eq!(ack["seq"], seq, "read_upto at {at}: {ack}");
    }
    // A stranger is refused before anything is read: not_member in a public room, and
    // in a private one exactly as in a room that does not exist.
    let bob = app.register("bob").await;
    let private = app.create_room(&alice, "p", "private").await;
    let mut bob_ws = crate::helpers::WsClient::connect(app.addr, "/v1/ws", &bob.token).await;
    for (room, code) in [(room, "not_member"), (private, "room_not_found")] {
        bob_ws
            .send(json!({"type": "read_upto", "room_id": room, "created_at_ms": i64::MAX}))
            .await;
        let refused = bob_ws.recv_type("error").await;
        assert_eq!(refused["code"], code, "{refused}");
    }
    // Each read was at most 2 + log2(5,000) probes of the seq index, each reading one
    // entry: never a walk down it (which read the whole room for a time before its
    // first message), and no index on (room_id, created_at) is left to read instead.
    // Postgres publishes a backend's index statistics within about 10 s of its last
    // query; however many it has published, each probe read at most one entry.
    let probes_per_read = 2 + 5000_f64.log2().ceil() as i64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        db.execute("SELECT pg_stat_clear_snapshot()", &[])
            .await
            .unwrap();
        let (scans, entries): (i64, i64) = db
            .query_opt(
                "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes
                  WHERE indexrelname = 'messages_room_seq'",
                &[],
            )
            .await
            .unwrap()
            .map_or((0, 0), |row| (row.get(0), row.get(1)));
        assert!(
            scans <= cases.len() as i64 * probes_per_read,
            "{scans} scans of messages_room_seq for {} reads by time",
            cases.len()
        );
        assert!(entries <= scans, "{entries} entries read by {scans} scans");
        if scans >= 2 * cases.len() as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{scans} scans of messages_room_seq after {} reads by time",
            cases.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
