use std::{collections::HashSet, time::Duration};

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    TestApp, TestUser, WsClient, allow_bulk_sends, create_database, settings, spawn_app,
    spawn_app_with, spawn_node,
};

fn seqs(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

/// `n` users who are all members of one public room on `app`.
async fn room_with_members(app: &TestApp, n: usize) -> (Uuid, Vec<TestUser>) {
    let mut users = Vec::new();
    for i in 0..n {
        users.push(app.register(&format!("user{i}")).await);
    }
    let room = app.create_room(&users[0], "busy", "public").await;
    for user in &users[1..] {
        app.post(&format!("/v1/rooms/{room}/join"), &user.token, json!({}))
            .await
            .assert_status(204);
    }
    (room, users)
}

#[tokio::test]
async fn fifty_concurrent_sends_through_two_nodes_get_seq_one_to_fifty() {
    let node1 = spawn_app().await;
    let node2 = spawn_node(settings(&node1.database_url)).await;
    let (room, users) = room_with_members(&node1, 10).await;

    let sends = (0..50).map(|i| {
        let node = if i % 2 == 0 { &node1 } else { &node2 };
        let user = &users[i % users.len()];
        async move {
            node.post_message(&user.token, room, format!("message {i}"))
                .await
        }
    });
    let replies = join_all(sends).await;
    let mut got: Vec<i64> = replies
        .iter()
        .map(|r| {
            r.assert_status(201);
            r.body["seq"].as_i64().unwrap()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<_>>());

    let page = node2
        .get(
            &format!("/v1/rooms/{room}/messages?limit=200"),
            &users[0].token,
        )
        .await;
    assert_eq!(seqs(&page.body["messages"]), (1..=50).collect::<Vec<_>>());
    let info = node1
        .get(&format!("/v1/rooms/{room}"), &users[0].token)
        .await;
    assert_eq!(info.body["last_seq"], 50);
}

#[tokio::test]
async fn concurrent_sends_to_many_rooms_through_two_nodes_keep_every_room_gapless() {
    let node1 = spawn_app_with(allow_bulk_sends).await;
    let mut second = settings(&node1.database_url);
    allow_bulk_sends(&mut second);
    let node2 = spawn_node(second).await;
    let alice = node1.register("alice").await;
    let bob = node1.register("bob").await;
    let mut rooms = Vec::new();
    for i in 0..12 {
        rooms.push(
            node1
                .create_room(&alice, &format!("room {i}"), "public")
                .await,
        );
    }
    let private = node1.create_room(&bob, "bob's", "private").await;
    let not_joined = node1.create_room(&bob, "bob's public", "public").await;
    let missing = Uuid::new_v4();

    // 120 sends to 12 rooms, and refused ones mixed in, all at once through two nodes:
    // each node batches many rooms per transaction.
    let mut sends = Vec::new();
    for i in 0..120 {
        sends.push((rooms[i % 12], format!("m{i}"), 201));
    }
    for i in 0..6 {
        sends.push((private, format!("p{i}"), 404));
        sends.push((not_joined, format!("n{i}"), 403));
        sends.push((missing, format!("x{i}"), 404));
    }
    let replies = join_all(sends.iter().enumerate().map(|(i, (room, text, _))| {
        let node = if i % 2 == 0 { &node1 } else { &node2 };
        let token = alice.token.clone();
        async move { node.post_message(&token, *room, text.as_str()).await }
    }))
    .await;
    for (reply, (_, text, status)) in replies.iter().zip(&sends) {
        assert_eq!(reply.status, *status, "{text}: {:?}", reply.body);
    }
    for room in &rooms {
        let page = node2
            .get(
                &format!("/v1/rooms/{room}/messages?limit=200"),
                &alice.token,
            )
            .await;
        let messages = &page.body["messages"];
        assert_eq!(seqs(messages), (1..=10).collect::<Vec<_>>(), "room {room}");
        assert!(
            messages
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["room_id"] == room.to_string())
        );
    }
    let bobs = node1
        .get(&format!("/v1/rooms/{not_joined}/messages"), &bob.token)
        .await;
    assert_eq!(
        bobs.body["messages"],
        json!([]),
        "refused sends store nothing"
    );
}

#[tokio::test]
async fn the_database_refuses_a_second_message_with_a_senders_key_but_not_keyless_twins() {
    // The send path finds retries itself, under the room's lock; this index is what
    // stops a duplicate even if that path ever missed one.
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "backstop", "public").await;
    let db = app.db().await;
    let insert = |seq: i64, key: Option<&'static str>| {
        let db = &db;
        async move {
            db.execute(
                "INSERT INTO messages (id, room_id, seq, sender_id, text, client_msg_id)
                 VALUES (gen_random_uuid(), $1, $2, $3, 'direct', $4)",
                &[&room, &seq, &alice.id, &key],
            )
            .await
        }
    };
    insert(1, None).await.expect("a keyless message");
    insert(2, None).await.expect("another keyless message");
    insert(3, Some("k")).await.expect("a keyed message");
    let twin = insert(4, Some("k")).await.expect_err("the same key again");
    assert_eq!(
        twin.as_db_error().map(|e| e.constraint()),
        Some(Some("messages_client_msg_id"))
    );
}

