use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{allow_bulk_sends, spawn_app, spawn_app_with};

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_room_is_created_read_renamed_and_deleted_by_its_owner() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let created = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": "  general  ", "kind": "private", "member_ids": [bob.id, alice.id]}),
        )
        .await;
    created.assert_status(201);
    assert_eq!(created.body["name"], "general");
    assert_eq!(created.body["kind"], "private");
    assert_eq!(created.body["owner_id"], alice.id.to_string());
    assert_eq!(created.body["member_count"], 2);
    assert_eq!(created.body["last_seq"], 0);
    let room = created.body["id"].as_str().unwrap();

    let seen_by_bob = app.get(&format!("/v1/rooms/{room}"), &bob.token).await;
    seen_by_bob.assert_status(200);
    let renamed = app
        .call(
            Method::PATCH,
            &format!("/v1/rooms/{room}"),
            Some(&alice.token),
            Some(json!({"name": "random"})),
        )
        .await;
    renamed.assert_status(200);
    assert_eq!(renamed.body["name"], "random");
    let by_member = app
        .call(
            Method::PATCH,
            &format!("/v1/rooms/{room}"),
            Some(&bob.token),
            Some(json!({"name": "mine"})),
        )
        .await;
    by_member.assert_status(403);
    assert_eq!(by_member.error_code(), "not_owner");

    app.call(
        Method::DELETE,
        &format!("/v1/rooms/{room}"),
        Some(&bob.token),
        None,
    )
    .await
    .assert_status(403);
    app.call(
        Method::DELETE,
        &format!("/v1/rooms/{room}"),
        Some(&alice.token),
        None,
    )
    .await
    .assert_status(204);
    let gone = app.get(&format!("/v1/rooms/{room}"), &alice.token).await;
    gone.assert_status(404);
    assert_eq!(gone.error_code(), "room_not_found");
}

#[tokio::test]
async fn deleting_a_room_deletes_its_messages_and_reactions_even_with_sends_in_flight() {
    let app = spawn_app_with(allow_bulk_sends).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "doomed", "public").await;
    let first = app.send(&alice, room, "first").await;
    let message = first["id"].as_str().unwrap();
    app.call(
        Method::PUT,
        &format!("/v1/rooms/{room}/messages/{message}/reactions/👍"),
        Some(&alice.token),
        None,
    )
    .await
    .assert_status(200);

    // Sends racing the delete either commit before it (and are deleted with the room)
    // or find no room; none may leave a message behind.
    let (messages_path, room_path) = (
        format!("/v1/rooms/{room}/messages"),
        format!("/v1/rooms/{room}"),
    );
    let sends = (0..20).map(|i| {
        app.post(
            &messages_path,
            &alice.token,
            json!({"text": format!("racing {i}")}),
        )
    });
    let delete = app.call(Method::DELETE, &room_path, Some(&alice.token), None);
    let (sent, deleted) = tokio::join!(futures_util::future::join_all(sends), delete);
    deleted.assert_status(204);
    for reply in sent {
        assert!(
            [201, 404].contains(&reply.status.as_u16()),
            "a racing send answered {}",
            reply.status
        );
    }

    let db = app.db().await;
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM messages WHERE room_id = $1)
                  + (SELECT count(*) FROM reactions WHERE message_id = $2)",
            &[&room, &message.parse::<Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "messages or reactions outlived their room");
}

#[tokio::test]
async fn creating_a_room_with_an_unknown_member_changes_nothing() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let reply = app
        .post(
            "/v1/rooms",
            &alice.token,
            json!({"name": "x", "kind": "public", "member_ids": [Uuid::new_v4()]}),
        )
        .await;
    reply.assert_status(400);
    assert_eq!(reply.body["error"]["field"], "member_ids");
    let rooms = app.get("/v1/rooms", &alice.token).await;
    assert_eq!(rooms.body["rooms"], json!([]));
}

