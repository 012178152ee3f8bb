//! `NativeNode` and `NativeNamespace`: the adapter's side of the napi surface.

use super::from_js::{JsPacket, JsRooms};
use super::{millis, to_js_packet, to_js_parts, BrokerOptions, JsPart};
use crate::node::{Drained, Joined, NamespaceHandle, Node, NodeConfig, RequestSent};
use crate::recovery::{RecoveryConfig, SessionToPersist};
use crate::room_index::RoomIndex;
use crate::wire::{Message, Target, WriteFlags};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Validated options (index.js checks types and fills defaults before calling).
#[napi(object)]
pub struct NodeOptions {
    pub broker: BrokerOptions,
    pub queue_prefix: String,
    pub instance_name: String,
    pub prefetch: u32,
    pub max_pending_deliveries: u32,
    pub heartbeat_interval_ms: u32,
    pub heartbeat_timeout_ms: u32,
    pub room_routing: bool,
    pub queue_expiry_ms: u32,
    /// Connection state recovery (absent: off).
    pub recovery: Option<RecoveryOptions>,
}

/// The recovery log's settings (lib/options.js derives them from `maxDisconnectionDuration`).
#[napi(object)]
pub struct RecoveryOptions {
    pub stream: String,
    pub session_ttl_ms: f64,
    pub max_age_ms: f64,
    pub max_bytes: f64,
}

/// A session found by `restoreSession`: pass `handle` to `finishRestore` in the same JS turn.
#[napi(object)]
pub struct FoundSession {
    pub handle: f64,
    pub sid: String,
    pub rooms: Vec<String>,
    /// `socket.data`, encoded as the host gave it.
    pub data: Vec<JsPart>,
    /// The missed packets found in the log, in log order: encoded parts each.
    pub packets: Vec<Vec<JsPart>>,
}

/// `finishRestore`: as `addAll`'s result (slot, then one change per room of the session, in the
/// order `restoreSession` gave them), and the live packets recorded for the socket since the scan.
#[napi(object)]
pub struct FinishedRestore {
    pub joined: Uint32Array,
    pub packets: Vec<Vec<JsPart>>,
}

/// What one `drain()` took, in arrival order. The common work, a broadcast without an ack request,
/// comes in flat columns rather than one object each (an object per delivery, its typed array and
/// its property names cost the JS thread more than writing the packet did): broadcast `i` writes
/// `packets[i]` (the text itself when the packet is one text part, else its parts) to the sockets
/// at `slots[end(i - 1)..end(i)]`, described by `broadcasts[3i..3i + 3]`: the index of its
/// namespace in `namespaces`, `end(i)`, and its flags (`BROADCAST_*`). Any other work is in
/// `items`; `itemsAfter[j]` is how many of the broadcasts come before `items[j]`.
#[napi(object)]
pub struct DrainedBatch {
    pub namespaces: Vec<String>,
    pub broadcasts: Uint32Array,
    pub slots: Uint32Array,
    pub packets: Vec<Either<String, Vec<JsPart>>>,
    pub items: Vec<DrainedItem>,
    pub items_after: Uint32Array,
}

/// `DrainedBatch.broadcasts` flag bits.
const BROADCAST_VOLATILE: u32 = 1;
const BROADCAST_COMPRESS_SET: u32 = 2;
const BROADCAST_COMPRESS: u32 = 4;

