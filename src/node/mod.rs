//! The cluster node: one per Socket.IO server (one `createAdapter()` use), shared by all of that
//! server's namespaces. It owns the broker session on the tokio runtime, the namespaces' room
//! indexes, the list of peers and the pending requests; it turns local operations into messages,
//! and incoming messages into work for the host (the JS adapter) — only when the host is needed.
//!
//! Threads: the host calls the synchronous methods on its own thread (the JS thread); the
//! connection task (`session.rs`) and the consumer loop run on tokio. They meet in:
//! - the `outbox` (bounded, drops the oldest): publishes, in call order, to the connection task;
//! - `control` (mpsc): namespace bindings, to the connection task;
//! - `inbox` (bounded deque): work waiting for the host, taken whole by `drain`;
//! - the room indexes (one mutex per namespace), `peers` and `requests` (mutexes).
//!
//! The host is woken through `waker` at most once per batch. What Rust can answer alone never wakes
//! it: a broadcast with no local recipient is dropped, a fetch or ack broadcast with no local
//! recipient is answered directly, heartbeats and late replies are handled here.
//!
//! The files follow the packet's path: `handle.rs` (a namespace as the host uses it) → this file
//! (the outbox, requests) → `session.rs` (connected sessions, through the bus) → another node's
//! `receive.rs` (consumer, dispatch) → `inbox.rs` → that node's host; `restore.rs` is connection
//! state recovery's part; `tests/` runs the protocol on the in-memory bus.

mod expiry;
mod handle;
mod inbox;
mod receive;
mod restore;
mod session;
#[cfg(test)]
mod tests;

pub use handle::{Joined, NamespaceHandle, RequestSent, BINDING_PENDING};
pub use inbox::{Drained, RoomChange, Waker};

use crate::bus::amqp::AmqpBus;
use crate::bus::Bus;
use crate::handoff::{Handoff, Sending};
use crate::membership::Peers;
use crate::outbox::Outbox;
use crate::reconnect::panic_text;
use crate::recovery::{Recovery, RecoveryConfig};
use crate::requests::Requests;
use crate::room_bindings::RoomBindings;
use crate::room_index::RoomIndex;
use crate::sequence::Tracker;
use crate::throttle::Throttle;
use crate::transport::{namespace_key, room_key, routable_room, server_key, BrokerConfig};
use crate::wire::{random_uid, Envelope, Message};
use expiry::Deadlines;
use futures_lite::FutureExt;
use inbox::{Inbound, Inbox};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The time, from tokio's clock: the real one, or in the protocol tests a paused one.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

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
    /// When open requests time out (`expiry.rs`).
    deadlines: Arc<Deadlines>,
    pub(crate) outbox: Outbox,
    /// Hands the outbox to the link, from the JS thread or the connection task.
    pub(crate) handoff: Handoff,
    control: mpsc::UnboundedSender<Control>,
    pending_control: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
    inbox: Inbox,
    pub(crate) closing: watch::Sender<bool>,
    runtime: OnceLock<Handle>,
    task: Mutex<Option<JoinHandle<()>>>,
    malformed_reports: Throttle,
    /// A failpoint for the tests that prove a panic costs one broadcast, not the process.
    #[cfg(feature = "failpoints")]
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
        let max_pending = config.max_pending_deliveries;
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
            deadlines: Arc::default(),
            outbox,
            handoff: Handoff::default(),
            control,
            pending_control: Mutex::new(Some(receiver)),
            inbox: Inbox::new(waker, max_pending),
            closing: watch::channel(false).0,
            runtime: OnceLock::new(),
            task: Mutex::default(),
            malformed_reports: Throttle::new(Duration::from_secs(5)),
            #[cfg(feature = "failpoints")]
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
        runtime.spawn(Node::expire_requests(
            Arc::downgrade(self),
            self.deadlines.clone(),
        ));
        let _guard = runtime.enter();
        self.start_recovery();
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
    #[cfg(feature = "failpoints")]
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

    /// Sends the publishes the host queued: hands them to the link on the calling thread when it
    /// can (see `handoff.rs`), else wakes the connection task for them.
    pub fn send_queued(&self) {
        self.handoff.send_at_end_of_turn(&self.sending());
    }

    /// The outbox and its publish counter, for a hand-off.
    pub(crate) fn sending(&self) -> Sending<'_> {
        Sending {
            outbox: &self.outbox,
            published: &self.stats.published,
        }
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
        let (drained, delivered) = self.inbox.drain();
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        drained
    }

    /// Says goodbye, flushes queued publishes, closes the connection and stops waking the host.
    /// Idempotent.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.deadlines.close();
        self.inbox.close();
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

    fn expire_after(&self, id: u32, timeout: Duration) {
        self.deadlines
            .add(id, tokio::time::Instant::now() + timeout);
    }

    pub(crate) fn report(&self, message: String) {
        self.push(Inbound::Ready(Drained::Error(message)));
    }

    pub(crate) fn push(&self, item: Inbound) {
        self.inbox.push(item);
    }

    /// How often the host was woken to drain (one wake-up per batch).
    pub fn host_wakeups(&self) -> u64 {
        self.inbox.wakeups()
    }
}
