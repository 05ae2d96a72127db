//! What the hub's rooms need from Postgres and the clock, done by three tasks per node
//! rather than by a task per room:
//!
//! - [`work`] reads what rooms asked for: positions of rooms new here (many rooms per
//!   query, so a reconnect storm costs queries by the thousand rooms, not by the room),
//!   access checks, and repairs of lost messages.
//! - [`timers`] wakes rooms that hold messages for a gap, have typists, or wait to retry.
//! - [`catch_up`] finds lost trailing messages and losses of access: every
//!   [`CATCH_UP_INTERVAL`] it reads the rooms that changed in the last minute
//!   (`room_activity`), so a node serving 100,000 silent rooms asks about none of them;
//!   after NATS reconnects (or Postgres was unreadable longer than that minute) it checks
//!   every room it serves, a few thousand per query.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::time::Instant;
use uuid::Uuid;

use super::{CATCH_UP_INTERVAL, HubInner, bump, read_shard, room::Wants};
use crate::{bus::shard_of, store::messages::RoomPosition};

/// Messages read from Postgres per repair query.
const REPAIR_PAGE: i64 = 500;
/// Room ids per position query (loads, and the full check after a reconnect).
const ROOMS_PER_QUERY: usize = 5_000;
/// Rooms whose access checks and repairs run at once.
const CONCURRENT_ROOMS: usize = 32;
/// A load or access check that Postgres could not answer is retried after this.
const RETRY: Duration = Duration::from_secs(1);
/// How far back `room_activity` is read. Wider than any commit takes, so a transaction
/// that recorded its second just before a read and committed just after it is still in
/// the next read.
const ACTIVITY_LOOKBACK_SECS: i64 = 60;
/// Activity older than this is deleted, by every node, every [`FORGET_EVERY`] checks.
const ACTIVITY_KEEP_SECS: i64 = 600;
const FORGET_EVERY: u32 = 30;

/// Does what rooms queued, batch after batch. Ends when the hub is dropped.
pub(super) async fn work(hub: Weak<HubInner>) {
    let Some(wake) = hub.upgrade().map(|h| h.wake_upkeep.clone()) else {
        return;
    };
    loop {
        // Registered before the queue is read, so a room queued in between is not missed.
        let notified = wake.notified();
        let Some(strong) = hub.upgrade() else {
            return;
        };
        tokio::pin!(notified);
        notified.as_mut().enable();
        let queued = std::mem::take(&mut *strong.upkeep.lock().expect("not poisoned"));
        if queued.is_empty() {
            drop(strong);
            notified.await;
            continue;
        }
        let (mut loads, mut others) = (Vec::new(), Vec::new());
        for room_id in queued {
            let mut shard = strong.shard(room_id);
            let Some(room) = shard.rooms.get_mut(&room_id) else {
                continue;
            };
            room.due.queued = false;
            match room.last_seq() {
                None => loads.push(room_id),
                Some(_) => others.push(room_id),
            }
        }
        load(&strong, loads).await;
        futures_util::stream::iter(others)
            .for_each_concurrent(CONCURRENT_ROOMS, |room_id| maintain(&strong, room_id))
            .await;
    }
}

/// Reads the committed positions of rooms new here, after making sure their shards'
/// NATS subscriptions are in place: everything committed after the position arrives on
/// the subscription (or is repaired), everything before is history for replay.
async fn load(hub: &Arc<HubInner>, rooms: Vec<Uuid>) {
    if rooms.is_empty() {
        return;
    }
    let shards: BTreeSet<u8> = rooms.iter().map(|room| shard_of(*room)).collect();
    for shard in shards {
        subscribe_shard(hub, shard).await;
    }
    for chunk in rooms.chunks(ROOMS_PER_QUERY) {
        match hub.store.rooms_positions(chunk).await {
            Ok(found) => {
                for room_id in chunk {
                    let mut shard = hub.shard(*room_id);
                    let Some(room) = shard.rooms.get_mut(room_id) else {
                        continue;
                    };
                    if room.last_seq().is_some() {
                        continue;
                    }
                    let wants = match found.get(room_id) {
                        Some(position) => room.ready(*position, *room_id, &hub.ctx()),
                        None => {
                            // Deleted since the subscribers checked their access.
                            let gone = RoomPosition {
                                last_seq: 0,
                                access_version: 0,
                                public: false,
                            };
                            let mut wants = room.ready(gone, *room_id, &hub.ctx());
                            wants.merge(room.check(None, None, *room_id, &hub.stats));
                            wants
                        }
                    };
                    hub.follow_up(*room_id, room, wants);
                    shard.forget_if_empty(*room_id);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, rooms = chunk.len(), "cannot read rooms' positions; retrying");
                retry_later(hub, chunk);
            }
        }
    }
}

