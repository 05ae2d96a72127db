//! Live use: what a socket is promised, as a use case of its own.
//!
//! A socket has two halves, because it has two tasks. Its [`Connection`] is the reading
//! half's: the rooms it follows, where its user said they are typing, its presence
//! lease, and the credential it was opened with, re-checked while it lives (a token
//! that expires, a bot key replaced or deleted: SPEC §2, §11). Its [`Outbox`] is the
//! writing half's: everything the client is sent passes through it, and it keeps the
//! resume seam (SPEC §1.4): each `seq` once, in order, across the replay from Postgres
//! and the live events behind it.
//!
//! Why a socket ends is a [`CloseReason`], decided here (or by the relay, for a reader
//! too slow for its rooms); the WebSocket API turns reasons into close codes in one
//! table. The surface (`api::ws`) owns the socket, decodes and encodes frames, and
//! hands both halves to these methods; it never touches the relay or presence itself.

mod outbox;

pub use outbox::{Delivery, EventFrame, Outbox, Replay, Subscription};

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant as Deadline;
use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    auth::{
        AuthUser,
        bots::{BOT_KEY_RECHECK, KeyHash},
    },
    bus::RoomEvent,
    config::OnlineUsers,
    model::{CloseReason, User},
    presence::RoomSet,
    relay::{Closer, Outbound, Signal, Socket, Subscriber, queue},
    store::{StoreError, rooms::Page},
};

/// How often a room hears that a user is still typing, at most (SPEC §10).
const TYPING_REBROADCAST: Duration = Duration::from_secs(3);

/// A user's place among their open sockets on this node (SPEC §10); given back when
/// dropped, with the socket's [`Connection`].
pub struct SocketPermit {
    user_id: Uuid,
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

/// The reading half of one socket's live state: see the module's docs.
pub struct Connection {
    /// The socket's user, and their place among their sockets on this node.
    permit: SocketPermit,
    /// This connection's presence key.
    id: Uuid,
    /// The socket as rooms see it: its queue (the [`Outbox`] drains it) and how rooms
    /// end it (too slow) or its subscriptions (access lost).
    socket: Arc<Socket>,
    /// Rooms this socket is subscribed to.
    rooms: RoomSet,
    /// Rooms where this socket last said its user is typing, with when the room last
    /// heard so: repeats are coalesced, and these are cleared on disconnect.
    typing_in: HashMap<Uuid, Instant>,
    /// Rooms where this socket's typing passed the access check; dropped when the room
    /// revokes the socket's subscription or a check fails.
    typing_allowed: HashSet<Uuid>,
    /// What the credential the socket was opened with is checked against.
    checks: Checks,
    /// A typing change the socket's typing budget held back: the room, the value and
    /// when to try again ([`Chat::recheck`]). The room hears it late rather than never
    /// (a `true` dropped would hide the typer; a `false`, show them typing until
    /// expiry). Boxed: rare, and every idle socket carries the field.
    typing_held: Option<Box<(Uuid, bool, Deadline)>>,
}

/// What a socket's credential is checked against while it lives (on tokio's clock, which
/// tests can pause).
struct Checks {
    /// When the token expires (`None`: past the clock's range).
    expires_at: Option<Deadline>,
    /// A bot key and when it is next asked about (SPEC §11); boxed, because most
    /// sockets are people's and every idle socket carries this field.
    bot_key: Option<Box<(KeyHash, Deadline)>>,
}

impl Connection {
    pub fn user_id(&self) -> Uuid {
        self.permit.user_id
    }

    /// When [`Chat::recheck`] next has something to decide, if ever.
    pub fn next_check(&self) -> Option<Deadline> {
        let key_check = self.checks.bot_key.as_ref().map(|check| check.1);
        let typing_retry = self.typing_held.as_ref().map(|held| held.2);
        [self.checks.expires_at, key_check, typing_retry]
            .into_iter()
            .flatten()
            .min()
    }

    /// A handle that resolves when the socket must close or lost a room, for the
    /// session to wait on beside the client's frames.
    pub fn closing(&self) -> Closing {
        Closing(self.socket.closer.clone())
    }

