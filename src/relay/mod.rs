//! The relay: per-room fan-out of events to this node's sockets, with interest routing
//! and gap repair.
//!
//! A room that has local subscribers is an entry in the [`RoomHub`] ([`room::Room`]):
//! plain data under its shard's lock, with no task, timer or NATS subscription of its
//! own, so a silent room costs bytes, not wake-ups. The hub subscribes to a room's
//! NATS shard (1/256 of the rooms, [`SHARDS`]) while it serves a room in it, takes the
//! events this node publishes itself straight from [`Bus`] (NATS does not echo them),
//! and forwards each event to every local subscriber's bounded queue with `try_send`: a
//! socket that cannot keep up is closed as too slow (4008), never waited for.
//!
//! **Exactly once, in order, on every node (SPEC §1.3)** is enforced here. Each room
//! knows the highest `seq` it has delivered. A message with a lower or equal `seq` is a
//! duplicate and is dropped; one with a higher `seq` than the next is held: the missing
//! ones are usually on their way (this node's own messages skip NATS, so they overtake
//! other nodes' earlier ones), and if they have not come within the reorder wait, NATS
//! lost them and the range is read from Postgres and delivered first. Because `seq` is
//! assigned under the room row's lock, every `seq` below a published one is already
//! committed, so the range is always complete. A lost *last* message has no successor
//! to reveal it, so the hub also compares the rooms that changed lately (Postgres's
//! `room_activity`) with their `last_seq` as it was one [`CATCH_UP_INTERVAL`] earlier,
//! and every room it serves right after NATS reconnects ([`upkeep`]).
//!
//! **Resume without a window (SPEC §1.4)** starts here too: a join is answered with the
//! room's position, in the socket's queue, ahead of every later event; the socket's
//! writer replays from Postgres up to that position before reading on (`api::ws`).

pub mod queue;
mod reorder;
mod room;
mod upkeep;

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

use room::{Ctx, Room, Wants};

use crate::{
    bus::{Bus, RoomEvent, SHARDS, room_of_subject, shard_of},
    histogram::LatencyHistogram,
    model::{AccessLost, CloseReason},
    store::Store,
};

/// How often rooms that changed lately are compared with Postgres to find lost
/// trailing messages.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(2);
/// A typing indicator not refreshed for this long ends (SPEC §1.6).
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// Joins that may wait for one room's position before more are refused as busy.
const MAX_WAITING_JOINS: usize = 4096;

/// What the relay counts for `/metrics`.
#[derive(Default)]
pub struct RelayStats {
    /// Room events that arrived: from NATS, or published by this node.
    pub received: Counter,
    /// Events queued to sockets, one per socket.
    pub delivered: Counter,
    /// Gaps (and lost trailing messages) filled from Postgres.
    pub gap_repairs: Counter,
    /// Messages those repairs delivered.
    pub repaired: Counter,
    /// Sockets closed with 4008 because their queue was full.
    pub slow_closes: Counter,
    /// From a message's `created_at` to its hand-off to this node's sockets.
    pub fanout_latency: LatencyHistogram,
}

fn bump(counter: &Counter, by: u64) {
    counter.inc_by(by);
}

/// Identifies one socket on this node.
pub type SocketId = u64;

/// What a socket's writer receives, in order.
#[derive(Debug)]
pub enum Outbound {
    /// An event of a subscribed room.
    Event(Arc<RoomEvent>),
    /// The room accepted the subscription (boxed: rare, and every queue slot is as
    /// large as the largest variant).
    Subscribed(Box<Joined>),
    /// The subscription ended, as the socket asked.
    Unsubscribed { room_id: Uuid },
    /// The subscription ended because the user lost access to the room (boxed: rare).
    Revoked(Box<(Uuid, AccessLost)>),
    /// A reply to one of the socket's own frames, already serialised.
    Frame(String),
}

// Every item waiting in a socket's queue (`queue`) is a slot of this size; keep it small.
const _: () = assert!(std::mem::size_of::<Outbound>() <= 24);