#[tokio::test]
async fn twenty_concurrent_retries_of_one_client_msg_id_store_one_message() {
    let node1 = spawn_app().await;
    let node2 = spawn_node(settings(&node1.database_url)).await;
    let alice = node1.register("alice").await;
    let room = node1.create_room(&alice, "retries", "public").await;

    let attempts = (0..20).map(|i| {
        let node = if i % 2 == 0 { &node1 } else { &node2 };
        let token = alice.token.clone();
        async move {
            node.post(
                &format!("/v1/rooms/{room}/messages"),
                &token,
                json!({"text": "hello once", "client_msg_id": "abc-123"}),
            )
            .await
        }
    });
    let replies = join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let repeated = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, repeated), (1, 19));
    let ids: HashSet<&str> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every retry returns the original");
    assert!(replies.iter().all(|r| r.body["seq"] == 1));

    // The retry consumed no seq: the next message is 2.
    let next = node1.send(&alice, room, "next").await;
    assert_eq!(next["seq"], 2);
    // A late retry returns the original as it is now, reactions included.
    let original = replies[0].body["id"].as_str().unwrap();
    node1
        .call(
            Method::PUT,
            &format!("/v1/rooms/{room}/messages/{original}/reactions/👍"),
            Some(&alice.token),
            None,
        )
        .await
        .assert_status(200);
    let late = node2
        .post(
            &format!("/v1/rooms/{room}/messages"),
            &alice.token,
            json!({"text": "hello once", "client_msg_id": "abc-123"}),
        )
        .await;
    late.assert_status(200);
    assert_eq!(late.body["seq"], 1);
    assert_eq!(
        late.body["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}])
    );
    // The same key from another sender is another message.
    let bob = node1.register("bob").await;
    node1
        .post(&format!("/v1/rooms/{room}/join"), &bob.token, json!({}))
        .await;
    let bobs = node1
        .post(
            &format!("/v1/rooms/{room}/messages"),
            &bob.token,
            json!({"text": "mine", "client_msg_id": "abc-123"}),
        )
        .await;
    bobs.assert_status(201);
    assert_eq!(bobs.body["seq"], 3);
}

