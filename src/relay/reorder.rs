//! A room's position on this node and the messages that arrived ahead of it: the
//! decisions behind "exactly once, in order" (SPEC §1.3), without the I/O.
//!
//! A message at or below the position is a duplicate; the next one is delivered, with
//! any held successors it releases; a later one is held until its predecessors come, or
//! until the reorder wait has passed, when the room task reads them from Postgres
//! ([`Reorder::missing`]) and [`Reorder::advance`]s through them.

use std::{collections::BTreeMap, sync::Arc};

use tokio::time::{Duration, Instant};

use crate::bus::RoomEvent;

/// Messages held for their predecessors before the wait is cut short.
const MAX_HELD: usize = 4096;

pub(super) struct Reorder {
    /// The highest `seq` delivered; everything up to it was delivered exactly once, in
    /// order.
    last_seq: i64,
    /// What waits for a gap: boxed, as almost every room holds nothing almost always
    /// (16 bytes a room instead of 64).
    held: Option<Box<Held>>,
}

#[derive(Default)]
struct Held {
    /// Messages that arrived ahead of `last_seq + 1`, by `seq`.
    messages: BTreeMap<i64, Arc<RoomEvent>>,
    /// When the held messages' predecessors are to be read from Postgres.
    repair_at: Option<Instant>,
}

impl Reorder {
    pub fn new(last_seq: i64) -> Self {
        Self {
            last_seq,
            held: None,
        }
    }

    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// When the gap before the held messages should be repaired, if any are held.
    pub fn repair_at(&self) -> Option<Instant> {
        self.held.as_ref().and_then(|held| held.repair_at)
    }

    /// A message arrived with `seq`: returns what to deliver now, in order (nothing for
    /// a duplicate or a message held for its predecessors, for at most `wait`).
    pub fn arrive(
        &mut self,
        seq: i64,
        event: Arc<RoomEvent>,
        wait: Duration,
    ) -> Vec<Arc<RoomEvent>> {
        if seq <= self.last_seq {
            return Vec::new();
        }
        if seq > self.last_seq + 1 {
            self.hold(seq, event, wait);
            return Vec::new();
        }
        self.last_seq = seq;
        let mut ready = vec![event];
        ready.extend(self.release());
        ready
    }

    fn hold(&mut self, seq: i64, event: Arc<RoomEvent>, wait: Duration) {
        let held = self.held.get_or_insert_default();
        held.messages.insert(seq, event);
        if held.repair_at.is_none() {
            held.repair_at = Some(Instant::now() + wait);
        }
        if held.messages.len() > MAX_HELD {
            // Far behind: stop waiting rather than hold without bound.
            held.repair_at = Some(Instant::now());
        }
    }

    /// The last `seq` of the first gap: what must be read from Postgres before the
    /// held messages can go.
    pub fn missing(&self) -> Option<i64> {
        let first_held = self.held.as_ref()?.messages.keys().next()?;
        Some(first_held - 1)
    }