/// A subscription the room accepted: everything after `last_seq` follows live, and the
/// socket replays `(since_seq, last_seq]` first.
#[derive(Debug)]
pub struct Joined {
    pub room_id: Uuid,
    pub since_seq: Option<i64>,
    pub last_seq: i64,
}

/// Asks a socket to close for a [`CloseReason`], from anywhere: a room whose queue to it
/// is full ([`CloseReason::TooSlow`]), the socket's own connection (expiry, idle, the
/// drain). The first request wins. Rooms also
/// tell the socket here which of its subscriptions they ended because its user lost
/// access, so the socket forgets them (and room presence drops it) at once.
///
/// A once-cell and a `Notify` rather than a watch channel: every socket has one, and a
/// watch channel's eight internal notifiers cost more than the rest of this.
///
/// Both signals share one `Notify`, and the session waits for both with one future:
/// an idle socket's memory is mostly what it waits with.
#[derive(Debug, Default)]
pub struct Closer {
    reason: OnceLock<CloseReason>,
    requested: Notify,
    revoked: Mutex<Vec<Uuid>>,
}

/// What [`Closer::signal`] resolves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Close, for this reason.
    Close(CloseReason),
    /// Rooms ended subscriptions: [`Closer::take_revoked`] says which.
    Revoked,
}

impl Closer {
    /// A room ended the socket's subscription to it: its user lost access.
    pub fn revoked(&self, room_id: Uuid) {
        self.revoked.lock().expect("not poisoned").push(room_id);
        self.requested.notify_waiters();
    }

    /// The rooms that ended the socket's subscriptions since the last call.
    pub fn take_revoked(&self) -> Vec<Uuid> {
        std::mem::take(&mut *self.revoked.lock().expect("not poisoned"))
    }

    /// Resolves once a close is requested or a room has ended a subscription.
    pub async fn signal(&self) -> Signal {
        loop {
            // Registered before the checks, so a signal between them is not missed.
            let notified = self.requested.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason.get() {
                return Signal::Close(*reason);
            }
            if !self.revoked.lock().expect("not poisoned").is_empty() {
                return Signal::Revoked;
            }
            notified.await;
        }
    }

    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.requested.notify_waiters();
        }
    }

    /// Whether a close has been requested (one atomic load).
    pub fn is_requested(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Resolves with the reason once a close is requested.
    pub async fn requested(&self) -> CloseReason {
        loop {
            // Registered before the check, so a close between the two is not missed.
            let notified = self.requested.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason.get() {
                return *reason;
            }
            notified.await;
        }
    }
}

/// One socket as rooms see it, shared by all of its subscriptions: a socket in 100
/// rooms holds this once, and each room an 8-byte pointer to it.
#[derive(Debug)]
pub struct Socket {
    pub id: SocketId,
    pub user_id: Uuid,
    /// Where the rooms put the socket's events (its writer drains it).
    pub queue: queue::Sender<Outbound>,
    pub closer: Arc<Closer>,
}

/// A room's handle on one subscribed socket.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub socket: Arc<Socket>,
    /// The room's `access_version` when the user's access was last checked: a loss of
    /// access after that is found by checking again (SPEC §10).
    pub access_version: i64,
}

// A room holds one per subscriber.
const _: () = assert!(std::mem::size_of::<Subscriber>() == 16);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the room is too busy to take a subscription right now")]
    Busy,
}

/// The rooms this node has local subscribers for.
#[derive(Clone)]
pub struct RoomHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    /// The rooms, by [`shard_of`] their id: one lock per NATS shard, so events of
    /// different shards are delivered in parallel.
    shards: Box<[Mutex<Shard>]>,
    store: Store,
    bus: Bus,
    stats: Arc<RelayStats>,
    /// For every room: how long a message ahead of its predecessors waits for them.
    reorder_wait: Duration,
    /// Rooms the upkeep owes work (see [`upkeep`]).
    upkeep: Mutex<Vec<Uuid>>,
    wake_upkeep: Arc<Notify>,
    /// When rooms want a look (held messages, typing indicators, retries): one timer
    /// for the hub, not one per room.
    timers: Mutex<BTreeSet<(Instant, Uuid)>>,
    wake_timers: Arc<Notify>,
}

