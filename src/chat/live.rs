//! Live use: a socket's [`Connection`] to the rooms it follows, typing indicators and
//! presence.
//!
//! A connection is the socket's side of the relay and of presence: the rooms it is
//! subscribed to, the rooms where its user said they are typing, and its presence lease.
//! The surface (the WebSocket session) owns it and hands it to these methods; it never
//! touches the relay or presence itself.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    bus::RoomEvent,
    model::{Message, User},
    presence::RoomSet,
    relay::{Closer, Outbound, Socket, Subscriber, queue},
    store::StoreError,
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

/// One socket's live state.
pub struct Connection {
    /// The socket's user, and their place among their sockets on this node.
    permit: SocketPermit,
    /// This connection's presence key.
    id: Uuid,
    /// The socket as rooms see it: its queue (the socket's writer drains it) and how
    /// rooms close it (4008 when its queue is full).
    socket: Arc<Socket>,
    /// Rooms this socket is subscribed to.
    rooms: RoomSet,
    /// Rooms where this socket last said its user is typing, with when the room last
    /// heard so: repeats are coalesced, and these are cleared on disconnect.
    typing_in: HashMap<Uuid, Instant>,
}

impl Connection {
    pub fn user_id(&self) -> Uuid {
        self.permit.user_id
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

    /// Starts an admitted socket's connection: its user is online from now on.
    pub fn connect(
        &self,
        permit: SocketPermit,
        queue: queue::Sender<Outbound>,
        closer: Arc<Closer>,
    ) -> Connection {
        let user_id = permit.user_id;
        let connection = Connection {
            permit,
            id: Uuid::now_v7(),
            socket: Arc::new(Socket {
                id: self.next_socket_id(),
                user_id,
                queue,
                closer,
            }),
            rooms: RoomSet::default(),
            typing_in: HashMap::new(),
        };
        self.presence.connect(connection.id, user_id);
        connection
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

    /// A subscribed socket's missed messages, `after < seq <= upto`, ascending, at most
    /// `limit`: the replay of SPEC §1.4. Access was checked when the subscription began
    /// (a revocation ends the subscription, and with it the replay).
    pub async fn history(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Message>, ChatError> {
        Ok(self
            .store
            .messages_in_range(viewer, room_id, after, upto, limit)
            .await?)
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

    /// The relay ended the socket's subscriptions to these rooms: its user lost access
    /// (and the socket was told why). Forgets them, so room presence drops the socket.
    pub fn forget_revoked(&self, connection: &mut Connection, rooms: Vec<Uuid>) {
        let mut forgot = false;
        for room_id in rooms {
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
    /// few seconds. The indicator ends after `relay::TYPING_TTL` from the last event the
    /// room heard (so at least 3 s after the last frame), or when the socket closes.
    pub async fn typing(
        &self,
        connection: &mut Connection,
        room_id: Uuid,
        value: bool,
    ) -> Result<(), ChatError> {
        // Checked on every frame: a cached answer would outlive a removal or a leave.
        let role = self
            .store
            .check_access(connection.user_id(), room_id)
            .await?;
        if role.is_none() {
            return Err(StoreError::NotMember.into());
        }
        let heard = if value {
            let now = Instant::now();
            let told_lately = connection
                .typing_in
                .get(&room_id)
                .is_some_and(|told| now.duration_since(*told) < TYPING_REBROADCAST);
            if !told_lately {
                connection.typing_in.insert(room_id, now);
            }
            !told_lately
        } else {
            connection.typing_in.remove(&room_id).is_some()
        };
        if heard {
            let event = RoomEvent::typing(room_id, connection.user_id(), value);
            self.bus.publish(&event).await;
        }
        Ok(())
    }

    /// Ends a socket's connection: its subscriptions, its presence lease and its typing
    /// indicators (the rooms hear that it stopped typing).
    pub async fn disconnect(&self, connection: Connection) {
        let user_id = connection.user_id();
        for room_id in connection.rooms.iter() {
            self.hub.leave(*room_id, connection.socket.id);
        }
        self.presence.disconnect(connection.id);
        for room_id in connection.typing_in.into_keys() {
            let event = RoomEvent::typing(room_id, user_id, false);
            self.bus.publish(&event).await;
        }
    }

    /// Users with a live connection anywhere in the cluster.
    pub async fn online_users(&self) -> Result<Vec<User>, ChatError> {
        self.users_online(self.presence.online_users()).await
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
