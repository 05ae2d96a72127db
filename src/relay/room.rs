//! One room on this node, as plain data: its local subscribers, its position, and the
//! work the upkeep owes it. Everything here runs under the room's shard lock and never
//! waits; what needs Postgres is marked in [`Due`] for [`super::upkeep`].
//!
//! A silent room is a map entry: no task, no timer, no NATS subscription of its own
//! (about 150 bytes, plus 16 per subscriber).

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::trace::SpanKind;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Joined, Outbound, RelayStats, Subscriber, TYPING_TTL, bump, queue::TrySendError,
    reorder::Reorder,
};
use crate::{
    bus::{EventKind, RoomEvent},
    model::{AccessLost, CloseReason, Message},
    store::messages::RoomPosition,
    telemetry::TraceSpan,
};

/// Events kept for a room while its position loads; beyond that they are dropped and,
/// for messages, repaired from Postgres like any other gap.
const MAX_EARLY: usize = 1024;

pub(super) struct Room {
    pub subscribers: Vec<Subscriber>,
    pub stage: Stage,
    /// The room's `access_version` this node has checked its subscribers against.
    pub access_version: i64,
    /// Anyone may see the room: a subscriber needs no access check (known once ready).
    pub public: bool,
    /// Users typing in the room, and when their indicator lapses (usually none).
    pub typing: Vec<(Uuid, Instant)>,
    pub due: Due,
}

// A node serves every room one of its sockets follows: keep silent ones small (what is
// rare, held messages, is boxed).
const _: () = assert!(std::mem::size_of::<Room>() <= 160);

pub(super) enum Stage {
    /// The first subscriber here is waiting for the room's committed position; what
    /// arrives meanwhile is kept for when it is known.
    Loading { early: Vec<Arc<RoomEvent>> },
    /// What this node's subscribers have been delivered, and what waits for a gap.
    Ready(Reorder),
}

/// What the upkeep owes a room.
#[derive(Default)]
pub(super) struct Due {
    /// The room is in the upkeep's queue.
    pub queued: bool,
    /// Postgres has messages up to here that may not have reached this node.
    pub repair_upto: i64,
    /// Subscribers checked before this `access_version` are to be checked again.
    pub access: Option<i64>,
    /// Joins waiting for the room's position or for an access check, with `since_seq`.
    pub waiting: Vec<(Subscriber, Option<i64>)>,
}

impl Due {
    /// Subscribers checked before `version` are to be checked again (the highest asked
    /// for wins).
    pub fn check_access(&mut self, version: i64) {
        self.access = Some(self.access.unwrap_or(0).max(version));
    }
}

/// What the room wants next from the hub's timers or its upkeep.
#[derive(Default)]
#[must_use]
pub(super) struct Wants {
    pub upkeep: bool,
    pub wake_at: Option<Instant>,
}

