//! The KV side of presence: the bucket, the write-behind that puts this node's leases
//! into it, the heartbeat that keeps them alive, and the watcher that folds every node's
//! changes into the `View`.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Inner, view::Lease};

/// How long an entry lives in the bucket without a rewrite: the backstop for a cluster
/// that died whole (no node left to remove a dead node's entries). A live node rewrites
/// its leases every [`LEASE_REFRESH`].
pub(super) const ENTRY_MAX_AGE: Duration = Duration::from_secs(3600);
const LEASE_REFRESH: Duration = Duration::from_secs(1200);

/// The presence bucket, created if it does not exist (first node, or a NATS that lost
/// its state) and brought to this version's settings if it does.
pub(super) async fn open_bucket(
    jetstream: &async_nats::jetstream::Context,
    config: &kv::Config,
) -> Result<kv::Store, String> {
    jetstream
        .create_or_update_key_value(config.clone())
        .await
        .map_err(|e| e.to_string())
}

/// A connection's key: `c.<incarnation>.<connection>`, so a dead node's leases share a
/// prefix.
pub(super) fn key(incarnation: &str, connection: Uuid) -> String {
    format!("c.{incarnation}.{}", connection.simple())
}

/// A node's heartbeat key.
fn heartbeat_key(incarnation: &str) -> String {
    format!("n.{incarnation}")
}

/// The incarnation a connection key belongs to.
fn incarnation_of(key: &str) -> Option<&str> {
    key.strip_prefix("c.")?
        .split_once('.')
        .map(|(incarnation, _)| incarnation)
}

/// Bounds the sets of recently closed connections and buried incarnations.
const CLOSED_MAX: usize = 100_000;

/// Adds `key` to one of those sets, emptying it first once it is full: forgetting an
/// old entry costs at most a stale lease shown again until its node's fate is known.
pub(super) fn remember(set: &std::sync::Mutex<HashSet<String>>, key: String) {
    let mut set = set.lock().expect("not poisoned");
    if set.len() >= CLOSED_MAX {
        set.clear();
    }
    set.insert(key);
}

/// Writes a lease; its new revision, or `None` (logged) if NATS did not take it.
async fn put(kv: &kv::Store, key: &str, lease: &Lease) -> Option<u64> {
    let value = serde_json::to_vec(lease).expect("leases serialise");
    match kv.put(key, value.into()).await {
        Ok(revision) => Some(revision),
        Err(err) => {
            tracing::warn!(error = %err, "writing a presence lease failed; retried on the next heartbeat");
            None
        }
    }
}

/// Leases changed at most this many at a time.
const WRITE_CONCURRENCY: usize = 64;
/// A lease written is not written again for this long: a socket that subscribes to a
/// hundred rooms in a burst rewrites its lease (which lists them all) a few times, not a
/// hundred times with every list in between sent to every node.
const COALESCE: Duration = Duration::from_millis(100);

/// The leases changed since they were written, as the write-behind takes them.
#[derive(Default)]
pub(super) struct Dirty {
    /// For the next round.
    due: HashSet<String>,
    /// Written in the current window, and changed since: written when it ends.
    held: HashSet<String>,
    /// Written in the current window.
    recent: HashSet<String>,
}

impl Dirty {
    /// Marks a lease changed; `true` if the writer should wake for it now.
    pub fn mark(&mut self, key: String) -> bool {
        if self.recent.contains(&key) {
            self.held.insert(key);
            return false;
        }
        self.due.insert(key)
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty() && self.held.is_empty()
    }

    /// The window ended: what it held is due.
    fn end_window(&mut self) {
        self.recent.clear();
        let held = std::mem::take(&mut self.held);
        self.due.extend(held);
    }

    /// The keys for a round, remembered as written in the current window.
    fn take_due(&mut self) -> HashSet<String> {
        let keys = std::mem::take(&mut self.due);
        self.recent.extend(keys.iter().cloned());
        keys
    }
}

