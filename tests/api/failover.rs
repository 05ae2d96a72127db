//! A failover as the nodes see it, on a real primary and streaming standby of the test's
//! own ([`OwnPostgres`]). The fault matrix's `postgres-failover` runs the same under
//! Patroni with traffic (tests/faults/run).

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::{
    helpers::{settings, spawn_node},
    own_postgres::OwnPostgres,
};

/// The standby is promoted while the old primary stays up but turns read-only (fenced,
/// as a demoted primary is), so the node's pooled connections to it stay open. The first
/// write on one fails read-only and is answered 503; that marks every connection opened
/// before it stale, so the next write reconnects, passes over the read-only server and
/// lands on the new primary, without a restart. `seq` goes on from the replicated
/// position, and the send refused meanwhile, retried with its key, is stored once.
#[tokio::test]
async fn after_a_promotion_connections_to_the_demoted_primary_are_dropped_and_writes_reach_the_new_one()
 {
    let old = OwnPostgres::primary().await;
    let new = OwnPostgres::standby_of(&old).await;
    let database = format!("natter_failover_{}", Uuid::new_v4().simple());
    old.sql("postgres", &format!("CREATE DATABASE {database}"))
        .await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
        old.port, new.port
    );
    let app = spawn_node(settings(&url)).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;
    for seq in 1..=5 {
        assert_eq!(app.send(&alice, room, "before").await["seq"], seq);
    }
    // Open most of the pool: concurrent reads each hold a connection.
    let page = format!("/v1/rooms/{room}/messages");
    join_all((0..16).map(|_| app.get(&page, &alice.token))).await;
    let opened = app.metric("natter_db_connections_opened_total").await;
    assert!(opened >= 4.0, "the reads opened {opened} connections");
    new.caught_up_with(&old).await;

    let fenced = "ALTER SYSTEM SET default_transaction_read_only = on";
    old.sql("postgres", fenced).await;
    old.sql("postgres", "SELECT pg_reload_conf()").await;
    new.promote().await;

    let path = format!("/v1/rooms/{room}/messages");
    let keyed = json!({"text": "across", "client_msg_id": "k-1"});
    let mut refused = 0;
    let stored = loop {
        let reply = app.post(&path, &alice.token, keyed.clone()).await;
        if reply.status == 201 {
            break reply;
        }
        reply.assert_unavailable();
        refused += 1;
        assert!(refused < 20, "the node never reached the new primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The first write to meet the demoted server (this one, or a background task's)
    // drops every connection opened before it; without that each of the pooled
    // connections would fail one write in turn.
    assert!(refused <= 1, "{refused} writes met the demoted primary");
    assert_eq!(stored.body["seq"], 6);
    let again = app.post(&path, &alice.token, keyed).await;
    again.assert_status(200);
    assert_eq!(again.body["id"], stored.body["id"]);
    assert_eq!(app.send(&alice, room, "after").await["seq"], 7);

    let (on_old, on_new) = (
        last_seq(&old, &database).await,
        last_seq(&new, &database).await,
    );
    assert_eq!(
        (on_old, on_new),
        (5, 7),
        "writes after the promotion went to the new primary"
    );
}

/// The highest `seq` stored on `server`.
async fn last_seq(server: &OwnPostgres, database: &str) -> i64 {
    let client = server.client(database).await;
    let row = client.query_one("SELECT max(seq) FROM messages", &[]).await;
    row.unwrap().get(0)
}