impl Wants {
    pub fn merge(&mut self, other: Wants) {
        self.upkeep |= other.upkeep;
        self.wake_at = earliest(self.wake_at, other.wake_at);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Room {
    pub fn loading() -> Self {
        Self {
            subscribers: Vec::new(),
            stage: Stage::Loading { early: Vec::new() },
            access_version: 0,
            public: false,
            typing: Vec::new(),
            due: Due::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.due.waiting.is_empty()
    }

    pub fn last_seq(&self) -> Option<i64> {
        match &self.stage {
            Stage::Ready(position) => Some(position.last_seq()),
            Stage::Loading { .. } => None,
        }
    }

    /// A subscriber arrives. It is answered at once with the room's position if the
    /// room's is known and its access was checked after the last loss of access this
    /// node knows of; otherwise it waits for the upkeep.
    pub fn join(
        &mut self,
        subscriber: Subscriber,
        since_seq: Option<i64>,
        room_id: Uuid,
        stats: &RelayStats,
    ) -> Wants {
        let Stage::Ready(position) = &self.stage else {
            self.due.waiting.push((subscriber, since_seq));
            return Wants::default();
        };
        if subscriber.access_version < self.access_version {
            self.due.waiting.push((subscriber, since_seq));
            self.due.check_access(self.access_version);
            return Wants {
                upkeep: true,
                wake_at: None,
            };
        }
        let last_seq = position.last_seq();
        admit(
            &mut self.subscribers,
            subscriber,
            since_seq,
            room_id,
            last_seq,
            stats,
        );
        Wants::default()
    }

    /// Removes a socket's subscription (or its waiting join).
    pub fn leave(&mut self, socket_id: super::SocketId) {
        self.subscribers.retain(|s| s.socket.id != socket_id);
        self.due.waiting.retain(|(s, _)| s.socket.id != socket_id);
    }

    /// The room's position in Postgres is known: subscribers waiting for it are
    /// answered (or wait on for an access check), and what arrived meanwhile follows.
    pub fn ready(&mut self, position: RoomPosition, room_id: Uuid, ctx: &Ctx) -> Wants {
        let RoomPosition {
            last_seq,
            access_version,
            public,
        } = position;
        let early = match std::mem::replace(&mut self.stage, Stage::Ready(Reorder::new(last_seq))) {
            Stage::Loading { early } => early,
            Stage::Ready(_) => Vec::new(),
        };
        self.access_version = access_version;
        self.public = public;
        let mut wants = self.admit_waiting(room_id, ctx.stats, false);
        for event in early {
            wants.merge(self.on_event(event, room_id, ctx));
        }
        wants
    }

    /// Answers the waiting joins whose access is known to be current; the others wait
    /// on for an access check. With `unchecked`, answers them all: an access check
    /// Postgres could not answer does not hold subscriptions back (it is retried, and
    /// ends any that lost access).
    pub fn admit_waiting(&mut self, room_id: Uuid, stats: &RelayStats, unchecked: bool) -> Wants {
        let Some(last_seq) = self.last_seq() else {
            return Wants::default();
        };
        let mut stale = false;
        for (subscriber, since_seq) in std::mem::take(&mut self.due.waiting) {
            if !unchecked && subscriber.access_version < self.access_version {
                stale = true;
                self.due.waiting.push((subscriber, since_seq));
            } else {
                admit(
                    &mut self.subscribers,
                    subscriber,
                    since_seq,
                    room_id,
                    last_seq,
                    stats,
                );
            }
        }
        if stale {
            self.due.check_access(self.access_version);
        }
        Wants {
            upkeep: stale,
            wake_at: None,
        }
    }

    /// What Postgres says of the room: `last_seq` one catch-up interval ago (deliver
    /// anything missing) and `access_version` now (`None`: the room is gone).
    pub fn check(
        &mut self,
        last_seq: Option<i64>,
        access_version: Option<i64>,
        room_id: Uuid,
        stats: &RelayStats,
    ) -> Wants {
        let mut wants = Wants::default();
        match access_version {
            None => {
                self.revoke(room_id, stats, |_| Some(AccessLost::RoomDeleted));
                return wants;
            }
            Some(version)
                if version > self.access_version
                    || self.subscribers.iter().any(|s| s.access_version < version) =>
            {
                self.due.check_access(version);
                wants.upkeep = true;
            }
            Some(_) => {}
        }
        if let (Some(committed), Some(delivered)) = (last_seq, self.last_seq())
            && committed > delivered
        {
            self.due.repair_upto = self.due.repair_upto.max(committed);
            wants.upkeep = true;
        }
        wants
    }

    /// An event of the room: from NATS, published by this node, or kept while loading.
    pub fn on_event(&mut self, event: Arc<RoomEvent>, room_id: Uuid, ctx: &Ctx) -> Wants {
        let position = match &mut self.stage {
            Stage::Loading { early } => {
                if early.len() < MAX_EARLY {
                    early.push(event);
                }
                return Wants::default();
            }
            Stage::Ready(position) => position,
        };
        bump(&ctx.stats.received, 1);
        // The last step of the sender's trace, on this node.
        let mut span = event.traceparent.as_ref().map(|parent| {
            TraceSpan::start("fan-out", SpanKind::Consumer, Some(parent), ctx.node_id)
        });
        if let Some(span) = &mut span {
            span.set_attribute("natter.subscribers", self.subscribers.len() as i64);
        }
        match event.kind {
            EventKind::Message => {
                let seq = event.seq.unwrap_or_default();
                for ready in position.arrive(seq, event, ctx.reorder_wait) {
                    deliver(&mut self.subscribers, &ready, ctx.stats);
                }
                return Wants {
                    upkeep: false,
                    wake_at: self.repair_wake(),
                };
            }
            EventKind::Typing => {
                let user = event.user_id.unwrap_or_default();
                let known = self.typing.iter().position(|(u, _)| *u == user);
                if event.typing == Some(true) {
                    let until = Instant::now() + TYPING_TTL;
                    match known {
                        Some(i) => self.typing[i].1 = until,
                        None => self.typing.push((user, until)),
                    }
                    deliver(&mut self.subscribers, &event, ctx.stats);
                    return Wants {
                        upkeep: false,
                        wake_at: Some(until),
                    };
                }
                let Some(i) = known else {
                    // Already expired here; clients were told.
                    return Wants::default();
                };
                self.typing.swap_remove(i);
                deliver(&mut self.subscribers, &event, ctx.stats);
            }
            EventKind::Revoke => {
                let reason = AccessLost::parse(&event.payload).unwrap_or(AccessLost::Removed);
                match event.user_id {
                    Some(user) => self.revoke(room_id, ctx.stats, |s| {
                        (s.socket.user_id == user).then_some(reason)
                    }),
                    None => self.revoke(room_id, ctx.stats, |_| Some(reason)),
                }
            }
            _ => deliver(&mut self.subscribers, &event, ctx.stats),
        }
        Wants::default()
    }

    /// An event made on this node for its own sockets only (presence). While the room
    /// loads it waits with the others, so a subscriber hears of its own `joined`.
    pub fn deliver_local(&mut self, event: Arc<RoomEvent>, stats: &RelayStats) {
        match &mut self.stage {
            Stage::Ready(_) => deliver(&mut self.subscribers, &event, stats),
            Stage::Loading { early } if early.len() < MAX_EARLY => early.push(event),
            Stage::Loading { .. } => {}
        }
    }

    /// When a timer should look at the held messages again, if any are held.
    fn repair_wake(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Ready(position) => position.repair_at(),
            Stage::Loading { .. } => None,
        }
    }

    /// A timer went off: ends lapsed typing indicators, and marks a repair due if held
    /// messages waited long enough. Returns the next time it wants a timer.
    pub fn on_timer(&mut self, room_id: Uuid, stats: &RelayStats) -> Wants {
        let now = Instant::now();
        let mut wants = Wants::default();
        let mut i = 0;
        while i < self.typing.len() {
            let (user, until) = self.typing[i];
            if until <= now {
                self.typing.swap_remove(i);
                deliver(
                    &mut self.subscribers,
                    &Arc::new(RoomEvent::typing(room_id, user, false)),
                    stats,
                );
            } else {
                wants.wake_at = earliest(wants.wake_at, Some(until));
                i += 1;
            }
        }
        match self.repair_wake() {
            Some(at) if at <= now => wants.upkeep = true,
            at => wants.wake_at = earliest(wants.wake_at, at),
        }
        // A load or an access check that failed is retried.
        wants.upkeep |= matches!(self.stage, Stage::Loading { .. }) || self.due.access.is_some();
        wants
    }

    /// Where a repair starts and ends now, if one is due: the trailing messages a check
    /// found, or the gap before held messages whose wait is over.
    pub fn repair_range(&self) -> Option<(i64, i64)> {
        let Stage::Ready(position) = &self.stage else {
            return None;
        };
        let from = position.last_seq();
        let gap = match position.repair_at() {
            Some(at) if at <= Instant::now() => position.missing().unwrap_or(0),
            _ => 0,
        };
        let upto = self.due.repair_upto.max(gap);
        (upto > from).then_some((from, upto))
    }

    /// Messages read from Postgres after the position: delivers those still missing,
    /// then the held ones they release.
    pub fn repaired(&mut self, messages: &[Message], stats: &RelayStats) {
        let Stage::Ready(position) = &mut self.stage else {
            return;
        };
        bump(&stats.repaired, messages.len() as u64);
        for message in messages {
            if message.seq == position.last_seq() + 1 {
                position.advance(message.seq);
                deliver(
                    &mut self.subscribers,
                    &Arc::new(RoomEvent::message(message)),
                    stats,
                );
            }
        }
        for ready in position.release() {
            deliver(&mut self.subscribers, &ready, stats);
        }
    }

    /// A repair could not read the gap (Postgres unreachable): when to try again.
    pub fn repair_failed(&mut self, wait: Duration) -> Option<Instant> {
        let Stage::Ready(position) = &mut self.stage else {
            return None;
        };
        position.retry_later(wait);
        position.repair_at()
    }

    /// Ends the subscriptions (and waiting joins) for which `lost` gives a reason: the
    /// socket hears `unsubscribed` with it and forgets the room; nothing more of the room
    /// reaches it.
    pub fn revoke(
        &mut self,
        room_id: Uuid,
        stats: &RelayStats,
        lost: impl Fn(&Subscriber) -> Option<AccessLost>,
    ) {
        let keep = |subscriber: &Subscriber| match lost(subscriber) {
            Some(reason) => {
                end_revoked(subscriber, room_id, reason, stats);
                false
            }
            None => true,
        };
        self.subscribers.retain(keep);
        self.due.waiting.retain(|(subscriber, _)| keep(subscriber));
    }

    /// The users whose access the upkeep must check against `version`.
    pub fn users_to_check(&self, version: i64) -> Vec<Uuid> {
        let mut users: Vec<Uuid> = self
            .subscribers
            .iter()
            .chain(self.due.waiting.iter().map(|(s, _)| s))
            .filter(|s| s.access_version < version)
            .map(|s| s.socket.user_id)
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Everyone left was checked against `version`: those who lost access are ended,
    /// the rest are current, and waiting joins are answered.
    pub fn access_checked(
        &mut self,
        version: i64,
        lost: &[(Uuid, AccessLost)],
        room_id: Uuid,
        stats: &RelayStats,
    ) -> Wants {
        self.revoke(room_id, stats, |s| {
            (s.access_version < version)
                .then(|| {
                    lost.iter()
                        .find(|(u, _)| *u == s.socket.user_id)
                        .map(|(_, r)| *r)
                })
                .flatten()
        });
        for subscriber in self
            .subscribers
            .iter_mut()
            .chain(self.due.waiting.iter_mut().map(|(s, _)| s))
        {
            subscriber.access_version = subscriber.access_version.max(version);
        }
        self.access_version = self.access_version.max(version);
        self.admit_waiting(room_id, stats, false)
    }
}

/// What handling an event needs from the hub.
pub(super) struct Ctx<'a> {
    pub stats: &'a RelayStats,
    pub node_id: &'a str,
    /// How long a message ahead of its predecessors waits for them.
    pub reorder_wait: Duration,
}

/// Answers a join with the room's position and adds it to the subscribers.
fn admit(
    subscribers: &mut Vec<Subscriber>,
    subscriber: Subscriber,
    since_seq: Option<i64>,
    room_id: Uuid,
    last_seq: i64,
    stats: &RelayStats,
) {
    let subscribed = Outbound::Subscribed(Box::new(Joined {
        room_id,
        since_seq,
        last_seq,
    }));
    if offer(&subscriber, subscribed, stats) {
        subscribers.push(subscriber);
    }
}

/// Offers the event to every subscriber without waiting; one whose queue is full is
/// closed (4008) and dropped, so a slow reader never slows the room.
fn deliver(subscribers: &mut Vec<Subscriber>, event: &Arc<RoomEvent>, stats: &RelayStats) {
    subscribers.retain(|subscriber| offer(subscriber, Outbound::Event(event.clone()), stats));
    bump(&stats.delivered, subscribers.len() as u64);
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

/// Tells a subscriber that lost access that its subscription to `room_id` ended: the
/// socket forgets the room and hears `unsubscribed` with the reason.
pub(super) fn end_revoked(
    subscriber: &Subscriber,
    room_id: Uuid,
    reason: AccessLost,
    stats: &RelayStats,
) {
    subscriber.socket.closer.revoked(room_id);
    offer(
        subscriber,
        Outbound::Revoked(Box::new((room_id, reason))),
        stats,
    );
}

/// Queues `item` for a subscriber; `false` (and a 4008 close) if its queue is full or
/// gone.
fn offer(subscriber: &Subscriber, item: Outbound, stats: &RelayStats) -> bool {
    match subscriber.socket.queue.try_send(item) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            bump(&stats.slow_closes, 1);
            subscriber.socket.closer.close(CloseReason::TooSlow);
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}
