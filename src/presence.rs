//! Presence (SPEC §1.6): who is online, and who is live in which room, cluster-wide.
//!
//! Every connection has one entry in a JetStream KV bucket, `c.<connection id>`, holding
//! its user, node and subscribed rooms. The owning node writes it on connect and on every
//! subscription change, refreshes it every third of the TTL, and deletes it on
//! disconnect. The bucket's max age is the TTL (15 s by default), so the entries of a
//! node that dies expire by themselves, with no cleanup; the bucket's limit markers make
//! those expiries visible to watchers.
//!
//! Every node watches the whole bucket and keeps a [`View`] in memory, so presence reads
//! cost no round trip. The view also turns changes into `presence` events: a user
//! `joined` a room when their first live subscription to it appears anywhere, and `left`
//! when the last one goes. Each node delivers those to its own sockets only, since every
//! node sees the same changes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{bus::Bus, bus::RoomEvent, protocol::PresenceStatus, relay::RoomHub};

/// How long start-up waits for JetStream to take the presence bucket.
const JETSTREAM_STARTUP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("cannot open the presence bucket: {0}")]
    Bucket(String),
}

/// What one connection's KV entry says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Lease {
    user_id: Uuid,
    node_id: String,
    rooms: RoomSet,
}

/// A set of room ids as a sorted vector: a connection usually has a handful, and every
/// connection keeps its set twice (its session and its lease), so the set should cost
/// 16 bytes a room rather than a tree node's 200.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<Uuid>")]
pub struct RoomSet(Vec<Uuid>);

impl From<Vec<Uuid>> for RoomSet {
    fn from(mut rooms: Vec<Uuid>) -> Self {
        rooms.sort_unstable();
        rooms.dedup();
        Self(rooms)
    }
}

impl RoomSet {
    pub fn contains(&self, room_id: &Uuid) -> bool {
        self.0.binary_search(room_id).is_ok()
    }

    /// Adds a room; `false` if it was there already.
    pub fn insert(&mut self, room_id: Uuid) -> bool {
        match self.0.binary_search(&room_id) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, room_id);
                true
            }
        }
    }

    /// Removes a room; `false` if it was not there.
    pub fn remove(&mut self, room_id: &Uuid) -> bool {
        match self.0.binary_search(room_id) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Uuid> {
        self.0.iter()
    }

    /// The rooms of `self` that are not in `other`.
    fn difference<'a>(&'a self, other: &'a RoomSet) -> impl Iterator<Item = &'a Uuid> {
        self.iter().filter(move |room| !other.contains(room))
    }
}

impl IntoIterator for RoomSet {
    type Item = Uuid;
    type IntoIter = std::vec::IntoIter<Uuid>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The cluster's presence as this node last saw it.
#[derive(Default)]
struct View {
    leases: HashMap<String, (Lease, Instant)>,
    /// Live connections per user.
    online: HashMap<Uuid, usize>,
    /// Live subscriptions per room and user.
    rooms: HashMap<Uuid, HashMap<Uuid, usize>>,
}

impl View {
    /// Replaces (or with `None` removes) a connection's lease; returns the presence
    /// changes it causes.
    fn apply(&mut self, key: &str, lease: Option<Lease>) -> Vec<(Uuid, Uuid, PresenceStatus)> {
        let mut changes = Vec::new();
        let old = match lease {
            Some(lease) => self.leases.insert(key.to_string(), (lease, Instant::now())),
            None => self.leases.remove(key),
        };
        let new = self.leases.get(key).map(|(lease, _)| lease);
        let no_rooms = RoomSet::default();
        if let Some((old, _)) = &old {
            let kept = new.map_or(&no_rooms, |n| &n.rooms);
            for room in old.rooms.difference(kept) {
                let Some(users) = self.rooms.get_mut(room) else {
                    continue;
                };
                if decrement(users, old.user_id) {
                    changes.push((*room, old.user_id, PresenceStatus::Left));
                }
                if users.is_empty() {
                    self.rooms.remove(room);
                }
            }
            if new.is_none() {
                decrement(&mut self.online, old.user_id);
            }
        }
        if let Some(new) = new {
            let before = old.as_ref().map_or(&no_rooms, |(o, _)| &o.rooms);
            for room in new.rooms.difference(before) {
                let users = self.rooms.entry(*room).or_default();
                let count = users.entry(new.user_id).or_default();
                *count += 1;
                if *count == 1 {
                    changes.push((*room, new.user_id, PresenceStatus::Joined));
                }
            }
            if old.is_none() {
                *self.online.entry(new.user_id).or_default() += 1;
            }
        }
        changes
    }
}

/// Decrements `map[key]`, removing it at zero; `true` when it reached zero.
fn decrement(map: &mut HashMap<Uuid, usize>, key: Uuid) -> bool {
    match map.get_mut(&key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        Some(_) => {
            map.remove(&key);
            true
        }
        None => false,
    }
}

/// This node's presence: its own leases and the cluster view.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    node_id: String,
    ttl: Duration,
    /// The leases this node owns, by connection key, with the KV revision last written.
    /// The view already reflects them, so the watcher skips their echoes.
    local: Mutex<HashMap<String, (Lease, u64)>>,
    /// Connections closed here whose deletion the watcher has not seen yet; their
    /// earlier writes, still arriving, must not bring them back.
    closed: Mutex<std::collections::HashSet<String>>,
    view: RwLock<View>,
    hub: RoomHub,
    /// Connections whose lease changed since the writer last wrote it (see
    /// [`write_behind`]).
    dirty: Mutex<std::collections::HashSet<String>>,
    /// Wakes the writer when `dirty` gains a key.
    wake: Arc<Notify>,
    /// Keys the writer is writing now; with `dirty`, what [`Presence::flush`] waits for.
    writing: AtomicUsize,
}

