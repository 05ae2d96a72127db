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
//!   [`MAX_WRITERS`]) start only when it falls behind ([`WRITER_PATIENCE`]), so a quiet
//!   node makes few, larger transactions and a stalled one does not hold up other rooms.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, LazyLock, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Row, types::ToSql};
use uuid::Uuid;

use super::{
    Store, StoreError,
    messages::{MESSAGE_COLUMNS, Sent, attach_reactions, message_from_row},
    rooms::Access,
};
use crate::{
    domain::InvalidInput,
    metrics::LatencyHistogram,
    model::{Message, Role, RoomKind},
};

/// Sends waiting for one room before new ones are refused as unavailable.
const ROOM_QUEUE: usize = 4096;
/// Most sends stored by one transaction.
const MAX_BATCH: usize = 256;
/// Transactions of sends in flight at once per node (each on its own set of rooms), so
/// one batch's flush overlaps the next one's round trips.
const MAX_WRITERS: usize = 4;
/// How long the newest transaction may run before the next send starts another writer.
///
/// A writer beyond the first starts only when the ones running fall behind: a full
/// batch waits, or the newest transaction has run this long (a slow disk, a room's lock
/// held by another node's batch). While one writer keeps up, its batches grow with the
/// load instead of splitting four ways, and every transaction Postgres is spared is a
/// commit, its planning and a WAL flush: at 8,000 sends/s on one node, four writers
/// ran 950-1,360 transactions a second and one ran 750-800, with a third less
/// Postgres CPU and half the median latency (BENCHMARKS.md, sixth session).
const WRITER_PATIENCE: Duration = Duration::from_millis(10);
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

#[derive(Default)]
struct Queues {
    /// Sends not yet taken by a writer, per room, in arrival order.
    waiting: HashMap<Uuid, VecDeque<PendingSend>>,
    /// Rooms with waiting sends and no transaction in flight, oldest first.
    ready: VecDeque<Uuid>,
    /// Rooms a writer's transaction holds now; their new sends wait for the next one.
    in_flight: HashSet<Uuid>,
    /// Writer tasks running.
    writers: usize,
    /// Sends in `waiting`, all rooms together.
    waiting_sends: usize,
    /// When the newest batch was taken: every running writer has been at its batch at
    /// least this long.
    newest_batch: Option<Instant>,
}

impl Queues {
    /// Takes up to [`MAX_BATCH`] sends from ready rooms, whole rooms first, and marks
    /// those rooms in flight.
    fn take_batch(&mut self) -> Vec<(Uuid, Vec<PendingSend>)> {
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
        if !batch.is_empty() {
            self.newest_batch = Some(Instant::now());
        }
        batch
    }

    /// Whether a new send should start another writer (see [`WRITER_PATIENCE`]).
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
    fn release(&mut self, rooms: impl Iterator<Item = Uuid>) {
        for room_id in rooms {
            self.in_flight.remove(&room_id);
            if self.waiting.contains_key(&room_id) {
                self.ready.push_back(room_id);
            }
        }
    }
}

