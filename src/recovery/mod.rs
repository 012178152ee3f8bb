//! Connection state recovery across servers (Socket.IO's `connectionStateRecovery`).
//!
//! The live bus is unchanged; beside it, one durable RabbitMQ stream per cluster is the *recovery
//! log*, bound to the exchange with [`LOG_KEY`]. It receives
//! - a copy of every storable broadcast (an event without ack, not volatile, not local: the host
//!   gives it an offset, `<ms>-<uid>-<n>`, also pushed as the packet's last argument), made by the
//!   broker from the same publish (header `BCC`), so the sender encodes and publishes once;
//! - the session of every socket that disconnected in a recoverable way (`persist`);
//! - the fences of restore scans, which also claim the sessions they restore (single use).
//!
//! A restore (`restore` then `finish_restore`) reads the log from the client's offset (less a
//! clock margin) to a fence it writes itself ([`scan`]), while the live packets of the namespace
//! are recorded ([`recorder`]) so nothing falls between the end of the scan and the moment the
//! socket is in the room index again. Scans of restores that arrive together are shared
//! ([`reader`]). This module owns that state; the node calls into it.

mod reader;
mod recorder;
pub mod scan;

use crate::outbox::Outbox;
use crate::room_index::{AddOutcome, RoomIndex};
use crate::wire::{Envelope, Message, PacketPart, Target};
use lapin::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
pub(crate) use recorder::Recorders;
pub use scan::{Miss, Restored, StoredPacket};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::transport::LOG_KEY;

/// How the recovery log is kept.
#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// The stream's name.
    pub stream: String,
    /// `maxDisconnectionDuration`: how long a session stays restorable.
    pub session_ttl: Duration,
    /// Retention by age (`x-max-age`): at least `session_ttl`, plus the time a client may go
    /// without receiving a stored packet before it disconnects.
    pub max_age: Duration,
    /// Retention by size (`x-max-length-bytes`).
    pub max_bytes: u64,
}

/// Scans start this long before the client's offset: the offset's time is the sender's clock,
/// the stream's timestamps are the broker's.
const CLOCK_MARGIN: Duration = Duration::from_secs(5);
/// The most packets one restore replays (more: the client reconnects as a new one).
const MAX_REPLAYED: usize = 10_000;
/// Stream segments: retention deletes whole segments, so small ones keep `x-max-age` tight.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// Not opened in this session yet (or not ready: tried again).
const UNKNOWN: u8 = 0;
const AVAILABLE: u8 = 1;
/// The broker has no streams: for good.
const UNAVAILABLE: u8 = 2;
/// Tried and not ready (reported once until it opens).
const NOT_READY: u8 = 3;

#[derive(Default)]
pub struct RecoveryStats {
    pub persisted: AtomicU64,
    pub restored: AtomicU64,
    pub not_restored: AtomicU64,
    pub scans: AtomicU64,
}

/// Publishes a record to the recovery log (through the node's outbox, so records are ordered
/// after what the node published before them and are flushed by `close()`).
pub(crate) type LogPublisher = Arc<dyn Fn(Message) + Send + Sync>;
/// Reports a problem to the host (the adapter's `error` event).
pub(crate) type Reporter = Arc<dyn Fn(String) + Send + Sync>;

pub struct Recovery {
    pub config: RecoveryConfig,
    state: AtomicU8,
    /// The session's connection, for the scans' channels (`None` while disconnected).
    connection: Mutex<Option<Arc<lapin::Connection>>>,
    pub(crate) recorders: Recorders,
    requests: mpsc::UnboundedSender<reader::Job>,
    pending_requests: Mutex<Option<mpsc::UnboundedReceiver<reader::Job>>>,
    pub stats: RecoveryStats,
}

impl Recovery {
    pub fn new(config: RecoveryConfig) -> Recovery {
        let (requests, receiver) = mpsc::unbounded_channel();
        Recovery {
            config,
            state: AtomicU8::new(UNKNOWN),
            connection: Mutex::new(None),
            recorders: Recorders::default(),
            requests,
            pending_requests: Mutex::new(Some(receiver)),
            stats: RecoveryStats::default(),
        }
    }

    /// Starts the task that runs restore scans (once).
    pub(crate) fn start(
        self: &Arc<Self>,
        publish: LogPublisher,
        report: Reporter,
        closing: watch::Receiver<bool>,
    ) {
        if let Some(requests) = self.pending_requests.lock().take() {
            tokio::spawn(reader::run(
                self.clone(),
                publish,
                report,
                requests,
                closing,
            ));
        }
    }

