//! Room routing (the `roomRouting` option): the server's queue is bound to one key per room it has
//! members in, and single-room broadcasts are published to that room's key, so the broker sends
//! them only to servers that can deliver them. Servers without members in a room never see its
//! traffic: with many small rooms, most of a server's incoming messages disappear.
//!
//! This module keeps the bookkeeping, free of AMQP: which (namespace, room) pairs changed since
//! the last sync ("dirty"), which keys the broker has for this session ("bound"), generation numbers
//! so a caller can wait until its changes reached the broker (`await socket.join(room)`), and the
//! rooms recently named by a `socketsJoin`, whose broadcasts keep going by namespace key for a
//! while: the servers that just joined sockets to them may not have bound the room's key yet.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long a room named by a `socketsJoin` keeps going by namespace key. A server binds a new
/// room's key within a broker round trip of applying the join; this leaves a wide margin.
pub(crate) const SOCKETS_JOIN_GRACE: Duration = Duration::from_secs(5);

/// "Not connected": waiters return at once instead of waiting for a session.
const OFFLINE: u64 = u64::MAX;

pub(crate) type RoomRef = (String, String);

pub(crate) struct RoomBindings {
    dirty: Mutex<HashSet<RoomRef>>,
    /// Bumped (under the `dirty` lock) by every change: the generation a waiter waits for.
    requested: AtomicU64,
    /// The generation the broker has caught up with in this session; [`OFFLINE`] between sessions.
    synced: watch::Sender<u64>,
    changed: Notify,
    bound: Mutex<HashSet<RoomRef>>,
    /// namespace -> room -> when a `socketsJoin` last named it.
    recently_joined: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Rooms a restore under way needs bound before its socket joins them (connection state
    /// recovery), per restore: (namespace, rooms).
    pins: Mutex<HashMap<u64, (String, Vec<String>)>>,
}

impl Default for RoomBindings {
    fn default() -> Self {
        RoomBindings {
            dirty: Mutex::default(),
            requested: AtomicU64::new(0),
            synced: watch::channel(OFFLINE).0,
            changed: Notify::new(),
            bound: Mutex::default(),
            recently_joined: Mutex::default(),
            pins: Mutex::default(),
        }
    }
}

impl RoomBindings {
    /// Rooms of `nsp` were created or deleted locally: their bindings need a look.
    pub(crate) fn mark<'a>(&self, nsp: &str, rooms: impl IntoIterator<Item = &'a str>) {
        let mut marked = false;
        {
            let mut dirty = self.dirty.lock();
            for room in rooms {
                dirty.insert((nsp.to_string(), room.to_string()));
                marked = true;
            }
            if marked {
                self.requested.fetch_add(1, Ordering::SeqCst);
            }
        }
        if marked {
            self.changed.notify_one();
        }
    }

    /// Resolves after a [`mark`](Self::mark) (one since the last wait counts).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Takes the rooms to look at, with the generation they bring the broker up to.
    pub(crate) fn take_dirty(&self) -> (Vec<RoomRef>, u64) {
        let mut dirty = self.dirty.lock();
        let generation = self.requested.load(Ordering::SeqCst);
        (dirty.drain().collect(), generation)
    }

    /// A new session: what is dirty will be covered by the full sync that follows (of every
    /// room with members and every bound one). With `queue_kept`, the queue and its bindings
    /// outlived the last session; otherwise nothing is bound. Returns the generation that sync
    /// brings the broker up to.
    pub(crate) fn session_started(&self, queue_kept: bool) -> u64 {
        if !queue_kept {
            self.bound.lock().clear();
        }
        self.synced.send_replace(0);
        let mut dirty = self.dirty.lock();
        dirty.clear();
        self.requested.load(Ordering::SeqCst)
    }

    /// The session ended: nobody should wait for a broker that is not there. The queue keeps its
    /// bindings (see [`session_started`](Self::session_started)).
    pub(crate) fn session_ended(&self) {
        self.synced.send_replace(OFFLINE);
    }

    /// Every bound room.
    pub(crate) fn all_bound(&self) -> Vec<RoomRef> {
        self.bound.lock().iter().cloned().collect()
    }

    /// Keeps `rooms` of `nsp` bound for restore `id` although no socket holds them yet.
    pub(crate) fn pin(&self, id: u64, nsp: &str, rooms: Vec<String>) {
        self.pins.lock().insert(id, (nsp.to_string(), rooms));
    }

    /// Releases restore `id`'s rooms; returns them (their bindings need a look).
    pub(crate) fn unpin(&self, id: u64) -> Option<(String, Vec<String>)> {
        self.pins.lock().remove(&id)
    }

    /// Whether a restore under way pinned `room` of `nsp`.
    pub(crate) fn is_pinned(&self, nsp: &str, room: &str) -> bool {
        let pins = self.pins.lock();
        pins.values()
            .any(|(n, rooms)| n == nsp && rooms.iter().any(|r| r == room))
    }

