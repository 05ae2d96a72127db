//! The writing half of a socket: what reaches the client, and the resume seam.
//!
//! Everything a socket is sent passes through its [`Outbox`], in order: replies to its
//! own frames, and the events of its rooms that the relay queued. When a subscription
//! begins, the relay answers *in the queue*, ahead of every later event of the room,
//! with the room's position on this node; the outbox then has the writer replay
//! `(since_seq, position]` from Postgres ([`Replay`]) before it hands over anything
//! else, and from then on lets a message of the room through only if its `seq` is
//! above what the socket was sent ([`Cursors`]). That is SPEC §1.4: no gap, no
//! duplicate at the seam, and each `seq` once, in order, across replay and live.

use std::sync::Arc;

use uuid::Uuid;

use super::Closing;
use crate::{
    bus::{EventKind, RoomEvent},
    chat::{Chat, ChatError},
    model::{AccessLost, CloseReason, Message},
    relay::{Joined, Outbound, queue},
    store::StoreError,
};

/// Messages per Postgres query while replaying history.
const REPLAY_PAGE: i64 = 500;

/// The writing half of one socket's live state: see the module's docs.
pub struct Outbox {
    /// The socket's queue: the relay and the reading half put items in it.
    queue: queue::Receiver<Outbound>,
    /// How the socket's end is asked for and seen.
    closing: Closing,
    /// What the socket has been sent of each subscribed room.
    cursors: Cursors,
}

/// What the client should be sent for one queued item.
pub enum Delivery {
    /// Nothing: an event the socket must not see (a duplicate, its own typing, a room
    /// it left).
    Nothing,
    /// A room event, serialised once per node for all its sockets.
    Event(EventFrame),
    /// A reply to one of the socket's own frames, serialised.
    Reply(String),
    /// A subscription began: the client hears `subscribed` with the room's position,
    /// then, with a `replay`, the messages it missed, before anything else. Boxed: rare,
    /// and the writer's task holds a delivery or two at every moment of a socket's life.
    Subscribed(Box<Subscription>),
    /// A subscription ended: as the client asked (no reason), or because its user lost
    /// access to the room. Nothing of the room follows.
    Unsubscribed {
        room_id: Uuid,
        reason: Option<AccessLost>,
    },
}

/// A subscription that began: its room's position on this node, and what it missed.
pub struct Subscription {
    pub room_id: Uuid,
    pub last_seq: i64,
    pub replay: Option<Replay>,
}

// The writer's task holds deliveries across its awaits; an idle socket's memory is
// mostly its tasks. Keep a delivery as small as a reply.
const _: () = assert!(std::mem::size_of::<Delivery>() <= 32);

/// A room event as the client receives it: the frame the relay serialised once.
pub struct EventFrame(Arc<RoomEvent>);

impl EventFrame {
    /// The frame's JSON text.
    pub fn text(&self) -> &str {
        &self.0.payload
    }
}

/// The messages a new subscription missed, `(after, upto]`, read a page at a time by
/// [`Chat::replay_page`].
pub struct Replay {
    user_id: Uuid,
    room_id: Uuid,
    after: i64,
    upto: i64,
}

impl Outbox {
    pub(super) fn new(queue: queue::Receiver<Outbound>, closing: Closing, user_id: Uuid) -> Self {
        Self {
            queue,
            closing,
            cursors: Cursors::for_user(user_id),
        }
    }

    /// How the socket's end is asked for and seen, for the writer to wait on.
    pub fn closing(&self) -> Closing {
        self.closing.clone()
    }

    /// The next item for the client, once one is queued; `None` once the socket's
    /// connection is gone and its queue drained.
    pub async fn next(&mut self) -> Option<Delivery> {
        let item = self.queue.recv().await?;
        Some(self.deliver(item))
    }