#[tokio::test]
async fn pagination_walks_a_500_message_room_both_ways_without_overlap_or_gap() {
    let app = spawn_app_with(|s| {
        s.limits.sends_per_second = 100_000.0;
        s.limits.send_burst = 100_000;
    })
    .await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "history", "public").await;
    for chunk in (1..=500).collect::<Vec<_>>().chunks(25) {
        join_all(chunk.iter().map(|i| {
            let text = format!("m{i}");
            let (app, alice) = (&app, &alice);
            async move { app.send(alice, room, &text).await }
        }))
        .await;
    }
    let base = format!("/v1/rooms/{room}/messages");

    // Backwards from the latest page.
    let mut seen: Vec<i64> = Vec::new();
    let mut page = app.get(&format!("{base}?limit=70"), &alice.token).await;
    loop {
        page.assert_status(200);
        let got = seqs(&page.body["messages"]);
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "ascending, no gap"
        );
        seen.splice(0..0, got.iter().copied());
        if !page.body["has_more"].as_bool().unwrap() {
            break;
        }
        let before = got[0];
        page = app
            .get(
                &format!("{base}?limit=70&before_seq={before}"),
                &alice.token,
            )
            .await;
    }
    assert_eq!(seen, (1..=500).collect::<Vec<_>>());

    // Forwards from the start.
    let mut seen: Vec<i64> = Vec::new();
    let mut after = 0;
    loop {
        let page = app
            .get(&format!("{base}?limit=70&after_seq={after}"), &alice.token)
            .await;
        let got = seqs(&page.body["messages"]);
        seen.extend(&got);
        if !page.body["has_more"].as_bool().unwrap() {
            break;
        }
        after = *got.last().unwrap();
    }
    assert_eq!(seen, (1..=500).collect::<Vec<_>>());

    // A window between two seqs, and the default page size.
    let window = app
        .get(
            &format!("{base}?after_seq=100&before_seq=106"),
            &alice.token,
        )
        .await;
    assert_eq!(
        seqs(&window.body["messages"]),
        vec![101, 102, 103, 104, 105]
    );
    assert_eq!(window.body["has_more"], false);
    let latest = app.get(&base, &alice.token).await;
    assert_eq!(
        seqs(&latest.body["messages"]),
        (451..=500).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn edits_deletes_and_replies_follow_the_rules() {
    let app = spawn_app().await;
    let (room, users) = room_with_members(&app, 2).await;
    let (owner, bob) = (&users[0], &users[1]);
    let first = app.send(bob, room, "hello").await;
    let id = first["id"].as_str().unwrap();
    let path = format!("/v1/rooms/{room}/messages/{id}");

    let edited = app
        .call(
            Method::PATCH,
            &path,
            Some(&bob.token),
            Some(json!({"text": "hello!"})),
        )
        .await;
    edited.assert_status(200);
    assert_eq!(edited.body["text"], "hello!");
    assert!(edited.body["edited_at"].as_i64().is_some());
    let not_sender = app
        .call(
            Method::PATCH,
            &path,
            Some(&owner.token),
            Some(json!({"text": "mine now"})),
        )
        .await;
    not_sender.assert_status(403);
    assert_eq!(not_sender.error_code(), "not_sender");

    let reply = app
        .post(
            &format!("/v1/rooms/{room}/messages"),
            &owner.token,
            json!({"text": "hi bob", "reply_to": id}),
        )
        .await;
    reply.assert_status(201);
    assert_eq!(reply.body["reply_to"], id);

    // The room's owner may delete anyone's message; a tombstone keeps the seq.
    let deleted = app
        .call(Method::DELETE, &path, Some(&owner.token), None)
        .await;
    deleted.assert_status(200);
    assert_eq!(deleted.body["deleted"], true);
    assert_eq!(deleted.body["text"], "");
    assert_eq!(deleted.body["seq"], 1);
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &bob.token)
        .await;
    assert_eq!(seqs(&page.body["messages"]), vec![1, 2]);
    assert_eq!(page.body["messages"][0]["deleted"], true);

    let edit_deleted = app
        .call(
            Method::PATCH,
            &path,
            Some(&bob.token),
            Some(json!({"text": "again"})),
        )
        .await;
    edit_deleted.assert_status(409);
    assert_eq!(edit_deleted.error_code(), "message_deleted");

    // A member who is neither sender nor owner may not delete.
    let carol = app.register("carol").await;
    app.post(&format!("/v1/rooms/{room}/join"), &carol.token, json!({}))
        .await;
    let second_id = reply.body["id"].as_str().unwrap();
    let forbidden = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{second_id}"),
            Some(&carol.token),
            None,
        )
        .await;
    forbidden.assert_status(403);
    let missing = app
        .call(
            Method::DELETE,
            &format!("/v1/rooms/{room}/messages/{}", Uuid::new_v4()),
            Some(&owner.token),
            None,
        )
        .await;
    missing.assert_status(404);
    assert_eq!(missing.error_code(), "message_not_found");
}

