//! Rooms, membership, direct rooms, read watermarks and the caller's chat list.
//!
//! Visibility is decided once, by [`Access`]: a private or direct room that the caller
//! does not belong to answers exactly like a room that does not exist, so no route can
//! leak that it exists.

use crate::store::CachedQuery;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{
    Store, StoreError,
    access::Access,
    events::{self, Membership, Recorded, RoomChange},
    rows,
};
use crate::{
    domain::{InvalidInput, RoomName},
    model::{
        AccessLost, Member, MyRoom, NotificationLevel, NotificationSettings, Role, Room, RoomKind,
    },
};

/// Columns of a [`Room`] as seen by the user bound to `$1` (a direct room is named after
/// the other participant).
const ROOM_COLUMNS: &str = "r.id,
    CASE WHEN r.kind = 'direct' THEN COALESCE(
        (SELECT u.display_name FROM members om JOIN users u ON u.id = om.user_id
          WHERE om.room_id = r.id AND om.user_id <> $1 LIMIT 1), r.name)
    ELSE r.name END AS name,
    r.kind, r.owner_id, r.created_at, r.last_seq, r.member_count";

/// Messages deleted per statement when a room is deleted.
const DELETE_BATCH: i64 = 5_000;

/// Deletes a membership and records `member.left`, if there was one. In a private or
/// direct room that is a loss of access: one statement also bumps the room's
/// `access_version` and records why, so every node's relay finds out even if the NATS
/// event (the change's revocation) is lost (SPEC §10).
async fn end_membership(
    db: &impl GenericClient,
    room_id: Uuid,
    user_id: Uuid,
    reason: AccessLost,
) -> Result<Option<RoomChange>, StoreError> {
    let ended = db
        .query_one_cached(
            "WITH gone AS (
                 DELETE FROM members WHERE room_id = $1 AND user_id = $2 RETURNING room_id),
             bumped AS (
                 UPDATE rooms SET access_version = access_version + 1
                  WHERE id IN (SELECT room_id FROM gone) AND kind <> 'public' RETURNING id),
             revoked AS (
                 INSERT INTO access_revocations (room_id, user_id, reason)
                 SELECT id, $2, $3 FROM bumped
                 ON CONFLICT (room_id, user_id) DO UPDATE SET reason = EXCLUDED.reason),
             active AS (
                 INSERT INTO room_activity (at, room_id)
                 SELECT now_ms() / 1000, id FROM bumped ON CONFLICT DO NOTHING)
             SELECT (SELECT count(*) FROM gone), EXISTS (SELECT 1 FROM bumped)",
            &[&room_id, &user_id, &reason.as_str()],
        )
        .await?;
    if ended.get::<_, i64>(0) == 0 {
        return Ok(None);
    }
    let left = RoomChange::MemberLeft {
        member: Membership { room_id, user_id },
        lost: ended.get::<_, bool>(1).then_some(reason),
    };
    Ok(Some(events::record(db, left).await?))
}

/// Records a new room's `room.created` and starts every cluster-wide webhook at its
/// beginning, so they deliver it.
async fn record_created(db: &impl GenericClient, room: &Room) -> Result<RoomChange, StoreError> {
    let created = events::record(db, RoomChange::RoomCreated(room.clone())).await?;
    db.execute_cached(
        "INSERT INTO webhook_cursors (webhook_id, room_id, seq, n)
         SELECT id, $1, 0, 0 FROM webhooks WHERE room_id IS NULL
         ON CONFLICT DO NOTHING",
        &[&room.id],
    )
    .await?;
    Ok(created)
}

fn room_from_row(row: &Row) -> Room {
    Room {
        id: row.get("id"),
        name: row.get("name"),
        kind: RoomKind::from_db(row.get("kind")),
        owner_id: row.get("owner_id"),
        created_at: row.get("created_at"),
        last_seq: row.get("last_seq"),
        member_count: row.get("member_count"),
    }
}

/// One of a user's direct rooms, as the chat list of `GET /api/chats` shows it.
pub struct DirectChat {
    pub room_id: Uuid,
    pub other_user_id: Uuid,
    /// Milliseconds since the epoch; `None` before the first message.
    pub last_message_at: Option<i64>,
    pub unread_count: i64,
}