/// Writes changed leases to the bucket, so a socket never waits for JetStream.
///
/// Each round takes the keys changed since they were last written and writes their
/// *current* state (the lease, or a delete once the connection is gone): a key changed
/// during a round is written again in a later one, never concurrently with itself, so
/// the bucket ends with the latest state in every case. A key not written lately goes
/// at once (a new connection is online everywhere within a round trip); one written
/// within the last [`COALESCE`] waits for the window to end, so the rest of a burst of
/// subscribes costs one more write. Ends when presence is dropped.
pub(super) async fn write_behind(inner: std::sync::Weak<Inner>, wake: Arc<Notify>) {
    let mut window_ends: Option<tokio::time::Instant> = None;
    loop {
        match window_ends {
            None => wake.notified().await,
            Some(ends) => tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(ends) => {}
            },
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Taken and counted under the lock, so `flush` never sees neither.
        let keys = {
            let mut dirty = inner.dirty.lock().expect("not poisoned");
            if window_ends.is_some_and(|ends| tokio::time::Instant::now() >= ends) {
                window_ends = None;
                dirty.end_window();
            }
            let keys = dirty.take_due();
            inner.writing.store(keys.len(), Ordering::Release);
            keys
        };
        if keys.is_empty() {
            continue;
        }
        window_ends.get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
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
    let Some(lease) = current else {
        if let Err(err) = inner.kv.delete(key).await {
            tracing::warn!(error = %err, "deleting a presence lease failed; it goes with its node");
        }
        return;
    };
    if put(&inner.kv, key, &lease).await.is_none() {
        // Written again at the next heartbeat tick: only this lease, so a loaded NATS
        // is not answered with more writes.
        inner
            .unwritten
            .lock()
            .expect("not poisoned")
            .insert(key.to_string());
    }
}

/// Keeps this node alive in the bucket and finds the nodes that are not.
///
/// Leases are not refreshed one by one: every third of the TTL the node rewrites one
/// small heartbeat entry, and every node takes a node's leases for live while its
/// heartbeat keeps coming. At rest that is one write per node per third of the TTL,
/// however many connections and rooms it holds (each lease used to be rewritten with
/// its whole room list: 20,000 connections in 100 rooms were 8 MB/s into the bucket).
/// A node whose heartbeat has not come for a TTL is dead: every node drops its leases
/// from its view (its users leave), and removes them from the bucket.
///
/// The heartbeat is written only if nobody changed it since (compare-and-set): a node
/// that finds it changed or gone was declared dead while cut off, so it rewrites all its
/// leases, as it does after every NATS reconnect. Ends when presence is dropped.
pub(super) async fn heartbeat(
    inner: std::sync::Weak<Inner>,
    mut connections: tokio::sync::watch::Receiver<u64>,
) {
    let Some(ttl) = inner.upgrade().map(|i| i.ttl) else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(ttl / 3));
    let mut beaten: Option<Instant> = None;
    let mut refreshed = Instant::now();
    connections.mark_unchanged();
    loop {
        let reconnected = tokio::select! {
            _ = tick.tick() => false,
            changed = connections.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let unwritten = std::mem::take(&mut *inner.unwritten.lock().expect("not poisoned"));
        for key in unwritten {
            inner.mark_dirty(key);
        }
        let mut rewrite = reconnected;
        if reconnected || beaten.is_none_or(|at| at.elapsed() >= ttl / 3) {
            beaten = Some(Instant::now());
            rewrite |= beat(&inner).await;
        }
        if rewrite || refreshed.elapsed() >= LEASE_REFRESH {
            refreshed = Instant::now();
            let keys: Vec<String> = inner
                .local
                .lock()
                .expect("not poisoned")
                .keys()
                .cloned()
                .collect();
            for key in keys {
                inner.mark_dirty(key);
            }
        }
        bury_dead(&inner).await;
    }
}

/// Writes this node's heartbeat; `true` if it had been removed or changed by another
/// node (this node was taken for dead, and its leases with it).
async fn beat(inner: &Inner) -> bool {
    let key = heartbeat_key(&inner.incarnation);
    let value = bytes::Bytes::from(inner.node_id.clone());
    let revision = inner.heartbeat.load(Ordering::Acquire);
    let written = match revision {
        0 => inner
            .kv
            .create(&key, value.clone())
            .await
            .map_err(|e| e.to_string()),
        _ => match inner.kv.update(&key, value.clone(), revision).await {
            Ok(written) => Ok(written),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // No other node writes this key; they only remove it. Still there: an
                // earlier write of ours landed after its answer timed out. Gone: this
                // node was taken for dead while cut off, and its leases went with it.
                if let Ok(Some(entry)) = inner.kv.entry(&key).await
                    && entry.operation == kv::Operation::Put
                {
                    inner.heartbeat.store(entry.revision, Ordering::Release);
                    return false;
                }
                tracing::warn!(
                    "this node was taken for dead while cut off; rewriting its presence"
                );
                let written = inner.kv.put(&key, value).await.map_err(|e| e.to_string());
                if let Ok(written) = written {
                    inner.heartbeat.store(written, Ordering::Release);
                }
                return true;
            }
            Err(err) => Err(err.to_string()),
        },
    };
    match written {
        Ok(written) => inner.heartbeat.store(written, Ordering::Release),
        Err(err) => tracing::warn!(error = %err, "presence heartbeat failed"),
    }
    false
}

