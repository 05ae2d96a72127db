//! One WebSocket connection's reader: it decodes the client's frames into use cases
//! ([`crate::chat`], the socket's [`Connection`]) and encodes their outcomes as replies;
//! the socket's [`writer`] sends them.
//!
//! Everything the client receives goes through the connection's bounded queue, which
//! the writer drains in order: replies from the reader, and room events from the relay.
//! The relay never waits on the queue: when it is full the socket is closed as too slow
//! and the client resumes with `since_seq` (SPEC §5). Why a socket ends is decided by
//! the connection (`Chat::recheck`), by this loop (idle, the drain, an oversized frame)
//! or by the relay, as a `CloseReason`; `api::close` turns it into a close code.
//!
//! Sends do not hold up the reader: each is queued for its room's group commit at once
//! (so a socket's sends are numbered in the order it sent them) and its answer waits in
//! an ordered set of sends in flight, bounded per socket, while the reader goes on.

use std::{future::Future, pin::Pin, time::Duration};

use futures_util::{
    StreamExt,
    stream::{FuturesOrdered, SplitStream},
};
use opentelemetry::trace::SpanKind;
use poem::web::websocket::{Message as WsMessage, WebSocketStream};
use tokio::{task::JoinHandle, time::Instant};
use uuid::Uuid;

use super::{
    dialect::Dialect,
    writer::{self, WRITE_TIMEOUT},
};
use crate::{
    api::{context::ApiContext, error::ApiError},
    auth::AuthUser,
    chat::{
        live::{Connection, Notice, SocketPermit},
        messages::SendMessage,
        rooms::ReadUpTo,
    },
    domain::{InvalidInput, parse_seq},
    model::CloseReason,
    protocol::{ClientFrame, FrameError, ServerFrame},
    telemetry::TraceSpan,
};

/// A client that sends nothing (not even a pong) for this long is gone (the writer pings
/// well within it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Sends one socket may have waiting for their commit at once; past this the socket is
/// not read until one is stored (backpressure, not an error).
const MAX_SENDS_IN_FLIGHT: usize = 64;

/// A send waiting for its commit; resolves to its answer (`send_ack` or `error`),
/// serialised.
type PendingAck = Pin<Box<dyn Future<Output = String> + Send + Sync>>;

pub struct Session {
    state: ApiContext,
    /// The socket's rooms, typing indicators, presence and credential, kept by the use
    /// cases; replies go through it too, in order with room events.
    connection: Connection,
    /// The room a single-room socket is bound to; frames without `room_id` act on it.
    default_room: Option<Uuid>,
    /// Sends waiting for their commit, answered in the order they were sent.
    sending: FuturesOrdered<PendingAck>,
    /// The frame shapes the client speaks (SPEC §12's drop-in sockets).
    dialect: Dialect,
}

