//! Webhooks and where each stands in each room (SPEC §11). What to deliver is read with
//! `store::events::events_after`; this module keeps the rest: the webhooks themselves,
//! the per-(webhook, room) cursors with their leases and retry schedule, and the log of
//! recent attempts.

use std::time::Duration;

use uuid::Uuid;

use super::{
    CachedQuery, Store, StoreError,
    access::Access,
    events::{self, Position},
};

/// A webhook as its owner sees it (never its secret).
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: Uuid,
    /// `None` for a cluster-wide webhook.
    pub room_id: Option<Uuid>,
    pub url: String,
    /// `None`: every event type.
    pub events: Option<Vec<String>>,
    /// `active`, `failing` or `disabled`.
    pub state: String,
    pub created_at: i64,
}

/// What a deliverer needs of a webhook.
pub struct DeliveryTarget {
    pub url: String,
    pub events: Option<Vec<String>>,
    /// The current secret, and the one before the last rotation while it is still
    /// honoured.
    pub secrets: Vec<Vec<u8>>,
    pub room_webhook: bool,
}

/// A (webhook, room) this node now delivers, and where it stands.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub webhook_id: Uuid,
    pub room_id: Uuid,
    pub position: Position,
    /// Attempts that failed in a row at `position`'s next event.
    pub failures: i32,
}

/// One attempt, for the delivery log.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub event_id: String,
    pub kind: String,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    /// Milliseconds since the epoch.
    pub at: i64,
}

const WEBHOOK_COLUMNS: &str = "id, room_id, url, events, state, created_at";

fn webhook_from_row(row: &tokio_postgres::Row) -> Webhook {
    Webhook {
        id: row.get("id"),
        room_id: row.get("room_id"),
        url: row.get("url"),
        events: row.get("events"),
        state: row.get("state"),
        created_at: row.get("created_at"),
    }
}

/// How long a rotated-out secret still signs deliveries.
pub const OLD_SECRET_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Webhooks one room may have.
const MAX_WEBHOOKS_PER_ROOM: i64 = 10;

/// Attempts kept in the log per webhook.
const LOG_KEPT: i64 = 200;

/// A room's current position: new webhooks start there.
const ROOM_POSITION: &str =
    "r.last_seq, CASE WHEN r.event_after_seq = r.last_seq THEN r.event_n ELSE 0 END";

