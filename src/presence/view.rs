//! The cluster's presence as this node sees it: every connection's lease, and what
//! follows from them (who is online, who is live in which room). Pure bookkeeping:
//! [`View::apply`] turns a lease change into the `joined`/`left` changes it causes.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::protocol::PresenceStatus;

/// What one connection's KV entry says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Lease {
    pub user_id: Uuid,
    pub node_id: String,
    pub rooms: RoomSet,
}

/// A set of room ids, sorted, shared: a connection's session, its lease and this node's
/// view of the lease hold one copy between them (16 bytes a room), and a change makes a
/// new one. A connection changes its rooms far less often than it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<Uuid>")]
pub struct RoomSet(Arc<[Uuid]>);

impl Serialize for RoomSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl From<Vec<Uuid>> for RoomSet {
    fn from(mut rooms: Vec<Uuid>) -> Self {
        rooms.sort_unstable();
        rooms.dedup();
        Self(rooms.into())
    }
}

impl RoomSet {
    pub fn contains(&self, room_id: &Uuid) -> bool {
        self.0.binary_search(room_id).is_ok()
    }

    /// Adds a room; `false` if it was there already.
    pub fn insert(&mut self, room_id: Uuid) -> bool {
        match self.0.binary_search(&room_id) {
            Ok(_) => false,
            Err(at) => {
                let (before, after) = self.0.split_at(at);
                self.0 = before
                    .iter()
                    .chain([&room_id])
                    .chain(after)
                    .copied()
                    .collect();
                true
            }
        }
    }

    /// Removes a room; `false` if it was not there.
    pub fn remove(&mut self, room_id: &Uuid) -> bool {
        match self.0.binary_search(room_id) {
            Ok(at) => {
                let (before, after) = self.0.split_at(at);
                self.0 = before.iter().chain(&after[1..]).copied().collect();
                true
            }
            Err(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Uuid> {
        self.0.iter()
    }

    /// The rooms of `self` that are not in `other`.
    fn difference<'a>(&'a self, other: &'a RoomSet) -> impl Iterator<Item = &'a Uuid> {
        self.iter().filter(move |room| !other.contains(room))
    }
}

/// The cluster's presence as this node last saw it.
#[derive(Default)]
pub(super) struct View {
    /// Every live connection's lease, by KV key.
    pub leases: HashMap<String, Lease>,
    /// Live connections per user.
    pub online: HashMap<Uuid, usize>,
    /// Live subscriptions per room and user.
    pub rooms: HashMap<Uuid, UserCounts>,
}

impl View {
    /// Replaces (or with `None` removes) a connection's lease; returns the presence
    /// changes it causes.
    pub fn apply(&mut self, key: &str, lease: Option<Lease>) -> Vec<(Uuid, Uuid, PresenceStatus)> {
        let mut changes = Vec::new();
        let old = match lease {
            Some(lease) => self.leases.insert(key.to_string(), lease),
            None => self.leases.remove(key),
        };
        let new = self.leases.get(key);
        let no_rooms = RoomSet::default();
        if let Some(old) = &old {
            let kept = new.map_or(&no_rooms, |n| &n.rooms);
            for room in old.rooms.difference(kept) {
                let Some(users) = self.rooms.get_mut(room) else {
                    continue;
                };
                if users.decrement(old.user_id) {
                    changes.push((*room, old.user_id, PresenceStatus::Left));
                }
                if users.is_empty() {
                    self.rooms.remove(room);
                }
            }
            if new.is_none() {
                decrement(&mut self.online, old.user_id);
            }
        }
        if let Some(new) = new {
            let before = old.as_ref().map_or(&no_rooms, |o| &o.rooms);
            for room in new.rooms.difference(before) {
                if self.rooms.entry(*room).or_default().increment(new.user_id) {
                    changes.push((*room, new.user_id, PresenceStatus::Joined));
                }
            }
            if old.is_none() {
                *self.online.entry(new.user_id).or_default() += 1;
            }
        }
        changes
    }
}

impl View {
    /// Removes every lease whose key starts with `prefix` (a dead node's); returns the
    /// presence changes it causes.
    pub fn drop_prefix(&mut self, prefix: &str) -> Vec<(Uuid, Uuid, PresenceStatus)> {
        let keys: Vec<String> = self
            .leases
            .keys()
            .filter(|key| key.starts_with(prefix))
            .cloned()
            .collect();
        keys.iter().flat_map(|key| self.apply(key, None)).collect()
    }
}

/// How many live subscriptions each user has to one room, sorted by user: a room has a
/// handful of users live in it, and every node keeps one of these per room of the
/// cluster, so a vector costs a third of a hash map.
#[derive(Debug, Default)]
pub struct UserCounts(Vec<(Uuid, u32)>);

impl UserCounts {
    /// One more subscription of `user`; `true` if it is their first.
    fn increment(&mut self, user: Uuid) -> bool {
        match self.0.binary_search_by_key(&user, |(u, _)| *u) {
            Ok(at) => {
                self.0[at].1 += 1;
                false
            }
            Err(at) => {
                // Grown by an eighth rather than doubled: every node keeps one of these
                // per room of the cluster, most of them full.
                if self.0.len() == self.0.capacity() {
                    self.0.reserve_exact(self.0.len() / 8 + 1);
                }
                self.0.insert(at, (user, 1));
                true
            }
        }
    }

    /// One subscription of `user` fewer; `true` if it was their last.
    fn decrement(&mut self, user: Uuid) -> bool {
        let Ok(at) = self.0.binary_search_by_key(&user, |(u, _)| *u) else {
            return false;
        };
        self.0[at].1 -= 1;
        if self.0[at].1 > 0 {
            return false;
        }
        self.0.remove(at);
        if self.0.capacity() > 2 * self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The users, in id order.
    pub fn users(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.0.iter().map(|(user, _)| *user)
    }
}

/// Decrements `map[key]`, removing it at zero; `true` when it reached zero.
fn decrement(map: &mut HashMap<Uuid, usize>, key: Uuid) -> bool {
    match map.get_mut(&key) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        Some(_) => {
            map.remove(&key);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(user: Uuid, rooms: &[Uuid]) -> Option<Lease> {
        Some(Lease {
            user_id: user,
            node_id: "n".into(),
            rooms: rooms.to_vec().into(),
        })
    }

    #[test]
    fn the_first_subscription_joins_and_the_last_one_leaves() {
        let mut view = View::default();
        let (user, room) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(view.apply("c.1", lease(user, &[])), vec![]);
        assert_eq!(
            view.apply("c.1", lease(user, &[room])),
            vec![(room, user, PresenceStatus::Joined)]
        );
        // A second device in the same room changes nothing.
        assert_eq!(view.apply("c.2", lease(user, &[room])), vec![]);
        assert_eq!(view.apply("c.1", None), vec![]);
        assert!(view.online.contains_key(&user));
        assert_eq!(
            view.apply("c.2", None),
            vec![(room, user, PresenceStatus::Left)]
        );
        assert!(view.online.is_empty());
        assert!(view.rooms.is_empty());
    }

    #[test]
    fn a_room_set_stays_sorted_and_unique_however_it_is_built() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let mut set: RoomSet = serde_json::from_value(serde_json::json!([c, a, c, b])).unwrap();
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), vec![a, b, c]);
        assert!(!set.insert(b));
        assert!(set.remove(&b));
        assert!(!set.remove(&b));
        assert!(set.insert(b));
        assert_eq!(
            serde_json::to_value(&set).unwrap(),
            serde_json::json!([a, b, c])
        );
        assert_eq!(set.len(), 3);
    }
}
