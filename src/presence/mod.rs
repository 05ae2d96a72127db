//! Presence (SPEC §1.6): who is online, and who is live in which room, cluster-wide.
//!
//! Every connection has one entry in a JetStream KV bucket,
//! `c.<incarnation>.<connection id>`, holding its user, node and subscribed rooms; the
//! incarnation is this run of this node (its id and a random suffix). The owning node
//! writes it on connect and on every subscription change, and deletes it on disconnect.
//! Liveness is per node, not per entry: each node rewrites one heartbeat entry,
//! `n.<incarnation>`, every third of the TTL (10 s by default), and a node whose
//! heartbeat stops for a TTL is dead: every node drops its connections (their users
//! leave) and removes them from the bucket. So a silent cluster writes one small entry
//! per node per few seconds however many connections and rooms it holds, and a dead
//! node's users still go offline within a TTL and a second (`kv::heartbeat`). The node
//! that buries it leaves a purge marker on its heartbeat, so every other node drops its
//! connections on hearing it rather than after a TTL of its own; and a node restarted
//! under the same id buries its earlier run as soon as its watch brings that run's
//! entries: it knows them dead, and a TTL counted from its own start would show them for
//! longer than the others do.
//!
//! Every node watches the whole bucket and keeps a [`View`] in memory, so presence reads
//! cost no round trip. The view also turns changes into `presence` events: a user
//! `joined` a room when their first live subscription to it appears anywhere, and `left`
//! when the last one goes. Each node delivers those to its own sockets only, since every
//! node sees the same changes.
//!
//! This module is the handle the use cases call; `view` is the bookkeeping, `kv` the
//! bucket, its write-behind, heartbeat and watcher.

mod kv;
mod view;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::{bus::Bus, bus::RoomEvent, protocol::PresenceStatus, relay::RoomHub};
use kv::{ENTRY_MAX_AGE, open_bucket};
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
    /// This run of this node: its leases' owner in the bucket.
    incarnation: String,
    ttl: Duration,
    /// The leases this node owns, by connection key. The view already reflects them, so
    /// the watcher skips their echoes.
    local: Mutex<HashMap<String, Lease>>,
    /// Other nodes' incarnations, and when their heartbeat (or, for one not heard yet, a
    /// lease) last came.
    nodes: Mutex<HashMap<String, Instant>>,
    /// Incarnations taken for dead: their leases still arriving are ignored.
    buried: Mutex<HashSet<String>>,
    /// When the watch last brought back this node's own heartbeat (the watch is live).
    own_heartbeat_seen: Mutex<Option<Instant>>,
    /// The revision of this node's heartbeat entry (0: not written yet).
    heartbeat: AtomicU64,
    /// Leases whose write failed: the heartbeat's next tick writes them again.
    unwritten: Mutex<HashSet<String>>,
    /// Connections closed here whose deletion the watcher has not seen yet; their
    /// earlier writes, still arriving, must not bring them back.
    closed: Mutex<std::collections::HashSet<String>>,
    view: RwLock<View>,
    hub: RoomHub,
    /// Connections whose lease changed since the writer last wrote it (see
    /// [`write_behind`]).
    dirty: Mutex<kv::Dirty>,
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
            // Liveness is the heartbeat's; the age limit only clears a cluster that
            // died whole.
            max_age: ENTRY_MAX_AGE,
            num_replicas: replicas,
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
                incarnation: incarnation(node_id),
                ttl,
                local: Mutex::new(HashMap::new()),
                nodes: Mutex::default(),
                buried: Mutex::default(),
                own_heartbeat_seen: Mutex::default(),
                heartbeat: AtomicU64::new(0),
                unwritten: Mutex::default(),
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
        tokio::spawn(kv::heartbeat(
            Arc::downgrade(&presence.inner),
            bus.connections(),
        ));
        Ok(presence)
    }

    /// Records a new connection of `user_id`.
    pub fn connect(&self, connection: Uuid, user_id: Uuid) {
        let lease = Lease {
            user_id,
            node_id: self.inner.incarnation.clone(),
            rooms: RoomSet::default(),
        };
        self.store_lease(connection, lease);
    }

    /// Records the rooms a connection is subscribed to now.
    pub fn set_rooms(&self, connection: Uuid, rooms: RoomSet) {
        let lease = {
            let mut local = self.inner.local.lock().expect("not poisoned");
            let Some(lease) = local.get_mut(&self.inner.key(connection)) else {
                return;
            };
            lease.rooms = rooms;
            lease.clone()
        };
        self.store_lease(connection, lease);
    }

    /// Removes a closed connection.
    pub fn disconnect(&self, connection: Uuid) {
        let key = self.inner.key(connection);
        self.inner.local.lock().expect("not poisoned").remove(&key);
        kv::remember(&self.inner.closed, key.clone());
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
        let key = self.inner.key(connection);
        self.inner
            .local
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), lease.clone());
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
        view.rooms
            .get(&room_id)
            .map(|users| users.users().collect())
            .unwrap_or_default()
    }
}