    /// The next item for the client if one is queued already.
    pub fn try_next(&mut self) -> Option<Delivery> {
        let item = self.queue.try_recv()?;
        Some(self.deliver(item))
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Decides what the client gets for one queued item, moving the seam.
    fn deliver(&mut self, item: Outbound) -> Delivery {
        match item {
            Outbound::Frame(text) => Delivery::Reply(text),
            Outbound::Event(event) => match self.cursors.admit(&event) {
                true => Delivery::Event(EventFrame(event)),
                false => Delivery::Nothing,
            },
            Outbound::Subscribed(joined) => {
                let Joined {
                    room_id,
                    since_seq,
                    last_seq,
                } = *joined;
                let since = since_seq.unwrap_or(last_seq);
                // Live events start after the position, and the replay (which the
                // writer finishes before it takes the next item) fills what is below.
                self.cursors.start(room_id, since.max(last_seq));
                let replay = (since < last_seq).then_some(Replay {
                    user_id: self.cursors.user_id,
                    room_id,
                    after: since,
                    upto: last_seq,
                });
                Delivery::Subscribed(Box::new(Subscription {
                    room_id,
                    last_seq,
                    replay,
                }))
            }
            Outbound::Unsubscribed { room_id } => {
                self.cursors.end(room_id);
                Delivery::Unsubscribed {
                    room_id,
                    reason: None,
                }
            }
            Outbound::Revoked(revoked) => {
                let (room_id, reason) = *revoked;
                self.cursors.end(room_id);
                Delivery::Unsubscribed {
                    room_id,
                    reason: Some(reason),
                }
            }
        }
    }
}

impl Chat {
    /// The next page of a subscription's missed messages, ascending; `None` once the
    /// replay is done, or if its user lost access meanwhile (the room's `unsubscribed`
    /// is then on its way). Access was checked when the subscription began, and a
    /// revocation ends the subscription and with it the replay.
    ///
    /// A page that cannot be read ends the socket
    /// ([`CloseReason::HistoryUnavailable`]): without it the client would have a hole,
    /// so it must resume.
    pub async fn replay_page(
        &self,
        replay: &mut Replay,
    ) -> Result<Option<Vec<Message>>, CloseReason> {
        if replay.after >= replay.upto {
            return Ok(None);
        }
        let Replay {
            user_id,
            room_id,
            after,
            upto,
        } = *replay;
        let page = self
            .store
            .messages_in_range(user_id, room_id, after, upto, REPLAY_PAGE)
            .await
            .map_err(ChatError::from);
        match page {
            Ok(messages) => {
                match messages.last() {
                    Some(last) => replay.after = last.seq,
                    None => return Ok(None),
                }
                Ok(Some(messages))
            }
            Err(ChatError::Store(StoreError::RoomNotFound | StoreError::NotMember)) => Ok(None),
            Err(err) => {
                tracing::warn!(%room_id, error = %err, "replay failed");
                Err(CloseReason::HistoryUnavailable)
            }
        }
    }
}

/// What the socket has been sent of each room it is subscribed to, so that no room event
/// reaches it twice or out of place: a message at or below the room's cursor (already
/// replayed, or sent) is dropped, and so are events of rooms it is not subscribed to,
/// the user's own typing and read receipts (they got an ack), and revocations (the
/// relay turns those into `unsubscribed`).
struct Cursors {
    /// The last `seq` sent per subscribed room, sorted by room: 24 bytes a room (a hash
    /// map's slack and control bytes doubled that for a socket in a hundred rooms).
    last_sent: Vec<(Uuid, i64)>,
    /// The socket's user.
    user_id: Uuid,
}

impl Cursors {
    fn for_user(user_id: Uuid) -> Self {
        Self {
            last_sent: Vec::new(),
            user_id,
        }
    }

    /// A subscription's live events start after `seq` (what it has been sent so far).
    fn start(&mut self, room_id: Uuid, seq: i64) {
        match self.find(room_id) {
            Ok(at) => self.last_sent[at].1 = seq,
            Err(at) => self.last_sent.insert(at, (room_id, seq)),
        }
    }

    fn end(&mut self, room_id: Uuid) {
        if let Ok(at) = self.find(room_id) {
            self.last_sent.remove(at);
        }
    }

    fn find(&self, room_id: Uuid) -> Result<usize, usize> {
        self.last_sent
            .binary_search_by_key(&room_id, |(room, _)| *room)
    }

