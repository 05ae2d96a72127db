//! The webhook deliverer every node runs (SPEC §11).
//!
//! Delivery state lives in Postgres (`store::webhooks`): for each (webhook, room) a
//! cursor — the last position delivered — with a lease, a failure count and when to
//! try next. Each node polls for due pairs with events past their cursor and leases a
//! few (`FOR UPDATE SKIP LOCKED`), so one node at a time delivers a pair; the lease is
//! renewed with every save and, if the node dies, expires after [`LEASE`] and another
//! node continues from the saved cursor. Within a pair events go one at a time in the
//! room's order: the next is not sent until the previous got a 2xx. A failure schedules
//! a retry ([`retry_delay`]) and gives the lease up; after 24 h of failures the webhook
//! is `disabled`, its backlog kept for a replay. Progress is saved at most every
//! [`SAVE_EVERY`], so a node killed mid-delivery repeats at most that much: at least
//! once, and receivers drop repeats by `webhook-id`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use rand_core::RngCore;
use tokio::sync::{Notify, Semaphore, watch};
use uuid::Uuid;

use super::{destination, signing::Secret};
use crate::{
    histogram::LatencyHistogram,
    store::{
        Store, StoreError,
        webhooks::{Attempt, Claim, DeliveryTarget},
    },
};

/// How long a lease lasts without a save: longer than one attempt's timeout.
pub const LEASE: Duration = Duration::from_secs(15);
/// How long one attempt may take (SPEC §11).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a busy deliverer saves its cursor and renews its lease.
const SAVE_EVERY: Duration = Duration::from_millis(500);
/// How often a node looks for due work: at least every [`MAX_POLL_WAIT`] (the first
/// retries and other nodes' events are found so), more often while it finds some, and
/// at once when [`Deliverer::waker`] is woken (this node committed messages), but never
/// more than once per [`MIN_POLL_WAIT`]. A cluster without webhooks costs one
/// `EXISTS` query per node per second.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
const MIN_POLL_WAIT: Duration = Duration::from_millis(50);
/// How long a failing webhook is retried before it is disabled.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The longest wait between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);
/// How often a node removes the series of webhooks deleted since.
const FORGET_EVERY: Duration = Duration::from_secs(2);
/// Events read from Postgres at a time.
const READ_BATCH: i64 = 500;
/// How long room changes are kept for deliveries (past the 24 h of retries).
const KEEP_ROOM_EVENTS: Duration = Duration::from_secs(7 * 24 * 3600);

/// The wait before retry number `failures` (1 = the first retry): exponential from
/// 1–2 s, doubling to at most 10 minutes, with full jitter in the upper half so a
/// cluster's retries do not arrive in step.
pub fn retry_delay(failures: i32, random: u64) -> Duration {
    let exponent = failures.clamp(1, 20) as u32;
    let ceiling = Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY);
    let half = ceiling / 2;
    let jitter = Duration::from_millis(random % (half.as_millis() as u64 + 1));
    half + jitter
}

/// Labels of the per-outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered` (2xx) or `failed`.
    pub outcome: &'static str,
}

/// Labels of per-webhook series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: String,
}

/// What the deliverer measures.
#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    pub attempts: Family<OutcomeLabel, Counter>,
    /// Milliseconds between the event and its attempt, for the event each webhook
    /// attempted last on this node (0 once it has nothing left): how far behind it is.
    pub oldest_undelivered_ms: Family<WebhookLabel, Gauge>,
    pub latency: LatencyHistogram,
}

/// Delivers this node's share of every webhook's events.
pub struct Deliverer {
    store: Store,
    node: String,
    http: reqwest::Client,
    allow_private: bool,
    /// Deliveries in flight on this node: a slow receiver holds at most this many.
    slots: Arc<Semaphore>,
    metrics: DeliveryMetrics,
    /// The webhooks with a series in `metrics.oldest_undelivered_ms`: a deleted one's is
    /// removed by [`Deliverer::forget_deleted`].
    labelled: Mutex<HashSet<Uuid>>,
    wake: Arc<Notify>,
}

/// Pairs delivered at once by one node.
const CONCURRENT_DELIVERIES: usize = 32;

impl Deliverer {
    pub fn new(
        store: Store,
        node: String,
        allow_private: bool,
        metrics: DeliveryMetrics,
    ) -> Arc<Self> {
        // Never through a proxy (HTTP_PROXY and the like): a proxy resolves the name
        // itself, past the resolver that refuses private addresses.
        let builder = reqwest::Client::builder()
            .user_agent("natter-webhooks")
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .pool_max_idle_per_host(CONCURRENT_DELIVERIES);
        let builder = match allow_private {
            true => builder,
            false => builder.dns_resolver(Arc::new(destination::PublicOnly)),
        };
        Arc::new(Self {
            store,
            node,
            http: builder
                .build()
                .expect("an HTTP client with default TLS settings builds"),
            allow_private,
            slots: Arc::new(Semaphore::new(CONCURRENT_DELIVERIES)),
            metrics,
            labelled: Mutex::default(),
            wake: Arc::default(),
        })
    }