    /// Queues a reply to one of the socket's own frames (already serialised), in order
    /// with the room events around it.
    pub async fn reply(&self, frame: String) {
        let _ = self.socket.queue.send(Outbound::Frame(frame)).await;
    }
}

/// A socket's end, as both of its halves see it: a close asked for by anyone (the
/// relay, the connection, the drain), and the rooms that ended its subscriptions.
#[derive(Clone)]
pub struct Closing(Arc<Closer>);

/// What [`Closing::notice`] resolves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The socket must close, for this reason.
    Close(CloseReason),
    /// Rooms ended subscriptions (their user lost access): [`Chat::forget_revoked`].
    Revoked,
}

impl Closing {
    /// Resolves once the socket must close or a room ended one of its subscriptions.
    pub async fn notice(&self) -> Notice {
        match self.0.signal().await {
            Signal::Close(reason) => Notice::Close(reason),
            Signal::Revoked => Notice::Revoked,
        }
    }

    /// Resolves with the reason once a close is requested.
    pub async fn requested(&self) -> CloseReason {
        self.0.requested().await
    }

    /// Whether a close has been requested (one atomic load).
    pub fn is_requested(&self) -> bool {
        self.0.is_requested()
    }

    /// Asks the socket to close; the first request wins.
    pub fn close(&self, reason: CloseReason) {
        self.0.close(reason);
    }
}

impl Chat {
    /// Admits one more socket of `user_id` on this node, or refuses it once they have
    /// `MAX_SOCKETS_PER_USER` open (the upgrade is then answered 429).
    pub fn admit_socket(&self, user_id: Uuid) -> Result<SocketPermit, ChatError> {
        let limit = self.limits.sockets_per_user;
        let mut open = self.open_sockets.lock().expect("not poisoned");
        let count = open.entry(user_id).or_default();
        if *count >= limit {
            return Err(ChatError::TooManySockets { limit });
        }
        *count += 1;
        Ok(SocketPermit {
            user_id,
            open: self.open_sockets.clone(),
        })
    }

    /// Starts an admitted socket's connection, opened with `credential`: its user is
    /// online from now on. Returns its two halves: the [`Connection`] for the task that
    /// reads the socket, the [`Outbox`] for the task that writes it.
    pub fn connect(&self, permit: SocketPermit, credential: &AuthUser) -> (Connection, Outbox) {
        let user_id = permit.user_id;
        let (queue, outbound) = queue::channel(self.limits.outbound_queue);
        let closer = Arc::new(Closer::default());
        let now = Deadline::now();
        let checks = Checks {
            expires_at: now.checked_add(Duration::from_secs(
                credential.expires_at.saturating_sub(unix_now()),
            )),
            bot_key: credential
                .bot_key
                .map(|key| Box::new((key, now + BOT_KEY_RECHECK))),
        };
        let connection = Connection {
            permit,
            id: Uuid::now_v7(),
            socket: Arc::new(Socket {
                id: self.next_socket_id(),
                user_id,
                queue,
                closer: closer.clone(),
            }),
            rooms: RoomSet::default(),
            typing_in: HashMap::new(),
            typing_allowed: HashSet::new(),
            checks,
            typing_held: None,
        };
        self.presence.connect(connection.id, user_id);
        (connection, Outbox::new(outbound, Closing(closer), user_id))
    }

    /// Whether the socket's credential is still good at `now`: a token past its expiry
    /// ends it ([`CloseReason::TokenExpired`]), and a bot key is asked about every
    /// [`BOT_KEY_RECHECK`] ([`CloseReason::KeyRevoked`] once replaced or deleted).
    /// Postgres unreachable is not a revocation: the key is asked about again later.
    /// A typing change the budget held back is told to its room here once it may be.
    pub async fn recheck(&self, connection: &mut Connection) -> Result<(), CloseReason> {
        let now = Deadline::now();
        if connection.checks.expires_at.is_some_and(|at| now >= at) {
            return Err(CloseReason::TokenExpired);
        }
        if let Some(check) = &mut connection.checks.bot_key
            && now >= check.1
        {
            if let Ok(None) = self.auth.bot_of_key(&check.0).await {
                return Err(CloseReason::KeyRevoked);
            }
            check.1 = now + BOT_KEY_RECHECK;
        }
        self.release_held_typing(connection, now).await;
        Ok(())
    }

