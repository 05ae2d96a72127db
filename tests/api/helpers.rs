//! Test harness: every test gets its own database on the harness's Postgres (started by
//! `tests/run`) and in-process nodes listening on port 0, talked to over real HTTP.

use std::{
    net::SocketAddr,
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use natter::{app::Application, config::Settings};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::{oneshot, watch},
};
use uuid::Uuid;

/// This test process's token secret: random, so no value a test uses is a published one
/// (start-up refuses those, SPEC §10).
pub static JWT_SECRET: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()));

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through `bash tests/run`, which starts Postgres and NATS")
    })
}

/// A fresh, empty database on the harness's Postgres; returns its URL.
pub async fn create_database() -> String {
    let admin_url = env("NATTER_TEST_DATABASE_URL");
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("the harness's Postgres is reachable");
    tokio::spawn(connection);
    let name = format!("natter_test_{}", Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("creating a test database");
    let (base, _) = admin_url.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{name}")
}

/// Settings for a test node on `database_url`, with SPEC defaults: the declared ones,
/// read from this small environment (not the process's), so a new setting needs nothing
/// here. Nodes on the same database share NATS subjects and presence (the prefix is the
/// database's name); different tests never see each other's traffic.
pub fn settings(database_url: &str) -> Settings {
    let database = database_url
        .rsplit('/')
        .next()
        .and_then(|db| db.split('?').next())
        .unwrap()
        .to_string();
    let node_id = format!("test-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let environment = [
        ("DATABASE_URL", database_url.to_string()),
        ("DATABASE_POOL_SIZE", "8".into()),
        ("NATS_URL", env("NATTER_TEST_NATS_URL")),
        ("NATS_PREFIX", database),
        ("PRESENCE_REPLICAS", "1".into()),
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("NODE_ID", node_id),
        ("JWT_SECRET", JWT_SECRET.clone()),
        ("JWT_TTL_SECS", "3600".into()),
        ("LOG_FORMAT", "text".into()),
        // Every test's clients come from 127.0.0.1: the per-address budgets (SPEC §18)
        // are raised out of the way, and the tests about them set their own.
        ("REGISTRATIONS_PER_MIN_PER_ADDRESS", "1000000".into()),
        ("LOGINS_PER_MIN_PER_ADDRESS", "1000000".into()),
        ("UNAUTHENTICATED_PER_SEC_PER_ADDRESS", "1000000".into()),
    ];
    Settings::from_lookup(|name| {
        environment
            .iter()
            .find(|(variable, _)| *variable == name)
            .map(|(_, value)| value.clone())
    })
    .expect("the test settings are valid")
}

/// Raises the send budget to 1,000 a second (burst 1,000), for tests that send in bulk
/// and are not about the rate limit.
pub fn allow_bulk_sends(settings: &mut Settings) {
    settings.limits.sends_per_second = 1000.0;
    settings.limits.send_burst = 1000;
}

/// A running node.
pub struct TestApp {
    pub addr: SocketAddr,
    /// `/metrics`'s own listener, when the node has `metrics_addr`.
    pub metrics_addr: Option<SocketAddr>,
    pub database_url: String,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A node on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A node on a fresh database, with settings adjusted by `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    let database_url = create_database().await;
    let mut settings = settings(&database_url);
    customize(&mut settings);
    spawn_node(settings).await
}

/// A node with exactly these settings (e.g. a second node on another node's database).
pub async fn spawn_node(settings: Settings) -> TestApp {
    let database_url = settings.database_url.clone();
    let app = Application::build(settings).await.expect("node starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        database_url,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        shutdown: Some(tx),
    }
}

/// A registered user and their token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    pub token: String,
}

/// A response: status, headers and JSON body (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The SPEC §5 error code, asserting the envelope's shape.
    pub fn error_code(&self) -> &str {
        let error = &self.body["error"];
        assert!(
            error["message"].is_string(),
            "not an error envelope: {} {}",
            self.status,
            self.body
        );
        error["code"].as_str().expect("error.code is a string")
    }

    #[track_caller]
    pub fn assert_status(&self, expected: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            expected,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// SPEC §5's answer to a failure worth retrying: `503 unavailable` with
    /// `Retry-After`.
    #[track_caller]
    pub fn assert_unavailable(&self) {
        self.assert_status(503);
        assert_eq!(self.error_code(), "unavailable");
        assert!(
            self.headers.contains_key("retry-after"),
            "{:?}",
            self.headers
        );
    }
}

impl TestApp {
    /// A client for a node this test did not start in-process (a [`NodeProcess`]).
    pub fn at(addr: SocketAddr, database_url: &str) -> Self {
        TestApp {
            addr,
            metrics_addr: None,
            database_url: database_url.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            shutdown: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The node's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The value of a label on this node's series, e.g. its `node` id.
    pub async fn metric_label(&self, label: &str) -> String {
        let text = self.metrics().await;
        let prefix = format!("{label}=\"");
        let start = text.find(&prefix).expect("a labelled series") + prefix.len();
        text[start..].split('"').next().unwrap().to_string()
    }

    /// The value of one series on `/metrics`, named by its first line prefix, e.g.
    /// `natter_websockets_open{` or `natter_fanout_latency_seconds_bucket{node="n",le="+Inf"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        let line = text
            .lines()
            .find(|line| line.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the node");
        reply(response).await
    }

    /// A direct connection to this app's database, for state the API cannot arrange.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("the test database is reachable");
        tokio::spawn(connection);
        client
    }

    /// Takes `room`'s row lock, as another node's batch would, in a transaction on a
    /// connection of its own; the lock holds until the transaction ends (`ROLLBACK`, or
    /// the client dropped).
    pub async fn hold_room_lock(&self, room: Uuid) -> tokio_postgres::Client {
        let holder = self.db().await;
        holder.batch_execute("BEGIN").await.unwrap();
        holder
            .execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", &[&room])
            .await
            .unwrap();
        holder
    }

    /// Stores messages 1..=`count` of `room` (texts `message 1`, …) straight into
    /// Postgres, never published, and moves the room's `last_seq` to match.
    pub async fn store_history(
        &self,
        room: Uuid,
        sender: Uuid,
        count: i64,
    ) -> tokio_postgres::Client {
        let db = self.db().await;
        db.execute(
            "INSERT INTO messages (id, room_id, seq, sender_id, text)
             SELECT gen_random_uuid(), $1, s, $2, 'message ' || s FROM generate_series(1, $3::bigint) s",
            &[&room, &sender, &count],
        )
        .await
        .unwrap();
        db.execute(
            "UPDATE rooms SET last_seq = $2 WHERE id = $1",
            &[&room, &count],
        )
        .await
        .unwrap();
        db
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn register(&self, username: &str) -> TestUser {
        let reply = self
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"username": username, "password": "correct horse"})),
            )
            .await;
        reply.assert_status(201);
        TestUser {
            id: reply.body["user"]["id"].as_str().unwrap().parse().unwrap(),
            token: reply.body["token"].as_str().unwrap().to_string(),
        }
    }

    /// Creates a room owned by `owner`; returns its id.
    pub async fn create_room(&self, owner: &TestUser, name: &str, kind: &str) -> Uuid {
        let reply = self
            .post(
                "/v1/rooms",
                &owner.token,
                json!({"name": name, "kind": kind}),
            )
            .await;
        reply.assert_status(201);
        reply.body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Posts a message with `token`, whatever the answer.
    pub async fn post_message(&self, token: &str, room: Uuid, text: impl Into<String>) -> Reply {
        self.post(
            &format!("/v1/rooms/{room}/messages"),
            token,
            json!({"text": text.into()}),
        )
        .await
    }

    /// Sends a message and returns it.
    pub async fn send(&self, user: &TestUser, room: Uuid, text: impl Into<String>) -> Value {
        let reply = self.post_message(&user.token, room, text).await;
        reply.assert_status(201);
        reply.body
    }
}

pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking Natter's frames. Every frame it receives is checked
/// against `/asyncapi.json` as it arrives (SPEC §13), in every test that uses one.
pub struct WsClient {
    socket: Socket,
    /// The path the socket opened (without its query), recorded with each frame.
    path: String,
}

/// Every frame this test process's sockets received, with the path each socket opened
/// (`/v1/ws`, `/v1/ws/rooms/{id}`, …), in order: `tests/api/asyncapi.rs` hands a
/// scenario's frames to Python's `jsonschema` to check that it agrees with
/// [`frame_schema`](crate::frame_schema).
pub static RECEIVED_FRAMES: std::sync::Mutex<Vec<(String, Value)>> =
    std::sync::Mutex::new(Vec::new());

/// Checks a frame against `/asyncapi.json` as it arrives (panicking, in whatever test
/// received it, if it does not match) and records it.
fn receive_frame(path: &str, frame: &Value) {
    crate::frame_schema::assert_frame_matches_document(path, frame);
    RECEIVED_FRAMES
        .lock()
        .unwrap()
        .push((path.to_owned(), frame.clone()));
}

/// How long a test waits for an expected frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);

impl WsClient {
    /// Connects to `path` (e.g. `/v1/ws`) on `addr` with `token` as `?token=`.
    pub async fn connect(addr: SocketAddr, path: &str, token: &str) -> Self {
        let separator = if path.contains('?') { '&' } else { '?' };
        Self::open(format!("ws://{addr}{path}{separator}token={token}")).await
    }

