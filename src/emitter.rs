//! The emitter: sends broadcasts, room changes, disconnects and server-side emits to a Socket.IO
//! cluster from a process that is not a Socket.IO server (a worker, a cron job, a Rust service).
//! It speaks the adapters' wire format over a publish-only connection: it has no queue, sends no
//! heartbeats, and so is never counted as a server. Publishes made while it is (re)connecting wait
//! in a bounded outbox, like the adapter's.
//!
//! ```no_run
//! use socket_io_amqp0_native::{Arg, BrokerConfig, Emitter};
//! # async fn run() -> Result<(), socket_io_amqp0_native::EmitterError> {
//! let emitter = Emitter::start(BrokerConfig::new("amqp://localhost"), |_event| {});
//! emitter.ready().await?;
//! emitter.of("/").to("room-1").emit("news", &[Arg::string("hello"), Arg::json("42")]);
//! emitter.close().await;
//! # Ok(()) }
//! ```

use crate::bus::amqp::AmqpBus;
use crate::bus::{Bus, Connected, Endpoint, Link};
use crate::handoff::{Handoff, Sending};
use crate::outbox::Outbox;
use crate::packet::{self, Arg};
use crate::reconnect::{closed, keep_connected, Connecting, SessionEnd, SessionStart};
use crate::transport::{namespace_key, BrokerConfig};
use crate::wire::{Envelope, Message, PacketPart, Target, WriteFlags};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the emitter reports about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitterEvent {
    /// Connecting failed (each attempt is reported).
    Error(String),
    Disconnected(String),
    Reconnected {
        attempts: u32,
    },
    /// The outbox was full; this many of the oldest publishes were dropped.
    Dropped {
        count: u64,
    },
}

pub type EventSink = Arc<dyn Fn(EmitterEvent) + Send + Sync>;

/// Why [`Emitter::ready`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitterError {
    /// The first connection attempt failed (the emitter keeps retrying): what the broker, or the
    /// network, said.
    Connect(String),
    /// The emitter was closed before it connected.
    Closed,
}

impl std::fmt::Display for EmitterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmitterError::Connect(reason) => f.write_str(reason),
            EmitterError::Closed => f.write_str("the emitter was closed before it connected"),
        }
    }
}

impl std::error::Error for EmitterError {}

pub struct Emitter {
    uid: String,
    /// Connection state recovery's offsets (`<ms>-<sender>-<n>`): this emitter's sender id and
    /// how many it made.
    offset_sender: String,
    offsets_made: AtomicU64,
    config: BrokerConfig,
    bus: Arc<dyn Bus>,
    outbox: Outbox,
    handoff: Handoff,
    /// Dropped by `close()`: the sink may hold what keeps a host process alive.
    on_event: Mutex<Option<EventSink>>,
    /// `None` until the first connection attempt ends, then its outcome.
    first_outcome: watch::Sender<Option<Result<(), EmitterError>>>,
    closing: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The host calls [`send_queued`](Emitter::send_queued) once it has queued a turn's publishes
    /// (the Node binding, at the end of each JS turn), so a publish does not wake the connection
    /// task.
    host_sends: AtomicBool,
    pub published: AtomicU64,
}

impl Emitter {
    /// Starts connecting in the background (call inside a tokio runtime). `on_event` hears about
    /// connection problems; the emitter keeps retrying until [`close`](Self::close).
    pub fn start(
        config: BrokerConfig,
        on_event: impl Fn(EmitterEvent) + Send + Sync + 'static,
    ) -> Arc<Emitter> {
        let bus = Arc::new(AmqpBus::new(config.clone()));
        Emitter::start_on(bus, config, on_event)
    }

    /// Like [`start`](Self::start), on another bus than `config`'s broker (the tests' in-memory
    /// one); `config` still sets the outbox and the reconnect delays.
    pub(crate) fn start_on(
        bus: Arc<dyn Bus>,
        config: BrokerConfig,
        on_event: impl Fn(EmitterEvent) + Send + Sync + 'static,
    ) -> Arc<Emitter> {
        let id = crate::wire::random_uid();
        let emitter = Arc::new(Emitter {
            uid: format!("emitter-{id}"),
            offset_sender: format!("e{id}"),
            offsets_made: AtomicU64::new(0),
            outbox: Outbox::new(config.publish_buffer),
            handoff: Handoff::default(),
            bus,
            config,
            on_event: Mutex::new(Some(Arc::new(on_event))),
            first_outcome: watch::channel(None).0,
            closing: watch::channel(false).0,
            task: Mutex::default(),
            host_sends: AtomicBool::new(false),
            published: AtomicU64::new(0),
        });
        let task = tokio::spawn(emitter.clone().run());
        *emitter.task.lock() = Some(task);
        emitter
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Publishes dropped: the oldest of a full outbox, or unsent when closed without a broker.
    pub fn dropped(&self) -> u64 {
        self.outbox.dropped()
    }

    /// Publishes waiting to go out (e.g. while the broker is unreachable).
    pub fn buffered(&self) -> usize {
        self.outbox.len()
    }

    /// Resolves once the first connection attempt has succeeded, or with its error.
    pub async fn ready(&self) -> Result<(), EmitterError> {
        let mut outcome = self.first_outcome.subscribe();
        let result = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| EmitterError::Closed)?;
        result.clone().unwrap_or(Err(EmitterError::Closed))
    }

