//! The room index of one namespace on one server: room -> member sockets, socket -> joined rooms.
//!
//! It mirrors the semantics of Socket.IO's in-memory adapter (a socket stays known from its first
//! `add_all` until `del_all`, even with no rooms; a room exists while it has members) and reports
//! what changed so the JS layer can emit `create-room`/`join-room`/`leave-room`/`delete-room`.
//!
//! Socket ids are interned as small integer slots: deliveries name their recipients by slot, so the
//! JS side maps them back through a plain array instead of receiving strings.

use crate::wire::Target;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A socket's interned number, stable from its first `add_all` to its `del_all`.
pub type Slot = u32;

/// Bits reported per room by [`RoomIndex::add_all`].
pub const ROOM_CREATED: u8 = 1;
pub const SOCKET_JOINED: u8 = 2;
/// Bits reported by [`RoomIndex::del`].
pub const SOCKET_LEFT: u8 = 1;
pub const ROOM_DELETED: u8 = 2;

struct SocketEntry {
    id: Arc<str>,
    /// Joined rooms in join order (what `socket.rooms` iterates).
    rooms: Vec<Arc<str>>,
}

#[derive(Default)]
pub struct RoomIndex {
    slot_by_id: HashMap<Arc<str>, Slot>,
    sockets: Vec<Option<SocketEntry>>,
    free_slots: Vec<Slot>,
    rooms: HashMap<Arc<str>, Members>,
}

/// The members of one room. Most rooms are a socket's own-id room with one member, so that case
/// keeps its slot inline instead of allocating a set (with it, 10k sockets x 10 rooms take no more
/// memory than in Socket.IO's in-memory adapter; `npm run bench` measures it).
#[derive(Debug)]
enum Members {
    One(Slot),
    Many(HashSet<Slot>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Many(HashSet::new()) // empty: allocates nothing
    }
}

impl Members {
    fn insert(&mut self, slot: Slot) -> bool {
        match self {
            Members::One(existing) if *existing == slot => false,
            Members::One(existing) => {
                *self = Members::Many(HashSet::from([*existing, slot]));
                true
            }
            Members::Many(set) if set.is_empty() => {
                *self = Members::One(slot);
                true
            }
            Members::Many(set) => set.insert(slot),
        }
    }

    fn remove(&mut self, slot: &Slot) -> bool {
        match self {
            Members::One(existing) if existing == slot => {
                *self = Members::default();
                true
            }
            Members::One(_) => false,
            Members::Many(set) => set.remove(slot),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Members::Many(set) if set.is_empty())
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        let (one, many) = match self {
            Members::One(slot) => (Some(slot), None),
            Members::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// What [`RoomIndex::add_all`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct AddOutcome {
    pub slot: Slot,
    /// One entry per requested room: [`ROOM_CREATED`] | [`SOCKET_JOINED`] bits.
    pub changes: Vec<u8>,
}

/// A room the socket left in [`RoomIndex::del_all`], and whether that emptied (deleted) it.
#[derive(Debug, PartialEq, Eq)]
pub struct Departure {
    pub room: Arc<str>,
    pub room_deleted: bool,
}

impl RoomIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_all(&mut self, id: &str, rooms: &[String]) -> AddOutcome {
        let slot = self.slot_for(id);
        // Room lists grow by whole joins: reserving avoids doubling (a socket's ten rooms take ten
        // entries, not sixteen).
        if let Some(entry) = self.sockets[slot as usize].as_mut() {
            entry.rooms.reserve(rooms.len());
        }
        let mut changes = Vec::with_capacity(rooms.len());
        for room in rooms {
            let mut change = 0;
            let members = match self.rooms.get_mut(room.as_str()) {
                Some(members) => members,
                None => {
                    change |= ROOM_CREATED;
                    self.rooms.entry(Arc::from(room.as_str())).or_default()
                }
            };
            if members.insert(slot) {
                change |= SOCKET_JOINED;
                let name = self
                    .rooms
                    .get_key_value(room.as_str())
                    .map(|(k, _)| k.clone());
                let entry = self.sockets[slot as usize].as_mut().expect("slot is live");
                entry.rooms.push(name.expect("room was just inserted"));
            }
            changes.push(change);
        }
        AddOutcome { slot, changes }
    }

    /// Removes the socket from one room; returns [`SOCKET_LEFT`] | [`ROOM_DELETED`] bits.
    pub fn del(&mut self, id: &str, room: &str) -> u8 {
        let Some(&slot) = self.slot_by_id.get(id) else {
            return 0;
        };
        let entry = self.sockets[slot as usize].as_mut().expect("slot is live");
        entry.rooms.retain(|joined| &**joined != room);
        self.leave_room(slot, room)
    }

    /// Forgets the socket: leaves every room and frees its slot. `None` when it was not known.
    pub fn del_all(&mut self, id: &str) -> Option<(Slot, Vec<Departure>)> {
        let slot = self.slot_by_id.remove(id)?;
        let entry = self.sockets[slot as usize].take().expect("slot is live");
        self.free_slots.push(slot);
        let departures = entry
            .rooms
            .into_iter()
            .map(|room| {
                let room_deleted = self.leave_room(slot, &room) & ROOM_DELETED != 0;
                Departure { room, room_deleted }
            })
            .collect();
        Some((slot, departures))
    }

    pub fn socket_rooms(&self, id: &str) -> Option<&[Arc<str>]> {
        let slot = *self.slot_by_id.get(id)?;
        self.sockets[slot as usize]
            .as_ref()
            .map(|e| e.rooms.as_slice())
    }

    pub fn socket_id(&self, slot: Slot) -> Option<&Arc<str>> {
        self.sockets.get(slot as usize)?.as_ref().map(|e| &e.id)
    }

    pub fn room_members(&self, room: &str) -> Option<Vec<Arc<str>>> {
        let members = self.rooms.get(room)?;
        Some(
            members
                .iter()
                .filter_map(|&slot| self.socket_id(slot).cloned())
                .collect(),
        )
    }

    pub fn room_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.rooms.keys()
    }

