//! Per-sender sequence numbers: how a receiver drops what it has already handled and notices what
//! it never got.
//!
//! A server's queue outlives a lost connection, so after a reconnect the broker redelivers what
//! was delivered but not yet acknowledged. Every AMQP message a node or emitter publishes carries
//! `seq`, counting up from 1 for the sender's lifetime (across its reconnects); one channel keeps a
//! sender's messages in order in every queue, so a receiver drops any `seq` it has seen.
//!
//! Gaps cannot be read from `seq`: a queue receives only the keys it binds. So messages to keys
//! that a receiver keeps bound for as long as it serves them — namespace keys and server keys —
//! also carry `key_seq`, counting the sender's messages to that key. A jump in `key_seq` is a
//! message the receiver should have had and did not (its queue was lost in a broker restart or
//! expired, or the sender's connection died with it on the wire). Room keys and the cluster key
//! carry no `key_seq`: rooms are bound and unbound as members come and go, so a jump there would
//! say nothing, and announcements are repeated anyway.

use crate::transport::is_gap_checked_key;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The sender's side: numbers messages in the order they are published.
#[derive(Default)]
pub(crate) struct Stamper {
    last_seq: u64,
    last_key_seq: HashMap<String, u64>,
}

impl Stamper {
    /// The `(seq, key_seq)` of the next message, published to `key`.
    pub(crate) fn next(&mut self, key: &str) -> (u64, Option<u64>) {
        self.last_seq += 1;
        // Per publish: the key is copied only the first time it is numbered.
        let key_seq = is_gap_checked_key(key).then(|| match self.last_key_seq.get_mut(key) {
            Some(counter) => {
                *counter += 1;
                *counter
            }
            None => {
                self.last_key_seq.insert(key.to_string(), 1);
                1
            }
        });
        (self.last_seq, key_seq)
    }

    /// Stops numbering `key` (a departed server's reply key): the counter map stays bounded. If
    /// the key is used again its count starts over, which receivers take as a fresh start.
    pub(crate) fn forget(&mut self, key: &str) {
        self.last_key_seq.remove(key);
    }
}

/// What a receiver makes of one incoming message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Seen before (a redelivery after a reconnect): drop it.
    Duplicate,
    /// New; `missed` messages of this sender to this key never arrived before it.
    Fresh { missed: u64 },
}

struct Sender {
    highest_seq: u64,
    key_seq: HashMap<String, u64>,
    last_heard: Instant,
}

/// The receiver's side: what it has seen of each sender.
#[derive(Default)]
pub(crate) struct Tracker {
    senders: HashMap<String, Sender>,
}

impl Tracker {
    /// A message from `from`, delivered through `key`. Messages without `seq` (older versions) are
    /// always fresh and never counted.
    pub(crate) fn observe(
        &mut self,
        from: &str,
        key: &str,
        seq: Option<u64>,
        key_seq: Option<u64>,
        now: Instant,
    ) -> Verdict {
        let Some(seq) = seq else {
            return Verdict::Fresh { missed: 0 };
        };
        // Per message: the sender's uid and the key are copied only when first seen.
        if !self.senders.contains_key(from) {
            let sender = Sender {
                highest_seq: 0,
                key_seq: HashMap::new(),
                last_heard: now,
            };
            self.senders.insert(from.to_string(), sender);
        }
        let sender = self.senders.get_mut(from).expect("inserted above");
        sender.last_heard = now;
        if seq <= sender.highest_seq {
            return Verdict::Duplicate;
        }
        sender.highest_seq = seq;
        let Some(key_seq) = key_seq else {
            return Verdict::Fresh { missed: 0 };
        };
        let Some(last) = sender.key_seq.get_mut(key) else {
            sender.key_seq.insert(key.to_string(), key_seq);
            return Verdict::Fresh { missed: 0 };
        };
        // A count that went back is a fresh start (the sender forgot the key): no gap.
        let missed = key_seq.saturating_sub(*last + 1);
        *last = key_seq;
        Verdict::Fresh { missed }
    }

