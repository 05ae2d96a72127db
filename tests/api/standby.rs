//! `DATABASE_READ_URL`: history pages, search and the chat list read from a streaming
//! standby once it has caught up, and never miss a message that was acknowledged.
//!
//! The test runs its own primary and standby ([`OwnPostgres`]), since pausing replay
//! must not touch other tests.

use uuid::Uuid;

use crate::{
    helpers::{allow_bulk_sends, settings, spawn_node},
    own_postgres::OwnPostgres,
};

/// Every send is followed at once by a history page, a search and the chat list through
/// the node with a standby: each shows the message just acknowledged, and the standby
/// served reads. With the standby's replay paused, reads fall back to the primary and
/// still show every acknowledged message; once replay resumes the standby serves again.
#[tokio::test]
async fn reads_from_a_standby_never_miss_an_acknowledged_message_and_fall_back_while_it_lags() {
    let primary = OwnPostgres::primary().await;
    let standby = OwnPostgres::standby_of(&primary).await;
    let database = format!("natter_standby_{}", Uuid::new_v4().simple());
    primary
        .sql("postgres", &format!("CREATE DATABASE {database}"))
        .await;
    let mut node_settings = settings(&primary.url(&database));
    node_settings.database_read_url = Some(standby.url(&database));
    allow_bulk_sends(&mut node_settings);
    // A search after every send, faster than a user's 5 a second.
    node_settings.limits.searches_per_second = 1000;
    let app = spawn_node(node_settings).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;

    let reads_everything = |sent: i64| {
        let (app, token) = (&app, alice.token.clone());
        async move {
            let page = app
                .get(&format!("/v1/rooms/{room}/messages?limit=5"), &token)
                .await;
            let last = page.body["messages"].as_array().unwrap().last().cloned();
            assert_eq!(
                last.unwrap()["seq"],
                sent,
                "the page has the acknowledged send"
            );
            let found = app
                .get(
                    &format!("/v1/rooms/{room}/messages/search?q=word{sent}"),
                    &token,
                )
                .await;
            assert_eq!(found.body["messages"][0]["seq"], sent, "search finds it");
            let rooms = app.get("/v1/me/rooms", &token).await;
            let last = &rooms.body["rooms"][0]["last_message"]["seq"];
            assert_eq!(*last, sent, "the chat list has it");
        }
    };
    for sent in 1..=20 {
        let message = app.send(&alice, room, format!("word{sent}")).await;
        assert_eq!(message["seq"], sent);
        reads_everything(sent).await;
    }
    let served = app.metric("natter_db_reads_from_standby_total").await;
    assert!(served > 0.0, "the standby served none of 60 reads");

    standby.sql(&database, "SELECT pg_wal_replay_pause()").await;
    let fell_back = app.metric("natter_db_reads_from_primary_total").await;
    for sent in 21..=25 {
        app.send(&alice, room, format!("word{sent}")).await;
        reads_everything(sent).await;
    }
    assert_eq!(
        app.metric("natter_db_reads_from_primary_total").await,
        fell_back + 15.0,
        "every read while replay was paused went to the primary"
    );

    standby
        .sql(&database, "SELECT pg_wal_replay_resume()")
        .await;
    let served = app.metric("natter_db_reads_from_standby_total").await;
    app.send(&alice, room, "word26").await;
    reads_everything(26).await;
    assert!(app.metric("natter_db_reads_from_standby_total").await > served);
}
