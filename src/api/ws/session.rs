//! One WebSocket connection: a reader that handles the client's frames and a writer that
//! owns the socket's sending half.
//!
//! Everything the client receives goes through one bounded queue of [`Outbound`] items
//! that the writer drains in order: replies from the reader, and room events from the
//! relay. The relay never waits on the queue: when it is full the socket is closed with
//! 4008 and the client resumes with `since_seq` (SPEC §5).
//!
//! Sends do not hold up the reader: each is queued for its room's group commit at once
//! (so a socket's sends are numbered in the order it sent them) and its answer waits in
//! an ordered set of sends in flight, bounded per socket, while the reader goes on.
//!
//! The writer is also where a subscription's history is replayed (SPEC §1.4): the relay
//! answers a join with the room's position on this node *in the queue*, ahead of every
//! later event, and the writer reads `(since_seq, position]` from Postgres before it goes
//! on, dropping any message at or below what it has sent. No gap, no duplicate.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{
    SinkExt, StreamExt,
    stream::{FuturesOrdered, SplitStream},
};
use opentelemetry::trace::SpanKind;
use poem::web::websocket::{CloseCode, Message as WsMessage, WebSocketStream};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use uuid::Uuid;

use crate::{
    api::error::ApiError,
    app::AppState,
    auth::AuthUser,
    bus::{EventKind, RoomEvent},
    domain::{ClientMsgId, InvalidInput, MessageText, parse_seq},
    presence::RoomSet,
    protocol::{ClientFrame, FrameError, ServerFrame},
    relay::{Closer, Joined, Outbound, SocketId, Subscriber},
    store::{StoreError, commit::sent_of, messages::NewMessage},
    telemetry::TraceSpan,
};

/// A client that sends nothing (not even a pong) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How often the server pings, so idle-but-alive clients answer within [`IDLE_TIMEOUT`].
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A write that takes longer than this means the client stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages per Postgres query while replaying history.
const REPLAY_PAGE: i64 = 500;
/// Sends one socket may have waiting for their commit at once; past this the socket is
/// not read until one is stored (backpressure, not an error).
const MAX_SENDS_IN_FLIGHT: usize = 64;

/// A send waiting for its commit; resolves to its answer (`send_ack` or `error`),
/// serialised.
type PendingAck = Pin<Box<dyn Future<Output = String> + Send + Sync>>;

pub struct Session {
    state: AppState,
    user: AuthUser,
    socket_id: SocketId,
    /// This connection's presence key.
    connection: Uuid,
    queue: mpsc::Sender<Outbound>,
    closer: Arc<Closer>,
    /// The room a single-room socket is bound to; frames without `room_id` act on it.
    default_room: Option<Uuid>,
    /// Rooms this socket is subscribed to.
    rooms: RoomSet,
    /// Rooms where this socket last said its user is typing, to clear on disconnect.
    typing_in: HashSet<Uuid>,
    /// Sends waiting for their commit, answered in the order they were sent.
    sending: FuturesOrdered<PendingAck>,
}

impl Session {
    /// Serves one upgraded socket until it closes.
    ///
    /// Set-up is synchronous, so the returned future (which lives as long as the socket)
    /// holds the session and no copy of its arguments.
    pub fn run(
        socket: WebSocketStream,
        state: AppState,
        user: AuthUser,
        room: Option<(Uuid, Option<i64>)>,
    ) -> impl Future<Output = ()> + Send {
        let (sink, stream) = socket.split();
        let (queue, outbound) = mpsc::channel(state.settings.limits.outbound_queue);
        let closer = Arc::new(Closer::default());
        let writer = tokio::spawn(write_loop(
            sink,
            outbound,
            closer.clone(),
            state.clone(),
            user.id,
        ));
        state.metrics.socket_opened();
        let session = Session {
            socket_id: state.next_socket_id(),
            connection: Uuid::now_v7(),
            state,
            user,
            queue,
            closer,
            default_room: room.map(|(id, _)| id),
            rooms: RoomSet::default(),
            typing_in: HashSet::new(),
            sending: FuturesOrdered::new(),
        };
        session.serve(stream, writer, room)
    }

    async fn serve(
        mut self,
        mut stream: SplitStream<WebSocketStream>,
        writer: JoinHandle<()>,
        room: Option<(Uuid, Option<i64>)>,
    ) {
        // Work that is rare in a socket's life is boxed, so an idle socket's task does
        // not reserve room for it (idle sockets are what a node's memory is made of).
        self.state.presence.connect(self.connection, self.user.id);
        if let Some((room_id, since_seq)) = room {
            Box::pin(self.subscribe(room_id, since_seq)).await;
        }
        let close = self.read_loop(&mut stream).await;
        Box::pin(self.finish(close)).await;
        if tokio::time::timeout(WRITE_TIMEOUT, writer).await.is_err() {
            tracing::debug!("writer did not finish in time");
        }
        self.state.metrics.socket_closed();
    }