    /// `key` was unbound: what arrives on it after a later bind starts a new count.
    pub(crate) fn forget_key(&mut self, key: &str) {
        for sender in self.senders.values_mut() {
            sender.key_seq.remove(key);
        }
    }

    /// Forgets senders not heard from for `idle` (emitters that came and went, long-gone servers).
    pub(crate) fn expire(&mut self, now: Instant, idle: Duration) {
        self.senders
            .retain(|_, sender| now.saturating_duration_since(sender.last_heard) <= idle);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NSP: &str = "nsp:/";
    const ROOM: &str = "room:1:/:r";

    #[test]
    fn the_stamper_counts_every_message_and_each_checked_key() {
        let mut stamper = Stamper::default();
        assert_eq!(stamper.next(NSP), (1, Some(1)));
        assert_eq!(stamper.next("cluster"), (2, None));
        assert_eq!(stamper.next(ROOM), (3, None));
        assert_eq!(stamper.next("srv:b"), (4, Some(1)));
        assert_eq!(stamper.next(NSP), (5, Some(2)));
        stamper.forget("srv:b");
        assert_eq!(stamper.next("srv:b"), (6, Some(1)));
    }

    #[test]
    fn redeliveries_are_duplicates() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        let fresh = Verdict::Fresh { missed: 0 };
        assert_eq!(tracker.observe("a", NSP, Some(1), Some(1), now), fresh);
        assert_eq!(tracker.observe("a", NSP, Some(2), Some(2), now), fresh);
        assert_eq!(
            tracker.observe("a", NSP, Some(1), Some(1), now),
            Verdict::Duplicate
        );
        assert_eq!(
            tracker.observe("a", NSP, Some(2), Some(2), now),
            Verdict::Duplicate
        );
        assert_eq!(
            tracker.observe("b", NSP, Some(1), Some(1), now),
            fresh,
            "another sender"
        );
        assert_eq!(
            tracker.observe("a", NSP, None, None, now),
            fresh,
            "an older version"
        );
    }

    #[test]
    fn a_jump_on_a_checked_key_counts_what_was_missed() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.observe("a", NSP, Some(1), Some(1), now);
        // Messages 2..4 went to keys this queue does not bind: not missed.
        assert_eq!(
            tracker.observe("a", NSP, Some(5), Some(2), now),
            Verdict::Fresh { missed: 0 }
        );
        assert_eq!(
            tracker.observe("a", NSP, Some(9), Some(5), now),
            Verdict::Fresh { missed: 2 }
        );
        assert_eq!(
            tracker.observe("a", "srv:me", Some(10), Some(7), now),
            Verdict::Fresh { missed: 0 },
            "the first message on a key sets the count"
        );
        assert_eq!(
            tracker.observe("a", NSP, Some(11), Some(1), now),
            Verdict::Fresh { missed: 0 },
            "a count that starts over is not a gap"
        );
        tracker.forget_key(NSP);
        assert_eq!(
            tracker.observe("a", NSP, Some(12), Some(40), now),
            Verdict::Fresh { missed: 0 },
            "after an unbind the count starts anew"
        );
    }

    #[test]
    fn idle_senders_are_forgotten() {
        let start = Instant::now();
        let mut tracker = Tracker::default();
        tracker.observe("old", NSP, Some(1), Some(1), start);
        tracker.observe(
            "new",
            NSP,
            Some(1),
            Some(1),
            start + Duration::from_secs(50),
        );
        tracker.expire(start + Duration::from_secs(61), Duration::from_secs(60));
        assert_eq!(tracker.len(), 1);
        assert_eq!(
            tracker.observe("old", NSP, Some(1), Some(1), start),
            Verdict::Fresh { missed: 0 },
            "forgotten: starts over"
        );
    }
}
