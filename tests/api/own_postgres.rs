//! Throwaway Postgres servers of a test's own, from the harness's Postgres binaries
//! (`NATTER_TEST_PG_BIN`): a primary (initdb) and hot standbys streaming from it
//! (`pg_basebackup -R`), for tests that promote, pause or reconfigure a server, which
//! the shared harness Postgres must never see.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;
use uuid::Uuid;

use crate::helpers::{free_port, run_within};

/// A throwaway Postgres server in its own directory, stopped when dropped.
pub struct OwnPostgres {
    data: PathBuf,
    pub port: u16,
}

/// A Postgres program from the harness's installation, run as the `postgres` user when
/// the tests run as root (Postgres refuses root); its output is discarded, its errors
/// kept for the assertion messages.
fn pg_program(program: &str) -> std::process::Command {
    let bin = PathBuf::from(std::env::var("NATTER_TEST_PG_BIN").expect("run through tests/run"));
    let path = bin.join(program);
    let mut command = match running_as_root() {
        true => {
            let mut runuser = std::process::Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        }
        false => std::process::Command::new(path),
    };
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

/// [`pg_program`], to await.
fn pg_command(program: &str) -> Command {
    Command::from(pg_program(program))
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
    pub async fn primary() -> Self {
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
    pub async fn standby_of(primary: &OwnPostgres) -> Self {
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

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn sql(&self, database: &str, sql: &str) {
        self.client(database)
            .await
            .batch_execute(sql)
            .await
            .unwrap();
    }

    pub async fn client(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting until it is one).
    pub async fn promote(&self) {
        let promoted = run_within(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data.join("data"))
                .args(["-w", "-t", "60", "promote"]),
            Duration::from_secs(70),
            "pg_ctl promote",
        )
        .await;
        assert!(promoted.status.success(), "{promoted:?}");
    }

    /// Waits until this standby has replayed everything `primary` has written.
    pub async fn caught_up_with(&self, primary: &OwnPostgres) {
        let position: String = primary
            .client("postgres")
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let standby = self.client("postgres").await;
        for _ in 0..500 {
            let replayed: bool = standby
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                    &[&position],
                )
                .await
                .unwrap()
                .get(0);
            if replayed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the standby did not replay {position} within 5 s");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = pg_program("pg_ctl")
            .arg("-D")
            .arg(self.data.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
