//! The node's connection lifecycle: connect (trying each broker URL in turn), run a session, and when
//! the connection is lost, keep publishes in the outbox and reconnect with capped exponential
//! backoff until `close()`. Every session re-declares the queue and binds the cluster key, the node's own key and
//! every namespace the host wants, then says hello, so traffic resumes by itself.

use crate::bus::{Deliveries, Endpoint, Link, LogError};
use crate::cluster::{Control, Drained, Inbound, Node};
use crate::outbox::{Outbox, MAX_BATCH};
use crate::recovery::LOG_KEY;
use crate::requests::Departure;
use crate::room_bindings::RoomRef;
use crate::transport::{namespace_key, room_key, server_key, CLUSTER_KEY};
use crate::wire::{self, Envelope, Message};
use futures_lite::{future, FutureExt, StreamExt};
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How long the queue must be quiet before the consumer acknowledges what it handled (see
/// `consume`): short enough that a lost connection redelivers little, long enough that a steady
/// stream is acknowledged in batches.
const IDLE_ACK_DELAY: Duration = Duration::from_millis(50);

/// Delay before reconnect attempt `failures` (1-based): doubling from `initial`, capped at `max`,
/// with up to 20% taken off at random so servers that lost the broker together do not return in
/// lockstep.
pub(crate) fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    jitter_seed: u64,
) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = doubled.min(max);
    let jitter = (jitter_seed % 1000) as u32; // per mille
    capped.saturating_sub(capped * jitter / 5000)
}

enum SessionEnd {
    Closed,
    Lost(String),
}

impl Node {
    pub(crate) async fn run(self: Arc<Self>, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut closing = self.closing.subscribe();
        let mut failures: u32 = 0;
        let mut ever_connected = false;
        let mut last_error: String;
        loop {
            let attempt = self.connect(ever_connected);
            let Some(connected) = connect_unless_closed(attempt, &mut closing, &self.outbox).await
            else {
                break;
            };
            match connected {
                Ok((link, deliveries)) => {
                    let transport = &*link;
                    // After a lost connection, or after failed first attempts: either way the
                    // host has heard of trouble and now hears that it is over.
                    let reconnected = (ever_connected || failures > 0).then_some(failures + 1);
                    ever_connected = true;
                    failures = 0;
                    let end = self
                        .session(
                            transport,
                            deliveries,
                            reconnected,
                            &mut control,
                            &mut closing,
                        )
                        .await;
                    match end {
                        SessionEnd::Closed => {
                            self.rooms.session_ended();
                            // Whatever was emitted before close() still goes out, then the others
                            // stop counting this server, and its queue goes: nobody will come
                            // back for it.
                            let _ = self.flush(transport).await;
                            let goodbye = self.envelope("", Message::Goodbye);
                            let _ = self.publish_counted(transport, CLUSTER_KEY, goodbye).await;
                            if let Err(error) = transport.delete_queue().await {
                                self.report(format!("{error}; the broker deletes it by itself once its expiry passes"));
                            }
                            transport.close().await;
                            refuse_all(&mut control, "the adapter is closed");
                            return;
                        }
                        SessionEnd::Lost(reason) => {
                            transport.close().await;
                            last_error = reason.clone();
                            self.on_connection_lost(reason);
                        }
                    }
                }
                Err(error) => {
                    failures += 1;
                    last_error = error.clone();
                    self.report(error);
                }
            }
            let delay = backoff(
                failures.max(1),
                self.config.broker.reconnect_delay,
                self.config.broker.reconnect_delay_max,
                jitter_seed(),
            );
            if !self
                .serve_offline(delay, &last_error, &mut control, &mut closing)
                .await
            {
                break;
            }
        }
        // Closed while offline: what waited can no longer be sent.
        self.outbox.discard_all();
        refuse_all(&mut control, "the adapter is closed");
    }

    /// Connects (each URL once, the last one that worked first). `queue_existed`: an earlier
    /// session declared the queue (the link then finds out whether it is still there).
    async fn connect(
        &self,
        queue_existed: bool,
    ) -> Result<(Box<dyn Link>, Box<dyn Deliveries>), String> {
        let endpoint = Endpoint {
            connection_name: format!(
                "socket.io-amqp0-native {} {}",
                self.config.instance_name, self.uid
            ),
            queue: Some(self.queue.clone()),
            prefetch: self.config.prefetch,
            initial_bindings: vec![CLUSTER_KEY.to_string(), server_key(&self.uid)],
            queue_expiry: self.config.queue_expiry,
            queue_existed,
        };
        let connected = self.bus.connect(&endpoint).await?;
        let deliveries = connected
            .deliveries
            .ok_or("the broker link of a server has no deliveries")?;
        Ok((connected.link, deliveries))
    }

