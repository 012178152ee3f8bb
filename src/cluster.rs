//! The cluster node: one per Socket.IO server (one `createAdapter()` use), shared by all of that
//! server's namespaces. It owns the broker session on the tokio runtime, the namespaces' room
//! indexes, the list of peers and the pending requests; it turns local operations into messages,
//! and incoming messages into work for the host (the JS adapter) — only when the host is needed.
//!
//! Threads: the host calls the synchronous methods on its own thread (the JS thread); the
//! connection task (see `connection.rs`) and the consumer loop run on tokio. They meet in:
//! - the `outbox` (bounded, drops the oldest): publishes, in call order, to the connection task;
//! - `control` (mpsc): namespace bindings, to the connection task;
//! - `inbox` (bounded deque): work waiting for the host, taken whole by `drain`;
//! - the room indexes (one mutex per namespace), `peers` and `requests` (mutexes).
//!
//! The host is woken through `waker` at most once per batch. What Rust can answer alone never wakes
//! it: a broadcast with no local recipient is dropped, a fetch or ack broadcast with no local
//! recipient is answered directly, heartbeats and late replies are handled here.

use crate::bus::amqp::AmqpBus;
use crate::bus::Bus;
use crate::connection::panic_text;
use crate::membership::Peers;
use crate::outbox::Outbox;
use crate::recovery::{Recovery, RecoveryConfig, Restored, SessionToPersist, LOG_KEY};
use crate::requests::{Departure, Outcome, Reply, Requests};
use crate::room_bindings::RoomBindings;
use crate::room_index::{RoomIndex, Slot, ROOM_CREATED, ROOM_DELETED, SOCKET_JOINED, SOCKET_LEFT};
use crate::sequence::{Tracker, Verdict};
use crate::throttle::Throttle;
use crate::transport::{namespace_key, room_key, routable_room, server_key, BrokerConfig};
use crate::wire::{self, AckRequest, Envelope, Message, PacketPart, Target, WriteFlags};
use futures_lite::FutureExt;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The time, from tokio's clock: the real one, or in the protocol tests a paused one.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub broker: BrokerConfig,
    pub queue_prefix: String,
    pub instance_name: String,
    /// Unacknowledged AMQP messages the broker may push before waiting (backpressure).
    pub prefetch: u16,
    /// Work items that may wait for the host; past that the consumer stops acking.
    pub max_pending_deliveries: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Bind a key per room with local members and send single-room broadcasts by room (see
    /// `room_bindings.rs`).
    pub room_routing: bool,
    /// How long the broker keeps this server's queue after its connection is lost (`x-expires`):
    /// what is sent meanwhile waits for the reconnect.
    pub queue_expiry: Duration,
    /// Connection state recovery (see `recovery`): `None` when the host has it off.
    pub recovery: Option<RecoveryConfig>,
}

/// One namespace served by this node.
pub struct Namespace {
    pub name: String,
    pub index: Mutex<RoomIndex>,
}

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

/// Binding changes for the connection task (publishes go through the [`Outbox`]).
pub(crate) enum Control {
    Bind {
        nsp: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    Unbind {
        nsp: String,
    },
}

/// Counters a user (and the benchmark) can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub own_ignored: AtomicU64,
    pub no_local_recipient: AtomicU64,
    pub answered_without_host: AtomicU64,
    pub delivered: AtomicU64,
    pub host_wakeups: AtomicU64,
    pub malformed: AtomicU64,
    pub reconnects: AtomicU64,
    /// Redeliveries after a reconnect that had been handled already, dropped.
    pub duplicates: AtomicU64,
    /// Messages other servers sent to this one that never arrived (sequence gaps).
    pub missed: AtomicU64,
    /// Reconnects that found this server's queue gone (a broker restart, or an outage longer
    /// than the queue expiry).
    pub queues_lost: AtomicU64,
}

pub type Waker = Arc<dyn Fn() + Send + Sync>;