#[tokio::test]
async fn public_rooms_are_joined_and_left_idempotently() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "lobby", "public").await;
    let join = format!("/v1/rooms/{room}/join");
    let leave = format!("/v1/rooms/{room}/leave");

    // Readable before joining, but writing needs membership.
    app.get(&format!("/v1/rooms/{room}/messages"), &bob.token)
        .await
        .assert_status(200);
    let not_member = app
        .post(
            &format!("/v1/rooms/{room}/messages"),
            &bob.token,
            json!({"text": "hi"}),
        )
        .await;
    not_member.assert_status(403);
    assert_eq!(not_member.error_code(), "not_member");

    app.post(&join, &bob.token, json!({}))
        .await
        .assert_status(204);
    app.post(&join, &bob.token, json!({}))
        .await
        .assert_status(204);
    let room_info = app.get(&format!("/v1/rooms/{room}"), &bob.token).await;
    assert_eq!(room_info.body["member_count"], 2);
    app.send(&bob, room, "hi").await;
    app.post(&leave, &bob.token, json!({}))
        .await
        .assert_status(204);
    app.post(&leave, &bob.token, json!({}))
        .await
        .assert_status(204);
    let room_info = app.get(&format!("/v1/rooms/{room}"), &bob.token).await;
    assert_eq!(room_info.body["member_count"], 1);

    let owner_leaves = app.post(&leave, &alice.token, json!({})).await;
    owner_leaves.assert_status(409);
    assert_eq!(owner_leaves.error_code(), "owner_cannot_leave");
}

#[tokio::test]
async fn the_owner_manages_members_of_a_private_room() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let room = app.create_room(&alice, "team", "private").await;
    let member = |id: Uuid| format!("/v1/rooms/{room}/members/{id}");

    app.call(Method::PUT, &member(bob.id), Some(&alice.token), None)
        .await
        .assert_status(204);
    app.call(Method::PUT, &member(bob.id), Some(&alice.token), None)
        .await
        .assert_status(204);
    let not_owner = app
        .call(Method::PUT, &member(carol.id), Some(&bob.token), None)
        .await;
    not_owner.assert_status(403);
    assert_eq!(not_owner.error_code(), "not_owner");
    let unknown = app
        .call(
            Method::PUT,
            &member(Uuid::new_v4()),
            Some(&alice.token),
            None,
        )
        .await;
    unknown.assert_status(404);
    assert_eq!(unknown.error_code(), "user_not_found");

    let members = app
        .get(&format!("/v1/rooms/{room}/members"), &bob.token)
        .await;
    members.assert_status(200);
    let list = members.body["members"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let alice_entry = list
        .iter()
        .find(|m| m["user_id"] == alice.id.to_string())
        .unwrap();
    assert_eq!(alice_entry["role"], "owner");
    assert_eq!(alice_entry["username"], "alice");

    app.call(Method::DELETE, &member(bob.id), Some(&alice.token), None)
        .await
        .assert_status(204);
    app.get(&format!("/v1/rooms/{room}"), &bob.token)
        .await
        .assert_status(404);
    let remove_self = app
        .call(Method::DELETE, &member(alice.id), Some(&alice.token), None)
        .await;
    remove_self.assert_status(409);
}

#[tokio::test]
async fn a_direct_room_is_created_once_per_pair_and_named_after_the_other_user() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let first = app
        .post("/v1/dms", &alice.token, json!({"user_id": bob.id}))
        .await;
    first.assert_status(201);
    assert_eq!(first.body["kind"], "direct");
    assert_eq!(first.body["name"], "bob");
    assert_eq!(first.body["member_count"], 2);
    let from_bob = app
        .post("/v1/dms", &bob.token, json!({"user_id": alice.id}))
        .await;
    from_bob.assert_status(200);
    assert_eq!(from_bob.body["id"], first.body["id"]);
    assert_eq!(from_bob.body["name"], "alice");

    let room = first.body["id"].as_str().unwrap();
    let renamed = app
        .call(
            Method::PATCH,
            &format!("/v1/rooms/{room}"),
            Some(&alice.token),
            Some(json!({"name": "x"})),
        )
        .await;
    renamed.assert_status(409);
    assert_eq!(renamed.error_code(), "direct_room");
    let carol = app.register("carol").await;
    app.get(&format!("/v1/rooms/{room}"), &carol.token)
        .await
        .assert_status(404);
    let unknown = app
        .post("/v1/dms", &alice.token, json!({"user_id": Uuid::new_v4()}))
        .await;
    unknown.assert_status(404);
    assert_eq!(unknown.error_code(), "user_not_found");
    let myself = app
        .post("/v1/dms", &alice.token, json!({"user_id": alice.id}))
        .await;
    myself.assert_status(400);
}

