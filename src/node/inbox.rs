//! The inbox: work waiting for the host (the JS adapter), the twin of the outbox. The consumer
//! pushes; the host takes everything at once with `drain`, woken at most once per batch; targets
//! are resolved against the room index only then, so they match it as it is when written.
//! While the consumer handles one delivery it holds the wake-up back (`hold_wakes`): a host that
//! drains on another core as soon as it is woken would otherwise take the delivery's first item
//! alone and be woken again for the next (a request's last reply and its end were two wake-ups of
//! the JS thread on every request's critical path; a batch could be one per packet). Only for
//! one delivery: across deliveries the host drains while the consumer goes on (pipelining).
//! Bounded: past `capacity` the consumer waits (and stops acknowledging, so the broker's prefetch
//! stops deliveries): backpressure instead of memory growth.

use super::Namespace;
use crate::room_index::Slot;
use crate::wire::{AckRequest, Message, PacketPart, Target, WriteFlags};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// A room membership change the host reports as `join-room`/`leave-room` events, with the
/// [`crate::room_index`] bits (`ROOM_CREATED | SOCKET_JOINED` or `SOCKET_LEFT | ROOM_DELETED`).
#[derive(Debug, PartialEq, Eq)]
pub struct RoomChange {
    pub room: String,
    pub socket_id: String,
    pub change: u8,
}

/// Work handed to the host by [`Node::drain`], in arrival order.
#[derive(Debug)]
pub enum Drained {
    /// Write `packet` to the local sockets in `slots`. With `ack`, the host assigns the packet an
    /// id, reports the client count and forwards each client's reply to `from`.
    Broadcast {
        nsp: String,
        slots: Vec<Slot>,
        flags: WriteFlags,
        packet: Vec<PacketPart>,
        ack: Option<(String, AckRequest)>,
    },
    /// Remote `socketsJoin`/`socketsLeave`, already applied to the index: emit the events.
    RoomsChanged {
        nsp: String,
        joined: bool,
        changes: Vec<RoomChange>,
    },
    DisconnectSockets {
        nsp: String,
        slots: Vec<Slot>,
        close: bool,
    },
    /// Describe the sockets in `slots` and answer `from`'s request.
    FetchSockets {
        nsp: String,
        slots: Vec<Slot>,
        from: String,
        request_id: u32,
    },
    ServerSideEmit {
        nsp: String,
        args: Vec<PacketPart>,
        reply_to: Option<(String, u32)>,
    },
    /// A reply to one of this server's requests.
    Reply { request_id: u32, message: Message },
    /// The request got every reply it waited for, or timed out with `answered` servers having
    /// replied, or ended `incomplete` (a server it waited on left, or one joined the namespace
    /// meanwhile and did not answer: the reason says which).
    RequestDone {
        request_id: u32,
        timed_out: bool,
        answered: u32,
        incomplete: Option<String>,
    },
    /// Something the user should hear about (the adapter's `error` event).
    Error(String),
    /// The broker connection was lost; publishes are buffered while reconnecting.
    Disconnected(String),
    /// Connected again after `attempts` tries; bindings restored, buffered publishes sent.
    Reconnected { attempts: u32 },
    /// The outage buffer was full: this many of the oldest publishes were dropped.
    Dropped { count: u64 },
    /// `count` messages of `from` to routing key `key` never arrived (see `sequence.rs`).
    Missed {
        from: String,
        key: String,
        count: u64,
    },
}

/// Inbox items: like [`Drained`], but targets are resolved to slots only when the host takes them,
/// so they match the index as it is then.
pub(crate) enum Inbound {
    Targeted {
        nsp: Arc<Namespace>,
        target: Target,
        from: String,
        work: TargetedWork,
    },
    Ready(Drained),
}

pub(crate) enum TargetedWork {
    Broadcast {
        flags: WriteFlags,
        packet: Vec<PacketPart>,
        ack: Option<AckRequest>,
    },
    Disconnect {
        close: bool,
    },
    Fetch {
        request_id: u32,
    },
}

pub type Waker = Arc<dyn Fn() + Send + Sync>;

pub(crate) struct Inbox {
    items: Mutex<VecDeque<Inbound>>,
    capacity: usize,
    space: Notify,
    /// Dropped by `close`: the host's callback may be what keeps the host process alive.
    waker: Mutex<Option<Waker>>,
    wake_pending: AtomicBool,
    /// Set by the consumer while it handles a delivery: pushes, from any thread, leave the
    /// wake-up to the end of the hold, which looks at the items after clearing it (see `push`).
    holding: AtomicBool,
    /// How often the host was woken (the `hostWakeups` statistic).
    wakeups: AtomicU64,
}

impl Inbox {
    pub(crate) fn new(waker: Waker, capacity: usize) -> Inbox {
        Inbox {
            items: Mutex::default(),
            capacity,
            space: Notify::new(),
            waker: Mutex::new(Some(waker)),
            wake_pending: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
        }
    }