/// What became of one send of a batch.
enum Outcome {
    /// Refused by a check under the room's lock; nothing stored.
    Refused(StoreError),
    /// Stored by this batch, at this index of the inserted rows.
    Inserted(usize),
    /// A retry of a key stored earlier, by (room, sender, key).
    Existing((Uuid, Uuid, String)),
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
        let mut queues = self.batches.state.lock().expect("not poisoned");
        let queues = &mut *queues;
        let queue = queues.waiting.entry(room_id).or_default();
        if queue.len() >= ROOM_QUEUE {
            return Err(StoreError::Unavailable(
                "too many sends queued for this room".into(),
            ));
        }
        let first = queue.is_empty();
        queue.push_back(pending(done));
        queues.waiting_sends += 1;
        if first && !queues.in_flight.contains(&room_id) {
            queues.ready.push_back(room_id);
        }
        if queues.wants_writer() {
            queues.writers += 1;
            tokio::spawn(self.clone().write_batches());
        }
        Ok(receipt)
    }

    /// Stores batches of queued sends until none are ready.
    async fn write_batches(self) {
        loop {
            let batch = {
                let mut queues = self.batches.state.lock().expect("not poisoned");
                let batch = queues.take_batch();
                if batch.is_empty() {
                    queues.writers -= 1;
                    return;
                }
                batch
            };
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
                    let shared = share(&err);
                    for (_, sends) in batch {
                        for pending in sends {
                            let _ = pending.done.send(Err(shared()));
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
        batch: Vec<(Uuid, Vec<PendingSend>)>,
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

    /// One transaction: lock the batch's rooms, check every send, insert the new
    /// messages and move each room's `last_seq`. Returns each send's outcome, in batch
    /// order (room by room, each room's sends in arrival order).
    async fn store_batch(
        &self,
        batch: &[(Uuid, Vec<PendingSend>)],
    ) -> Result<Vec<Result<Sent, StoreError>>, StoreError> {
        let tx = PipelinedTransaction(Some(self.client().await?));
        let sends = || {
            batch
                .iter()
                .flat_map(|(room_id, sends)| sends.iter().map(move |p| (*room_id, p)))
        };
        let room_ids: Vec<Uuid> = batch.iter().map(|(room_id, _)| *room_id).collect();
        let checks = Checks::of(sends());
        let Checked {
            locked_rooms,
            members,
            known,
            replied_to,
        } = checks.run(&tx, &room_ids).await?;
        // Per room: its kind, and the last `seq` given so far.
        let mut rooms: HashMap<Uuid, (RoomKind, i64)> = locked_rooms
            .iter()
            .map(|r| {
                let kind = RoomKind::from_db(r.get("kind"));
                (r.get("id"), (kind, r.get::<_, i64>("last_seq")))
            })
            .collect();
        let roles: HashMap<(Uuid, Uuid), Role> = members
            .iter()
            .map(|r| ((r.get(0), r.get(1)), Role::from_db(r.get(2))))
            .collect();
        let replied_to: HashSet<(Uuid, Uuid)> =
            replied_to.iter().map(|r| (r.get(1), r.get(0))).collect();
        let mut known: HashMap<(Uuid, Uuid, String), Message> = known
            .iter()
            .map(message_from_row)
            .map(|m| {
                (
                    (
                        m.room_id,
                        m.sender_id,
                        m.client_msg_id.clone().unwrap_or_default(),
                    ),
                    m,
                )
            })
            .collect();

        let mut outcomes = Vec::with_capacity(checks.senders.len());
        let mut first_use: HashMap<(Uuid, Uuid, &str), usize> = HashMap::new();
        let mut rows = NewRows::default();
        for (room_id, pending) in sends() {
            let Some((kind, last_seq)) = rooms.get_mut(&room_id) else {
                outcomes.push(Outcome::Refused(StoreError::RoomNotFound));
                continue;
            };
            let role = roles.get(&(room_id, pending.sender)).copied();
            if let Err(refusal) = Access::given(*kind, role).and_then(Access::require_member) {
                outcomes.push(Outcome::Refused(refusal));
                continue;
            }
            if let Some(key) = pending.client_msg_id.as_deref() {
                let sent_before = (room_id, pending.sender, key.to_string());
                if known.contains_key(&sent_before) {
                    outcomes.push(Outcome::Existing(sent_before));
                    continue;
                }
                if let Some(&index) = first_use.get(&(room_id, pending.sender, key)) {
                    outcomes.push(Outcome::Inserted(index));
                    continue;
                }
            }
            if let Some(reply_to) = pending.reply_to
                && !replied_to.contains(&(room_id, reply_to))
            {
                let invalid = InvalidInput::new("reply_to", "is not a message of this room");
                outcomes.push(Outcome::Refused(invalid.into()));
                continue;
            }
            if let Some(key) = pending.client_msg_id.as_deref() {
                first_use.insert((room_id, pending.sender, key), rows.ids.len());
            }
            outcomes.push(Outcome::Inserted(rows.ids.len()));
            *last_seq += 1;
            rows.push(room_id, *last_seq, pending);
        }

        let (moved_rooms, moved_to): (Vec<Uuid>, Vec<i64>) = batch
            .iter()
            .filter_map(|(room_id, _)| rooms.get(room_id).map(|(_, seq)| (*room_id, *seq)))
            .unzip();
        let params: [&(dyn ToSql + Sync); 9] = [
            &rows.ids,
            &rows.rooms,
            &rows.seqs,
            &rows.senders,
            &rows.texts,
            &rows.keys,
            &rows.replies,
            &moved_rooms,
            &moved_to,
        ];
        // Prepared before the pipeline, or the COMMIT would go out ahead of it.
        let insert = tx.prepare_cached(&INSERT_SQL).await?;
        let inserted = async {
            match rows.ids.is_empty() {
                true => Ok(Vec::new()),
                false => tx.query(&insert, &params).await,
            }
        };
        // Sent together: if the insert fails, Postgres answers the COMMIT by rolling back.
        let (inserted, ()) = futures_util::try_join!(inserted, tx.batch_execute("COMMIT"))?;
        let client = tx.committed();
        let inserted: HashMap<(Uuid, i64), Message> = inserted
            .iter()
            .map(message_from_row)
            .map(|message| ((message.room_id, message.seq), message))
            .collect();

        // A retry answers with the original as its sender sees it, reactions included.
        for message in known.values_mut() {
            attach_reactions(&client, message.sender_id, std::slice::from_mut(message)).await?;
        }
        let mut announced = vec![false; rows.ids.len()];
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Refused(err) => Err(err),
                Outcome::Existing(sent_before) => Ok(Sent {
                    message: known
                        .get(&sent_before)
                        .cloned()
                        .ok_or(StoreError::MessageNotFound)?,
                    created: false,
                }),
                Outcome::Inserted(index) => {
                    let message = inserted
                        .get(&(rows.rooms[index], rows.seqs[index]))
                        .cloned()
                        .ok_or(StoreError::MessageNotFound)?;
                    // The first send of a key created it; repeats in the batch did not.
                    let created = !std::mem::replace(&mut announced[index], true);
                    Ok(Sent { message, created })
                }
            })
            .collect())
    }
}

