//! The SDKs' static types (SPEC §13): `mypy --strict` over the Python SDK
//! (`clients/python/src/natter`) and the echo bot that uses it (`examples/echo_bot.py`),
//! and Debian's `tsc` in strict mode over the TypeScript example (`examples/typescript/`)
//! against the declarations `bash clients/typescript/build` makes. Each also checks a
//! deliberately wrong consumer and must report every mistake in it, so a checker that
//! finds nothing (a missing module read as `any`, a config that checks no file) fails
//! the test. These tests need no Postgres or NATS.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use regex::Regex;
use tokio::process::Command;
use uuid::Uuid;

use crate::{helpers::run_within, sdk_cluster::build_typescript_sdk};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory of this test's own under `target/tmp/`; a test removes it once it
/// passed, so a failure leaves its files to look at.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn printed(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The lines of `file` that a checker's report flags, from lines such as
/// `wrong.py:4: error: …` (mypy) or `wrong.ts(4,17): error TS2345: …` (tsc).
fn flagged_lines(report: &str, file: &str) -> BTreeSet<u32> {
    let pattern = Regex::new(&format!(
        r"(?m)^(?:.*/)?{}[:(](\d+)[:,].*error",
        regex::escape(file)
    ))
    .unwrap();
    pattern
        .captures_iter(report)
        .map(|c| c[1].parse().unwrap())
        .collect()
}

/// The 1-based numbers of the lines of `source` that end with `marker`.
fn marked_lines(source: &str, marker: &str) -> BTreeSet<u32> {
    (1..)
        .zip(source.lines())
        .filter(|(_, line)| line.trim_end().ends_with(marker))
        .map(|(number, _)| number)
        .collect()
}

async fn mypy(python: &Path, files: &[PathBuf], cache: &Path) -> std::process::Output {
    let root = root();
    run_within(
        Command::new(python)
            .args(["-m", "mypy", "--strict", "--no-color-output", "--cache-dir"])
            .arg(cache)
            .args(files)
            .env("MYPYPATH", root.join("clients/python/src"))
            .current_dir(&root),
        Duration::from_secs(180),
        "mypy",
    )
    .await
}

/// A consumer of the Python SDK with one mistake on each line marked `# wrong`.
const WRONG_PYTHON: &str = r#"
from natter import MessageEvent, Natter


async def main() -> None:
    async with Natter("http://localhost:8080", token=42) as natter:  # wrong
        room = natter.room("r")
        await room.send(42)  # wrong
        await room.subscribe(since_seq="7")  # wrong
        stored = await room.send("hi")
        seq: str = stored["seq"]  # wrong
        print(seq, stored["sequence"])  # wrong
        async for event in room.events():
            if isinstance(event, MessageEvent):
                event.message.text  # wrong
        natter.on("status", print)  # wrong
"#;

