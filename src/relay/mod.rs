//! The relay: per-room fan-out of events to this node's sockets, with interest routing
//! and gap repair.
//!
//! A room that has local subscribers gets one task on this node ([`RoomTask`]). The task
//! subscribes to the room's NATS subject, so a node receives only the rooms its clients
//! care about, takes the events this node publishes itself straight from [`Bus`] (NATS
//! does not echo them), and forwards each event to every local subscriber's bounded
//! queue with `try_send`: a socket that cannot keep up is closed with 4008, never waited
//! for.
//!
//! **Exactly once, in order, on every node (SPEC §1.3)** is enforced here. The task knows
//! the highest `seq` it has delivered. A message with a lower or equal `seq` is a
//! duplicate and is dropped; one with a higher `seq` than the next is held: the missing
//! ones are usually on their way (this node's own messages skip NATS, so they overtake
//! other nodes' earlier ones), and if they have not come within the reorder wait, NATS
//! lost them and the range is read from Postgres and delivered first. Because `seq` is
//! assigned under the room row's lock, every `seq` below a published one is already
//! committed, so the range is always complete. A lost *last* message has no
//! successor to reveal it, so [`RoomHub`] also compares every active room with its
//! `last_seq` in Postgres, as it was one [`CATCH_UP_INTERVAL`] earlier, and right after
//! NATS reconnects.
//!
//! **Resume without a window (SPEC §1.4)** starts here too: a join is answered with the
//! task's position, in the socket's queue, ahead of every later event; the socket's
//! writer replays from Postgres up to that position before reading on (`api::ws`).

mod reorder;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use opentelemetry::trace::SpanKind;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use reorder::Reorder;

use crate::{
    bus::{Bus, EventKind, RoomEvent},
    histogram::LatencyHistogram,
    model::AccessLost,
    store::{Store, messages::RoomPosition},
    telemetry::TraceSpan,
};

/// How often active rooms are compared with Postgres to find lost trailing messages.
pub const CATCH_UP_INTERVAL: Duration = Duration::from_secs(2);
/// A typing indicator not refreshed for this long ends (SPEC §1.6).
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// Commands queued for one room task before joins are refused as busy.
const ROOM_COMMAND_QUEUE: usize = 4096;
/// Messages read from Postgres per repair query.
const REPAIR_PAGE: i64 = 500;

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

// A socket's queue is allocated in blocks of slots of this size; keep it small.
const _: () = assert!(std::mem::size_of::<Outbound>() <= 24);

/// A subscription the room accepted: everything after `last_seq` follows live, and the
/// socket replays `(since_seq, last_seq]` first.
#[derive(Debug)]
pub struct Joined {
    pub room_id: Uuid,
    pub since_seq: Option<i64>,
    pub last_seq: i64,
}

/// Asks a socket to close with a code, from anywhere: a room whose queue to it is full
/// (4008), the drain (1012), token expiry (4001). The first request wins. Rooms also
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
    code: OnceLock<(u16, &'static str)>,
    requested: Notify,
    revoked: Mutex<Vec<Uuid>>,
}

/// What [`Closer::signal`] resolves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Close with this code and reason.
    Close(u16, &'static str),
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
            if let Some((code, reason)) = self.code.get() {
                return Signal::Close(*code, reason);
            }
            if !self.revoked.lock().expect("not poisoned").is_empty() {
                return Signal::Revoked;
            }
            notified.await;
        }
    }

    pub fn close(&self, code: u16, reason: &'static str) {
        if self.code.set((code, reason)).is_ok() {
            self.requested.notify_waiters();
        }
    }

    /// Whether a close has been requested (one atomic load).
    pub fn is_requested(&self) -> bool {
        self.code.get().is_some()
    }

    /// Resolves with the code once a close is requested.
    pub async fn requested(&self) -> (u16, &'static str) {
        loop {
            // Registered before the check, so a close between the two is not missed.
            let notified = self.requested.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.code.get() {
                return *code;
            }
            notified.await;
        }
    }
}

/// A room's handle on one subscribed socket.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub socket_id: SocketId,
    pub user_id: Uuid,
    /// The room's `access_version` when the user's access was last checked: a loss of
    /// access after that is found by checking again (SPEC §10).
    pub access_version: i64,
    pub queue: mpsc::Sender<Outbound>,
    pub closer: Arc<Closer>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the room is too busy to take a subscription right now")]
    Busy,
}

