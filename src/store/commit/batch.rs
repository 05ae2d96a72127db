//! One group commit's transaction: lock the batch's rooms, check every send under those
//! locks, number and insert the new messages, move each room's `last_seq`, commit.
//!
//! What each send becomes is decided by [`plan`] from what the checks read, with no I/O,
//! so the decisions that make `seq` gapless and sends idempotent (SPEC §1.1, §1.5) are
//! unit-tested on their own; the transaction around it is what the integration tests
//! exercise.

use std::{
    collections::{HashMap, HashSet},
    sync::LazyLock,
};

use tokio_postgres::{Row, types::ToSql};
use uuid::Uuid;

use super::{PendingSend, Sent};
use crate::{
    domain::InvalidInput,
    model::{Message, Role, RoomKind},
    store::{
        Store, StoreError,
        access::Access,
        rows::{MESSAGE_COLUMNS, attach_reactions, message_from_row},
    },
};

/// What became of one send of a batch.
#[derive(Debug)]
enum Outcome {
    /// Refused by a check under the room's lock; nothing stored.
    Refused(StoreError),
    /// Stored by this batch, at this index of the inserted rows.
    Inserted(usize),
    /// A retry of a key stored earlier, by (room, sender, key).
    Existing(SendKey),
}

/// An idempotency key in full: (room, sender, `client_msg_id`).
type SendKey = (Uuid, Uuid, String);

/// What the checks read under the batch's room locks, as the decisions need it.
struct Facts {
    /// Per locked room: its kind, and the last `seq` given so far (moved by [`plan`]).
    rooms: HashMap<Uuid, (RoomKind, i64)>,
    /// Members among the batch's senders, by (room, user).
    roles: HashMap<(Uuid, Uuid), Role>,
    /// (room, message) of the messages the batch replies to that exist.
    replied_to: HashSet<(Uuid, Uuid)>,
    /// Messages the batch's keyed sends stored before.
    known: HashMap<SendKey, Message>,
}

impl Facts {
    fn read(checked: &Checked) -> Self {
        let rooms = checked
            .locked_rooms
            .iter()
            .map(|r| {
                let kind = RoomKind::from_db(r.get("kind"));
                (r.get("id"), (kind, r.get::<_, i64>("last_seq")))
            })
            .collect();
        let roles = checked
            .members
            .iter()
            .map(|r| ((r.get(0), r.get(1)), Role::from_db(r.get(2))))
            .collect();
        let replied_to = checked
            .replied_to
            .iter()
            .map(|r| (r.get(1), r.get(0)))
            .collect();
        let known = checked
            .known
            .iter()
            .map(message_from_row)
            .map(|m| {
                let key = m.client_msg_id.clone().unwrap_or_default();
                ((m.room_id, m.sender_id, key), m)
            })
            .collect();
        Facts {
            rooms,
            roles,
            replied_to,
            known,
        }
    }
}

/// Decides each send's outcome, in batch order, and numbers the new messages of each
/// room from its `last_seq + 1` in that order: a refused send takes no number, and a key
/// seen earlier (stored before, or earlier in this batch) maps to its first message, so
/// the insert can neither conflict nor leave a hole.
fn plan<'a>(
    sends: impl Iterator<Item = (Uuid, &'a PendingSend)>,
    facts: &mut Facts,
) -> (Vec<Outcome>, NewRows<'a>) {
    let mut outcomes = Vec::new();
    let mut first_use: HashMap<(Uuid, Uuid, &str), usize> = HashMap::new();
    let mut rows = NewRows::default();
    for (room_id, pending) in sends {
        let Some((kind, last_seq)) = facts.rooms.get_mut(&room_id) else {
            outcomes.push(Outcome::Refused(StoreError::RoomNotFound));
            continue;
        };
        let role = facts.roles.get(&(room_id, pending.sender)).copied();
        if let Err(refusal) = Access::given(*kind, role).and_then(Access::require_member) {
            outcomes.push(Outcome::Refused(refusal));
            continue;
        }
        if let Some(key) = pending.client_msg_id.as_deref() {
            let sent_before = (room_id, pending.sender, key.to_string());
            if facts.known.contains_key(&sent_before) {
                outcomes.push(Outcome::Existing(sent_before));
                continue;
            }
            if let Some(&index) = first_use.get(&(room_id, pending.sender, key)) {
                outcomes.push(Outcome::Inserted(index));
                continue;
            }
        }
        if let Some(reply_to) = pending.reply_to
            && !facts.replied_to.contains(&(room_id, reply_to))
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
    (outcomes, rows)
}

/// Each send's answer once the batch committed: the first send of a new message created
/// it, its repeats within the batch and retries of older keys did not.
fn answers(
    outcomes: Vec<Outcome>,
    rows: &NewRows<'_>,
    inserted: HashMap<(Uuid, i64), Message>,
    known: &HashMap<SendKey, Message>,
) -> Vec<Result<Sent, StoreError>> {
    let mut announced = vec![false; rows.ids.len()];
    outcomes
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
                let created = !std::mem::replace(&mut announced[index], true);
                Ok(Sent { message, created })
            }
        })
        .collect()
}

