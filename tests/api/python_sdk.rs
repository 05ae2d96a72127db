//! The Python SDK (`clients/python/`, SPEC §13) against a real cluster
//! ([`SdkCluster`]): `clients/python/tests/` runs under pytest with the nodes' URLs in
//! `NATTER_SDK_*`; the SDK is imported from the source tree, so the test checks this
//! commit's SDK whatever `tests/run` installed. At the end no node may have seen a
//! token in a WebSocket URL.

use std::{path::PathBuf, time::Duration};

use tokio::process::Command;

use crate::{helpers::run_within, sdk_cluster::SdkCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_resumes_exactly_once_across_a_killed_and_a_drained_node() {
    let python = PathBuf::from(
        std::env::var("NATTER_TEST_PYTHON")
            .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`"),
    );
    let cluster = SdkCluster::start().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let run = run_within(
        cluster.describe(
            Command::new(python)
                .args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA"])
                .arg(format!("{root}/clients/python/tests"))
                .current_dir(format!("{root}/clients/python"))
                .env("PYTHONPATH", format!("{root}/clients/python/src")),
        ),
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
    cluster
        .assert_no_token_in_any_url("the Python SDK's tests")
        .await;
}