#[tokio::test]
async fn reactions_are_idempotent_and_counted_per_emoji() {
    let app = spawn_app().await;
    let (room, users) = room_with_members(&app, 3).await;
    let message = app.send(&users[0], room, "react to me").await;
    let id = message["id"].as_str().unwrap();
    let path = |emoji: &str| format!("/v1/rooms/{room}/messages/{id}/reactions/{emoji}");

    for user in &users {
        let r = app
            .call(Method::PUT, &path("%F0%9F%91%8D"), Some(&user.token), None)
            .await;
        r.assert_status(200);
    }
    // Again: no change.
    let again = app
        .call(
            Method::PUT,
            &path("%F0%9F%91%8D"),
            Some(&users[0].token),
            None,
        )
        .await;
    app.call(Method::PUT, &path("🎉"), Some(&users[1].token), None)
        .await
        .assert_status(200);
    assert_eq!(again.body["reactions"][0]["emoji"], "👍");
    assert_eq!(again.body["reactions"][0]["count"], 3);
    assert_eq!(again.body["reactions"][0]["me"], true);

    let removed = app
        .call(
            Method::DELETE,
            &path("%F0%9F%91%8D"),
            Some(&users[0].token),
            None,
        )
        .await;
    removed.assert_status(200);
    app.call(
        Method::DELETE,
        &path("%F0%9F%91%8D"),
        Some(&users[0].token),
        None,
    )
    .await
    .assert_status(200);
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &users[0].token)
        .await;
    let reactions = &page.body["messages"][0]["reactions"];
    assert_eq!(
        reactions[0],
        json!({"emoji": "👍", "count": 2, "me": false})
    );
    assert_eq!(
        reactions[1],
        json!({"emoji": "🎉", "count": 1, "me": false})
    );
}

#[tokio::test]
async fn search_finds_words_within_one_room_only() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "a", "public").await;
    let other = app.create_room(&alice, "b", "public").await;
    app.send(&alice, room, "the deploy failed again").await;
    app.send(&alice, room, "lunch?").await;
    app.send(&alice, room, "Deploy fixed").await;
    app.send(&alice, other, "deploy elsewhere").await;

    let found = app
        .get(
            &format!("/v1/rooms/{room}/messages/search?q=deploy"),
            &alice.token,
        )
        .await;
    found.assert_status(200);
    assert_eq!(seqs(&found.body["messages"]), vec![1, 3]);
    let phrase = app
        .get(
            &format!("/v1/rooms/{room}/messages/search?q=%22deploy%20failed%22"),
            &alice.token,
        )
        .await;
    assert_eq!(seqs(&phrase.body["messages"]), vec![1]);
}