pub struct Node {
    pub(crate) uid: String,
    pub(crate) queue: String,
    pub(crate) config: NodeConfig,
    /// The broker (RabbitMQ; in the protocol tests, an in-memory bus).
    pub(crate) bus: Arc<dyn Bus>,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Namespaces the host asked to serve: bound again by every new session.
    pub(crate) wanted: Mutex<BTreeSet<String>>,
    /// Namespaces bound in the current session: what heartbeats announce.
    pub(crate) bound: Mutex<BTreeSet<String>>,
    /// Namespaces whose key the queue has at the broker. The queue outlives a session, so its
    /// bindings do too: a namespace released while offline is unbound by the next session.
    pub(crate) queue_namespaces: Mutex<BTreeSet<String>>,
    /// What this server has seen of each sender: drops redeliveries, counts gaps.
    pub(crate) tracker: Mutex<Tracker>,
    pub(crate) peers: Mutex<Peers>,
    /// A peer said hello: the connection task owes it a heartbeat.
    pub(crate) hello_answer_due: AtomicBool,
    /// Room routing's state (unused without it).
    pub(crate) rooms: RoomBindings,
    requests: Mutex<Requests>,
    pub(crate) outbox: Outbox,
    control: mpsc::UnboundedSender<Control>,
    pending_control: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
    inbox: Mutex<VecDeque<Inbound>>,
    inbox_space: Notify,
    waker: Mutex<Option<Waker>>,
    wake_pending: AtomicBool,
    pub(crate) closing: watch::Sender<bool>,
    runtime: OnceLock<Handle>,
    task: Mutex<Option<JoinHandle<()>>>,
    malformed_reports: Throttle,
    /// A failpoint for the tests that prove a panic costs one broadcast, not the process.
    panic_on_next_broadcast: AtomicBool,
    pub stats: Stats,
    /// Connection state recovery's log and restores, when the host turned it on.
    pub recovery: Option<Arc<Recovery>>,
}

impl Node {
    pub fn new(config: NodeConfig, waker: Waker) -> Arc<Node> {
        let bus = Arc::new(AmqpBus::new(config.broker.clone()));
        Node::with_bus(config, waker, bus)
    }

    /// A node on another bus than the broker of `config` (the protocol tests' in-memory one).
    pub fn with_bus(config: NodeConfig, waker: Waker, bus: Arc<dyn Bus>) -> Arc<Node> {
        let uid = random_uid();
        let queue = format!("{}.{}.{}", config.queue_prefix, config.instance_name, uid);
        let (control, receiver) = mpsc::unbounded_channel();
        let outbox = Outbox::new(config.broker.publish_buffer);
        let recovery = config.recovery.clone().map(|c| Arc::new(Recovery::new(c)));
        Arc::new(Node {
            uid,
            queue,
            config,
            bus,
            namespaces: RwLock::default(),
            wanted: Mutex::default(),
            bound: Mutex::default(),
            queue_namespaces: Mutex::default(),
            tracker: Mutex::default(),
            peers: Mutex::default(),
            hello_answer_due: AtomicBool::new(false),
            rooms: RoomBindings::default(),
            requests: Mutex::default(),
            outbox,
            control,
            pending_control: Mutex::new(Some(receiver)),
            inbox: Mutex::default(),
            inbox_space: Notify::new(),
            waker: Mutex::new(Some(waker)),
            wake_pending: AtomicBool::new(false),
            closing: watch::channel(false).0,
            runtime: OnceLock::new(),
            task: Mutex::default(),
            malformed_reports: Throttle::new(Duration::from_secs(5)),
            panic_on_next_broadcast: AtomicBool::new(false),
            stats: Stats::default(),
            recovery,
        })
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// Starts connecting in the background. Must be called inside a tokio runtime; idempotent.
    pub fn start(self: &Arc<Self>) {
        let Some(control) = self.pending_control.lock().take() else {
            return;
        };
        let runtime = Handle::current();
        let _ = self.runtime.set(runtime.clone());
        let node = self.clone();
        let task = async move {
            let outcome = AssertUnwindSafe(node.clone().run(control))
                .catch_unwind()
                .await;
            if let Err(panic) = outcome {
                node.report(format!(
                    "internal error: the broker connection task stopped ({}); this server now \
                     serves only its own clients",
                    panic_text(&panic)
                ));
            }
        };
        *self.task.lock() = Some(runtime.spawn(task));
        if let Some(recovery) = &self.recovery {
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
            let _guard = runtime.enter();
            recovery.start(publish, report, self.closing.subscribe());
        }
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
    fn unpin_rooms(&self, handle: u64) {
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

    /// The namespace's state on this node, created on first use.
    pub fn namespace(&self, name: &str) -> Arc<Namespace> {
        if let Some(ns) = self.namespaces.read().get(name) {
            return ns.clone();
        }
        self.namespaces
            .write()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Namespace {
                    name: name.to_string(),
                    index: Mutex::new(RoomIndex::new()),
                })
            })
            .clone()
    }