    /// Wakes the deliverer to look for work now (at most once per [`MIN_POLL_WAIT`]).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Polls for due work until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last_trim = Instant::now();
        let mut last_forget = Instant::now();
        let mut wait = MIN_POLL_WAIT;
        // Whether the cluster has any webhook, asked once per MAX_POLL_WAIT: without
        // one, commits do not wake the deliverer and it asks nothing else.
        let mut any_webhooks = true;
        let mut asked_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified(), if any_webhooks => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            // Wakes during a burst of commits collapse into one look.
            tokio::time::sleep(MIN_POLL_WAIT).await;
            if asked_at.is_none_or(|at| at.elapsed() >= MAX_POLL_WAIT) {
                asked_at = Some(Instant::now());
                match self.store.any_webhooks().await {
                    Ok(any) => any_webhooks = any,
                    Err(err) => tracing::warn!(%err, "webhooks: looking for webhooks failed"),
                }
            }
            // Before the early return: the last webhook's deletion is one to see.
            if last_forget.elapsed() >= FORGET_EVERY {
                last_forget = Instant::now();
                if let Err(err) = self.forget_deleted().await {
                    tracing::warn!(%err, "webhooks: looking for deleted webhooks failed");
                }
            }
            if !any_webhooks {
                wait = MAX_POLL_WAIT;
                continue;
            }
            let free = self.slots.available_permits();
            if free > 0 {
                match self
                    .store
                    .claim_webhook_work(&self.node, free as i64, LEASE)
                    .await
                {
                    Ok(claims) => {
                        wait = match claims.is_empty() {
                            true => (wait * 2).min(MAX_POLL_WAIT),
                            false => MIN_POLL_WAIT,
                        };
                        for claim in claims {
                            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let this = self.clone();
                            tokio::spawn(async move {
                                this.deliver(claim).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(err) => tracing::warn!(%err, "webhooks: looking for work failed"),
                }
            }
            if last_trim.elapsed() > Duration::from_secs(60) {
                last_trim = Instant::now();
                if let Err(err) = self.store.trim_room_events(KEEP_ROOM_EVENTS).await {
                    tracing::warn!(%err, "webhooks: trimming room events failed");
                }
            }
        }
    }

    /// Removes the per-webhook series of webhooks that no longer exist, so a deleted
    /// webhook's series do not outlive it (on this node or any other).
    async fn forget_deleted(&self) -> Result<(), StoreError> {
        let labelled: Vec<Uuid> = self.labelled().iter().copied().collect();
        if labelled.is_empty() {
            return Ok(());
        }
        let existing: HashSet<Uuid> = self
            .store
            .existing_webhooks(&labelled)
            .await?
            .into_iter()
            .collect();
        let mut known = self.labelled();
        for id in labelled.into_iter().filter(|id| !existing.contains(id)) {
            known.remove(&id);
            self.metrics.oldest_undelivered_ms.remove(&WebhookLabel {
                webhook: id.to_string(),
            });
        }
        Ok(())
    }

    fn labelled(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.labelled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets how far behind `webhook` is on this node.
    fn set_behind(&self, webhook: Uuid, label: &WebhookLabel, ms: i64) {
        self.labelled().insert(webhook);
        self.metrics
            .oldest_undelivered_ms
            .get_or_create(label)
            .set(ms);
    }

    /// Delivers one claimed (webhook, room) until it is caught up, an attempt fails or
    /// the lease is lost.
    async fn deliver(&self, claim: Claim) {
        if let Err(err) = self.deliver_claim(claim).await {
            tracing::warn!(%err, webhook = %claim.webhook_id, room = %claim.room_id, "webhook delivery interrupted");
            // The lease runs out and the pair is picked up again.
        }
    }

    async fn deliver_claim(&self, mut claim: Claim) -> Result<(), StoreError> {
        let Some(target) = self.store.delivery_target(claim.webhook_id).await? else {
            return self.store.release_webhook_claim(&self.node, &claim).await;
        };
        let secrets: Vec<Secret> = target
            .secrets
            .iter()
            .cloned()
            .map(Secret::from_bytes)
            .collect();
        let label = WebhookLabel {
            webhook: claim.webhook_id.to_string(),
        };
        let mut attempts = Vec::new();
        let mut last_save = Instant::now();
        loop {
            let events = self
                .store
                .webhook_events(claim.room_id, claim.position, READ_BATCH)
                .await?;
            if events.is_empty() {
                self.set_behind(claim.webhook_id, &label, 0);
                if !self
                    .store
                    .save_webhook_progress(&self.node, &claim, LEASE, &attempts)
                    .await?
                {
                    return Ok(());
                }
                return self.store.release_webhook_claim(&self.node, &claim).await;
            }
            for event in events {
                if !wanted(&target, &event.kind) {
                    claim.position = event.position;
                    continue;
                }
                let now = unix_ms();
                self.set_behind(claim.webhook_id, &label, (now - event.timestamp).max(0));
                let body = event.body();
                let started = Instant::now();
                let outcome = self.post(&target, &secrets, &event.id, body).await;
                let elapsed = started.elapsed();
                self.metrics.latency.observe(elapsed);
                let delivered = matches!(outcome, Ok(status) if (200..300).contains(&status));
                self.metrics
                    .attempts
                    .get_or_create(&OutcomeLabel {
                        outcome: if delivered { "delivered" } else { "failed" },
                    })
                    .inc();
                let attempt = Attempt {
                    event_id: event.id.clone(),
                    kind: event.kind.clone(),
                    attempt: claim.failures + 1,
                    status_code: outcome.as_ref().ok().map(|s| i32::from(*s)),
                    error: outcome.as_ref().err().cloned(),
                    duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
                    at: now,
                };
                if !delivered {
                    attempts.push(attempt);
                    let retry_in = retry_delay(claim.failures + 1, rand_core::OsRng.next_u64());
                    return self
                        .store
                        .record_webhook_failure(
                            &self.node,
                            &claim,
                            retry_in,
                            GIVE_UP_AFTER,
                            &attempts,
                        )
                        .await;
                }
                // Every failure is logged; of a run of successes, the latest few.
                if attempts.len() >= 20 {
                    attempts.remove(0);
                }
                attempts.push(attempt);
                claim.position = event.position;
                claim.failures = 0;
                if event.kind == "room.deleted" {
                    self.store
                        .save_webhook_progress(&self.node, &claim, LEASE, &attempts)
                        .await?;
                    return self
                        .store
                        .finish_deleted_room(&claim, target.room_webhook)
                        .await;
                }
                if last_save.elapsed() >= SAVE_EVERY {
                    if !self
                        .store
                        .save_webhook_progress(&self.node, &claim, LEASE, &attempts)
                        .await?
                    {
                        return Ok(());
                    }
                    attempts.clear();
                    last_save = Instant::now();
                }
            }
        }
    }

    /// One attempt: the status the receiver answered, or why there was none.
    async fn post(
        &self,
        target: &DeliveryTarget,
        secrets: &[Secret],
        id: &str,
        body: String,
    ) -> Result<u16, String> {
        // A literal address never reaches the resolver: check it here.
        destination::check_url(&target.url, self.allow_private)
            .map_err(|_| "destination not allowed".to_string())?;
        let timestamp = unix_ms() / 1000;
        let secrets: Vec<&Secret> = secrets.iter().collect();
        let mut request = self
            .http
            .post(&target.url)
            .header("content-type", "application/json");
        for (name, value) in super::signing::headers(&secrets, id, timestamp, body.as_bytes()) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|err| {
            // The receiver's owner reads the delivery log: it says only what kind of
            // failure it was, or it would be a port scanner; the whole chain is logged.
            let reason = failure_kind(&err);
            tracing::info!(url = %target.url, reason, err = %error_chain(&err), "webhook attempt failed");
            reason.to_string()
        })?;
        Ok(response.status().as_u16())
    }
}

/// What the delivery log says of a request that got no answer: coarse enough that a
/// room owner cannot tell a closed port from a filtered one, or read certificate details.
fn failure_kind(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        return "timed out";
    }
    if let Some(kind) = known_cause(err) {
        return kind;
    }
    if err.is_connect() {
        "connect failed"
    } else {
        "request failed"
    }
}

/// The kind of failure a cause in `err`'s chain names, if one does.
fn known_cause(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if err.is::<destination::NotAllowed>() {
        return Some("destination not allowed");
    }
    if err.is::<rustls::Error>() {
        return Some("tls failed");
    }
    // `io::Error` hides what it wraps from `source()`: look inside it too.
    let wrapped = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| known_cause(inner));
    wrapped.or_else(|| err.source().and_then(known_cause))
}

