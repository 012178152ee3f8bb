//! Who else is in the cluster, and which namespaces each serves.
//!
//! Peers are learnt only from `Hello`/`Heartbeat` messages (an emitter that merely publishes is never
//! counted); any message from a known peer proves it alive. A peer that says `Goodbye` or stays
//! silent past the heartbeat timeout is forgotten. Server counts are per namespace, because only
//! servers that serve a namespace receive (and answer) its requests.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

struct Peer {
    last_seen: Instant,
    namespaces: HashSet<String>,
    /// The peer binds its rooms' keys (room routing), so it may be sent single-room broadcasts
    /// by room key.
    room_routing: bool,
}

#[derive(Default)]
pub struct Peers {
    peers: HashMap<String, Peer>,
}

impl Peers {
    /// Records a heartbeat: the peer is alive, serves exactly `namespaces`, and binds its rooms
    /// or not. Returns the namespaces it did not serve before (all of them for a new peer).
    pub fn update(
        &mut self,
        uid: &str,
        namespaces: Vec<String>,
        room_routing: bool,
        now: Instant,
    ) -> Vec<String> {
        let namespaces: HashSet<String> = namespaces.into_iter().collect();
        let before = self.peers.get(uid).map(|peer| &peer.namespaces);
        let added = namespaces
            .iter()
            .filter(|nsp| before.is_none_or(|known| !known.contains(*nsp)))
            .cloned()
            .collect();
        let peer = Peer {
            last_seen: now,
            namespaces,
            room_routing,
        };
        self.peers.insert(uid.to_string(), peer);
        added
    }

    /// Any other message from a known peer keeps it alive.
    pub fn touch(&mut self, uid: &str, now: Instant) {
        if let Some(peer) = self.peers.get_mut(uid) {
            peer.last_seen = now;
        }
    }

    pub fn remove(&mut self, uid: &str) -> bool {
        self.peers.remove(uid).is_some()
    }

    /// Forgets every peer (the connection is gone: none can be reached); returns their uids.
    pub fn clear(&mut self) -> Vec<String> {
        self.peers.drain().map(|(uid, _)| uid).collect()
    }

    /// Forgets peers silent for longer than `timeout`; returns their uids.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.saturating_duration_since(peer.last_seen) > timeout)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &dead {
            self.peers.remove(uid);
        }
        dead
    }

    /// The peers that serve `nsp` (and so will answer its requests).
    pub fn serving(&self, nsp: &str) -> HashSet<String> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.namespaces.contains(nsp))
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Whether every peer serving `nsp` binds its rooms: only then may a single-room broadcast
    /// go by room key without some server missing it.
    pub fn all_route_rooms(&self, nsp: &str) -> bool {
        self.peers
            .values()
            .all(|peer| peer.room_routing || !peer.namespaces.contains(nsp))
    }

    pub fn serving_count(&self, nsp: &str) -> usize {
        self.peers
            .values()
            .filter(|peer| peer.namespaces.contains(nsp))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_peers_per_namespace() {
        let now = Instant::now();
        let mut peers = Peers::default();
        let mut added = peers.update("a", names(&["/", "/chat"]), false, now);
        added.sort();
        assert_eq!(
            added,
            names(&["/", "/chat"]),
            "a new peer serves all it lists"
        );
        peers.update("b", names(&["/"]), false, now);
        assert_eq!(
            peers.update("b", names(&["/", "/x"]), false, now),
            names(&["/x"])
        );
        peers.update("b", names(&["/"]), false, now);
        assert_eq!(peers.serving_count("/"), 2);
        assert_eq!(peers.serving_count("/chat"), 1);
        assert_eq!(peers.serving_count("/none"), 0);
        peers.update("a", names(&["/"]), false, now);
        assert_eq!(
            peers.serving_count("/chat"),
            0,
            "a heartbeat replaces the list"
        );
        assert_eq!(
            peers.serving("/"),
            ["a", "b"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn room_routing_needs_every_peer_of_the_namespace() {
        let now = Instant::now();
        let mut peers = Peers::default();
        assert!(peers.all_route_rooms("/"), "alone: nobody to miss it");
        peers.update("a", names(&["/"]), true, now);
        peers.update("b", names(&["/chat"]), false, now);
        assert!(peers.all_route_rooms("/"), "b does not serve /");
        assert!(!peers.all_route_rooms("/chat"));
        peers.update("b", names(&["/chat"]), true, now);
        assert!(peers.all_route_rooms("/chat"));
    }

    #[test]
    fn silent_peers_expire_and_touched_ones_stay() {
        let start = Instant::now();
        let mut peers = Peers::default();
        peers.update("quiet", names(&["/"]), false, start);
        peers.update("chatty", names(&["/"]), false, start);
        peers.touch("chatty", start + Duration::from_secs(8));
        peers.touch("stranger", start + Duration::from_secs(8));
        let dead = peers.expire(start + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(dead, vec!["quiet".to_string()]);
        assert_eq!(peers.serving_count("/"), 1);
        assert!(peers.remove("chatty"));
        assert!(!peers.remove("chatty"));
        assert_eq!(peers.serving_count("/"), 0);
    }
}