    /// Starts receiving the namespace's messages; resolves once the broker has the binding.
    pub async fn bind_namespace(&self, name: &str) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        let command = Control::Bind {
            nsp: name.to_string(),
            done,
        };
        self.control
            .send(command)
            .map_err(|_| "the adapter is closed".to_string())?;
        result
            .await
            .unwrap_or_else(|_| Err("the adapter closed before the namespace was bound".into()))
    }

    /// Stops receiving the namespace's messages and forgets its rooms.
    pub fn release_namespace(&self, name: &str) {
        self.namespaces.write().remove(name);
        let bound = self.rooms.bound_in(name);
        self.rooms.mark(name, bound.iter().map(String::as_str));
        let _ = self.control.send(Control::Unbind {
            nsp: name.to_string(),
        });
    }

    /// Whether, with room routing, `room` of `nsp` gets its own binding (not a socket id, not too
    /// long for a routing key). False without room routing.
    pub fn routes_room(&self, nsp: &str, room: &str) -> bool {
        self.config.room_routing && routable_room(nsp, room)
    }

    /// Rooms of `nsp` were created or deleted on this server: with room routing, the keys of those
    /// that [`routes_room`](Self::routes_room) are bound or unbound soon after (see
    /// [`rooms_bound`](Self::rooms_bound)).
    pub fn rooms_changed<'a>(&self, nsp: &str, rooms: impl IntoIterator<Item = &'a str>) {
        if self.config.room_routing {
            let routable = rooms.into_iter().filter(|room| routable_room(nsp, room));
            self.rooms.mark(nsp, routable);
        }
    }

    /// Resolves once the room bindings changed before the call are in place at the broker (at
    /// once without room routing, or without a connection).
    pub async fn rooms_bound(&self) {
        if self.config.room_routing {
            self.rooms.settled().await;
        }
    }

    /// Whether `room` of `nsp` has local members, or a restore pinned it (so its key should be
    /// bound).
    pub(crate) fn has_room(&self, nsp: &str, room: &str) -> bool {
        let namespaces = self.namespaces.read();
        namespaces
            .get(nsp)
            .is_some_and(|ns| ns.index.lock().has_room(room))
            || self.rooms.is_pinned(nsp, room)
    }

    /// Every (namespace, room) with local members.
    pub(crate) fn all_rooms(&self) -> Vec<(String, String)> {
        let namespaces = self.namespaces.read();
        let mut all = Vec::new();
        for ns in namespaces.values() {
            let index = ns.index.lock();
            all.extend(index.room_names().map(|r| (ns.name.clone(), r.to_string())));
        }
        all
    }

    /// Makes the consumer panic while handling the next broadcast (a test failpoint).
    pub fn inject_panic_on_next_broadcast(&self) {
        self.panic_on_next_broadcast.store(true, Ordering::Relaxed);
    }

    /// Requests still waiting for replies or their timeout.
    pub fn pending_requests(&self) -> usize {
        self.requests.lock().len()
    }

    /// How many servers serve `nsp`, this one included.
    pub fn server_count(&self, nsp: &str) -> usize {
        1 + self.peers.lock().serving_count(nsp)
    }

    /// Queues a message for every server of the namespace (with room routing, a plain broadcast to
    /// one room only for the servers with members in it). Never blocks: with the outbox full the
    /// oldest waiting message is dropped, counted and reported.
    ///
    /// The host's publishes (this, [`reply`](Self::reply), the requests) wait in the outbox until
    /// the host calls [`send_queued`](Self::send_queued): everything one JS turn emits leaves in
    /// one hand-off to the connection task.
    pub fn publish(&self, nsp: &str, message: Message) {
        self.record_own(nsp, &message);
        let key = self
            .room_routing_key(nsp, &message)
            .unwrap_or_else(|| namespace_key(nsp));
        self.queue(key, nsp, message);
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
    fn record_own(&self, nsp: &str, message: &Message) {
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

    /// Wakes the connection task for the publishes the host queued.
    pub fn send_queued(&self) {
        self.outbox.wake();
    }

    /// The room key for a broadcast to exactly one room, when every server of the namespace binds
    /// room keys. Not for ack broadcasts (every server must answer with its count), nor for a room
    /// a `socketsJoin` just named (the servers joining sockets to it may not have bound it yet).
    fn room_routing_key(&self, nsp: &str, message: &Message) -> Option<String> {
        if !self.config.room_routing {
            return None;
        }
        match message {
            Message::SocketsJoin { rooms, .. } => {
                self.rooms.joined_by_request(nsp, rooms, now());
                None
            }
            Message::Broadcast {
                target, ack: None, ..
            } if target.rooms.len() == 1 => {
                let room = &target.rooms[0];
                let routable =
                    self.rooms.routable(nsp, room, now()) && self.peers.lock().all_route_rooms(nsp);
                routable.then(|| room_key(nsp, room)).flatten()
            }
            _ => None,
        }
    }

    /// Queues a reply to one server's request (sent by [`send_queued`](Self::send_queued)).
    pub fn reply(&self, to: &str, nsp: &str, message: Message) {
        self.queue(server_key(to), nsp, message);
    }

    /// Opens a request to every other server serving `nsp` and publishes it (`make` receives the
    /// request id). Returns the id and how many servers will answer; with none, nothing is sent and
    /// no request stays open.
    pub fn request(
        self: &Arc<Self>,
        nsp: &str,
        timeout: Duration,
        make: impl FnOnce(u32) -> Message,
    ) -> (u32, usize) {
        let servers = self.peers.lock().serving(nsp);
        let expected = servers.len();
        if expected == 0 {
            return (0, 0);
        }
        let id = self.requests.lock().open(nsp, servers);
        self.expire_after(id, timeout);
        self.publish(nsp, make(id));
        (id, expected)
    }

    /// Like [`request`](Self::request), for replies counted by the host (ack broadcasts): the
    /// request stays open until `timeout` whatever arrives.
    pub fn open_ended_request(
        self: &Arc<Self>,
        nsp: &str,
        timeout: Duration,
        make: impl FnOnce(u32) -> Message,
    ) -> u32 {
        let id = self.requests.lock().open_ended();
        self.expire_after(id, timeout);
        self.publish(nsp, make(id));
        id
    }

    /// Takes everything waiting for the host, targets resolved against the current room index.
    pub fn drain(&self) -> Vec<Drained> {
        // Clear before taking, so an item queued after the take wakes the host again.
        self.wake_pending.store(false, Ordering::SeqCst);
        let inbound = std::mem::take(&mut *self.inbox.lock());
        self.inbox_space.notify_waiters();
        let mut out = Vec::with_capacity(inbound.len());
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
            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            out.push(drained);
        }
        out
    }

    /// Says goodbye, flushes queued publishes, closes the connection and stops waking the host.
    /// Idempotent.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.waker.lock().take();
    }

    /// Queues a publish and wakes the connection task (for what Rust sends by itself).
    fn send(&self, key: String, nsp: &str, message: Message) {
        if let Some(count) = self.outbox.push(key, self.envelope(nsp, message)) {
            self.push(Inbound::Ready(Drained::Dropped { count }));
        }
    }

    /// Queues a publish for the host's next [`send_queued`](Self::send_queued).
    fn queue(&self, key: String, nsp: &str, message: Message) {
        if let Some(count) = self.outbox.push_quietly(key, self.envelope(nsp, message)) {
            self.push(Inbound::Ready(Drained::Dropped { count }));
        }
    }

    /// A hello or heartbeat: the namespaces this server serves, and whether it binds its rooms.
    pub(crate) fn announcement(&self, hello: bool) -> Message {
        let namespaces = self.bound.lock().iter().cloned().collect();
        let room_routing = self.config.room_routing;
        if hello {
            Message::Hello {
                namespaces,
                room_routing,
            }
        } else {
            Message::Heartbeat {
                namespaces,
                room_routing,
            }
        }
    }

    pub(crate) fn envelope(&self, nsp: &str, message: Message) -> Envelope {
        Envelope::new(&self.uid, nsp, message)
    }

    fn expire_after(self: &Arc<Self>, id: u32, timeout: Duration) {
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let node = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(node) = node.upgrade() {
                let answered = node.requests.lock().expire(id);
                if let Some(answered) = answered {
                    node.push(Inbound::Ready(Drained::RequestDone {
                        request_id: id,
                        timed_out: true,
                        answered: answered as u32,
                        incomplete: None,
                    }));
                }
            }
        });
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
    async fn dispatch_contained(&self, from: &str, nsp: &str, message: Message) {
        let handled = AssertUnwindSafe(async {
            let is_broadcast = matches!(message, Message::Broadcast { .. });
            if is_broadcast && self.panic_on_next_broadcast.swap(false, Ordering::Relaxed) {
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
    async fn dispatch(&self, from: &str, nsp: &str, message: Message) {
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
                self.wait_for_inbox_space().await;
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
    async fn apply_membership(
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
        self.wait_for_inbox_space().await;
        self.push(Inbound::Ready(Drained::RoomsChanged {
            nsp: ns.name.clone(),
            joined: join,
            changes,
        }));
    }

    fn on_reply(&self, request_id: u32, from: &str, message: Message) {
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

    fn request_done(&self, request_id: u32, outcome: Outcome) {
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
    fn peer_announced(&self, uid: &str, namespaces: Vec<String>, room_routing: bool, now: Instant) {
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

    fn on_malformed(&self, error: wire::DecodeError) {
        let count = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        // Garbage can arrive in floods; tell the user at most every few seconds.
        if self.malformed_reports.due() {
            self.report(format!(
                "dropped an incoming message ({count} so far): {error}"
            ));
        }
    }

    async fn push_targeted(
        &self,
        nsp: Arc<Namespace>,
        target: Target,
        from: String,
        work: TargetedWork,
    ) {
        self.wait_for_inbox_space().await;
        self.push(Inbound::Targeted {
            nsp,
            target,
            from,
            work,
        });
    }

    async fn wait_for_inbox_space(&self) {
        loop {
            let space = self.inbox_space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if self.inbox.lock().len() < self.config.max_pending_deliveries {
                return;
            }
            space.await;
        }
    }

    pub(crate) fn report(&self, message: String) {
        self.push(Inbound::Ready(Drained::Error(message)));
    }

    pub(crate) fn push(&self, item: Inbound) {
        self.inbox.lock().push_back(item);
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.stats.host_wakeups.fetch_add(1, Ordering::Relaxed);
            if let Some(wake) = self.waker.lock().as_ref() {
                wake();
            }
        }
    }
}

/// How long a sender's sequence numbers are remembered after its last message (at least; twice
/// the queue expiry when that is longer): a server back from a long outage still has its gaps
/// counted, and emitters that came and went are forgotten.
const SENDER_MEMORY: Duration = Duration::from_secs(15 * 60);

/// 64 random bits as hex: the node's identity on the bus (and part of its queue name).
pub(crate) fn random_uid() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::time::SystemTime;
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