impl Presence {
    /// Opens (creating if needed) the presence bucket and starts the watcher and the
    /// refresher.
    pub async fn start(
        bus: &Bus,
        node_id: &str,
        ttl: Duration,
        replicas: usize,
        hub: RoomHub,
    ) -> Result<Self, PresenceError> {
        let jetstream = bus.jetstream();
        let bucket = format!("{}_presence", bus.prefix().replace('.', "_"));
        let config = kv::Config {
            bucket: bucket.clone(),
            history: 1,
            max_age: ttl,
            num_replicas: replicas,
            limit_markers: Some(ttl.max(Duration::from_secs(1))),
            ..Default::default()
        };
        // A NATS cluster that is starting alongside the node (compose, Kubernetes) may
        // not have placed JetStream yet ("no suitable peers"): wait for it, bounded.
        let deadline = tokio::time::Instant::now() + JETSTREAM_STARTUP_WAIT;
        let kv = loop {
            match open_bucket(&jetstream, &config).await {
                Ok(kv) => break kv,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %err, "presence bucket not available yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(PresenceError::Bucket(err)),
            }
        };
        let wake = Arc::new(Notify::new());
        let presence = Self {
            inner: Arc::new(Inner {
                kv,
                node_id: node_id.to_string(),
                ttl,
                local: Mutex::new(HashMap::new()),
                closed: Mutex::new(std::collections::HashSet::new()),
                view: RwLock::new(View::default()),
                hub,
                dirty: Mutex::default(),
                wake: wake.clone(),
                writing: AtomicUsize::new(0),
            }),
        };
        tokio::spawn(write_behind(Arc::downgrade(&presence.inner), wake));
        tokio::spawn(watch(Arc::downgrade(&presence.inner), jetstream, config));
        tokio::spawn(refresh(Arc::downgrade(&presence.inner), bus.connections()));
        Ok(presence)
    }

    /// Records a new connection of `user_id`.
    pub fn connect(&self, connection: Uuid, user_id: Uuid) {
        let lease = Lease {
            user_id,
            node_id: self.inner.node_id.clone(),
            rooms: RoomSet::default(),
        };
        self.store_lease(connection, lease);
    }

    /// Records the rooms a connection is subscribed to now.
    pub fn set_rooms(&self, connection: Uuid, rooms: RoomSet) {
        let lease = {
            let mut local = self.inner.local.lock().expect("not poisoned");
            let Some((lease, _)) = local.get_mut(&key(connection)) else {
                return;
            };
            lease.rooms = rooms;
            lease.clone()
        };
        self.store_lease(connection, lease);
    }

    /// Removes a closed connection.
    pub fn disconnect(&self, connection: Uuid) {
        let key = key(connection);
        self.inner.local.lock().expect("not poisoned").remove(&key);
        {
            let mut closed = self.inner.closed.lock().expect("not poisoned");
            if closed.len() >= CLOSED_MAX {
                closed.clear();
            }
            closed.insert(key.clone());
        }
        let changes = self
            .inner
            .view
            .write()
            .expect("not poisoned")
            .apply(&key, None);
        self.inner.announce(changes);
        self.inner.mark_dirty(key);
    }

