//! A socket's writer: the one task that owns the socket's sending half.
//!
//! It takes what the socket's [`Outbox`] says the client should get, in order (the
//! session's replies, room events, subscriptions with the history they replay),
//! encodes it, coalesces what is already waiting into one write, pings the client, and
//! sends the close frame (`api::close`) when a close is requested. What passes and
//! where the resume seam is are the outbox's to decide (`chat::live`), not this file's.

use std::{future::Future, task::Poll, time::Duration};

use futures_util::SinkExt;
use poem::web::websocket::{CloseCode, Message as WsMessage, WebSocketStream};

use super::dialect::Dialect;
use crate::{
    api::{close::close_frame, context::ApiContext},
    chat::live::{Closing, Delivery, Outbox, Replay, Subscription},
    model::CloseReason,
    protocol::ServerFrame,
};

/// How often the server pings, so idle-but-alive clients answer within the session's
/// idle limit.
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A write that takes longer than this means the client stopped reading.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

type Sink = futures_util::stream::SplitSink<WebSocketStream, WsMessage>;

/// Most queued items written out together. Whatever is already waiting when the writer
/// wakes goes out in one write (one syscall and one TCP segment instead of one per
/// frame), which is most of what a busy socket costs the node; the cap keeps a burst
/// from growing the write buffer that an idle socket then keeps.
const MAX_COALESCED: usize = 16;

/// Drains the socket's outbox into the socket; replays history on subscribe; sends the
/// close frame when a close is requested.
pub(super) async fn write_loop(
    sink: Sink,
    mut outbox: Outbox,
    state: ApiContext,
    dialect: Dialect,
) {
    let mut writer = Writer {
        sink,
        closing: outbox.closing(),
        state,
        dialect,
    };
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    // One wait for the socket's life, not one per turn: each costs a lock to join the
    // closer's waiters and another to leave.
    let closing = outbox.closing();
    let requested = closing.requested();
    tokio::pin!(requested);
    let reason = loop {
        let delivery = tokio::select! {
            biased;
            reason = &mut requested => break reason,
            delivery = outbox.next() => match delivery {
                Some(delivery) => delivery,
                None => break CloseReason::Normal,
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
        if outbox.is_empty() {
            tokio::task::yield_now().await;
        }
        let mut written = writer.put(delivery).await;
        let mut coalesced = 1;
        while written.is_ok() && coalesced < MAX_COALESCED {
            let Some(delivery) = outbox.try_next() else {
                break;
            };
            written = writer.put(delivery).await;
            coalesced += 1;
        }
        if written.is_ok() {
            written = writer.flush().await;
        }
        if let Err(Stop::Failed) = written {
            return;
        }
    };
    let (code, reason) = close_frame(reason);
    let close = WsMessage::Close(Some((CloseCode::from(code), reason.to_string())));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.sink.send(close)).await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.sink.close()).await;
}

/// The sending half of a socket.
struct Writer {
    sink: Sink,
    /// How a close is seen (and asked for, when a write fails).
    closing: Closing,
    state: ApiContext,
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
    /// Buffers what the client should get for one delivery; it goes out at the next
    /// flush (or earlier, once the write buffer is full).
    async fn put(&mut self, delivery: Delivery) -> Result<(), Stop> {
        match delivery {
            Delivery::Nothing => Ok(()),
            Delivery::Reply(text) => self.feed(WsMessage::Text(text)).await,
            // poem's text frames own a `String`: one copy per socket.
            Delivery::Event(frame) => self.feed(WsMessage::Text(frame.text().into())).await,
            Delivery::Subscribed(subscription) => {
                let Subscription {
                    room_id, last_seq, ..
                } = *subscription;
                let frame = ServerFrame::Subscribed { room_id, last_seq }.to_json();
                self.feed(WsMessage::Text(frame)).await?;
                // Taken only now: held across the write, it would grow the task.
                match subscription.replay {
                    Some(replay) => Box::pin(self.replay(replay)).await,
                    None => Ok(()),
                }
            }
            Delivery::Unsubscribed { room_id, reason } => {
                let frame = ServerFrame::Unsubscribed { room_id, reason }.to_json();
                self.feed(WsMessage::Text(frame)).await
            }
        }
    }

    /// Sends a subscription's missed messages, a page at a time, each page flushed
    /// before the next query.
    async fn replay(&mut self, mut replay: Replay) -> Result<(), Stop> {
        loop {
            self.flush().await?;
            let messages = match self.state.chat.replay_page(&mut replay).await {
                Ok(Some(messages)) => messages,
                Ok(None) => return Ok(()),
                Err(reason) => {
                    self.closing.close(reason);
                    return Err(Stop::Closing);
                }
            };
            for message in &messages {
                let frame = ServerFrame::Message { message }.to_json();
                self.feed(WsMessage::Text(frame)).await?;
            }
        }
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
        guarded(&self.closing, self.sink.feed(message)).await
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        guarded(&self.closing, self.sink.flush()).await
    }

    async fn send(&mut self, message: WsMessage) -> Result<(), Stop> {
        guarded(&self.closing, self.sink.send(message)).await
    }
}

/// Runs one write within [`WRITE_TIMEOUT`], unless a close is requested meanwhile.
///
/// Most writes finish on their first poll (a frame into the write buffer, a flush into
/// a socket with room), and those take neither a timer nor a place among the closer's
/// waiters: at a thousand subscribers, arming both for every frame cost a tenth of a
/// node's fan-out. A close already requested is one atomic load to see.
async fn guarded<E>(
    closing: &Closing,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), Stop> {
    if closing.is_requested() {
        return Err(Stop::Closing);
    }
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let sent = match first {
        Poll::Ready(sent) => sent.is_ok(),
        Poll::Pending => tokio::select! {
            biased;
            _ = closing.requested() => return Err(Stop::Closing),
            sent = tokio::time::timeout(WRITE_TIMEOUT, write) => matches!(sent, Ok(Ok(()))),
        },
    };
    if sent {
        Ok(())
    } else {
        closing.close(CloseReason::WriteFailed);
        Err(Stop::Failed)
    }
}