    /// Connects to `url`, which carries its own credentials.
    pub async fn open(url: String) -> Self {
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path).to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self { socket, path }
    }

    pub async fn send(&mut self, frame: Value) {
        use futures_util::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .expect("frame sent");
    }

    pub async fn send_raw(&mut self, text: String) {
        use futures_util::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("frame sent");
    }

    /// The next JSON frame; panics on close or after [`FRAME_WAIT`].
    pub async fn recv(&mut self) -> Value {
        match self.next(FRAME_WAIT).await {
            Some(Ok(frame)) => frame,
            Some(Err(code)) => panic!("socket closed with {code} while a frame was expected"),
            None => panic!("no frame within {FRAME_WAIT:?}"),
        }
    }

    /// The next frame of type `kind`, skipping others (presence, typing, …).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// The next frame within `wait`: `Ok(json)`, `Err(close code)`, or `None` if nothing
    /// came.
    pub async fn next(&mut self, wait: Duration) -> Option<Result<Value, u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).expect("frames are JSON");
                    receive_frame(&self.path, &frame);
                    return Some(Ok(frame));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Err(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Err(1006)),
            }
        }
    }

    /// Waits for the socket to close; returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.next(FRAME_WAIT).await {
                Some(Ok(_)) => continue,
                Some(Err(code)) => return code,
                None => panic!("socket still open after {FRAME_WAIT:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, room: Uuid, since_seq: Option<i64>) -> Value {
        let mut frame = json!({"type": "subscribe", "room_id": room});
        if let Some(since) = since_seq {
            frame["since_seq"] = json!(since);
        }
        self.send(frame).await;
        self.recv_type("subscribed").await
    }

    /// Collects the `seq`s of the next `n` message events, skipping other frames.
    pub async fn message_seqs(&mut self, n: usize) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(n);
        while seqs.len() < n {
            let frame = self.recv_type("message").await;
            seqs.push(frame["message"]["seq"].as_i64().unwrap());
        }
        seqs
    }
}

/// Runs `command` to its end and returns what it printed; it is killed if the test gives
/// up first, and the test fails if it takes longer than `limit`.
pub async fn run_within(command: &mut Command, limit: Duration, what: &str) -> Output {
    let output = command.kill_on_drop(true).output();
    tokio::time::timeout(limit, output)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|err| panic!("{what} could not start: {err}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `natter serve` process, so a test can kill it or read its output.
pub struct NodeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl NodeProcess {
    /// A node on the given database and NATS; its stdout is discarded, its stderr (the
    /// logs, `warn` and up) shows in the test's output.
    pub async fn start(database_url: &str, nats_url: &str, prefix: &str) -> Self {
        Self::start_with(database_url, nats_url, prefix, |_| {}).await
    }

    /// As [`Self::start`], with the command adjusted by `customize` (more environment,
    /// a piped stderr) before it runs.
    pub async fn start_with(
        database_url: &str,
        nats_url: &str,
        prefix: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_natter"));
        command
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("NATS_URL", nats_url)
            .env("NATS_PREFIX", prefix)
            .env("JWT_SECRET", &*JWT_SECRET)
            .env("LISTEN_ADDR", addr.to_string())
            .env("NODE_ID", format!("node-{}", addr.port()))
            .env("SEND_RATE_PER_SEC", "1000")
            .env("SEND_BURST", "1000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        customize(&mut command);
        let child = command.spawn().expect("natter starts");
        let node = Self { child, addr };
        node.wait_ready().await;
        node
    }

    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = http
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node on {} did not become ready", self.addr);
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A TCP proxy in front of Postgres or NATS that the test can cut and restore, so "the
/// server is unreachable" is real network behaviour without stopping the shared server.
/// Cutting ends every connection through it; new ones are refused until restored.
pub async fn cuttable_proxy(upstream: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut_tx, cut_rx) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            if *cut_rx.borrow() {
                continue;
            }
            let mut cut = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (addr, cut_tx)
}

/// Starts a nats-server of a test's own (JetStream in `dir`) on `port`, with `config` if
/// given: for tests that restart NATS or need one set up differently from the harness's.
pub fn own_nats(port: u16, dir: &std::path::Path, config: Option<&std::path::Path>) -> Child {
    let server =
        std::env::var("NATTER_TEST_NATS_SERVER").expect("run the tests through `bash tests/run`");
    let mut command = Command::new(server);
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server starts")
}

/// Waits (bounded) until something listens on `port` of this host.
pub async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} never opened");
}