/// One unit of work for the JS adapter other than a plain broadcast, told apart by `kind` (the
/// variant's name in camelCase).
#[napi(discriminant = "kind", discriminant_case = "camelCase")]
pub enum DrainedItem {
    /// Write `packet` to the sockets at `slots`, report the client count to `from`'s request
    /// `requestId` and forward each client's reply until `timeoutMs`.
    Broadcast {
        nsp: String,
        slots: Uint32Array,
        packet: Vec<JsPart>,
        volatile: bool,
        compress: Option<bool>,
        from: String,
        request_id: u32,
        timeout_ms: u32,
    },
    /// A remote `socketsJoin`/`socketsLeave`, already applied: one entry per change in `rooms`,
    /// `ids` and `changes` (room_index bits), for the room events.
    Rooms {
        nsp: String,
        joined: bool,
        rooms: Vec<String>,
        ids: Vec<String>,
        changes: Uint32Array,
    },
    DisconnectSockets {
        nsp: String,
        slots: Uint32Array,
        close: bool,
    },
    /// Describe the sockets at `slots` and answer `from`'s request `requestId`.
    Fetch {
        nsp: String,
        slots: Uint32Array,
        from: String,
        request_id: u32,
    },
    /// `packet` holds the arguments; with `from` and `requestId` the sender waits for a reply.
    ServerSideEmit {
        nsp: String,
        packet: Vec<JsPart>,
        from: Option<String>,
        request_id: Option<u32>,
    },
    /// A reply to this server's request: `replyTo` is "fetch", "serverSideEmit", "ack" (with
    /// `packet`) or "clientCount" (with `count`).
    Reply {
        request_id: u32,
        reply_to: String,
        packet: Option<Vec<JsPart>>,
        count: Option<u32>,
    },
    /// The request ended: every answer arrived, it timed out (`answered` servers had), or it is
    /// `incomplete` (which servers' answers are missing and why).
    Done {
        request_id: u32,
        timed_out: bool,
        answered: u32,
        incomplete: Option<String>,
    },
    Error {
        message: String,
    },
    /// The broker connection was lost (reconnecting).
    ConnectionLost {
        message: String,
    },
    Reconnected {
        attempts: u32,
    },
    /// The oldest `count` buffered publishes were dropped since the last report.
    Dropped {
        count: u32,
    },
    /// `count` messages of sender `from` to `routingKey` never arrived.
    Missed {
        from: String,
        routing_key: String,
        count: u32,
    },
}

#[napi(object)]
pub struct NodeStats {
    pub published: f64,
    pub publish_dropped: f64,
    pub received: f64,
    pub own_ignored: f64,
    pub no_local_recipient: f64,
    pub answered_without_host: f64,
    pub delivered: f64,
    pub host_wakeups: f64,
    pub malformed: f64,
    pub reconnects: f64,
    pub duplicates: f64,
    pub missed: f64,
    pub queues_lost: f64,
    /// Connection state recovery: sessions written to the log, restores that found their
    /// session, restores that did not, and scans of the log (restores arriving together share one).
    pub sessions_persisted: f64,
    pub sessions_restored: f64,
    pub sessions_not_restored: f64,
    pub recovery_scans: f64,
    /// Connection state recovery: the recovery log is open in this session (false while it is
    /// not ready, e.g. right after a broker restart, without streams, or with recovery off).
    pub recovery_log_ready: bool,
    /// A gauge: publishes waiting to go out (during an outage: for the broker to come back).
    pub buffered: f64,
    /// A gauge: requests still waiting for replies or their timeout.
    pub pending_requests: f64,
}

#[napi(object)]
pub struct SocketRemoval {
    pub slot: u32,
    pub rooms: Vec<String>,
    pub deleted: Vec<bool>,
}

/// A request sent to the other servers: its id and how many servers will answer (0: none, and
/// nothing was sent).
#[napi(object)]
pub struct RequestHandle {
    pub request_id: u32,
    pub expected: u32,
}

/// One server's broker session (see `node::Node`).
#[napi]
pub struct NativeNode {
    node: Arc<Node>,
    /// Test failpoint: the next `sendQueued()` panics.
    #[cfg(feature = "failpoints")]
    panic_on_next_send: std::sync::atomic::AtomicBool,
}

