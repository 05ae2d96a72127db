//! Reads from a standby (`DATABASE_READ_URL`) without breaking read-your-writes.
//!
//! A standby replays the primary's WAL a little behind it, so a read there could miss a
//! message whose sender was just told it is stored. [`Standby::caught_up_to`] hands out
//! a standby connection only once the standby has replayed up to a position of the
//! primary's taken after the read began (`Store::reader`); if it has not within
//! [`CATCH_UP_WAIT`], or cannot be reached, the read goes to the primary. A standby
//! that failed is left alone for [`RESTING`], so an outage costs reads nothing but the
//! first timeout.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::PgLsn;

use super::CachedQuery;

/// How long a read waits for the standby to replay the primary's position.
const CATCH_UP_WAIT: Duration = Duration::from_millis(20);
/// Between two looks at the standby's replay position.
const POLL: Duration = Duration::from_millis(2);
/// How long a read waits for a standby connection.
const CHECKOUT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a standby that failed is not asked.
const RESTING: Duration = Duration::from_secs(5);

pub(super) struct Standby {
    pool: Pool,
    /// Until when the standby rests after a failure.
    resting_until: Mutex<Option<Instant>>,
    served: AtomicU64,
    fell_back: AtomicU64,
}

impl Standby {
    pub(super) fn new(pool: Pool) -> Self {
        Self {
            pool,
            resting_until: Mutex::new(None),
            served: AtomicU64::new(0),
            fell_back: AtomicU64::new(0),
        }
    }

    /// A standby connection that sees everything up to `position`, or `None` (the read
    /// goes to the primary).
    pub(super) async fn caught_up_to(&self, position: PgLsn) -> Option<Object> {
        let caught_up = match self.is_resting() {
            true => None,
            false => self.wait_for(position).await,
        };
        match caught_up {
            Some(_) => self.served.fetch_add(1, Ordering::Relaxed),
            None => self.fell_back.fetch_add(1, Ordering::Relaxed),
        };
        caught_up
    }

    fn is_resting(&self) -> bool {
        let resting_until = self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        resting_until.is_some_and(|until| Instant::now() < until)
    }

    async fn wait_for(&self, position: PgLsn) -> Option<Object> {
        let client = match tokio::time::timeout(CHECKOUT_TIMEOUT, self.pool.get()).await {
            Ok(Ok(client)) => client,
            _ => return self.rest(),
        };
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            // NULL on a server that is not in recovery: not a standby (any more).
            let replayed = client
                .query_one_cached(
                    "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1, false)",
                    &[&position],
                )
                .await;
            match replayed {
                Ok(row) if row.get::<_, bool>(0) => return Some(client),
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(_) => return None,
                Err(_) => return self.rest(),
            }
        }
    }

    fn rest(&self) -> Option<Object> {
        *self.resting_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + RESTING);
        None
    }

    /// (reads the standby served, reads that fell back to the primary).
    pub(super) fn reads(&self) -> (u64, u64) {
        (
            self.served.load(Ordering::Relaxed),
            self.fell_back.load(Ordering::Relaxed),
        )
    }
}