    /// A message read from Postgres (in order, after `last_seq`) was delivered.
    pub fn advance(&mut self, seq: i64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// The held messages that now follow `last_seq`, in order; those it passed are
    /// dropped. With nothing left held, no repair is due.
    pub fn release(&mut self) -> Vec<Arc<RoomEvent>> {
        let mut ready = Vec::new();
        let Some(held) = &mut self.held else {
            return ready;
        };
        while let Some(entry) = held.messages.first_entry() {
            let seq = *entry.key();
            if seq > self.last_seq + 1 {
                break;
            }
            let event = entry.remove();
            if seq == self.last_seq + 1 {
                self.last_seq = seq;
                ready.push(event);
            }
        }
        if held.messages.is_empty() {
            self.held = None;
        }
        ready
    }

    /// A repair could not read the gap (Postgres unreachable): try again after `wait`.
    pub fn retry_later(&mut self, wait: Duration) {
        self.held.get_or_insert_default().repair_at = Some(Instant::now() + wait);
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::model::Message;

    const WAIT: Duration = Duration::from_millis(100);

    fn event(seq: i64) -> Arc<RoomEvent> {
        Arc::new(RoomEvent::message(&Message::for_test(
            Uuid::nil(),
            seq,
            Uuid::nil(),
        )))
    }

    /// What `arrive` hands out, as the seqs it was given.
    fn seqs(events: Vec<Arc<RoomEvent>>) -> Vec<i64> {
        events.iter().map(|e| e.seq.unwrap_or_default()).collect()
    }

    fn arrive(reorder: &mut Reorder, seq: i64) -> Vec<i64> {
        seqs(reorder.arrive(seq, event(seq), WAIT))
    }

    #[tokio::test(start_paused = true)]
    async fn messages_in_order_are_delivered_at_once_and_duplicates_dropped() {
        let mut reorder = Reorder::new(3);
        assert_eq!(arrive(&mut reorder, 4), [4]);
        assert_eq!(arrive(&mut reorder, 5), [5]);
        assert!(arrive(&mut reorder, 5).is_empty());
        assert!(arrive(&mut reorder, 2).is_empty());
        assert_eq!(reorder.last_seq(), 5);
        assert_eq!(reorder.repair_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_ahead_of_its_predecessor_waits_for_it_then_both_go_in_order() {
        let mut reorder = Reorder::new(0);
        assert!(arrive(&mut reorder, 3).is_empty());
        assert!(arrive(&mut reorder, 2).is_empty());
        assert_eq!(reorder.repair_at(), Some(Instant::now() + WAIT));
        assert_eq!(reorder.missing(), Some(1));
        assert_eq!(arrive(&mut reorder, 1), [1, 2, 3]);
        assert_eq!(reorder.repair_at(), None, "nothing held, nothing to repair");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_starts_with_the_first_held_message_and_later_ones_do_not_extend_it() {
        let mut reorder = Reorder::new(0);
        arrive(&mut reorder, 5);
        let due = reorder.repair_at().unwrap();
        tokio::time::advance(WAIT / 2).await;
        arrive(&mut reorder, 6);
        assert_eq!(reorder.repair_at(), Some(due));
    }

    #[tokio::test(start_paused = true)]
    async fn a_repair_fills_one_gap_at_a_time_and_releases_what_follows_it() {
        let mut reorder = Reorder::new(0);
        for seq in [3, 4, 7] {
            arrive(&mut reorder, seq);
        }
        assert_eq!(reorder.missing(), Some(2));
        reorder.advance(1);
        reorder.advance(2);
        assert_eq!(seqs(reorder.release()), [3, 4]);
        assert_eq!(reorder.missing(), Some(6), "the next gap");
        assert!(reorder.repair_at().is_some());
        for seq in [5, 6] {
            reorder.advance(seq);
        }
        assert_eq!(seqs(reorder.release()), [7]);
        assert_eq!(reorder.missing(), None);
        assert_eq!(reorder.repair_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn held_messages_a_catch_up_overtook_are_dropped_not_delivered_twice() {
        let mut reorder = Reorder::new(0);
        arrive(&mut reorder, 3);
        arrive(&mut reorder, 5);
        // The trailing-message catch-up read 1..=5 from Postgres and delivered them.
        for seq in 1..=5 {
            reorder.advance(seq);
        }
        assert!(reorder.release().is_empty());
        assert_eq!(reorder.last_seq(), 5);
        assert_eq!(reorder.repair_at(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repair_that_could_not_read_the_gap_is_retried_after_another_wait() {
        let mut reorder = Reorder::new(0);
        arrive(&mut reorder, 2);
        tokio::time::advance(WAIT).await;
        reorder.retry_later(WAIT);
        assert_eq!(reorder.repair_at(), Some(Instant::now() + WAIT));
        assert_eq!(reorder.missing(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_held_messages_cut_the_wait_short() {
        let mut reorder = Reorder::new(0);
        for seq in 2..(2 + MAX_HELD as i64) {
            arrive(&mut reorder, seq);
        }
        assert_eq!(reorder.repair_at(), Some(Instant::now() + WAIT));
        arrive(&mut reorder, 2 + MAX_HELD as i64);
        assert_eq!(reorder.repair_at(), Some(Instant::now()));
    }
}