/// A page of a list and the cursor of the next page, if there is one.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Where `GET /v1/me/rooms` continues: the last room's activity time and id.
#[derive(Debug, Clone, Copy)]
pub struct ActivityCursor {
    pub last_activity_at: i64,
    pub room_id: Uuid,
}

impl ActivityCursor {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let invalid = || InvalidInput::new("cursor", "is not a cursor this API returned");
        let (at, id) = raw.split_once('_').ok_or_else(invalid)?;
        Ok(Self {
            last_activity_at: at.parse().map_err(|_| invalid())?,
            room_id: id.parse().map_err(|_| invalid())?,
        })
    }
}

impl std::fmt::Display for ActivityCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.last_activity_at, self.room_id)
    }
}

impl Store {
    /// Creates a public or private room owned by `owner`, with `member_ids` as members.
    #[tracing::instrument(skip(self, name, member_ids), fields(member_count = member_ids.len()))]
    pub async fn create_room(
        &self,
        owner: Uuid,
        name: &RoomName,
        kind: RoomKind,
        member_ids: &[Uuid],
    ) -> Result<Recorded<Room>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let room_id = Uuid::now_v7();
        tx.execute_cached(
            "INSERT INTO rooms (id, name, kind, owner_id) VALUES ($1, $2, $3, $4)",
            &[&room_id, &name.as_str(), &kind.as_str(), &owner],
        )
        .await?;
        tx.execute_cached(
            "INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, 'owner')",
            &[&room_id, &owner],
        )
        .await?;
        let mut others: Vec<Uuid> = member_ids
            .iter()
            .copied()
            .filter(|id| *id != owner)
            .collect();
        others.sort_unstable();
        others.dedup();
        if !others.is_empty() {
            let added = tx
                .execute_cached(
                    "INSERT INTO members (room_id, user_id, role)
                     SELECT $1, u.id, 'member' FROM users u WHERE u.id = ANY($2)",
                    &[&room_id, &others],
                )
                .await?;
            if added as usize != others.len() {
                return Err(
                    InvalidInput::new("member_ids", "names a user that does not exist").into(),
                );
            }
        }
        let room = fetch_room(&tx, owner, room_id).await?;
        let created = record_created(&tx, &room).await?;
        tx.commit().await?;
        Ok(Recorded::new(room, created))
    }

    /// Public rooms and the caller's rooms, in id (creation) order.
    #[tracing::instrument(skip(self))]
    pub async fn list_rooms(
        &self,
        viewer: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Room>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {ROOM_COLUMNS} FROM rooms r
              WHERE (r.kind = 'public'
                     OR EXISTS (SELECT 1 FROM members m WHERE m.room_id = r.id AND m.user_id = $1))
                AND ($2::uuid IS NULL OR r.id > $2)
              ORDER BY r.id LIMIT $3"
        );
        let rows = client
            .query_cached(&sql, &[&viewer, &after, &(limit + 1)])
            .await?;
        let mut items: Vec<Room> = rows.iter().map(room_from_row).collect();
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Whether the caller may see a room (`RoomNotFound` if not), and their role in it
    /// (`None` for a public room they have not joined).
    #[tracing::instrument(skip(self))]
    pub async fn check_access(
        &self,
        viewer: Uuid,
        room_id: Uuid,
    ) -> Result<Option<Role>, StoreError> {
        let client = self.client().await?;
        Ok(Access::of(&client, room_id, viewer).await?.role)
    }

    /// Which of `users` can no longer see a room, and why (SPEC §10): the relay's check
    /// once the room's `access_version` moved. A deleted room is lost to everyone.
    pub async fn lost_access(
        &self,
        room_id: Uuid,
        users: &[Uuid],
    ) -> Result<Vec<(Uuid, AccessLost)>, StoreError> {
        let client = self.client().await?;
        let room = client
            .query_opt_cached("SELECT kind FROM rooms WHERE id = $1", &[&room_id])
            .await?;
        let Some(room) = room else {
            return Ok(users
                .iter()
                .map(|u| (*u, AccessLost::RoomDeleted))
                .collect());
        };
        if RoomKind::from_db(room.get(0)) == RoomKind::Public {
            return Ok(Vec::new());
        }
        let rows = client
            .query_cached(
                "SELECT u.id, r.reason FROM unnest($2::uuid[]) AS u (id)
                   LEFT JOIN access_revocations r ON r.room_id = $1 AND r.user_id = u.id
                  WHERE NOT EXISTS (
                      SELECT 1 FROM members m WHERE m.room_id = $1 AND m.user_id = u.id)",
                &[&room_id, &users],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let reason = match row.get::<_, Option<&str>>(1) {
                    Some("left") => AccessLost::Left,
                    _ => AccessLost::Removed,
                };
                (row.get(0), reason)
            })
            .collect())
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_room(&self, viewer: Uuid, room_id: Uuid) -> Result<Room, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, viewer).await?;
        fetch_room(&client, viewer, room_id).await
    }

    #[tracing::instrument(skip(self, name))]
    pub async fn rename_room(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        name: &RoomName,
    ) -> Result<Room, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_owner()?;
        client
            .execute_cached(
                "UPDATE rooms SET name = $2 WHERE id = $1",
                &[&room_id, &name.as_str()],
            )
            .await?;
        fetch_room(&client, viewer, room_id).await
    }

    /// Deletes a room with its members, messages and their reactions.
    #[tracing::instrument(skip(self))]
    pub async fn delete_room(
        &self,
        viewer: Uuid,
        room_id: Uuid,
    ) -> Result<Recorded<()>, StoreError> {
        let mut client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_owner()?;
        // The history first, a batch per statement: deleting a long one in one statement
        // could outlast the statement timeout on every try. The room stays until the
        // end, so a failure part-way leaves a room its owner can delete again.
        loop {
            let deleted = client
                .execute_cached(
                    "DELETE FROM messages WHERE id IN (
                         SELECT id FROM messages WHERE room_id = $1 LIMIT $2)",
                    &[&room_id, &DELETE_BATCH],
                )
                .await?;
            if deleted < DELETE_BATCH as u64 {
                break;
            }
        }
        let tx = client.transaction().await?;
        // The room first: its row lock waits for a send in flight, which then commits
        // before the messages are deleted, and any later send finds no room. Two
        // statements, so the second's snapshot sees that send's messages (the few sent
        // since the batches above). `room.deleted` is recorded under that lock.
        events::lock_room(&tx, room_id).await?;
        let room = fetch_room(&tx, viewer, room_id).await?;
        let deleted = events::record(&tx, RoomChange::RoomDeleted(room)).await?;
        tx.execute_cached("DELETE FROM rooms WHERE id = $1", &[&room_id])
            .await?;
        // Nodes whose copy of the deletion's NATS event was lost find it here.
        tx.execute_cached(
            "INSERT INTO room_activity (at, room_id) VALUES (now_ms() / 1000, $1)
             ON CONFLICT DO NOTHING",
            &[&room_id],
        )
        .await?;
        tx.execute_cached("DELETE FROM messages WHERE room_id = $1", &[&room_id])
            .await?;
        tx.commit().await?;
        Ok(Recorded::new((), deleted))
    }

    /// Joins a public room; a no-op for a room the caller already belongs to.
    #[tracing::instrument(skip(self))]
    pub async fn join_room(&self, viewer: Uuid, room_id: Uuid) -> Result<Recorded<()>, StoreError> {
        let mut client = self.client().await?;
        let access = Access::of(&client, room_id, viewer).await?;
        if access.role.is_some() {
            return Ok(Recorded::unchanged(()));
        }
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        let joined = tx
            .execute_cached(
                "INSERT INTO members (room_id, user_id, role) VALUES ($1, $2, 'member')
                 ON CONFLICT DO NOTHING",
                &[&room_id, &viewer],
            )
            .await?;
        let change = if joined > 0 {
            let member = Membership {
                room_id,
                user_id: viewer,
            };
            Some(events::record(&tx, RoomChange::MemberJoined(member)).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Recorded::new((), change))
    }

    /// Leaves a room; a no-op for a public room the caller is not in.
    #[tracing::instrument(skip(self))]
    pub async fn leave_room(
        &self,
        viewer: Uuid,
        room_id: Uuid,
    ) -> Result<Recorded<()>, StoreError> {
        let mut client = self.client().await?;
        let access = Access::of(&client, room_id, viewer).await?;
        match access.role {
            None => return Ok(Recorded::unchanged(())),
            Some(_) if access.kind == RoomKind::Direct => {
                return Err(StoreError::DirectRoomIsFixed);
            }
            Some(Role::Owner) => return Err(StoreError::OwnerCannotLeave),
            Some(Role::Member) => {}
        }
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        let left = end_membership(&tx, room_id, viewer, AccessLost::Left).await?;
        tx.commit().await?;
        Ok(Recorded::new((), left))
    }

    /// A room's members in user-id order.
    #[tracing::instrument(skip(self))]
    pub async fn list_members(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Member>, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, viewer).await?;
        let rows = client
            .query_cached(
                "SELECT m.user_id, u.username, u.display_name, m.role, m.joined_at, m.last_read_seq
                   FROM members m JOIN users u ON u.id = m.user_id
                  WHERE m.room_id = $1 AND ($2::uuid IS NULL OR m.user_id > $2)
                  ORDER BY m.user_id LIMIT $3",
                &[&room_id, &after, &(limit + 1)],
            )
            .await?;
        let mut items: Vec<Member> = rows
            .iter()
            .map(|row| Member {
                user_id: row.get("user_id"),
                username: row.get("username"),
                display_name: row.get("display_name"),
                role: Role::from_db(row.get("role")),
                online: false,
                joined_at: row.get("joined_at"),
                last_read_seq: row.get("last_read_seq"),
            })
            .collect();
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|m| m.user_id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// The owner adds a member; a no-op if they already are one.
    #[tracing::instrument(skip(self))]
    pub async fn add_member(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        user_id: Uuid,
    ) -> Result<Recorded<()>, StoreError> {
        let mut client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_owner()?;
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        let inserted = tx
            .execute_cached(
                "INSERT INTO members (room_id, user_id, role)
                 SELECT $1, u.id, 'member' FROM users u WHERE u.id = $2
                 ON CONFLICT DO NOTHING",
                &[&room_id, &user_id],
            )
            .await?;
        let change = if inserted == 0 {
            // Either already a member (fine) or no such user.
            let exists = tx
                .query_opt_cached("SELECT 1 FROM users WHERE id = $1", &[&user_id])
                .await?;
            if exists.is_none() {
                return Err(StoreError::UserNotFound);
            }
            None
        } else {
            let member = Membership { room_id, user_id };
            Some(events::record(&tx, RoomChange::MemberJoined(member)).await?)
        };
        tx.commit().await?;
        Ok(Recorded::new((), change))
    }

    /// The owner removes a member; a no-op if they are not one.
    #[tracing::instrument(skip(self))]
    pub async fn remove_member(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        user_id: Uuid,
    ) -> Result<Recorded<()>, StoreError> {
        let mut client = self.client().await?;
        let access = Access::of(&client, room_id, viewer).await?;
        access.require_owner()?;
        if user_id == viewer {
            return Err(StoreError::OwnerCannotLeave);
        }
        let tx = client.transaction().await?;
        events::lock_room(&tx, room_id).await?;
        let removed = end_membership(&tx, room_id, user_id, AccessLost::Removed).await?;
        tx.commit().await?;
        Ok(Recorded::new((), removed))
    }

    /// The direct room of `viewer` and `other`, created on first use. Returns whether it
    /// was created by this call. Concurrent calls for one pair make one room.
    #[tracing::instrument(skip(self))]
    pub async fn get_or_create_direct_room(
        &self,
        viewer: Uuid,
        other: Uuid,
    ) -> Result<Recorded<(Room, bool)>, StoreError> {
        if viewer == other {
            return Err(
                InvalidInput::new("user_id", "cannot open a direct room with yourself").into(),
            );
        }
        let (low, high) = if viewer < other {
            (viewer, other)
        } else {
            (other, viewer)
        };
        let direct_key = format!("{low}:{high}");
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let other_exists = tx
            .query_opt_cached("SELECT 1 FROM users WHERE id = $1", &[&other])
            .await?;
        if other_exists.is_none() {
            return Err(StoreError::UserNotFound);
        }
        let created = tx
            .query_opt_cached(
                "INSERT INTO rooms (id, name, kind, owner_id, direct_key)
                 VALUES ($1, '', 'direct', $2, $3)
                 ON CONFLICT (direct_key) DO NOTHING RETURNING id",
                &[&Uuid::now_v7(), &viewer, &direct_key],
            )
            .await?;
        let was_created = created.is_some();
        let room_id: Uuid = match created {
            Some(row) => {
                let id = row.get(0);
                tx.execute_cached(
                    "INSERT INTO members (room_id, user_id, role)
                     VALUES ($1, $2, 'owner'), ($1, $3, 'member')",
                    &[&id, &viewer, &other],
                )
                .await?;
                id
            }
            None => tx
                .query_one_cached("SELECT id FROM rooms WHERE direct_key = $1", &[&direct_key])
                .await?
                .get(0),
        };
        let room = fetch_room(&tx, viewer, room_id).await?;
        let created = if was_created {
            Some(record_created(&tx, &room).await?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(Recorded::new((room, was_created), created))
    }

    /// The direct room of `viewer` and `other`, if they have one (nothing is created).
    /// `user_not_found` if `other` does not exist.
    pub async fn find_direct_room(
        &self,
        viewer: Uuid,
        other: Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        let (low, high) = if viewer < other {
            (viewer, other)
        } else {
            (other, viewer)
        };
        let client = self.client().await?;
        let row = client
            .query_one_cached(
                "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS known,
                        (SELECT id FROM rooms WHERE direct_key = $2) AS room",
                &[&other, &format!("{low}:{high}")],
            )
            .await?;
        if !row.get::<_, bool>("known") {
            return Err(StoreError::UserNotFound);
        }
        Ok(row.get("room"))
    }

    /// The caller's direct rooms, most recently active first (at most `limit`): the other
    /// user, when the last message came (none yet: `None`) and how many are unread.
    pub async fn direct_chats(
        &self,
        viewer: Uuid,
        limit: i64,
    ) -> Result<Vec<DirectChat>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_cached(
                "SELECT r.id, o.user_id AS other,
                        CASE WHEN r.last_seq > 0 THEN r.last_activity_at END AS last_message_at,
                        (SELECT count(*) FROM messages x
                          WHERE x.room_id = r.id AND x.seq > m.last_read_seq
                            AND x.sender_id <> $1 AND NOT x.deleted) AS unread_count
                   FROM members m
                   JOIN rooms r ON r.id = m.room_id AND r.kind = 'direct'
                   JOIN members o ON o.room_id = r.id AND o.user_id <> $1
                  WHERE m.user_id = $1
                  ORDER BY r.last_activity_at DESC, r.id DESC LIMIT $2",
                &[&viewer, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| DirectChat {
                room_id: row.get("id"),
                other_user_id: row.get("other"),
                last_message_at: row.get("last_message_at"),
                unread_count: row.get("unread_count"),
            })
            .collect())
    }

    /// The caller's rooms, most recently active first, with unread counts and the last
    /// message of each.
    #[tracing::instrument(skip(self))]
    pub async fn my_rooms(
        &self,
        viewer: Uuid,
        after: Option<ActivityCursor>,
        limit: i64,
    ) -> Result<Page<MyRoom>, StoreError> {
        let client = self.reader().await?;
        let sql = format!(
            "SELECT {ROOM_COLUMNS}, r.last_activity_at, m.last_read_seq,
                    m.notification_level, m.muted_until,
                    (SELECT count(*) FROM messages x
                      WHERE x.room_id = r.id AND x.seq > m.last_read_seq
                        AND x.sender_id <> $1 AND NOT x.deleted) AS unread_count
               FROM members m JOIN rooms r ON r.id = m.room_id
              WHERE m.user_id = $1
                AND ($2::bigint IS NULL OR (r.last_activity_at, r.id) < ($2, $3::uuid))
              ORDER BY r.last_activity_at DESC, r.id DESC LIMIT $4"
        );
        let (at, id) = after.map_or((None, None), |c| {
            (Some(c.last_activity_at), Some(c.room_id))
        });
        let rows = client
            .query_cached(&sql, &[&viewer, &at, &id, &(limit + 1)])
            .await?;
        let mut items: Vec<MyRoom> = rows
            .iter()
            .map(|row| {
                let room = room_from_row(row);
                let notifications = notification_settings(row, room.kind);
                MyRoom {
                    room,
                    unread_count: row.get("unread_count"),
                    last_read_seq: row.get("last_read_seq"),
                    last_message: None,
                    last_activity_at: row.get("last_activity_at"),
                    notifications,
                }
            })
            .collect();
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|r| {
                ActivityCursor {
                    last_activity_at: r.last_activity_at,
                    room_id: r.room.id,
                }
                .to_string()
            })
        } else {
            None
        };
        let latest: Vec<(Uuid, i64)> = items
            .iter()
            .filter(|r| r.room.last_seq > 0)
            .map(|r| (r.room.id, r.room.last_seq))
            .collect();
        let mut last_messages = rows::fetch_at(&client, viewer, &latest).await?;
        for item in &mut items {
            if let Some(pos) = last_messages.iter().position(|m| m.room_id == item.room.id) {
                item.last_message = Some(last_messages.swap_remove(pos));
            }
        }
        Ok(Page { items, next_cursor })
    }

    /// The member's notification settings for the room (SPEC §14).
    pub async fn notification_settings(
        &self,
        viewer: Uuid,
        room_id: Uuid,
    ) -> Result<NotificationSettings, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_member()?;
        let row = client
            .query_one_cached(
                "SELECT r.kind, m.notification_level, m.muted_until
                   FROM members m JOIN rooms r ON r.id = m.room_id
                  WHERE m.room_id = $1 AND m.user_id = $2",
                &[&room_id, &viewer],
            )
            .await?;
        Ok(notification_settings(
            &row,
            RoomKind::from_db(row.get("kind")),
        ))
    }

    /// Sets the member's notification settings for the room.
    pub async fn set_notification_settings(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        settings: &NotificationSettings,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_member()?;
        let updated = client
            .execute(
                "UPDATE members SET notification_level = $3, muted_until = $4
                  WHERE room_id = $1 AND user_id = $2",
                &[
                    &room_id,
                    &viewer,
                    &settings.level.as_str(),
                    &settings.muted_until,
                ],
            )
            .await?;
        match updated {
            // Left between the check and the update.
            0 => Err(StoreError::NotMember),
            _ => Ok(()),
        }
    }

    /// Moves the caller's read watermark forward to `seq` (never back). Returns whether
    /// it moved.
    #[tracing::instrument(skip(self))]
    pub async fn mark_read(
        &self,
        viewer: Uuid,
        room_id: Uuid,
        seq: i64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Access::of(&client, room_id, viewer)
            .await?
            .require_member()?;
        let row = client
            .query_one_cached(
                "WITH target AS (
                     SELECT last_seq FROM rooms WHERE id = $1
                 ), moved AS (
                     UPDATE members m SET last_read_seq = $3
                       FROM target
                      WHERE m.room_id = $1 AND m.user_id = $2
                        AND $3 <= target.last_seq AND m.last_read_seq < $3
                      RETURNING 1
                 )
                 SELECT (SELECT last_seq FROM target), EXISTS (SELECT 1 FROM moved)",
                &[&room_id, &viewer, &seq],
            )
            .await?;
        let last_seq: Option<i64> = row.get(0);
        if last_seq.is_none_or(|last| seq > last) {
            return Err(InvalidInput::new("seq", "is beyond the room's last_seq").into());
        }
        Ok(row.get(1))
    }
}

async fn fetch_room(
    db: &impl GenericClient,
    viewer: Uuid,
    room_id: Uuid,
) -> Result<Room, StoreError> {
    let sql = format!("SELECT {ROOM_COLUMNS} FROM rooms r WHERE r.id = $2");
    db.query_opt_cached(&sql, &[&viewer, &room_id])
        .await?
        .map(|r| room_from_row(&r))
        .ok_or(StoreError::RoomNotFound)
}

/// A membership row's notification settings: its stored level, or `kind`'s default.
fn notification_settings(row: &tokio_postgres::Row, kind: RoomKind) -> NotificationSettings {
    let stored: Option<&str> = row.get("notification_level");
    NotificationSettings {
        level: stored
            .and_then(NotificationLevel::parse)
            .unwrap_or(NotificationLevel::default_for(kind)),
        muted_until: row.get("muted_until"),
    }
}