    /// Whether `viewer` may see a room at all (`room_not_found` if not).
    pub async fn check_access(&self, viewer: Uuid, room_id: Uuid) -> Result<(), ChatError> {
        self.store.check_access(viewer, room_id).await?;
        Ok(())
    }

    /// Subscribes the socket to a room it may see: the relay answers in the socket's
    /// queue with the room's position, then every later event; with `since_seq`, the
    /// socket replays what it missed first (SPEC §1.4). Subscribing again restarts the
    /// subscription from `since_seq`.
    pub async fn subscribe(
        &self,
        connection: &mut Connection,
        room_id: Uuid,
        since_seq: Option<i64>,
    ) -> Result<(), ChatError> {
        meter(&self.subscribes, connection.socket.id)?;
        let limit = self.limits.max_rooms_per_socket;
        if !connection.rooms.contains(&room_id) && connection.rooms.len() >= limit {
            return Err(ChatError::TooManyRooms { limit });
        }
        let access_version = match self.hub.public_access(room_id) {
            Some(version) => version,
            None => {
                self.store
                    .subscription_access(connection.user_id(), room_id)
                    .await?
            }
        };
        if connection.rooms.remove(&room_id) {
            self.hub.leave(room_id, connection.socket.id);
        }
        let subscriber = Subscriber {
            socket: connection.socket.clone(),
            access_version,
        };
        self.hub.join(room_id, subscriber, since_seq)?;
        connection.rooms.insert(room_id);
        self.presence
            .set_rooms(connection.id, connection.rooms.clone());
        Ok(())
    }

    /// Ends the socket's subscription to a room (if it had one) and tells the socket so.
    /// Subscribes and unsubscribes share one budget per socket (SPEC §10).
    pub async fn unsubscribe(
        &self,
        connection: &mut Connection,
        room_id: Uuid,
    ) -> Result<(), ChatError> {
        meter(&self.subscribes, connection.socket.id)?;
        if connection.rooms.remove(&room_id) {
            self.hub.leave(room_id, connection.socket.id);
            self.presence
                .set_rooms(connection.id, connection.rooms.clone());
        }
        let _ = connection
            .socket
            .queue
            .send(Outbound::Unsubscribed { room_id })
            .await;
        Ok(())
    }

    /// The relay ended some of the socket's subscriptions: its user lost access (and
    /// the socket is told why through its [`Outbox`]). Forgets them, so room presence
    /// drops the socket.
    pub fn forget_revoked(&self, connection: &mut Connection) {
        let mut forgot = false;
        for room_id in connection.socket.closer.take_revoked() {
            connection.typing_allowed.remove(&room_id);
            if connection.rooms.remove(&room_id) {
                self.hub.leave(room_id, connection.socket.id);
                forgot = true;
            }
        }
        if forgot {
            self.presence
                .set_rooms(connection.id, connection.rooms.clone());
        }
    }

    /// The user starts or stops typing in a room they belong to. The room hears a change
    /// at once, and a `true` kept up at most once per [`TYPING_REBROADCAST`] (SPEC §10):
    /// a client that sends `typing` on every keystroke costs the room one event every
    /// few seconds. A socket's frames broadcast at most `TYPING_RATE_PER_SEC` events a
    /// second, whatever their values (SPEC §18); a frame beyond that is acknowledged,
    /// changes nothing, and the room keeps what it last heard. The indicator ends after
    /// `relay::TYPING_TTL` from the last event the room heard (so at least 3 s after the
    /// last frame), or when the socket closes.
    ///
    /// Every frame that is broadcast is access-checked in Postgres first, as is every
    /// frame for a room this socket's typing was not yet allowed in, so a room the user
    /// cannot see always answers its error. A frame that is not broadcast, for a room
    /// that was allowed earlier, skips the check: a user who lost access since gets an
    /// ack for a frame that reaches no one, and the room's next broadcast is checked.
    pub async fn typing(
        &self,
        connection: &mut Connection,
        room_id: Uuid,
        value: bool,
    ) -> Result<(), ChatError> {
        let now = Instant::now();
        // This frame is newer than anything held back for the room.
        if connection
            .typing_held
            .as_ref()
            .is_some_and(|held| held.0 == room_id)
        {
            connection.typing_held = None;
        }
        let told = connection.typing_in.get(&room_id);
        let changes = if value {
            told.is_none_or(|told| now.duration_since(*told) >= TYPING_REBROADCAST)
        } else {
            told.is_some()
        };
        let allowed = changes && self.typing_events.check(connection.socket.id).is_ok();
        if changes && !allowed {
            let retry = Deadline::now() + self.typing_retry();
            connection.typing_held = Some(Box::new((room_id, value, retry)));
        }
        let broadcast = allowed;
        if broadcast || !connection.typing_allowed.contains(&room_id) {
            // A cached answer would outlive a removal or a leave.
            let role = self
                .store
                .check_access(connection.user_id(), room_id)
                .await?;
            if role.is_none() {
                connection.typing_allowed.remove(&room_id);
                return Err(StoreError::NotMember.into());
            }
            connection.typing_allowed.insert(room_id);
        }
        if broadcast {
            self.tell_typing(connection, room_id, value).await;
        }
        Ok(())
    }