impl Session {
    /// Serves one upgraded socket until it closes.
    ///
    /// Set-up is synchronous, so the returned future (which lives as long as the socket)
    /// holds the session and no copy of its arguments.
    pub fn run(
        socket: WebSocketStream,
        state: ApiContext,
        user: AuthUser,
        permit: SocketPermit,
        room: Option<(Uuid, Option<i64>)>,
        dialect: Dialect,
    ) -> impl Future<Output = ()> + Send {
        let (sink, stream) = socket.split();
        let (connection, outbox) = state.chat.connect(permit, &user);
        let writer = tokio::spawn(writer::write_loop(sink, outbox, state.clone(), dialect));
        state.metrics.socket_opened();
        let session = Session {
            state,
            connection,
            default_room: room.map(|(id, _)| id),
            sending: FuturesOrdered::new(),
            dialect,
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
        if let Some((room_id, since_seq)) = room {
            Box::pin(self.subscribe(room_id, since_seq)).await;
        }
        let close = self.read_loop(&mut stream).await;
        let state = self.state.clone();
        Box::pin(self.finish(close)).await;
        if tokio::time::timeout(WRITE_TIMEOUT, writer).await.is_err() {
            tracing::debug!("writer did not finish in time");
        }
        state.metrics.socket_closed();
    }

    /// Handles frames until the client leaves or the socket must close; returns the
    /// close to send, if this side decided it.
    ///
    /// What the loop waits on besides frames is made once, not on every turn: a busy
    /// socket turns twice per send (the frame, its ack), and remaking a timer, a notify
    /// waiter and a watch waiter each turn cost more than reading the frame. The idle
    /// limit and the connection's credential checks share one timer, re-armed only when
    /// it fires (as [`crate::listener`]'s is).
    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<WebSocketStream>,
    ) -> Option<CloseReason> {
        let draining = self.state.drained();
        tokio::pin!(draining);
        let closing = self.connection.closing();
        let notice = closing.notice();
        tokio::pin!(notice);
        let mut last_read = Instant::now();
        let next_limit = |quiet_until: Instant, connection: &Connection| {
            connection
                .next_check()
                .map_or(quiet_until, |check| check.min(quiet_until))
        };
        // One timer for every limit (an idle socket's memory is mostly its timers).
        let limit =
            tokio::time::sleep_until(next_limit(last_read + IDLE_TIMEOUT, &self.connection));
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
                            return too_big.then_some(CloseReason::FrameTooLarge);
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
                            // The frame may have left the connection something to do
                            // sooner (a typing change its budget held back).
                            if let Some(check) = self.connection.next_check()
                                && check < limit.deadline()
                            {
                                limit.as_mut().reset(check);
                            }
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
                    // Boxed: inline, a bot key's check would grow every socket's task.
                    let checked = Box::pin(self.state.chat.recheck(&mut self.connection));
                    if let Err(reason) = checked.await {
                        return Some(reason);
                    }
                    if self.reading_paused() {
                        // Not the client's silence.
                        last_read = now;
                    }
                    let quiet_until = last_read + IDLE_TIMEOUT;
                    if now >= quiet_until {
                        return Some(CloseReason::Idle);
                    }
                    limit.as_mut().reset(next_limit(quiet_until, &self.connection));
                }
                received = &mut notice => match received {
                    // Someone else decided (the relay: too slow); theirs is the reason.
                    Notice::Close(_) => return None,
                    Notice::Revoked => {
                        notice.set(closing.notice());
                        self.state.chat.forget_revoked(&mut self.connection);
                    }
                },
                () = &mut draining => return Some(CloseReason::Restart),
            }
        }
    }

    /// Whether the socket has its fill of sends waiting for Postgres: it is not read
    /// until one of them commits.
    fn reading_paused(&self) -> bool {
        self.sending.len() >= MAX_SENDS_IN_FLIGHT
    }

    /// Ends every subscription, presence and typing indicator of this socket, and closes
    /// it for `close` (or normally) once the acks of sends still in flight are queued.
    async fn finish(mut self, close: Option<CloseReason>) {
        let acked = async {
            while let Some(answer) = self.sending.next().await {
                self.reply_json(answer).await;
            }
        };
        if tokio::time::timeout(WRITE_TIMEOUT, acked).await.is_err() {
            tracing::debug!("sends still in flight at close");
        }
        let reason = close.unwrap_or(CloseReason::Normal);
        self.state.chat.disconnect(self.connection, reason).await;
    }

    async fn handle(&mut self, text: &str) {
        let text = self.dialect.inbound(text);
        let frame = match ClientFrame::parse(&text) {
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
            ClientFrame::Subscribe { room_id, since_seq } => {
                self.subscribe_frame(room_id, since_seq).await
            }
            ClientFrame::Unsubscribe { room_id } => match self.room(room_id) {
                Ok(room_id) => {
                    let chat = &self.state.chat;
                    let unsubscribed = chat.unsubscribe(&mut self.connection, room_id).await;
                    unsubscribed.map_err(ApiError::from)
                }
                Err(err) => Err(err),
            },
            ClientFrame::Send {
                room_id,
                text,
                client_msg_id,
            } => {
                let reference = client_msg_id.clone();
                match self.send(room_id, &text, client_msg_id).await {
                    Ok(ack) => {
                        self.sending.push_back(ack);
                        Ok(())
                    }
                    Err(err) => {
                        let reference = reference.as_deref().unwrap_or("send");
                        return self.error_from(err, Some(reference)).await;
                    }
                }
            }
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

    async fn subscribe_frame(
        &mut self,
        room_id: Option<Uuid>,
        since_seq: Option<i64>,
    ) -> Result<(), ApiError> {
        let room_id = self.room(room_id)?;
        let since_seq = since_seq.map(|s| parse_seq("since_seq", s)).transpose()?;
        self.subscribe(room_id, since_seq).await;
        Ok(())
    }

    /// Subscribes the socket to a room; a refusal is answered with an `error` frame.
    async fn subscribe(&mut self, room_id: Uuid, since_seq: Option<i64>) {
        let chat = &self.state.chat;
        if let Err(err) = chat
            .subscribe(&mut self.connection, room_id, since_seq)
            .await
        {
            self.error_from(err.into(), Some("subscribe")).await;
        }
    }

    /// Queues a send for its room's group commit (so a socket's sends are stored in the
    /// order it sent them) and returns the wait for its ack, which goes on while the
    /// socket reads its next frames.
    async fn send(
        &mut self,
        room_id: Option<Uuid>,
        text: &str,
        client_msg_id: Option<String>,
    ) -> Result<PendingAck, ApiError> {
        let request = SendMessage {
            room_id: self.room(room_id)?,
            text,
            client_msg_id: client_msg_id.as_deref(),
            reply_to: None,
        };
        let queued = self
            .state
            .chat
            .send(self.connection.user_id(), request)
            .await?;
        Ok(Box::pin(async move {
            let key = client_msg_id.as_deref();
            match queued.stored().await {
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
        let chat = &self.state.chat;
        chat.typing(&mut self.connection, room_id, value).await?;
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
        let upto = match (seq, created_at_ms) {
            (Some(seq), _) => ReadUpTo::Seq(seq),
            (None, Some(at)) => ReadUpTo::CreatedAt(at),
            (None, None) => {
                return Err(InvalidInput::new("seq", "seq or created_at_ms is required").into());
            }
        };
        let seq = self
            .state
            .chat
            .mark_read(self.connection.user_id(), room_id, upto)
            .await?;
        let ack = ServerFrame::ReadAck { room_id, seq }.to_json();
        self.reply_json(self.dialect.read_ack(ack, created_at_ms))
            .await;
        Ok(())
    }

    async fn reply(&self, frame: &ServerFrame<'_>) {
        self.reply_json(frame.to_json()).await;
    }

    /// Queues a reply that is already serialised.
    async fn reply_json(&self, frame: String) {
        self.connection.reply(frame).await;
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
