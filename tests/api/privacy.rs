//! A private room is indistinguishable from a missing one to outsiders, on every route.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::spawn_app;

/// Every room-scoped route, with a body where it takes one.
pub fn room_routes(room: Uuid, message: Uuid, user: Uuid) -> Vec<(Method, String, Option<Value>)> {
    let r = format!("/v1/rooms/{room}");
    let m = format!("{r}/messages/{message}");
    vec![
        (Method::GET, r.clone(), None),
        (Method::PATCH, r.clone(), Some(json!({"name": "mine"}))),
        (Method::DELETE, r.clone(), None),
        (Method::POST, format!("{r}/join"), None),
        (Method::POST, format!("{r}/leave"), None),
        (Method::POST, format!("{r}/read"), Some(json!({"seq": 1}))),
        (Method::GET, format!("{r}/members"), None),
        (Method::PUT, format!("{r}/members/{user}"), None),
        (Method::DELETE, format!("{r}/members/{user}"), None),
        (
            Method::POST,
            format!("{r}/messages"),
            Some(json!({"text": "hi"})),
        ),
        (Method::GET, format!("{r}/messages"), None),
        (Method::GET, format!("{r}/messages/search?q=secret"), None),
        (Method::PATCH, m.clone(), Some(json!({"text": "edited"}))),
        (Method::DELETE, m.clone(), None),
        (Method::PUT, format!("{m}/reactions/👍"), None),
        (Method::DELETE, format!("{m}/reactions/👍"), None),
    ]
}

#[tokio::test]
async fn every_route_answers_404_for_a_private_room_to_a_non_member_exactly_as_for_a_missing_one() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let mallory = app.register("mallory").await;
    for kind in ["private", "direct"] {
        let room: Uuid = if kind == "private" {
            app.create_room(&alice, "secret plans", "private").await
        } else {
            let bob = app.register("bob").await;
            let dm = app
                .post("/v1/dms", &alice.token, json!({"user_id": bob.id}))
                .await;
            dm.body["id"].as_str().unwrap().parse().unwrap()
        };
        let message: Uuid = app.send(&alice, room, "the secret").await["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let missing = Uuid::new_v4();

        for ((method, path, body), (_, missing_path, _)) in room_routes(room, message, mallory.id)
            .into_iter()
            .zip(room_routes(missing, message, mallory.id))
        {
            let hidden = app
                .call(method.clone(), &path, Some(&mallory.token), body.clone())
                .await;
            let absent = app
                .call(method.clone(), &missing_path, Some(&mallory.token), body)
                .await;
            assert_eq!(
                hidden.status, 404,
                "{kind}: {method} {path}: {}",
                hidden.body
            );
            assert_eq!(hidden.error_code(), "room_not_found", "{method} {path}");
            assert_eq!(hidden.body, absent.body, "{method} {path} leaks existence");
        }

        // The room never shows up in the outsider's lists, and is untouched.
        let rooms = app.get("/v1/rooms", &mallory.token).await;
        assert!(!rooms.body.to_string().contains(&room.to_string()));
        let mine = app.get("/v1/me/rooms", &mallory.token).await;
        assert_eq!(mine.body["rooms"], json!([]));
        let messages = app
            .get(&format!("/v1/rooms/{room}/messages"), &alice.token)
            .await;
        assert_eq!(messages.body["messages"][0]["text"], "the secret");
        assert_eq!(messages.body["messages"][0]["reactions"], json!([]));
        assert_eq!(messages.body["messages"].as_array().unwrap().len(), 1);
    }
}
