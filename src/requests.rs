//! Requests this server waits on (fetchSockets, serverSideEmit with ack, broadcasts with ack).
//!
//! A request either waits for one reply from each of a known set of servers, or is open-ended
//! (ack broadcasts: Socket.IO itself counts the replies) and simply lives until its timeout.
//! Replies to unknown or finished requests are dropped here, so late answers never reach the event
//! loop.
//!
//! A request never passes a partial answer off as complete: a server it waited on that leaves
//! before answering, and a server that starts serving the namespace while it waits and does not
//! answer, are recorded, and the request ends [`Outcome::Incomplete`] naming them.

use std::collections::{HashMap, HashSet};

/// Why a server stopped being waited on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It said goodbye (closed).
    Closed,
    /// No heartbeat within the heartbeat timeout.
    Silent,
    /// This server lost the broker connection: nobody can answer.
    Disconnected,
}

impl Departure {
    fn describe(self) -> &'static str {
        match self {
            Departure::Closed => "closed before answering",
            Departure::Silent => "stopped sending heartbeats before answering",
            Departure::Disconnected => "could not answer: this server lost the broker connection",
        }
    }
}

enum Awaiting {
    Servers {
        nsp: String,
        asked: usize,
        answered: usize,
        waiting: HashSet<String>,
        left: Vec<(String, Departure)>,
        /// Started serving the namespace while the request waited; may or may not have got it.
        joined: HashSet<String>,
    },
    OpenEnded,
}

/// How a request that waited on servers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every server that served the namespace answered.
    Complete,
    /// Some servers' answers are missing; `reason` says which and why.
    Incomplete { answered: usize, reason: String },
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
    /// Pass it on; with `done`, the request has now got every reply it waited for.
    Accepted { done: Option<Outcome> },
}

impl Requests {
    /// Opens a request to namespace `nsp` waiting for one reply from each of `servers`.
    pub fn open(&mut self, nsp: &str, servers: HashSet<String>) -> u32 {
        self.insert(Awaiting::Servers {
            nsp: nsp.to_string(),
            asked: servers.len(),
            answered: 0,
            waiting: servers,
            left: Vec::new(),
            joined: HashSet::new(),
        })
    }

    /// Opens a request whose replies are counted by the caller; it ends at its timeout.
    pub fn open_ended(&mut self) -> u32 {
        self.insert(Awaiting::OpenEnded)
    }

    pub fn is_pending(&self, id: u32) -> bool {
        self.pending.contains_key(&id)
    }

    /// A server's reply to request `id`: one per server for a server-set request (from a server
    /// asked, or one that joined the namespace meanwhile and got it), any number for an
    /// open-ended one.
    pub fn on_reply(&mut self, id: u32, from: &str) -> Reply {
        let Some(awaiting) = self.pending.get_mut(&id) else {
            return Reply::Unexpected;
        };
        let Awaiting::Servers {
            waiting,
            joined,
            answered,
            ..
        } = awaiting
        else {
            return Reply::Accepted { done: None };
        };
        if !waiting.remove(from) && !joined.remove(from) {
            return Reply::Unexpected;
        }
        *answered += 1;
        let done = self.finish_if_done(id);
        Reply::Accepted { done }
    }

    /// The request's time is up. When it was still pending, returns how many servers had answered
    /// (0 for an open-ended request).
    pub fn expire(&mut self, id: u32) -> Option<usize> {
        match self.pending.remove(&id)? {
            Awaiting::Servers { answered, .. } => Some(answered),
            Awaiting::OpenEnded => Some(0),
        }
    }

    /// A server left: stop waiting for it. Returns the requests that ended because of it.
    pub fn forget_server(&mut self, uid: &str, why: Departure) -> Vec<(u32, Outcome)> {
        let mut touched = Vec::new();
        for (id, awaiting) in &mut self.pending {
            if let Awaiting::Servers {
                waiting,
                joined,
                left,
                ..
            } = awaiting
            {
                if waiting.remove(uid) || joined.remove(uid) {
                    left.push((uid.to_string(), why));
                    touched.push(*id);
                }
            }
        }
        touched
            .into_iter()
            .filter_map(|id| self.finish_if_done(id).map(|outcome| (id, outcome)))
            .collect()
    }

