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
//!
//! This module is the handle the use cases call; `view` is the bookkeeping, `kv` the
//! bucket, its write-behind, refresher and watcher.

mod kv;
mod view;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::{bus::Bus, bus::RoomEvent, protocol::PresenceStatus, relay::RoomHub};
use kv::{CLOSED_MAX, key, open_bucket};
pub use view::RoomSet;
use view::{Lease, View};

/// How long start-up waits for JetStream to take the presence bucket.
const JETSTREAM_STARTUP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("cannot open the presence bucket: {0}")]
    Bucket(String),
}

/// This node's presence: its own leases and the cluster view.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    kv: async_nats::jetstream::kv::Store,
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
        let config = async_nats::jetstream::kv::Config {
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
        tokio::spawn(kv::write_behind(Arc::downgrade(&presence.inner), wake));
        tokio::spawn(kv::watch(
            Arc::downgrade(&presence.inner),
            jetstream,
            config,
        ));
        tokio::spawn(kv::refresh(
            Arc::downgrade(&presence.inner),
            bus.connections(),
        ));
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