enum RoomCommand {
    Join(Subscriber, Option<i64>),
    Leave(SocketId),
    /// An event made on this node for its own sockets only (presence).
    Local(Arc<RoomEvent>),
    /// An event this node published, which NATS does not echo back to it.
    Published(Arc<RoomEvent>),
    /// What Postgres says of the room: `last_seq` one interval ago (deliver anything
    /// missing) and `access_version` now (`None`: the room is gone).
    Check {
        last_seq: Option<i64>,
        access_version: Option<i64>,
    },
}

struct RoomEntry {
    commands: mpsc::Sender<RoomCommand>,
    subscribers: usize,
}

/// The rooms this node has local subscribers for.
#[derive(Clone)]
pub struct RoomHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    rooms: Mutex<HashMap<Uuid, RoomEntry>>,
    store: Store,
    bus: Bus,
    stats: Arc<RelayStats>,
    /// For every room task: how long a message ahead of its predecessors waits for them.
    reorder_wait: Duration,
}

impl RoomHub {
    pub fn new(store: Store, bus: Bus, reorder_wait: Duration) -> Self {
        let hub = Self {
            inner: Arc::new(HubInner {
                rooms: Mutex::new(HashMap::new()),
                store,
                bus,
                stats: Arc::default(),
                reorder_wait,
            }),
        };
        tokio::spawn(catch_up_loop(Arc::downgrade(&hub.inner)));
        let published = Arc::downgrade(&hub.inner);
        hub.inner.bus.deliver_locally_to(Box::new(move |event| {
            if let Some(hub) = published.upgrade() {
                hub.route(RoomCommand::Published, event);
            }
        }));
        hub
    }

    /// Adds a subscriber to a room, starting the room's task if it is the first here.
    /// The subscriber's queue next receives [`Outbound::Subscribed`] and then every event.
    pub fn join(
        &self,
        room_id: Uuid,
        subscriber: Subscriber,
        since_seq: Option<i64>,
    ) -> Result<(), RelayError> {
        let mut rooms = self.inner.rooms.lock().expect("not poisoned");
        let entry = rooms.entry(room_id).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(ROOM_COMMAND_QUEUE);
            let task = RoomTask {
                room_id,
                subscribers: Vec::new(),
                position: Reorder::new(0, self.inner.reorder_wait),
                access_version: 0,
                typing: HashMap::new(),
                store: self.inner.store.clone(),
                bus: self.inner.bus.clone(),
                stats: self.inner.stats.clone(),
            };
            tokio::spawn(task.run(rx));
            RoomEntry {
                commands: tx,
                subscribers: 0,
            }
        });
        entry
            .commands
            .try_send(RoomCommand::Join(subscriber, since_seq))
            .map_err(|_| RelayError::Busy)?;
        entry.subscribers += 1;
        Ok(())
    }

    /// Removes a socket's subscription; the room's task ends with its last subscriber.
    pub fn leave(&self, room_id: Uuid, socket_id: SocketId) {
        let mut rooms = self.inner.rooms.lock().expect("not poisoned");
        let Some(entry) = rooms.get_mut(&room_id) else {
            return;
        };
        entry.subscribers = entry.subscribers.saturating_sub(1);
        if entry.subscribers == 0 {
            // Dropping the only sender ends the task once it has drained its queue.
            rooms.remove(&room_id);
        } else if entry
            .commands
            .try_send(RoomCommand::Leave(socket_id))
            .is_err()
        {
            tracing::warn!(%room_id, "room queue full; the subscriber is dropped on its next delivery");
        }
    }

    /// Delivers an event made on this node (presence) to its local subscribers, if any.
    pub fn deliver_local(&self, event: RoomEvent) {
        self.inner.route(RoomCommand::Local, event);
    }

    /// Rooms with a task on this node.
    pub fn active_rooms(&self) -> usize {
        self.inner.rooms.lock().expect("not poisoned").len()
    }

    /// Live subscriptions of this node's sockets, over all rooms.
    pub fn subscriptions(&self) -> usize {
        let rooms = self.inner.rooms.lock().expect("not poisoned");
        rooms.values().map(|entry| entry.subscribers).sum()
    }

    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }
}

impl HubInner {
    /// Hands an event to its room's task, if the room has subscribers here. A task whose
    /// queue is full misses it, as a slow NATS subscription would: a missed message is
    /// repaired from Postgres with the next one, or by the catch-up loop.
    fn route(&self, command: fn(Arc<RoomEvent>) -> RoomCommand, event: RoomEvent) {
        let rooms = self.rooms.lock().expect("not poisoned");
        if let Some(entry) = rooms.get(&event.room_id) {
            let _ = entry.commands.try_send(command(Arc::new(event)));
        }
    }
}

