//! Postgres: the source of truth for users, rooms, members, messages, read watermarks
//! and reactions.
//!
//! [`Store`] owns a bounded connection pool. Every wait on it is bounded (connect, pool
//! checkout, statement), and a database that cannot be reached surfaces as
//! [`StoreError::Unavailable`], which the API answers with `503` and `Retry-After`;
//! broken connections are dropped on checkout, so service recovers on its own when the
//! database returns.
//!
//! **Failover.** `DATABASE_URL` may name several hosts with
//! `target_session_attrs=read-write` (`postgres://a,b,c/natter?target_session_attrs=read-write`):
//! each new connection tries them in turn and keeps the one that accepts writes. A
//! connection to a primary that died is closed and dropped on checkout; one that finds
//! its server read-only (demoted under it) marks every connection opened until then as
//! stale ([`connections_became_stale`]), and the pool drops those on checkout too, so
//! the next ones reach the new primary. While there is none, checkouts fail within
//! [`CHECKOUT_TIMEOUT`] and callers answer `503`. A send whose `COMMIT` got no answer
//! is `Unavailable`, never acknowledged; its retry finds it by `client_msg_id` if the
//! commit survived (docs/RELIABILITY.md, "Postgres failover").

mod access;
pub mod bots;
pub mod commit;
pub mod credentials;
pub mod events;
pub mod messages;
mod migrate;
pub mod push;
pub mod rooms;
mod rows;
mod standby;
mod subscription_checks;
pub mod users;
pub mod webhooks;