    /// The stream's arguments (a re-declaration with other values fails: see the transport).
    pub fn stream_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let text = |s: String| AMQPValue::LongString(s.into());
        arguments.insert("x-queue-type".into(), text("stream".into()));
        let age = self.config.max_age.as_secs().max(1);
        arguments.insert("x-max-age".into(), text(format!("{age}s")));
        let bytes = i64::try_from(self.config.max_bytes).unwrap_or(i64::MAX);
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(bytes));
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(SEGMENT_BYTES.min(self.config.max_bytes.max(1)) as i64),
        );
        arguments
    }

    /// This session declared and bound the log: restores can read it.
    pub(crate) fn connected(&self, connection: Arc<lapin::Connection>) {
        *self.connection.lock() = Some(connection);
        self.state.store(AVAILABLE, Ordering::SeqCst);
    }

    /// The log cannot be used (the broker has no streams). Returns true the first time, so it
    /// is reported once.
    pub(crate) fn unavailable(&self) -> bool {
        *self.connection.lock() = None;
        self.state.swap(UNAVAILABLE, Ordering::SeqCst) != UNAVAILABLE
    }

    /// The log is not ready yet. Returns true when that is news (to be reported).
    pub(crate) fn not_ready(&self) -> bool {
        *self.connection.lock() = None;
        self.state
            .compare_exchange(UNKNOWN, NOT_READY, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Whether restores can read the log now.
    pub fn ready(&self) -> bool {
        self.state.load(Ordering::SeqCst) == AVAILABLE
    }

    /// Whether the session still has to open the log (it was not ready).
    pub(crate) fn pending(&self) -> bool {
        self.state.load(Ordering::SeqCst) == NOT_READY
    }

    /// The session ended: the next one opens the log again (a full broker restart may have taken
    /// the stream's process down for a while).
    pub(crate) fn disconnected(&self) {
        *self.connection.lock() = None;
        let _ = self
            .state
            .compare_exchange(AVAILABLE, UNKNOWN, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub(crate) fn connection(&self) -> Option<Arc<lapin::Connection>> {
        self.connection.lock().clone()
    }

    /// Queues the session of a socket that disconnected (it reaches the log in publish order).
    pub(crate) fn persist(
        &self,
        outbox: &Outbox,
        envelope: impl FnOnce(Message) -> Envelope,
        session: SessionToPersist,
    ) -> Option<u64> {
        if self.state.load(Ordering::SeqCst) == UNAVAILABLE {
            return None;
        }
        self.stats.persisted.fetch_add(1, Ordering::Relaxed);
        let expires_at_ms = now_ms() + self.config.session_ttl.as_millis() as u64;
        let record = Message::Session {
            pid: session.pid,
            sid: session.sid,
            rooms: session.rooms,
            data: session.data,
            expires_at_ms,
        };
        outbox.push(LOG_KEY.to_string(), envelope(record))
    }

    /// Looks for the session `pid` of namespace `nsp` and what its client missed since `offset`.
    /// `None` (not recovered) quickly for an offset that cannot be in the log. On success the
    /// namespace's live packets are being recorded until [`finish_restore`](Self::finish_restore).
    pub(crate) async fn restore(
        &self,
        nsp: &str,
        pid: &str,
        offset: &str,
    ) -> Option<(u64, Restored)> {
        let result = self.try_restore(nsp, pid, offset).await;
        let counter = match result {
            Some(_) => &self.stats.restored,
            None => &self.stats.not_restored,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_restore(&self, nsp: &str, pid: &str, offset: &str) -> Option<(u64, Restored)> {
        if self.state.load(Ordering::SeqCst) != AVAILABLE || pid.is_empty() || pid.len() > 128 {
            return None;
        }
        let sent_at_ms = offset_time_ms(offset)?;
        let now = now_ms();
        let oldest = now.saturating_sub(self.config.max_age.as_millis() as u64);
        // Older than the log keeps, or from the future: no scan can find it.
        if sent_at_ms < oldest || sent_at_ms > now + CLOCK_MARGIN.as_millis() as u64 {
            return None;
        }
        let recording = self.recorders.start(nsp);
        let (reply, outcome) = oneshot::channel();
        let request = reader::Request {
            nsp: nsp.to_string(),
            pid: pid.to_string(),
            offset: offset.to_string(),
            start_ms: sent_at_ms.saturating_sub(CLOCK_MARGIN.as_millis() as u64),
            reply,
        };
        let restored = match self.requests.send(reader::Job::Restore(request)) {
            Ok(()) => outcome.await.ok().flatten(),
            Err(_) => None,
        };
        match restored {
            Some(restored) => {
                let known = restored.packets.iter().map(|p| p.offset.clone()).collect();
                self.recorders
                    .expect(recording, restored.rooms.clone(), known);
                Some((recording, restored))
            }
            None => {
                self.recorders.stop(recording);
                None
            }
        }
    }

    /// Room routing: what was sent to the session's `rooms` of `nsp` from log position `from` to
    /// a new fence (see `scan::CatchUp`); the recording `recording` then skips those packets.
    pub(crate) async fn catch_up(
        &self,
        recording: u64,
        nsp: &str,
        rooms: Vec<String>,
        from: u64,
    ) -> Option<Vec<StoredPacket>> {
        let (reply, outcome) = oneshot::channel();
        let request = reader::CatchUpRequest {
            nsp: nsp.to_string(),
            rooms,
            from,
            reply,
        };
        self.requests.send(reader::Job::CatchUp(request)).ok()?;
        let packets = outcome.await.ok().flatten()?;
        self.recorders
            .also_replayed(recording, packets.iter().map(|p| p.offset.clone()));
        Some(packets)
    }

    /// Ends a restore that will not be finished (its recording stops).
    pub(crate) fn abandon(&self, recording: u64) {
        self.recorders.stop(recording);
    }

    /// Puts the restored socket into `index` (joining the session's rooms, returned with the
    /// outcome) and returns the live packets for it recorded since the scan (not already
    /// replayed), in arrival order. Done under the recorders' lock, which
    /// the consumer holds from recording a packet to filtering it: each packet is either recorded
    /// here or delivered live, never both, never neither. `None` when the restore is unknown (it
    /// expired) or recorded too much.
    pub(crate) fn finish_restore(
        &self,
        recording: u64,
        sid: &str,
        index: &Mutex<RoomIndex>,
    ) -> Option<(AddOutcome, Vec<String>, Vec<Vec<PacketPart>>)> {
        let mut recorders = self.recorders.lock();
        let rooms = recorders.rooms_of(recording)?;
        // Join first, then end the recording: the consumer does not lock the recorders once none
        // is active, so the socket must be in the index by then.
        let joined = index.lock().add_all(sid, &rooms);
        let (_, packets) = recorders.take(recording)?;
        Some((joined, rooms, packets))
    }

    /// Whether any restore is recording live packets (the consumer's fast path).
    pub(crate) fn recording(&self) -> bool {
        self.recorders.active()
    }

    /// Records an own broadcast (the sender does not receive it back through its queue).
    pub(crate) fn record_own(
        &self,
        nsp: &str,
        target: &Target,
        offset: &str,
        packet: &[PacketPart],
    ) {
        if self.recording() {
            self.recorders.lock().record(nsp, target, offset, packet);
        }
    }
}

/// What the host hands over when a socket disconnects in a recoverable way.
pub struct SessionToPersist {
    pub sid: String,
    pub pid: String,
    pub rooms: Vec<String>,
    pub data: Vec<PacketPart>,
}

/// The send time (ms since the epoch) of an offset `<ms>-<sender uid>-<n>`; `None` when the text
/// is not one (a client may send anything).
pub fn offset_time_ms(offset: &str) -> Option<u64> {
    if offset.len() > 96 {
        return None;
    }
    let mut parts = offset.split('-');
    let (ms, uid, n) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    let uid_ok =
        !uid.is_empty() && uid.len() <= 32 && uid.bytes().all(|b| b.is_ascii_alphanumeric());
    if parts.next().is_some() || !digits(ms) || !digits(n) || !uid_ok {
        return None;
    }
    ms.parse().ok()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_checked_before_anything_is_read() {
        assert_eq!(
            offset_time_ms("1764691234567-a1b2c3d4e5f60718-42"),
            Some(1764691234567)
        );
        for bad in [
            "",
            "abc",
            "1-2",
            "1764691234567-a1b2-42-9",
            "x764691234567-a1b2-42",
            "1764691234567--42",
            "1764691234567-a.b-42",
            "1764691234567-a1b2-",
            "99999999999999999999999-a-1",
        ] {
            assert_eq!(offset_time_ms(bad), None, "{bad:?}");
        }
    }
}