impl Store {
    /// One transaction: lock the batch's rooms, check every send, insert the new
    /// messages and move each room's `last_seq`. Returns each send's outcome, in batch
    /// order (room by room, each room's sends in arrival order).
    pub(super) async fn store_batch(
        &self,
        batch: &super::queues::Batch,
    ) -> Result<Vec<Result<Sent, StoreError>>, StoreError> {
        let tx = PipelinedTransaction(Some(self.client().await?));
        let sends = || {
            batch
                .iter()
                .flat_map(|(room_id, sends)| sends.iter().map(move |p| (*room_id, p)))
        };
        let room_ids: Vec<Uuid> = batch.iter().map(|(room_id, _)| *room_id).collect();
        let checks = Checks::of(sends());
        let checked = checks.run(&tx, &room_ids).await?;
        let mut facts = Facts::read(&checked);
        // A retry answers with the original as its sender sees it, reactions included:
        // read before COMMIT, so a failure here stores nothing and the batch is answered
        // as failed truthfully (after COMMIT it would answer stored sends as failed).
        for message in facts.known.values_mut() {
            attach_reactions(&*tx, message.sender_id, std::slice::from_mut(message)).await?;
        }
        let (outcomes, rows) = plan(sends(), &mut facts);
        let (moved_rooms, moved_to): (Vec<Uuid>, Vec<i64>) = batch
            .iter()
            .filter_map(|(room_id, _)| {
                let (_, seq) = facts.rooms.get(room_id)?;
                Some((*room_id, *seq))
            })
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
        // Back to the pool.
        drop(tx.committed());
        let inserted: HashMap<(Uuid, i64), Message> = inserted
            .iter()
            .map(message_from_row)
            .map(|message| ((message.room_id, message.seq), message))
            .collect();
        Ok(answers(outcomes, &rows, inserted, &facts.known))
    }
}

