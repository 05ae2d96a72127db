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
//!   `last_seq + 1, + 2, …` before setting `last_seq` once: gapless, in arrival order;
//! - idempotency keys are checked under that lock, and a key repeated within the batch
//!   maps to its first message, so no insert can conflict and leave a hole;
//! - every sender is answered only after `COMMIT` (SPEC §1.2), with the error of the
//!   batch if it failed (nothing of it was stored, so a retry is safe).

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    Store, StoreError,
    messages::{MESSAGE_COLUMNS, Sent, message_from_row},
};
use crate::model::Message;

/// Sends waiting for one room before new ones are refused as unavailable.
const ROOM_QUEUE: usize = 4096;
/// Most sends stored by one transaction.
const MAX_BATCH: usize = 256;

/// A send that passed its checks and waits for its room's next transaction.
pub(super) struct PendingSend {
    pub sender: Uuid,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub reply_to: Option<Uuid>,
    pub done: oneshot::Sender<Result<Sent, StoreError>>,
}

/// The rooms with a batch writer running on this node.
#[derive(Default)]
pub(super) struct Batches {
    rooms: Mutex<HashMap<Uuid, mpsc::Sender<PendingSend>>>,
}

/// What became of one send of a batch.
enum Outcome {
    /// Stored by this batch, at this index of the inserted rows.
    Inserted(usize),
    /// A retry of a key stored earlier.
    Existing(Message),
}

impl Store {
    /// Queues a checked send for its room's next transaction and waits for the commit.
    pub(super) async fn commit_send(
        &self,
        room_id: Uuid,
        pending: impl FnOnce(oneshot::Sender<Result<Sent, StoreError>>) -> PendingSend,
    ) -> Result<Sent, StoreError> {
        let (done, result) = oneshot::channel();
        {
            let mut rooms = self.batches.rooms.lock().expect("not poisoned");
            let queue = rooms.entry(room_id).or_insert_with(|| {
                let (queue, receiver) = mpsc::channel(ROOM_QUEUE);
                tokio::spawn(self.clone().write_batches(room_id, receiver));
                queue
            });
            queue.try_send(pending(done)).map_err(|_| {
                StoreError::Unavailable("too many sends queued for this room".into())
            })?;
        }
        result
            .await
            .map_err(|_| StoreError::Unavailable("the send was abandoned".into()))?
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
                Ok(sents) => {
                    for (pending, sent) in batch.into_iter().zip(sents) {
                        let _ = pending.done.send(Ok(sent));
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

    async fn store_batch(
        &self,
        room_id: Uuid,
        batch: &[PendingSend],
    ) -> Result<Vec<Sent>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let last_seq: i64 = tx
            .query_opt(
                "SELECT last_seq FROM rooms WHERE id = $1 FOR UPDATE",
                &[&room_id],
            )
            .await?
            .ok_or(StoreError::RoomNotFound)?
            .get(0);

        let (senders, keys): (Vec<Uuid>, Vec<&str>) = batch
            .iter()
            .filter_map(|p| p.client_msg_id.as_deref().map(|k| (p.sender, k)))
            .unzip();
        let mut known: HashMap<(Uuid, String), Message> = HashMap::new();
        if !keys.is_empty() {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                  WHERE room_id = $1 AND (sender_id, client_msg_id) IN
                        (SELECT * FROM unnest($2::uuid[], $3::text[]))"
            );
            for row in tx.query(&sql, &[&room_id, &senders, &keys]).await? {
                let message = message_from_row(&row);
                let key = message.client_msg_id.clone().unwrap_or_default();
                known.insert((message.sender_id, key), message);
            }
        }

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut first_use: HashMap<(Uuid, &str), usize> = HashMap::new();
        let (mut ids, mut seqs, mut authors, mut texts, mut msg_keys, mut replies) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for pending in batch {
            if let Some(key) = pending.client_msg_id.as_deref() {
                if let Some(message) = known.get(&(pending.sender, key.to_string())) {
                    outcomes.push(Outcome::Existing(message.clone()));
                    continue;
                }
                if let Some(&index) = first_use.get(&(pending.sender, key)) {
                    outcomes.push(Outcome::Inserted(index));
                    continue;
                }
                first_use.insert((pending.sender, key), ids.len());
            }
            outcomes.push(Outcome::Inserted(ids.len()));
            ids.push(Uuid::now_v7());
            seqs.push(last_seq + 1 + seqs.len() as i64);
            authors.push(pending.sender);
            texts.push(pending.text.as_str());
            msg_keys.push(pending.client_msg_id.as_deref());
            replies.push(pending.reply_to);
        }

        let mut inserted: HashMap<i64, Message> = HashMap::new();
        if let Some(&new_last_seq) = seqs.last() {
            let sql = format!(
                "INSERT INTO messages (id, room_id, seq, sender_id, text, client_msg_id, reply_to)
                 SELECT i, $1, s, u, t, k, r
                   FROM unnest($2::uuid[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], $7::uuid[])
                        AS x(i, s, u, t, k, r)
                 RETURNING {MESSAGE_COLUMNS}"
            );
            let rows = tx
                .query(
                    &sql,
                    &[&room_id, &ids, &seqs, &authors, &texts, &msg_keys, &replies],
                )
                .await?;
            for row in rows {
                let message = message_from_row(&row);
                inserted.insert(message.seq, message);
            }
            tx.execute(
                "UPDATE rooms SET last_seq = $2, last_activity_at = now_ms() WHERE id = $1",
                &[&room_id, &new_last_seq],
            )
            .await?;
        }
        tx.commit().await?;

        let mut announced = vec![false; ids.len()];
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Existing(message) => Ok(Sent {
                    message,
                    created: false,
                }),
                Outcome::Inserted(index) => {
                    let message = inserted
                        .get(&seqs[index])
                        .cloned()
                        .ok_or(StoreError::MessageNotFound)?;
                    // The first send of a key created it; repeats in the batch did not.
                    let created = !std::mem::replace(&mut announced[index], true);
                    Ok(Sent { message, created })
                }
            })
            .collect()
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
