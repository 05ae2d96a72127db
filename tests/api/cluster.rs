//! Cluster behaviour with nodes as separate `natter` processes, so one can be killed.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    NodeProcess, TestApp, TestUser, WsClient, allow_bulk_sends, create_database, free_port,
    own_nats, settings, spawn_node, wait_for_port,
};

/// Three node processes on one fresh database, sharing a NATS prefix, plus an in-process
/// node on the same database for REST calls from the test.
struct Cluster {
    nodes: Vec<NodeProcess>,
    api: TestApp,
}

async fn cluster(nats_url: Option<&str>) -> Cluster {
    let database_url = create_database().await;
    let mut api_settings = settings(&database_url);
    if let Some(url) = nats_url {
        api_settings.nats_url = url.to_string();
    }
    allow_bulk_sends(&mut api_settings);
    let prefix = api_settings.nats_prefix.clone();
    let nats = api_settings.nats_url.clone();
    let api = spawn_node(api_settings).await;
    let nodes = join_all((0..3).map(|_| NodeProcess::start(&database_url, &nats, &prefix))).await;
    Cluster { nodes, api }
}

async fn members(cluster: &Cluster, n: usize) -> (Uuid, Vec<TestUser>) {
    let mut users = Vec::new();
    for i in 0..n {
        users.push(cluster.api.register(&format!("user{i}")).await);
    }
    let room = cluster
        .api
        .create_room(&users[0], "cluster", "public")
        .await;
    for user in &users[1..] {
        cluster
            .api
            .post(&format!("/v1/rooms/{room}/join"), &user.token, json!({}))
            .await
            .assert_status(204);
    }
    (room, users)
}