#[derive(Default)]
struct Shard {
    rooms: HashMap<Uuid, Room>,
    /// The task reading the shard's NATS subscription, while the shard has rooms here.
    reader: Option<tokio::task::AbortHandle>,
}

impl Shard {
    /// Forgets a room nobody here follows any more, and the shard's NATS subscription
    /// with its last room.
    fn forget_if_empty(&mut self, room_id: Uuid) {
        if !self.rooms.get(&room_id).is_some_and(Room::is_empty) {
            return;
        }
        self.rooms.remove(&room_id);
        if self.rooms.is_empty()
            && let Some(reader) = self.reader.take()
        {
            reader.abort();
        }
    }
}

impl RoomHub {
    pub fn new(store: Store, bus: Bus, reorder_wait: Duration) -> Self {
        let hub = Self {
            inner: Arc::new(HubInner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                store,
                bus,
                stats: Arc::default(),
                reorder_wait,
                upkeep: Mutex::default(),
                wake_upkeep: Arc::default(),
                timers: Mutex::default(),
                wake_timers: Arc::default(),
            }),
        };
        tokio::spawn(upkeep::work(Arc::downgrade(&hub.inner)));
        tokio::spawn(upkeep::timers(Arc::downgrade(&hub.inner)));
        tokio::spawn(upkeep::catch_up(Arc::downgrade(&hub.inner)));
        let published = Arc::downgrade(&hub.inner);
        hub.inner.bus.deliver_locally_to(Box::new(move |event| {
            if let Some(hub) = published.upgrade() {
                hub.on_event(Arc::new(event));
            }
        }));
        hub
    }

    /// Adds a subscriber to a room. The subscriber's queue next receives
    /// [`Outbound::Subscribed`] (at once, or once the room's position is read) and then
    /// every event.
    pub fn join(
        &self,
        room_id: Uuid,
        subscriber: Subscriber,
        since_seq: Option<i64>,
    ) -> Result<(), RelayError> {
        let inner = &*self.inner;
        let mut shard = inner.shard(room_id);
        let room = shard.rooms.entry(room_id).or_insert_with(Room::loading);
        if room.due.waiting.len() >= MAX_WAITING_JOINS {
            return Err(RelayError::Busy);
        }
        let mut wants = room.join(subscriber, since_seq, room_id, &inner.stats);
        // A room new here: its position is read by the upkeep.
        wants.upkeep |= room.last_seq().is_none();
        inner.follow_up(room_id, room, wants);
        Ok(())
    }

    /// Removes a socket's subscription; the room is forgotten with its last subscriber,
    /// and the shard's NATS subscription with its last room.
    pub fn leave(&self, room_id: Uuid, socket_id: SocketId) {
        let mut shard = self.inner.shard(room_id);
        let Some(room) = shard.rooms.get_mut(&room_id) else {
            return;
        };
        room.leave(socket_id);
        shard.forget_if_empty(room_id);
    }

    /// Delivers an event made on this node (presence) to its local subscribers, if any.
    pub fn deliver_local(&self, event: RoomEvent) {
        let mut shard = self.inner.shard(event.room_id);
        if let Some(room) = shard.rooms.get_mut(&event.room_id) {
            room.deliver_local(Arc::new(event), &self.inner.stats);
        }
    }

    /// The `access_version` of a public room this node already serves: anyone may
    /// subscribe to it, so the subscription needs no trip to Postgres (a reconnect
    /// storm resubscribes thousands of rooms a second). `None` if the room is private,
    /// not served here, or still loading.
    pub fn public_access(&self, room_id: Uuid) -> Option<i64> {
        let shard = self.inner.shard(room_id);
        let room = shard.rooms.get(&room_id)?;
        (room.public && room.last_seq().is_some()).then_some(room.access_version)
    }

    /// Rooms with a local subscriber on this node.
    pub fn active_rooms(&self) -> usize {
        self.inner.each_shard(|shard| shard.rooms.len())
    }

    /// Live subscriptions of this node's sockets, over all rooms (waiting joins too).
    pub fn subscriptions(&self) -> usize {
        self.inner.each_shard(|shard| {
            shard
                .rooms
                .values()
                .map(|room| room.subscribers.len() + room.due.waiting.len())
                .sum()
        })
    }

    /// NATS subscriptions the relay holds: one per shard with a room here.
    pub fn nats_subscriptions(&self) -> usize {
        self.inner
            .each_shard(|shard| usize::from(shard.reader.is_some()))
    }

    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }
}