    /// Applies a lease to this node's view at once, so its own reads are immediately
    /// consistent, and leaves the KV write to the writer.
    fn store_lease(&self, connection: Uuid, lease: Lease) {
        let key = key(connection);
        {
            let mut local = self.inner.local.lock().expect("not poisoned");
            let revision = local.get(&key).map_or(0, |(_, revision)| *revision);
            local.insert(key.clone(), (lease.clone(), revision));
        }
        let changes = self
            .inner
            .view
            .write()
            .expect("not poisoned")
            .apply(&key, Some(lease));
        self.inner.announce(changes);
        self.inner.mark_dirty(key);
    }

    /// Waits, at most `limit`, until every lease change so far is written to the KV
    /// bucket (at shutdown, so other nodes see this node's users leave at once).
    pub async fn flush(&self, limit: Duration) {
        let written = async {
            loop {
                let idle = {
                    let dirty = self.inner.dirty.lock().expect("not poisoned");
                    dirty.is_empty() && self.inner.writing.load(Ordering::Acquire) == 0
                };
                if idle {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(limit, written).await.is_err() {
            tracing::warn!("presence changes not all written before shutdown; they expire");
        }
    }

    /// Whether `user_id` has a live connection anywhere.
    pub fn is_online(&self, user_id: Uuid) -> bool {
        self.inner
            .view
            .read()
            .expect("not poisoned")
            .online
            .contains_key(&user_id)
    }

    /// Everyone online, in id order.
    pub fn online_users(&self) -> Vec<Uuid> {
        let view = self.inner.view.read().expect("not poisoned");
        let mut users: Vec<Uuid> = view.online.keys().copied().collect();
        users.sort_unstable();
        users
    }

    /// Users with a live subscription to `room_id`, in id order.
    pub fn room_users(&self, room_id: Uuid) -> Vec<Uuid> {
        let view = self.inner.view.read().expect("not poisoned");
        let mut users: Vec<Uuid> = view
            .rooms
            .get(&room_id)
            .map(|users| users.keys().copied().collect())
            .unwrap_or_default();
        users.sort_unstable();
        users
    }
}

impl Inner {
    fn mark_dirty(&self, key: String) {
        self.dirty.lock().expect("not poisoned").insert(key);
        self.wake.notify_one();
    }

    fn announce(&self, changes: Vec<(Uuid, Uuid, PresenceStatus)>) {
        for (room_id, user_id, status) in changes {
            self.hub
                .deliver_local(RoomEvent::presence(room_id, user_id, status));
        }
    }
}

/// The presence bucket, created if it does not exist (first node, or a NATS that lost
/// its state).
async fn open_bucket(
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

fn key(connection: Uuid) -> String {
    format!("c.{}", connection.simple())
}

/// Bounds the set of recently closed connections.
const CLOSED_MAX: usize = 100_000;

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
async fn write_behind(inner: std::sync::Weak<Inner>, wake: Arc<Notify>) {
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
async fn refresh(
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
async fn watch(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(user: Uuid, rooms: &[Uuid]) -> Option<Lease> {
        Some(Lease {
            user_id: user,
            node_id: "n".into(),
            rooms: rooms.to_vec().into(),
        })
    }

    #[test]
    fn the_first_subscription_joins_and_the_last_one_leaves() {
        let mut view = View::default();
        let (user, room) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(view.apply("c.1", lease(user, &[])), vec![]);
        assert_eq!(
            view.apply("c.1", lease(user, &[room])),
            vec![(room, user, PresenceStatus::Joined)]
        );
        // A second device in the same room changes nothing.
        assert_eq!(view.apply("c.2", lease(user, &[room])), vec![]);
        assert_eq!(view.apply("c.1", None), vec![]);
        assert!(view.online.contains_key(&user));
        assert_eq!(
            view.apply("c.2", None),
            vec![(room, user, PresenceStatus::Left)]
        );
        assert!(view.online.is_empty());
        assert!(view.rooms.is_empty());
    }

    #[test]
    fn a_room_set_stays_sorted_and_unique_however_it_is_built() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut set: RoomSet = serde_json::from_value(serde_json::json!([c, a, c, b])).unwrap();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![a, b, c]);
        assert!(!set.insert(b));
        assert!(set.remove(&b));
        assert!(!set.remove(&b));
        assert!(set.insert(b));
        assert_eq!(
            serde_json::to_value(&set).unwrap(),
            serde_json::json!([a, b, c])
        );
        assert_eq!(set.len(), 3);
    }
}