    /// One connected session: binds what the host wants, says hello, sends what waited during the
    /// outage, then serves publishes, bindings, heartbeats and the peer sweep until closed or lost.
    async fn session(
        self: &Arc<Self>,
        transport: &dyn Link,
        deliveries: Box<dyn Deliveries>,
        reconnected_after: Option<u32>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        closing: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let (lost_tx, mut lost) = oneshot::channel();
        tokio::spawn(self.clone().consume(deliveries, lost_tx));

        // Only a queue an earlier session declared can be lost: a server whose first attempts
        // failed reconnects (`reconnected_after`) to a queue it never had.
        if transport.queue_lost() {
            self.on_queue_lost();
        }
        // Before anything is published: storable packets are copied to the log as they leave.
        self.open_recovery_log(transport).await;
        if let Err(error) = self.bind_namespaces(transport).await {
            return SessionEnd::Lost(error);
        }
        if self.config.room_routing {
            let generation = self.rooms.session_started(transport.queue_kept());
            let mut rooms = self.all_rooms();
            rooms.extend(self.rooms.all_bound());
            if let Err(error) = self.sync_rooms(transport, rooms, generation).await {
                return SessionEnd::Lost(error);
            }
        }
        if let Err(error) = self.announce(transport, true).await {
            return SessionEnd::Lost(error);
        }
        // Only now, with the bindings back, is it true that traffic flows again.
        if let Some(attempts) = reconnected_after {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            self.push(Inbound::Ready(Drained::Reconnected { attempts }));
        }

        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.reset();
        let mut sweep = tokio::time::interval(sweep_period(self.config.heartbeat_timeout));
        loop {
            if let Err(error) = self.flush(transport).await {
                return SessionEnd::Lost(error);
            }
            if self.hello_answer_due.swap(false, Ordering::SeqCst) {
                if let Err(error) = self.announce(transport, false).await {
                    return SessionEnd::Lost(error);
                }
            }
            let result = tokio::select! {
                biased;
                reason = &mut lost => return SessionEnd::Lost(reason.unwrap_or_default()),
                Some(command) = control.recv() => self.execute(transport, command).await,
                _ = self.outbox.wait() => Ok(()),
                _ = self.rooms.changed() => {
                    let (rooms, generation) = self.rooms.take_dirty();
                    self.sync_rooms(transport, rooms, generation).await
                }
                _ = heartbeat.tick() => {
                    if self.recovery_log_pending() {
                        self.open_recovery_log(transport).await;
                    }
                    self.announce(transport, false).await
                }
                _ = sweep.tick() => {
                    self.forget_silent_peers();
                    Ok(())
                }
                _ = closed(closing) => return SessionEnd::Closed,
            };
            if let Err(error) = result {
                return SessionEnd::Lost(error);
            }
        }
    }