#[napi]
impl NativeNode {
    /// `wake` is called (with no arguments) when `drain()` has something; at most once per batch.
    #[napi(constructor, catch_unwind)]
    pub fn new(
        options: NodeOptions,
        wake: ThreadsafeFunction<(), (), (), Status, false>,
    ) -> Result<Self> {
        let config = NodeConfig {
            broker: options.broker.into(),
            queue_prefix: options.queue_prefix,
            instance_name: options.instance_name,
            prefetch: options.prefetch.min(u16::MAX as u32) as u16,
            max_pending_deliveries: options.max_pending_deliveries.max(1) as usize,
            heartbeat_interval: millis(options.heartbeat_interval_ms),
            heartbeat_timeout: millis(options.heartbeat_timeout_ms),
            queue_expiry: millis(options.queue_expiry_ms),
            room_routing: options.room_routing,
            recovery: options.recovery.map(|r| RecoveryConfig {
                stream: r.stream,
                session_ttl: Duration::from_millis(r.session_ttl_ms.max(1.0) as u64),
                max_age: Duration::from_millis(r.max_age_ms.max(1000.0) as u64),
                max_bytes: r.max_bytes.max(1.0) as u64,
            }),
        };
        let waker = Arc::new(move || {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        });
        let node = Node::new(config, waker);
        let starter = node.clone();
        super::in_runtime(move || starter.start());
        Ok(NativeNode {
            node,
            #[cfg(feature = "failpoints")]
            panic_on_next_send: Default::default(),
        })
    }

    #[napi(getter, catch_unwind)]
    pub fn uid(&self) -> String {
        self.node.uid().to_string()
    }

    #[napi(getter, catch_unwind)]
    pub fn queue_name(&self) -> String {
        self.node.queue_name().to_string()
    }

    #[napi(catch_unwind)]
    pub fn namespace(&self, name: String) -> NativeNamespace {
        NativeNamespace {
            handle: NamespaceHandle::of(&self.node, &name),
        }
    }

    #[napi(catch_unwind)]
    pub async fn bind_namespace(&self, name: String) -> Result<()> {
        self.node
            .bind_namespace(&name)
            .await
            .map_err(Error::from_reason)
    }

    #[napi(catch_unwind)]
    pub fn release_namespace(&self, name: String) {
        self.node.release_namespace(&name);
    }

    #[napi(catch_unwind)]
    pub async fn close(&self) {
        self.node.close().await;
    }

    /// Sends what this JS turn queued (the publishes of broadcasts, requests and replies wait for
    /// this call, so one turn's publishes leave together).
    #[napi(catch_unwind)]
    pub fn send_queued(&self) {
        #[cfg(feature = "failpoints")]
        if self.panic_on_next_send.swap(false, Ordering::Relaxed) {
            panic!("panic injected by a test");
        }
        self.node.send_queued();
    }

    #[napi(catch_unwind)]
    pub fn drain(&self) -> DrainedBatch {
        to_js_batch(self.node.drain())
    }

    #[napi(catch_unwind)]
    pub fn stats(&self) -> NodeStats {
        let s = &self.node.stats;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let recovery = self.node.recovery.as_ref().map(|r| &r.stats);
        NodeStats {
            published: read(&s.published),
            publish_dropped: self.node.outbox.dropped() as f64,
            received: read(&s.received),
            own_ignored: read(&s.own_ignored),
            no_local_recipient: read(&s.no_local_recipient),
            answered_without_host: read(&s.answered_without_host),
            delivered: read(&s.delivered),
            host_wakeups: self.node.host_wakeups() as f64,
            malformed: read(&s.malformed),
            reconnects: read(&s.reconnects),
            duplicates: read(&s.duplicates),
            missed: read(&s.missed),
            queues_lost: read(&s.queues_lost),
            sessions_persisted: recovery.map_or(0.0, |r| read(&r.persisted)),
            sessions_restored: recovery.map_or(0.0, |r| read(&r.restored)),
            sessions_not_restored: recovery.map_or(0.0, |r| read(&r.not_restored)),
            recovery_scans: recovery.map_or(0.0, |r| read(&r.scans)),
            recovery_log_ready: self.node.recovery.as_ref().is_some_and(|r| r.ready()),
            buffered: self.node.outbox.len() as f64,
            pending_requests: self.node.pending_requests() as f64,
        }
    }
}

