//! Subscription access checks, many per query.
//!
//! A socket's first subscription to a room on a node asks Postgres whether its user may
//! see the room. One at a time that is one pooled connection per subscription, and a
//! reconnect storm (a third of the cluster's sockets resubscribing to a hundred rooms
//! each) queues thousands of checkouts behind the pool while Postgres itself idles:
//! every check holds its connection for as long as the busy runtime takes to poll it.
//!
//! So checks queue here and a few checkers answer them in batches: each takes what is
//! queued (up to [`CHECKS_PER_QUERY`]) and answers all of it with one query. A checker
//! starts when a check arrives and fewer than [`MAX_CHECKERS`] run, and ends when the
//! queue is empty: a lone subscription costs what it did (one query), and a storm costs
//! one query per thousand subscriptions.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::{CachedQuery, Store, StoreError, access::Access};
use crate::model::{Role, RoomKind};

/// (room, user) pairs answered by one query.
const CHECKS_PER_QUERY: usize = 1_000;
/// Checkers (queries) at once per node: an eighth of the default pool, so a storm
/// leaves the rest to sends and reads.
const MAX_CHECKERS: usize = 4;
/// Checks waiting on one node before more are refused as unavailable (bounded memory;
/// thirty full queries).
const MAX_QUEUED: usize = 30 * CHECKS_PER_QUERY;

/// The answer to one check: the room's `access_version`, or why the user may not
/// subscribe.
type Answer = oneshot::Sender<Result<i64, StoreError>>;

struct Check {
    room_id: Uuid,
    user_id: Uuid,
    answer: Answer,
}

/// The checks waiting on this node, and how many checkers run.
#[derive(Default)]
pub(super) struct SubscriptionChecks {
    state: Mutex<Queue>,
    /// Checks answered and queries that answered them, for `/metrics`.
    checks: AtomicU64,
    queries: AtomicU64,
}

#[derive(Default)]
struct Queue {
    checks: Vec<Check>,
    checkers: usize,
}

impl Store {
    /// Checks that `viewer` may see a room, for a subscription: the room's
    /// `access_version` now (see [`Store::lost_access`]); `RoomNotFound` for a room
    /// that does not exist or that they may not see.
    pub async fn subscription_access(
        &self,
        viewer: Uuid,
        room_id: Uuid,
    ) -> Result<i64, StoreError> {
        let (answer, answered) = oneshot::channel();
        let start_checker = {
            let mut queue = self.subscription_checks.state.lock().expect("not poisoned");
            if queue.checks.len() >= MAX_QUEUED {
                return Err(StoreError::Unavailable(
                    "too many subscriptions waiting for their access check".into(),
                ));
            }
            queue.checks.push(Check {
                room_id,
                user_id: viewer,
                answer,
            });
            let start = queue.checkers < MAX_CHECKERS;
            queue.checkers += usize::from(start);
            start
        };
        if start_checker {
            tokio::spawn(self.clone().check_subscriptions());
        }
        answered
            .await
            .map_err(|_| StoreError::Unavailable("the access check was abandoned".into()))?
    }

    /// Subscription access checks answered, and the queries that answered them.
    pub fn subscription_checks(&self) -> (u64, u64) {
        let counts = &self.subscription_checks;
        (
            counts.checks.load(Ordering::Relaxed),
            counts.queries.load(Ordering::Relaxed),
        )
    }

    /// Answers queued checks, a query's worth at a time, until none are left.
    async fn check_subscriptions(self) {
        loop {
            let checks = {
                let mut queue = self.subscription_checks.state.lock().expect("not poisoned");
                if queue.checks.is_empty() {
                    queue.checkers -= 1;
                    return;
                }
                let take = queue.checks.len().min(CHECKS_PER_QUERY);
                // The oldest first: they have waited longest.
                queue.checks.drain(..take).collect::<Vec<_>>()
            };
            let counts = &self.subscription_checks;
            counts.queries.fetch_add(1, Ordering::Relaxed);
            counts
                .checks
                .fetch_add(checks.len() as u64, Ordering::Relaxed);
            match self.access_versions(&checks).await {
                Ok(answers) => {
                    for (check, answer) in checks.into_iter().zip(answers) {
                        let _ = check.answer.send(answer);
                    }
                }
                Err(err) => {
                    for check in checks {
                        let _ = check.answer.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Each check's answer, in order, from one query.
    async fn access_versions(
        &self,
        checks: &[Check],
    ) -> Result<Vec<Result<i64, StoreError>>, StoreError> {
        let rooms: Vec<Uuid> = checks.iter().map(|c| c.room_id).collect();
        let users: Vec<Uuid> = checks.iter().map(|c| c.user_id).collect();
        let client = self.client().await?;
        let rows = client
            .query_cached(
                "SELECT q.i, r.kind, m.role, r.access_version
                   FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS q (room_id, user_id, i)
                   JOIN rooms r ON r.id = q.room_id
                   LEFT JOIN members m ON m.room_id = q.room_id AND m.user_id = q.user_id",
                &[&rooms, &users],
            )
            .await?;
        // A check without a row asked about a room that does not exist.
        let mut answers = vec![Err(StoreError::RoomNotFound); checks.len()];
        for row in rows {
            let i = row.get::<_, i64>(0) as usize - 1;
            let kind = RoomKind::from_db(row.get(1));
            let role = row.get::<_, Option<&str>>(2).map(Role::from_db);
            answers[i] = Access::given(kind, role).map(|_| row.get(3));
        }
        Ok(answers)
    }
}