use std::{
    path::Path,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::{
    GenericClient, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres::{
    NoTls, Row,
    config::SslMode,
    error::SqlState,
    types::{PgLsn, ToSql},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::domain::InvalidInput;
use standby::Standby;

/// Errors of the storage layer: infrastructure failures and the domain outcomes that only
/// the database can decide (a room that does not exist, a name already taken, …).
///
/// Each variant says what happened, in the store's terms; which status and code a client
/// sees is decided once, in `api::error`. Errors clone (a failed batch of sends answers
/// every sender with its error).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Postgres cannot be reached or is shutting down; worth retrying.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The room does not exist, or is private and the caller is not a member.
    #[error("room not found")]
    RoomNotFound,
    #[error("user not found")]
    UserNotFound,
    #[error("message not found")]
    MessageNotFound,
    #[error("webhook not found")]
    WebhookNotFound,
    #[error("a room has at most 10 webhooks; delete one first")]
    TooManyWebhooks,
    #[error("no such push subscription")]
    PushSubscriptionNotFound,
    #[error("a user has at most 20 push subscriptions; delete one first")]
    TooManyPushSubscriptions,
    /// A public room the caller must join before writing to it.
    #[error("not a member of this room")]
    NotMember,
    /// Only the room's owner may change the room or its members.
    #[error("only the room's owner may do this")]
    NotOwner,
    /// Only a message's sender may edit it, or delete it in a direct room.
    #[error("only the message's sender may do this")]
    NotSender,
    /// Only a message's sender, or the room's owner, may delete it.
    #[error("only the sender or the room's owner may delete a message")]
    NotSenderOrOwner,
    #[error("that username is already taken")]
    UsernameTaken,
    /// The message carries as many distinct emoji as it may; a new one is refused.
    #[error("a message carries at most 20 distinct reactions")]
    TooManyReactions,
    /// The message is a tombstone: it cannot be edited or reacted to.
    #[error("the message has been deleted")]
    MessageDeleted,
    /// A direct room's name and members are fixed.
    #[error("a direct room cannot be renamed, deleted, left or change members")]
    DirectRoomIsFixed,
    #[error("the owner cannot leave their room; delete it instead")]
    OwnerCannotLeave,
    /// Input that only the database can judge, such as a `reply_to` in another room.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// Anything else: a bug or a broken invariant. Logged, never shown to clients.
    #[error("database error")]
    Database(#[source] Arc<tokio_postgres::Error>),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        let unavailable = err.is_closed()
            || err.code().is_some_and(|code| {
                code.code().starts_with("08")
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW
                    || *code == SqlState::QUERY_CANCELED
                    // Contention that gave up (a configured `lock_timeout`) or lost
                    // (a deadlock): the same request can succeed a moment later.
                    || *code == SqlState::LOCK_NOT_AVAILABLE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    // The server was demoted to a standby under this connection.
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            })
            || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>());
        if err.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
            connections_became_stale();
        }
        if unavailable {
            StoreError::Unavailable(err.to_string())
        } else {
            StoreError::Database(Arc::new(err))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Queries through each pooled connection's statement cache. A query sent as text is
/// parsed, described and planned by Postgres on every call, which costs a round trip
/// and most of a short query's server time (a third of Postgres's CPU in the connect
/// benchmark went to planning the same subscribe check again and again; BENCHMARKS.md);
/// a cached statement is prepared once per connection. Every query in this module is
/// one of a fixed set of texts, so the caches stay small.
pub(crate) trait CachedQuery: GenericClient {
    async fn query_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    async fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }

    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl<C: GenericClient> CachedQuery for C {}

/// The name of the unique constraint `err` violated, if that is what it is.
pub(crate) fn unique_violation(err: &tokio_postgres::Error) -> Option<&str> {
    let db = err.as_db_error()?;
    (*db.code() == SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or_default())
}

/// A bounded pool of Postgres connections.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// A standby for reads (`DATABASE_READ_URL`), if one is configured.
    standby: Option<Arc<Standby>>,
    /// Per-room group commit of sends (see [`commit`]).
    batches: Arc<commit::Batches>,
    /// Subscriptions' access checks, batched (see [`subscription_checks`]).
    subscription_checks: Arc<subscription_checks::SubscriptionChecks>,
    /// Failed checkouts and group commits, for `/metrics`.
    failures: Arc<AtomicU64>,
    /// Connections opened, to the primary and the standby: after the first few, each
    /// one replaces a connection that broke (a failover's reconnects), for `/metrics`.
    connections_opened: Arc<AtomicU64>,
}

/// How long a caller waits for a pooled connection before the database counts as down.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a new connection waits for each host of `DATABASE_URL` in turn: a host that
/// died (its address gone, not refusing) must not use up the whole checkout.
const CONNECT_TIMEOUT_PER_HOST: Duration = Duration::from_secs(2);

/// When a connection last found its server read-only, as milliseconds since
/// [`PROCESS_START`] (0: never). Pooled connections opened before then may all lead to
/// the demoted server, so checkouts drop them. Process-wide, not per pool: every pool
/// of a node talks to the same cluster, and a needless reconnect costs little.
static STALE_BEFORE_MS: AtomicU64 = AtomicU64::new(0);
static PROCESS_START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Marks every connection opened until now as stale: they are dropped at checkout.
fn connections_became_stale() {
    let now = PROCESS_START.elapsed().as_millis() as u64;
    STALE_BEFORE_MS.fetch_max(now.max(1), Ordering::Relaxed);
}

/// Whether a connection opened at `created` predates the last sign of a demotion.
fn opened_before_demotion(created: Instant) -> bool {
    let stale_before = STALE_BEFORE_MS.load(Ordering::Relaxed);
    stale_before != 0
        && (created
            .saturating_duration_since(*PROCESS_START)
            .as_millis() as u64)
            < stale_before
}

/// TLS for Postgres: the server's certificate must chain to a public root (webpki) or to
/// the extra CA in `ca_file`, and name the host.
fn tls_connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| StoreError::Unavailable(format!("DATABASE_CA_FILE: {e}")))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| StoreError::Unavailable(format!("DATABASE_CA_FILE: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Unavailable(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// A bounded pool of connections to `database_url`, built lazily (it succeeds while
/// Postgres is down). `sslmode=require` in the URL turns on TLS with certificate and host
/// name checks (stricter than libpq's `require`); `ca_file` adds a private CA.
fn build_pool(
    database_url: &str,
    pool_size: usize,
    ca_file: Option<&Path>,
    opened: Arc<AtomicU64>,
) -> Result<Pool, StoreError> {
    let mut config: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Unavailable(e.to_string()))?;
    LazyLock::force(&PROCESS_START);
    // A new connection may try every host (a failover's dead primary first).
    let hosts = config.get_hosts().len().max(1) as u32;
    let create_timeout = CONNECT_TIMEOUT_PER_HOST * hosts + Duration::from_secs(1);
    config
        .connect_timeout(CONNECT_TIMEOUT_PER_HOST)
        // A primary that vanished (its machine, not just its process) answers
        // nothing: keepalives find an idle connection dead in ~45 s, and
        // unacknowledged writes give up after 20 s, rather than TCP's 15 minutes.
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(20))
        // A statement that runs this long is a bug or an overload; bound it.
        .options("-c statement_timeout=15000 -c idle_in_transaction_session_timeout=15000")
        .application_name("natter");
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if config.get_ssl_mode() == SslMode::Require {
        Manager::from_config(config, tls_connector(ca_file)?, manager_config)
    } else {
        Manager::from_config(config, NoTls, manager_config)
    };
    Pool::builder(manager)
        .max_size(pool_size)
        .wait_timeout(Some(CHECKOUT_TIMEOUT))
        .create_timeout(Some(create_timeout))
        .recycle_timeout(Some(CHECKOUT_TIMEOUT))
        .post_create(Hook::sync_fn(move |_, _| {
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }))
        .pre_recycle(Hook::sync_fn(|_, metrics| {
            match opened_before_demotion(metrics.created) {
                true => Err(HookError::message("opened before a failover")),
                false => Ok(()),
            }
        }))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl Store {
    /// Builds the pool ([`build_pool`]: lazy, so this succeeds even while Postgres is
    /// down; TLS with `sslmode=require`, `ca_file` for a private CA, a managed
    /// database's, say).
    pub fn connect(
        database_url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let connections_opened = Arc::new(AtomicU64::new(0));
        Ok(Self {
            pool: build_pool(database_url, pool_size, ca_file, connections_opened.clone())?,
            standby: None,
            batches: Default::default(),
            subscription_checks: Default::default(),
            failures: Default::default(),
            connections_opened,
        })
    }

    /// Serves the reads that may come from a standby (history pages, search, the chat
    /// list) from the one at `read_url` whenever it has caught up ([`Store::reader`]).
    pub fn with_standby(
        mut self,
        read_url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let pool = build_pool(
            read_url,
            pool_size,
            ca_file,
            self.connections_opened.clone(),
        )?;
        self.standby = Some(Arc::new(Standby::new(pool)));
        Ok(self)
    }

    /// A pooled connection, or `Unavailable` within [`CHECKOUT_TIMEOUT`].
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| {
            self.count_failure();
            err.into()
        })
    }

    fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection for a read that a standby may serve: one to the standby if it has
    /// replayed everything the primary had written when this call began, else one to the
    /// primary. So a read never misses what was acknowledged before it, through any
    /// node (SPEC §1): the ack came after the commit, and the commit is at or before
    /// the primary's position read here. Costs one trivial query on the primary.
    pub(crate) async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let Some(standby) = &self.standby else {
            return self.client().await;
        };
        let position: PgLsn = self
            .client()
            .await?
            .query_one_cached("SELECT pg_current_wal_lsn()", &[])
            .await?
            .get(0);
        match standby.caught_up_to(position).await {
            Some(caught_up) => Ok(caught_up),
            None => self.client().await,
        }
    }

    /// Reads served by the standby and, of those that could have been, by the primary.
    pub fn standby_reads(&self) -> (u64, u64) {
        self.standby
            .as_ref()
            .map_or((0, 0), |standby| standby.reads())
    }

    /// Postgres connections this node has opened, for `/metrics`.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Postgres failures this node has seen, for `/metrics`.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Applies the embedded migrations that have not run yet (safe to race; see
    /// [`migrate`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        migrate::run(&mut client).await
    }

    /// `true` when a trivial query succeeds now.
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, StoreError>(())
        };
        matches!(
            tokio::time::timeout(CHECKOUT_TIMEOUT, attempt).await,
            Ok(Ok(()))
        )
    }

    /// Pool occupancy, for `/metrics`.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_demotion_makes_connections_opened_before_it_stale_and_later_ones_not() {
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        connections_became_stale();
        assert!(opened_before_demotion(before));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!opened_before_demotion(Instant::now()));
    }
}