/// Drops the leases of nodes whose heartbeat has not come for a TTL, here and in the
/// bucket. Only while this node's own heartbeats come back through the watch: a node
/// cut off from NATS hears nobody, and must not take everyone else for dead.
async fn bury_dead(inner: &Inner) {
    let listening = inner
        .own_heartbeat_seen
        .lock()
        .expect("not poisoned")
        .is_some_and(|seen| seen.elapsed() < inner.ttl * 2 / 3);
    if !listening {
        return;
    }
    let dead: Vec<String> = {
        let mut nodes = inner.nodes.lock().expect("not poisoned");
        let dead: Vec<String> = nodes
            .iter()
            .filter(|(_, seen)| seen.elapsed() > inner.ttl)
            .map(|(incarnation, _)| incarnation.clone())
            .collect();
        for incarnation in &dead {
            nodes.remove(incarnation);
        }
        dead
    };
    for incarnation in dead {
        tracing::info!(%incarnation, "a node's heartbeat stopped; its connections are gone");
        bury(inner, &incarnation).await;
    }
}

/// Takes `incarnation` for dead here, and tells the cluster: removes its leases from the
/// bucket and leaves a purge marker on its heartbeat, which every node's watch brings
/// (a stream purge alone reaches no watcher), so the others drop its connections at once
/// rather than after a TTL of their own. Every surviving node may do this; the second
/// finds nothing left.
async fn bury(inner: &Inner, incarnation: &str) {
    inner.forget_node(incarnation);
    let leases = format!("{}c.{incarnation}.>", inner.kv.prefix);
    if let Err(err) = inner.kv.stream.purge().filter(leases).await {
        tracing::warn!(error = %err, "removing a dead node's presence failed; it ages out");
    }
    if let Err(err) = inner.kv.purge(heartbeat_key(incarnation)).await {
        tracing::warn!(error = %err, "marking a dead node's heartbeat failed; others wait a TTL");
    }
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
            let alive = entry.operation == kv::Operation::Put;
            let heartbeat = entry.key.strip_prefix("n.");
            let Some(incarnation) = heartbeat.or_else(|| incarnation_of(&entry.key)) else {
                continue;
            };
            // An earlier run of this node (same `NODE_ID`) still in the bucket is dead:
            // this process replaced it. Buried at once, here and for every node, instead
            // of after a TTL that starts only now.
            if inner.is_predecessor(incarnation) {
                if !alive {
                    // Buried before, by a node that left this marker.
                    inner.forget_node(incarnation);
                } else if !inner.is_buried(incarnation) {
                    tracing::info!(%incarnation, "an earlier run of this node left presence behind; removing it");
                    bury(&inner, incarnation).await;
                }
                continue;
            }
            if heartbeat.is_some() {
                inner.heard_heartbeat(incarnation, alive);
                continue;
            }
            // This node's own connections are already in the view, first-hand. One of
            // them deleted in the bucket is a live connection's lease that another node
            // removed (it took this node for dead while NATS was away): write it again.
            let local = inner
                .local
                .lock()
                .expect("not poisoned")
                .contains_key(&entry.key);
            if local {
                if !alive {
                    inner.mark_dirty(entry.key);
                }
                continue;
            }
            if alive && !inner.lease_of_live_node(incarnation) {
                continue;
            }
            {
                let mut closed = inner.closed.lock().expect("not poisoned");
                if closed.contains(&entry.key) {
                    if !alive {
                        closed.remove(&entry.key);
                    }
                    continue;
                }
            }
            let lease = match alive {
                true => serde_json::from_slice::<Lease>(&entry.value).ok(),
                false => None,
            };
            let changes = {
                let mut view = inner.view.write().expect("not poisoned");
                let unchanged = lease
                    .as_ref()
                    .is_some_and(|l| view.leases.get(&entry.key) == Some(l));
                match unchanged {
                    // A periodic rewrite.
                    true => Vec::new(),
                    false => view.apply(&entry.key, lease),
                }
            };
            inner.announce(changes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_changed_again_within_the_window_waits_for_it_and_others_do_not() {
        let mut dirty = Dirty::default();
        assert!(dirty.mark("c.a".into()), "a first change wakes the writer");
        assert_eq!(dirty.take_due(), HashSet::from(["c.a".to_string()]));
        // Written in this window: its next changes wait, as one.
        assert!(!dirty.mark("c.a".into()));
        assert!(!dirty.mark("c.a".into()));
        assert!(!dirty.is_empty(), "flush waits for it");
        // Another connection's first change still goes at once.
        assert!(dirty.mark("c.b".into()));
        assert_eq!(dirty.take_due(), HashSet::from(["c.b".to_string()]));
        dirty.end_window();
        assert_eq!(dirty.take_due(), HashSet::from(["c.a".to_string()]));
        dirty.end_window();
        assert!(dirty.is_empty());
    }
}
