//! The TypeScript SDK (`clients/typescript/`, SPEC §13) against a real cluster: three
//! nodes on one database (two of them processes, one to SIGKILL and one to drain with
//! SIGTERM), a node whose tokens live 3 s and one that closes a socket 64 events behind
//! (4008). `bash clients/typescript/build` bundles this commit's SDK into `dist/`, then
//! `clients/typescript/test/` runs under `node --test` with the nodes' URLs in
//! `NATTER_SDK_*`, with Debian's `ws` package as the WebSocket constructor.

use std::time::Duration;

use tokio::process::Command;

use crate::helpers::{NodeProcess, run_within, settings, spawn_app_with, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_resumes_exactly_once_across_a_killed_and_a_drained_node() {
    let root = env!("CARGO_MANIFEST_DIR");
    let sdk = format!("{root}/clients/typescript");
    let build = run_within(
        Command::new("bash").arg(format!("{sdk}/build")),
        Duration::from_secs(120),
        "the TypeScript SDK's build",
    )
    .await;
    assert!(
        build.status.success(),
        "bash clients/typescript/build failed (apt-get install node-typescript esbuild \
         node-ws, or run through `bash tests/run`):\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );

    let survivor = spawn_app_with(|s| {
        // The slow-reader case sends 1,200 messages at once.
        s.limits.sends_per_second = 10_000.0;
        s.limits.send_burst = 10_000;
        s.webhook_allow_private = true;
    })
    .await;
    let cluster = settings(&survivor.database_url);
    let start = || {
        NodeProcess::start_with(
            &survivor.database_url,
            &cluster.nats_url,
            &cluster.nats_prefix,
            |command| {
                command.env("WEBHOOK_ALLOW_PRIVATE", "true");
            },
        )
    };
    let (killed, drained) = tokio::join!(start(), start());
    let mut short_lived = settings(&survivor.database_url);
    short_lived.auth.token_ttl = Duration::from_secs(3);
    let short_lived = spawn_node(short_lived).await;
    let mut slow = settings(&survivor.database_url);
    slow.limits.outbound_queue = 64;
    let slow = spawn_node(slow).await;

    let nodes = [killed.addr, drained.addr, survivor.addr]
        .map(|addr| format!("http://{addr}"))
        .join(",");
    // The suites, named one by one: `node --test test/` would also run the helpers.
    let mut suites: Vec<_> = std::fs::read_dir(format!("{sdk}/test"))
        .expect("clients/typescript/test")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    suites.sort();
    assert!(suites.len() >= 2, "{suites:?}");
    let run = run_within(
        Command::new("node")
            .args(["--test", "--test-concurrency=1", "--test-reporter=tap"])
            .args(&suites)
            .current_dir(&sdk)
            .env("NODE_PATH", "/usr/share/nodejs")
            .env("NATTER_SDK_NODES", nodes)
            .env(
                "NATTER_SDK_KILL_PID",
                killed.child.id().expect("runs").to_string(),
            )
            .env(
                "NATTER_SDK_DRAIN_PID",
                drained.child.id().expect("runs").to_string(),
            )
            .env(
                "NATTER_SDK_SHORT_TOKEN_URL",
                format!("http://{}", short_lived.addr),
            )
            .env("NATTER_SDK_SLOW_URL", format!("http://{}", slow.addr)),
        Duration::from_secs(90),
        "the TypeScript SDK's tests",
    )
    .await;
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the TypeScript SDK's tests failed:\n{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{out}");
    // Every test ran and passed: none failed, skipped, todo or cancelled.
    for zero in ["# fail 0", "# skipped 0", "# todo 0", "# cancelled 0"] {
        assert!(out.contains(zero), "no `{zero}` in:\n{out}");
    }
    let passed = out
        .lines()
        .find_map(|line| line.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 8, "only {passed} tests passed:\n{out}");
    drop((killed, drained));
}
