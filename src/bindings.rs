//! The napi-rs surface: thin wrappers that convert between JS values and the plain-Rust core.
//! Nothing here decides behaviour; see `cluster` and `room_index`.

use crate::cluster::{Drained, Namespace, Node, NodeConfig};
use crate::room_index::RoomIndex;
use crate::wire::{Message, PacketPart, Target, WriteFlags};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Validated options (index.js checks types and fills defaults before calling).
#[napi(object)]
pub struct NodeOptions {
    pub url: String,
    pub exchange_name: String,
    pub queue_prefix: String,
    pub instance_name: String,
    pub connect_timeout_ms: u32,
    pub prefetch: u32,
    pub publish_buffer: u32,
    pub max_pending_deliveries: u32,
}

/// A JS-side encoded packet chunk: the parser's string or a binary attachment.
type JsPart = Either<String, Buffer>;

#[napi(object)]
pub struct DrainedItem {
    /// "broadcast" or "error".
    pub kind: String,
    pub nsp: Option<String>,
    pub slots: Option<Uint32Array>,
    pub packet: Option<Vec<JsPart>>,
    pub volatile: Option<bool>,
    pub compress: Option<bool>,
    pub message: Option<String>,
}

#[napi(object)]
pub struct NodeStats {
    pub published: f64,
    pub publish_dropped: f64,
    pub received: f64,
    pub own_ignored: f64,
    pub no_local_recipient: f64,
    pub delivered: f64,
    pub host_wakeups: f64,
    pub malformed: f64,
}

#[napi(object)]
pub struct SocketRemoval {
    pub slot: u32,
    pub rooms: Vec<String>,
    pub deleted: Vec<bool>,
}

/// One server's broker session (see `cluster::Node`).
#[napi]
pub struct NativeNode {
    node: Arc<Node>,
}

#[napi]
impl NativeNode {
    /// `wake` is called (with no arguments) when `drain()` has something; at most once per batch.
    #[napi(constructor)]
    pub fn new(
        options: NodeOptions,
        wake: ThreadsafeFunction<(), (), (), Status, false>,
    ) -> Result<Self> {
        let config = NodeConfig {
            url: options.url,
            exchange: options.exchange_name,
            queue_prefix: options.queue_prefix,
            instance_name: options.instance_name,
            connect_timeout: Duration::from_millis(options.connect_timeout_ms.into()),
            prefetch: options.prefetch.min(u16::MAX as u32) as u16,
            publish_buffer: options.publish_buffer as usize,
            max_pending_deliveries: options.max_pending_deliveries.max(1) as usize,
        };
        let waker = Arc::new(move || {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        });
        let node = Node::new(config, waker);
        let starter = node.clone();
        napi::bindgen_prelude::within_runtime_if_available(move || starter.start());
        Ok(NativeNode { node })
    }

    #[napi(getter)]
    pub fn uid(&self) -> String {
        self.node.uid().to_string()
    }

    #[napi(getter)]
    pub fn queue_name(&self) -> String {
        self.node.queue_name().to_string()
    }

    #[napi]
    pub fn namespace(&self, name: String) -> NativeNamespace {
        NativeNamespace {
            node: Some(self.node.clone()),
            ns: self.node.namespace(&name),
        }
    }

    #[napi]
    pub async fn bind_namespace(&self, name: String) -> Result<()> {
        self.node
            .bind_namespace(&name)
            .await
            .map_err(Error::from_reason)
    }

    #[napi]
    pub fn release_namespace(&self, name: String) {
        self.node.release_namespace(&name);
    }

    #[napi]
    pub async fn close(&self) {
        self.node.close().await;
    }

    #[napi]
    pub fn drain(&self) -> Vec<DrainedItem> {
        self.node.drain().into_iter().map(to_js_item).collect()
    }

    #[napi]
    pub fn stats(&self) -> NodeStats {
        let s = &self.node.stats;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
        NodeStats {
            published: read(&s.published),
            publish_dropped: read(&s.publish_dropped),
            received: read(&s.received),
            own_ignored: read(&s.own_ignored),
            no_local_recipient: read(&s.no_local_recipient),
            delivered: read(&s.delivered),
            host_wakeups: read(&s.host_wakeups),
            malformed: read(&s.malformed),
        }
    }
}

fn to_js_item(item: Drained) -> DrainedItem {
    let empty = DrainedItem {
        kind: String::new(),
        nsp: None,
        slots: None,
        packet: None,
        volatile: None,
        compress: None,
        message: None,
    };
    match item {
        Drained::Broadcast {
            nsp,
            slots,
            flags,
            packet,
        } => DrainedItem {
            kind: "broadcast".into(),
            nsp: Some(nsp),
            slots: Some(Uint32Array::new(slots)),
            packet: Some(packet.into_iter().map(to_js_part).collect()),
            volatile: Some(flags.volatile),
            compress: flags.compress,
            ..empty
        },
        Drained::Error(message) => DrainedItem {
            kind: "error".into(),
            message: Some(message),
            ..empty
        },
    }
}