/// Stores a batch's new messages and moves each room's `last_seq` and activity time.
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH moved AS (
             UPDATE rooms SET last_seq = x.s, last_activity_at = now_ms()
               FROM unnest($8::uuid[], $9::bigint[]) AS x(r, s)
              WHERE rooms.id = x.r AND rooms.last_seq <> x.s)
         INSERT INTO messages (id, room_id, seq, sender_id, text, client_msg_id, reply_to)
         SELECT i, m, s, u, t, k, r
           FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], $7::uuid[])
                AS x(i, m, s, u, t, k, r)
         RETURNING {MESSAGE_COLUMNS}"
    )
});

/// The messages a batch's keyed sends stored before, by (room, sender, key). The key's
/// index covers keyed messages only, so the query says it wants only those.
static KNOWN_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
          WHERE client_msg_id IS NOT NULL
            AND (room_id, sender_id, client_msg_id) IN
                (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]))"
    )
});

/// A batch's transaction, with its `BEGIN` and `COMMIT` sent in the same round trip
/// as the statements beside them rather than each in its own, as tokio-postgres's
/// `Transaction` does: two round trips fewer per batch, and under load each round trip
/// also waits its turn on a busy scheduler, once each way. A transaction dropped before
/// its commit, by an error or because its future was, takes its connection out of the
/// pool and so closes it: no pooled connection is ever left inside a transaction.
struct PipelinedTransaction(Option<deadpool_postgres::Object>);

impl PipelinedTransaction {
    /// The connection, back to the pool when dropped, once `COMMIT` has succeeded.
    fn committed(mut self) -> deadpool_postgres::Object {
        self.0.take().expect("taken only here")
    }
}

impl std::ops::Deref for PipelinedTransaction {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only by committed")
    }
}

impl Drop for PipelinedTransaction {
    fn drop(&mut self) {
        if let Some(open) = self.0.take() {
            drop(deadpool_postgres::Object::take(open));
        }
    }
}

/// A batch's room locks and the checks that must see them held, with the checks'
/// parameters as arrays, sent to Postgres as one pipelined round trip behind `BEGIN`.
struct Checks<'a> {
    send_rooms: Vec<Uuid>,
    senders: Vec<Uuid>,
    /// (room, sender, key) of the sends that carry an idempotency key.
    keyed: (Vec<Uuid>, Vec<Uuid>, Vec<&'a str>),
    /// The messages the sends reply to.
    replies: Vec<Uuid>,
}

/// The rows the checks read.
struct Checked {
    /// `id, kind, last_seq` of each room row locked.
    locked_rooms: Vec<Row>,
    members: Vec<Row>,
    known: Vec<Row>,
    replied_to: Vec<Row>,
}

