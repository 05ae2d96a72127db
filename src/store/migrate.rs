//! Embedded schema migrations.
//!
//! All pending migrations run in one transaction that first takes a transaction-scoped
//! advisory lock, so ten nodes starting at once apply each migration exactly once: the
//! first holds the lock and migrates, the rest wait, then find nothing left to do. The
//! same transaction creates the cluster's signing key, once.

use super::StoreError;

/// Every migration in order: (version, SQL). Append only; never edit a released one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_message_insert_path.sql")),
    (3, include_str!("migrations/0003_sends_without_a_key.sql")),
    (4, include_str!("migrations/0004_credentials.sql")),
    (5, include_str!("migrations/0005_access_revocations.sql")),
    (6, include_str!("migrations/0006_bots.sql")),
    (7, include_str!("migrations/0007_webhooks.sql")),
    (8, include_str!("migrations/0008_room_activity.sql")),
    (9, include_str!("migrations/0009_messages_by_time.sql")),
    (10, include_str!("migrations/0010_bots_owned_by_bots.sql")),
    (
        11,
        include_str!("migrations/0011_login_failures_by_client.sql"),
    ),
    (
        12,
        include_str!("migrations/0012_drop_messages_by_time.sql"),
    ),
];

/// Arbitrary, fixed key for `pg_advisory_xact_lock`: "natter" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x6e61_7474_6572;

pub(super) async fn run(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, "applying migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    // The cluster's own signing key, for when JWT_SECRET is unset: the first node makes
    // it, under the lock, so every node reads the same one.
    let mut key = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    tx.execute(
        "INSERT INTO signing_keys (name, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&super::credentials::LOCAL_SIGNING_KEY, &key.as_slice()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
