//! Who may do what in a room: decided here, once, for every table group.
//!
//! A private or direct room that the caller does not belong to answers exactly like a
//! room that does not exist ([`StoreError::RoomNotFound`]), so no route can leak that
//! it exists.

use deadpool_postgres::GenericClient;
use uuid::Uuid;

use super::{CachedQuery, StoreError};
use crate::model::{Role, RoomKind};

/// What a user may do in a room they can see.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    pub kind: RoomKind,
    /// `None` for a public room the user has not joined.
    pub role: Option<Role>,
}

impl Access {
    /// Looks up the caller's standing in a room, failing with `RoomNotFound` for a room
    /// they may not see (missing, or private/direct without membership).
    pub async fn of(
        db: &impl GenericClient,
        room_id: Uuid,
        user_id: Uuid,
    ) -> Result<Self, StoreError> {
        Ok(Self::versioned(db, room_id, user_id).await?.0)
    }

    /// [`Access::of`], with the room's `access_version` at the time of the check: a
    /// subscription remembers it, so the relay can tell whether a loss of access may
    /// have come after the check.
    pub async fn versioned(
        db: &impl GenericClient,
        room_id: Uuid,
        user_id: Uuid,
    ) -> Result<(Self, i64), StoreError> {
        let row = db
            .query_opt_cached(
                "SELECT r.kind, m.role, r.access_version FROM rooms r
                   LEFT JOIN members m ON m.room_id = r.id AND m.user_id = $2
                  WHERE r.id = $1",
                &[&room_id, &user_id],
            )
            .await?
            .ok_or(StoreError::RoomNotFound)?;
        let access = Self::given(
            RoomKind::from_db(row.get("kind")),
            row.get::<_, Option<&str>>("role").map(Role::from_db),
        )?;
        Ok((access, row.get("access_version")))
    }

    /// The standing of a user with `role` (`None`: not a member) in an existing room of
    /// `kind`, failing with `RoomNotFound` where they may not see it.
    pub fn given(kind: RoomKind, role: Option<Role>) -> Result<Self, StoreError> {
        if kind != RoomKind::Public && role.is_none() {
            return Err(StoreError::RoomNotFound);
        }
        Ok(Access { kind, role })
    }

    /// Writing (sending, reacting, reading) needs membership.
    pub fn require_member(self) -> Result<Role, StoreError> {
        self.role.ok_or(StoreError::NotMember)
    }

    /// Deleting someone else's message needs ownership of a room that has an owner: in
    /// a direct room (SPEC §10) only a message's sender may delete it.
    pub fn require_moderator(self) -> Result<(), StoreError> {
        match (self.kind, self.role) {
            (RoomKind::Direct, _) => Err(StoreError::NotSender),
            (_, Some(Role::Owner)) => Ok(()),
            _ => Err(StoreError::NotSenderOrOwner),
        }
    }

    /// Changing the room itself needs ownership; direct rooms have fixed members.
    pub fn require_owner(self) -> Result<(), StoreError> {
        if self.require_member()? != Role::Owner {
            return Err(StoreError::NotOwner);
        }
        if self.kind == RoomKind::Direct {
            return Err(StoreError::DirectRoomIsFixed);
        }
        Ok(())
    }
}
