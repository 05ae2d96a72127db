//! The group commit's scheduler, as plain decisions over plain data: which sends wait
//! for which room, which rooms a transaction holds, which batch a writer takes next and
//! whether a new send should start another writer. No I/O and no locks: the caller holds
//! the one mutex around a [`Queues`], and the tests drive it with tokio's paused clock.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::time::{Duration, Instant};
use uuid::Uuid;

use super::PendingSend;
use crate::store::StoreError;

/// Sends waiting for one room before new ones are refused as unavailable.
pub(super) const ROOM_QUEUE: usize = 4096;
/// Most sends stored by one transaction.
pub(super) const MAX_BATCH: usize = 256;
/// Transactions of sends in flight at once per node (each on its own set of rooms), so
/// one batch's flush overlaps the next one's round trips.
pub(super) const MAX_WRITERS: usize = 4;
/// How long the newest transaction may run before the next send starts another writer.
///
/// A writer beyond the first starts only when the ones running fall behind: a full
/// batch waits, or the newest transaction has run this long (a slow disk, a room's lock
/// held by another node's batch). While one writer keeps up, its batches grow with the
/// load instead of splitting four ways, and every transaction Postgres is spared is a
/// commit, its planning and a WAL flush: at 8,000 sends/s on one node, four writers
/// ran 950-1,360 transactions a second and one ran 750-800, with a third less
/// Postgres CPU and half the median latency (BENCHMARKS.md, sixth session).
pub(super) const WRITER_PATIENCE: Duration = Duration::from_millis(10);

/// The sends waiting on this node, by room, and which rooms a transaction holds.
#[derive(Default)]
pub(super) struct Queues {
    /// Sends not yet taken by a writer, per room, in arrival order.
    waiting: HashMap<Uuid, VecDeque<PendingSend>>,
    /// Rooms with waiting sends and no transaction in flight, oldest first.
    ready: VecDeque<Uuid>,
    /// Rooms a writer's transaction holds now; their new sends wait for the next one.
    in_flight: HashSet<Uuid>,
    /// Writer tasks running.
    writers: usize,
    /// Sends in `waiting`, all rooms together (kept beside the queues: deriving it would
    /// walk every room on every send).
    waiting_sends: usize,
    /// When the newest batch was taken: every running writer has been at its batch at
    /// least this long.
    newest_batch: Option<Instant>,
}

/// A batch a writer took: each room once, with its sends in arrival order.
pub(super) type Batch = Vec<(Uuid, Vec<PendingSend>)>;

impl Queues {
    /// Queues a send behind its room's earlier ones. `Ok(true)` when the caller should
    /// start another writer (it is then counted as running).
    pub fn push(&mut self, room_id: Uuid, send: PendingSend) -> Result<bool, StoreError> {
        let queue = self.waiting.entry(room_id).or_default();
        if queue.len() >= ROOM_QUEUE {
            return Err(StoreError::Unavailable(
                "too many sends queued for this room".into(),
            ));
        }
        let first = queue.is_empty();
        queue.push_back(send);
        self.waiting_sends += 1;
        if first && !self.in_flight.contains(&room_id) {
            self.ready.push_back(room_id);
        }
        let start = self.wants_writer();
        if start {
            self.writers += 1;
        }
        Ok(start)
    }

    /// Takes up to [`MAX_BATCH`] sends from ready rooms, whole rooms first, and marks
    /// those rooms in flight. An empty batch means the calling writer stops: it is no
    /// longer counted as running.
    pub fn take_batch(&mut self) -> Batch {
        let mut batch = Vec::new();
        let mut size = 0;
        while size < MAX_BATCH {
            let Some(room_id) = self.ready.pop_front() else {
                break;
            };
            let Some(queue) = self.waiting.get_mut(&room_id) else {
                continue;
            };
            let take = queue.len().min(MAX_BATCH - size);
            let sends: Vec<PendingSend> = queue.drain(..take).collect();
            self.waiting_sends -= sends.len();
            if queue.is_empty() {
                self.waiting.remove(&room_id);
            }
            size += sends.len();
            self.in_flight.insert(room_id);
            batch.push((room_id, sends));
        }
        if batch.is_empty() {
            self.writers -= 1;
        } else {
            self.newest_batch = Some(Instant::now());
        }
        batch
    }

    /// Whether a new send should start another writer (see [`WRITER_PATIENCE`]). The
    /// cheap checks come first, so a saturated node reads no clock per send.
    fn wants_writer(&self) -> bool {
        if self.writers >= MAX_WRITERS || self.ready.is_empty() {
            return false;
        }
        self.writers == 0
            || self.waiting_sends >= MAX_BATCH
            || self
                .newest_batch
                .is_some_and(|taken| taken.elapsed() >= WRITER_PATIENCE)
    }

