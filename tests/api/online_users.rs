//! SPEC §18: whom `GET /v1/presence` and the seeds' `/api/online-users` list
//! (`ONLINE_USERS=all|contacts`), a page at a time.

use std::time::{Duration, Instant};

use natter::config::OnlineUsers;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    access_revocation::add_member,
    helpers::{TestApp, TestUser, WsClient, spawn_app, spawn_app_with},
};

/// The ids `path` lists for `user`, sorted as the server sent them.
async fn listed(app: &TestApp, path: &str, user: &TestUser) -> Vec<Uuid> {
    let reply = app.get(path, &user.token).await;
    reply.assert_status(200);
    reply.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Opens a socket for each user and waits until the node's presence shows them all.
async fn all_online(app: &TestApp, users: &[&TestUser]) -> Vec<WsClient> {
    let mut sockets = Vec::new();
    for user in users {
        sockets.push(WsClient::connect(app.addr, "/v1/ws", &user.token).await);
    }
    let started = Instant::now();
    for user in users {
        while !app
            .get(&format!("/v1/users/{}", user.id), &user.token)
            .await
            .body["online"]
            .as_bool()
            .unwrap()
        {
            assert!(started.elapsed() < Duration::from_secs(10), "not online");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    sockets
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

#[tokio::test]
async fn with_online_users_set_to_contacts_only_people_who_share_a_room_with_the_caller_are_listed()
{
    let app = spawn_app_with(|s| s.limits.online_users = OnlineUsers::Contacts).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let room = app.create_room(&alice, "pair", "private").await;
    add_member(&app, &alice, room, bob.id).await;
    let _sockets = all_online(&app, &[&alice, &bob, &carol]).await;

    for path in ["/v1/presence", "/api/online-users"] {
        assert_eq!(
            listed(&app, path, &alice).await,
            sorted(vec![alice.id, bob.id]),
            "{path}"
        );
        assert_eq!(
            listed(&app, path, &bob).await,
            sorted(vec![alice.id, bob.id]),
            "{path}"
        );
        assert_eq!(listed(&app, path, &carol).await, vec![carol.id], "{path}");
    }
}

#[tokio::test]
async fn the_online_users_list_is_paginated_by_cursor_with_at_most_two_hundred_a_page() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let _sockets = all_online(&app, &[&alice, &bob, &carol]).await;
    let everyone = sorted(vec![alice.id, bob.id, carol.id]);

    for path in ["/v1/presence", "/api/online-users"] {
        // By default (ONLINE_USERS=all) a stranger sees everyone online, as the seeds did.
        assert_eq!(listed(&app, path, &carol).await, everyone, "{path}");

        let first = app.get(&format!("{path}?limit=2"), &carol.token).await;
        first.assert_status(200);
        let page: Vec<Value> = first.body["users"].as_array().unwrap().clone();
        assert_eq!(page.len(), 2, "{path}");
        let cursor = first.body["next_cursor"].as_str().unwrap().to_string();
        let rest = app
            .get(&format!("{path}?limit=2&cursor={cursor}"), &carol.token)
            .await;
        rest.assert_status(200);
        let ids: Vec<Value> = page
            .iter()
            .chain(rest.body["users"].as_array().unwrap())
            .map(|u| u["id"].clone())
            .collect();
        assert_eq!(
            ids,
            everyone
                .iter()
                .map(|id| Value::String(id.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(rest.body.get("next_cursor").is_none(), "{path}: last page");

        for (query, field) in [
            ("limit=201", "limit"),
            ("limit=0", "limit"),
            ("cursor=not-a-cursor", "cursor"),
        ] {
            let refused = app.get(&format!("{path}?{query}"), &carol.token).await;
            refused.assert_status(400);
            assert_eq!(refused.error_code(), "invalid_input", "{path}?{query}");
            assert_eq!(refused.body["error"]["field"], field, "{path}?{query}");
        }
    }
}