    /// Queues an item; wakes the host unless a wake-up is pending already or wake-ups are held.
    pub(crate) fn push(&self, item: Inbound) {
        self.items.lock().push_back(item);
        // A pusher that sees the hold pushed before the release cleared it, so the release's
        // look at the items (under the same lock, after clearing) finds this item.
        if !self.holding.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Holds wake-ups back until the hold is dropped (the consumer, while it handles a
    /// delivery); dropping it wakes the host if anything is waiting. A guard, so a consumer that
    /// ends or is dropped mid-delivery cannot leave the host asleep.
    pub(crate) fn hold_wakes(&self) -> WakeHold<'_> {
        self.holding.store(true, Ordering::SeqCst);
        WakeHold(self)
    }

    /// Wakes the host unless a wake-up is pending.
    fn wake(&self) {
        if self.wake_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(wake) = self.waker.lock().as_ref() {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            wake();
        }
    }

    /// How often the host was woken.
    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Resolves once the inbox has room (the host drained it). A full inbox is never held back:
    /// only the host's drain makes room.
    pub(crate) async fn wait_for_space(&self) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if self.items.lock().len() < self.capacity {
                return;
            }
            self.wake();
            space.await;
        }
    }

    /// Takes everything, targets resolved against the current room index, and how many items
    /// are deliveries to sockets (for the `delivered` counter).
    pub(crate) fn drain(&self) -> (Vec<Drained>, u64) {
        // Clear before taking, so an item queued after the take wakes the host again.
        self.wake_pending.store(false, Ordering::SeqCst);
        let inbound = std::mem::take(&mut *self.items.lock());
        self.space.notify_waiters();
        let mut out = Vec::with_capacity(inbound.len());
        let mut delivered = 0;
        for item in inbound {
            let (nsp, target, from, work) = match item {
                Inbound::Ready(drained) => {
                    out.push(drained);
                    continue;
                }
                Inbound::Targeted {
                    nsp,
                    target,
                    from,
                    work,
                } => (nsp, target, from, work),
            };
            let slots = nsp.index.lock().recipients(&target);
            let name = nsp.name.clone();
            let drained = match work {
                // Requests are answered even when no socket matches any more.
                TargetedWork::Fetch { request_id } => Drained::FetchSockets {
                    nsp: name,
                    slots,
                    from,
                    request_id,
                },
                TargetedWork::Broadcast { flags, packet, ack }
                    if ack.is_some() || !slots.is_empty() =>
                {
                    Drained::Broadcast {
                        nsp: name,
                        slots,
                        flags,
                        packet,
                        ack: ack.map(|ack| (from, ack)),
                    }
                }
                TargetedWork::Disconnect { close } if !slots.is_empty() => {
                    Drained::DisconnectSockets {
                        nsp: name,
                        slots,
                        close,
                    }
                }
                _ => continue,
            };
            delivered += 1;
            out.push(drained);
        }
        (out, delivered)
    }

    /// Stops waking the host.
    pub(crate) fn close(&self) {
        self.waker.lock().take();
    }
}

/// See [`Inbox::hold_wakes`]. Two holds at once (an old session's consumer finishing beside the
/// new one's) only batch less: whichever ends first lets pushes wake again, and a push that saw
/// the hold is always followed by the release that checks the items.
pub(crate) struct WakeHold<'a>(&'a Inbox);

impl Drop for WakeHold<'_> {
    fn drop(&mut self) {
        let inbox = self.0;
        if inbox.holding.swap(false, Ordering::SeqCst) && !inbox.items.lock().is_empty() {
            inbox.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counted() -> (Inbox, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = wakes.clone();
        let inbox = Inbox::new(
            Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
            100,
        );
        (inbox, wakes)
    }

    fn item() -> Inbound {
        Inbound::Ready(Drained::Error("x".into()))
    }

    /// Pushes under a hold wake the host once, when the hold ends, however it ends.
    #[test]
    fn a_hold_wakes_once_when_it_ends() {
        let (inbox, wakes) = counted();
        let hold = inbox.hold_wakes();
        inbox.push(item());
        inbox.push(item());
        assert_eq!(wakes.load(Ordering::SeqCst), 0);
        drop(hold);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(inbox.drain().0.len(), 2);
        // Nothing waiting: ending a hold wakes nobody; without one, a push wakes at once.
        drop(inbox.hold_wakes());
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        inbox.push(item());
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    /// A host that drained meanwhile (woken by a push before the hold) is not woken for nothing.
    #[test]
    fn a_hold_ending_after_a_drain_wakes_nobody() {
        let (inbox, wakes) = counted();
        inbox.push(item());
        let hold = inbox.hold_wakes();
        inbox.push(item());
        assert_eq!(inbox.drain().0.len(), 2);
        drop(hold);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
    }
}