impl Drop for HubInner {
    /// Ends the upkeep's tasks (they find the hub gone) and the shards' readers.
    fn drop(&mut self) {
        self.wake_upkeep.notify_one();
        self.wake_timers.notify_one();
        for shard in self.shards.iter() {
            if let Some(reader) = shard.lock().expect("not poisoned").reader.take() {
                reader.abort();
            }
        }
    }
}

impl HubInner {
    fn shard(&self, room_id: Uuid) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[usize::from(shard_of(room_id))]
            .lock()
            .expect("not poisoned")
    }

    fn each_shard(&self, count: impl Fn(&Shard) -> usize) -> usize {
        self.shards
            .iter()
            .map(|shard| count(&shard.lock().expect("not poisoned")))
            .sum()
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            stats: &self.stats,
            node_id: self.bus.node_id(),
            reorder_wait: self.reorder_wait,
        }
    }

    /// Hands an event to its room, if the room has subscribers here.
    fn on_event(&self, event: Arc<RoomEvent>) {
        let room_id = event.room_id;
        let mut shard = self.shard(room_id);
        if let Some(room) = shard.rooms.get_mut(&room_id) {
            let wants = room.on_event(event, room_id, &self.ctx());
            self.follow_up(room_id, room, wants);
        }
    }

    /// Queues the room for the upkeep and sets its timer, as it wants. Called under the
    /// room's shard lock.
    fn follow_up(&self, room_id: Uuid, room: &mut Room, wants: Wants) {
        if wants.upkeep && !room.due.queued {
            room.due.queued = true;
            self.upkeep.lock().expect("not poisoned").push(room_id);
            self.wake_upkeep.notify_one();
        }
        if let Some(at) = wants.wake_at {
            let mut timers = self.timers.lock().expect("not poisoned");
            let earliest = timers.first().is_none_or(|(first, _)| at < *first);
            timers.insert((at, room_id));
            if earliest {
                self.wake_timers.notify_one();
            }
        }
    }
}

/// Reads one shard's NATS subscription into its rooms until the hub drops it.
async fn read_shard(hub: Weak<HubInner>, mut subscription: async_nats::Subscriber) {
    while let Some(message) = subscription.next().await {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let Some(room_id) = room_of_subject(&message.subject) else {
            continue;
        };
        if let Some(event) = RoomEvent::decode(room_id, message) {
            hub.on_event(Arc::new(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_hears_of_a_revocation_made_while_it_was_not_waiting() {
        let closer = Closer::default();
        let room = Uuid::from_u128(7);
        closer.revoked(room);
        assert_eq!(closer.signal().await, Signal::Revoked);
        assert_eq!(closer.take_revoked(), vec![room]);
        // Nothing pending now: the next signal waits, and a close wins over nothing.
        let waiting = tokio::time::timeout(Duration::from_millis(20), closer.signal()).await;
        assert!(waiting.is_err());
        closer.close(CloseReason::TooSlow);
        assert_eq!(closer.signal().await, Signal::Close(CloseReason::TooSlow));
    }

    #[tokio::test]
    async fn a_waiting_socket_is_woken_by_a_revocation() {
        let closer = Arc::new(Closer::default());
        let waiter = tokio::spawn({
            let closer = closer.clone();
            async move { closer.signal().await }
        });
        tokio::task::yield_now().await;
        closer.revoked(Uuid::from_u128(1));
        assert_eq!(waiter.await.unwrap(), Signal::Revoked);
    }
}