/// Test failpoints (the `failpoints` cargo feature: `npm run build:test`), not in the release addon.
#[cfg(feature = "failpoints")]
#[napi]
impl NativeNode {
    /// Test failpoint: panics inside this call (it must surface as a JS exception).
    #[napi(js_name = "__panicForTest", catch_unwind)]
    pub fn panic_for_test(&self) {
        panic!("panic injected by a test");
    }

    /// Test failpoint: the next `sendQueued()` (at the end of a JS turn that published) panics.
    #[napi(js_name = "__panicOnNextSendForTest", catch_unwind)]
    pub fn panic_on_next_send_for_test(&self) {
        self.panic_on_next_send.store(true, Ordering::Relaxed);
    }

    /// Test failpoint: the consumer panics while handling the next broadcast.
    #[napi(js_name = "__panicOnNextBroadcastForTest", catch_unwind)]
    pub fn panic_on_next_broadcast_for_test(&self) {
        self.node.inject_panic_on_next_broadcast();
    }
}

fn to_js_batch(drained: Vec<Drained>) -> DrainedBatch {
    let mut namespaces: Vec<String> = Vec::new();
    let mut broadcasts = Vec::new();
    let mut slots = Vec::new();
    let mut packets = Vec::new();
    let mut items = Vec::new();
    let mut items_after = Vec::new();
    for work in drained {
        match work {
            Drained::Broadcast {
                nsp,
                slots: to,
                flags,
                packet,
                ack: None,
            } => {
                // Usually one namespace: a linear search beats hashing.
                let namespace = match namespaces.iter().position(|known| *known == nsp) {
                    Some(index) => index,
                    None => {
                        namespaces.push(nsp);
                        namespaces.len() - 1
                    }
                };
                slots.extend_from_slice(&to);
                broadcasts.extend([namespace as u32, slots.len() as u32, broadcast_flags(flags)]);
                packets.push(to_js_packet(packet));
            }
            other => {
                items_after.push(packets.len() as u32);
                items.push(to_js_item(other));
            }
        }
    }
    DrainedBatch {
        namespaces,
        broadcasts: Uint32Array::new(broadcasts),
        slots: Uint32Array::new(slots),
        packets,
        items,
        items_after: Uint32Array::new(items_after),
    }
}

fn broadcast_flags(flags: WriteFlags) -> u32 {
    let volatile = if flags.volatile {
        BROADCAST_VOLATILE
    } else {
        0
    };
    let compress = match flags.compress {
        None => 0,
        Some(false) => BROADCAST_COMPRESS_SET,
        Some(true) => BROADCAST_COMPRESS_SET | BROADCAST_COMPRESS,
    };
    volatile | compress
}

