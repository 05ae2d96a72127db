//! Group commit for sends: on each node, the sends to one room that arrive while a
//! transaction for that room is in flight are stored together in the next one.
//!
//! A room's sends cannot commit in parallel anyway: they serialise on the room row's lock
//! (that is what makes `seq` gapless), and each commit waits for its WAL flush. One send
//! per transaction therefore caps a room at one message per flush. Batching keeps every
//! guarantee and lifts the cap:
//!
//! - the batch's transaction takes the room row's lock first (`SELECT … FOR UPDATE`), so
//!   batches from all nodes still serialise, and numbers its new messages
//!   `last_seq + 1, + 2, …` in arrival order before setting `last_seq` once: gapless;
//! - every check that needs the database (membership, `reply_to`, idempotency keys) runs
//!   under that lock, pipelined with it in one round trip, and a key repeated within the
//!   batch maps to its first message, so no insert can conflict and leave a hole;
//! - a send is queued synchronously ([`Store::queue_send`]), so the sends of one socket
//!   are numbered in the order the socket sent them, however many are in flight;
//! - the new messages are handed to [`OnCommit`] in `seq` order after `COMMIT` and before
//!   any sender is answered (SPEC §1.2): the node publishes them there, so a room's
//!   messages leave each node in order and subscribers need no gap repair for them;
//! - a batch that fails stores nothing and answers every sender with its error, so a
//!   retry is safe.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    Store, StoreError,
    messages::{MESSAGE_COLUMNS, Sent, attach_reactions, message_from_row},
};
use crate::{domain::InvalidInput, model::Message};

/// Sends waiting for one room before new ones are refused as unavailable.
const ROOM_QUEUE: usize = 4096;
/// Most sends stored by one transaction.
const MAX_BATCH: usize = 256;

/// What the node does with each batch's new messages, in `seq` order, after they are
/// committed and before their senders hear so (it publishes them).
pub type OnCommit = Arc<dyn Fn(Vec<Committed>) -> BoxFuture<'static, ()> + Send + Sync>;

/// A message that a batch stored, with the trace context of the request that sent it.
pub struct Committed {
    pub message: Message,
    pub traceparent: Option<Arc<str>>,
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
    pub done: oneshot::Sender<Result<Sent, StoreError>>,
}

/// The rooms with a batch writer running on this node.
#[derive(Default)]
pub(super) struct Batches {
    rooms: Mutex<HashMap<Uuid, mpsc::Sender<PendingSend>>>,
    on_commit: OnceLock<OnCommit>,
}

/// What became of one send of a batch.
enum Outcome {
    /// Refused by a check under the room's lock; nothing stored.
    Refused(StoreError),
    /// Stored by this batch, at this index of the inserted rows.
    Inserted(usize),
    /// A retry of a key stored earlier, by (sender, key).
    Existing((Uuid, String)),
}

impl Store {
    /// Sets what happens to committed messages before their senders are answered; the
    /// first call wins.
    pub fn on_commit(&self, on_commit: OnCommit) {
        let _ = self.batches.on_commit.set(on_commit);
    }

    /// Queues a send for its room's next transaction, in call order, without waiting.
    pub(super) fn queue_send(
        &self,
        room_id: Uuid,
        pending: impl FnOnce(oneshot::Sender<Result<Sent, StoreError>>) -> PendingSend,
    ) -> Result<SendReceipt, StoreError> {
        let (done, receipt) = oneshot::channel();
        let mut rooms = self.batches.rooms.lock().expect("not poisoned");
        let queue = rooms.entry(room_id).or_insert_with(|| {
            let (queue, receiver) = mpsc::channel(ROOM_QUEUE);
            tokio::spawn(self.clone().write_batches(room_id, receiver));
            queue
        });
        queue
            .try_send(pending(done))
            .map_err(|_| StoreError::Unavailable("too many sends queued for this room".into()))?;
        Ok(receipt)
    }

