//! The node's connection lifecycle: connect (through the bus, each broker URL in turn), run a
//! session, and when the connection is lost, keep publishes in the outbox and reconnect with
//! capped exponential backoff until `close()`. Every session re-declares the queue and binds the
//! cluster key, the node's own key and every namespace the host wants, then says hello, so
//! traffic resumes by itself.

use super::inbox::{Drained, Inbound};
use super::{Control, Node};
use crate::bus::{Connected, Deliveries, Endpoint, Link};
use crate::outbox::Outbox;
use crate::reconnect::{closed, keep_connected, Connecting, SessionEnd, SessionStart};
use crate::requests::Departure;
use crate::room_bindings::RoomRef;
use crate::transport::{namespace_key, room_key, server_key, CLUSTER_KEY};
use crate::wire::{Envelope, Message};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

impl Connecting for Arc<Node> {
    type Commands = mpsc::UnboundedReceiver<Control>;

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn reconnect_delays(&self) -> (Duration, Duration) {
        let broker = &self.config.broker;
        (broker.reconnect_delay, broker.reconnect_delay_max)
    }

    /// Connects (each URL once, the last one that worked first). After an earlier session the
    /// queue existed: the link finds out whether it still does.
    async fn connect(&self, ever_connected: bool) -> Result<Connected, String> {
        let endpoint = Endpoint {
            connection_name: format!(
                "socket.io-amqp0-native {} {}",
                self.config.instance_name, self.uid
            ),
            queue: Some(self.queue.clone()),
            prefetch: self.config.prefetch,
            initial_bindings: vec![CLUSTER_KEY.to_string(), server_key(&self.uid)],
            queue_expiry: self.config.queue_expiry,
            queue_existed: ever_connected,
        };
        self.bus.connect(&endpoint).await
    }

    async fn session(
        &self,
        connected: Connected,
        start: SessionStart,
        control: &mut Self::Commands,
        closing: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let link = connected.link;
        let transport = &*link;
        let Some(deliveries) = connected.deliveries else {
            transport.close().await;
            return SessionEnd::Lost("the broker link of a server has no deliveries".into());
        };
        // After a lost connection, or after failed first attempts: either way the host has heard
        // of trouble and now hears that it is over.
        let reconnected = (start.ever_connected || start.attempts > 1).then_some(start.attempts);
        let end = self
            .serve(&link, deliveries, reconnected, control, closing)
            .await;
        let lost = matches!(end, SessionEnd::Lost(_));
        self.handoff.detach(transport, lost, &self.sending());
        match &end {
            SessionEnd::Closed => {
                self.rooms.session_ended();
                // Whatever was emitted before close() still goes out, then the others stop
                // counting this server, and its queue goes: nobody will come back for it.
                let farewell = async {
                    let _ = self.flush(transport).await;
                    let goodbye = self.envelope("", Message::Goodbye);
                    let _ = self.publish_counted(transport, CLUSTER_KEY, goodbye);
                    let _ = transport.written().await;
                    if let Err(error) = transport.delete_queue().await {
                        self.report(format!(
                            "{error}; the broker deletes it by itself once its expiry passes"
                        ));
                    }
                };
                // A broker that stops answering must not keep close() waiting.
                let limit = self.config.broker.connect_timeout;
                if tokio::time::timeout(limit, farewell).await.is_err() {
                    self.report(format!(
                        "closing: the broker did not answer within {} ms; the connection is \
                         closed without the goodbye and the queue's deletion (the others forget \
                         this server after the heartbeat timeout, the broker deletes the queue \
                         after its expiry)",
                        limit.as_millis()
                    ));
                }
                let _ = tokio::time::timeout(limit, transport.close()).await;
                refuse_all(control, "the adapter is closed");
            }
            SessionEnd::Lost(_) => {
                let _ = tokio::time::timeout(self.config.broker.connect_timeout, transport.close())
                    .await;
            }
        }
        end
    }

    fn connection_lost(&self, reason: String) {
        self.on_connection_lost(reason);
    }

    fn attempt_failed(&self, error: String) {
        self.report(error);
    }

