//! Group commit for sends: the sends queued on a node while a transaction is in flight
//! are stored together by the next one, across rooms.
//!
//! A room's sends cannot commit in parallel anyway: they serialise on the room row's lock
//! (that is what makes `seq` gapless), and each commit waits for its WAL flush. One send
//! per transaction therefore caps a room at one message per flush, and costs every
//! message its own round trips and flush even when rooms are many and quiet. Batching
//! keeps every guarantee and lifts both costs:
//!
//! - a batch holds the queued sends of several rooms, and a room is in at most one
//!   batch at a time on this node; its transaction locks the batch's room rows first, in
//!   id order (`SELECT … ORDER BY id FOR UPDATE`), so batches from all nodes serialise
//!   per room without deadlocking, and numbers each room's new messages
//!   `last_seq + 1, + 2, …` in arrival order before setting `last_seq` once: gapless;
//! - every check that needs the database (membership, `reply_to`, idempotency keys) runs
//!   under those locks, pipelined with them in one round trip, and a key repeated within
//!   the batch maps to its first message, so no insert can conflict and leave a hole;
//! - a send is queued synchronously ([`Store::queue_send`]), so the sends of one socket
//!   are numbered in the order the socket sent them, however many are in flight;
//! - the new messages are handed to [`OnCommit`] in `seq` order after `COMMIT` and before
//!   any sender is answered (SPEC §1.2): the node publishes them there, so a room's
//!   messages leave each node in order and subscribers need no gap repair for them. One
//!   announcer task does this for every batch of the node, in the order the batches
//!   committed; a batch is queued to it *before* its rooms are released, so a room's next
//!   batch is announced after this one, while its transaction already runs: publishing
//!   is off the room's critical path, which is what bounds a hot room;
//! - a batch that fails stores nothing and answers every sender with its error, so a
//!   retry is safe;
//! - one writer task takes batch after batch while it keeps up; more (up to
//!   `queues::MAX_WRITERS`) start only when it falls behind (`queues::WRITER_PATIENCE`),
//!   so a quiet node makes few, larger transactions and a stalled one does not hold up
//!   other rooms.
//!
//! This module runs the writers and the announcer; `queues` decides which sends a
//! writer takes and when another writer starts, `batch` is one batch's transaction.

mod batch;
mod queues;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Instant, SystemTime},
};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::{histogram::LatencyHistogram, model::Message};
use queues::{Batch, Queues};

/// Committed batches waiting for the announcer; a writer that finds the queue full waits,
/// holding its rooms, so a slow NATS slows sends instead of growing memory.
const ANNOUNCE_QUEUE: usize = 16;

/// What the node does with each batch's new messages, in `seq` order, after they are
/// committed and before their senders hear so (it publishes them).
pub type OnCommit = Arc<dyn Fn(Vec<Committed>) -> BoxFuture<'static, ()> + Send + Sync>;

/// A message that a batch stored, with the trace context of the request that sent it.
pub struct Committed {
    pub message: Message,
    pub traceparent: Option<Arc<str>>,
    /// When the batch's transaction began: the commit span's start.
    pub transaction_began: SystemTime,
}

/// The answer to one queued send: resolves once its batch has committed (or failed).
pub type SendReceipt = oneshot::Receiver<Result<Sent, StoreError>>;

/// The outcome of a send: the stored message and whether this call stored it (`false`
/// for a retry of an earlier `client_msg_id`).
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: Message,
    pub created: bool,
}

/// Waits for a queued send's outcome.
pub async fn sent_of(receipt: SendReceipt) -> Result<Sent, StoreError> {
    receipt
        .await
        .map_err(|_| StoreError::Unavailable("the send was abandoned".into()))?
}

/// A send whose input is valid, waiting for its room's next transaction.
pub(super) struct PendingSend {
    pub sender: Uuid,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub reply_to: Option<Uuid>,
    pub traceparent: Option<Arc<str>>,
    /// When the send joined its room's queue, for [`CommitTimings::queue_wait`].
    pub queued_at: Instant,
    pub done: oneshot::Sender<Result<Sent, StoreError>>,
}

/// The sends waiting on this node, by room, and which rooms a transaction holds.
#[derive(Default)]
pub(super) struct Batches {
    state: Mutex<Queues>,
    /// The announcer's queue, once [`Store::on_commit`] has started it.
    announcer: OnceLock<mpsc::Sender<Announcement>>,
    timings: CommitTimings,
}

/// Where a send's time to durability goes, for `/metrics`: waiting for a writer (the
/// running ones busy, or its room held by the transaction before), then its batch's
/// transaction.
#[derive(Default)]
pub struct CommitTimings {
    /// Per send: from its queueing to the start of its batch's transaction.
    pub queue_wait: LatencyHistogram,
    /// Per batch, failed ones too: from `BEGIN` to the answer to `COMMIT`.
    pub transaction: LatencyHistogram,
}

/// A committed batch on its way to [`OnCommit`] and then to its senders.
struct Announcement {
    /// The new messages, in `seq` order per room.
    committed: Vec<Committed>,
    /// Every send of the batch with its outcome, in batch order.
    answers: Vec<(PendingSend, Result<Sent, StoreError>)>,
}