/// Every [`CATCH_UP_INTERVAL`] tells each active room the `last_seq` that Postgres had
/// one interval earlier, and right after NATS reconnects the one it has now, with the
/// room's `access_version` now (so a loss of access whose NATS event this node missed
/// ends delivery within an interval, and before any message committed after it is
/// repaired). Ends when the hub is dropped.
///
/// The interval's delay is what keeps this a repair of losses: a message committed a
/// moment ago is normally still on its way to the room task (the announcer, NATS), and
/// comparing with the current `last_seq` made busy rooms read from Postgres what was
/// about to arrive anyway (466 repairs in a one-node `rooms` run, none of them for a
/// loss). A message still missing a whole interval after its commit was lost. After a
/// reconnect, what was published meanwhile is lost for sure, so it is repaired at once.
async fn catch_up_loop(hub: Weak<HubInner>) {
    let Some(mut connections) = hub.upgrade().map(|h| h.bus.connections()) else {
        return;
    };
    let mut tick = tokio::time::interval(CATCH_UP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each active room's position in Postgres at the previous tick.
    let mut a_tick_ago: HashMap<Uuid, RoomPosition> = HashMap::new();
    loop {
        let reconnected = tokio::select! {
            _ = tick.tick() => false,
            _ = connections.changed() => true,
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let room_ids: Vec<Uuid> = hub
            .rooms
            .lock()
            .expect("not poisoned")
            .keys()
            .copied()
            .collect();
        if room_ids.is_empty() {
            a_tick_ago.clear();
            continue;
        }
        match hub.store.rooms_positions(&room_ids).await {
            Ok(now) => {
                let due = if reconnected { &now } else { &a_tick_ago };
                let rooms = hub.rooms.lock().expect("not poisoned");
                for room_id in &room_ids {
                    if let Some(entry) = rooms.get(room_id) {
                        let _ = entry.commands.try_send(RoomCommand::Check {
                            last_seq: due.get(room_id).map(|p| p.last_seq),
                            access_version: now.get(room_id).map(|p| p.access_version),
                        });
                    }
                }
                if !reconnected {
                    a_tick_ago = now;
                }
            }
            Err(err) => tracing::warn!(error = %err, "catch-up check failed"),
        }
    }
}

/// One room on this node: its NATS subscription, its local subscribers and its position.
struct RoomTask {
    room_id: Uuid,
    subscribers: Vec<Subscriber>,
    /// What this node's subscribers have been delivered, and what waits for a gap.
    position: Reorder,
    /// The room's `access_version` this task has checked its subscribers against.
    access_version: i64,
    /// Users typing in this room, and when their indicator lapses.
    typing: HashMap<Uuid, Instant>,
    store: Store,
    bus: Bus,
    stats: Arc<RelayStats>,
}

impl RoomTask {
    async fn run(mut self, mut commands: mpsc::Receiver<RoomCommand>) {
        let mut nats = self.subscribe().await;
        // Start from the room's committed position: everything after it arrives on the
        // subscription (or is repaired), everything before is history for replay.
        let Some(committed) = self.committed_position(&commands).await else {
            return;
        };
        self.position = Reorder::new(committed.last_seq, self.position.wait());
        self.access_version = committed.access_version;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    None => break,
                },
                message = next_message(&mut nats) => match message {
                    Some(message) => {
                        if let Some(event) = RoomEvent::decode(self.room_id, message) {
                            self.on_event(Arc::new(event)).await;
                        }
                    }
                    None => nats = None,
                },
                _ = sleep_until(self.position.repair_at()) => {
                    self.repair_held().await;
                }
                _ = tick.tick() => {
                    self.expire_typing();
                    if nats.is_none() {
                        nats = self.subscribe().await;
                    }
                }
            }
        }
        tracing::debug!(room_id = %self.room_id, "room task ended");
    }

    async fn subscribe(&self) -> Option<async_nats::Subscriber> {
        match self.bus.subscribe_room(self.room_id).await {
            Ok(subscriber) => Some(subscriber),
            Err(err) => {
                tracing::warn!(room_id = %self.room_id, error = %err, "room subscription failed; retrying");
                None
            }
        }
    }

    /// The room's position in Postgres, retried while the database is unreachable;
    /// `None` if every subscriber left meanwhile. A room deleted meanwhile is at zero (and
    /// its subscribers are told at the next check).
    async fn committed_position(
        &self,
        commands: &mpsc::Receiver<RoomCommand>,
    ) -> Option<RoomPosition> {
        loop {
            if commands.is_closed() {
                return None;
            }
            match self.store.rooms_positions(&[self.room_id]).await {
                Ok(found) => {
                    return Some(found.get(&self.room_id).copied().unwrap_or(RoomPosition {
                        last_seq: 0,
                        access_version: 0,
                    }));
                }
                Err(err) => {
                    tracing::warn!(room_id = %self.room_id, error = %err, "cannot read last_seq; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn on_command(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::Join(mut subscriber, since_seq) => {
                // Checked before a loss of access this task already knows of: check again
                // (if Postgres cannot say now, the next check does).
                if subscriber.access_version < self.access_version {
                    match self.lost_access(&[subscriber.user_id]).await.as_deref() {
                        Some([]) => subscriber.access_version = self.access_version,
                        Some([(_, reason), ..]) => {
                            end_revoked(&subscriber, self.room_id, *reason, &self.stats);
                            return;
                        }
                        None => {}
                    }
                }
                let subscribed = Outbound::Subscribed(Box::new(Joined {
                    room_id: self.room_id,
                    since_seq,
                    last_seq: self.position.last_seq(),
                }));
                if offer(&subscriber, subscribed, &self.stats) {
                    self.subscribers.push(subscriber);
                }
            }
            RoomCommand::Leave(socket_id) => self.subscribers.retain(|s| s.socket_id != socket_id),
            RoomCommand::Local(event) => self.deliver(&event),
            RoomCommand::Published(event) => self.on_event(event).await,
            RoomCommand::Check {
                last_seq,
                access_version,
            } => {
                // Access first: nothing committed after a loss of access is repaired to
                // the user who lost it.
                match access_version {
                    None => self.revoke(|_| Some(AccessLost::RoomDeleted)),
                    Some(version)
                        if version > self.access_version
                            || self.subscribers.iter().any(|s| s.access_version < version) =>
                    {
                        self.check_access(version).await;
                    }
                    Some(_) => {}
                }
                let Some(committed) = last_seq else {
                    return;
                };
                let from = self.position.last_seq();
                if committed > from {
                    bump(&self.stats.gap_repairs, 1);
                    tracing::info!(room_id = %self.room_id, from, to = committed, "repairing trailing messages");
                    self.repair(committed).await;
                    self.deliver_held();
                }
            }
        }
    }

    async fn on_event(&mut self, event: Arc<RoomEvent>) {
        bump(&self.stats.received, 1);
        // The last step of the sender's trace, on this node.
        let mut span = event.traceparent.as_ref().map(|parent| {
            TraceSpan::start(
                "fan-out",
                SpanKind::Consumer,
                Some(parent),
                self.bus.node_id(),
            )
        });
        if let Some(span) = &mut span {
            span.set_attribute("natter.subscribers", self.subscribers.len() as i64);
        }
        match event.kind {
            EventKind::Message => {
                let seq = event.seq.unwrap_or_default();
                for ready in self.position.arrive(seq, event) {
                    self.deliver(&ready);
                }
            }
            EventKind::Typing => {
                let user = event.user_id.unwrap_or_default();
                if event.typing == Some(true) {
                    self.typing.insert(user, Instant::now() + TYPING_TTL);
                } else if self.typing.remove(&user).is_none() {
                    // Already expired here; clients were told.
                    return;
                }
                self.deliver(&event);
            }
            EventKind::Revoke => {
                let reason = AccessLost::parse(&event.payload).unwrap_or(AccessLost::Removed);
                match event.user_id {
                    Some(user) => self.revoke(|s| (s.user_id == user).then_some(reason)),
                    None => self.revoke(|_| Some(reason)),
                }
            }
            _ => self.deliver(&event),
        }
    }

    /// Ends the subscriptions for which `lost` gives a reason: the socket hears
    /// `unsubscribed` with it and forgets the room; nothing more of the room reaches it.
    fn revoke(&mut self, lost: impl Fn(&Subscriber) -> Option<AccessLost>) {
        let room_id = self.room_id;
        self.subscribers.retain(|subscriber| {
            let Some(reason) = lost(subscriber) else {
                return true;
            };
            end_revoked(subscriber, room_id, reason, &self.stats);
            false
        });
    }

    /// The room's `access_version` moved to `version`: someone lost access. Checks the
    /// subscribers last checked before it and ends the subscriptions of those who can no
    /// longer see the room. If Postgres cannot say now, the next check asks again.
    async fn check_access(&mut self, version: i64) {
        let mut users: Vec<Uuid> = self
            .subscribers
            .iter()
            .filter(|s| s.access_version < version)
            .map(|s| s.user_id)
            .collect();
        users.sort_unstable();
        users.dedup();
        let Some(lost) = self.lost_access(&users).await else {
            return;
        };
        let lost: HashMap<Uuid, AccessLost> = lost.into_iter().collect();
        self.revoke(|s| lost.get(&s.user_id).copied());
        for subscriber in &mut self.subscribers {
            subscriber.access_version = subscriber.access_version.max(version);
        }
        self.access_version = version;
    }

    /// Which of `users` lost access to the room, and why; `None` if Postgres cannot say.
    async fn lost_access(&self, users: &[Uuid]) -> Option<Vec<(Uuid, AccessLost)>> {
        if users.is_empty() {
            return Some(Vec::new());
        }
        match self.store.lost_access(self.room_id, users).await {
            Ok(lost) => Some(lost),
            Err(err) => {
                tracing::warn!(room_id = %self.room_id, error = %err, "access check failed; will retry");
                None
            }
        }
    }

    /// Delivers the held messages that now follow the room's position.
    fn deliver_held(&mut self) {
        for ready in self.position.release() {
            self.deliver(&ready);
        }
    }

    /// The held messages' predecessors did not come in time: NATS lost them. Reads them
    /// from Postgres, one gap after another, and delivers everything held in order.
    async fn repair_held(&mut self) {
        while let Some(upto) = self.position.missing() {
            bump(&self.stats.gap_repairs, 1);
            tracing::info!(room_id = %self.room_id, from = self.position.last_seq(), to = upto, "repairing a gap");
            self.repair(upto).await;
            if self.position.last_seq() < upto {
                // Postgres is unreachable: hold on and try again after another wait.
                self.position.retry_later();
                return;
            }
            self.deliver_held();
        }
    }

    /// Delivers the messages after `last_seq` up to `upto` from Postgres, in order.
    async fn repair(&mut self, upto: i64) {
        while self.position.last_seq() < upto {
            let after = self.position.last_seq();
            let page = self
                .store
                .messages_in_range(Uuid::nil(), self.room_id, after, upto, REPAIR_PAGE)
                .await;
            let messages = match page {
                Ok(messages) if !messages.is_empty() => messages,
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(room_id = %self.room_id, error = %err, "gap repair failed; will retry");
                    return;
                }
            };
            bump(&self.stats.repaired, messages.len() as u64);
            for message in &messages {
                self.position.advance(message.seq);
                self.deliver(&Arc::new(RoomEvent::message(message)));
            }
        }
    }

    fn expire_typing(&mut self) {
        let now = Instant::now();
        let expired: Vec<Uuid> = self
            .typing
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(user, _)| *user)
            .collect();
        for user in expired {
            self.typing.remove(&user);
            self.deliver(&Arc::new(RoomEvent::typing(self.room_id, user, false)));
        }
    }

    /// Offers the event to every subscriber without waiting; one whose queue is full is
    /// closed (4008) and dropped, so a slow reader never slows the room.
    fn deliver(&mut self, event: &Arc<RoomEvent>) {
        let stats = &*self.stats;
        self.subscribers
            .retain(|subscriber| offer(subscriber, Outbound::Event(event.clone()), stats));
        bump(&stats.delivered, self.subscribers.len() as u64);
        if let Some(created_at) = event.created_at {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            // Clocks of different hosts may disagree a little; never below zero.
            stats
                .fanout_latency
                .observe_ms(now_ms.saturating_sub(created_at).max(0) as u64);
        }
    }
}

/// Tells a subscriber that lost access that its subscription to `room_id` ended: the
/// socket forgets the room and hears `unsubscribed` with the reason.
fn end_revoked(subscriber: &Subscriber, room_id: Uuid, reason: AccessLost, stats: &RelayStats) {
    subscriber.closer.revoked(room_id);
    offer(
        subscriber,
        Outbound::Revoked(Box::new((room_id, reason))),
        stats,
    );
}

/// Queues `item` for a subscriber; `false` (and a 4008 close) if its queue is full or
/// gone.
fn offer(subscriber: &Subscriber, item: Outbound, stats: &RelayStats) -> bool {
    match subscriber.queue.try_send(item) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            bump(&stats.slow_closes, 1);
            subscriber
                .closer
                .close(4008, "too slow: resume with since_seq");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Resolves at `deadline` (never, without one).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    subscription: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
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
        closer.close(4008, "too slow");
        assert_eq!(closer.signal().await, Signal::Close(4008, "too slow"));
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