    pub(crate) fn is_bound(&self, room: &RoomRef) -> bool {
        self.bound.lock().contains(room)
    }

    /// The broker applied `changes` (bind when true); everything up to `generation` is synced.
    pub(crate) fn applied(&self, changes: Vec<(RoomRef, bool)>, generation: u64) {
        {
            let mut bound = self.bound.lock();
            for (room, bind) in changes {
                if bind {
                    bound.insert(room);
                } else {
                    bound.remove(&room);
                }
            }
        }
        self.synced.send_if_modified(|synced| {
            let advance = *synced != OFFLINE && *synced < generation;
            if advance {
                *synced = generation;
            }
            advance
        });
    }

    /// Every bound room of `nsp` (the namespace is going away: they are to be unbound).
    pub(crate) fn bound_in(&self, nsp: &str) -> Vec<String> {
        let bound = self.bound.lock();
        bound
            .iter()
            .filter(|(n, _)| n == nsp)
            .map(|(_, room)| room.clone())
            .collect()
    }

    /// Resolves once every change marked before the call reached the broker, or at once when
    /// there is no session to wait for (the next session binds everything anyway).
    pub(crate) async fn settled(&self) {
        let target = self.requested.load(Ordering::SeqCst);
        let mut synced = self.synced.subscribe();
        let _ = synced
            .wait_for(|synced| *synced == OFFLINE || *synced >= target)
            .await;
    }

    /// A `socketsJoin` (this server's or another's) named `rooms` of `nsp`.
    pub(crate) fn joined_by_request(&self, nsp: &str, rooms: &[String], now: Instant) {
        let mut recent = self.recently_joined.lock();
        let per_nsp = recent.entry(nsp.to_string()).or_default();
        if per_nsp.len() > 1024 {
            per_nsp.retain(|_, at| now.saturating_duration_since(*at) < SOCKETS_JOIN_GRACE);
        }
        for room in rooms {
            per_nsp.insert(room.clone(), now);
        }
    }

    /// Whether a broadcast to `room` may go by room key: not while a recent `socketsJoin` to it
    /// may still be being bound somewhere.
    pub(crate) fn routable(&self, nsp: &str, room: &str, now: Instant) -> bool {
        let recent = self.recently_joined.lock();
        match recent.get(nsp).and_then(|rooms| rooms.get(room)) {
            Some(at) => now.saturating_duration_since(*at) >= SOCKETS_JOIN_GRACE,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(nsp: &str, name: &str) -> RoomRef {
        (nsp.to_string(), name.to_string())
    }

    #[tokio::test]
    async fn waiters_wait_for_their_generation_only_while_online() {
        let rooms = RoomBindings::default();
        rooms.mark("/", ["a"]);
        // Offline: nothing to wait for.
        tokio::time::timeout(Duration::from_millis(100), rooms.settled())
            .await
            .expect("offline waiters return at once");

        let start = rooms.session_started(false);
        assert_eq!(rooms.take_dirty().0, vec![], "the full sync covers it");
        rooms.mark("/", ["b"]);
        let waiter = rooms.settled();
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiter)
                .await
                .is_err(),
            "b is not bound yet"
        );
        rooms.applied(vec![(room("/", "a"), true)], start);
        let (dirty, generation) = rooms.take_dirty();
        assert_eq!(dirty, vec![room("/", "b")]);
        rooms.applied(vec![(room("/", "b"), true)], generation);
        tokio::time::timeout(Duration::from_millis(100), &mut waiter)
            .await
            .expect("b is bound");
        assert!(rooms.is_bound(&room("/", "a")));
        assert_eq!(rooms.bound_in("/").len(), 2);
        assert!(rooms.bound_in("/chat").is_empty());

        rooms.mark("/", ["c"]);
        let waiter = rooms.settled();
        rooms.session_ended();
        tokio::time::timeout(Duration::from_millis(100), waiter)
            .await
            .expect("a lost session releases waiters");
        assert!(
            rooms.is_bound(&room("/", "a")),
            "the queue keeps its bindings"
        );
        rooms.session_started(true);
        assert_eq!(rooms.all_bound().len(), 2, "the queue was still there");
        rooms.session_started(false);
        assert!(rooms.all_bound().is_empty(), "a new queue has no bindings");
    }

    #[test]
    fn rooms_named_by_sockets_join_go_by_namespace_for_a_while() {
        let rooms = RoomBindings::default();
        let now = Instant::now();
        assert!(rooms.routable("/", "r", now));
        rooms.joined_by_request("/", &["r".to_string()], now);
        assert!(!rooms.routable("/", "r", now + Duration::from_secs(1)));
        assert!(rooms.routable("/chat", "r", now), "per namespace");
        assert!(rooms.routable("/", "r", now + SOCKETS_JOIN_GRACE));
    }
}
