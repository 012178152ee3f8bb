//! Connection state recovery's part in the node (the log itself is `crate::recovery`): the log
//! reader's start, opening the log with each session, persisting sessions, restores (with room
//! routing, pinning the session's rooms and catching up), and recording this server's own
//! packets while restores are under way.

use super::inbox::{Drained, Inbound};
use super::{Namespace, Node};
use crate::bus::{Link, LogError};
use crate::recovery::{Restored, SessionToPersist, LOG_KEY};
use crate::transport::routable_room;
use crate::wire::{Message, PacketPart};
use std::sync::Arc;

impl Node {
    /// Starts the recovery log's reader (with recovery on).
    pub(super) fn start_recovery(self: &Arc<Self>) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        // The reader holds the node weakly: it must not keep a closed node alive.
        let publisher = Arc::downgrade(self);
        let reporter = publisher.clone();
        let publish = Arc::new(move |record: Message| {
            if let Some(node) = publisher.upgrade() {
                node.send(LOG_KEY.to_string(), "", record);
            }
        });
        let report = Arc::new(move |message: String| {
            if let Some(node) = reporter.upgrade() {
                node.report(message);
            }
        });
        recovery.start(publish, report, self.closing.subscribe());
    }

    /// Connection state recovery: declares and binds the recovery log. A broker without streams
    /// is reported once; recovery is then off (clients are not recovered) and the rest works. A
    /// log that is not ready (its stream still starting after a broker restart) is tried again
    /// with every heartbeat until it is.
    pub(super) async fn open_recovery_log(&self, transport: &dyn Link) {
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
    pub(super) fn recovery_log_pending(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.pending())
    }

    /// Connection state recovery: queues the session of a socket that disconnected in a
    /// recoverable way (sent with the host's next `send_queued`, or by `close()`).
    pub fn persist_session(&self, nsp: &str, session: SessionToPersist) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        if let Some(count) = recovery.persist(&self.outbox, |m| self.envelope(nsp, m), session) {
            self.push(Inbound::Ready(Drained::Dropped { count }));
        }
    }

    /// Connection state recovery: the session `pid` of `nsp` and the packets its client missed
    /// since `offset`, with a handle for [`finish_restore`](Self::finish_restore); `None` when
    /// it cannot be restored (unknown, used, expired, or recovery unavailable).
    pub async fn restore_session(
        &self,
        nsp: &str,
        pid: &str,
        offset: &str,
    ) -> Option<(u64, Restored)> {
        let recovery = self.recovery.as_ref()?;
        let (handle, mut restored) = recovery.restore(nsp, pid, offset).await?;
        if !self.config.room_routing {
            return Some((handle, restored));
        }
        // Room routing: broadcasts to the session's rooms reach this server only once it binds
        // them. Bind them now (pinned: no socket holds them yet), then read what was sent to
        // them between the scan's fence and the bindings; the recording covers what follows.
        let rooms: Vec<String> = restored
            .rooms
            .iter()
            .filter(|room| routable_room(nsp, room))
            .cloned()
            .collect();
        self.rooms.pin(handle, nsp, rooms.clone());
        self.rooms_changed(nsp, rooms.iter().map(String::as_str));
        self.rooms_bound().await;
        let more = match restored.resume_at {
            Some(from) => {
                let rooms = restored.rooms.clone();
                recovery.catch_up(handle, nsp, rooms, from).await
            }
            None => None,
        };
        match more {
            Some(packets) => {
                restored.packets.extend(packets);
                Some((handle, restored))
            }
            None => {
                self.unpin_rooms(handle);
                recovery.abandon(handle);
                None
            }
        }
    }

    /// Releases a restore's pinned rooms: those without members are unbound.
    pub(super) fn unpin_rooms(&self, handle: u64) {
        if let Some((nsp, rooms)) = self.rooms.unpin(handle) {
            self.rooms_changed(&nsp, rooms.iter().map(String::as_str));
        }
    }

    /// Puts a restored socket into the namespace's index (with room routing, its new rooms are
    /// bound as for any join) and returns the live packets for it since its scan.
    pub fn finish_restore(
        &self,
        ns: &Namespace,
        handle: u64,
        sid: &str,
    ) -> Option<(
        crate::room_index::AddOutcome,
        Vec<String>,
        Vec<Vec<PacketPart>>,
    )> {
        let finished = self
            .recovery
            .as_ref()?
            .finish_restore(handle, sid, &ns.index);
        // The socket holds its rooms now (or the restore failed): the pins go.
        self.unpin_rooms(handle);
        finished
    }

    /// Connection state recovery: a storable packet for local sockets only (`socket.emit`, which
    /// Socket.IO turns into a broadcast to the socket's own room) goes to the recovery log alone:
    /// no other server has a socket to deliver it to.
    pub fn publish_to_log(&self, nsp: &str, message: Message) {
        self.record_own(nsp, &message);
        self.queue(LOG_KEY.to_string(), nsp, message);
    }

    /// A restore under way records the namespace's live packets; this server's own do not come
    /// back to it through its queue, so they are recorded as they leave.
    pub(super) fn record_own(&self, nsp: &str, message: &Message) {
        if let (
            Some(recovery),
            Message::Broadcast {
                target,
                packet,
                offset: Some(offset),
                ..
            },
        ) = (&self.recovery, message)
        {
            recovery.record_own(nsp, target, offset, packet);
        }
    }
}