impl Store {
    /// How long sends waited for a writer and batches took to commit.
    pub fn commit_timings(&self) -> &CommitTimings {
        &self.batches.timings
    }

    /// Sets what happens to committed messages before their senders are answered, and
    /// starts the task that does it; the first call wins. Without one, senders are
    /// answered as soon as their batch commits.
    pub fn on_commit(&self, on_commit: OnCommit) {
        let (queue, mut announcements) = mpsc::channel::<Announcement>(ANNOUNCE_QUEUE);
        if self.batches.announcer.set(queue).is_err() {
            return;
        }
        // Ends when the store, and with it the queue's sender, is dropped.
        tokio::spawn(async move {
            while let Some(Announcement { committed, answers }) = announcements.recv().await {
                // A batch is announced without tokio's cooperative yields: every send
                // to a room task, to NATS and to a sender counts against the task's
                // budget, and a batch of 256 spent it several times, each time waiting
                // at the back of a run queue holding thousands of sockets' tasks. The
                // announcer was busy 850-990 ms of every second at 20,000-24,000 sends/s
                // that way, 170-330 without; it still waits whenever NATS pushes back,
                // and a batch's own work is a few milliseconds.
                tokio::task::unconstrained(async {
                    if !committed.is_empty() {
                        on_commit(committed).await;
                    }
                    answer(answers);
                })
                .await;
            }
        });
    }

    /// Queues a send for its room's next transaction, in call order, without waiting.
    pub(super) fn queue_send(
        &self,
        room_id: Uuid,
        pending: impl FnOnce(oneshot::Sender<Result<Sent, StoreError>>) -> PendingSend,
    ) -> Result<SendReceipt, StoreError> {
        let (done, receipt) = oneshot::channel();
        let start_writer = self
            .batches
            .state
            .lock()
            .expect("not poisoned")
            .push(room_id, pending(done))?;
        if start_writer {
            tokio::spawn(self.clone().write_batches());
        }
        Ok(receipt)
    }

    /// Stores batches of queued sends until none are ready.
    async fn write_batches(self) {
        loop {
            let batch = self
                .batches
                .state
                .lock()
                .expect("not poisoned")
                .take_batch();
            if batch.is_empty() {
                return;
            }
            let began = SystemTime::now();
            let started = Instant::now();
            let timings = &self.batches.timings;
            for (_, sends) in &batch {
                for pending in sends {
                    timings.queue_wait.observe(started - pending.queued_at);
                }
            }
            let stored = self.store_batch(&batch).await;
            timings.transaction.observe(started.elapsed());
            match stored {
                Ok(outcomes) => {
                    let rooms: Vec<Uuid> = batch.iter().map(|(room_id, _)| *room_id).collect();
                    // Queued before the rooms are released, so a room's next batch is
                    // announced after this one.
                    self.announce(batch, outcomes, began).await;
                    self.release(rooms.into_iter());
                }
                Err(err) => {
                    let rooms = batch.len();
                    let size: usize = batch.iter().map(|(_, sends)| sends.len()).sum();
                    tracing::warn!(error = %err, rooms, size, "a batch of sends failed");
                    self.count_failure();
                    self.release(batch.iter().map(|(room_id, _)| *room_id));
                    for (_, sends) in batch {
                        for pending in sends {
                            let _ = pending.done.send(Err(err.clone()));
                        }
                    }
                }
            }
        }
    }

    fn release(&self, rooms: impl Iterator<Item = Uuid>) {
        let mut queues = self.batches.state.lock().expect("not poisoned");
        queues.release(rooms);
    }

    /// Queues a committed batch for the announcer, which hands its new messages, in
    /// `seq` order per room, to [`OnCommit`] and then answers its senders.
    async fn announce(
        &self,
        batch: Batch,
        outcomes: Vec<Result<Sent, StoreError>>,
        transaction_began: SystemTime,
    ) {
        let answers: Vec<(PendingSend, Result<Sent, StoreError>)> = batch
            .into_iter()
            .flat_map(|(_, sends)| sends)
            .zip(outcomes)
            .collect();
        let Some(announcer) = self.batches.announcer.get() else {
            return answer(answers);
        };
        let committed = answers
            .iter()
            .filter_map(|(pending, outcome)| match outcome {
                Ok(sent) if sent.created => Some(Committed {
                    message: sent.message.clone(),
                    traceparent: pending.traceparent.clone(),
                    transaction_began,
                }),
                _ => None,
            })
            .collect();
        if let Err(mpsc::error::SendError(lost)) =
            announcer.send(Announcement { committed, answers }).await
        {
            // The announcer is gone only while the node shuts down; the messages are
            // committed, so their senders still hear so.
            answer(lost.answers);
        }
    }
}

/// Answers every send of a batch with its outcome.
fn answer(answers: Vec<(PendingSend, Result<Sent, StoreError>)>) {
    for (pending, outcome) in answers {
        let _ = pending.done.send(outcome);
    }
}
