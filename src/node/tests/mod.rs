//! The cluster protocol, run on the in-memory bus (`bus::memory`): several nodes in one process,
//! on tokio's paused clock, so every interleaving a test sets up happens the same way on every
//! run, and a heartbeat interval passes in no real time. No broker, no JS: the host is the test,
//! draining what a node hands it.

use crate::bus::memory::{MemoryBroker, MemoryBus};
use crate::node::{Drained, Node, NodeConfig};
use crate::transport::{namespace_key, BrokerConfig, CLUSTER_KEY};
use crate::wire::{self, Message, PacketPart, Target, WriteFlags};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Heartbeats so rare that a test that converges has done it by hello and answer alone.
const RARE_HEARTBEATS: Duration = Duration::from_secs(3600);

fn config(room_routing: bool) -> NodeConfig {
    let mut broker = BrokerConfig::new("memory://");
    broker.reconnect_delay = Duration::from_millis(50);
    broker.reconnect_delay_max = Duration::from_millis(200);
    NodeConfig {
        broker,
        queue_prefix: "test".into(),
        instance_name: "node".into(),
        prefetch: 100,
        max_pending_deliveries: 10_000,
        heartbeat_interval: RARE_HEARTBEATS,
        heartbeat_timeout: RARE_HEARTBEATS * 3,
        room_routing,
        queue_expiry: Duration::from_secs(60),
        recovery: None,
    }
}

/// One server: its node and how often it woke its host.
struct Server {
    node: Arc<Node>,
    wakes: Arc<AtomicUsize>,
}

impl Server {
    fn new(broker: &Arc<MemoryBroker>, config: NodeConfig) -> Server {
        Server::with_host(broker, config, |_| {})
    }

    /// A server whose host runs `on_wake` with the node each time it is woken.
    fn with_host(
        broker: &Arc<MemoryBroker>,
        config: NodeConfig,
        on_wake: impl Fn(&Node) + Send + Sync + 'static,
    ) -> Server {
        let wakes = Arc::new(AtomicUsize::new(0));
        let node_slot: Arc<OnceLock<Weak<Node>>> = Arc::default();
        let (counter, slot) = (wakes.clone(), node_slot.clone());
        let waker = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Some(node) = slot.get().and_then(Weak::upgrade) {
                on_wake(&node);
            }
        });
        let bus = Arc::new(MemoryBus(broker.clone()));
        let node = Node::with_bus(config, waker, bus);
        let _ = node_slot.set(Arc::downgrade(&node));
        node.start();
        Server { node, wakes }
    }

    /// A server serving `/`, started on `broker` (not awaited: see [`Server::serving`]).
    async fn serving(broker: &Arc<MemoryBroker>, config: NodeConfig) -> Server {
        Server::new(broker, config).bound().await
    }

    /// Serves `/` (as the adapter does: the namespace's state exists before it is bound).
    async fn bound(self) -> Server {
        self.node.namespace("/");
        self.node
            .bind_namespace("/")
            .await
            .expect("binding / on the in-memory bus");
        self
    }

    fn count(&self, nsp: &str) -> usize {
        self.node.server_count(nsp)
    }

    /// Joins a local socket to rooms, as the adapter does (index and room bindings together).
    fn join(&self, sid: &str, rooms: &[&str]) {
        let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        crate::node::NamespaceHandle::of(&self.node, "/").add_all(sid, &rooms);
    }

    fn broadcast(&self, rooms: &[&str], text: &str) {
        self.node.publish("/", packet_to(rooms, text));
        self.node.send_queued();
    }

    fn drain(&self) -> Vec<Drained> {
        self.node.drain()
    }

    /// The packets drained, as text (other work is dropped).
    fn packets(&self) -> Vec<String> {
        self.drain()
            .into_iter()
            .filter_map(|item| match item {
                Drained::Broadcast { packet, .. } => match &packet[0] {
                    PacketPart::Text(text) => Some(text.clone()),
                    PacketPart::Binary(_) => None,
                },
                _ => None,
            })
            .collect()
    }
}

/// A plain broadcast of a one-part text packet.
fn packet_to(rooms: &[&str], text: &str) -> Message {
    Message::Broadcast {
        target: target(rooms),
        flags: WriteFlags::default(),
        packet: vec![PacketPart::Text(text.into())],
        ack: None,
        offset: None,
    }
}

fn target(rooms: &[&str]) -> Target {
    Target {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        except: Vec::new(),
    }
}

/// Runs the other tasks until `done` holds, failing after `within` of (paused) time.
async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within {within:?} (virtual): {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets every task run until nothing is left to do now (time does not pass).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn all_count(servers: &[Server], expected: usize) -> bool {
    servers.iter().all(|s| s.count("/") == expected)
}

/// Three servers serving `/` on a new broker, counting each other.
/// Two servers serving "/" that count each other.
async fn pair(room_routing: bool) -> (Arc<MemoryBroker>, Server, Server) {
    let broker = MemoryBroker::new();
    let a = Server::serving(&broker, config(room_routing)).await;
    let b = Server::serving(&broker, config(room_routing)).await;
    until(Duration::from_millis(100), "both count 2", || {
        a.count("/") == 2 && b.count("/") == 2
    })
    .await;
    (broker, a, b)
}

/// A server serving "/" and one whose host drains the moment it is woken, as the JS thread does
/// when it runs on the other core (each wake-up's batch kept, in order; none kept yet), counting
/// each other.
async fn eager_pair() -> (
    Arc<MemoryBroker>,
    Server,
    Server,
    Arc<Mutex<Vec<Vec<Drained>>>>,
) {
    let broker = MemoryBroker::new();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let kept = batches.clone();
    let plain = Server::serving(&broker, config(false)).await;
    let eager = Server::with_host(&broker, config(false), move |node| {
        kept.lock().push(node.drain());
    })
    .bound()
    .await;
    until(Duration::from_millis(100), "both count 2", || {
        plain.count("/") == 2 && eager.count("/") == 2
    })
    .await;
    batches.lock().clear();
    (broker, plain, eager, batches)
}

async fn three() -> (Arc<MemoryBroker>, [Server; 3]) {
    let broker = MemoryBroker::new();
    let servers = [
        Server::serving(&broker, config(false)).await,
        Server::serving(&broker, config(false)).await,
        Server::serving(&broker, config(false)).await,
    ];
    until(Duration::from_millis(100), "3 count 3", || {
        all_count(&servers, 3)
    })
    .await;
    (broker, servers)
}

mod delivery;
mod emitter;
mod handle;
mod handoff;
mod membership;
mod requests;