    /// Releases a batch's rooms; those with sends that arrived meanwhile are ready again.
    pub fn release(&mut self, rooms: impl Iterator<Item = Uuid>) {
        for room_id in rooms {
            self.in_flight.remove(&room_id);
            if self.waiting.contains_key(&room_id) {
                self.ready.push_back(room_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    fn send(text: &str) -> PendingSend {
        let (done, _) = oneshot::channel();
        PendingSend {
            sender: Uuid::nil(),
            text: text.into(),
            client_msg_id: None,
            reply_to: None,
            traceparent: None,
            queued_at: std::time::Instant::now(),
            done,
        }
    }

    fn room(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn texts(batch: &Batch) -> Vec<(Uuid, Vec<String>)> {
        batch
            .iter()
            .map(|(room, sends)| (*room, sends.iter().map(|s| s.text.clone()).collect()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_send_starts_a_writer_and_the_next_ones_wait_for_it() {
        let mut queues = Queues::default();
        assert!(queues.push(room(1), send("a")).unwrap());
        assert!(!queues.push(room(2), send("b")).unwrap());
        assert_eq!(queues.writers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_whole_rooms_in_the_order_they_became_ready() {
        let mut queues = Queues::default();
        queues.push(room(2), send("first")).unwrap();
        queues.push(room(1), send("second")).unwrap();
        queues.push(room(2), send("third")).unwrap();
        let batch = queues.take_batch();
        assert_eq!(
            texts(&batch),
            [
                (room(2), vec!["first".into(), "third".into()]),
                (room(1), vec!["second".into()]),
            ]
        );
        assert_eq!(queues.waiting_sends, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_in_flight_is_not_taken_again_until_released() {
        let mut queues = Queues::default();
        queues.push(room(1), send("a")).unwrap();
        let first = queues.take_batch();
        assert_eq!(first.len(), 1);
        queues.push(room(1), send("b")).unwrap();
        queues.writers += 1; // a second writer looks for work
        assert!(
            queues.take_batch().is_empty(),
            "room 1 is held by the first batch"
        );
        queues.release([room(1)].into_iter());
        let next = queues.take_batch();
        assert_eq!(texts(&next), [(room(1), vec!["b".into()])]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_stops_at_its_size_and_leaves_the_rest_of_a_room_ready() {
        let mut queues = Queues::default();
        for i in 0..MAX_BATCH + 10 {
            queues.push(room(1), send(&i.to_string())).unwrap();
        }
        queues.push(room(2), send("other")).unwrap();
        let batch = queues.take_batch();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1.len(), MAX_BATCH);
        // The rest of room 1 waits for the release, room 2 is ready now.
        queues.writers += 1;
        assert_eq!(
            texts(&queues.take_batch()),
            [(room(2), vec!["other".into()])]
        );
        queues.release([room(1)].into_iter());
        queues.writers += 1;
        let rest = queues.take_batch();
        assert_eq!(rest[0].1.len(), 10);
        assert_eq!(rest[0].1[0].text, MAX_BATCH.to_string());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_writer_starts_only_once_the_first_has_run_past_its_patience() {
        let mut queues = Queues::default();
        assert!(queues.push(room(1), send("a")).unwrap());
        queues.take_batch();
        assert!(!queues.push(room(2), send("b")).unwrap());
        tokio::time::advance(WRITER_PATIENCE - Duration::from_millis(1)).await;
        assert!(!queues.push(room(3), send("c")).unwrap());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(queues.push(room(4), send("d")).unwrap());
        assert_eq!(queues.writers, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_waiting_starts_a_writer_at_once() {
        let mut queues = Queues::default();
        assert!(queues.push(room(1), send("held")).unwrap());
        queues.take_batch();
        for i in 0..MAX_BATCH - 1 {
            assert!(!queues.push(room(2), send(&i.to_string())).unwrap());
        }
        assert!(queues.push(room(3), send("full")).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn sends_for_a_room_held_by_a_transaction_start_no_writer() {
        let mut queues = Queues::default();
        queues.push(room(1), send("a")).unwrap();
        queues.take_batch();
        tokio::time::advance(WRITER_PATIENCE * 10).await;
        // Room 1 is in flight, so nothing is ready: another writer would find no work.
        assert!(!queues.push(room(1), send("b")).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn writers_never_exceed_the_cap() {
        let mut queues = Queues::default();
        let mut started = 0;
        for i in 0..100u128 {
            started += usize::from(queues.push(room(i), send("x")).unwrap());
            if started > 0 && i % 2 == 0 {
                queues.take_batch();
            }
            tokio::time::advance(WRITER_PATIENCE).await;
        }
        assert_eq!(started, MAX_WRITERS);
        assert_eq!(queues.writers, MAX_WRITERS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_finds_no_work_stops_counting() {
        let mut queues = Queues::default();
        queues.push(room(1), send("a")).unwrap();
        assert!(!queues.take_batch().is_empty());
        assert!(queues.take_batch().is_empty());
        assert_eq!(queues.writers, 0);
        assert!(queues.push(room(2), send("b")).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_with_a_full_queue_refuses_more_sends() {
        let mut queues = Queues::default();
        for _ in 0..ROOM_QUEUE {
            queues.push(room(1), send("x")).unwrap();
        }
        assert!(matches!(
            queues.push(room(1), send("one too many")),
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            queues
                .push(room(2), send("other rooms still queue"))
                .is_ok()
        );
    }
}