/// `err` and every cause, for the node's log ("error sending request" alone says nothing).
fn error_chain(err: &reqwest::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

/// Whether the webhook subscribed to events of `kind`. Only cluster-wide webhooks
/// receive `room.created`.
fn wanted(target: &DeliveryTarget, kind: &str) -> bool {
    match &target.events {
        Some(kinds) => kinds.iter().any(|k| k == kind),
        None => true,
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A webhook id for a `WEBHOOKS` entry: the same on every node that has the entry.
pub fn cluster_webhook_id(url: &str, secret: &Secret) -> Uuid {
    let mut key = url.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(secret.as_bytes());
    Uuid::new_v5(
        &Uuid::from_u128(0x6e61_7474_6572_4000_8000_7765_6268_6f6b),
        &key,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_within_two_seconds_double_and_stop_growing_at_ten_minutes() {
        for random in [0, 1, 999, u64::MAX / 3, u64::MAX] {
            let first = retry_delay(1, random);
            assert!((Duration::from_secs(1)..=Duration::from_secs(2)).contains(&first));
            let fifth = retry_delay(5, random);
            assert!((Duration::from_secs(16)..=Duration::from_secs(32)).contains(&fifth));
            let late = retry_delay(40, random);
            assert!((Duration::from_secs(300)..=MAX_RETRY_DELAY).contains(&late));
        }
    }
}
