//! The SDKs' examples run against a real node: the Python echo bot
//! (`examples/echo_bot.py`) answers a person and nobody else, and the TypeScript terminal
//! chat (`examples/typescript/chat.ts`, bundled by esbuild) prints the room and sends
//! what is typed into it.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

use crate::{
    helpers::{TestApp, run_within, spawn_app},
    sdk_types::{printed, typescript_example_beside_the_sdk},
};

/// The next line a process prints, waiting at most 30 s.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what}: no line within 30 s"))
        .expect("readable")
        .unwrap_or_else(|| panic!("{what}: ended without printing a line"))
}

/// The room's messages once there are at least `n`, waiting at most 30 s.
async fn at_least(app: &TestApp, token: &str, room: uuid::Uuid, n: usize) -> Vec<Value> {
    for _ in 0..300 {
        let page = app
            .get(&format!("/v1/rooms/{room}/messages?limit=200"), token)
            .await;
        let messages = page.body["messages"].as_array().unwrap().clone();
        if messages.len() >= n {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} messages in the room after 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_bot_answers_each_message_of_a_person_once_and_ignores_bots() {
    let python = PathBuf::from(
        std::env::var("NATTER_TEST_PYTHON")
            .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`"),
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let app = spawn_app().await;
    let alice = app.register("echo_alice").await;
    let room = app.create_room(&alice, "echo", "public").await;
    let made = |username: &str| app.post("/v1/bots", &alice.token, json!({ "username": username }));
    let bot = made("echo_bot").await;
    bot.assert_status(201);
    let other_bot = made("quiet_bot").await;
    other_bot.assert_status(201);
    let bot_id = bot.body["user"]["id"].as_str().unwrap().to_string();
    let other_key = other_bot.body["token"].as_str().unwrap().to_string();
    app.post(&format!("/v1/rooms/{room}/join"), &other_key, Value::Null)
        .await
        .assert_status(204);

    let mut echo = Command::new(python)
        .arg(format!("{root}/examples/echo_bot.py"))
        .args(["--url", &format!("http://{}", app.addr)])
        .args(["--key", bot.body["token"].as_str().unwrap()])
        .args(["--room", &room.to_string()])
        .env("PYTHONPATH", format!("{root}/clients/python/src"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs the echo bot");
    let mut out = BufReader::new(echo.stdout.take().unwrap()).lines();
    let ready = next_line(&mut out, "the echo bot").await;
    assert!(ready.starts_with("ready: echo_bot in room"), "{ready}");

    let hello = app.send(&alice, room, "hello bot").await;
    app.post_message(&other_key, room, "beep from a bot")
        .await
        .assert_status(201);
    let again = app.send(&alice, room, "still there?").await;

    let messages = at_least(&app, &alice.token, room, 5).await;
    // Long enough for an answer to a bot (or to itself) to show up too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages_later = at_least(&app, &alice.token, room, 5).await;
    assert_eq!(messages_later.len(), 5, "{messages_later:#?}");
    let answers: Vec<(&str, &str)> = messages
        .iter()
        .filter(|m| m["sender_id"] == bot_id.as_str())
        .map(|m| {
            (
                m["text"].as_str().unwrap(),
                m["reply_to"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("echo: hello bot", hello["id"].as_str().unwrap()),
            ("echo: still there?", again["id"].as_str().unwrap()),
        ],
        "{messages:#?}"
    );
    for seq in [
        hello["seq"].as_i64().unwrap(),
        again["seq"].as_i64().unwrap(),
    ] {
        let line = next_line(&mut out, "the echo bot").await;
        assert!(
            line.starts_with(&format!("answered #{seq} with #")),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_chat_example_prints_the_room_and_sends_each_typed_line() {
    let dir = typescript_example_beside_the_sdk("chat").await;
    let bundle = dir.join("chat.mjs");
    let built = run_within(
        Command::new("esbuild")
            .arg(dir.join("examples/typescript/chat.ts"))
            .args([
                "--bundle",
                "--platform=node",
                "--format=esm",
                "--log-level=warning",
            ])
            .arg(format!("--outfile={}", bundle.display())),
        Duration::from_secs(60),
        "esbuild on the example",
    )
    .await;
    assert!(built.status.success(), "{}", printed(&built));

    let app = spawn_app().await;
    let bob = app.register("chat_bob").await;
    let room = app.create_room(&bob, "lobby", "public").await;
    app.send(&bob, room, "before you came").await;

    let mut chat = Command::new("node")
        .arg(&bundle)
        .arg(format!("http://{}", app.addr))
        .args(["chat_alice", "correct horse battery", "lobby"])
        .env("NODE_PATH", "/usr/share/nodejs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs the example");
    let mut input = chat.stdin.take().unwrap();
    let mut out = BufReader::new(chat.stdout.take().unwrap()).lines();
    assert_eq!(
        next_line(&mut out, "the chat").await,
        "#1 chat_bob: before you came"
    );

    input.write_all(b"hi from a terminal\n").await.unwrap();
    assert_eq!(
        next_line(&mut out, "the chat").await,
        "#2 chat_alice: hi from a terminal"
    );
    app.send(&bob, room, "welcome").await;
    assert_eq!(
        next_line(&mut out, "the chat").await,
        "#3 chat_bob: welcome"
    );

    // End of input: the client closes and the program ends.
    drop(input);
    let status = tokio::time::timeout(Duration::from_secs(15), chat.wait())
        .await
        .expect("the chat ends within 15 s of its input")
        .unwrap();
    assert!(status.success(), "{status}");
    let stored = at_least(&app, &bob.token, room, 3).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[1]["text"], "hi from a terminal");
    std::fs::remove_dir_all(dir).unwrap();
}