    /// Stores the room's queued sends, a batch per transaction, until the queue is empty.
    async fn write_batches(self, room_id: Uuid, mut queue: mpsc::Receiver<PendingSend>) {
        loop {
            let mut batch = Vec::new();
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                // Senders enqueue under this lock, so an empty queue seen here stays empty.
                let mut rooms = self.batches.rooms.lock().expect("not poisoned");
                if queue.is_empty() {
                    rooms.remove(&room_id);
                    return;
                }
                continue;
            }
            match self.store_batch(room_id, &batch).await {
                Ok(outcomes) => {
                    self.announce(&batch, &outcomes).await;
                    for (pending, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = pending.done.send(outcome);
                    }
                }
                Err(err) => {
                    tracing::warn!(%room_id, error = %err, size = batch.len(), "a batch of sends failed");
                    let shared = share(&err);
                    for pending in batch {
                        let _ = pending.done.send(Err(shared()));
                    }
                }
            }
        }
    }

    /// Hands the batch's new messages, in `seq` order, to [`OnCommit`].
    async fn announce(&self, batch: &[PendingSend], outcomes: &[Result<Sent, StoreError>]) {
        let Some(on_commit) = self.batches.on_commit.get() else {
            return;
        };
        let committed = batch
            .iter()
            .zip(outcomes)
            .filter_map(|(pending, outcome)| match outcome {
                Ok(sent) if sent.created => Some(Committed {
                    message: sent.message.clone(),
                    traceparent: pending.traceparent.clone(),
                }),
                _ => None,
            })
            .collect::<Vec<_>>();
        if !committed.is_empty() {
            on_commit(committed).await;
        }
    }

    /// One transaction: lock the room, check every send, insert the new messages and
    /// move `last_seq`. Returns each send's outcome, in batch order.
    async fn store_batch(
        &self,
        room_id: Uuid,
        batch: &[PendingSend],
    ) -> Result<Vec<Result<Sent, StoreError>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        let senders: Vec<Uuid> = batch.iter().map(|p| p.sender).collect();
        let (key_senders, keys): (Vec<Uuid>, Vec<&str>) = batch
            .iter()
            .filter_map(|p| p.client_msg_id.as_deref().map(|k| (p.sender, k)))
            .unzip();
        let replies: Vec<Uuid> = batch.iter().filter_map(|p| p.reply_to).collect();
        // Pipelined: sent together, run in this order, so every check sees the lock held.
        let locked_room = async {
            tx.query_opt(
                "SELECT kind, last_seq FROM rooms WHERE id = $1 FOR UPDATE",
                &[&room_id],
            )
            .await
        };
        let members = async {
            tx.query(
                "SELECT user_id FROM members WHERE room_id = $1 AND user_id = ANY($2)",
                &[&room_id, &senders],
            )
            .await
        };
        let known_sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE room_id = $1 AND (sender_id, client_msg_id) IN
                    (SELECT * FROM unnest($2::uuid[], $3::text[]))"
        );
        let known = async {
            match keys.is_empty() {
                true => Ok(Vec::new()),
                false => tx.query(&known_sql, &[&room_id, &key_senders, &keys]).await,
            }
        };
        let replied_to = async {
            match replies.is_empty() {
                true => Ok(Vec::new()),
                false => {
                    tx.query(
                        "SELECT id FROM messages WHERE room_id = $1 AND id = ANY($2)",
                        &[&room_id, &replies],
                    )
                    .await
                }
            }
        };
        let (locked_room, members, known, replied_to) =
            futures_util::try_join!(locked_room, members, known, replied_to)?;
        let locked_room = locked_room.ok_or(StoreError::RoomNotFound)?;
        let public = locked_room.get::<_, &str>("kind") == "public";
        let last_seq: i64 = locked_room.get("last_seq");
        let members: HashSet<Uuid> = members.iter().map(|r| r.get(0)).collect();
        let replied_to: HashSet<Uuid> = replied_to.iter().map(|r| r.get(0)).collect();
        let mut known: HashMap<(Uuid, String), Message> = known
            .iter()
            .map(message_from_row)
            .map(|m| {
                (
                    (m.sender_id, m.client_msg_id.clone().unwrap_or_default()),
                    m,
                )
            })
            .collect();

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut first_use: HashMap<(Uuid, &str), usize> = HashMap::new();
        let mut rows = NewRows::default();
        for pending in batch {
            if !members.contains(&pending.sender) {
                // Exactly what `Access` answers: a room one cannot see does not exist.
                let refusal = match public {
                    true => StoreError::NotMember,
                    false => StoreError::RoomNotFound,
                };
                outcomes.push(Outcome::Refused(refusal));
                continue;
            }
            if let Some(key) = pending.client_msg_id.as_deref() {
                let sent_before = (pending.sender, key.to_string());
                if known.contains_key(&sent_before) {
                    outcomes.push(Outcome::Existing(sent_before));
                    continue;
                }
                if let Some(&index) = first_use.get(&(pending.sender, key)) {
                    outcomes.push(Outcome::Inserted(index));
                    continue;
                }
            }
            if let Some(reply_to) = pending.reply_to
                && !replied_to.contains(&reply_to)
            {
                let invalid = InvalidInput::new("reply_to", "is not a message of this room");
                outcomes.push(Outcome::Refused(invalid.into()));
                continue;
            }
            if let Some(key) = pending.client_msg_id.as_deref() {
                first_use.insert((pending.sender, key), rows.ids.len());
            }
            outcomes.push(Outcome::Inserted(rows.ids.len()));
            rows.push(pending, last_seq);
        }

        let mut inserted: HashMap<i64, Message> = HashMap::new();
        if let Some(&new_last_seq) = rows.seqs.last() {
            let sql = format!(
                "WITH moved AS (
                     UPDATE rooms SET last_seq = $8, last_activity_at = now_ms() WHERE id = $1)
                 INSERT INTO messages (id, room_id, seq, sender_id, text, client_msg_id, reply_to)
                 SELECT i, $1, s, u, t, k, r
                   FROM unnest($2::uuid[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], $7::uuid[])
                        AS x(i, s, u, t, k, r)
                 RETURNING {MESSAGE_COLUMNS}"
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                &room_id,
                &rows.ids,
                &rows.seqs,
                &rows.senders,
                &rows.texts,
                &rows.keys,
                &rows.replies,
                &new_last_seq,
            ];
            for row in tx.query(&sql, &params).await? {
                let message = message_from_row(&row);
                inserted.insert(message.seq, message);
            }
        }
        tx.commit().await?;

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
                        .get(&rows.seqs[index])
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

/// The columns of a batch's new messages, as arrays for one `unnest` insert.
#[derive(Default)]
struct NewRows<'a> {
    ids: Vec<Uuid>,
    seqs: Vec<i64>,
    senders: Vec<Uuid>,
    texts: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    replies: Vec<Option<Uuid>>,
}

impl<'a> NewRows<'a> {
    /// Adds a message, numbered right after the previous one.
    fn push(&mut self, pending: &'a PendingSend, last_seq: i64) {
        self.ids.push(Uuid::now_v7());
        self.seqs.push(last_seq + 1 + self.seqs.len() as i64);
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
