//! The receive path: the consumer loop (deliveries, acknowledgements, panic containment), then per
//! message: decode, drop redeliveries and count gaps, and dispatch — what Rust answers alone
//! (heartbeats, replies, broadcasts and fetches without a local recipient) and what goes to the
//! host through the inbox.

use super::inbox::{Drained, Inbound, RoomChange, TargetedWork};
use super::{now, Namespace, Node};
use crate::bus::Deliveries;
use crate::reconnect::panic_text;
use crate::requests::{Departure, Outcome, Reply};
use crate::room_index::{ROOM_CREATED, ROOM_DELETED, SOCKET_JOINED, SOCKET_LEFT};
use crate::sequence::Verdict;
use crate::transport::server_key;
use crate::wire::{self, Envelope, Message, Target};
use futures_lite::{future, FutureExt, StreamExt};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the queue must be quiet before the consumer acknowledges what it handled (see
/// `consume`): short enough that a lost connection redelivers little, long enough that a steady
/// stream is acknowledged in batches.
const IDLE_ACK_DELAY: Duration = Duration::from_millis(50);

/// How long a sender's sequence numbers are remembered after its last message (at least; twice
/// the queue expiry when that is longer): a server back from a long outage still has its gaps
/// counted, and emitters that came and went are forgotten.
const SENDER_MEMORY: Duration = Duration::from_secs(15 * 60);

impl Node {
    pub(super) async fn consume(
        self: Arc<Self>,
        mut deliveries: Box<dyn Deliveries>,
        lost: oneshot::Sender<String>,
    ) {
        let ack_batch = (u32::from(self.config.prefetch) / 4).max(1);
        let mut unacked = 0;
        // Deliveries handled and not acknowledged yet.
        let mut to_ack = false;
        let reason = loop {
            let next = match future::poll_once(deliveries.next()).await {
                Some(next) => next,
                None => match std::mem::take(&mut to_ack) {
                    false => deliveries.next().await,
                    // Idle with deliveries handled but not acknowledged: acknowledge them once
                    // the queue has been quiet for IDLE_ACK_DELAY, not when more traffic comes
                    // (the queue outlives the connection, so they would be redelivered), and not
                    // at once either: at moderate rates the consumer is idle between almost every
                    // two deliveries, and an ack per delivery costs a hand-off to lapin's I/O
                    // thread and back per message.
                    true => {
                        match tokio::time::timeout(IDLE_ACK_DELAY, deliveries.next()).await {
                            // More came: acknowledging it (or a later one) covers this one.
                            Ok(next) => next,
                            Err(_quiet) => {
                                unacked = 0;
                                deliveries.ack_delivered().await;
                                deliveries.next().await
                            }
                        }
                    }
                },
            };
            match next {
                Some(Ok(delivery)) => {
                    // One wake-up for what this message gives the host (a batch, a request's
                    // last reply and its end), not one per item (see `Inbox::hold_wakes`).
                    let hold = self.inbox.hold_wakes();
                    // Panics in handling are contained per message (see `dispatch_contained`);
                    // this catches what is left (decoding) so the consumer always goes on.
                    let handled = AssertUnwindSafe(self.on_message(&delivery.body, &delivery.key))
                        .catch_unwind()
                        .await;
                    drop(hold);
                    if let Err(panic) = handled {
                        self.report(format!(
                            "internal error while handling a delivery (dropped): {}",
                            panic_text(&panic)
                        ));
                    }
                    // Under load acks go out in batches (one frame acknowledges every delivery
                    // up to this one), a quarter of the prefetch window at a time, so the window
                    // never closes but the broker is not sent one ack per message.
                    unacked += 1;
                    if unacked >= ack_batch {
                        unacked = 0;
                        to_ack = false;
                        deliveries.ack_delivered().await;
                    } else {
                        to_ack = true;
                    }
                }
                Some(Err(error)) => break error,
                None => break "the broker cancelled this server's consumer".to_string(),
            }
        };
        let _ = lost.send(reason);
    }

    /// One AMQP message, delivered through routing key `key`.
    pub(crate) async fn on_message(&self, body: &[u8], key: &str) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let envelope = match wire::decode_unless_from(body, &self.uid) {
            Ok(Some(envelope)) => envelope,
            Ok(None) => {
                // This server's own broadcast, back through its queue: dropped undecoded.
                self.stats.own_ignored.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) => return self.on_malformed(error),
        };
        let Envelope {
            uid: from,
            nsp,
            message,
            seq,
            key_seq,
            ..
        } = envelope;
        let verdict = self.tracker.lock().observe(&from, key, seq, key_seq, now());
        match verdict {
            Verdict::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Fresh { missed } if missed > 0 => {
                self.stats.missed.fetch_add(missed, Ordering::Relaxed);
                self.push(Inbound::Ready(Drained::Missed {
                    from: from.clone(),
                    key: key.to_string(),
                    count: missed,
                }));
            }
            Verdict::Fresh { .. } => {}
        }
        match message {
            Message::Batch(messages) => {
                for message in messages {
                    if matches!(message, Message::Batch(_)) {
                        self.on_malformed(wire::DecodeError::Malformed(
                            "a batch inside a batch".into(),
                        ));
                        continue;
                    }
                    self.dispatch_contained(&from, &nsp, message).await;
                }
            }
            message => self.dispatch_contained(&from, &nsp, message).await,
        }
    }

    /// A bug in handling one message must cost that message only, not its batch or the consumer.
    pub(super) async fn dispatch_contained(&self, from: &str, nsp: &str, message: Message) {
        let handled = AssertUnwindSafe(async {
            #[cfg(feature = "failpoints")]
            if matches!(message, Message::Broadcast { .. })
                && self.panic_on_next_broadcast.swap(false, Ordering::Relaxed)
            {
                panic!("panic injected by a test");
            }
            self.dispatch(from, nsp, message).await
        })
        .catch_unwind()
        .await;
        if let Err(panic) = handled {
            self.report(format!(
                "internal error while handling a message (dropped): {}",
                panic_text(&panic)
            ));
        }
    }

    /// Handles one message of another server (or emitter) `from`, for namespace `nsp`.
    pub(super) async fn dispatch(&self, from: &str, nsp: &str, message: Message) {
        let now = now();
        match message {
            Message::Hello {
                namespaces,
                room_routing,
            } => {
                self.peer_announced(from, namespaces, room_routing, now);
                // Answer so the newcomer counts this server without waiting for a heartbeat. The
                // connection task writes the answer when it sends it, not now: a namespace list
                // taken here could be overtaken by the heartbeat of a bind in progress and then
                // arrive after it, stale, undoing it until the next heartbeat.
                self.hello_answer_due.store(true, Ordering::SeqCst);
                self.outbox.wake();
                return;
            }
            Message::Heartbeat {
                namespaces,
                room_routing,
            } => return self.peer_announced(from, namespaces, room_routing, now),
            Message::Goodbye => {
                self.peers.lock().remove(from);
                return self.forget_server(from, Departure::Closed);
            }
            _ => self.peers.lock().touch(from, now),
        }
        if let Some(request_id) = message.response_to() {
            return self.on_reply(request_id, from, message);
        }
        let Some(ns) = self.namespaces.read().get(nsp).cloned() else {
            return;
        };
        match message {
            Message::Broadcast {
                target,
                flags,
                packet,
                ack,
                offset,
            } => {
                // While a restore records this namespace, hold the recorders from recording the
                // packet until it is filtered: see `Recovery::finish_restore`.
                let has_recipient = {
                    let mut recording = match (&self.recovery, &offset) {
                        (Some(recovery), Some(_)) if recovery.recording() => {
                            Some(recovery.recorders.lock())
                        }
                        _ => None,
                    };
                    if let (Some(recorders), Some(offset)) = (&mut recording, &offset) {
                        recorders.record(nsp, &target, offset, &packet);
                    }
                    let has_recipient = ns.index.lock().has_recipient(&target);
                    has_recipient
                };
                if !has_recipient {
                    self.stats
                        .no_local_recipient
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(ack) = ack {
                        self.stats
                            .answered_without_host
                            .fetch_add(1, Ordering::Relaxed);
                        let count = Message::BroadcastClientCount {
                            request_id: ack.request_id,
                            count: 0,
                        };
                        self.send(server_key(from), nsp, count);
                    }
                    return;
                }
                let work = TargetedWork::Broadcast { flags, packet, ack };
                self.push_targeted(ns, target, from.to_string(), work).await;
            }
            Message::SocketsJoin { target, rooms } => {
                if self.config.room_routing {
                    self.rooms.joined_by_request(nsp, &rooms, now);
                }
                self.apply_membership(&ns, &target, &rooms, true).await
            }
            Message::SocketsLeave { target, rooms } => {
                self.apply_membership(&ns, &target, &rooms, false).await
            }
            Message::DisconnectSockets { target, close } => {
                if !ns.index.lock().has_recipient(&target) {
                    self.stats
                        .no_local_recipient
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let work = TargetedWork::Disconnect { close };
                self.push_targeted(ns, target, from.to_string(), work).await;
            }
            Message::FetchSockets { request_id, target } => {
                if !ns.index.lock().has_recipient(&target) {
                    self.stats
                        .answered_without_host
                        .fetch_add(1, Ordering::Relaxed);
                    let empty = Message::FetchSocketsResponse {
                        request_id,
                        sockets: Vec::new(),
                    };
                    return self.send(server_key(from), nsp, empty);
                }
                let work = TargetedWork::Fetch { request_id };
                self.push_targeted(ns, target, from.to_string(), work).await;
            }
            Message::ServerSideEmit { request_id, args } => {
                self.inbox.wait_for_space().await;
                self.push(Inbound::Ready(Drained::ServerSideEmit {
                    nsp: nsp.to_string(),
                    args,
                    reply_to: request_id.map(|id| (from.to_string(), id)),
                }));
            }
            // Handled above; listed so a new message kind must be given a place here.
            Message::Hello { .. }
            | Message::Heartbeat { .. }
            | Message::Goodbye
            | Message::FetchSocketsResponse { .. }
            | Message::ServerSideEmitResponse { .. }
            | Message::BroadcastClientCount { .. }
            | Message::BroadcastAck { .. }
            | Message::Batch(_) => {}
            // Recovery log records: never routed to a server's queue.
            Message::Session { .. } | Message::Fence { .. } => {}
        }
    }

    /// Remote `socketsJoin`/`socketsLeave` are applied to the index at once, in stream order, so a
    /// broadcast to the room that follows them is filtered against the new membership.
    pub(super) async fn apply_membership(
        &self,
        ns: &Namespace,
        target: &Target,
        rooms: &[String],
        join: bool,
    ) {
        let mut changes = Vec::new();
        {
            let mut index = ns.index.lock();
            for slot in index.recipients(target) {
                let Some(id) = index.socket_id(slot).cloned() else {
                    continue;
                };
                if join {
                    let outcome = index.add_all(&id, rooms);
                    for (room, change) in rooms.iter().zip(outcome.changes) {
                        if change & (ROOM_CREATED | SOCKET_JOINED) != 0 {
                            changes.push(RoomChange {
                                room: room.clone(),
                                socket_id: id.to_string(),
                                change,
                            });
                        }
                    }
                } else {
                    for room in rooms {
                        let change = index.del(&id, room);
                        if change & (SOCKET_LEFT | ROOM_DELETED) != 0 {
                            changes.push(RoomChange {
                                room: room.clone(),
                                socket_id: id.to_string(),
                                change,
                            });
                        }
                    }
                }
            }
        }
        let room_bit = if join { ROOM_CREATED } else { ROOM_DELETED };
        let created_or_deleted = changes.iter().filter(|c| c.change & room_bit != 0);
        self.rooms_changed(&ns.name, created_or_deleted.map(|c| c.room.as_str()));
        if changes.is_empty() {
            self.stats
                .no_local_recipient
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inbox.wait_for_space().await;
        self.push(Inbound::Ready(Drained::RoomsChanged {
            nsp: ns.name.clone(),
            joined: join,
            changes,
        }));
    }

    pub(super) fn on_reply(&self, request_id: u32, from: &str, message: Message) {
        // Only fetches and server-side emits count replies per server; ack broadcasts are counted
        // by Socket.IO itself, so any number of their replies is accepted until the timeout.
        let outcome = self.requests.lock().on_reply(request_id, from);
        let Reply::Accepted { done } = outcome else {
            return;
        };
        let empty_fetch =
            matches!(&message, Message::FetchSocketsResponse { sockets, .. } if sockets.is_empty());
        if !empty_fetch {
            self.push(Inbound::Ready(Drained::Reply {
                request_id,
                message,
            }));
        }
        if let Some(outcome) = done {
            self.request_done(request_id, outcome);
        }
    }

    pub(super) fn request_done(&self, request_id: u32, outcome: Outcome) {
        let (answered, incomplete) = match outcome {
            Outcome::Complete => (0, None),
            Outcome::Incomplete { answered, reason } => (answered as u32, Some(reason)),
        };
        self.push(Inbound::Ready(Drained::RequestDone {
            request_id,
            timed_out: false,
            answered,
            incomplete,
        }));
    }

    /// A hello or heartbeat: the peer serves `namespaces` now. Requests to a namespace it just
    /// started serving must not end as if it did not exist.
    pub(super) fn peer_announced(
        &self,
        uid: &str,
        namespaces: Vec<String>,
        room_routing: bool,
        now: Instant,
    ) {
        let added = self.peers.lock().update(uid, namespaces, room_routing, now);
        if !added.is_empty() {
            let mut requests = self.requests.lock();
            for nsp in &added {
                requests.server_joined(nsp, uid);
            }
        }
    }

    pub(crate) fn forget_silent_peers(&self) {
        let dead = self
            .peers
            .lock()
            .expire(now(), self.config.heartbeat_timeout);
        for uid in dead {
            self.forget_server(&uid, Departure::Silent);
        }
        let memory = SENDER_MEMORY.max(self.config.queue_expiry * 2);
        self.tracker.lock().expire(now(), memory);
    }

    /// A server left: requests that still waited on it end, saying so.
    pub(crate) fn forget_server(&self, uid: &str, why: Departure) {
        self.outbox.forget_stream(&server_key(uid));
        let ended = self.requests.lock().forget_server(uid, why);
        for (request_id, outcome) in ended {
            self.request_done(request_id, outcome);
        }
    }

    pub(super) fn on_malformed(&self, error: wire::DecodeError) {
        let count = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        // Garbage can arrive in floods; tell the user at most every few seconds.
        if self.malformed_reports.due() {
            self.report(format!(
                "dropped an incoming message ({count} so far): {error}"
            ));
        }
    }

    pub(super) async fn push_targeted(
        &self,
        nsp: Arc<Namespace>,
        target: Target,
        from: String,
        work: TargetedWork,
    ) {
        self.inbox.wait_for_space().await;
        self.push(Inbound::Targeted {
            nsp,
            target,
            from,
            work,
        });
    }
}