fn to_js_part(part: PacketPart) -> JsPart {
    match part {
        PacketPart::Text(text) => Either::A(text),
        PacketPart::Binary(bytes) => Either::B(bytes.into()),
    }
}

fn from_js_part(part: JsPart) -> PacketPart {
    match part {
        Either::A(text) => PacketPart::Text(text),
        Either::B(bytes) => PacketPart::Binary(bytes.to_vec()),
    }
}

/// One namespace's room index on this server, plus the broadcast entry point.
#[napi]
pub struct NativeNamespace {
    /// `None` for a namespace whose server has no usable broker session: it serves locally only.
    node: Option<Arc<Node>>,
    ns: Arc<Namespace>,
}

impl NativeNamespace {
    fn index(&self) -> parking_lot::MutexGuard<'_, RoomIndex> {
        self.ns.index.lock()
    }
}

#[napi]
impl NativeNamespace {
    /// A room index with no broker behind it (the adapter of a server whose URL was unusable).
    #[napi(factory)]
    pub fn standalone() -> Self {
        NativeNamespace {
            node: None,
            ns: Arc::new(Namespace {
                name: String::new(),
                index: parking_lot::Mutex::new(RoomIndex::new()),
            }),
        }
    }

    /// The local sockets a target matches (Socket.IO's `apply`), as slots.
    #[napi]
    pub fn recipients(&self, rooms: Vec<String>, except: Vec<String>) -> Uint32Array {
        Uint32Array::new(self.index().recipients(&Target { rooms, except }))
    }

    /// Returns `[slot, change(room0), change(room1), ...]` (ROOM_CREATED=1 | SOCKET_JOINED=2).
    #[napi]
    pub fn add_all(&self, id: String, rooms: Vec<String>) -> Uint32Array {
        let outcome = self.index().add_all(&id, &rooms);
        let mut out = Vec::with_capacity(rooms.len() + 1);
        out.push(outcome.slot);
        out.extend(outcome.changes.into_iter().map(u32::from));
        Uint32Array::new(out)
    }

    /// SOCKET_LEFT=1 | ROOM_DELETED=2.
    #[napi]
    pub fn del(&self, id: String, room: String) -> u32 {
        self.index().del(&id, &room).into()
    }

    #[napi]
    pub fn del_all(&self, id: String) -> Option<SocketRemoval> {
        let (slot, departures) = self.index().del_all(&id)?;
        let (rooms, deleted) = departures
            .into_iter()
            .map(|d| (d.room.to_string(), d.room_deleted))
            .unzip();
        Some(SocketRemoval {
            slot,
            rooms,
            deleted,
        })
    }

    #[napi]
    pub fn socket_rooms(&self, id: String) -> Option<Vec<String>> {
        let index = self.index();
        let rooms = index.socket_rooms(&id)?;
        Some(rooms.iter().map(|r| r.to_string()).collect())
    }

    #[napi]
    pub fn room_members(&self, room: String) -> Option<Vec<String>> {
        let members = self.index().room_members(&room)?;
        Some(members.iter().map(|s| s.to_string()).collect())
    }

    #[napi]
    pub fn room_names(&self) -> Vec<String> {
        self.index().room_names().map(|r| r.to_string()).collect()
    }

    #[napi]
    pub fn socket_ids(&self) -> Vec<String> {
        self.index().socket_ids().map(|s| s.to_string()).collect()
    }

    #[napi]
    pub fn room_count(&self) -> u32 {
        self.index().room_count() as u32
    }

    #[napi]
    pub fn socket_count(&self) -> u32 {
        self.index().socket_count() as u32
    }

    #[napi]
    pub fn has_room(&self, room: String) -> bool {
        self.index().has_room(&room)
    }

    #[napi]
    pub fn has_socket(&self, id: String) -> bool {
        self.index().has_socket(&id)
    }

    /// Publishes the packet to the other servers (unless `local_only`) and returns the slots of the
    /// local sockets it targets.
    #[napi]
    pub fn broadcast(
        &self,
        packet: Vec<JsPart>,
        rooms: Vec<String>,
        except: Vec<String>,
        volatile: bool,
        compress: Option<bool>,
        local_only: bool,
    ) -> Uint32Array {
        let target = Target { rooms, except };
        let local = self.index().recipients(&target);
        if let (false, Some(node)) = (local_only, &self.node) {
            let message = Message::Broadcast {
                target,
                flags: WriteFlags { volatile, compress },
                packet: packet.into_iter().map(from_js_part).collect(),
            };
            node.publish(&self.ns.name, message);
        }
        Uint32Array::new(local)
    }
}