    async fn wait_offline(
        &self,
        delay: Duration,
        last_error: &str,
        control: &mut Self::Commands,
        closing: &mut watch::Receiver<bool>,
    ) -> bool {
        self.serve_offline(delay, last_error, control, closing)
            .await
    }

    fn closed_offline(&self, control: &mut Self::Commands) {
        self.outbox.discard_all();
        refuse_all(control, "the adapter is closed");
    }
}

impl Node {
    /// The connection task: keeps the node connected until `close()`.
    pub(crate) async fn run(self: Arc<Self>, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut closing = self.closing.subscribe();
        keep_connected(&self, &mut control, &mut closing).await;
    }

    /// One connected session: binds what the host wants, says hello, sends what waited during the
    /// outage, then serves publishes, bindings, heartbeats and the peer sweep until closed or lost.
    pub(super) async fn serve(
        self: &Arc<Self>,
        link: &Arc<dyn Link>,
        deliveries: Box<dyn Deliveries>,
        reconnected_after: Option<u32>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        closing: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let transport = &**link;
        let (lost_tx, mut lost) = oneshot::channel();
        transport.spawn_receiver(Box::pin(self.clone().consume(deliveries, lost_tx)));

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
        // Numbered before the hello: it must reach the others first (see `resend_unwritten`).
        if let Err(error) = self
            .handoff
            .resend_unwritten(transport, &self.sending())
            .await
        {
            return SessionEnd::Lost(error);
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
        // From here on the JS thread may hand its publishes to the link itself.
        self.handoff.attach(link.clone());
        loop {
            // A flush waits for lapin's writes while more is waiting: the loss of the connection
            // or close() ends that wait too (what was not written goes back to the outbox).
            let flushed = tokio::select! {
                biased;
                reason = &mut lost => return SessionEnd::Lost(reason.unwrap_or_default()),
                _ = closed(closing) => return SessionEnd::Closed,
                flushed = self.flush(transport) => flushed,
            };
            if let Err(error) = flushed {
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

    /// The queue was gone when this session connected: so are its bindings, and whatever was
    /// sent to it meanwhile. Gaps are counted as the senders' next messages arrive.
    pub(super) fn on_queue_lost(&self) {
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
    pub(super) async fn bind_namespaces(&self, transport: &dyn Link) -> Result<(), String> {
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

    pub(super) async fn unbind_namespace(
        &self,
        transport: &dyn Link,
        nsp: &str,
    ) -> Result<(), String> {
        let key = namespace_key(nsp);
        transport.unbind(&key).await?;
        self.queue_namespaces.lock().remove(nsp);
        // A later bind starts a new count: what was sent while unbound was never ours.
        self.tracker.lock().forget_key(&key);
        Ok(())
    }

    pub(super) async fn flush(&self, transport: &dyn Link) -> Result<(), String> {
        self.handoff.flush(transport, &self.sending()).await
    }

    /// Room routing: binds the keys of the rooms among `rooms` that have local members and are
    /// not bound, unbinds those bound without members any more; then everything up to
    /// `generation` is in place.
    pub(super) async fn sync_rooms(
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

    pub(super) async fn execute(
        &self,
        transport: &dyn Link,
        command: Control,
    ) -> Result<(), String> {
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
    pub(super) async fn serve_offline(
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

    pub(super) fn on_connection_lost(&self, reason: String) {
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
    pub(super) async fn announce(&self, transport: &dyn Link, hello: bool) -> Result<(), String> {
        let envelope = self.envelope("", self.announcement(hello));
        self.publish_counted(transport, CLUSTER_KEY, envelope)
    }

    /// Publishes around the outbox (announcements, goodbye), numbered in publish order.
    pub(super) fn publish_counted(
        &self,
        transport: &dyn Link,
        key: &str,
        envelope: Envelope,
    ) -> Result<(), String> {
        self.handoff
            .publish_numbered(transport, key, envelope, &self.sending())
    }
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

/// How often silent peers are looked for: often enough to notice a death soon after the timeout.
fn sweep_period(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}