/// Subscribes to a shard's NATS subject unless this node already does. A failure is
/// logged: the catch-up subscribes again and repairs what was missed.
async fn subscribe_shard(hub: &Arc<HubInner>, shard: u8) {
    if hub.shards[usize::from(shard)]
        .lock()
        .expect("not poisoned")
        .reader
        .is_some()
    {
        return;
    }
    let subscription = match hub.bus.subscribe_shard(shard).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(shard, error = %err, "shard subscription failed; retrying");
            return;
        }
    };
    let mut state = hub.shards[usize::from(shard)].lock().expect("not poisoned");
    // Meanwhile another load subscribed, or the shard's last room left.
    if state.reader.is_none() && !state.rooms.is_empty() {
        let reader = read_shard(Arc::downgrade(hub), subscription);
        state.reader = Some(tokio::spawn(reader).abort_handle());
    }
}

/// Access checks first (nothing committed after a loss of access is repaired to the user
/// who lost it), then repairs.
async fn maintain(hub: &HubInner, room_id: Uuid) {
    check_access(hub, room_id).await;
    repair(hub, room_id).await;
}

async fn check_access(hub: &HubInner, room_id: Uuid) {
    let (version, users) = {
        let mut shard = hub.shard(room_id);
        let Some(room) = shard.rooms.get_mut(&room_id) else {
            return;
        };
        let Some(version) = room.due.access.take() else {
            return;
        };
        (version, room.users_to_check(version))
    };
    let lost = match users.is_empty() {
        true => Ok(Vec::new()),
        false => hub.store.lost_access(room_id, &users).await,
    };
    let mut shard = hub.shard(room_id);
    let Some(room) = shard.rooms.get_mut(&room_id) else {
        return;
    };
    let wants = match lost {
        Ok(lost) => room.access_checked(version, &lost, room_id, &hub.stats),
        Err(err) => {
            // Checked again in a moment; waiting joins are answered meanwhile, as they
            // would have been before the loss of access was known here.
            tracing::warn!(%room_id, error = %err, "access check failed; will retry");
            room.due.check_access(version);
            let mut wants = room.admit_waiting(room_id, &hub.stats, true);
            wants.wake_at = Some(Instant::now() + RETRY);
            wants
        }
    };
    hub.follow_up(room_id, room, wants);
}

/// Delivers the messages Postgres has and this node's subscribers missed, one page
/// after another, then what they release.
async fn repair(hub: &HubInner, room_id: Uuid) {
    let mut counted = false;
    loop {
        let Some((from, upto)) = hub
            .shard(room_id)
            .rooms
            .get(&room_id)
            .and_then(|room| room.repair_range())
        else {
            return;
        };
        if !counted {
            counted = true;
            bump(&hub.stats.gap_repairs, 1);
            tracing::info!(%room_id, from, to = upto, "repairing missed messages");
        }
        let page = hub
            .store
            .messages_in_range(Uuid::nil(), room_id, from, upto, REPAIR_PAGE)
            .await;
        let mut shard = hub.shard(room_id);
        let Some(room) = shard.rooms.get_mut(&room_id) else {
            return;
        };
        match page {
            Ok(messages) if !messages.is_empty() => {
                room.repaired(&messages, &hub.stats);
                if room.last_seq() == Some(from) {
                    return;
                }
            }
            Ok(_) => {
                // Nothing there (the room is gone): the check says so to its subscribers.
                room.due.repair_upto = 0;
                return;
            }
            Err(err) => {
                tracing::warn!(%room_id, error = %err, "repair failed; will retry");
                let wants = Wants {
                    upkeep: false,
                    wake_at: room
                        .repair_failed(hub.reorder_wait)
                        .or(Some(Instant::now() + RETRY)),
                };
                hub.follow_up(room_id, room, wants);
                return;
            }
        }
    }
}

fn retry_later(hub: &HubInner, rooms: &[Uuid]) {
    let at = Instant::now() + RETRY;
    for room_id in rooms {
        let mut shard = hub.shard(*room_id);
        if let Some(room) = shard.rooms.get_mut(room_id) {
            let wants = Wants {
                upkeep: false,
                wake_at: Some(at),
            };
            hub.follow_up(*room_id, room, wants);
        }
    }
}

