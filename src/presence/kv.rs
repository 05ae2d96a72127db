//! The KV side of presence: the bucket, the write-behind that puts this node's leases
//! into it, the refresher that keeps them alive, and the watcher that folds every node's
//! changes into the `View`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Inner, view::Lease};

/// The presence bucket, created if it does not exist (first node, or a NATS that lost
/// its state).
pub(super) async fn open_bucket(
    jetstream: &async_nats::jetstream::Context,
    config: &kv::Config,
) -> Result<kv::Store, String> {
    match jetstream.get_key_value(&config.bucket).await {
        Ok(kv) => Ok(kv),
        Err(_) => jetstream
            .create_key_value(config.clone())
            .await
            .map_err(|e| e.to_string()),
    }
}

pub(super) fn key(connection: Uuid) -> String {
    format!("c.{}", connection.simple())
}

/// Bounds the set of recently closed connections.
pub(super) const CLOSED_MAX: usize = 100_000;

/// Writes a lease; its new revision, or `None` (logged) if NATS did not take it.
async fn put(kv: &kv::Store, key: &str, lease: &Lease) -> Option<u64> {
    let value = serde_json::to_vec(lease).expect("leases serialise");
    match kv.put(key, value.into()).await {
        Ok(revision) => Some(revision),
        Err(err) => {
            tracing::warn!(error = %err, "writing a presence lease failed; retried on refresh");
            None
        }
    }
}

/// Leases changed at most this many at a time.
const WRITE_CONCURRENCY: usize = 64;

/// Writes changed leases to the bucket, so a socket never waits for JetStream.
///
/// Each round takes every key changed since the last round and writes its *current*
/// state (the lease, or a delete once the connection is gone): a key changed during a
/// round is written again in the next one, never concurrently with itself, so the
/// bucket ends with the latest state in every case, and bursts of changes to one
/// connection (connect, then subscribe) cost one write. Ends when presence is dropped.
pub(super) async fn write_behind(inner: std::sync::Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Taken and counted under the lock, so `flush` never sees neither.
        let keys = {
            let mut dirty = inner.dirty.lock().expect("not poisoned");
            let keys = std::mem::take(&mut *dirty);
            inner.writing.store(keys.len(), Ordering::Release);
            keys
        };
        futures_util::stream::iter(keys)
            .for_each_concurrent(WRITE_CONCURRENCY, |key| {
                let inner = &inner;
                async move {
                    write_current(inner, &key).await;
                    inner.writing.fetch_sub(1, Ordering::Release);
                }
            })
            .await;
    }
}

/// Writes one connection's current lease, or deletes it if the connection is gone.
async fn write_current(inner: &Inner, key: &str) {
    let current = inner.local.lock().expect("not poisoned").get(key).cloned();
    let Some((lease, revision)) = current else {
        if let Err(err) = inner.kv.delete(key).await {
            tracing::warn!(error = %err, "deleting a presence lease failed; it expires by itself");
        }
        return;
    };
    if let Some(written) = put(&inner.kv, key, &lease).await {
        let mut local = inner.local.lock().expect("not poisoned");
        if let Some(entry) = local.get_mut(key) {
            entry.1 = written.max(revision);
        }
    }
}

/// Refreshes a lease only if nothing rewrote it since `revision` (a concurrent
/// subscription change wins over the refresher's older copy).
async fn refresh_one(inner: &Inner, key: &str, lease: &Lease, revision: u64) {
    let value = serde_json::to_vec(lease).expect("leases serialise");
    let written = match inner.kv.update(key, value.into(), revision).await {
        Ok(written) => Some(written),
        Err(_) => {
            // Either rewritten meanwhile (then our copy is stale: skip) or expired while
            // NATS was away (then write it afresh).
            let current = inner.local.lock().expect("not poisoned").get(key).cloned();
            match current {
                Some((current, rev)) if rev == revision => put(&inner.kv, key, &current).await,
                _ => None,
            }
        }
    };
    if let Some(written) = written {
        let mut local = inner.local.lock().expect("not poisoned");
        if let Some(entry) = local.get_mut(key)
            && entry.1 <= revision
        {
            entry.1 = written;
        }
    }
}

