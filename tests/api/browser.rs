//! The web client at `/`, in headless Chromium (Debian's, installed by `tests/run`):
//! two browser sessions on two node processes chat, and one node is killed under them
//! (`tests/api/browser.py` drives the browsers; screenshots go to
//! `target/tmp/browser/`).

use std::{path::PathBuf, time::Duration};

use tokio::process::Command;

use crate::helpers::{NodeProcess, create_database, run_within, settings};

#[tokio::test]
async fn two_browsers_on_two_nodes_chat_and_one_page_survives_its_node_being_killed() {
    let python =
        PathBuf::from(std::env::var("NATTER_TEST_SELENIUM_PYTHON").expect(
            "NATTER_TEST_SELENIUM_PYTHON is not set: run the tests through `bash tests/run`",
        ));
    let database_url = create_database().await;
    let settings = settings(&database_url);
    let (a, b) = tokio::join!(
        NodeProcess::start(&database_url, &settings.nats_url, &settings.nats_prefix),
        NodeProcess::start(&database_url, &settings.nats_url, &settings.nats_prefix),
    );
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let flow = run_within(
        Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/browser.py"))
            .arg(a.addr.port().to_string())
            .arg(b.addr.port().to_string())
            .arg(a.child.id().expect("node A runs").to_string())
            .arg(&artifacts),
        Duration::from_secs(240),
        "the browser flow",
    )
    .await;
    assert!(
        flow.status.success(),
        "the browser flow failed (screenshots in {}):\n{}{}",
        artifacts.display(),
        String::from_utf8_lossy(&flow.stdout),
        String::from_utf8_lossy(&flow.stderr)
    );
    drop((a, b));
}