    /// `uid` started serving `nsp`: requests to `nsp` that did not ask it now expect its answer
    /// too, or at least say that it might be missing.
    pub fn server_joined(&mut self, nsp: &str, uid: &str) {
        for awaiting in self.pending.values_mut() {
            if let Awaiting::Servers {
                nsp: of,
                waiting,
                joined,
                ..
            } = awaiting
            {
                if of == nsp && !waiting.contains(uid) {
                    joined.insert(uid.to_string());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Ends request `id` once no server it asked is still to answer.
    fn finish_if_done(&mut self, id: u32) -> Option<Outcome> {
        match self.pending.get(&id)? {
            Awaiting::Servers { waiting, .. } if waiting.is_empty() => {}
            _ => return None,
        }
        let Some(Awaiting::Servers {
            nsp,
            asked,
            answered,
            left,
            joined,
            ..
        }) = self.pending.remove(&id)
        else {
            return None;
        };
        if left.is_empty() && joined.is_empty() {
            return Some(Outcome::Complete);
        }
        let mut why: Vec<String> = left
            .iter()
            .map(|(uid, departure)| format!("server {uid} {}", departure.describe()))
            .collect();
        let mut newcomers: Vec<&String> = joined.iter().collect();
        newcomers.sort();
        why.extend(newcomers.into_iter().map(|uid| {
            format!("server {uid} started serving {nsp} during the request and did not answer")
        }));
        let expected = asked + joined.len();
        Some(Outcome::Incomplete {
            answered,
            reason: format!(
                "{} ({answered} of {expected} servers answered)",
                why.join("; ")
            ),
        })
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

    const DONE: Reply = Reply::Accepted {
        done: Some(Outcome::Complete),
    };
    const MORE: Reply = Reply::Accepted { done: None };

    #[test]
    fn completes_when_every_server_replied_once() {
        let mut requests = Requests::default();
        let id = requests.open("/", servers(&["a", "b"]));
        assert_eq!(requests.on_reply(id, "a"), MORE);
        assert_eq!(requests.on_reply(id, "a"), Reply::Unexpected, "a duplicate");
        assert_eq!(requests.on_reply(id, "x"), Reply::Unexpected, "not asked");
        assert_eq!(requests.on_reply(id, "b"), DONE);
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
        let id = requests.open("/", servers(&["a", "b", "c"]));
        requests.on_reply(id, "b");
        assert_eq!(requests.expire(id), Some(1));
        assert!(!requests.is_pending(id));
    }

    #[test]
    fn a_server_leaving_before_answering_makes_the_answer_incomplete() {
        let mut requests = Requests::default();
        let only_b = requests.open("/", servers(&["b"]));
        let a_and_b = requests.open("/", servers(&["a", "b"]));
        let ended = requests.forget_server("b", Departure::Closed);
        assert_eq!(ended.len(), 1);
        let (id, Outcome::Incomplete { answered, reason }) = &ended[0] else {
            panic!("expected an incomplete outcome: {ended:?}");
        };
        assert_eq!((*id, *answered), (only_b, 0));
        assert_eq!(
            reason,
            "server b closed before answering (0 of 1 servers answered)"
        );
        assert!(requests.is_pending(a_and_b));
        assert_eq!(
            requests.on_reply(a_and_b, "a"),
            Reply::Accepted {
                done: Some(Outcome::Incomplete {
                    answered: 1,
                    reason: "server b closed before answering (1 of 2 servers answered)".into()
                })
            }
        );
        assert!(
            requests.forget_server("a", Departure::Silent).is_empty(),
            "already answered"
        );
    }

    #[test]
    fn a_server_that_answered_may_leave() {
        let mut requests = Requests::default();
        let id = requests.open("/", servers(&["a", "b"]));
        assert_eq!(requests.on_reply(id, "a"), MORE);
        assert!(requests.forget_server("a", Departure::Silent).is_empty());
        assert_eq!(requests.on_reply(id, "b"), DONE);
    }

    #[test]
    fn a_server_joining_the_namespace_is_waited_for_or_named() {
        let mut requests = Requests::default();
        let answered_by_newcomer = requests.open("/", servers(&["a"]));
        let not_answered = requests.open("/", servers(&["a"]));
        let other_nsp = requests.open("/chat", servers(&["a"]));
        requests.server_joined("/", "n");
        assert_eq!(
            requests.on_reply(answered_by_newcomer, "n"),
            MORE,
            "it got the request"
        );
        assert_eq!(requests.on_reply(answered_by_newcomer, "a"), DONE);
        assert_eq!(
            requests.on_reply(not_answered, "a"),
            Reply::Accepted {
                done: Some(Outcome::Incomplete {
                    answered: 1,
                    reason: "server n started serving / during the request and did not answer \
                         (1 of 2 servers answered)"
                        .into()
                })
            }
        );
        assert_eq!(requests.on_reply(other_nsp, "a"), DONE);
        let id = requests.open("/", servers(&["a"]));
        requests.server_joined("/", "a");
        assert_eq!(
            requests.on_reply(id, "a"),
            DONE,
            "already asked: not a newcomer"
        );
    }

    #[test]
    fn open_ended_requests_take_replies_until_they_expire() {
        let mut requests = Requests::default();
        let id = requests.open_ended();
        for _ in 0..3 {
            assert_eq!(requests.on_reply(id, "a"), MORE);
        }
        assert!(requests.forget_server("a", Departure::Closed).is_empty());
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
