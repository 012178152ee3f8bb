//! Publishes waiting to go out, shared by the threads that emit (the JS thread, the consumer) and the
//! connection task that sends them. Bounded: when it is full — the broker is away, or slower than
//! the emitters — the oldest publish is dropped, because the newest traffic matters most to live
//! clients. Pushing never blocks. The outbox counts what it drops and says when a report is due
//! (at most once a second: drops come in floods during outages).

use crate::sequence::Stamper;
use crate::throttle::Throttle;
use crate::wire::{Envelope, Message};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The most messages one AMQP message carries (see [`Outbox::pop_batch`]).
pub(crate) const MAX_BATCH: usize = 256;

pub(crate) struct Outbox {
    queue: Mutex<VecDeque<(String, Envelope)>>,
    stamper: Mutex<Stamper>,
    ready: Notify,
    capacity: usize,
    dropped: AtomicU64,
    unreported_drops: AtomicU64,
    drop_reports: Throttle,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            queue: Mutex::default(),
            stamper: Mutex::default(),
            ready: Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            unreported_drops: AtomicU64::new(0),
            drop_reports: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Queues a publish for `key` and wakes the sender, dropping the oldest publish when full.
    /// Returns `Some(count)` when the drops since the last report should be reported now.
    pub(crate) fn push(&self, key: String, envelope: Envelope) -> Option<u64> {
        let report = self.push_quietly(key, envelope);
        self.wake();
        report
    }

