//! A socket's writer: the one task that owns the socket's sending half.
//!
//! It drains the socket's bounded queue of [`Outbound`] items in order (the session's
//! replies and the relay's room events), coalescing what is already waiting into one
//! write, pings the client, and sends the close frame when a close is requested.
//!
//! This is also where a subscription's history is replayed (SPEC §1.4): the relay
//! answers a join with the room's position on this node *in the queue*, ahead of every
//! later event, and the writer reads `(since_seq, position]` from Postgres before it goes
//! on, dropping any message at or below what it has sent ([`Cursors`]). No gap, no
//! duplicate.

use std::{future::Future, sync::Arc, task::Poll, time::Duration};

use futures_util::SinkExt;
use poem::web::websocket::{CloseCode, Message as WsMessage, WebSocketStream};
use uuid::Uuid;

use super::dialect::Dialect;
use crate::{
    app::AppState,
    bus::{EventKind, RoomEvent},
    chat::ChatError,
    protocol::ServerFrame,
    relay::{Closer, Joined, Outbound, queue},
    store::StoreError,
};

/// How often the server pings, so idle-but-alive clients answer within the session's
/// idle limit.
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A write that takes longer than this means the client stopped reading.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages per Postgres query while replaying history.
const REPLAY_PAGE: i64 = 500;

type Sink = futures_util::stream::SplitSink<WebSocketStream, WsMessage>;

/// Most queued items written out together. Whatever is already waiting when the writer
/// wakes goes out in one write (one syscall and one TCP segment instead of one per
/// frame), which is most of what a busy socket costs the node; the cap keeps a burst
/// from growing the write buffer that an idle socket then keeps.
const MAX_COALESCED: usize = 16;

/// Drains the socket's queue into the socket; replays history on subscribe; sends the
/// close frame when a close is requested.
pub(super) async fn write_loop(
    sink: Sink,
    mut outbound: queue::Receiver<Outbound>,
    closer: Arc<Closer>,
    state: AppState,
    user_id: Uuid,
    dialect: Dialect,
) {
    let mut writer = Writer {
        sink,
        closer,
        state,
        user_id,
        cursors: Cursors::for_user(user_id),
        dialect,
    };
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    // One watch for the socket's life, not one per turn: each costs a lock to join the
    // closer's waiters and another to leave.
    let closer = writer.closer.clone();
    let requested = closer.requested();
    tokio::pin!(requested);
    let (code, reason) = loop {
        let item = tokio::select! {
            biased;
            requested = &mut requested => break requested,
            item = outbound.recv() => match item {
                Some(item) => item,
                None => break (1000, "bye"),
            },
            _ = ping.tick() => {
                match writer.send(WsMessage::Ping(Vec::new())).await {
                    Err(Stop::Failed) => return,
                    _ => continue,
                }
            }
        };
        // A lone item waits one turn of the scheduler before it is written, so that
        // what usually follows it closely (a send's ack after its own `message`, the
        // next event of a busy room) shares its write: a fifth fewer `send` calls in a
        // `rooms` run, and as many fewer reads for the client.
        if outbound.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut written = writer.put(item).await;
        let mut coalesced = 1;
        while written.is_ok() && coalesced < MAX_COALESCED {
            let Some(item) = outbound.try_recv() else {
                break;
            };
            written = writer.put(item).await;
            coalesced += 1;
        }
        if written.is_ok() {
            written = writer.flush().await;
        }
        if let Err(Stop::Failed) = written {
            return;
        }
    };
    let close = WsMessage::Close(Some((CloseCode::from(code), reason.to_string())));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.sink.send(close)).await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.sink.close()).await;
}

/// The sending half of a socket and what the writer knows about its subscriptions.
struct Writer {
    sink: Sink,
    closer: Arc<Closer>,
    state: AppState,
    user_id: Uuid,
    /// What the socket has been sent of each subscribed room.
    cursors: Cursors,
    /// The frame shapes the client speaks: frames are reworded (or left out) last.
    dialect: Dialect,
}

/// Why the writer stopped writing events.
enum Stop {
    /// A close was requested; the writer sends its frame next.
    Closing,
    /// The socket is dead or stopped reading.
    Failed,
}

