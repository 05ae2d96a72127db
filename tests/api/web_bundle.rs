//! The web client at `/` is built on the TypeScript SDK (SPEC §13): `src/api/web/natter.js`
//! is the SDK's browser bundle, committed so that `cargo build` and the container image
//! need no JavaScript tool. These tests keep that copy honest: it must be exactly what
//! `bash clients/typescript/build` makes of this commit's `clients/typescript/src`, and
//! `app.js` must leave the socket and HTTP to it.

use std::path::PathBuf;

use crate::sdk_cluster::build_typescript_sdk;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|err| panic!("{path}: {err}"))
}

#[tokio::test]
async fn the_committed_browser_bundle_is_what_the_sdks_build_makes_of_its_sources() {
    // A directory of its own: the SDK's test builds into clients/typescript/dist at the
    // same time.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("web-bundle-{}", std::process::id()));
    build_typescript_sdk(&out).await;
    let fresh = std::fs::read(out.join("natter.js")).expect("the build wrote natter.js");
    std::fs::remove_dir_all(&out).expect("the build's directory is removable");
    let committed = read("src/api/web/natter.js").into_bytes();
    let esbuild = std::process::Command::new("esbuild")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert!(
        fresh == committed,
        "src/api/web/natter.js is not the SDK's current browser bundle ({} bytes committed, \
         {} built with esbuild {esbuild}): run `bash clients/typescript/build --web` and \
         commit src/api/web/natter.js",
        committed.len(),
        fresh.len()
    );
    // The bundle is the SDK, not an empty file that happens to match an empty build.
    let bundle = String::from_utf8(fresh).expect("UTF-8");
    for export in ["Natter", "RoomHandle", "ApiError"] {
        assert!(
            bundle.contains(&format!(" as {export},"))
                || bundle.contains(&format!(" as {export}}}")),
            "natter.js exports no {export}"
        );
    }
}

#[test]
fn the_web_client_leaves_its_socket_and_http_calls_to_the_sdk() {
    let page = read("src/api/web/index.html");
    assert!(
        page.contains(r#"<script src="/app.js" type="module"></script>"#),
        "index.html loads app.js as an ES module"
    );
    let app = read("src/api/web/app.js");
    assert!(
        app.contains(r#"from "./natter.js";"#),
        "app.js imports the SDK's bundle"
    );
    // Code only: comments may say what the SDK does.
    let code: Vec<&str> = app
        .lines()
        .map(str::trim_start)
        .filter(|line| !(line.starts_with("//") || line.starts_with('*') || line.starts_with("/*")))
        .collect();
    for (fragment, why) in [
        ("WebSocket", "the SDK owns the socket"),
        ("fetch(", "REST goes through natter.rest"),
        ("XMLHttpRequest", "REST goes through natter.rest"),
        ("/v1/", "REST goes through natter.rest"),
        ("since_seq", "the SDK resumes rooms"),
        ("\"send_ack\"", "the SDK reads the frames"),
        ("type: \"send\"", "the SDK writes the frames"),
        ("type: \"subscribe\"", "the SDK writes the frames"),
        ("type: \"read_upto\"", "the SDK writes the frames"),
        ("type: \"ping\"", "the SDK probes a silent socket"),
    ] {
        let found: Vec<_> = code.iter().filter(|line| line.contains(fragment)).collect();
        assert!(
            found.is_empty(),
            "app.js has `{fragment}` ({why}): {found:?}"
        );
    }
}
