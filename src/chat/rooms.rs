//! Rooms: create, list, read, rename, delete, join, leave, members, direct rooms, read
//! watermarks and the caller's chat list.
//!
//! Losing access to a room (a leave or a removal in a room that is not public, the room
//! deleted) emits a revocation, so every node ends the user's subscriptions to it: the
//! change's live event (`RoomEvent::of`). That event is the fast path;
//! a node that misses it finds the loss in Postgres within a catch-up interval (SPEC §10).

use uuid::Uuid;

use super::{Chat, ChatError, meter};
use crate::{
    bus::RoomEvent,
    domain::{InvalidInput, RoomName, parse_seq},
    model::{Member, MyRoom, Room, RoomKind},
    store::rooms::{ActivityCursor, DirectChat, Page},
};

/// Most members a room can be created with.
const MAX_INITIAL_MEMBERS: usize = 1000;

/// A room as a client asks to create it, unvalidated.
pub struct CreateRoom<'a> {
    pub name: &'a str,
    /// Public or private (direct rooms come from [`Chat::open_direct_room`]).
    pub kind: RoomKind,
    pub member_ids: &'a [Uuid],
}

/// Where `read_upto` puts the caller's read watermark.
#[derive(Debug, Clone, Copy)]
pub enum ReadUpTo {
    /// Up to this `seq`.
    Seq(i64),
    /// Up to the last message created at or before this time (ms since the epoch): the
    /// single-room socket's form.
    CreatedAt(i64),
}

impl Chat {
    /// Creates a public or private room owned by the caller. Creating rooms and opening
    /// direct rooms share one budget per user (SPEC §10).
    pub async fn create_room(
        &self,
        owner: Uuid,
        request: CreateRoom<'_>,
    ) -> Result<Room, ChatError> {
        let name = RoomName::parse(request.name)?;
        if request.kind == RoomKind::Direct {
            return Err(InvalidInput::new("kind", "must be public or private").into());
        }
        if request.member_ids.len() > MAX_INITIAL_MEMBERS {
            let reason = format!("at most {MAX_INITIAL_MEMBERS} members at creation");
            return Err(InvalidInput::new("member_ids", reason).into());
        }
        meter(&self.creations, owner)?;
        let created = self
            .store
            .create_room(owner, &name, request.kind, request.member_ids)
            .await?;
        Ok(self.emit(created).await)
    }

