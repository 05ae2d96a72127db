//! Hostile clients: the authorization matrix over REST routes and WebSocket frames,
//! cross-origin requests, slow (slowloris) requests, what the logs must never hold, and
//! that `/metrics` is not served on the API port once `METRICS_ADDR` gives it its own.

use std::{process::Stdio, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use uuid::Uuid;

use crate::{
    helpers::{NodeProcess, TestApp, WsClient, create_database, settings, spawn_app_with},
    privacy::room_routes,
};

/// Statuses `user` gets from every room route of `room`, keyed by "METHOD path".
async fn statuses(
    app: &TestApp,
    token: &str,
    room: Uuid,
    message: Uuid,
    member: Uuid,
) -> Vec<(String, u16, String)> {
    let mut seen = Vec::new();
    // Joining or leaving would change who the caller is for the routes after it.
    let routes = room_routes(room, message, member)
        .into_iter()
        .filter(|(_, path, _)| !path.ends_with("/join") && !path.ends_with("/leave"));
    for (method, path, body) in routes {
        let reply = app.call(method.clone(), &path, Some(token), body).await;
        let generic = path
            .replace(&room.to_string(), "{room}")
            .replace(&message.to_string(), "{message}")
            .replace(&member.to_string(), "{user}");
        let code = match reply.status.is_success() {
            true => String::new(),
            false => reply.error_code().to_string(),
        };
        seen.push((format!("{method} {generic}"), reply.status.as_u16(), code));
    }
    seen
}

#[tokio::test]
async fn every_rest_route_and_frame_refuses_outsiders_non_owners_and_other_senders() {
    let app = spawn_app_with(crate::helpers::allow_bulk_sends).await;
    let owner = app.register("owner").await;
    let member = app.register("member").await;
    let outsider = app.register("outsider").await;
    let public = app.create_room(&owner, "lobby", "public").await;
    app.post(
        &format!("/v1/rooms/{public}/join"),
        &member.token,
        json!({}),
    )
    .await
    .assert_status(204);
    let message: Uuid = app.send(&owner, public, "the owner's").await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // An outsider may read a public room but not write to it or manage it: every
    // write, the owner's routes included, is refused as not_member.
    let expected_outsider = [
        ("GET /v1/rooms/{room}", 200, ""),
        ("PATCH /v1/rooms/{room}", 403, "not_member"),
        ("DELETE /v1/rooms/{room}", 403, "not_member"),
        ("POST /v1/rooms/{room}/read", 403, "not_member"),
        ("GET /v1/rooms/{room}/members", 200, ""),
        ("PUT /v1/rooms/{room}/members/{user}", 403, "not_member"),
        ("DELETE /v1/rooms/{room}/members/{user}", 403, "not_member"),
        ("POST /v1/rooms/{room}/messages", 403, "not_member"),
        ("GET /v1/rooms/{room}/messages", 200, ""),
        ("GET /v1/rooms/{room}/messages/search?q=secret", 200, ""),
        (
            "PATCH /v1/rooms/{room}/messages/{message}",
            403,
            "not_member",
        ),
        (
            "DELETE /v1/rooms/{room}/messages/{message}",
            403,
            "not_member",
        ),
        (
            "PUT /v1/rooms/{room}/messages/{message}/reactions/👍",
            403,
            "not_member",
        ),
        (
            "DELETE /v1/rooms/{room}/messages/{message}/reactions/👍",
            403,
            "not_member",
        ),
    ];
    let seen = statuses(&app, &outsider.token, public, message, member.id).await;
    for ((route, status, code), (want_route, want_status, want_code)) in
        seen.iter().zip(expected_outsider)
    {
        assert_eq!(route, want_route);
        assert_eq!(
            (*status, code.as_str()),
            (want_status, want_code),
            "outsider: {route}"
        );
    }

    // A member who is not the owner may write, but not manage, nor touch others' messages.
    let expected_member = [
        ("PATCH /v1/rooms/{room}", 403, "not_owner"),
        ("DELETE /v1/rooms/{room}", 403, "not_owner"),
        ("PUT /v1/rooms/{room}/members/{user}", 403, "not_owner"),
        ("DELETE /v1/rooms/{room}/members/{user}", 403, "not_owner"),
        (
            "PATCH /v1/rooms/{room}/messages/{message}",
            403,
            "not_sender",
        ),
        (
            "DELETE /v1/rooms/{room}/messages/{message}",
            403,
            "not_sender",
        ),
    ];
    let seen = statuses(&app, &member.token, public, message, outsider.id).await;
    for (want_route, want_status, want_code) in expected_member {
        let (_, status, code) = seen.iter().find(|(route, ..)| route == want_route).unwrap();
        assert_eq!(
            (*status, code.as_str()),
            (want_status, want_code),
            "member: {want_route}"
        );
    }
    let kept = app
        .get(&format!("/v1/rooms/{public}/messages"), &owner.token)
        .await;
    assert_eq!(
        kept.body["messages"][0]["text"], "the owner's",
        "nothing changed"
    );

    // Every room frame over WebSocket: an outsider is refused in a public room with
    // not_member and in a private room exactly as in a missing one.
    let private = app.create_room(&owner, "inner circle", "private").await;
    app.call(
        Method::PUT,
        &format!("/v1/rooms/{private}/members/{}", member.id),
        Some(&owner.token),
        None,
    )
    .await
    .assert_status(204);
    let mut ws = WsClient::connect(app.addr, "/v1/ws", &outsider.token).await;
    let frames = |room: Uuid| {
        [
            json!({"type": "send", "room_id": room, "text": "let me in", "client_msg_id": "k1"}),
            json!({"type": "typing", "room_id": room, "value": true}),
            json!({"type": "read_upto", "room_id": room, "seq": 1}),
        ]
    };
    for frame in frames(public) {
        ws.send(frame.clone()).await;
        let error = ws.recv_type("error").await;
        assert_eq!(error["code"], "not_member", "{frame}");
    }
    for room in [private, Uuid::new_v4()] {
        ws.send(json!({"type": "subscribe", "room_id": room})).await;
        assert_eq!(ws.recv_type("error").await["code"], "room_not_found");
        for frame in frames(room) {
            ws.send(frame.clone()).await;
            assert_eq!(
                ws.recv_type("error").await["code"],
                "room_not_found",
                "{frame}"
            );
        }
    }

    // A removed member is an outsider from then on, live subscription included.
    let mut removed = WsClient::connect(app.addr, "/v1/ws", &member.token).await;
    removed.subscribe(private, None).await;
    app.call(
        Method::DELETE,
        &format!("/v1/rooms/{private}/members/{}", member.id),
        Some(&owner.token),
        None,
    )
    .await
    .assert_status(204);
    assert_eq!(
        removed.recv_type("unsubscribed").await["room_id"],
        private.to_string()
    );
    for frame in frames(private) {
        removed.send(frame.clone()).await;
        assert_eq!(
            removed.recv_type("error").await["code"],
            "room_not_found",
            "{frame}"
        );
    }
    let after = statuses(&app, &member.token, private, message, outsider.id).await;
    assert!(
        after
            .iter()
            .all(|(_, status, code)| *status == 404 && code == "room_not_found"),
        "{after:?}"
    );
    let history = app
        .get(&format!("/v1/rooms/{private}/messages"), &owner.token)
        .await;
    assert_eq!(
        history.body["messages"],
        json!([]),
        "no outsider's frame was stored"
    );
}

#[tokio::test]
async fn cross_origin_access_is_off_by_default_and_limited_to_the_allow_list() {
    let closed = spawn_app_with(|_| {}).await;
    let open = spawn_app_with(|s| s.cors_origins = vec!["https://chat.example.com".into()]).await;
    let preflight = |app: &TestApp, origin: &str| {
        app.http()
            .request(Method::OPTIONS, app.url("/v1/users/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allow_origin = |response: &reqwest::Response| {
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };

    for app in [&closed, &open] {
        let answer = preflight(app, "https://evil.example").await.unwrap();
        assert_eq!(allow_origin(&answer), None);
        let simple = app
            .http()
            .get(app.url("/healthz"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(allow_origin(&simple), None);
    }
    let answer = preflight(&closed, "https://chat.example.com")
        .await
        .unwrap();
    assert_eq!(
        allow_origin(&answer),
        None,
        "no origin is allowed by default"
    );

    let answer = preflight(&open, "https://chat.example.com").await.unwrap();
    assert_eq!(answer.status(), 204);
    assert_eq!(
        allow_origin(&answer).as_deref(),
        Some("https://chat.example.com")
    );
    let methods = answer.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("PATCH"), "{methods}");
    let user = open.register("alice").await;
    let me = open
        .http()
        .get(open.url("/v1/users/me"))
        .bearer_auth(&user.token)
        .header("origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(
        allow_origin(&me).as_deref(),
        Some("https://chat.example.com")
    );
    assert!(
        me.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
}

/// Sends `head` a few bytes every 200 ms; returns how long until the server hung up, and
/// whatever it answered.
async fn trickle(app: &TestApp, head: &str) -> (Duration, String) {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let started = std::time::Instant::now();
    for chunk in head.as_bytes().chunks(4).cycle().take(200) {
        if stream.write_all(chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test]
async fn requests_trickled_slowly_are_cut_off_on_http_and_on_the_websocket_handshake() {
    let app = spawn_app_with(|s| s.limits.request_read_timeout = Duration::from_secs(1)).await;
    let user = app.register("alice").await;
    let heads = [
        "GET /healthz HTTP/1.1\r\nHost: natter\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .to_string(),
        format!(
            "GET /v1/ws?token={} HTTP/1.1\r\nHost: natter\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Padding: aaaaaaaa",
            user.token
        ),
    ];
    for head in heads {
        let (held, answer) = trickle(&app, &head).await;
        assert!(held < Duration::from_secs(10), "held for {held:?}");
        assert!(
            !answer.contains(" 200 ") && !answer.contains(" 101 "),
            "{answer}"
        );
    }
    // A client that sends each request whole may idle between them for longer.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: natter\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

#[tokio::test]
async fn logs_are_json_lines_with_node_and_trace_ids_and_never_hold_secrets() {
    let database_url = create_database().await;
    let base = settings(&database_url);
    let mut node = NodeProcess::start_with(
        &database_url,
        &base.nats_url,
        &base.nats_prefix,
        |command| {
            command
                .env("LOG_FORMAT", "json")
                .env("RUST_LOG", "trace")
                .env("NODE_ID", "log-check")
                .stderr(Stdio::piped());
        },
    )
    .await;
    let mut stderr = node.child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let app = TestApp::at(node.addr, &database_url);

    let user = app.register("alice").await;
    let login = app
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
    login.assert_status(200);
    app.call(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"username": "alice", "password": "wrong horse battery"})),
    )
    .await
    .assert_status(401);
    let room = app.create_room(&user, "lobby", "public").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let posted = app
        .http()
        .post(app.url(&format!("/v1/rooms/{room}/messages")))
        .bearer_auth(&user.token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"text": "rest secret text"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let mut ws = WsClient::connect(node.addr, "/v1/ws", &user.token).await;
    ws.subscribe(room, Some(0)).await;
    ws.send(json!({"type": "send", "room_id": room, "text": "socket secret text"}))
        .await;
    ws.recv_type("send_ack").await;
    app.call(
        Method::GET,
        "/v1/users/me",
        Some("not-a-token-but-secret"),
        None,
    )
    .await
    .assert_status(401);
    drop(ws);

    node.signal("-TERM");
    tokio::time::timeout(Duration::from_secs(15), node.child.wait())
        .await
        .expect("the node exits")
        .unwrap();
    let logs = logs.await.unwrap();
    let lines: Vec<Value> = logs
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.len() > 20, "trace level logs plenty: {}", lines.len());
    assert!(
        lines
            .iter()
            .all(|line| line["node_id"] == "log-check" && line["level"].is_string())
    );
    assert!(
        lines.iter().any(|line| line["trace_id"] == trace_id),
        "the traced request's lines carry its trace id"
    );
    for secret in [
        "correct horse",
        "wrong horse battery",
        "rest secret text",
        "socket secret text",
        "not-a-token-but-secret",
        user.token.as_str(),
        // Any part of a token: its signature.
        user.token.rsplit('.').next().unwrap(),
    ] {
        let leak = logs.lines().find(|line| line.contains(secret));
        assert!(leak.is_none(), "{secret:?} logged in {leak:?}");
    }
}

#[tokio::test]
async fn with_metrics_addr_the_api_port_has_no_metrics_and_the_metrics_port_nothing_else() {
    let app = spawn_app_with(|s| s.metrics_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let public = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(public.status.as_u16(), 404);
    let metrics_addr = app.metrics_addr.expect("a metrics listener");
    let scrape = app
        .http()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(
        scrape
            .text()
            .await
            .unwrap()
            .contains("natter_websockets_open")
    );
    let other = app
        .http()
        .get(format!("http://{metrics_addr}/v1/users/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}