    /// Like [`push`](Self::push), without waking the sender: the caller queues more and then calls
    /// [`wake`](Self::wake) once (the JS thread does so once per turn of its event loop: waking
    /// the sender's thread per publish costs more than the publish).
    pub(crate) fn push_quietly(&self, key: String, envelope: Envelope) -> Option<u64> {
        let dropped = {
            let mut queue = self.queue.lock();
            let dropped = queue.len() >= self.capacity && queue.pop_front().is_some();
            queue.push_back((key, envelope));
            dropped
        };
        if !dropped {
            return None;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.unreported_drops.fetch_add(1, Ordering::Relaxed);
        self.drop_reports
            .due()
            .then(|| self.unreported_drops.swap(0, Ordering::Relaxed))
    }

    /// Everything dropped so far: by a full outbox, or discarded because it could never be sent.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Empties the outbox (closed without a broker: nothing can be sent) and counts it as dropped.
    pub(crate) fn discard_all(&self) {
        let discarded = std::mem::take(&mut *self.queue.lock()).len() as u64;
        self.dropped.fetch_add(discarded, Ordering::Relaxed);
    }

    /// Puts back a publish that could not be sent, to go first next time.
    pub(crate) fn push_front(&self, key: String, envelope: Envelope) {
        self.queue.lock().push_front((key, envelope));
    }

    /// Pops the next publish together with the ones right behind it that go to the same routing
    /// key and namespace (up to `max`), as one envelope: a [`Message::Batch`] when there were
    /// several. Order is kept; under load this turns many small publishes into a few large ones.
    ///
    /// What it pops is numbered ([`stamp`](Self::stamp)), in pop order, which is publish order:
    /// only the connection task pops. A numbered envelope put back after a failed publish goes
    /// again as it was, alone, so a receiver that did get it the first time drops the copy.
    pub(crate) fn pop_batch(&self, max: usize) -> Option<(String, Envelope)> {
        let mut queue = self.queue.lock();
        let (key, mut first) = queue.pop_front()?;
        if first.seq.is_some() {
            return Some((key, first));
        }
        let mut batch = Vec::new();
        while batch.len() + 1 < max {
            match queue.front() {
                Some((next_key, next))
                    if *next_key == key && next.nsp == first.nsp && next.seq.is_none() =>
                {
                    let (_, next) = queue.pop_front().expect("front exists");
                    batch.push(next.message);
                }
                _ => break,
            }
        }
        if !batch.is_empty() {
            let head = std::mem::replace(&mut first.message, Message::Goodbye);
            batch.insert(0, head);
            first.message = Message::Batch(batch);
        }
        self.stamp(&key, &mut first);
        Some((key, first))
    }

    /// Pops the next publish if it was numbered already: one put back after a failed publish.
    pub(crate) fn pop_numbered(&self) -> Option<(String, Envelope)> {
        let mut queue = self.queue.lock();
        match queue.front() {
            Some((_, envelope)) if envelope.seq.is_some() => queue.pop_front(),
            _ => None,
        }
    }

    /// Numbers an envelope about to be published to `key` (see `sequence.rs`). The connection
    /// task calls it for what it publishes around the outbox (announcements, goodbye), in the
    /// order it publishes.
    pub(crate) fn stamp(&self, key: &str, envelope: &mut Envelope) {
        let (seq, key_seq) = self.stamper.lock().next(key);
        envelope.seq = Some(seq);
        envelope.key_seq = key_seq;
    }

    /// Stops numbering messages to `key` (a departed server's reply key).
    pub(crate) fn forget_stream(&self, key: &str) {
        self.stamper.lock().forget(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Wakes the sender for what was queued.
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Resolves after a wake; a wake since the last wait counts, so none is missed.
    pub(crate) async fn wait(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(n: u32) -> Envelope {
        Envelope::new(&n.to_string(), "/", Message::Goodbye)
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push("k".into(), envelope(1)), None);
        assert_eq!(outbox.push("k".into(), envelope(2)), None);
        assert_eq!(
            outbox.push("k".into(), envelope(3)),
            Some(1),
            "the first drop is reported"
        );
        assert_eq!(
            outbox.push("k".into(), envelope(4)),
            None,
            "the next one waits a second"
        );
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.pop_batch(1).unwrap().1.uid, "3");
        outbox.push_front("k".into(), envelope(9));
        assert_eq!(outbox.pop_batch(1).unwrap().1.uid, "9");
        outbox.discard_all();
        assert_eq!(outbox.dropped(), 3);
        assert!(outbox.pop_batch(1).is_none());
    }

    #[test]
    fn batches_consecutive_publishes_of_one_key_and_namespace() {
        let outbox = Outbox::new(16);
        let mut other_nsp = envelope(3);
        other_nsp.nsp = "/chat".into();
        for (key, env) in [
            ("a", envelope(1)),
            ("a", envelope(2)),
            ("a", other_nsp),
            ("b", envelope(4)),
            ("b", envelope(5)),
            ("b", envelope(6)),
        ] {
            outbox.push(key.into(), env);
        }
        let (key, first) = outbox.pop_batch(8).unwrap();
        assert_eq!(key, "a");
        assert!(matches!(&first.message, Message::Batch(inner) if inner.len() == 2));
        let (_, single) = outbox.pop_batch(8).unwrap();
        assert_eq!(single.nsp, "/chat");
        assert!(
            matches!(single.message, Message::Goodbye),
            "one message stays unwrapped"
        );
        let (key, capped) = outbox.pop_batch(2).unwrap();
        assert_eq!(key, "b");
        assert!(matches!(&capped.message, Message::Batch(inner) if inner.len() == 2));
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn popped_envelopes_are_numbered_and_a_numbered_one_goes_again_alone() {
        let outbox = Outbox::new(16);
        for n in 1..=3 {
            outbox.push("nsp:/".into(), envelope(n));
        }
        let (key, batch) = outbox.pop_batch(2).unwrap();
        assert_eq!((batch.seq, batch.key_seq), (Some(1), Some(1)));
        // The publish failed: it goes back first, and must not swallow what follows.
        outbox.push_front(key, batch.clone());
        outbox.push("nsp:/".into(), envelope(4));
        let (_, again) = outbox.pop_batch(8).unwrap();
        assert_eq!(again, batch, "sent again exactly as before");
        let (_, rest) = outbox.pop_batch(8).unwrap();
        assert!(matches!(&rest.message, Message::Batch(inner) if inner.len() == 2));
        assert_eq!((rest.seq, rest.key_seq), (Some(2), Some(2)));
        let mut goodbye = envelope(9);
        outbox.stamp("cluster", &mut goodbye);
        assert_eq!((goodbye.seq, goodbye.key_seq), (Some(3), None));
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