    /// Public rooms and the caller's rooms, oldest first.
    pub async fn list_rooms(
        &self,
        viewer: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Room>, ChatError> {
        Ok(self.store.list_rooms(viewer, after, limit).await?)
    }

    /// A room the caller may see.
    pub async fn get_room(&self, viewer: Uuid, room_id: Uuid) -> Result<Room, ChatError> {
        Ok(self.store.get_room(viewer, room_id).await?)
    }

    /// The owner renames a room.
    pub async fn rename_room(
        &self,
        owner: Uuid,
        room_id: Uuid,
        name: &str,
    ) -> Result<Room, ChatError> {
        let name = RoomName::parse(name)?;
        Ok(self.store.rename_room(owner, room_id, &name).await?)
    }

    /// The owner deletes a room and its history; every subscriber loses it.
    pub async fn delete_room(&self, owner: Uuid, room_id: Uuid) -> Result<(), ChatError> {
        let deleted = self.store.delete_room(owner, room_id).await?;
        self.emit(deleted).await;
        Ok(())
    }

    /// Joins a public room; idempotent. Joins, leaves and member changes each record a
    /// room event, so they spend the edits budget (SPEC §18).
    pub async fn join_room(&self, user: Uuid, room_id: Uuid) -> Result<(), ChatError> {
        meter(&self.edits, user)?;
        let joined = self.store.join_room(user, room_id).await?;
        self.emit(joined).await;
        Ok(())
    }

    /// Leaves a room; idempotent. Leaving a room one can only see as a member ends one's
    /// subscriptions to it.
    pub async fn leave_room(&self, user: Uuid, room_id: Uuid) -> Result<(), ChatError> {
        meter(&self.edits, user)?;
        let left = self.store.leave_room(user, room_id).await?;
        self.emit(left).await;
        Ok(())
    }

    /// A room's members with their role and whether they are online.
    pub async fn list_members(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Member>, ChatError> {
        let mut page = self
            .store
            .list_members(viewer, room_id, after, limit)
            .await?;
        for member in &mut page.items {
            member.online = self.presence.is_online(member.user_id);
        }
        Ok(page)
    }

    /// The owner adds a member; idempotent.
    pub async fn add_member(
        &self,
        owner: Uuid,
        room_id: Uuid,
        user: Uuid,
    ) -> Result<(), ChatError> {
        meter(&self.edits, owner)?;
        let added = self.store.add_member(owner, room_id, user).await?;
        self.emit(added).await;
        Ok(())
    }

    /// The owner removes a member; idempotent. The member's subscriptions to a room they
    /// can no longer see end.
    pub async fn remove_member(
        &self,
        owner: Uuid,
        room_id: Uuid,
        user: Uuid,
    ) -> Result<(), ChatError> {
        meter(&self.edits, owner)?;
        let removed = self.store.remove_member(owner, room_id, user).await?;
        self.emit(removed).await;
        Ok(())
    }

    /// The direct room of the caller and `other`, created on first use; `true` if this
    /// call created it.
    pub async fn open_direct_room(
        &self,
        user: Uuid,
        other: Uuid,
    ) -> Result<(Room, bool), ChatError> {
        meter(&self.creations, user)?;
        let opened = self.store.get_or_create_direct_room(user, other).await?;
        Ok(self.emit(opened).await)
    }

    /// Moves the caller's read watermark forward (never back) and returns it; the room
    /// hears `read` when it moved. REST and `read_upto` share one budget per user
    /// (SPEC §18).
    pub async fn mark_read(
        &self,
        reader: Uuid,
        room_id: Uuid,
        upto: ReadUpTo,
    ) -> Result<i64, ChatError> {
        // Bad input is refused before it spends the budget.
        if let ReadUpTo::Seq(seq) = upto {
            parse_seq("seq", seq)?;
        }
        meter(&self.reads, reader)?;
        let seq = match upto {
            ReadUpTo::Seq(seq) => seq,
            ReadUpTo::CreatedAt(at) => self.store.seq_at_time(reader, room_id, at).await?,
        };
        if self.store.mark_read(reader, room_id, seq).await? {
            self.bus
                .publish(&RoomEvent::read(room_id, reader, seq))
                .await;
        }
        Ok(seq)
    }

    /// The direct room of `user` and `other`, if they have one; `user_not_found` if
    /// `other` does not exist.
    pub async fn find_direct_room(
        &self,
        user: Uuid,
        other: Uuid,
    ) -> Result<Option<Uuid>, ChatError> {
        Ok(self.store.find_direct_room(user, other).await?)
    }

    /// The direct room of `user` and `other`, created (and metered as a creation) only
    /// if they have none yet.
    pub async fn direct_room(&self, user: Uuid, other: Uuid) -> Result<Uuid, ChatError> {
        match self.find_direct_room(user, other).await? {
            Some(room) => Ok(room),
            None => Ok(self.open_direct_room(user, other).await?.0.id),
        }
    }

    /// The caller's direct rooms by last activity (SPEC §12's chat list).
    pub async fn direct_chats(&self, user: Uuid, limit: i64) -> Result<Vec<DirectChat>, ChatError> {
        Ok(self.store.direct_chats(user, limit).await?)
    }

    /// The caller's rooms by last activity, with unread counts and last messages.
    pub async fn my_rooms(
        &self,
        user: Uuid,
        after: Option<ActivityCursor>,
        limit: i64,
    ) -> Result<Page<MyRoom>, ChatError> {
        Ok(self.store.my_rooms(user, after, limit).await?)
    }
}