    /// Whether the socket should get `event`; a message it gets moves the room's cursor.
    fn admit(&mut self, event: &RoomEvent) -> bool {
        let Ok(at) = self.find(event.room_id) else {
            return false;
        };
        let cursor = &mut self.last_sent[at].1;
        match event.kind {
            EventKind::Message => {
                let seq = event.seq.unwrap_or_default();
                if seq <= *cursor {
                    return false;
                }
                *cursor = seq;
                true
            }
            EventKind::Typing | EventKind::Read => event.user_id != Some(self.user_id),
            EventKind::Revoke => false,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    const ROOM: Uuid = Uuid::from_u128(1);
    const ME: Uuid = Uuid::from_u128(10);
    const OTHER: Uuid = Uuid::from_u128(11);

    fn message(seq: i64) -> RoomEvent {
        RoomEvent::message(&Message::for_test(ROOM, seq, OTHER))
    }

    fn admitted(cursors: &mut Cursors, events: &[RoomEvent]) -> Vec<bool> {
        events.iter().map(|e| cursors.admit(e)).collect()
    }

    #[test]
    fn messages_at_or_below_what_was_replayed_are_dropped_at_the_seam() {
        let mut cursors = Cursors::for_user(ME);
        cursors.start(ROOM, 5);
        let events = [message(4), message(5), message(6), message(6), message(7)];
        assert_eq!(
            admitted(&mut cursors, &events),
            [false, false, true, false, true]
        );
    }

    #[test]
    fn a_message_that_arrives_behind_a_later_one_is_dropped() {
        let mut cursors = Cursors::for_user(ME);
        cursors.start(ROOM, 0);
        assert_eq!(
            admitted(&mut cursors, &[message(2), message(1)]),
            [true, false]
        );
    }

    #[test]
    fn nothing_of_a_room_reaches_the_socket_before_it_subscribes_or_after_it_leaves() {
        let mut cursors = Cursors::for_user(ME);
        assert!(!cursors.admit(&message(1)));
        cursors.start(ROOM, 0);
        assert!(cursors.admit(&message(1)));
        cursors.end(ROOM);
        assert!(!cursors.admit(&message(2)));
        assert!(!cursors.admit(&RoomEvent::typing(ROOM, OTHER, true)));
    }

    #[test]
    fn the_users_own_typing_and_receipts_are_not_echoed_but_others_are() {
        let mut cursors = Cursors::for_user(ME);
        cursors.start(ROOM, 0);
        let events = [
            RoomEvent::typing(ROOM, ME, true),
            RoomEvent::read(ROOM, ME, 1),
            RoomEvent::typing(ROOM, OTHER, true),
            RoomEvent::read(ROOM, OTHER, 1),
            RoomEvent::revoke(ROOM, Some(OTHER), crate::model::AccessLost::Removed),
        ];
        assert_eq!(
            admitted(&mut cursors, &events),
            [false, false, true, true, false]
        );
    }

    /// The seam as the outbox applies it to a socket's queue: a subscription from
    /// `since_seq` 2 at position 5 replays (2, 5], and of the live messages queued
    /// behind it only those above 5 pass.
    #[tokio::test]
    async fn a_resumed_subscription_replays_up_to_its_position_and_passes_only_later_messages() {
        let (sender, receiver) = queue::channel(16);
        let closing = Closing(Arc::default());
        let mut outbox = Outbox::new(receiver, closing, ME);
        let joined = Joined {
            room_id: ROOM,
            since_seq: Some(2),
            last_seq: 5,
        };
        sender
            .try_send(Outbound::Subscribed(Box::new(joined)))
            .unwrap();
        for seq in [4, 5, 6, 6, 7] {
            let event = Arc::new(message(seq));
            sender.try_send(Outbound::Event(event)).unwrap();
        }
        match outbox.next().await {
            Some(Delivery::Subscribed(subscription)) => {
                assert_eq!(subscription.last_seq, 5);
                let replay = subscription.replay.expect("a replay");
                assert_eq!((replay.after, replay.upto), (2, 5));
            }
            _ => panic!("expected a subscription with a replay"),
        }
        let mut live = Vec::new();
        while let Some(delivery) = outbox.try_next() {
            if let Delivery::Event(frame) = delivery {
                let value: serde_json::Value = serde_json::from_str(frame.text()).unwrap();
                live.push(value["message"]["seq"].as_i64().unwrap());
            }
        }
        assert_eq!(live, [6, 7]);
    }
}