    /// Handles frames until the client leaves or the socket must close; returns the
    /// close to send, if this side decided it.
    ///
    /// What the loop waits on besides frames is made once, not on every turn: a busy
    /// socket turns twice per send (the frame, its ack), and remaking a timer, a notify
    /// waiter and a watch waiter each turn cost more than reading the frame. The idle
    /// limit and the token's expiry share one timer, re-armed only when it fires (as
    /// [`crate::listener`]'s is).
    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<WebSocketStream>,
    ) -> Option<(u16, &'static str)> {
        let mut shutdown = self.state.shutdown.subscribe();
        let draining = async move {
            let _ = shutdown.wait_for(|draining| *draining).await;
        };
        tokio::pin!(draining);
        let closer = self.closer.clone();
        let requested = closer.requested();
        tokio::pin!(requested);
        let mut last_read = Instant::now();
        // `None` for a token good past the clock's range.
        let expires_at = last_read.checked_add(Duration::from_secs(
            self.user.expires_at.saturating_sub(unix_now()),
        ));
        let next_limit =
            |quiet_until: Instant| expires_at.map_or(quiet_until, |at| at.min(quiet_until));
        // One timer for both limits (an idle socket's memory is mostly its timers).
        let limit = tokio::time::sleep_until(next_limit(last_read + IDLE_TIMEOUT));
        tokio::pin!(limit);
        loop {
            tokio::select! {
                next = stream.next(), if !self.reading_paused() => {
                    last_read = Instant::now();
                    match next {
                        None | Some(Ok(WsMessage::Close(_))) => return None,
                        Some(Err(err)) => {
                            let err = err.to_string().to_lowercase();
                            let too_big = err.contains("too long") || err.contains("size");
                            return too_big.then_some((1009, "frame too large"));
                        }
                        Some(Ok(WsMessage::Text(text))) => {
                            // Each frame starts a trace; a send's commit, publish and
                            // fan-out on every node continue it.
                            let span = TraceSpan::start(
                                "websocket frame",
                                SpanKind::Server,
                                None,
                                &self.state.settings.node_id,
                            );
                            let traceparent = span.traceparent().clone();
                            crate::telemetry::in_trace(traceparent, Box::pin(self.handle(&text)))
                                .await;
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.error("invalid_frame", "frames are JSON text", None).await;
                        }
                        Some(Ok(_)) => {}
                    }
                },
                Some(answer) = self.sending.next(), if !self.sending.is_empty() => {
                    self.reply_json(answer).await;
                }
                () = &mut limit => {
                    let now = Instant::now();
                    if expires_at.is_some_and(|at| now >= at) {
                        return Some((4001, "token expired"));
                    }
                    if self.reading_paused() {
                        // Not the client's silence.
                        last_read = now;
                    }
                    let quiet_until = last_read + IDLE_TIMEOUT;
                    if now >= quiet_until {
                        return Some((1001, "idle"));
                    }
                    limit.as_mut().reset(next_limit(quiet_until));
                }
                _ = &mut requested => return None,
                () = &mut draining => return Some((1012, "service restart: reconnect and resume")),
            }
        }
    }

    /// Whether the socket has its fill of sends waiting for Postgres: it is not read
    /// until one of them commits.
    fn reading_paused(&self) -> bool {
        self.sending.len() >= MAX_SENDS_IN_FLIGHT
    }

    /// Ends every subscription, presence and typing indicator of this socket, and closes
    /// it with `close` (or 1000) once the acks of sends still in flight are queued.
    async fn finish(&mut self, close: Option<(u16, &'static str)>) {
        let acked = async {
            while let Some(answer) = self.sending.next().await {
                self.reply_json(answer).await;
            }
        };
        if tokio::time::timeout(WRITE_TIMEOUT, acked).await.is_err() {
            tracing::debug!("sends still in flight at close");
        }
        for room_id in std::mem::take(&mut self.rooms) {
            self.state.hub.leave(room_id, self.socket_id);
        }
        self.state.presence.disconnect(self.connection);
        for room_id in std::mem::take(&mut self.typing_in) {
            let event = RoomEvent::typing(room_id, self.user.id, false);
            self.state.bus.publish(&event).await;
        }
        let (code, reason) = close.unwrap_or((1000, "bye"));
        self.closer.close(code, reason);
    }

    async fn handle(&mut self, text: &str) {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(err) => {
                let (code, message) = match err {
                    FrameError::InvalidJson(m) => ("invalid_json", m),
                    FrameError::UnknownType(m) => ("unknown_type", m),
                    FrameError::InvalidFrame(m) => ("invalid_frame", m),
                };
                return self.error(code, &message, None).await;
            }
        };
        let kind = frame.kind();
        let outcome = match frame {
            ClientFrame::Ping => {
                self.reply(&ServerFrame::Pong).await;
                Ok(())
            }
            ClientFrame::Subscribe { room_id, since_seq } => match self.room(room_id) {
                Ok(room_id) => match since_seq.map(|s| parse_seq("since_seq", s)).transpose() {
                    Ok(since_seq) => {
                        self.subscribe(room_id, since_seq).await;
                        Ok(())
                    }
                    Err(invalid) => Err(invalid.into()),
                },
                Err(err) => Err(err),
            },
            ClientFrame::Unsubscribe { room_id } => match self.room(room_id) {
                Ok(room_id) => {
                    self.unsubscribe(room_id).await;
                    Ok(())
                }
                Err(err) => Err(err),
            },
            ClientFrame::Send {
                room_id,
                text,
                client_msg_id,
            } => match self.send(room_id, &text, client_msg_id.as_deref()) {
                Ok(ack) => {
                    self.sending.push_back(ack);
                    Ok(())
                }
                Err(err) => {
                    let reference = client_msg_id.as_deref().unwrap_or("send");
                    return self.error_from(err, Some(reference)).await;
                }
            },
            ClientFrame::Typing { room_id, value } => self.typing(room_id, value).await,
            ClientFrame::ReadUpto {
                room_id,
                seq,
                created_at_ms,
            } => self.read_upto(room_id, seq, created_at_ms).await,
        };
        if let Err(err) = outcome {
            self.error_from(err, Some(kind)).await;
        }
    }

    /// The room a frame names, or the socket's own room.
    fn room(&self, room_id: Option<Uuid>) -> Result<Uuid, ApiError> {
        room_id
            .or(self.default_room)
            .ok_or_else(|| InvalidInput::new("room_id", "is required").into())
    }

    async fn subscribe(&mut self, room_id: Uuid, since_seq: Option<i64>) {
        let limit = self.state.settings.limits.max_rooms_per_socket;
        if !self.rooms.contains(&room_id) && self.rooms.len() >= limit {
            let message = format!("a socket may subscribe to at most {limit} rooms");
            return self
                .error("too_many_rooms", &message, Some("subscribe"))
                .await;
        }
        if let Err(err) = self.state.store.check_access(self.user.id, room_id).await {
            return self.error_from(err.into(), Some("subscribe")).await;
        }
        if self.rooms.remove(&room_id) {
            self.state.hub.leave(room_id, self.socket_id);
        }
        let subscriber = Subscriber {
            socket_id: self.socket_id,
            user_id: self.user.id,
            queue: self.queue.clone(),
            closer: self.closer.clone(),
        };
        if let Err(err) = self.state.hub.join(room_id, subscriber, since_seq) {
            return self
                .error("unavailable", &err.to_string(), Some("subscribe"))
                .await;
        }
        self.rooms.insert(room_id);
        self.state
            .presence
            .set_rooms(self.connection, self.rooms.clone());
    }

    async fn unsubscribe(&mut self, room_id: Uuid) {
        if self.rooms.remove(&room_id) {
            self.state.hub.leave(room_id, self.socket_id);
            self.state
                .presence
                .set_rooms(self.connection, self.rooms.clone());
        }
        let _ = self.queue.send(Outbound::Unsubscribed { room_id }).await;
    }

    /// Queues a send for its room's group commit (so a socket's sends are stored in the
    /// order it sent them) and returns the wait for its ack, which goes on while the
    /// socket reads its next frames.
    fn send(
        &mut self,
        room_id: Option<Uuid>,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<PendingAck, ApiError> {
        let room_id = self.room(room_id)?;
        let text = MessageText::parse(text, self.state.settings.limits.max_text_chars)?;
        let client_msg_id = client_msg_id.map(ClientMsgId::parse).transpose()?;
        if let Err(wait) = self.state.limiter.check(self.user.id) {
            self.state.metrics.count_rate_limited();
            return Err(ApiError::rate_limited(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ));
        }
        let new = NewMessage {
            text: &text,
            client_msg_id: client_msg_id.as_ref(),
            reply_to: None,
        };
        let receipt = self.state.store.queue_message(self.user.id, room_id, new)?;
        Ok(Box::pin(async move {
            let key = client_msg_id.as_ref().map(ClientMsgId::as_str);
            match sent_of(receipt).await {
                Ok(sent) => {
                    let ack = ServerFrame::SendAck {
                        client_msg_id: key,
                        message: &sent.message,
                    };
                    ack.to_json()
                }
                Err(err) => {
                    let reference = Some(key.unwrap_or("send"));
                    error_frame(&ApiError::from(err), reference)
                }
            }
        }))
    }

    async fn typing(&mut self, room_id: Option<Uuid>, value: bool) -> Result<(), ApiError> {
        let room_id = self.room(room_id)?;
        // Checked on every frame: a cached answer would outlive a removal or a leave.
        if self
            .state
            .store
            .check_access(self.user.id, room_id)
            .await?
            .is_none()
        {
            return Err(StoreError::NotMember.into());
        }
        if value {
            self.typing_in.insert(room_id);
        } else {
            self.typing_in.remove(&room_id);
        }
        let event = RoomEvent::typing(room_id, self.user.id, value);
        self.state.bus.publish(&event).await;
        self.reply(&ServerFrame::TypingAck { room_id, value }).await;
        Ok(())
    }

    async fn read_upto(
        &mut self,
        room_id: Option<Uuid>,
        seq: Option<i64>,
        created_at_ms: Option<i64>,
    ) -> Result<(), ApiError> {
        let room_id = self.room(room_id)?;
        let seq = match (seq, created_at_ms) {
            (Some(seq), _) => parse_seq("seq", seq)?,
            (None, Some(at)) => self.state.store.seq_at_time(room_id, at).await?,
            (None, None) => {
                return Err(InvalidInput::new("seq", "seq or created_at_ms is required").into());
            }
        };
        let moved = self
            .state
            .store
            .mark_read(self.user.id, room_id, seq)
            .await?;
        if moved {
            self.state
                .bus
                .publish(&RoomEvent::read(room_id, self.user.id, seq))
                .await;
        }
        self.reply(&ServerFrame::ReadAck { room_id, seq }).await;
        Ok(())
    }

    async fn reply(&self, frame: &ServerFrame<'_>) {
        self.reply_json(frame.to_json()).await;
    }

    /// Queues a reply that is already serialised.
    async fn reply_json(&self, frame: String) {
        let _ = self.queue.send(Outbound::Frame(frame)).await;
    }

    async fn error(&self, code: &str, message: &str, reference: Option<&str>) {
        self.reply_json(error_json(code, message, reference)).await;
    }

    async fn error_from(&self, err: ApiError, reference: Option<&str>) {
        self.reply_json(error_frame(&err, reference)).await;
    }
}