fn to_js_item(item: Drained) -> DrainedItem {
    let saturating = |count: u64| count.min(u64::from(u32::MAX)) as u32;
    match item {
        Drained::Broadcast {
            nsp,
            slots,
            flags,
            packet,
            ack: Some((from, ack)),
        } => DrainedItem::Broadcast {
            nsp,
            slots: Uint32Array::new(slots),
            packet: to_js_parts(packet),
            volatile: flags.volatile,
            compress: flags.compress,
            from,
            request_id: ack.request_id,
            timeout_ms: ack.timeout_ms,
        },
        Drained::Broadcast { ack: None, .. } => {
            unreachable!("to_js_batch puts plain broadcasts in its columns")
        }
        Drained::RoomsChanged {
            nsp,
            joined,
            changes,
        } => {
            let mut rooms = Vec::with_capacity(changes.len());
            let mut ids = Vec::with_capacity(changes.len());
            let mut bits = Vec::with_capacity(changes.len());
            for change in changes {
                rooms.push(change.room);
                ids.push(change.socket_id);
                bits.push(u32::from(change.change));
            }
            DrainedItem::Rooms {
                nsp,
                joined,
                rooms,
                ids,
                changes: Uint32Array::new(bits),
            }
        }
        Drained::DisconnectSockets { nsp, slots, close } => DrainedItem::DisconnectSockets {
            nsp,
            slots: Uint32Array::new(slots),
            close,
        },
        Drained::FetchSockets {
            nsp,
            slots,
            from,
            request_id,
        } => DrainedItem::Fetch {
            nsp,
            slots: Uint32Array::new(slots),
            from,
            request_id,
        },
        Drained::ServerSideEmit {
            nsp,
            args,
            reply_to,
        } => {
            let (from, request_id) = reply_to.unzip();
            DrainedItem::ServerSideEmit {
                nsp,
                packet: to_js_parts(args),
                from,
                request_id,
            }
        }
        Drained::Reply {
            request_id,
            message,
        } => {
            let (reply_to, packet, count) = match message {
                Message::FetchSocketsResponse { sockets, .. } => ("fetch", Some(sockets), None),
                Message::ServerSideEmitResponse { reply, .. } => {
                    ("serverSideEmit", Some(reply), None)
                }
                Message::BroadcastClientCount { count, .. } => ("clientCount", None, Some(count)),
                Message::BroadcastAck { reply, .. } => ("ack", Some(reply), None),
                other => unreachable!("not a reply: {other:?}"),
            };
            DrainedItem::Reply {
                request_id,
                reply_to: reply_to.into(),
                packet: packet.map(to_js_parts),
                count,
            }
        }
        Drained::RequestDone {
            request_id,
            timed_out,
            answered,
            incomplete,
        } => DrainedItem::Done {
            request_id,
            timed_out,
            answered,
            incomplete,
        },
        Drained::Error(message) => DrainedItem::Error { message },
        Drained::Disconnected(message) => DrainedItem::ConnectionLost { message },
        Drained::Reconnected { attempts } => DrainedItem::Reconnected { attempts },
        Drained::Dropped { count } => DrainedItem::Dropped {
            count: saturating(count),
        },
        Drained::Missed { from, key, count } => DrainedItem::Missed {
            from,
            routing_key: key,
            count: saturating(count),
        },
    }
}

/// One namespace's room index on this server, and its cluster operations (see
/// `node::NamespaceHandle`): conversions only.
#[napi]
pub struct NativeNamespace {
    handle: NamespaceHandle,
}

impl NativeNamespace {
    fn index(&self) -> parking_lot::MutexGuard<'_, RoomIndex> {
        self.handle.index()
    }
}

fn target(rooms: JsRooms, except: JsRooms) -> Target {
    Target {
        rooms: rooms.0,
        except: except.0,
    }
}

/// `addAll`'s answer: `[slot, change(room0), change(room1), ...]`.
fn joined(joined: Joined) -> Uint32Array {
    let mut out = Vec::with_capacity(joined.changes.len() + 1);
    out.push(joined.slot);
    out.extend(joined.changes.into_iter().map(u32::from));
    Uint32Array::new(out)
}

fn request_handle(sent: RequestSent) -> RequestHandle {
    RequestHandle {
        request_id: sent.request_id,
        expected: sent.expected as u32,
    }
}

#[napi]
impl NativeNamespace {
    /// A room index with no broker behind it (the adapter of a server whose URL was unusable).
    #[napi(factory, catch_unwind)]
    pub fn standalone() -> Self {
        NativeNamespace {
            handle: NamespaceHandle::standalone(),
        }
    }

    /// The local sockets a target matches (Socket.IO's `apply`), as slots.
    #[napi(catch_unwind)]
    pub fn recipients(
        &self,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
    ) -> Uint32Array {
        Uint32Array::new(self.handle.recipients(&target(rooms, except)))
    }

    /// Returns `[slot, change(room0), change(room1), ...]` (ROOM_CREATED=1 | SOCKET_JOINED=2, and
    /// BINDING_PENDING=4 for a created room whose room-routing binding is on its way: `roomsBound()`
    /// resolves once it is in place).
    #[napi(catch_unwind)]
    pub fn add_all(&self, id: String, rooms: Vec<String>) -> Uint32Array {
        joined(self.handle.add_all(&id, &rooms))
    }