#[tokio::test]
async fn three_hundred_concurrent_messages_from_three_nodes_reach_every_subscriber_once_in_order() {
    let cluster = cluster(None).await;
    let (room, users) = members(&cluster, 6).await;
    let mut sockets = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let node = &cluster.nodes[i % 3];
        let mut ws = WsClient::connect(node.addr, "/v1/ws", &user.token).await;
        ws.subscribe(room, None).await;
        sockets.push(ws);
    }
    // Each of the six clients sends 50 messages over its own socket, all at once.
    let mut readers = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            for j in 0..50 {
                ws.send(
                    json!({"type": "send", "room_id": room, "text": format!("{i}:{j}"),
                               "client_msg_id": format!("{i}-{j}")}),
                )
                .await;
            }
            ws.message_seqs(300).await
        }));
    }
    for reader in readers {
        let seqs = reader.await.unwrap();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    }
    // And a REST send on one node reaches WebSocket subscribers on the other two.
    let mut on_two = WsClient::connect(cluster.nodes[1].addr, "/v1/ws", &users[1].token).await;
    let mut on_three = WsClient::connect(cluster.nodes[2].addr, "/v1/ws", &users[2].token).await;
    on_two.subscribe(room, None).await;
    on_three.subscribe(room, None).await;
    let reply = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/rooms/{room}/messages",
            cluster.nodes[0].addr
        ))
        .bearer_auth(&users[0].token)
        .json(&json!({"text": "over REST on node 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    assert_eq!(on_two.message_seqs(1).await, vec![301]);
    assert_eq!(on_three.message_seqs(1).await, vec![301]);
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_exactly_the_messages_it_missed() {
    let cluster = cluster(None).await;
    let (room, users) = members(&cluster, 2).await;
    let reader = &users[1];
    let mut ws = WsClient::connect(cluster.nodes[0].addr, "/v1/ws", &reader.token).await;
    ws.subscribe(room, None).await;
    for i in 0..10 {
        cluster
            .api
            .send(&users[0], room, format!("before {i}"))
            .await;
    }
    assert_eq!(ws.message_seqs(10).await, (1..=10).collect::<Vec<_>>());
    drop(ws);

    for i in 0..50 {
        cluster
            .api
            .send(&users[0], room, format!("missed {i}"))
            .await;
    }
    let mut resumed = WsClient::connect(cluster.nodes[1].addr, "/v1/ws", &reader.token).await;
    resumed.subscribe(room, Some(10)).await;
    assert_eq!(
        resumed.message_seqs(50).await,
        (11..=60).collect::<Vec<_>>()
    );
    cluster.api.send(&users[0], room, "live").await;
    assert_eq!(resumed.message_seqs(1).await, vec![61]);
    assert!(resumed.next(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn subscribers_have_every_message_once_after_nats_restarts_mid_stream() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("natter-nats-{}", Uuid::new_v4().simple()));
    let mut nats = own_nats(port, &dir, None);
    wait_for_port(port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let cluster = cluster(Some(&url)).await;
    let (room, users) = members(&cluster, 3).await;
    let mut sockets = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut ws = WsClient::connect(node.addr, "/v1/ws", &users[i].token).await;
        ws.subscribe(room, None).await;
        sockets.push(ws);
    }
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { ws.message_seqs(120).await }))
        .collect();

    let http = reqwest::Client::new();
    for i in 0..120 {
        if i == 40 {
            nats.kill().await.unwrap();
        }
        if i == 80 {
            nats = own_nats(port, &dir, None);
            wait_for_port(port).await;
        }
        // Sends go to the three nodes in turn; Postgres is up throughout.
        let node = cluster.nodes[i % 3].addr;
        let reply = http
            .post(format!("http://{node}/v1/rooms/{room}/messages"))
            .bearer_auth(&users[i % 3].token)
            .json(&json!({"text": format!("m{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in readers {
        let seqs = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("every message arrives after NATS returns")
            .unwrap();
        assert_eq!(seqs, (1..=120).collect::<Vec<_>>());
    }
    drop(nats);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_killed_nodes_clients_resume_elsewhere_and_its_users_go_offline_everywhere() {
    let mut cluster = cluster(None).await;
    let (room, users) = members(&cluster, 3).await;
    let (sender, mover, bystander) = (&users[0], &users[1], &users[2]);
    let victim = cluster.nodes.remove(2);
    let mut moving = WsClient::connect(victim.addr, "/v1/ws", &mover.token).await;
    moving.subscribe(room, None).await;
    let mut staying = WsClient::connect(victim.addr, "/v1/ws", &bystander.token).await;
    staying.subscribe(room, None).await;
    for i in 0..10 {
        cluster.api.send(sender, room, format!("before {i}")).await;
    }
    assert_eq!(moving.message_seqs(10).await, (1..=10).collect::<Vec<_>>());
    let online = cluster.api.get("/v1/presence", &sender.token).await;
    assert!(online.body.to_string().contains(&bystander.id.to_string()));

    victim.signal("-KILL");
    let killed_at = Instant::now();
    assert_eq!(moving.closed().await, 1006);
    let sends = {
        let api = cluster.api.url("");
        let sender = sender.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..20 {
                http.post(format!("{api}/v1/rooms/{room}/messages"))
                    .bearer_auth(&sender.token)
                    .json(&json!({"text": format!("after {i}")}))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    let mut resumed = WsClient::connect(cluster.nodes[0].addr, "/v1/ws", &mover.token).await;
    resumed.subscribe(room, Some(10)).await;
    sends.await.unwrap();
    assert_eq!(
        resumed.message_seqs(20).await,
        (11..=30).collect::<Vec<_>>()
    );

    // The bystander never reconnected: every surviving node sees them go offline.
    for node in [&cluster.nodes[0], &cluster.nodes[1]] {
        let http = reqwest::Client::new();
        loop {
            let users: serde_json::Value = http
                .get(format!("http://{}/v1/presence", node.addr))
                .bearer_auth(&sender.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !users.to_string().contains(&bystander.id.to_string()) {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(15),
                "still online after 15 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!("offline everywhere {:?} after SIGKILL", killed_at.elapsed());
}

/// Whether `user` shows in `GET /v1/presence`, and in `room`'s presence, on the node at
/// `addr`, as `viewer` sees them.
async fn presence_on(
    addr: std::net::SocketAddr,
    viewer: &TestUser,
    room: Uuid,
    user: Uuid,
) -> (bool, bool) {
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    for path in [
        "/v1/presence".to_string(),
        format!("/v1/rooms/{room}/presence"),
    ] {
        let reply = http
            .get(format!("http://{addr}{path}"))
            .bearer_auth(&viewer.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path} on {addr}");
        seen.push(reply.text().await.unwrap().contains(&user.to_string()));
    }
    (seen[0], seen[1])
}

/// A killed node's user and who watches them: two node processes and an in-process node,
/// all with a presence TTL of `ttl_secs`; `gone` is live in `room` on `victim`, `owner`
/// on `survivor`.
struct KillScene {
    database_url: String,
    nats: String,
    prefix: String,
    ttl_secs: u64,
    api: TestApp,
    survivor: NodeProcess,
    victim: NodeProcess,
    owner: TestUser,
    gone: TestUser,
    room: Uuid,
    staying: WsClient,
    leaving: WsClient,
}

impl KillScene {
    /// Everything started, and `gone` present on the survivor and the in-process node.
    async fn new(ttl_secs: u64) -> Self {
        let database_url = create_database().await;
        let mut api_settings = settings(&database_url);
        api_settings.presence_ttl = Duration::from_secs(ttl_secs);
        let (prefix, nats) = (
            api_settings.nats_prefix.clone(),
            api_settings.nats_url.clone(),
        );
        let api = spawn_node(api_settings).await;
        let start = |node_id| node(&database_url, &nats, &prefix, ttl_secs, node_id);
        let (survivor, victim) = (start(None).await, start(None).await);
        let (owner, gone) = (api.register("owner").await, api.register("gone").await);
        let room = api.create_room(&owner, "kill", "public").await;
        api.post(&format!("/v1/rooms/{room}/join"), &gone.token, json!({}))
            .await
            .assert_status(204);
        let mut staying = WsClient::connect(survivor.addr, "/v1/ws", &owner.token).await;
        staying.subscribe(room, None).await;
        let mut leaving = WsClient::connect(victim.addr, "/v1/ws", &gone.token).await;
        leaving.subscribe(room, None).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        for addr in [survivor.addr, api.addr] {
            while presence_on(addr, &owner, room, gone.id).await != (true, true) {
                let now = Instant::now();
                assert!(now < deadline, "the victim's user never showed on {addr}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Self {
            database_url,
            nats,
            prefix,
            ttl_secs,
            api,
            survivor,
            victim,
            owner,
            gone,
            room,
            staying,
            leaving,
        }
    }

    /// Another node process on the same cluster, under `node_id` if given.
    async fn node(&self, node_id: Option<String>) -> NodeProcess {
        node(
            &self.database_url,
            &self.nats,
            &self.prefix,
            self.ttl_secs,
            node_id,
        )
        .await
    }

    /// `kill -9` the victim, once its process is gone and its socket closed.
    async fn kill_victim(&mut self) {
        self.victim.signal("-KILL");
        self.victim.child.wait().await.unwrap();
        assert_eq!(self.leaving.closed().await, 1006);
    }

    /// Whether `gone` still shows, online or in the room, on the node at `addr`.
    async fn gone_shows_on(&self, addr: std::net::SocketAddr) -> bool {
        presence_on(addr, &self.owner, self.room, self.gone.id).await != (false, false)
    }

    /// Waits until `gone` shows nowhere on the node at `addr`, failing past `deadline`.
    async fn wait_gone_from(&self, addr: std::net::SocketAddr, deadline: Instant, why: &str) {
        while self.gone_shows_on(addr).await {
            assert!(Instant::now() < deadline, "{why}: still present on {addr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The survivor's socket heard `gone` leave, and nobody told it its own user left;
    /// and every node in `addrs` still shows that user.
    async fn owner_unharmed(&mut self, addrs: &[std::net::SocketAddr]) {
        loop {
            let event = self.staying.recv_type("presence").await;
            if event["user_id"] == json!(self.gone.id) && event["status"] == "left" {
                break;
            }
            let owner_left = event["user_id"] == json!(self.owner.id) && event["status"] == "left";
            assert!(!owner_left, "{event}");
        }
        for &addr in addrs {
            let seen = presence_on(addr, &self.owner, self.room, self.owner.id).await;
            assert_eq!(seen, (true, true), "{addr}");
        }
    }
}

async fn node(
    database_url: &str,
    nats: &str,
    prefix: &str,
    ttl_secs: u64,
    node_id: Option<String>,
) -> NodeProcess {
    NodeProcess::start_with(database_url, nats, prefix, |command| {
        command.env("PRESENCE_TTL_SECS", ttl_secs.to_string());
        if let Some(node_id) = node_id {
            command.env("NODE_ID", node_id);
        }
    })
    .await
}

#[tokio::test]
async fn a_node_restarted_under_its_node_id_clears_its_killed_runs_presence_everywhere_at_once() {
    // A 30 s TTL: waiting the dead run out would take 20 s or more after the kill on
    // the survivors and 30 s on the restarted node, far past this test's bound.
    let mut scene = KillScene::new(30).await;
    scene.kill_victim().await;
    let node_id = format!("node-{}", scene.victim.addr.port());
    let restarted = scene.node(Some(node_id)).await;
    let ready = Instant::now();
    let everywhere = [restarted.addr, scene.survivor.addr, scene.api.addr];
    for addr in everywhere {
        let why = "5 s after the restart was ready";
        scene
            .wait_gone_from(addr, ready + Duration::from_secs(5), why)
            .await;
    }
    eprintln!("gone everywhere {:?} after the restart", ready.elapsed());
    scene.owner_unharmed(&everywhere).await;
}

#[tokio::test]
async fn a_node_started_while_a_killed_node_awaits_burial_drops_it_when_the_others_do() {
    // A 20 s TTL: the survivors bury the killed node 13 to 21 s after the kill. A node
    // started 6 s after the kill finds the dead node's heartbeat still in the bucket; on
    // its own clock it would hold its user until 27 s or later.
    let mut scene = KillScene::new(20).await;
    scene.kill_victim().await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let newcomer = scene.node(None).await;
    // It read the dead node's leases (else this test would prove nothing).
    let seen_by = Instant::now() + Duration::from_secs(5);
    while !scene.gone_shows_on(newcomer.addr).await {
        assert!(
            Instant::now() < seen_by,
            "the newcomer never showed the dead lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = "a TTL, a heartbeat interval and 2 s after the kill";
    let by = killed + Duration::from_secs(20 + 7 + 2);
    scene.wait_gone_from(scene.survivor.addr, by, why).await;
    let buried = Instant::now();
    scene
        .wait_gone_from(
            newcomer.addr,
            buried + Duration::from_secs(3),
            "3 s after the survivor",
        )
        .await;
    eprintln!(
        "buried {:?} after the kill; the newcomer followed in {:?}",
        buried - killed,
        buried.elapsed()
    );
    let everywhere = [newcomer.addr, scene.survivor.addr, scene.api.addr];
    scene.owner_unharmed(&everywhere).await;
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_clients_lose_nothing_after_resuming() {
    let mut cluster = cluster(None).await;
    let (room, users) = members(&cluster, 2).await;
    let mut draining = cluster.nodes.remove(1);
    let mut ws = WsClient::connect(draining.addr, "/v1/ws", &users[1].token).await;
    ws.subscribe(room, None).await;
    for i in 0..5 {
        cluster
            .api
            .send(&users[0], room, format!("before {i}"))
            .await;
    }
    assert_eq!(ws.message_seqs(5).await, (1..=5).collect::<Vec<_>>());

    draining.signal("-TERM");
    assert_eq!(ws.closed().await, 1012);
    let status = tokio::time::timeout(Duration::from_secs(15), draining.child.wait())
        .await
        .expect("a draining node exits in bounded time")
        .unwrap();
    assert!(status.success(), "{status:?}");

    for i in 0..5 {
        cluster
            .api
            .send(&users[0], room, format!("after {i}"))
            .await;
    }
    let mut resumed = WsClient::connect(cluster.nodes[0].addr, "/v1/ws", &users[1].token).await;
    resumed.subscribe(room, Some(5)).await;
    assert_eq!(resumed.message_seqs(5).await, (6..=10).collect::<Vec<_>>());
}
