//! Requests this server waits on (fetchSockets, serverSideEmit with ack, broadcasts with ack).
//!
//! A request either waits for one reply from each of a known set of servers (complete when the set
//! is empty: every server answered or left), or is open-ended (ack broadcasts: Socket.IO itself
//! counts the replies) and simply lives until its timeout. Replies to unknown or finished requests
//! are dropped here, so late answers never reach the event loop.

use std::collections::{HashMap, HashSet};

enum Awaiting {
    Servers {
        asked: usize,
        waiting: HashSet<String>,
    },
    OpenEnded,
}

#[derive(Default)]
pub struct Requests {
    next_id: u32,
    pending: HashMap<u32, Awaiting>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Not ours, finished, or from a server not asked: drop it.
    Unexpected,
    /// Pass it on; `complete` says the request has now got every reply it waited for.
    Accepted { complete: bool },
}

impl Requests {
    /// Opens a request waiting for one reply from each of `servers`.
    pub fn open(&mut self, servers: HashSet<String>) -> u32 {
        self.insert(Awaiting::Servers {
            asked: servers.len(),
            waiting: servers,
        })
    }

    /// Opens a request whose replies are counted by the caller; it ends at its timeout.
    pub fn open_ended(&mut self) -> u32 {
        self.insert(Awaiting::OpenEnded)
    }

    pub fn is_pending(&self, id: u32) -> bool {
        self.pending.contains_key(&id)
    }

    /// A server's reply to request `id`: one per server for a server-set request, any number for
    /// an open-ended one.
    pub fn on_reply(&mut self, id: u32, from: &str) -> Reply {
        match self.pending.get_mut(&id) {
            None => Reply::Unexpected,
            Some(Awaiting::OpenEnded) => Reply::Accepted { complete: false },
            Some(Awaiting::Servers { waiting, .. }) => {
                if !waiting.remove(from) {
                    return Reply::Unexpected;
                }
                let complete = waiting.is_empty();
                if complete {
                    self.pending.remove(&id);
                }
                Reply::Accepted { complete }
            }
        }
    }

    /// The request's time is up. When it was still pending, returns how many servers had answered
    /// (0 for an open-ended request).
    pub fn expire(&mut self, id: u32) -> Option<usize> {
        match self.pending.remove(&id)? {
            Awaiting::Servers { asked, waiting } => Some(asked - waiting.len()),
            Awaiting::OpenEnded => Some(0),
        }
    }

    /// A server left: stop waiting for it. Returns the requests that are complete because of it.
    pub fn forget_server(&mut self, uid: &str) -> Vec<u32> {
        let mut complete = Vec::new();
        for (id, awaiting) in &mut self.pending {
            if let Awaiting::Servers { waiting, .. } = awaiting {
                if waiting.remove(uid) && waiting.is_empty() {
                    complete.push(*id);
                }
            }
        }
        for id in &complete {
            self.pending.remove(id);
        }
        complete
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn insert(&mut self, awaiting: Awaiting) -> u32 {
        // Ids wrap after 2^32 requests; by then the old holder of an id has long timed out.
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if !self.pending.contains_key(&self.next_id) {
                break;
            }
        }
        self.pending.insert(self.next_id, awaiting);
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn completes_when_every_server_replied_once() {
        let mut requests = Requests::default();
        let id = requests.open(servers(&["a", "b"]));
        assert_eq!(
            requests.on_reply(id, "a"),
            Reply::Accepted { complete: false }
        );
        assert_eq!(requests.on_reply(id, "a"), Reply::Unexpected, "a duplicate");
        assert_eq!(
            requests.on_reply(id, "x"),
            Reply::Unexpected,
            "a server not asked"
        );
        assert_eq!(
            requests.on_reply(id, "b"),
            Reply::Accepted { complete: true }
        );
        assert!(requests.is_empty());
        assert_eq!(
            requests.on_reply(id, "b"),
            Reply::Unexpected,
            "a late reply"
        );
    }

    #[test]
    fn expiry_reports_how_many_servers_answered() {
        let mut requests = Requests::default();
        let id = requests.open(servers(&["a", "b", "c"]));
        requests.on_reply(id, "b");
        assert_eq!(requests.expire(id), Some(1));
        assert!(!requests.is_pending(id));
    }

    #[test]
    fn a_departed_server_completes_what_waited_only_on_it() {
        let mut requests = Requests::default();
        let only_b = requests.open(servers(&["b"]));
        let a_and_b = requests.open(servers(&["a", "b"]));
        assert_eq!(requests.forget_server("b"), vec![only_b]);
        assert!(requests.is_pending(a_and_b));
        assert_eq!(requests.forget_server("a"), vec![a_and_b]);
    }

    #[test]
    fn open_ended_requests_take_replies_until_they_expire() {
        let mut requests = Requests::default();
        let id = requests.open_ended();
        for _ in 0..3 {
            assert_eq!(
                requests.on_reply(id, "a"),
                Reply::Accepted { complete: false }
            );
        }
        assert!(requests.forget_server("a").is_empty());
        assert_eq!(requests.expire(id), Some(0));
        assert_eq!(requests.expire(id), None);
        assert_eq!(requests.on_reply(id, "a"), Reply::Unexpected);
    }

    #[test]
    fn ids_are_unique_among_pending_requests() {
        let mut requests = Requests::default();
        let a = requests.open_ended();
        let b = requests.open_ended();
        assert_ne!(a, b);
        assert_eq!(requests.len(), 2);
    }
}