    /// The room hears that the socket's user is typing (or stopped), and the socket
    /// remembers that it heard so.
    async fn tell_typing(&self, connection: &mut Connection, room_id: Uuid, value: bool) {
        if value {
            connection.typing_in.insert(room_id, Instant::now());
        } else {
            connection.typing_in.remove(&room_id);
        }
        let event = RoomEvent::typing(room_id, connection.user_id(), value);
        self.bus.publish(&event).await;
    }

    /// How long a typing change held back waits before it asks the budget again: one
    /// event's worth of the rate.
    fn typing_retry(&self) -> Duration {
        Duration::from_secs(1) / self.limits.typing_events_per_second.max(1)
    }

    /// Tells the room a typing change the budget held back, once the budget allows (and
    /// the socket may still type there), or asks again later.
    async fn release_held_typing(&self, connection: &mut Connection, now: Deadline) {
        let Some(held) = connection.typing_held.as_deref().copied() else {
            return;
        };
        let (room_id, value, retry_at) = held;
        if now < retry_at {
            return;
        }
        if !connection.typing_allowed.contains(&room_id) {
            connection.typing_held = None;
            return;
        }
        if self.typing_events.check(connection.socket.id).is_err() {
            let retry = now + self.typing_retry();
            connection.typing_held = Some(Box::new((room_id, value, retry)));
            return;
        }
        connection.typing_held = None;
        self.tell_typing(connection, room_id, value).await;
    }

    /// Ends a socket's connection: its subscriptions, its presence lease and its typing
    /// indicators (the rooms hear that it stopped typing); then asks the socket to close
    /// for `reason` (the first reason asked for wins).
    pub async fn disconnect(&self, connection: Connection, reason: CloseReason) {
        let user_id = connection.user_id();
        for room_id in connection.rooms.iter() {
            self.hub.leave(*room_id, connection.socket.id);
        }
        self.presence.disconnect(connection.id);
        for room_id in connection.typing_in.into_keys() {
            let event = RoomEvent::typing(room_id, user_id, false);
            self.bus.publish(&event).await;
        }
        connection.socket.closer.close(reason);
    }

    /// A page of the users with a live connection anywhere in the cluster, in id order
    /// after `after`: everyone, or with `ONLINE_USERS=contacts` only `viewer` and those
    /// who share a room with them (SPEC §18).
    pub async fn online_users(
        &self,
        viewer: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<User>, ChatError> {
        let contacts_only = self.limits.online_users == OnlineUsers::Contacts;
        let online = self.presence.online_users();
        let mut page = self
            .store
            .online_users_page(viewer, &online, after, limit, contacts_only)
            .await?;
        for user in &mut page.items {
            user.online = true;
        }
        Ok(page)
    }

    /// Users with a live subscription to a room the caller may see, on any node.
    pub async fn room_presence(&self, viewer: Uuid, room_id: Uuid) -> Result<Vec<User>, ChatError> {
        self.store.check_access(viewer, room_id).await?;
        self.users_online(self.presence.room_users(room_id)).await
    }

    /// The users behind `ids`, all marked online (they come from the presence view).
    async fn users_online(&self, ids: Vec<Uuid>) -> Result<Vec<User>, ChatError> {
        let mut users = self.store.users_by_ids(&ids).await?;
        for user in &mut users {
            user.online = true;
        }
        Ok(users)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