#[tokio::test]
async fn the_send_rate_limit_answers_429_with_retry_after_and_recovers() {
    let app = spawn_app_with(|s| {
        s.limits.sends_per_second = 1.0;
        s.limits.send_burst = 3;
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "slow", "public").await;
    app.post(&format!("/v1/rooms/{room}/join"), &bob.token, json!({}))
        .await;
    for i in 0..3 {
        app.send(&alice, room, &format!("burst {i}")).await;
    }
    let limited = app.post_message(&alice.token, room, "one too many").await;
    limited.assert_status(429);
    assert_eq!(limited.error_code(), "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after));
    // Nothing was stored by the refused send, and other users are unaffected.
    assert_eq!(app.send(&bob, room, "bob is fine").await["seq"], 4);

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let recovered = app.send(&alice, room, "after waiting").await;
    assert_eq!(recovered["seq"], 5);
}

/// Sends `count` messages to `room`, one at a time and then all at once, through a pool
/// whose every connection has to serve some of them; asserts they get the `seq`s that
/// follow `last_seq` with none missing.
async fn later_sends_succeed(app: &TestApp, user: &TestUser, room: Uuid, last_seq: i64) {
    let mut got = Vec::new();
    for i in 0..16 {
        got.push(
            app.send(user, room, format!("one by one {i}")).await["seq"]
                .as_i64()
                .unwrap(),
        );
    }
    let together = (0..16).map(|i| app.send(user, room, format!("together {i}")));
    got.extend(
        join_all(together)
            .await
            .iter()
            .map(|m| m["seq"].as_i64().unwrap()),
    );
    got.sort_unstable();
    assert_eq!(got, (last_seq + 1..=last_seq + 32).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_send_postgres_refuses_to_store_fails_alone_and_leaves_no_hole() {
    let app = spawn_app_with(allow_bulk_sends).await;
    let user = app.register("refused").await;
    let room = app.create_room(&user, "refusals", "public").await;
    app.send(&user, room, "first").await;
    let db = app.db().await;
    db.batch_execute(
        "ALTER TABLE messages ADD CONSTRAINT test_refuses CHECK (text <> 'refuse me')",
    )
    .await
    .unwrap();

    let refused = app.post_message(&user.token, room, "refuse me").await;
    assert!(refused.status.is_server_error(), "{}", refused.status);
    db.batch_execute("ALTER TABLE messages DROP CONSTRAINT test_refuses")
        .await
        .unwrap();

    later_sends_succeed(&app, &user, room, 1).await;
    let stored: i64 = db
        .query_one("SELECT count(*) FROM messages WHERE room_id = $1", &[&room])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 33, "the refused send stored nothing");
}

#[tokio::test]
async fn a_send_to_one_room_does_not_wait_for_another_rooms_stalled_transaction() {
    let app = spawn_app().await;
    let user = app.register("sender").await;
    let held = app.create_room(&user, "held", "public").await;
    let free = app.create_room(&user, "free", "public").await;
    let holder = app.hold_room_lock(held).await;
    let stalled = app.post_message(&user.token, held, "waits for the lock");
    tokio::pin!(stalled);
    tokio::select! {
        reply = &mut stalled => panic!("stored past a held lock: {}", reply.status),
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
    }

    // The lock is still held: this send needs a writer of its own, and gets one.
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        app.post_message(&user.token, free, "does not wait"),
    )
    .await
    .expect("a send to another room is not held up by the stalled transaction");
    other.assert_status(201);
    assert_eq!(other.body["seq"], 1);

    holder.batch_execute("ROLLBACK").await.unwrap();
    let stalled = stalled.await;
    stalled.assert_status(201);
    assert_eq!(stalled.body["seq"], 1);
}

#[tokio::test]
async fn a_send_that_gives_up_waiting_for_its_rooms_lock_fails_alone_and_leaves_no_hole() {
    // Every connection of the node gives up on a lock after a moment, so a batch fails
    // between its `BEGIN` and its `COMMIT`, inside the transaction.
    let database_url = create_database().await;
    let (_, database) = database_url.rsplit_once('/').unwrap();
    let admin = TestApp::at("127.0.0.1:0".parse().unwrap(), &database_url)
        .db()
        .await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET lock_timeout = '300ms'"
        ))
        .await
        .unwrap();
    let mut settings = settings(&database_url);
    allow_bulk_sends(&mut settings);
    let app = spawn_node(settings).await;
    let user = app.register("waiter").await;
    let room = app.create_room(&user, "locked", "public").await;

    let holder = app.hold_room_lock(room).await;
    let gave_up = app.post_message(&user.token, room, "waits too long").await;
    // Contention, not a fault: worth retrying, and the client is told when.
    gave_up.assert_unavailable();
    holder.batch_execute("ROLLBACK").await.unwrap();

    later_sends_succeed(&app, &user, room, 0).await;
}

