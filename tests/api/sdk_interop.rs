//! SPEC §13's last promise: with a node killed by SIGKILL mid-conversation, two SDK
//! clients, one TypeScript (`clients/typescript/`, built by its `build`) and one Python
//! (`clients/python/`), sending to one room through a front that fails over to the
//! surviving node, lose, duplicate and reorder nothing, and store each send once. Their
//! tokens live 2 s, so in the same conversation each socket is also closed with 4001 and
//! the client signs in again. The test prints how long after the kill every client had
//! caught up, and checks that no node saw a token in a WebSocket URL.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpStream},
    process::Command,
};

use crate::{
    helpers::{NodeProcess, run_within, settings, spawn_app, spawn_node},
    sdk_cluster::{TokenUrlWatch, build_typescript_sdk},
    sdk_types::scratch,
};

/// Each side sends this many messages, so each must deliver 2 × N seqs.
const N: usize = 40;
/// The password `TestApp::register` gives its users.
const PASSWORD: &str = "correct horse";
/// The lifetime of the clients' tokens: shorter than the conversation (N sends 75 ms
/// apart), so each client's socket is closed with 4001 while it sends.
const TOKEN_TTL: Duration = Duration::from_secs(2);

const TYPESCRIPT: &str = r#"
import { createRequire } from "node:module";
const { Natter } = await import(process.env.NATTER_DIST);
const WebSocket = createRequire(process.cwd() + "/")("ws");
const n = Number(process.env.NATTER_N);
const issuer = new Natter({ baseUrl: process.env.NATTER_ISSUER });
const natter = new Natter({
  baseUrl: process.env.NATTER_BASE,
  token: async () => (await issuer.rest.login(process.env.NATTER_USER, process.env.NATTER_PASSWORD)).token,
  WebSocket,
  backoffBaseMs: 50,
  backoffMaxMs: 500,
});
const closes = [];
natter.on("state", (state) => {
  if (state === "reconnecting") closes.push([natter.lastCloseCode, Date.now()]);
});
const room = natter.room(process.env.NATTER_ROOM);
const seqs = [];
const at = [];
room.on("message", ({ message }) => {
  seqs.push(message.seq);
  at.push(Date.now());
});
await room.subscribe({ sinceSeq: 0 });
const sent = [];
for (let i = 0; i < n; i++) {
  sent.push((await room.send(`ts ${i}`)).id);
  await new Promise((r) => setTimeout(r, 75));
}
const deadline = Date.now() + 30_000;
const done = () => seqs.length >= 2 * n && closes.some(([code]) => code === 4001);
while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
await new Promise((r) => setTimeout(r, 300));
natter.close();
console.log(JSON.stringify({ seqs, at, sent, closes, connections: natter.connections }));
"#;

const PYTHON: &str = r#"
import asyncio, json, os, time
from natter import MessageEvent, Natter

async def main():
    n = int(os.environ["NATTER_N"])
    issuer = Natter(os.environ["NATTER_ISSUER"])

    async def token():
        session = await issuer.rest.login(os.environ["NATTER_USER"], os.environ["NATTER_PASSWORD"])
        return session["token"]

    async with issuer, Natter(os.environ["NATTER_BASE"], token=token,
                              backoff_base=0.05, backoff_max=0.5) as natter:
        closes = []

        def on_state(state):
            if state == "reconnecting":
                closes.append([natter.last_close_code, time.time() * 1000])

        natter.on("state", on_state)
        room = natter.room(os.environ["NATTER_ROOM"])
        seqs = []
        at = []

        async def read():
            async for event in room.events():
                if isinstance(event, MessageEvent):
                    seqs.append(event.message["seq"])
                    at.append(time.time() * 1000)

        reader = asyncio.ensure_future(read())
        await room.subscribe(since_seq=0)
        sent = []
        for i in range(n):
            sent.append((await room.send(f"py {i}"))["id"])
            await asyncio.sleep(0.075)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (len(seqs) < 2 * n or 4001 not in [c for c, _ in closes]) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        reader.cancel()
        print(json.dumps({"seqs": seqs, "at": at, "sent": sent, "closes": closes,
                          "connections": natter.connections}))

asyncio.run(main())
"#;