impl Store {
    /// Checks that `owner` owns `room_id` (`not_owner`, or 404 for a room they cannot see).
    pub async fn check_owner(&self, owner: Uuid, room_id: Uuid) -> Result<(), StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, owner).await?.require_owner()
    }

    /// The room's owner adds a webhook, which starts at the room's current position.
    pub async fn create_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        url: &str,
        events: Option<&[String]>,
        secret: &[u8],
    ) -> Result<Webhook, StoreError> {
        let mut client = self.client().await?;
        Access::of(&client, room_id, owner).await?.require_owner()?;
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        let count: i64 = tx
            .query_one_cached(
                "SELECT count(*) FROM webhooks WHERE room_id = $1",
                &[&room_id],
            )
            .await?
            .get(0);
        if count >= MAX_WEBHOOKS_PER_ROOM {
            return Err(StoreError::TooManyWebhooks);
        }
        let id = Uuid::now_v7();
        let row = tx
            .query_one_cached(
                &format!(
                    "INSERT INTO webhooks (id, room_id, url, events, secret)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[&id, &room_id, &url, &events, &secret],
            )
            .await?;
        tx.execute_cached(
            &format!(
                "INSERT INTO webhook_cursors (webhook_id, room_id, seq, n)
                 SELECT $1, r.id, {ROOM_POSITION} FROM rooms r WHERE r.id = $2"
            ),
            &[&id, &room_id],
        )
        .await?;
        tx.commit().await?;
        Ok(webhook_from_row(&row))
    }

    /// A room's webhooks, for its owner.
    pub async fn list_webhooks(
        &self,
        owner: Uuid,
        room_id: Uuid,
    ) -> Result<Vec<Webhook>, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, owner).await?.require_owner()?;
        let rows = client
            .query_cached(
                &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE room_id = $1 ORDER BY id"),
                &[&room_id],
            )
            .await?;
        Ok(rows.iter().map(webhook_from_row).collect())
    }

    /// One of a room's webhooks, for its owner; `webhook_not_found` if it is not one.
    async fn owned_webhook(
        &self,
        db: &impl CachedQuery,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
    ) -> Result<Webhook, StoreError> {
        Access::of(db, room_id, owner).await?.require_owner()?;
        db.query_opt_cached(
            &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND room_id = $2"),
            &[&id, &room_id],
        )
        .await?
        .map(|row| webhook_from_row(&row))
        .ok_or(StoreError::WebhookNotFound)
    }

    pub async fn delete_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.owned_webhook(&client, owner, room_id, id).await?;
        client
            .execute_cached("DELETE FROM webhooks WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Replaces the secret; the old one keeps signing for [`OLD_SECRET_GRACE`].
    pub async fn rotate_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
        secret: &[u8],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.owned_webhook(&client, owner, room_id, id).await?;
        client
            .execute_cached(
                "UPDATE webhooks SET old_secret = secret, secret = $2,
                        old_secret_until = now_ms() + $3
                  WHERE id = $1",
                &[&id, &secret, &(OLD_SECRET_GRACE.as_millis() as i64)],
            )
            .await?;
        Ok(())
    }

    /// Moves the webhook back to message `from_seq` of its room and makes it active:
    /// from there everything is delivered again. A delivery in progress loses its
    /// lease, so it cannot move the cursor past the replay.
    pub async fn replay_webhook(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
        from_seq: i64,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        self.owned_webhook(&client, owner, room_id, id).await?;
        let tx = client.transaction().await?;
        tx.execute_cached(
            "UPDATE webhook_cursors
                SET seq = $3, n = 2147483647, failures = 0, failing_since = NULL,
                    next_attempt_at = 0, leased_by = NULL, lease_until = 0
              WHERE webhook_id = $1 AND room_id = $2",
            &[&id, &room_id, &(from_seq.max(1) - 1)],
        )
        .await?;
        tx.execute_cached("UPDATE webhooks SET state = 'active' WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The webhook's state and its latest `limit` attempts, newest first.
    pub async fn webhook_deliveries(
        &self,
        owner: Uuid,
        room_id: Uuid,
        id: Uuid,
        limit: i64,
    ) -> Result<(String, Vec<Attempt>), StoreError> {
        let client = self.client().await?;
        let webhook = self.owned_webhook(&client, owner, room_id, id).await?;
        let rows = client
            .query_cached(
                "SELECT event_id, type, attempt, status_code, error, duration_ms, at
                   FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY at DESC LIMIT $2",
                &[&id, &limit],
            )
            .await?;
        let attempts = rows
            .iter()
            .map(|row| Attempt {
                event_id: row.get("event_id"),
                kind: row.get("type"),
                attempt: row.get("attempt"),
                status_code: row.get("status_code"),
                error: row.get("error"),
                duration_ms: row.get("duration_ms"),
                at: row.get("at"),
            })
            .collect();
        Ok((webhook.state, attempts))
    }

    /// Registers a cluster-wide webhook from `WEBHOOKS` (every node does, idempotently)
    /// and starts it at every room's current position.
    pub async fn ensure_cluster_webhook(
        &self,
        id: Uuid,
        url: &str,
        events: Option<&[String]>,
        secret: &[u8],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Nodes starting at once register the same entry at once. `ON CONFLICT (id)`
        // alone does not make that safe: the row also conflicts on `config_key`, which
        // is not the arbiter, and the second insert fails on it. One registration of an
        // id at a time, then, and the later one finds the row.
        tx.execute_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&format!("natter.cluster_webhook.{id}")],
        )
        .await?;
        // `xmax = 0`: the row is new (not an update of an existing one).
        let inserted: bool = tx
            .query_one_cached(
                "INSERT INTO webhooks (id, room_id, url, events, secret, config_key)
                 VALUES ($1, NULL, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET events = EXCLUDED.events
                 RETURNING xmax = 0",
                &[&id, &url, &events, &secret, &id.to_string()],
            )
            .await?
            .get(0);
        if inserted {
            tx.execute_cached(
                &format!(
                    "INSERT INTO webhook_cursors (webhook_id, room_id, seq, n)
                     SELECT $1, r.id, {ROOM_POSITION} FROM rooms r
                     ON CONFLICT DO NOTHING"
                ),
                &[&id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Which of `ids` are still webhooks.
    pub async fn existing_webhooks(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached("SELECT id FROM webhooks WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Whether the cluster has any webhook at all.
    pub async fn any_webhooks(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one_cached("SELECT EXISTS (SELECT 1 FROM webhooks)", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Leases up to `limit` (webhook, room) pairs that have events to deliver and are
    /// due, to `node` for `lease`: at any moment one node delivers a pair.
    pub async fn claim_webhook_work(
        &self,
        node: &str,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached(
                "WITH ready AS (
                     SELECT c.webhook_id, c.room_id FROM webhook_cursors c
                       JOIN webhooks w ON w.id = c.webhook_id AND w.state <> 'disabled'
                       LEFT JOIN rooms r ON r.id = c.room_id
                      WHERE c.next_attempt_at <= now_ms() AND c.lease_until < now_ms()
                        AND (r.last_seq > c.seq
                             OR (r.event_after_seq, r.event_n) > (c.seq, c.n)
                             OR (r.id IS NULL AND EXISTS (
                                 SELECT 1 FROM room_events e WHERE e.room_id = c.room_id
                                    AND (e.after_seq, e.n) > (c.seq, c.n))))
                      LIMIT $2 FOR UPDATE OF c SKIP LOCKED)
                 UPDATE webhook_cursors c SET leased_by = $1, lease_until = now_ms() + $3
                   FROM ready
                  WHERE c.webhook_id = ready.webhook_id AND c.room_id = ready.room_id
                 RETURNING c.webhook_id, c.room_id, c.seq, c.n, c.failures",
                &[&node, &limit, &(lease.as_millis() as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Claim {
                webhook_id: row.get("webhook_id"),
                room_id: row.get("room_id"),
                position: Position {
                    seq: row.get("seq"),
                    n: row.get("n"),
                },
                failures: row.get("failures"),
            })
            .collect())
    }

    /// Where and how to deliver a webhook's events; `None` once it is deleted or
    /// disabled.
    pub async fn delivery_target(&self, id: Uuid) -> Result<Option<DeliveryTarget>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt_cached(
                "SELECT url, events, secret, room_id IS NOT NULL AS room_webhook,
                        CASE WHEN old_secret_until > now_ms() THEN old_secret END AS old_secret
                   FROM webhooks WHERE id = $1 AND state <> 'disabled'",
                &[&id],
            )
            .await?;
        Ok(row.map(|row| {
            let mut secrets = vec![row.get::<_, Vec<u8>>("secret")];
            secrets.extend(row.get::<_, Option<Vec<u8>>>("old_secret"));
            DeliveryTarget {
                url: row.get("url"),
                events: row.get("events"),
                secrets,
                room_webhook: row.get("room_webhook"),
            }
        }))
    }

    /// Records progress of a claim this node holds: the position delivered up to (no
    /// failures pending), the attempts made since the last save, and a renewed lease.
    /// `false` if the lease was lost (expired and taken, or reset by a replay): the
    /// caller must stop, and nothing is written.
    pub async fn save_webhook_progress(
        &self,
        node: &str,
        claim: &Claim,
        lease: Duration,
        attempts: &[Attempt],
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let kept = tx
            .execute_cached(
                "UPDATE webhook_cursors
                    SET seq = $4, n = $5, failures = 0, failing_since = NULL,
                        lease_until = now_ms() + $6
                  WHERE webhook_id = $1 AND room_id = $2 AND leased_by = $3
                    AND lease_until > now_ms()",
                &[
                    &claim.webhook_id,
                    &claim.room_id,
                    &node,
                    &claim.position.seq,
                    &claim.position.n,
                    &(lease.as_millis() as i64),
                ],
            )
            .await?;
        if kept == 0 {
            return Ok(false);
        }
        log_attempts(&tx, claim.webhook_id, attempts).await?;
        tx.execute_cached(
            "UPDATE webhooks SET state = 'active' WHERE id = $1 AND state = 'failing'
                AND NOT EXISTS (SELECT 1 FROM webhook_cursors
                                 WHERE webhook_id = $1 AND failures > 0)",
            &[&claim.webhook_id],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed attempt at the event after `claim.position`: the next one is due
    /// in `retry_in`, the lease is given up, and the webhook becomes `failing` — or
    /// `disabled` once it has been failing for `give_up_after`.
    pub async fn record_webhook_failure(
        &self,
        node: &str,
        claim: &Claim,
        retry_in: Duration,
        give_up_after: Duration,
        attempts: &[Attempt],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt_cached(
                "UPDATE webhook_cursors
                    SET seq = $4, n = $5, failures = failures + 1,
                        failing_since = COALESCE(failing_since, now_ms()),
                        next_attempt_at = now_ms() + $6, leased_by = NULL, lease_until = 0
                  WHERE webhook_id = $1 AND room_id = $2 AND leased_by = $3
                    AND lease_until > now_ms()
                 RETURNING now_ms() - failing_since >= $7 AS give_up",
                &[
                    &claim.webhook_id,
                    &claim.room_id,
                    &node,
                    &claim.position.seq,
                    &claim.position.n,
                    &(retry_in.as_millis() as i64),
                    &(give_up_after.as_millis() as i64),
                ],
            )
            .await?;
        let Some(row) = row else {
            return Ok(());
        };
        log_attempts(&tx, claim.webhook_id, attempts).await?;
        let state = if row.get("give_up") {
            "disabled"
        } else {
            "failing"
        };
        tx.execute_cached(
            "UPDATE webhooks SET state = $2 WHERE id = $1 AND state <> 'disabled'",
            &[&claim.webhook_id, &state],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives a claim back (nothing left to deliver now).
    pub async fn release_webhook_claim(&self, node: &str, claim: &Claim) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute_cached(
                "UPDATE webhook_cursors SET leased_by = NULL, lease_until = 0
                  WHERE webhook_id = $1 AND room_id = $2 AND leased_by = $3",
                &[&claim.webhook_id, &claim.room_id, &node],
            )
            .await?;
        Ok(())
    }

    /// After `room.deleted` was delivered: a room webhook is removed with its room, a
    /// cluster-wide one forgets the room.
    pub async fn finish_deleted_room(
        &self,
        claim: &Claim,
        room_webhook: bool,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        if room_webhook {
            client
                .execute_cached("DELETE FROM webhooks WHERE id = $1", &[&claim.webhook_id])
                .await?;
        } else {
            client
                .execute_cached(
                    "DELETE FROM webhook_cursors WHERE webhook_id = $1 AND room_id = $2",
                    &[&claim.webhook_id, &claim.room_id],
                )
                .await?;
        }
        Ok(())
    }

    /// Forgets room changes older than `age` (webhooks retry for 24 h; a replay starts
    /// from messages), a batch at a time.
    pub async fn trim_room_events(&self, age: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute_cached(
                "DELETE FROM room_events WHERE (room_id, after_seq, n) IN (
                     SELECT room_id, after_seq, n FROM room_events
                      WHERE created_at < now_ms() - $1 LIMIT 1000)",
                &[&(age.as_millis() as i64)],
            )
            .await?)
    }

    /// Events of a room after `after`, for a deliverer.
    pub async fn webhook_events(
        &self,
        room_id: Uuid,
        after: Position,
        limit: i64,
    ) -> Result<Vec<events::HistoryEvent>, StoreError> {
        let client = self.client().await?;
        events::events_after(&client, room_id, after, limit).await
    }
}

/// Appends attempts to the log and trims it to the latest [`LOG_KEPT`].
async fn log_attempts(
    db: &impl CachedQuery,
    webhook_id: Uuid,
    attempts: &[Attempt],
) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Attempt) -> String| attempts.iter().map(f).collect::<Vec<_>>();
    let event_ids = column(|a| a.event_id.clone());
    let kinds = column(|a| a.kind.clone());
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    let codes: Vec<Option<i32>> = attempts.iter().map(|a| a.status_code).collect();
    let errors: Vec<Option<String>> = attempts.iter().map(|a| a.error.clone()).collect();
    let durations: Vec<i32> = attempts.iter().map(|a| a.duration_ms).collect();
    let ats: Vec<i64> = attempts.iter().map(|a| a.at).collect();
    db.execute_cached(
        "INSERT INTO webhook_deliveries
             (webhook_id, event_id, type, attempt, status_code, error, duration_ms, at)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::text[],
                                  $7::int[], $8::bigint[])",
        &[
            &webhook_id,
            &event_ids,
            &kinds,
            &numbers,
            &codes,
            &errors,
            &durations,
            &ats,
        ],
    )
    .await?;
    db.execute_cached(
        "DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND at < (
             SELECT at FROM webhook_deliveries WHERE webhook_id = $1
              ORDER BY at DESC OFFSET $2 LIMIT 1)",
        &[&webhook_id, &LOG_KEPT],
    )
    .await?;
    Ok(())
}