    /// Connection state recovery: declares and binds the recovery log. A broker without streams
    /// is reported once; recovery is then off (clients are not recovered) and the rest works. A
    /// log that is not ready (its stream still starting after a broker restart) is tried again
    /// with every heartbeat until it is.
    async fn open_recovery_log(&self, transport: &dyn Link) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        let config = &recovery.config;
        let declared = transport
            .declare_log(&config.stream, LOG_KEY, recovery.stream_arguments())
            .await;
        match declared {
            Ok(()) => match transport.log_connection() {
                Some(connection) => recovery.connected(connection),
                None => {
                    recovery.unavailable();
                }
            },
            Err(LogError::Unsupported(error)) => {
                if recovery.unavailable() {
                    self.report(format!(
                        "connection state recovery is off: {error} (it needs RabbitMQ 3.9 or later \
                         with the stream_queue feature flag enabled)"
                    ));
                }
            }
            Err(LogError::NotReady(error)) => {
                if recovery.not_ready() {
                    self.report(format!(
                        "the recovery log is not available yet ({error}): clients are not \
                         recovered until it is; retrying"
                    ));
                }
            }
        }
    }

    /// Whether this session still has to open the recovery log (see `open_recovery_log`).
    fn recovery_log_pending(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.pending())
    }

    /// The queue was gone when this session connected: so are its bindings, and whatever was
    /// sent to it meanwhile. Gaps are counted as the senders' next messages arrive.
    fn on_queue_lost(&self) {
        self.queue_namespaces.lock().clear();
        self.stats.queues_lost.fetch_add(1, Ordering::Relaxed);
        self.report(format!(
            "this server's queue '{}' was gone when it reconnected (the broker restarted, or the \
             outage outlasted queueExpiry, {} ms): messages sent to it meanwhile are lost; those \
             of other servers are counted as 'missed' when their next messages arrive",
            self.queue,
            self.config.queue_expiry.as_millis()
        ));
    }

    /// Makes the queue's namespace bindings what the host wants: unbinds those released while
    /// offline (the queue kept them), binds every wanted one (again: binding is idempotent).
    async fn bind_namespaces(&self, transport: &dyn Link) -> Result<(), String> {
        let wanted: BTreeSet<String> = self.wanted.lock().clone();
        let stale: Vec<String> = self
            .queue_namespaces
            .lock()
            .difference(&wanted)
            .cloned()
            .collect();
        for nsp in stale {
            self.unbind_namespace(transport, &nsp).await?;
        }
        for nsp in wanted {
            transport.bind(&namespace_key(&nsp)).await?;
            self.queue_namespaces.lock().insert(nsp.clone());
            self.bound.lock().insert(nsp);
        }
        Ok(())
    }

    async fn unbind_namespace(&self, transport: &dyn Link, nsp: &str) -> Result<(), String> {
        let key = namespace_key(nsp);
        transport.unbind(&key).await?;
        self.queue_namespaces.lock().remove(nsp);
        // A later bind starts a new count: what was sent while unbound was never ours.
        self.tracker.lock().forget_key(&key);
        Ok(())
    }

    async fn flush(&self, transport: &dyn Link) -> Result<(), String> {
        flush(&self.outbox, transport, &self.stats.published).await
    }

    /// Room routing: binds the keys of the rooms among `rooms` that have local members and are
    /// not bound, unbinds those bound without members any more; then everything up to
    /// `generation` is in place.
    async fn sync_rooms(
        &self,
        transport: &dyn Link,
        rooms: Vec<RoomRef>,
        generation: u64,
    ) -> Result<(), String> {
        let changes: Vec<(RoomRef, String, bool)> = rooms
            .into_iter()
            .filter_map(|room| {
                let key = room_key(&room.0, &room.1)?;
                let wanted = self.has_room(&room.0, &room.1);
                (wanted != self.rooms.is_bound(&room)).then_some((room, key, wanted))
            })
            .collect();
        // In slices, so a session start with many rooms does not put them all in flight at once.
        for slice in changes.chunks(512) {
            let keys: Vec<(String, bool)> = slice
                .iter()
                .map(|(_, key, bind)| (key.clone(), *bind))
                .collect();
            transport.rebind(&keys).await?;
        }
        let applied = changes
            .into_iter()
            .map(|(room, _, bind)| (room, bind))
            .collect();
        self.rooms.applied(applied, generation);
        Ok(())
    }

    async fn execute(&self, transport: &dyn Link, command: Control) -> Result<(), String> {
        match command {
            Control::Bind { nsp, done } => {
                self.wanted.lock().insert(nsp.clone());
                let result = transport.bind(&namespace_key(&nsp)).await;
                let failed = result.clone().err();
                if result.is_ok() {
                    self.queue_namespaces.lock().insert(nsp.clone());
                }
                let newly_bound = result.is_ok() && self.bound.lock().insert(nsp);
                let _ = done.send(result);
                if let Some(error) = failed {
                    return Err(error);
                }
                if newly_bound {
                    self.announce(transport, false).await?;
                }
            }
            Control::Unbind { nsp } => {
                self.wanted.lock().remove(&nsp);
                self.unbind_namespace(transport, &nsp).await?;
                if self.bound.lock().remove(&nsp) {
                    self.announce(transport, false).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits `delay` without a broker. Publishes stay in the outbox; binds are remembered for the
    /// next session and refused now, so `init()` does not hang. False when closed.
    async fn serve_offline(
        &self,
        delay: Duration,
        last_error: &str,
        control: &mut mpsc::UnboundedReceiver<Control>,
        closing: &mut watch::Receiver<bool>,
    ) -> bool {
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => return true,
                _ = closed(closing) => return false,
                Some(command) = control.recv() => match command {
                    Control::Bind { nsp, done } => {
                        self.wanted.lock().insert(nsp);
                        let _ = done.send(Err(format!(
                            "{last_error} (not connected; the namespace will be bound when the connection is back)"
                        )));
                    }
                    Control::Unbind { nsp } => {
                        self.wanted.lock().remove(&nsp);
                    }
                },
            }
        }
    }

    fn on_connection_lost(&self, reason: String) {
        if let Some(recovery) = &self.recovery {
            recovery.disconnected();
        }
        self.bound.lock().clear();
        self.rooms.session_ended();
        // Unreachable servers cannot answer: stop counting them and stop waiting for them.
        // Their heartbeats re-register them after the reconnect.
        let peers = self.peers.lock().clear();
        for uid in peers {
            self.forget_server(&uid, Departure::Disconnected);
        }
        self.push(Inbound::Ready(Drained::Disconnected(reason)));
    }

    /// Tells every server which namespaces this one serves (`hello` asks them to answer).
    async fn announce(&self, transport: &dyn Link, hello: bool) -> Result<(), String> {
        let envelope = self.envelope("", self.announcement(hello));
        self.publish_counted(transport, CLUSTER_KEY, envelope).await
    }

    /// Publishes around the outbox (announcements, goodbye), numbered in publish order.
    async fn publish_counted(
        &self,
        transport: &dyn Link,
        key: &str,
        mut envelope: Envelope,
    ) -> Result<(), String> {
        self.outbox.stamp(key, &mut envelope);
        transport.publish(key, &wire::encode(&envelope)).await?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn consume(
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
                    // Panics in handling are contained per message (see `dispatch_contained`);
                    // this catches what is left (decoding) so the consumer always goes on.
                    let handled = AssertUnwindSafe(self.on_message(&delivery.body, &delivery.key))
                        .catch_unwind()
                        .await;
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
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Answers every waiting bind with `reason` (the node is closed).
fn refuse_all(control: &mut mpsc::UnboundedReceiver<Control>, reason: &str) {
    control.close();
    while let Ok(command) = control.try_recv() {
        if let Control::Bind { done, .. } = command {
            let _ = done.send(Err(reason.to_string()));
        }
    }
}

/// Awaits a connection attempt, unless `close()` is called meanwhile with nothing waiting to be
/// sent: then `None`. With publishes waiting, the attempt may finish (it is bounded by the connect
/// timeout) so they still go out.
pub(crate) async fn connect_unless_closed<T>(
    attempt: impl std::future::Future<Output = T>,
    closing: &mut watch::Receiver<bool>,
    outbox: &Outbox,
) -> Option<T> {
    tokio::pin!(attempt);
    tokio::select! {
        result = &mut attempt => Some(result),
        _ = closed(closing) => {
            if outbox.len() == 0 {
                None
            } else {
                Some(attempt.await)
            }
        }
    }
}

/// AMQP messages handed to lapin together (see [`flush`]).
const PUBLISHES_IN_FLIGHT: usize = 64;

/// Sends everything in the outbox in order, batched, counting each AMQP message in `published`.
/// Up to [`PUBLISHES_IN_FLIGHT`] messages go to lapin at once (messages to different rooms cannot
/// share a batch, but they can share a hand-off). Publishes that fail go back to the front of the
/// outbox, in order.
pub(crate) async fn flush(
    outbox: &Outbox,
    transport: &dyn Link,
    published: &AtomicU64,
) -> Result<(), String> {
    loop {
        let mut envelopes = Vec::new();
        while envelopes.len() < PUBLISHES_IN_FLIGHT {
            match outbox.pop_batch(MAX_BATCH) {
                Some(next) => envelopes.push(next),
                None => break,
            }
        }
        if envelopes.is_empty() {
            return Ok(());
        }
        let bodies: Vec<(String, Vec<u8>, Option<&str>)> = envelopes
            .iter()
            .map(|(key, envelope)| {
                // Storable packets also go to the recovery log, by the same publish.
                let copy = envelope.message.recoverable() && key != LOG_KEY;
                (key.clone(), wire::encode(envelope), copy.then_some(LOG_KEY))
            })
            .collect();
        let results = transport.publish_all(&bodies).await;
        let mut first_error = None;
        let mut failed = Vec::new();
        for ((key, envelope), result) in envelopes.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                    failed.push((key, envelope));
                }
            }
        }
        if let Some(error) = first_error {
            for (key, envelope) in failed.into_iter().rev() {
                outbox.push_front(key, envelope);
            }
            return Err(error);
        }
    }
}

/// How often silent peers are looked for: often enough to notice a death soon after the timeout.
fn sweep_period(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Resolves once `close()` has been called.
pub(crate) async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

pub(crate) fn jitter_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    RandomState::new().hash_one(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert_eq!(backoff(1, initial, max, 0), Duration::from_millis(100));
        assert_eq!(backoff(2, initial, max, 0), Duration::from_millis(200));
        assert_eq!(backoff(4, initial, max, 0), Duration::from_millis(800));
        assert_eq!(backoff(10, initial, max, 0), max);
        assert_eq!(backoff(1000, initial, max, 0), max);
        let jittered = backoff(3, initial, max, 999);
        assert!(jittered <= Duration::from_millis(400) && jittered >= Duration::from_millis(320));
    }
}
