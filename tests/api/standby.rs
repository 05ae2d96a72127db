//! `DATABASE_READ_URL`: history pages, search and the chat list read from a streaming
//! standby once it has caught up, and never miss a message that was acknowledged.
//!
//! These tests run their own primary and standby (initdb, `pg_basebackup -R`) from the
//! harness's Postgres binaries, since pausing replay must not touch other tests.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::{allow_bulk_sends, free_port, run_within, settings, spawn_node};

/// A throwaway Postgres server in its own directory, stopped when dropped.
struct OwnPostgres {
    data: PathBuf,
    port: u16,
}

/// A Postgres program from the harness's installation, run as the `postgres` user when
/// the tests run as root (Postgres refuses root).
fn pg_command(program: &str) -> Command {
    let bin = PathBuf::from(std::env::var("NATTER_TEST_PG_BIN").expect("run through tests/run"));
    let path = bin.join(program);
    let mut command = match running_as_root() {
        true => {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        }
        false => Command::new(path),
    };
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

/// `/proc/self` belongs to the process's effective user.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|own| own.uid() == 0)
}

impl OwnPostgres {
    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("natter-{name}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // The postgres user must be able to reach its data directory.
        std::process::Command::new("chmod")
            .arg("777")
            .arg(&dir)
            .status()
            .unwrap();
        dir
    }

    async fn start(data: PathBuf) -> Self {
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            data.display()
        );
        let log = data.join("server.log");
        let started = run_within(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(data.join("data"))
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start", "-o", &options]),
            Duration::from_secs(70),
            "pg_ctl start",
        )
        .await;
        assert!(started.status.success(), "{started:?}");
        Self { data, port }
    }

    /// A new primary.
    async fn primary() -> Self {
        let dir = Self::dir("primary");
        let init = run_within(
            pg_command("initdb").arg("-D").arg(dir.join("data")).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ]),
            Duration::from_secs(60),
            "initdb",
        )
        .await;
        assert!(init.status.success(), "{init:?}");
        Self::start(dir).await
    }

    /// A hot standby streaming from `primary`.
    async fn standby_of(primary: &OwnPostgres) -> Self {
        let dir = Self::dir("standby");
        let backup = run_within(
            pg_command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-R", "-X", "stream"]),
            Duration::from_secs(60),
            "pg_basebackup",
        )
        .await;
        assert!(backup.status.success(), "{backup:?}");
        Self::start(dir).await
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn sql(&self, database: &str, sql: &str) {
        let (client, connection) =
            tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let bin = PathBuf::from(std::env::var("NATTER_TEST_PG_BIN").unwrap_or_default());
        let mut stop = match running_as_root() {
            true => {
                let mut runuser = std::process::Command::new("runuser");
                runuser
                    .args(["-u", "postgres", "--"])
                    .arg(bin.join("pg_ctl"));
                runuser
            }
            false => std::process::Command::new(bin.join("pg_ctl")),
        };
        let _ = stop
            .arg("-D")
            .arg(self.data.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Every send is followed at once by a history page, a search and the chat list through
/// the node with a standby: each shows the message just acknowledged, and the standby
/// served reads. With the standby's replay paused, reads fall back to the primary and
/// still show every acknowledged message; once replay resumes the standby serves again.
#[tokio::test]
async fn reads_from_a_standby_never_miss_an_acknowledged_message_and_fall_back_while_it_lags() {
    let primary = OwnPostgres::primary().await;
    let standby = OwnPostgres::standby_of(&primary).await;
    let database = format!("natter_standby_{}", Uuid::new_v4().simple());
    primary
        .sql("postgres", &format!("CREATE DATABASE {database}"))
        .await;
    let mut node_settings = settings(&primary.url(&database));
    node_settings.database_read_url = Some(standby.url(&database));
    allow_bulk_sends(&mut node_settings);
    let app = spawn_node(node_settings).await;
    let alice = app.register("alice").await;
    let room = app.create_room(&alice, "r", "public").await;

    let reads_everything = |sent: i64| {
        let (app, token) = (&app, alice.token.clone());
        async move {
            let page = app
                .get(&format!("/v1/rooms/{room}/messages?limit=5"), &token)
                .await;
            let last = page.body["messages"].as_array().unwrap().last().cloned();
            assert_eq!(
                last.unwrap()["seq"],
                sent,
                "the page has the acknowledged send"
            );
            let found = app
                .get(
                    &format!("/v1/rooms/{room}/messages/search?q=word{sent}"),
                    &token,
                )
                .await;
            assert_eq!(found.body["messages"][0]["seq"], sent, "search finds it");
            let rooms = app.get("/v1/me/rooms", &token).await;
            let last = &rooms.body["rooms"][0]["last_message"]["seq"];
            assert_eq!(*last, sent, "the chat list has it");
        }
    };
    for sent in 1..=20 {
        let message = app.send(&alice, room, format!("word{sent}")).await;
        assert_eq!(message["seq"], sent);
        reads_everything(sent).await;
    }
    let served = app.metric("natter_db_reads_from_standby_total").await;
    assert!(served > 0.0, "the standby served none of 60 reads");

    standby.sql(&database, "SELECT pg_wal_replay_pause()").await;
    let fell_back = app.metric("natter_db_reads_from_primary_total").await;
    for sent in 21..=25 {
        app.send(&alice, room, format!("word{sent}")).await;
        reads_everything(sent).await;
    }
    assert_eq!(
        app.metric("natter_db_reads_from_primary_total").await,
        fell_back + 15.0,
        "every read while replay was paused went to the primary"
    );

    standby
        .sql(&database, "SELECT pg_wal_replay_resume()")
        .await;
    let served = app.metric("natter_db_reads_from_standby_total").await;
    app.send(&alice, room, "word26").await;
    reads_everything(26).await;
    assert!(app.metric("natter_db_reads_from_standby_total").await > served);
}
