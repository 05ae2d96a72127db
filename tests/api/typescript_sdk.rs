//! The TypeScript SDK (`clients/typescript/`, SPEC §13) against a real cluster
//! ([`SdkCluster`]): `bash clients/typescript/build` bundles this commit's SDK into
//! `dist/`, then `clients/typescript/test/` runs under `node --test` with the nodes'
//! URLs in `NATTER_SDK_*`, with Debian's `ws` package as the WebSocket constructor. At
//! the end no node may have seen a token in a WebSocket URL.

use std::time::Duration;

use tokio::process::Command;

use crate::{
    helpers::run_within,
    sdk_cluster::{SdkCluster, build_typescript_sdk},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_resumes_exactly_once_across_a_killed_and_a_drained_node() {
    let root = env!("CARGO_MANIFEST_DIR");
    let sdk = format!("{root}/clients/typescript");
    build_typescript_sdk(std::path::Path::new(&format!("{sdk}/dist"))).await;

    let cluster = SdkCluster::start().await;
    // The suites, named one by one: `node --test test/` would also run the helpers.
    let mut suites: Vec<_> = std::fs::read_dir(format!("{sdk}/test"))
        .expect("clients/typescript/test")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    suites.sort();
    assert!(suites.len() >= 2, "{suites:?}");
    let run = run_within(
        cluster.describe(
            Command::new("node")
                .args(["--test", "--test-concurrency=1", "--test-reporter=tap"])
                .args(&suites)
                .current_dir(&sdk)
                .env("NODE_PATH", "/usr/share/nodejs"),
        ),
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
    cluster
        .assert_no_token_in_any_url("the TypeScript SDK's tests")
        .await;
}