    pub fn socket_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.sockets.iter().flatten().map(|e| &e.id)
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn socket_count(&self) -> usize {
        self.slot_by_id.len()
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn has_socket(&self, id: &str) -> bool {
        self.slot_by_id.contains_key(id)
    }

    /// The local sockets a target matches, each once (Socket.IO's `apply`).
    pub fn recipients(&self, target: &Target) -> Vec<Slot> {
        let excluded = self.excluded(target);
        let keep = |slot: &Slot| excluded.as_ref().is_none_or(|ex| !ex.contains(slot));
        if target.rooms.is_empty() {
            return (0..self.sockets.len() as Slot)
                .filter(|&slot| self.sockets[slot as usize].is_some())
                .filter(keep)
                .collect();
        }
        let mut rooms = target
            .rooms
            .iter()
            .filter_map(|r| self.rooms.get(r.as_str()));
        let Some(first) = rooms.next() else {
            return Vec::new();
        };
        let mut out: Vec<Slot> = first.iter().copied().filter(keep).collect();
        if target.rooms.len() > 1 {
            // A socket in several target rooms still gets the packet once.
            let mut seen: HashSet<Slot> = out.iter().copied().collect();
            for members in rooms {
                out.extend(
                    members
                        .iter()
                        .copied()
                        .filter(|s| keep(s) && seen.insert(*s)),
                );
            }
        }
        out
    }

    /// Whether [`recipients`](Self::recipients) would be non-empty, without building the list.
    pub fn has_recipient(&self, target: &Target) -> bool {
        let excluded = self.excluded(target);
        let keep = |slot: &Slot| excluded.as_ref().is_none_or(|ex| !ex.contains(slot));
        if target.rooms.is_empty() {
            return self.slot_by_id.values().any(keep);
        }
        target
            .rooms
            .iter()
            .filter_map(|r| self.rooms.get(r.as_str()))
            .any(|members| members.iter().any(keep))
    }

    fn excluded(&self, target: &Target) -> Option<HashSet<Slot>> {
        if target.except.is_empty() {
            return None;
        }
        let mut excluded = HashSet::new();
        for room in &target.except {
            if let Some(members) = self.rooms.get(room.as_str()) {
                excluded.extend(members.iter().copied());
            }
        }
        Some(excluded)
    }

    fn slot_for(&mut self, id: &str) -> Slot {
        if let Some(&slot) = self.slot_by_id.get(id) {
            return slot;
        }
        let id: Arc<str> = Arc::from(id);
        let entry = Some(SocketEntry {
            id: id.clone(),
            rooms: Vec::new(),
        });
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.sockets[slot as usize] = entry;
                slot
            }
            None => {
                self.sockets.push(entry);
                (self.sockets.len() - 1) as Slot
            }
        };
        self.slot_by_id.insert(id, slot);
        slot
    }

    fn leave_room(&mut self, slot: Slot, room: &str) -> u8 {
        let Some(members) = self.rooms.get_mut(room) else {
            return 0;
        };
        let mut result = 0;
        if members.remove(&slot) {
            result |= SOCKET_LEFT;
        }
        if members.is_empty() {
            self.rooms.remove(room);
            result |= ROOM_DELETED;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn target(rooms_: &[&str], except: &[&str]) -> Target {
        Target {
            rooms: rooms(rooms_),
            except: rooms(except),
        }
    }

    fn ids(index: &RoomIndex, slots: Vec<Slot>) -> Vec<String> {
        let mut out: Vec<String> = slots
            .into_iter()
            .map(|s| index.socket_id(s).unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn add_all_reports_creation_before_join_and_no_repeat() {
        let mut index = RoomIndex::new();
        let first = index.add_all("a", &rooms(&["a", "r"]));
        assert_eq!(
            first.changes,
            vec![ROOM_CREATED | SOCKET_JOINED, ROOM_CREATED | SOCKET_JOINED]
        );
        let again = index.add_all("a", &rooms(&["r"]));
        assert_eq!(again.changes, vec![0]);
        assert_eq!(again.slot, first.slot);
        let other = index.add_all("b", &rooms(&["r"]));
        assert_eq!(other.changes, vec![SOCKET_JOINED]);
        assert_ne!(other.slot, first.slot);
    }

    #[test]
    fn socket_rooms_keep_join_order() {
        let mut index = RoomIndex::new();
        index.add_all("a", &rooms(&["a", "z", "m"]));
        let joined: Vec<&str> = index
            .socket_rooms("a")
            .unwrap()
            .iter()
            .map(|r| &**r)
            .collect();
        assert_eq!(joined, vec!["a", "z", "m"]);
    }

    #[test]
    fn del_leaves_and_deletes_empty_rooms_but_keeps_the_socket() {
        let mut index = RoomIndex::new();
        index.add_all("a", &rooms(&["r"]));
        index.add_all("b", &rooms(&["r"]));
        assert_eq!(index.del("a", "r"), SOCKET_LEFT);
        assert_eq!(index.del("a", "r"), 0);
        assert_eq!(index.del("b", "r"), SOCKET_LEFT | ROOM_DELETED);
        assert!(!index.has_room("r"));
        assert!(index.has_socket("a"));
        assert_eq!(index.socket_rooms("a").unwrap().len(), 0);
        assert_eq!(index.del("unknown", "r"), 0);
    }

    #[test]
    fn del_all_reports_departures_and_recycles_the_slot() {
        let mut index = RoomIndex::new();
        let a = index.add_all("a", &rooms(&["a", "shared"])).slot;
        index.add_all("b", &rooms(&["shared"]));
        let (slot, departures) = index.del_all("a").unwrap();
        assert_eq!(slot, a);
        assert_eq!(
            departures,
            vec![
                Departure {
                    room: "a".into(),
                    room_deleted: true
                },
                Departure {
                    room: "shared".into(),
                    room_deleted: false
                },
            ]
        );
        assert!(index.del_all("a").is_none());
        assert_eq!(index.socket_count(), 1);
        assert_eq!(index.add_all("c", &[]).slot, a, "freed slot is reused");
        assert_eq!(index.socket_id(a).map(|s| &**s), Some("c"));
    }

    #[test]
    fn recipients_follow_rooms_and_except_once_each() {
        let mut index = RoomIndex::new();
        index.add_all("a", &rooms(&["a", "r1", "r2"]));
        index.add_all("b", &rooms(&["b", "r1"]));
        index.add_all("c", &rooms(&["c", "r2", "vip"]));
        index.add_all("d", &rooms(&["d"]));

        assert_eq!(
            ids(&index, index.recipients(&target(&[], &[]))),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            ids(&index, index.recipients(&target(&["r1", "r2"], &[]))),
            ["a", "b", "c"]
        );
        assert_eq!(
            ids(&index, index.recipients(&target(&["r1", "r2"], &["vip"]))),
            ["a", "b"]
        );
        assert_eq!(
            ids(&index, index.recipients(&target(&[], &["a"]))),
            ["b", "c", "d"]
        );
        assert_eq!(ids(&index, index.recipients(&target(&["b"], &[]))), ["b"]);
        assert!(index.recipients(&target(&["nobody"], &[])).is_empty());
    }

    #[test]
    fn has_recipient_agrees_with_recipients() {
        let mut index = RoomIndex::new();
        index.add_all("a", &rooms(&["a", "r"]));
        index.add_all("b", &rooms(&["b"]));
        for t in [
            target(&[], &[]),
            target(&["r"], &[]),
            target(&["r"], &["a"]),
            target(&["x"], &[]),
            target(&[], &["a", "b"]),
        ] {
            assert_eq!(
                index.has_recipient(&t),
                !index.recipients(&t).is_empty(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn a_room_grows_from_one_member_and_shrinks_back() {
        let mut index = RoomIndex::new();
        index.add_all("a", &rooms(&["r"]));
        index.add_all("b", &rooms(&["r"]));
        index.add_all("c", &rooms(&["r"]));
        assert_eq!(
            ids(&index, index.recipients(&target(&["r"], &[]))),
            ["a", "b", "c"]
        );
        assert_eq!(index.del("b", "r"), SOCKET_LEFT);
        assert_eq!(index.del("a", "r"), SOCKET_LEFT);
        assert_eq!(
            ids(&index, index.recipients(&target(&["r"], &["x"]))),
            ["c"]
        );
        assert_eq!(
            index.add_all("c", &rooms(&["r"])).changes,
            vec![0],
            "already a member"
        );
        assert_eq!(index.del("c", "r"), SOCKET_LEFT | ROOM_DELETED);
        assert!(!index.has_room("r"));
    }

    #[test]
    fn room_members_and_listings() {
        let mut index = RoomIndex::new();
        index.add_all("a", &rooms(&["r"]));
        index.add_all("b", &rooms(&["r"]));
        let mut members: Vec<String> = index
            .room_members("r")
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        members.sort();
        assert_eq!(members, ["a", "b"]);
        assert!(index.room_members("none").is_none());
        assert_eq!(index.room_count(), 1);
        let mut sockets: Vec<&str> = index.socket_ids().map(|s| &**s).collect();
        sockets.sort();
        assert_eq!(sockets, ["a", "b"]);
    }
}