/// Keeps this node's leases alive, every third of the TTL and at once when NATS comes
/// back (leases may have expired while it was away; the sooner they are rewritten, the
/// shorter other nodes show these users offline). Ends when presence is dropped.
pub(super) async fn refresh(
    inner: std::sync::Weak<Inner>,
    mut connections: tokio::sync::watch::Receiver<u64>,
) {
    let Some(period) = inner.upgrade().map(|i| i.ttl / 3) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    connections.mark_unchanged();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = connections.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let leases: Vec<(String, Lease, u64)> = inner
            .local
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(key, (lease, revision))| (key.clone(), lease.clone(), *revision))
            .collect();
        futures_util::stream::iter(leases)
            .for_each_concurrent(64, |(key, lease, revision)| {
                let inner = &inner;
                async move { refresh_one(inner, &key, &lease, revision).await }
            })
            .await;
        sweep_expired(&inner);
    }
}

/// Drops leases that have not been refreshed for longer than the TTL, in case an
/// expiry marker was missed while this node was cut off from NATS.
fn sweep_expired(inner: &Inner) {
    let horizon = inner.ttl + inner.ttl / 3;
    let local = inner.local.lock().expect("not poisoned");
    let mut view = inner.view.write().expect("not poisoned");
    let stale: Vec<String> = view
        .leases
        .iter()
        .filter(|(key, (_, seen))| seen.elapsed() > horizon && !local.contains_key(*key))
        .map(|(key, _)| key.clone())
        .collect();
    let mut changes = Vec::new();
    for key in stale {
        changes.extend(view.apply(&key, None));
    }
    drop(view);
    drop(local);
    inner.announce(changes);
}

/// Follows every change to the bucket, starting from its current contents; restarts the
/// watch if it ends (NATS reconnects), recreating the bucket if NATS lost it. Ends when
/// presence is dropped.
pub(super) async fn watch(
    inner: std::sync::Weak<Inner>,
    jetstream: async_nats::jetstream::Context,
    config: kv::Config,
) {
    loop {
        let Some(kv) = inner.upgrade().map(|i| i.kv.clone()) else {
            return;
        };
        let mut entries = match kv.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(error = %err, "presence watch failed; retrying");
                if let Err(err) = open_bucket(&jetstream, &config).await {
                    tracing::warn!(error = %err, "presence bucket unavailable");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(kv);
        while let Some(entry) = entries.next().await {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let Ok(entry) = entry else {
                break;
            };
            let lease = match entry.operation {
                kv::Operation::Put => serde_json::from_slice::<Lease>(&entry.value).ok(),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            // This node's own connections are already in the view, first-hand. One of
            // them deleted in the bucket is a live connection's lease that expired (NATS
            // was away longer than the TTL): write it again now, not at the next refresh,
            // or other nodes show the user offline until then.
            let local = inner
                .local
                .lock()
                .expect("not poisoned")
                .contains_key(&entry.key);
            if local {
                if lease.is_none() {
                    inner.mark_dirty(entry.key);
                }
                continue;
            }
            {
                let mut closed = inner.closed.lock().expect("not poisoned");
                if closed.contains(&entry.key) {
                    if lease.is_none() {
                        closed.remove(&entry.key);
                    }
                    continue;
                }
            }
            let changes = {
                let mut view = inner.view.write().expect("not poisoned");
                let unchanged = lease
                    .as_ref()
                    .is_some_and(|l| view.leases.get(&entry.key).is_some_and(|(old, _)| old == l));
                if unchanged {
                    // A refresh: just note that it is alive.
                    if let Some((_, seen)) = view.leases.get_mut(&entry.key) {
                        *seen = Instant::now();
                    }
                    Vec::new()
                } else {
                    view.apply(&entry.key, lease)
                }
            };
            inner.announce(changes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
