//! The Python SDK (`clients/python/`, SPEC §13) against a real cluster: three nodes on
//! one database (two of them processes, one to SIGKILL and one to drain with SIGTERM),
//! a node whose tokens live 3 s and one that closes a socket 64 events behind (4008).
//! `clients/python/tests/` runs under pytest with the nodes' URLs in `NATTER_SDK_*`; the
//! SDK is imported from the source tree, so the test checks this commit's SDK whatever
//! `tests/run` installed.

use std::{path::PathBuf, time::Duration};

use tokio::process::Command;

use crate::helpers::{NodeProcess, run_within, settings, spawn_app_with, spawn_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_resumes_exactly_once_across_a_killed_and_a_drained_node() {
    let python = PathBuf::from(
        std::env::var("NATTER_TEST_PYTHON")
            .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`"),
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
    let root = env!("CARGO_MANIFEST_DIR");
    let run = run_within(
        Command::new(python)
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA"])
            .arg(format!("{root}/clients/python/tests"))
            .current_dir(format!("{root}/clients/python"))
            .env("PYTHONPATH", format!("{root}/clients/python/src"))
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
        "the Python SDK's tests",
    )
    .await;
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the Python SDK's tests failed:\n{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{out}");
    // Every test ran and passed: none skipped, none deselected.
    assert!(
        out.contains(" passed") && !out.contains("skipped") && !out.contains("deselected"),
        "{out}"
    );
    drop((killed, drained));
}