impl<'a> Checks<'a> {
    fn of(sends: impl Iterator<Item = (Uuid, &'a PendingSend)>) -> Self {
        let mut checks = Checks {
            send_rooms: Vec::new(),
            senders: Vec::new(),
            keyed: (Vec::new(), Vec::new(), Vec::new()),
            replies: Vec::new(),
        };
        for (room_id, p) in sends {
            checks.send_rooms.push(room_id);
            checks.senders.push(p.sender);
            if let Some(key) = p.client_msg_id.as_deref() {
                checks.keyed.0.push(room_id);
                checks.keyed.1.push(p.sender);
                checks.keyed.2.push(key);
            }
            checks.replies.extend(p.reply_to);
        }
        checks
    }

    /// Begins the transaction, locks the rows of `rooms` in id order (so batches from
    /// all nodes serialise per room without deadlocking) and runs the checks: sent
    /// together and run in this order, so every check reads what the transactions that
    /// held those locks before committed.
    async fn run(
        &self,
        tx: &PipelinedTransaction,
        rooms: &[Uuid],
    ) -> Result<Checked, tokio_postgres::Error> {
        // Prepared first (from the connection's cache after its first batch): a query
        // whose statement still had to be prepared would go out behind the ones after it.
        let lock = tx
            .prepare_cached(
                "SELECT id, kind, last_seq FROM rooms WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .await?;
        let members = tx
            .prepare_cached(
                "SELECT room_id, user_id, role FROM members
                  WHERE (room_id, user_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
            )
            .await?;
        let known = tx.prepare_cached(&KNOWN_SQL).await?;
        let replied_to = tx
            .prepare_cached("SELECT id, room_id FROM messages WHERE id = ANY($1)")
            .await?;
        let keyed = &self.keyed;
        // A check with nothing to look at is not sent.
        let known = async {
            match keyed.0.is_empty() {
                true => Ok(Vec::new()),
                false => tx.query(&known, &[&keyed.0, &keyed.1, &keyed.2]).await,
            }
        };
        let replied_to = async {
            match self.replies.is_empty() {
                true => Ok(Vec::new()),
                false => tx.query(&replied_to, &[&self.replies]).await,
            }
        };
        let lock_params: [&(dyn ToSql + Sync); 1] = [&rooms];
        let member_params: [&(dyn ToSql + Sync); 2] = [&self.send_rooms, &self.senders];
        let ((), locked_rooms, members, known, replied_to) = futures_util::try_join!(
            tx.batch_execute("BEGIN"),
            tx.query(&lock, &lock_params),
            tx.query(&members, &member_params),
            known,
            replied_to,
        )?;
        Ok(Checked {
            locked_rooms,
            members,
            known,
            replied_to,
        })
    }
}

/// Answers every send of a batch with its outcome.
fn answer(answers: Vec<(PendingSend, Result<Sent, StoreError>)>) {
    for (pending, outcome) in answers {
        let _ = pending.done.send(outcome);
    }
}

/// The columns of a batch's new messages, as arrays for one `unnest` insert.
#[derive(Default)]
struct NewRows<'a> {
    ids: Vec<Uuid>,
    rooms: Vec<Uuid>,
    seqs: Vec<i64>,
    senders: Vec<Uuid>,
    texts: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    replies: Vec<Option<Uuid>>,
}

impl<'a> NewRows<'a> {
    fn push(&mut self, room_id: Uuid, seq: i64, pending: &'a PendingSend) {
        self.ids.push(Uuid::now_v7());
        self.rooms.push(room_id);
        self.seqs.push(seq);
        self.senders.push(pending.sender);
        self.texts.push(&pending.text);
        self.keys.push(pending.client_msg_id.as_deref());
        self.replies.push(pending.reply_to);
    }
}

/// The batch's error, once per sender (errors do not clone; what a client needs does).
fn share(err: &StoreError) -> impl Fn() -> StoreError {
    let unavailable = matches!(err, StoreError::Unavailable(_));
    let missing = matches!(err, StoreError::RoomNotFound);
    let message = err.to_string();
    move || {
        if missing {
            StoreError::RoomNotFound
        } else if unavailable {
            StoreError::Unavailable(message.clone())
        } else {
            StoreError::Failed(message.clone())
        }
    }
}