/// Wakes rooms at the times they asked for. Ends when the hub is dropped.
pub(super) async fn timers(hub: Weak<HubInner>) {
    let Some(wake) = hub.upgrade().map(|h| h.wake_timers.clone()) else {
        return;
    };
    loop {
        let notified = wake.notified();
        let Some(strong) = hub.upgrade() else {
            return;
        };
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let (mut due, next) = {
            let mut timers = strong.timers.lock().expect("not poisoned");
            let mut due = Vec::new();
            while let Some(&(at, room_id)) = timers.first() {
                if at > now {
                    break;
                }
                timers.pop_first();
                due.push(room_id);
            }
            (due, timers.first().map(|(at, _)| *at))
        };
        due.sort_unstable();
        due.dedup();
        for room_id in due {
            let mut shard = strong.shard(room_id);
            if let Some(room) = shard.rooms.get_mut(&room_id) {
                let wants = room.on_timer(room_id, &strong.stats);
                strong.follow_up(room_id, room, wants);
            }
        }
        drop(strong);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Every [`CATCH_UP_INTERVAL`] tells each served room that changed lately the
/// `last_seq` Postgres had one interval earlier and its `access_version` now (so a loss
/// of access whose NATS event this node missed ends delivery within an interval, and
/// before any message committed after it is repaired); right after NATS reconnects,
/// every served room its current position. Ends when the hub is dropped.
///
/// The interval's delay is what keeps this a repair of losses: a message committed a
/// moment ago is normally still on its way (the announcer, NATS), and comparing with
/// the current `last_seq` made busy rooms read from Postgres what was about to arrive
/// anyway. A message still missing a whole interval after its commit was lost. After a
/// reconnect, what was published meanwhile is lost for sure, so it is repaired at once.
pub(super) async fn catch_up(hub: Weak<HubInner>) {
    let Some(mut connections) = hub.upgrade().map(|h| h.bus.connections()) else {
        return;
    };
    let mut tick = tokio::time::interval(CATCH_UP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The `last_seq` of each room that changed lately, as of the previous tick.
    let mut a_tick_ago: HashMap<Uuid, i64> = HashMap::new();
    let mut last_read = Instant::now();
    let mut check_all = false;
    let mut ticks = 0u32;
    loop {
        let reconnected = tokio::select! {
            _ = tick.tick() => false,
            _ = connections.changed() => true,
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        // A shard whose subscription failed (NATS away) is subscribed again; what it
        // missed is repaired by the check after the reconnect.
        let unsubscribed: Vec<u8> = (0..=u8::MAX)
            .filter(|shard| {
                let state = hub.shards[usize::from(*shard)]
                    .lock()
                    .expect("not poisoned");
                state.reader.is_none() && !state.rooms.is_empty()
            })
            .collect();
        for shard in unsubscribed {
            subscribe_shard(&hub, shard).await;
        }
        if reconnected || check_all {
            check_all = !check_every_room(&hub).await;
            continue;
        }
        match hub.store.recent_activity(ACTIVITY_LOOKBACK_SECS).await {
            Ok(active) => {
                // Unread for longer than the lookback: changes may have been missed.
                if last_read.elapsed() > Duration::from_secs(ACTIVITY_LOOKBACK_SECS as u64 / 2) {
                    check_all = true;
                }
                last_read = Instant::now();
                for (room_id, now) in &active {
                    let mut shard = hub.shard(*room_id);
                    let Some(room) = shard.rooms.get_mut(room_id) else {
                        continue;
                    };
                    let wants = room.check(
                        a_tick_ago.get(room_id).copied(),
                        now.map(|p| p.access_version),
                        *room_id,
                        &hub.stats,
                    );
                    hub.follow_up(*room_id, room, wants);
                }
                a_tick_ago = active
                    .into_iter()
                    .filter_map(|(room_id, now)| Some((room_id, now?.last_seq)))
                    .collect();
            }
            Err(err) => tracing::warn!(error = %err, "catch-up check failed"),
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(FORGET_EVERY)
            && let Err(err) = hub.store.forget_activity(ACTIVITY_KEEP_SECS).await
        {
            tracing::warn!(error = %err, "cannot delete old room activity");
        }
    }
}

/// Compares every served room with its position in Postgres now; `false` if Postgres
/// could not be read (tried again at the next tick).
async fn check_every_room(hub: &HubInner) -> bool {
    let mut rooms: Vec<Uuid> = Vec::new();
    for shard in hub.shards.iter() {
        let shard = shard.lock().expect("not poisoned");
        rooms.extend(
            shard
                .rooms
                .iter()
                .filter(|(_, room)| room.last_seq().is_some())
                .map(|(room_id, _)| *room_id),
        );
    }
    for chunk in rooms.chunks(ROOMS_PER_QUERY) {
        let now = match hub.store.rooms_positions(chunk).await {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "catch-up check failed");
                return false;
            }
        };
        for room_id in chunk {
            let mut shard = hub.shard(*room_id);
            let Some(room) = shard.rooms.get_mut(room_id) else {
                continue;
            };
            let position = now.get(room_id);
            let wants = room.check(
                position.map(|p| p.last_seq),
                position.map(|p| p.access_version),
                *room_id,
                &hub.stats,
            );
            hub.follow_up(*room_id, room, wants);
        }
    }
    true
}