#[tokio::test]
async fn in_a_direct_room_only_a_messages_sender_may_delete_it() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    // Alice opens the direct room, which once made her its "owner".
    let opened = app
        .post("/v1/dms", &alice.token, json!({"user_id": bob.id}))
        .await;
    opened.assert_status(201);
    let room: uuid::Uuid = opened.body["id"].as_str().unwrap().parse().unwrap();
    let from_bob = app.send(&bob, room, "only I may take this back").await;
    let path = format!(
        "/v1/rooms/{room}/messages/{}",
        from_bob["id"].as_str().unwrap()
    );

    let by_alice = app
        .call(Method::DELETE, &path, Some(&alice.token), None)
        .await;
    by_alice.assert_status(403);
    assert_eq!(by_alice.error_code(), "not_sender");
    let page = app
        .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
        .await;
    assert_eq!(page.body["messages"][0]["deleted"], Value::Bool(false));

    let by_bob = app
        .call(Method::DELETE, &path, Some(&bob.token), None)
        .await;
    by_bob.assert_status(200);
    assert_eq!(by_bob.body["deleted"], true);

    // Alice still deletes her own, and an owner of a group room still moderates it.
    let mine = app.send(&alice, room, "mine").await;
    let mine = format!("/v1/rooms/{room}/messages/{}", mine["id"].as_str().unwrap());
    app.call(Method::DELETE, &mine, Some(&alice.token), None)
        .await
        .assert_status(200);
    let group = app.create_room(&alice, "group", "public").await;
    app.post(&format!("/v1/rooms/{group}/join"), &bob.token, json!({}))
        .await
        .assert_status(204);
    let in_group = app.send(&bob, group, "moderated").await;
    let in_group = format!(
        "/v1/rooms/{group}/messages/{}",
        in_group["id"].as_str().unwrap()
    );
    app.call(Method::DELETE, &in_group, Some(&alice.token), None)
        .await
        .assert_status(200);
}