    /// Targets namespace `nsp` (every socket of it until narrowed).
    pub fn of(&self, nsp: &str) -> Broadcast<'_> {
        Broadcast {
            emitter: self,
            nsp: nsp.to_string(),
            target: Target::default(),
            flags: WriteFlags::default(),
            recoverable: false,
        }
    }

    /// Targets room `room` of the default namespace.
    pub fn to(&self, room: &str) -> Broadcast<'_> {
        self.of("/").to(room)
    }

    /// Sends `parts` (an already encoded packet) as a broadcast; the lowest-level entry point.
    pub(crate) fn publish(&self, nsp: &str, message: Message) {
        let envelope = Envelope::new(&self.uid, nsp, message);
        let key = namespace_key(nsp);
        let dropped = if self.host_sends.load(Ordering::Relaxed) {
            self.outbox.push_quietly(key, envelope)
        } else {
            self.outbox.push(key, envelope)
        };
        if let Some(count) = dropped {
            self.report(EmitterEvent::Dropped { count });
        }
    }

    /// From now on publishes only queue, and the host sends them with
    /// [`send_queued`](Self::send_queued) (see `handoff.rs`). For the Node binding.
    #[cfg(any(feature = "node", test))]
    pub(crate) fn sent_by_host(&self) {
        self.host_sends.store(true, Ordering::Relaxed);
    }

    /// Hands what the host queued to the link on the calling thread when it can, else wakes the
    /// connection task for it.
    #[cfg(any(feature = "node", test))]
    pub(crate) fn send_queued(&self) {
        self.handoff.send_at_end_of_turn(&self.sending());
    }

    /// Sends what waits, then closes the connection. Idempotent.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.on_event.lock().take();
    }

    /// A new offset for a stored broadcast (connection state recovery).
    fn next_offset(&self) -> String {
        let n = self.offsets_made.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}-{}-{n}", crate::recovery::now_ms(), self.offset_sender)
    }

    fn report(&self, event: EmitterEvent) {
        let sink = self.on_event.lock().clone();
        if let Some(sink) = sink {
            sink(event);
        }
    }

    async fn run(self: Arc<Self>) {
        let mut closing = self.closing.subscribe();
        keep_connected(&*self, &mut (), &mut closing).await;
    }

    /// Sends the outbox until closed (`Closed`, after a final flush) or the connection fails.
    async fn serve(&self, transport: &dyn Link, closing: &mut watch::Receiver<bool>) -> SessionEnd {
        loop {
            if let Err(error) = self.flush(transport).await {
                return SessionEnd::Lost(error);
            }
            tokio::select! {
                _ = self.outbox.wait() => {}
                _ = closed(closing) => {
                    // Written before the connection closes: the process may exit right after.
                    let flush = async {
                        self.flush(transport).await?;
                        transport.written().await
                    };
                    let limit = self.config.connect_timeout;
                    let flushed = tokio::time::timeout(limit, flush).await.unwrap_or_else(|_| {
                        Err(format!("the broker did not take the last publishes within {} ms", limit.as_millis()))
                    });
                    return match flushed {
                        Ok(()) => SessionEnd::Closed,
                        Err(error) => SessionEnd::Lost(error),
                    };
                }
            }
        }
    }

    /// The outcome of the first connection attempt, for `ready()` (later ones change nothing).
    fn first_outcome(&self, outcome: Result<(), EmitterError>) {
        self.first_outcome.send_if_modified(|first| {
            let unset = first.is_none();
            if unset {
                *first = Some(outcome);
            }
            unset
        });
    }

    async fn flush(&self, transport: &dyn Link) -> Result<(), String> {
        self.handoff.flush(transport, &self.sending()).await
    }

    fn sending(&self) -> Sending<'_> {
        Sending {
            outbox: &self.outbox,
            published: &self.published,
        }
    }
}

impl Connecting for Emitter {
    /// The emitter takes no commands between sessions.
    type Commands = ();

    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn reconnect_delays(&self) -> (Duration, Duration) {
        (self.config.reconnect_delay, self.config.reconnect_delay_max)
    }

    async fn connect(&self, _ever_connected: bool) -> Result<Connected, String> {
        let endpoint = Endpoint::publisher(format!("socket.io-amqp0-native {}", self.uid));
        self.bus.connect(&endpoint).await
    }

