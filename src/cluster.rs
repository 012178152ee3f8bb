//! The cluster node: one per Socket.IO server (one `createAdapter()` use), shared by all of that
//! server's namespaces. It owns the broker session on the tokio runtime and the namespaces' room
//! indexes, turns local operations into messages, and turns incoming messages into work for the
//! host (the JS adapter) — only when a local socket is concerned.
//!
//! Threads: the host calls the synchronous methods on its own thread (the JS thread); the connection
//! task, the command loop and the consumer loop run on tokio. They meet in three places:
//! - `commands` (bounded mpsc): publishes and bindings, in call order, to the command loop;
//! - `inbox` (bounded deque): decoded messages that have a local recipient, waiting for the host;
//! - the room indexes (one mutex per namespace), read by the consumer to filter.
//!
//! The host is woken through `waker` at most once per batch and takes the whole inbox in `drain`.

use crate::room_index::{RoomIndex, Slot};
use crate::transport::{namespace_key, Transport, TransportConfig};
use crate::wire::{self, Envelope, Message, PacketPart, Target, WriteFlags, PROTOCOL_VERSION};
use futures_lite::StreamExt;
use lapin::options::BasicAckOptions;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub url: String,
    pub exchange: String,
    pub queue_prefix: String,
    pub instance_name: String,
    pub connect_timeout: Duration,
    /// Unacknowledged deliveries the broker may push before waiting (backpressure).
    pub prefetch: u16,
    /// Publishes that may wait for the broker; past that they are dropped and counted.
    pub publish_buffer: usize,
    /// Decoded messages that may wait for the host; past that the consumer stops acking.
    pub max_pending_deliveries: usize,
}

/// One namespace served by this node.
pub struct Namespace {
    pub name: String,
    pub index: Mutex<RoomIndex>,
}

/// Work handed to the host by [`Node::drain`].
#[derive(Debug)]
pub enum Drained {
    /// Write `packet` to the local sockets in `slots` of namespace `nsp`.
    Broadcast {
        nsp: String,
        slots: Vec<Slot>,
        flags: WriteFlags,
        packet: Vec<PacketPart>,
    },
    /// Something the user should hear about (the adapter's `error` event).
    Error(String),
}

enum Inbound {
    Broadcast {
        nsp: Arc<Namespace>,
        target: Target,
        flags: WriteFlags,
        packet: Vec<PacketPart>,
    },
    Error(String),
}

enum Command {
    Publish {
        key: String,
        envelope: Envelope,
    },
    Bind {
        key: String,
        done: oneshot::Sender<Result<(), String>>,
    },
    Unbind {
        key: String,
    },
}

/// Counters a user (and the benchmark) can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub publish_dropped: AtomicU64,
    pub received: AtomicU64,
    pub own_ignored: AtomicU64,
    pub no_local_recipient: AtomicU64,
    pub delivered: AtomicU64,
    pub host_wakeups: AtomicU64,
    pub malformed: AtomicU64,
}

pub type Waker = Arc<dyn Fn() + Send + Sync>;

pub struct Node {
    uid: String,
    queue: String,
    config: NodeConfig,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    commands: mpsc::Sender<Command>,
    pending_commands: Mutex<Option<mpsc::Receiver<Command>>>,
    inbox: Mutex<VecDeque<Inbound>>,
    inbox_space: Notify,
    waker: Mutex<Option<Waker>>,
    wake_pending: AtomicBool,
    closing: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    last_malformed_report: Mutex<Option<Instant>>,
    pub stats: Stats,
}