/// `<node id>-<random>`, in the characters a KV key allows.
fn incarnation(node_id: &str) -> String {
    let node: String = node_id
        .chars()
        .take(64)
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                true => c,
                false => '_',
            },
        )
        .collect();
    format!("{node}-{:08x}", Uuid::new_v4().as_u128() as u32)
}

/// Whether two incarnations are runs of the same node: `<node id>-<random>` with the
/// same node id (as [`incarnation`] spells it).
fn same_node(a: &str, b: &str) -> bool {
    match (a.rsplit_once('-'), b.rsplit_once('-')) {
        (Some((node_a, _)), Some((node_b, _))) => node_a == node_b,
        _ => false,
    }
}

impl Inner {
    fn key(&self, connection: Uuid) -> String {
        kv::key(&self.incarnation, connection)
    }

    /// A node's heartbeat entry was written (`alive`) or removed.
    fn heard_heartbeat(&self, incarnation: &str, alive: bool) {
        if incarnation == self.incarnation {
            if alive {
                *self.own_heartbeat_seen.lock().expect("not poisoned") = Some(Instant::now());
            }
            return;
        }
        if !alive {
            // Purged by a node that took it for dead (or removed at the age limit): its
            // connections are gone now, not a TTL from now.
            self.forget_node(incarnation);
            return;
        }
        self.buried
            .lock()
            .expect("not poisoned")
            .remove(incarnation);
        self.nodes
            .lock()
            .expect("not poisoned")
            .insert(incarnation.to_string(), Instant::now());
    }

    /// Takes `incarnation` for dead in this node's view: its connections leave, and its
    /// leases still arriving are ignored.
    fn forget_node(&self, incarnation: &str) {
        self.nodes.lock().expect("not poisoned").remove(incarnation);
        kv::remember(&self.buried, incarnation.to_string());
        let changes = self
            .view
            .write()
            .expect("not poisoned")
            .drop_prefix(&format!("c.{incarnation}."));
        self.announce(changes);
    }

    fn is_buried(&self, incarnation: &str) -> bool {
        self.buried
            .lock()
            .expect("not poisoned")
            .contains(incarnation)
    }

    /// Whether `incarnation` is an earlier run of this node: the same `NODE_ID`, another
    /// run, and seen before this run's own first heartbeat came back through the watch
    /// (which brings the bucket in write order, so it was written before this run began
    /// to beat). Two live nodes given the same `NODE_ID` by mistake cost the older one's
    /// users a few seconds offline once, when the younger starts: the older finds its
    /// heartbeat purged and writes everything again, and the younger, beating by then,
    /// no longer takes it for its predecessor.
    fn is_predecessor(&self, incarnation: &str) -> bool {
        incarnation != self.incarnation
            && same_node(incarnation, &self.incarnation)
            && self
                .own_heartbeat_seen
                .lock()
                .expect("not poisoned")
                .is_none()
    }

    /// Whether a lease of `incarnation` counts: not if the node was taken for dead. A
    /// node not heard of yet (its heartbeat may come after its first leases) has a TTL
    /// to show its heartbeat.
    fn lease_of_live_node(&self, incarnation: &str) -> bool {
        if incarnation == self.incarnation {
            return true;
        }
        if self
            .buried
            .lock()
            .expect("not poisoned")
            .contains(incarnation)
        {
            return false;
        }
        self.nodes
            .lock()
            .expect("not poisoned")
            .entry(incarnation.to_string())
            .or_insert_with(Instant::now);
        true
    }

    fn mark_dirty(&self, key: String) {
        if self.dirty.lock().expect("not poisoned").mark(key) {
            self.wake.notify_one();
        }
    }

    fn announce(&self, changes: Vec<(Uuid, Uuid, PresenceStatus)>) {
        for (room_id, user_id, status) in changes {
            self.hub
                .deliver_local(RoomEvent::presence(room_id, user_id, status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_one_node_id_are_told_apart_from_other_nodes_whatever_dashes_the_id_holds() {
        let (first, second) = (incarnation("eu-node-1"), incarnation("eu-node-1"));
        assert_ne!(first, second, "each run is its own incarnation");
        assert!(same_node(&first, &second));
        assert!(!same_node(&first, &incarnation("eu-node-10")));
        assert!(!same_node(&first, &incarnation("eu-node")));
        assert!(!same_node(&first, &incarnation("node-1")));
        assert!(!same_node("no dash", "no dash"));
    }
}