    async fn session(
        &self,
        connected: Connected,
        start: SessionStart,
        _: &mut (),
        closing: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        if start.ever_connected {
            self.report(EmitterEvent::Reconnected {
                attempts: start.attempts,
            });
        }
        self.first_outcome(Ok(()));
        self.handoff.attach(connected.link.clone());
        // A flush that fails while closing ends as lost: the loop then discards what is left.
        let end = self.serve(&*connected.link, closing).await;
        let lost = matches!(end, SessionEnd::Lost(_));
        self.handoff.detach(&*connected.link, lost, &self.sending());
        let _ = tokio::time::timeout(self.config.connect_timeout, connected.link.close()).await;
        end
    }

    fn connection_lost(&self, reason: String) {
        self.report(EmitterEvent::Disconnected(reason));
    }

    fn attempt_failed(&self, error: String) {
        self.first_outcome(Err(EmitterError::Connect(error.clone())));
        self.report(EmitterEvent::Error(error));
    }

    async fn wait_offline(
        &self,
        delay: Duration,
        _last_error: &str,
        _: &mut (),
        closing: &mut watch::Receiver<bool>,
    ) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = closed(closing) => false,
        }
    }

    fn closed_offline(&self, _: &mut ()) {
        // Closed without a broker: what waited cannot be sent.
        self.outbox.discard_all();
        self.first_outcome(Err(EmitterError::Closed));
    }
}

/// A set of target sockets in one namespace, narrowed like Socket.IO's `io.to(...).except(...)`.
pub struct Broadcast<'a> {
    emitter: &'a Emitter,
    nsp: String,
    target: Target,
    flags: WriteFlags,
    recoverable: bool,
}

impl Broadcast<'_> {
    /// Narrows to `target` (rooms and exceptions) at once.
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    pub fn flags(mut self, flags: WriteFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Connection state recovery: the packet gets an offset (as its last argument) and a copy in
    /// the servers' recovery log, so a client that was disconnected when it was sent still gets
    /// it when its session is restored. Not for volatile packets.
    pub fn recoverable(mut self) -> Self {
        self.recoverable = true;
        self
    }

    pub fn to(mut self, room: &str) -> Self {
        self.target.rooms.push(room.to_string());
        self
    }

    pub fn except(mut self, room: &str) -> Self {
        self.target.except.push(room.to_string());
        self
    }

    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    pub fn compress(mut self, compress: bool) -> Self {
        self.flags.compress = Some(compress);
        self
    }

    /// `emit(event, ...args)` to the target sockets, encoded as socket.io-parser does (servers
    /// with a custom parser need a sender that uses it: `emit_parts`).
    pub fn emit(self, event: &str, args: &[Arg]) {
        let offset = (self.recoverable && !self.flags.volatile).then(|| self.emitter.next_offset());
        let packet = match &offset {
            Some(offset) => {
                let mut args = args.to_vec();
                args.push(Arg::string(offset));
                packet::event(&self.nsp, event, &args)
            }
            None => packet::event(&self.nsp, event, args),
        };
        self.emit_encoded(packet, offset);
    }

    /// Sends an already encoded packet (one text or binary part per engine message).
    pub fn emit_parts(self, packet: Vec<PacketPart>) {
        self.emit_encoded(packet, None);
    }

    /// Sends an already encoded packet whose last argument is `offset` (a stored broadcast: see
    /// [`recoverable`](Self::recoverable)), or without one.
    pub fn emit_encoded(self, packet: Vec<PacketPart>, offset: Option<String>) {
        let message = Message::Broadcast {
            target: self.target,
            flags: self.flags,
            packet,
            ack: None,
            offset,
        };
        self.emitter.publish(&self.nsp, message);
    }

    pub fn sockets_join(self, rooms: &[&str]) {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        let message = Message::SocketsJoin {
            target: self.target,
            rooms,
        };
        self.emitter.publish(&self.nsp, message);
    }

    pub fn sockets_leave(self, rooms: &[&str]) {
        let rooms = rooms.iter().map(|r| r.to_string()).collect();
        let message = Message::SocketsLeave {
            target: self.target,
            rooms,
        };
        self.emitter.publish(&self.nsp, message);
    }

    pub fn disconnect_sockets(self, close: bool) {
        let message = Message::DisconnectSockets {
            target: self.target,
            close,
        };
        self.emitter.publish(&self.nsp, message);
    }

    /// `serverSideEmit(event, ...args)` to every server of the namespace (no acknowledgement).
    pub fn server_side_emit(self, event: &str, args: &[Arg]) {
        let mut values = vec![Arg::string(event)];
        values.extend_from_slice(args);
        self.server_side_emit_parts(packet::value_array(&values));
    }

    /// Sends already encoded server-side emit arguments (see `lib/payload.js`).
    pub fn server_side_emit_parts(self, args: Vec<PacketPart>) {
        let message = Message::ServerSideEmit {
            request_id: None,
            args,
        };
        self.emitter.publish(&self.nsp, message);
    }
}