#[tokio::test]
async fn the_python_sdk_and_the_echo_bot_pass_mypy_strict_and_a_wrong_consumer_does_not() {
    let python = PathBuf::from(
        std::env::var("NATTER_TEST_PYTHON")
            .expect("NATTER_TEST_PYTHON is not set: run the tests through `bash tests/run`"),
    );
    let root = root();
    let dir = scratch("mypy");
    // One cache for every run (only this test uses it): 11 MB, and later runs are faster.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mypy-cache");

    let checked = mypy(
        &python,
        &[
            root.join("clients/python/src/natter"),
            root.join("examples/echo_bot.py"),
        ],
        &cache,
    )
    .await;
    let report = printed(&checked);
    assert!(
        checked.status.success(),
        "mypy --strict found errors (install mypy with `bash tests/run`):\n{report}"
    );
    // Every module of the SDK and the bot were read: 5 modules and the bot today.
    let files: u32 = Regex::new(r"Success: no issues found in (\d+) source files")
        .unwrap()
        .captures(&report)
        .unwrap_or_else(|| panic!("no success line in:\n{report}"))[1]
        .parse()
        .unwrap();
    assert!(files >= 6, "mypy checked only {files} files:\n{report}");
    println!("{report}");

    let wrong = dir.join("wrong.py");
    std::fs::write(&wrong, WRONG_PYTHON).unwrap();
    let refused = mypy(&python, &[wrong], &cache).await;
    let report = printed(&refused);
    assert!(
        !refused.status.success(),
        "mypy passed a wrong consumer:\n{report}"
    );
    assert_eq!(
        flagged_lines(&report, "wrong.py"),
        marked_lines(WRONG_PYTHON, "# wrong"),
        "mypy flags exactly the wrong lines:\n{report}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A directory of the caller's own with `examples/typescript/` and a build of the SDK
/// in `clients/typescript/dist/`, side by side as in the repository: other tests
/// rebuild the repository's `dist/` meanwhile.
pub async fn typescript_example_beside_the_sdk(name: &str) -> PathBuf {
    let root = root();
    let dir = scratch(name);
    let example = dir.join("examples/typescript");
    std::fs::create_dir_all(&example).unwrap();
    for file in ["chat.ts", "node.d.ts", "tsconfig.json"] {
        std::fs::copy(
            root.join("examples/typescript").join(file),
            example.join(file),
        )
        .unwrap();
    }
    build_typescript_sdk(&dir.join("clients/typescript/dist")).await;
    dir
}

/// A consumer of the TypeScript SDK with one mistake on each line marked `// wrong`.
const WRONG_TYPESCRIPT: &str = r#"import { Natter } from "@natter/client";
const natter = new Natter({ baseUrl: "http://localhost:8080", token: 42 }); // wrong
const room = natter.room("r");
await room.send(42); // wrong
await room.subscribe({ sinceSeq: "7" }); // wrong
room.on("mesage", () => undefined); // wrong
room.on("message", ({ message }) => message.sequence); // wrong
natter.on("state", (state) => state === "opened"); // wrong
const seq: string = (await room.send("hi")).seq; // wrong
console.log(seq);
"#;

#[tokio::test]
async fn the_typescript_example_passes_strict_tsc_and_a_wrong_consumer_does_not() {
    let dir = typescript_example_beside_the_sdk("tsc").await;
    let example = dir.join("examples/typescript");

    let tsc = |project: &Path| {
        let mut command = Command::new("tsc");
        command
            .args(["--pretty", "false", "--listFiles", "-p"])
            .arg(project);
        command
    };
    let checked = run_within(
        &mut tsc(&example),
        Duration::from_secs(120),
        "tsc on the example",
    )
    .await;
    let report = printed(&checked);
    assert!(
        checked.status.success(),
        "tsc found errors in examples/typescript:\n{report}"
    );
    // It read the example and the SDK's declarations, not an `any` in their place.
    for file in [
        "examples/typescript/chat.ts",
        "clients/typescript/dist/index.d.ts",
        "clients/typescript/dist/types/client.d.ts",
    ] {
        assert!(
            report.lines().any(|line| line.ends_with(file)),
            "tsc did not read {file}:\n{report}"
        );
    }

    let wrong = dir.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(wrong.join("wrong.ts"), WRONG_TYPESCRIPT).unwrap();
    // The example's own settings (strict, the path to the SDK), for another file.
    std::fs::write(
        wrong.join("tsconfig.json"),
        serde_json::json!({
            "extends": "../examples/typescript/tsconfig.json",
            "files": ["wrong.ts", "../examples/typescript/node.d.ts"],
        })
        .to_string(),
    )
    .unwrap();
    let refused = run_within(
        &mut tsc(&wrong),
        Duration::from_secs(120),
        "tsc on a wrong consumer",
    )
    .await;
    let report = printed(&refused);
    assert!(
        !refused.status.success(),
        "tsc passed a wrong consumer:\n{report}"
    );
    assert_eq!(
        flagged_lines(&report, "wrong.ts"),
        marked_lines(WRONG_TYPESCRIPT, "// wrong"),
        "tsc flags exactly the wrong lines:\n{report}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