/// The stored messages of `room` as (seq, text), in `seq` order, and the room's `last_seq`.
async fn stored(app: &TestApp, room: Uuid) -> (Vec<(i64, String)>, i64) {
    let db = app.db().await;
    let messages = db
        .query(
            "SELECT seq, text FROM messages WHERE room_id = $1 ORDER BY seq",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let last_seq = db
        .query_one("SELECT last_seq FROM rooms WHERE id = $1", &[&room])
        .await
        .unwrap()
        .get(0);
    (messages, last_seq)
}

#[tokio::test]
async fn sends_queued_behind_a_held_room_answer_in_order_and_only_stored_ones_take_a_seq() {
    let app = spawn_app_with(allow_bulk_sends).await;
    let alice = app.register("alice").await;
    let mallory = app.register("mallory").await;
    let room = app.create_room(&alice, "batched", "public").await;
    let private = app.create_room(&alice, "hidden", "private").await;
    let mut alice_ws = WsClient::connect(app.addr, "/v1/ws", &alice.token).await;
    let mut mallory_ws = WsClient::connect(app.addr, "/v1/ws", &mallory.token).await;

    // The first send's transaction waits for the lock; the sends after it queue behind
    // it and are stored together once it is released.
    let holder = app.hold_room_lock(room).await;
    let send = |text: &str, key: Option<&str>| {
        let mut frame = json!({"type": "send", "room_id": room, "text": text});
        if let Some(key) = key {
            frame["client_msg_id"] = json!(key);
        }
        frame
    };
    alice_ws.send(send("first", Some("k0"))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice_ws.send(send("one", Some("k1"))).await;
    alice_ws.send(send("two", None)).await;
    alice_ws.send(send("one again", Some("k1"))).await;
    alice_ws.send(send("three", Some("k2"))).await;
    mallory_ws.send(send("intruder", Some("m1"))).await;
    mallory_ws
        .send(json!({"type": "send", "room_id": private, "text": "hidden", "client_msg_id": "m2"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("ROLLBACK").await.unwrap();

    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(alice_ws.recv().await);
    }
    let acked: Vec<(&str, i64, &str)> = answers
        .iter()
        .filter(|a| a["type"] == "send_ack")
        .map(|a| {
            let message = &a["message"];
            (
                message["text"].as_str().unwrap(),
                message["seq"].as_i64().unwrap(),
                message["id"].as_str().unwrap(),
            )
        })
        .collect();
    let texts_and_seqs: Vec<(&str, i64)> = acked.iter().map(|(t, s, _)| (*t, *s)).collect();
    assert_eq!(
        texts_and_seqs,
        [
            ("first", 1),
            ("one", 2),
            ("two", 3),
            ("one", 2),
            ("three", 4)
        ],
        "{answers:#?}"
    );
    assert_eq!(
        acked[1].2, acked[3].2,
        "a repeated key answers with its first message"
    );
    let not_member = mallory_ws.recv().await;
    assert_eq!(
        (not_member["code"].as_str(), not_member["ref"].as_str()),
        (Some("not_member"), Some("m1"))
    );
    let hidden = mallory_ws.recv().await;
    assert_eq!(
        (hidden["code"].as_str(), hidden["ref"].as_str()),
        (Some("room_not_found"), Some("m2"))
    );

    let (messages, last_seq) = stored(&app, room).await;
    let expected = [(1, "first"), (2, "one"), (3, "two"), (4, "three")];
    assert_eq!(
        messages,
        expected.map(|(seq, text)| (seq, text.to_string())),
        "refused sends and repeats stored nothing"
    );
    assert_eq!(last_seq, 4);
    assert_eq!(stored(&app, private).await, (Vec::new(), 0));

    // A later retry of a stored key answers with the original; a reply to a message of
    // another room is refused and takes no seq; the next send follows.
    alice_ws.send(send("one, later", Some("k1"))).await;
    assert_eq!(alice_ws.recv_type("send_ack").await["message"]["seq"], 2);
    let elsewhere = app.send(&alice, private, "elsewhere").await;
    let path = format!("/v1/rooms/{room}/messages");
    let bad_reply = json!({"text": "re", "reply_to": elsewhere["id"], "client_msg_id": "k3"});
    let refused = app.post(&path, &alice.token, bad_reply).await;
    refused.assert_status(400);
    assert_eq!(refused.error_code(), "invalid_input");
    let reply = json!({"text": "re", "reply_to": acked[1].2, "client_msg_id": "k3"});
    let stored_reply = app.post(&path, &alice.token, reply).await;
    stored_reply.assert_status(201);
    assert_eq!(stored_reply.body["seq"], 5);
    assert_eq!(stored_reply.body["reply_to"], acked[1].2);
}

#[tokio::test]
async fn many_sockets_sending_keyed_messages_twice_at_once_store_each_key_once_gaplessly() {
    let app = spawn_app_with(allow_bulk_sends).await;
    let (room, users) = room_with_members(&app, 8).await;
    let mut sockets = Vec::new();
    for user in &users {
        sockets.push(WsClient::connect(app.addr, "/v1/ws", &user.token).await);
    }
    // Every socket sends its ten keys twice, interleaved, without waiting for answers.
    const KEYS: usize = 10;
    for round in 0..2 {
        for i in 0..KEYS {
            for ws in &mut sockets {
                ws.send(json!({"type": "send", "room_id": room, "text": format!("m{i} try {round}"), "client_msg_id": format!("k{i}")}))
                    .await;
            }
        }
    }
    let mut stored_ids = HashSet::new();
    let mut seqs = HashSet::new();
    for (user, ws) in users.iter().zip(&mut sockets) {
        let mut by_key = std::collections::HashMap::new();
        for _ in 0..2 * KEYS {
            let ack = ws.recv_type("send_ack").await;
            let message = &ack["message"];
            assert_eq!(message["sender_id"], json!(user.id));
            let key = message["client_msg_id"].as_str().unwrap().to_string();
            let id = message["id"].as_str().unwrap().to_string();
            let first = by_key.entry(key.clone()).or_insert_with(|| id.clone());
            assert_eq!(*first, id, "both sends of {key} answer with one message");
            assert!(message["text"].as_str().unwrap().ends_with("try 0"));
            stored_ids.insert(id);
            seqs.insert(message["seq"].as_i64().unwrap());
        }
        assert_eq!(by_key.len(), KEYS);
    }
    let total = (users.len() * KEYS) as i64;
    assert_eq!(stored_ids.len() as i64, total);
    let mut seqs: Vec<i64> = seqs.into_iter().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let (messages, last_seq) = stored(&app, room).await;
    assert_eq!(messages.len() as i64, total, "each key stored once");
    assert_eq!(last_seq, total);
}