/// A front that sends each connection to the first backend that accepts it: the first
/// while it lives, then the next, as a load balancer's health checks would.
async fn failover_front(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    if let Ok(mut server) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn outcome(side: &str, output: &std::process::Output) -> Value {
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the {side} client failed:\n{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| panic!("{side}: not JSON: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_and_a_python_client_lose_nothing_when_a_node_is_killed() {
    let python = PathBuf::from(
        std::env::var("NATTER_TEST_PYTHON")
            .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`"),
    );
    let root = env!("CARGO_MANIFEST_DIR");
    // A build of its own: other tests rebuild clients/typescript/dist meanwhile.
    let workdir = scratch("interop");
    let dist = workdir.join("dist");
    build_typescript_sdk(&dist).await;

    let survivor = spawn_app().await;
    let cluster = settings(&survivor.database_url);
    let killed = NodeProcess::start(
        &survivor.database_url,
        &cluster.nats_url,
        &cluster.nats_prefix,
    )
    .await;
    let front = failover_front(vec![killed.addr, survivor.addr]).await;
    // The clients sign in here, for tokens that expire mid-conversation.
    let mut issuer = settings(&survivor.database_url);
    issuer.auth.token_ttl = TOKEN_TTL;
    let issuer = spawn_node(issuer).await;
    let watch = TokenUrlWatch::start(vec![killed.addr, survivor.addr, issuer.addr]);

    let ts = survivor.register("interop_ts").await;
    let py = survivor.register("interop_py").await;
    let room = survivor.create_room(&ts, "interop", "public").await;
    survivor
        .post(&format!("/v1/rooms/{room}/join"), &py.token, Value::Null)
        .await
        .assert_status(204);

    let client = |command: &mut Command, username: &str| {
        command
            .env("NATTER_BASE", format!("http://{front}"))
            .env("NATTER_ISSUER", format!("http://{}", issuer.addr))
            .env("NATTER_USER", username)
            .env("NATTER_PASSWORD", PASSWORD)
            .env("NATTER_ROOM", room.to_string())
            .env("NATTER_N", N.to_string());
    };
    let mut node = Command::new("node");
    node.args(["--input-type=module", "-e", TYPESCRIPT])
        .current_dir(format!("{root}/clients/typescript"))
        .env("NODE_PATH", "/usr/share/nodejs")
        .env(
            "NATTER_DIST",
            format!("file://{}", dist.join("index.js").display()),
        );
    client(&mut node, "interop_ts");
    let mut pyc = Command::new(python);
    pyc.args(["-c", PYTHON])
        .env("PYTHONPATH", format!("{root}/clients/python/src"));
    client(&mut pyc, "interop_py");

    // Mid-conversation (a quarter of the messages stored), the node under both sockets
    // dies. Answers when (ms since the epoch, the clients' clock) and at which `seq`.
    let kill = async {
        for _ in 0..500 {
            let reply = survivor.get(&format!("/v1/rooms/{room}"), &ts.token).await;
            if reply.body["last_seq"].as_i64().unwrap_or(0) >= (N / 2) as i64 {
                let at = epoch_ms();
                killed.signal("-KILL");
                let reply = survivor.get(&format!("/v1/rooms/{room}"), &ts.token).await;
                return (at, reply.body["last_seq"].as_u64().unwrap() as usize);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the clients never sent");
    };
    let (ts_run, py_run, (killed_at, seq_at_kill)) = tokio::join!(
        run_within(&mut node, Duration::from_secs(60), "the TypeScript client"),
        run_within(&mut pyc, Duration::from_secs(60), "the Python client"),
        kill,
    );
    let (ts_out, py_out) = (outcome("TypeScript", &ts_run), outcome("Python", &py_run));

    let all: Vec<Value> = (1..=2 * N as i64).map(Value::from).collect();
    for (side, out) in [("TypeScript", &ts_out), ("Python", &py_out)] {
        assert_eq!(
            out["seqs"].as_array().unwrap(),
            &all,
            "{side}: each seq once, in order"
        );
        // The token expired while messages still came, so the resume after it counts.
        let expired_at = token_expired_at(out).unwrap_or_else(|| panic!("{side}: no 4001: {out}"));
        assert!(
            expired_at < out["at"][2 * N - 1].as_f64().unwrap(),
            "{side}: the 4001 came after the last message: {out}"
        );
        assert!(
            out["connections"].as_u64().unwrap() >= 3,
            "{side} reconnected after the kill and the 4001: {out}"
        );
        assert_eq!(out["sent"].as_array().unwrap().len(), N, "{side}");
    }
    let history = survivor
        .get(&format!("/v1/rooms/{room}/messages?limit=200"), &ts.token)
        .await;
    let messages = history.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2 * N, "each send stored once");
    let mut stored: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let mut sent: Vec<&str> = [&ts_out, &py_out]
        .iter()
        .flat_map(|out| out["sent"].as_array().unwrap())
        .map(|id| id.as_str().unwrap())
        .collect();
    stored.sort_unstable();
    sent.sort_unstable();
    assert_eq!(
        stored, sent,
        "every send resolved with the message stored once"
    );

    // Caught up: every client has every seq stored before the kill and the first one
    // stored after it (delivered in order, so nothing before it is missing).
    let first_after = seq_at_kill + 1;
    assert!(first_after <= 2 * N, "the kill came after the last send");
    let arrival = |out: &Value, index: usize| out["at"][index].as_f64().unwrap();
    let caught_up = |out: &Value| arrival(out, first_after - 1) - killed_at;
    let finished = |out: &Value| arrival(out, 2 * N - 1) - killed_at;
    let (ts_caught_up, py_caught_up) = (caught_up(&ts_out), caught_up(&py_out));
    println!(
        "sdk_interop: node killed at seq {seq_at_kill}; every client had seq 1..={first_after} \
         (the first stored after the kill) {:.0} ms later (TypeScript {ts_caught_up:.0} ms, \
         Python {py_caught_up:.0} ms); all {} seqs at {:.0} ms (sends paced 75 ms apart); \
         4001 at {:.0} ms (TypeScript) and {:.0} ms (Python)",
        ts_caught_up.max(py_caught_up),
        2 * N,
        finished(&ts_out).max(finished(&py_out)),
        token_expired_at(&ts_out).unwrap() - killed_at,
        token_expired_at(&py_out).unwrap() - killed_at,
    );
    assert!(
        ts_caught_up > 0.0 && py_caught_up > 0.0,
        "delivered after the kill"
    );
    watch.assert_none("sdk_interop").await;
    std::fs::remove_dir_all(workdir).unwrap();
}

/// When (ms since the epoch) a client's socket was first closed with 4001, from its
/// `closes`: `[code, at]` pairs.
fn token_expired_at(out: &Value) -> Option<f64> {
    out["closes"]
        .as_array()?
        .iter()
        .find(|close| close[0] == 4001)
        .and_then(|close| close[1].as_f64())
}

/// Now, in milliseconds since the Unix epoch, as `Date.now()` and `time.time()` count.
fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}