impl Writer {
    /// Buffers what the client should get for one queued item; it goes out at the next
    /// flush (or earlier, once the write buffer is full).
    async fn put(&mut self, item: Outbound) -> Result<(), Stop> {
        match item {
            Outbound::Frame(text) => self.feed(WsMessage::Text(text)).await,
            Outbound::Event(event) => {
                if !self.cursors.admit(&event) {
                    return Ok(());
                }
                // poem's text frames own a `String`: one copy per socket.
                self.feed(WsMessage::Text(String::from(&*event.payload)))
                    .await
            }
            Outbound::Subscribed(joined) => {
                let Joined {
                    room_id,
                    since_seq,
                    last_seq,
                } = *joined;
                let frame = ServerFrame::Subscribed { room_id, last_seq }.to_json();
                let mut result = self.feed(WsMessage::Text(frame)).await;
                let since = since_seq.unwrap_or(last_seq);
                if result.is_ok() && since < last_seq {
                    result = Box::pin(self.replay(room_id, since, last_seq)).await;
                }
                self.cursors.start(room_id, since.max(last_seq));
                result
            }
            Outbound::Unsubscribed { room_id } => {
                let frame = self.unsubscribed(room_id, None);
                self.feed(WsMessage::Text(frame)).await
            }
            Outbound::Revoked(revoked) => {
                let (room_id, reason) = *revoked;
                let frame = self.unsubscribed(room_id, Some(reason.as_str()));
                self.feed(WsMessage::Text(frame)).await
            }
        }
    }

    /// Ends the room's stream for the socket (nothing of the room passes after this) and
    /// makes the frame that says so. Not async: a nested future would grow every
    /// socket's writer task.
    fn unsubscribed(&mut self, room_id: Uuid, reason: Option<&'static str>) -> String {
        self.cursors.end(room_id);
        ServerFrame::Unsubscribed { room_id, reason }.to_json()
    }

    /// Sends the room's messages in `(since, upto]` from Postgres, a page at a time, each
    /// page flushed before the next query.
    async fn replay(&mut self, room_id: Uuid, mut since: i64, upto: i64) -> Result<(), Stop> {
        while since < upto {
            self.flush().await?;
            let page = self
                .state
                .chat
                .history(self.user_id, room_id, since, upto, REPLAY_PAGE)
                .await;
            let messages = match page {
                Ok(messages) if !messages.is_empty() => messages,
                Ok(_) => return Ok(()),
                // The user lost access meanwhile: the room's `unsubscribed` is on its way.
                Err(ChatError::Store(StoreError::RoomNotFound | StoreError::NotMember)) => {
                    return Ok(());
                }
                Err(err) => {
                    // Without the history the client would have a hole: make it resume.
                    tracing::warn!(%room_id, error = %err, "replay failed");
                    self.closer
                        .close(1013, "history unavailable: resume with since_seq");
                    return Err(Stop::Closing);
                }
            };
            for message in &messages {
                let frame = ServerFrame::Message { message }.to_json();
                self.feed(WsMessage::Text(frame)).await?;
                since = message.seq;
            }
        }
        Ok(())
    }

    async fn feed(&mut self, message: WsMessage) -> Result<(), Stop> {
        let message = match (self.dialect, message) {
            (Dialect::Natter, message) => message,
            (dialect, WsMessage::Text(text)) => match dialect.outbound(text) {
                Some(text) => WsMessage::Text(text),
                None => return Ok(()),
            },
            (_, message) => message,
        };
        guarded(&self.closer, self.sink.feed(message)).await
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        guarded(&self.closer, self.sink.flush()).await
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), Stop> {
        guarded(&self.closer, self.sink.send(message)).await
    }
}

/// Runs one write within [`WRITE_TIMEOUT`], unless a close is requested meanwhile.
///
/// Most writes finish on their first poll (a frame into the write buffer, a flush into
/// a socket with room), and those take neither a timer nor a place among the closer's
/// waiters: at a thousand subscribers, arming both for every frame cost a tenth of a
/// node's fan-out. A close already requested is one atomic load to see.
async fn guarded<E>(
    closer: &Closer,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), Stop> {
    if closer.is_requested() {
        return Err(Stop::Closing);
    }
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let sent = match first {
        Poll::Ready(sent) => sent.is_ok(),
        Poll::Pending => tokio::select! {
            biased;
            _ = closer.requested() => return Err(Stop::Closing),
            sent = tokio::time::timeout(WRITE_TIMEOUT, write) => matches!(sent, Ok(Ok(()))),
        },
    };
    if sent {
        Ok(())
    } else {
        closer.close(1011, "write failed");
        Err(Stop::Failed)
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
}