/// Stores a batch's new messages, moves each room's `last_seq` and activity time, and
/// records the rooms' activity for other nodes' catch-up (`room_activity`).
static INSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH moved AS (
             UPDATE rooms SET last_seq = x.s, last_activity_at = now_ms()
               FROM unnest($8::uuid[], $9::bigint[]) AS x(r, s)
              WHERE rooms.id = x.r AND rooms.last_seq <> x.s),
         active AS (
             INSERT INTO room_activity (at, room_id)
             SELECT now_ms() / 1000, r FROM unnest($8::uuid[]) AS r
             ON CONFLICT DO NOTHING)
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    const ROOM: Uuid = Uuid::from_u128(1);
    const PRIVATE: Uuid = Uuid::from_u128(2);
    const ALICE: Uuid = Uuid::from_u128(10);
    const BOB: Uuid = Uuid::from_u128(11);

    fn send(sender: Uuid, key: Option<&str>, reply_to: Option<Uuid>) -> PendingSend {
        let (done, _) = oneshot::channel();
        PendingSend {
            sender,
            text: "hi".into(),
            client_msg_id: key.map(str::to_string),
            reply_to,
            traceparent: None,
            queued_at: std::time::Instant::now(),
            done,
        }
    }

    fn message(room_id: Uuid, seq: i64, sender_id: Uuid, key: Option<&str>) -> Message {
        Message {
            client_msg_id: key.map(str::to_string),
            ..Message::for_test(room_id, seq, sender_id)
        }
    }

    /// A public room at `last_seq` 5 where Alice is a member, and a private room at 0
    /// where nobody in the tests is.
    fn facts() -> Facts {
        Facts {
            rooms: HashMap::from([
                (ROOM, (RoomKind::Public, 5)),
                (PRIVATE, (RoomKind::Private, 0)),
            ]),
            roles: HashMap::from([((ROOM, ALICE), Role::Member)]),
            replied_to: HashSet::new(),
            known: HashMap::new(),
        }
    }

    fn planned(batch: &[(Uuid, PendingSend)], facts: &mut Facts) -> (Vec<Outcome>, Vec<i64>) {
        let (outcomes, rows) = plan(batch.iter().map(|(room, send)| (*room, send)), facts);
        (outcomes, rows.seqs.clone())
    }

    #[test]
    fn new_messages_are_numbered_from_the_rooms_last_seq_in_batch_order() {
        let batch = [
            (ROOM, send(ALICE, None, None)),
            (ROOM, send(ALICE, None, None)),
        ];
        let mut facts = facts();
        let (outcomes, seqs) = planned(&batch, &mut facts);
        assert!(matches!(
            outcomes[..],
            [Outcome::Inserted(0), Outcome::Inserted(1)]
        ));
        assert_eq!(seqs, [6, 7]);
        assert_eq!(facts.rooms[&ROOM].1, 7, "the room's last_seq moves once");
    }

    #[test]
    fn a_refused_send_takes_no_number_so_the_next_one_leaves_no_hole() {
        let batch = [
            (ROOM, send(ALICE, None, None)),
            (ROOM, send(BOB, None, None)),
            (PRIVATE, send(ALICE, None, None)),
            (Uuid::from_u128(99), send(ALICE, None, None)),
            (ROOM, send(ALICE, None, Some(Uuid::from_u128(77)))),
            (ROOM, send(ALICE, None, None)),
        ];
        let (outcomes, seqs) = planned(&batch, &mut facts());
        assert!(matches!(
            outcomes[..],
            [
                Outcome::Inserted(0),
                Outcome::Refused(StoreError::NotMember),
                Outcome::Refused(StoreError::RoomNotFound),
                Outcome::Refused(StoreError::RoomNotFound),
                Outcome::Refused(StoreError::Invalid(_)),
                Outcome::Inserted(1),
            ]
        ));
        assert_eq!(seqs, [6, 7]);
    }

    #[test]
    fn a_reply_to_a_message_of_the_room_is_stored() {
        let original = Uuid::from_u128(77);
        let mut facts = facts();
        facts.replied_to.insert((ROOM, original));
        let batch = [(ROOM, send(ALICE, None, Some(original)))];
        let (outcomes, _) = planned(&batch, &mut facts);
        assert!(matches!(outcomes[..], [Outcome::Inserted(0)]));
    }

    #[test]
    fn a_key_stored_before_answers_with_the_original_and_stores_nothing() {
        let mut facts = facts();
        let key: SendKey = (ROOM, ALICE, "k1".into());
        facts
            .known
            .insert(key.clone(), message(ROOM, 3, ALICE, Some("k1")));
        let batch = [
            (ROOM, send(ALICE, Some("k1"), None)),
            (ROOM, send(ALICE, Some("k2"), None)),
        ];
        let (outcomes, seqs) = planned(&batch, &mut facts);
        assert!(matches!(&outcomes[..], [Outcome::Existing(k), Outcome::Inserted(0)] if *k == key));
        assert_eq!(seqs, [6]);
    }

    #[test]
    fn a_key_repeated_within_a_batch_maps_to_its_first_message_and_creates_it_once() {
        let batch = [
            (ROOM, send(ALICE, Some("k"), None)),
            (ROOM, send(ALICE, None, None)),
            (ROOM, send(ALICE, Some("k"), None)),
        ];
        let mut facts = facts();
        let (outcomes, rows) = plan(batch.iter().map(|(r, s)| (*r, s)), &mut facts);
        assert!(matches!(
            outcomes[..],
            [
                Outcome::Inserted(0),
                Outcome::Inserted(1),
                Outcome::Inserted(0)
            ]
        ));
        assert_eq!(rows.seqs, [6, 7]);
        let inserted = HashMap::from([
            ((ROOM, 6), message(ROOM, 6, ALICE, Some("k"))),
            ((ROOM, 7), message(ROOM, 7, ALICE, None)),
        ]);
        let answered = answers(outcomes, &rows, inserted, &facts.known);
        let created: Vec<(i64, bool)> = answered
            .iter()
            .map(|a| {
                let sent = a.as_ref().unwrap();
                (sent.message.seq, sent.created)
            })
            .collect();
        assert_eq!(created, [(6, true), (7, true), (6, false)]);
    }

    #[test]
    fn the_same_key_from_another_sender_or_room_is_another_message() {
        let mut facts = facts();
        facts.roles.insert((ROOM, BOB), Role::Member);
        let batch = [
            (ROOM, send(ALICE, Some("k"), None)),
            (ROOM, send(BOB, Some("k"), None)),
        ];
        let (outcomes, seqs) = planned(&batch, &mut facts);
        assert!(matches!(
            outcomes[..],
            [Outcome::Inserted(0), Outcome::Inserted(1)]
        ));
        assert_eq!(seqs, [6, 7]);
    }
}
