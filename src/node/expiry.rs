//! Request expiry: one timer task per node ends the requests whose time is up. Opening a request
//! wakes that task only when its deadline comes before the one the task sleeps until, which with
//! one timeout for all requests is almost never: the task sleeps until the earliest deadline of a
//! request still open, and learns about later ones when it wakes. (A task spawned per request woke
//! the runtime thread from the JS thread inside every `serverSideEmit`/`fetchSockets` call: about
//! 55 µs of that call's wall time on the 2-core benchmark machine, the woken thread competing with
//! the JS thread on the request's critical path.)

use super::inbox::{Drained, Inbound};
use super::Node;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The deadlines of open requests, shared by the node (which adds them) and its timer task.
#[derive(Default)]
pub(crate) struct Deadlines {
    inner: Mutex<Armed>,
    /// Rung when a deadline comes before the armed one, or on close.
    earlier: Notify,
    closed: AtomicBool,
}

#[derive(Default)]
struct Armed {
    /// (deadline, request id), earliest first; a request that ended meanwhile stays until the
    /// timer task next looks.
    pending: BTreeSet<(Instant, u32)>,
    /// What the timer task sleeps until; `None`: until it is told.
    until: Option<Instant>,
}

impl Deadlines {
    /// Request `id` ends at `at` unless it completes first.
    pub(crate) fn add(&self, id: u32, at: Instant) {
        let mut armed = self.inner.lock();
        armed.pending.insert((at, id));
        if armed.until.is_none_or(|until| at < until) {
            armed.until = Some(at);
            drop(armed);
            self.earlier.notify_one();
        }
    }

    /// Stops the timer task.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.earlier.notify_one();
    }

    /// Forgets the deadlines of requests no longer `open` and arms the earliest left.
    fn arm(&self, open: impl Fn(u32) -> bool) -> Option<Instant> {
        let mut armed = self.inner.lock();
        while let Some(&(_, id)) = armed.pending.first() {
            if open(id) {
                break;
            }
            armed.pending.pop_first();
        }
        armed.until = armed.pending.first().map(|&(at, _)| at);
        armed.until
    }

    /// Takes the requests whose deadline is `now` or before.
    fn due(&self, now: Instant) -> Vec<u32> {
        let mut armed = self.inner.lock();
        let mut due = Vec::new();
        while let Some(&(at, id)) = armed.pending.first() {
            if at > now {
                break;
            }
            armed.pending.pop_first();
            due.push(id);
        }
        due
    }

    async fn wait(&self, until: Option<Instant>) {
        match until {
            None => self.earlier.notified().await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.earlier.notified() => {}
                }
            }
        }
    }
}

impl Node {
    /// The timer task, until the node closes or is gone; holds no strong reference in between.
    pub(super) async fn expire_requests(node: Weak<Node>, deadlines: Arc<Deadlines>) {
        while !deadlines.closed.load(Ordering::SeqCst) {
            let until = {
                let Some(node) = node.upgrade() else { return };
                for id in deadlines.due(Instant::now()) {
                    node.expire(id);
                }
                deadlines.arm(|id| node.requests.lock().is_pending(id))
            };
            deadlines.wait(until).await;
        }
    }

    /// Request `id`'s time is up: if it is still open, it ends with the replies it got.
    fn expire(&self, id: u32) {
        let answered = self.requests.lock().expire(id);
        if let Some(answered) = answered {
            self.push(Inbound::Ready(Drained::RequestDone {
                request_id: id,
                timed_out: true,
                answered: answered as u32,
                incomplete: None,
            }));
        }
    }
}