#[tokio::test]
async fn the_room_list_shows_public_rooms_and_mine_page_by_page() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(
            app.create_room(&alice, &format!("public {i}"), "public")
                .await
                .to_string(),
        );
    }
    let hidden = app.create_room(&alice, "secret", "private").await;
    let bobs_private = app.create_room(&bob, "bob's", "private").await;
    expected.push(bobs_private.to_string());

    let mut seen = Vec::new();
    let mut url = "/v1/rooms?limit=2".to_string();
    loop {
        let page = app.get(&url, &bob.token).await;
        page.assert_status(200);
        seen.extend(ids(&page.body["rooms"]));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => url = format!("/v1/rooms?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    assert!(!seen.contains(&hidden.to_string()));
}

#[tokio::test]
async fn my_rooms_are_ordered_by_activity_with_unread_counts_and_last_message() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let quiet = app.create_room(&alice, "quiet", "public").await;
    let busy = app.create_room(&alice, "busy", "public").await;
    for room in [quiet, busy] {
        app.post(&format!("/v1/rooms/{room}/join"), &bob.token, json!({}))
            .await;
    }
    app.send(&bob, quiet, "one").await;
    app.send(&alice, busy, "mine").await;
    for i in 0..3 {
        app.send(&bob, busy, &format!("from bob {i}")).await;
    }
    let deleted = app.send(&bob, busy, "oops").await;
    app.call(
        Method::DELETE,
        &format!(
            "/v1/rooms/{busy}/messages/{}",
            deleted["id"].as_str().unwrap()
        ),
        Some(&bob.token),
        None,
    )
    .await
    .assert_status(200);
    app.send(&bob, busy, "latest").await;

    let mine = app.get("/v1/me/rooms", &alice.token).await;
    mine.assert_status(200);
    let rooms = mine.body["rooms"].as_array().unwrap();
    assert_eq!(rooms[0]["id"], busy.to_string());
    assert_eq!(
        rooms[0]["unread_count"], 4,
        "own and deleted messages never count"
    );
    assert_eq!(rooms[0]["last_message"]["text"], "latest");
    assert_eq!(rooms[0]["last_read_seq"], 0);
    assert_eq!(rooms[1]["id"], quiet.to_string());
    assert_eq!(rooms[1]["unread_count"], 1);

    // Reading moves the watermark forward only; beyond the last seq is invalid.
    let read = format!("/v1/rooms/{busy}/read");
    app.post(&read, &alice.token, json!({"seq": 5}))
        .await
        .assert_status(204);
    app.post(&read, &alice.token, json!({"seq": 2}))
        .await
        .assert_status(204);
    let beyond = app.post(&read, &alice.token, json!({"seq": 99})).await;
    beyond.assert_status(400);
    assert_eq!(beyond.body["error"]["field"], "seq");
    let mine = app.get("/v1/me/rooms?limit=1", &alice.token).await;
    let rooms = mine.body["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["last_read_seq"], 5);
    assert_eq!(rooms[0]["unread_count"], 1);
    let cursor = mine.body["next_cursor"].as_str().unwrap();
    let next = app
        .get(
            &format!("/v1/me/rooms?limit=1&cursor={cursor}"),
            &alice.token,
        )
        .await;
    assert_eq!(next.body["rooms"][0]["id"], quiet.to_string());
    assert!(next.body["next_cursor"].is_null());
}

#[tokio::test]
async fn a_room_whose_history_takes_longer_to_delete_than_the_statement_timeout_is_deleted() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "long history", "public").await;
    let db = app.store_history(room, alice.id, 100_000).await;
    // Deleting messages costs time that grows faster than the rows one statement takes:
    // 100,000 at once would take 16 s, past the 15 s statement timeout; 5,000 take 40 ms.
    db.batch_execute(
        "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_sleep(power((SELECT count(*) FROM gone) / 25000.0, 2));
             RETURN NULL;
         END $$;
         CREATE TRIGGER slow_delete AFTER DELETE ON messages
             REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION slow_delete();",
    )
    .await
    .unwrap();
    app.call(
        Method::DELETE,
        &format!("/v1/rooms/{room}"),
        Some(&alice.token),
        None,
    )
    .await
    .assert_status(204);
    let left: i64 = db
        .query_one("SELECT count(*) FROM messages WHERE room_id = $1", &[&room])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let gone = app.get(&format!("/v1/rooms/{room}"), &alice.token).await;
    assert_eq!(gone.status.as_u16(), 404);
}