    /// Connection state recovery: writes the session of a socket that disconnected (sent with the
    /// next `sendQueued`, or by `close()`).
    #[napi(catch_unwind)]
    pub fn persist_session(
        &self,
        sid: String,
        pid: String,
        rooms: Vec<String>,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] data: JsPacket,
    ) {
        let data = data.0;
        let session = SessionToPersist {
            sid,
            pid,
            rooms,
            data,
        };
        self.handle.persist_session(session);
    }

    /// Connection state recovery: the session `pid` and the packets its client missed since
    /// `offset`, or null. Call `finishRestore(handle, sid)` in the same JS turn as the result.
    #[napi(catch_unwind)]
    pub async fn restore_session(&self, pid: String, offset: String) -> Option<FoundSession> {
        let (handle, restored) = self.handle.restore_session(&pid, &offset).await?;
        Some(FoundSession {
            handle: handle as f64,
            sid: restored.sid,
            rooms: restored.rooms,
            data: to_js_parts(restored.data),
            packets: restored
                .packets
                .into_iter()
                .map(|p| to_js_parts(p.parts))
                .collect(),
        })
    }

    /// Puts the restored socket into the index (as `addAll(sid, rooms)` with the session's rooms)
    /// and returns the live packets recorded for it since the scan; null when the restore cannot
    /// finish (it was abandoned, or recorded too much).
    #[napi(catch_unwind)]
    pub fn finish_restore(&self, handle: f64, sid: String) -> Option<FinishedRestore> {
        let (added, packets) = self.handle.finish_restore(handle as u64, &sid)?;
        Some(FinishedRestore {
            joined: joined(added),
            packets: packets.into_iter().map(to_js_parts).collect(),
        })
    }

    /// SOCKET_LEFT=1 | ROOM_DELETED=2.
    #[napi(catch_unwind)]
    pub fn del(&self, id: String, room: String) -> u32 {
        self.handle.del(&id, &room).into()
    }

    #[napi(catch_unwind)]
    pub fn del_all(&self, id: String) -> Option<SocketRemoval> {
        let (slot, left) = self.handle.del_all(&id)?;
        let (rooms, deleted) = left.into_iter().unzip();
        Some(SocketRemoval {
            slot,
            rooms,
            deleted,
        })
    }

    #[napi(catch_unwind)]
    pub fn socket_rooms(&self, id: String) -> Option<Vec<String>> {
        let index = self.index();
        let rooms = index.socket_rooms(&id)?;
        Some(rooms.iter().map(|r| r.to_string()).collect())
    }

    #[napi(catch_unwind)]
    pub fn room_members(&self, room: String) -> Option<Vec<String>> {
        let members = self.index().room_members(&room)?;
        Some(members.iter().map(|s| s.to_string()).collect())
    }

    #[napi(catch_unwind)]
    pub fn room_names(&self) -> Vec<String> {
        self.index().room_names().map(|r| r.to_string()).collect()
    }

    #[napi(catch_unwind)]
    pub fn socket_ids(&self) -> Vec<String> {
        self.index().socket_ids().map(|s| s.to_string()).collect()
    }

    #[napi(catch_unwind)]
    pub fn room_count(&self) -> u32 {
        self.index().room_count() as u32
    }

    #[napi(catch_unwind)]
    pub fn socket_count(&self) -> u32 {
        self.index().socket_count() as u32
    }

    #[napi(catch_unwind)]
    pub fn has_room(&self, room: String) -> bool {
        self.index().has_room(&room)
    }

    #[napi(catch_unwind)]
    pub fn has_socket(&self, id: String) -> bool {
        self.index().has_socket(&id)
    }

    /// Resolves once the room bindings changed so far are in place at the broker (room routing;
    /// at once otherwise, or without a connection). Never rejects.
    #[napi(catch_unwind)]
    pub async fn rooms_bound(&self) {
        self.handle.rooms_bound().await;
    }

    /// Servers serving this namespace, this one included.
    #[napi(catch_unwind)]
    pub fn server_count(&self) -> u32 {
        self.handle.server_count() as u32
    }

    /// Publishes the packet (one text part: the text itself) to the other servers (unless
    /// `local_only`) and returns the slots of the local sockets it targets, `null` for none.
    // Positional: a JS object per broadcast costs a property lookup per field on the hot path.
    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn broadcast(
        &self,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] packet: JsPacket,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
        volatile: bool,
        compress: Option<bool>,
        local_only: bool,
        offset: Option<String>,
    ) -> Option<Uint32Array> {
        let packet = packet.0;
        let flags = WriteFlags { volatile, compress };
        let target = target(rooms, except);
        let local = self
            .handle
            .broadcast(packet, target, flags, local_only, offset);
        // No typed array to make (and collect) when no local socket is targeted: the common case
        // of a room on another server.
        (!local.is_empty()).then(|| Uint32Array::new(local))
    }

    /// Publishes a broadcast whose client counts and acks come back to this server until
    /// `timeout_ms`; returns the request id the replies carry (0 without a broker).
    #[napi(catch_unwind)]
    pub fn broadcast_with_ack(
        &self,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] packet: JsPacket,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
        volatile: bool,
        compress: Option<bool>,
        timeout_ms: u32,
    ) -> u32 {
        let packet = packet.0;
        let flags = WriteFlags { volatile, compress };
        let target = target(rooms, except);
        self.handle
            .broadcast_with_ack(packet, target, flags, timeout_ms)
    }

    #[napi(catch_unwind)]
    pub fn sockets_join(
        &self,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
        join: Vec<String>,
    ) {
        self.handle.sockets_join(target(rooms, except), join);
    }

    #[napi(catch_unwind)]
    pub fn sockets_leave(
        &self,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
        leave: Vec<String>,
    ) {
        self.handle.sockets_leave(target(rooms, except), leave);
    }

    #[napi(catch_unwind)]
    pub fn disconnect_sockets(
        &self,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
        close: bool,
    ) {
        self.handle.disconnect_sockets(target(rooms, except), close);
    }

    #[napi(catch_unwind)]
    pub fn fetch_sockets(
        &self,
        #[napi(ts_arg_type = "string | string[]")] rooms: JsRooms,
        #[napi(ts_arg_type = "string | string[]")] except: JsRooms,
        timeout_ms: u32,
    ) -> RequestHandle {
        let timeout = millis(timeout_ms);
        request_handle(self.handle.fetch_sockets(target(rooms, except), timeout))
    }

    /// `ackTimeoutMs` absent: fire-and-forget, and the handle is empty.
    #[napi(catch_unwind)]
    pub fn server_side_emit(
        &self,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] args: JsPacket,
        ack_timeout_ms: Option<u32>,
    ) -> RequestHandle {
        let args = args.0;
        request_handle(
            self.handle
                .server_side_emit(args, ack_timeout_ms.map(millis)),
        )
    }

    #[napi(catch_unwind)]
    pub fn reply_fetch(
        &self,
        to: String,
        request_id: u32,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] sockets: JsPacket,
    ) {
        let sockets = sockets.0;
        let message = Message::FetchSocketsResponse {
            request_id,
            sockets,
        };
        self.handle.reply(&to, message);
    }

    #[napi(catch_unwind)]
    pub fn reply_server_side_emit(
        &self,
        to: String,
        request_id: u32,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] reply: JsPacket,
    ) {
        let reply = reply.0;
        let message = Message::ServerSideEmitResponse { request_id, reply };
        self.handle.reply(&to, message);
    }

    #[napi(catch_unwind)]
    pub fn reply_client_count(&self, to: String, request_id: u32, count: u32) {
        let message = Message::BroadcastClientCount { request_id, count };
        self.handle.reply(&to, message);
    }

    #[napi(catch_unwind)]
    pub fn reply_ack(
        &self,
        to: String,
        request_id: u32,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] reply: JsPacket,
    ) {
        let reply = reply.0;
        self.handle
            .reply(&to, Message::BroadcastAck { request_id, reply });
    }
}