impl Node {
    pub fn new(config: NodeConfig, waker: Waker) -> Arc<Node> {
        let uid = random_uid();
        let queue = format!("{}.{}.{}", config.queue_prefix, config.instance_name, uid);
        let (commands, receiver) = mpsc::channel(config.publish_buffer.max(1));
        Arc::new(Node {
            uid,
            queue,
            config,
            namespaces: RwLock::default(),
            commands,
            pending_commands: Mutex::new(Some(receiver)),
            inbox: Mutex::default(),
            inbox_space: Notify::new(),
            waker: Mutex::new(Some(waker)),
            wake_pending: AtomicBool::new(false),
            closing: watch::channel(false).0,
            task: Mutex::default(),
            last_malformed_report: Mutex::default(),
            stats: Stats::default(),
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
        let Some(commands) = self.pending_commands.lock().take() else {
            return;
        };
        let node = self.clone();
        *self.task.lock() = Some(tokio::spawn(node.run(commands)));
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
        let command = Command::Bind {
            key: namespace_key(name),
            done,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| "the adapter is closed".to_string())?;
        result
            .await
            .unwrap_or_else(|_| Err("the adapter closed before the namespace was bound".into()))
    }

    /// Stops receiving the namespace's messages and forgets its rooms.
    pub fn release_namespace(&self, name: &str) {
        self.namespaces.write().remove(name);
        let key = namespace_key(name);
        let _ = self.commands.try_send(Command::Unbind { key });
    }

    /// Queues a message for every server of the namespace. Never blocks: with the buffer full the
    /// message is dropped and counted.
    pub fn publish(&self, nsp: &str, message: Message) {
        let envelope = Envelope {
            v: PROTOCOL_VERSION,
            uid: self.uid.clone(),
            nsp: nsp.to_string(),
            message,
        };
        let command = Command::Publish {
            key: namespace_key(nsp),
            envelope,
        };
        if self.commands.try_send(command).is_err() {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes everything waiting for the host, recipients resolved against the current room index.
    pub fn drain(&self) -> Vec<Drained> {
        // Clear before taking, so a message queued after the take wakes the host again.
        self.wake_pending.store(false, Ordering::SeqCst);
        let inbound = std::mem::take(&mut *self.inbox.lock());
        self.inbox_space.notify_waiters();
        let mut out = Vec::with_capacity(inbound.len());
        for item in inbound {
            match item {
                Inbound::Broadcast {
                    nsp,
                    target,
                    flags,
                    packet,
                } => {
                    let slots = nsp.index.lock().recipients(&target);
                    if slots.is_empty() {
                        continue;
                    }
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    out.push(Drained::Broadcast {
                        nsp: nsp.name.clone(),
                        slots,
                        flags,
                        packet,
                    });
                }
                Inbound::Error(message) => out.push(Drained::Error(message)),
            }
        }
        out
    }

    /// Flushes queued publishes, closes the connection and stops waking the host. Idempotent.
    pub async fn close(&self) {
        self.closing.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.waker.lock().take();
    }

    async fn run(self: Arc<Self>, mut commands: mpsc::Receiver<Command>) {
        let mut closing = self.closing.subscribe();
        let transport_config = TransportConfig {
            url: self.config.url.clone(),
            exchange: self.config.exchange.clone(),
            queue: self.queue.clone(),
            connection_name: format!(
                "socket.io-amqp0-native {} {}",
                self.config.instance_name, self.uid
            ),
            connect_timeout: self.config.connect_timeout,
            prefetch: self.config.prefetch,
        };
        let connected = tokio::select! {
          result = Transport::connect(&transport_config) => result,
          _ = closed(&mut closing) => Err("the adapter was closed while connecting".into()),
        };
        let transport = match connected {
            Ok((transport, consumer)) => {
                tokio::spawn(self.clone().consume(consumer));
                transport
            }
            Err(error) => {
                if !*closing.borrow() {
                    self.report(error.clone());
                }
                // Without a broker every later command fails with the same reason.
                loop {
                    tokio::select! {
                      Some(command) = commands.recv() => self.refuse(command, &error),
                      _ = closed(&mut closing) => break,
                    }
                }
                return;
            }
        };
        loop {
            tokio::select! {
              biased;
              Some(command) = commands.recv() => self.execute(&transport, command).await,
              _ = closed(&mut closing) => break,
            }
        }
        // Whatever was emitted before close() still goes out.
        while let Ok(command) = commands.try_recv() {
            self.execute(&transport, command).await;
        }
        transport.close().await;
    }

    async fn execute(&self, transport: &Transport, command: Command) {
        match command {
            Command::Publish { key, envelope } => {
                let body = wire::encode(&envelope);
                match transport.publish(&key, &body).await {
                    Ok(()) => self.stats.published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
            Command::Bind { key, done } => {
                let _ = done.send(transport.bind(&key).await);
            }
            Command::Unbind { key } => {
                if let Err(error) = transport.unbind(&key).await {
                    self.report(error);
                }
            }
        }
    }

    fn refuse(&self, command: Command, reason: &str) {
        match command {
            Command::Publish { .. } => {
                self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Command::Bind { done, .. } => {
                let _ = done.send(Err(reason.to_string()));
            }
            Command::Unbind { .. } => {}
        }
    }

    async fn consume(self: Arc<Self>, mut consumer: lapin::Consumer) {
        while let Some(delivery) = consumer.next().await {
            match delivery {
                Ok(delivery) => {
                    self.on_message(&delivery.data).await;
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(error) => {
                    if !*self.closing.borrow() {
                        self.report(format!("the broker connection failed: {error}"));
                    }
                    break;
                }
            }
        }
    }

    async fn on_message(&self, body: &[u8]) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let envelope = match wire::decode(body) {
            Ok(envelope) => envelope,
            Err(error) => return self.on_malformed(error),
        };
        if envelope.uid == self.uid {
            self.stats.own_ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(nsp) = self.namespaces.read().get(&envelope.nsp).cloned() else {
            return;
        };
        match envelope.message {
            Message::Broadcast {
                target,
                flags,
                packet,
            } => {
                if !nsp.index.lock().has_recipient(&target) {
                    self.stats
                        .no_local_recipient
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.wait_for_inbox_space().await;
                self.push(Inbound::Broadcast {
                    nsp,
                    target,
                    flags,
                    packet,
                });
            }
        }
    }

    fn on_malformed(&self, error: wire::DecodeError) {
        let count = self.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        // Garbage can arrive in floods; tell the user at most every few seconds.
        let mut last = self.last_malformed_report.lock();
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
            *last = Some(Instant::now());
            drop(last);
            self.report(format!(
                "dropped an incoming message ({count} so far): {error}"
            ));
        }
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

    fn report(&self, message: String) {
        self.push(Inbound::Error(message));
    }

    fn push(&self, item: Inbound) {
        self.inbox.lock().push_back(item);
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.stats.host_wakeups.fetch_add(1, Ordering::Relaxed);
            if let Some(wake) = self.waker.lock().as_ref() {
                wake();
            }
        }
    }
}

/// Resolves once `close()` has been called.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// 64 random bits as hex: the node's identity on the bus (and part of its queue name).
fn random_uid() -> String {
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
