//! Publishes waiting to go out, shared by the threads that emit (the JS thread, the consumer) and the
//! connection task that sends them. Bounded: when it is full — the broker is away, or slower than
//! the emitters — the oldest publish is dropped, because the newest traffic matters most to live
//! clients. Pushing never blocks.

use crate::wire::Envelope;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::Notify;

pub(crate) struct Outbox {
    queue: Mutex<VecDeque<(String, Envelope)>>,
    ready: Notify,
    capacity: usize,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            queue: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a publish for `key`; returns true when the oldest one was dropped to make room.
    pub(crate) fn push(&self, key: String, envelope: Envelope) -> bool {
        let dropped = {
            let mut queue = self.queue.lock();
            let dropped = queue.len() >= self.capacity && queue.pop_front().is_some();
            queue.push_back((key, envelope));
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// Puts back a publish that could not be sent, to go first next time.
    pub(crate) fn push_front(&self, key: String, envelope: Envelope) {
        self.queue.lock().push_front((key, envelope));
    }

    pub(crate) fn pop(&self) -> Option<(String, Envelope)> {
        self.queue.lock().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Resolves after a push; a push since the last wait counts, so none is missed.
    pub(crate) async fn wait(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Message, PROTOCOL_VERSION};

    fn envelope(n: u32) -> Envelope {
        Envelope {
            v: PROTOCOL_VERSION,
            uid: n.to_string(),
            nsp: "/".into(),
            message: Message::Goodbye,
        }
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let outbox = Outbox::new(2);
        assert!(!outbox.push("k".into(), envelope(1)));
        assert!(!outbox.push("k".into(), envelope(2)));
        assert!(outbox.push("k".into(), envelope(3)));
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.pop().unwrap().1.uid, "2");
        outbox.push_front("k".into(), envelope(9));
        assert_eq!(outbox.pop().unwrap().1.uid, "9");
        assert_eq!(outbox.pop().unwrap().1.uid, "3");
        assert!(outbox.pop().is_none());
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_missed() {
        let outbox = Outbox::new(4);
        outbox.push("k".into(), envelope(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.wait())
            .await
            .expect("the earlier push wakes the waiter");
    }
}