/// The `error` frame that answers a frame with `err`.
fn error_frame(err: &ApiError, reference: Option<&str>) -> String {
    let detail = err.detail();
    error_json(&detail.code, &detail.message, reference)
}

/// An `error` frame, serialised.
fn error_json(code: &str, message: &str, reference: Option<&str>) -> String {
    let frame = ServerFrame::Error {
        code,
        message,
        reference,
    };
    frame.to_json()
}

type Sink = futures_util::stream::SplitSink<WebSocketStream, WsMessage>;

/// Most queued items written out together. Whatever is already waiting when the writer
/// wakes goes out in one write (one syscall and one TCP segment instead of one per
/// frame), which is most of what a busy socket costs the node; the cap keeps a burst
/// from growing the write buffer that an idle socket then keeps.
const MAX_COALESCED: usize = 16;

/// Drains the socket's queue into the socket; replays history on subscribe; sends the
/// close frame when a close is requested.
async fn write_loop(
    sink: Sink,
    mut outbound: mpsc::Receiver<Outbound>,
    closer: Arc<Closer>,
    state: AppState,
    user_id: Uuid,
) {
    let mut writer = Writer {
        sink,
        closer,
        state,
        user_id,
        cursors: HashMap::new(),
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
            let Ok(item) = outbound.try_recv() else {
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
    /// The last `seq` sent per subscribed room.
    cursors: HashMap<Uuid, i64>,
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
                let Some(cursor) = self.cursors.get_mut(&event.room_id) else {
                    return Ok(());
                };
                match event.kind {
                    EventKind::Message => {
                        let seq = event.seq.unwrap_or_default();
                        if seq <= *cursor {
                            return Ok(());
                        }
                        *cursor = seq;
                    }
                    EventKind::Typing | EventKind::Read if event.user_id == Some(self.user_id) => {
                        return Ok(());
                    }
                    EventKind::Revoke => return Ok(()),
                    _ => {}
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
                self.cursors.insert(room_id, since.max(last_seq));
                result
            }
            Outbound::Unsubscribed { room_id } => {
                self.cursors.remove(&room_id);
                let frame = ServerFrame::Unsubscribed { room_id }.to_json();
                self.feed(WsMessage::Text(frame)).await
            }
        }
    }

    /// Sends the room's messages in `(since, upto]` from Postgres, a page at a time, each
    /// page flushed before the next query.
    async fn replay(&mut self, room_id: Uuid, mut since: i64, upto: i64) -> Result<(), Stop> {
        while since < upto {
            self.flush().await?;
            let page = self
                .state
                .store
                .messages_in_range(self.user_id, room_id, since, upto, REPLAY_PAGE)
                .await;
            let messages = match page {
                Ok(messages) if !messages.is_empty() => messages,
                Ok(_) => return Ok(()),
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
