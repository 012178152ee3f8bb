//! A namespace as its host sees it: the room index and the cluster operations of one namespace on
//! one server, in one place, so a room change updates the index and room routing's bindings
//! together and each operation picks its message and routing here, not in the bindings. Without a
//! node (a server whose broker URL was unusable) it is a local room index only.

use super::{Namespace, Node};
use crate::recovery::{Restored, SessionToPersist};
use crate::room_index::{AddOutcome, RoomIndex, Slot, ROOM_CREATED, ROOM_DELETED};
use crate::wire::{AckRequest, Message, PacketPart, Target, WriteFlags};
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::Duration;

/// The change bit (beside `room_index`'s) of a created room whose room-routing binding is on its
/// way: [`NamespaceHandle::rooms_bound`] resolves once it is in place.
pub const BINDING_PENDING: u8 = 4;

/// What [`NamespaceHandle::add_all`] did: the socket's slot and, per room in call order, the
/// `room_index` change bits, with [`BINDING_PENDING`] where it applies.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    pub slot: Slot,
    pub changes: Vec<u8>,
}

/// A request sent to the other servers: its id and how many servers will answer (none: nothing
/// was sent and the id is 0).
#[derive(Debug, PartialEq, Eq)]
pub struct RequestSent {
    pub request_id: u32,
    pub expected: usize,
}

impl RequestSent {
    const NONE: RequestSent = RequestSent {
        request_id: 0,
        expected: 0,
    };
}

pub struct NamespaceHandle {
    node: Option<Arc<Node>>,
    ns: Arc<Namespace>,
}

impl NamespaceHandle {
    /// Namespace `name` of `node`.
    pub fn of(node: &Arc<Node>, name: &str) -> NamespaceHandle {
        NamespaceHandle {
            node: Some(node.clone()),
            ns: node.namespace(name),
        }
    }

    /// A room index with no broker behind it.
    pub fn standalone() -> NamespaceHandle {
        NamespaceHandle {
            node: None,
            ns: Arc::new(Namespace {
                name: String::new(),
                index: Mutex::new(RoomIndex::new()),
            }),
        }
    }

    /// The room index, for reads (changes go through the handle's methods).
    pub fn index(&self) -> MutexGuard<'_, RoomIndex> {
        self.ns.index.lock()
    }

    pub fn recipients(&self, target: &Target) -> Vec<Slot> {
        self.index().recipients(target)
    }

    /// Joins socket `id` to `rooms`; with room routing, the rooms it creates are bound soon after.
    pub fn add_all(&self, id: &str, rooms: &[String]) -> Joined {
        let outcome = self.index().add_all(id, rooms);
        self.joined(outcome, rooms)
    }

    /// Takes socket `id` out of `room`: `room_index`'s SOCKET_LEFT | ROOM_DELETED bits.
    pub fn del(&self, id: &str, room: &str) -> u8 {
        let change = self.index().del(id, room);
        if change & ROOM_DELETED != 0 {
            self.rooms_changed([room]);
        }
        change
    }

    /// Takes socket `id` out of every room: its slot and each (room, whether it was deleted).
    pub fn del_all(&self, id: &str) -> Option<(Slot, Vec<(String, bool)>)> {
        let (slot, departures) = self.index().del_all(id)?;
        let left: Vec<(String, bool)> = departures
            .into_iter()
            .map(|d| (d.room.to_string(), d.room_deleted))
            .collect();
        let deleted = left.iter().filter(|(_, deleted)| *deleted);
        self.rooms_changed(deleted.map(|(room, _)| room.as_str()));
        Some((slot, left))
    }

    /// Resolves once the room bindings changed so far are in place (room routing; at once
    /// otherwise, or without a broker).
    pub async fn rooms_bound(&self) {
        if let Some(node) = &self.node {
            node.rooms_bound().await;
        }
    }

    /// Servers serving this namespace, this one included.
    pub fn server_count(&self) -> usize {
        self.node
            .as_ref()
            .map_or(1, |node| node.server_count(&self.ns.name))
    }

    /// Publishes a packet to the other servers (unless `local_only`) and returns the slots of the
    /// local sockets it targets. With an `offset` (connection state recovery), a packet for one
    /// local socket only (`socket.emit`) goes to the recovery log alone: no other server has a
    /// socket to deliver it to.
    pub fn broadcast(
        &self,
        packet: Vec<PacketPart>,
        target: Target,
        flags: WriteFlags,
        local_only: bool,
        offset: Option<String>,
    ) -> Vec<Slot> {
        let local = self.recipients(&target);
        let Some(node) = self.node.as_ref().filter(|_| !local_only) else {
            return local;
        };
        let to_own_socket_only = offset.is_some()
            && target.except.is_empty()
            && target.rooms.len() == 1
            && local.len() == 1
            && self.index().has_socket(&target.rooms[0]);
        let message = Message::Broadcast {
            target,
            flags,
            packet,
            ack: None,
            offset,
        };
        if to_own_socket_only {
            node.publish_to_log(&self.ns.name, message);
        } else {
            node.publish(&self.ns.name, message);
        }
        local
    }

    /// Publishes a broadcast whose client counts and acks come back to this server until
    /// `timeout_ms`; the request id the replies carry (0 without a broker).
    pub fn broadcast_with_ack(
        &self,
        packet: Vec<PacketPart>,
        target: Target,
        flags: WriteFlags,
        timeout_ms: u32,
    ) -> u32 {
        let Some(node) = &self.node else { return 0 };
        let timeout = Duration::from_millis(timeout_ms.into());
        node.open_ended_request(&self.ns.name, timeout, |request_id| Message::Broadcast {
            target,
            flags,
            packet,
            ack: Some(AckRequest {
                request_id,
                timeout_ms,
            }),
            offset: None,
        })
    }

    pub fn sockets_join(&self, target: Target, rooms: Vec<String>) {
        self.publish(Message::SocketsJoin { target, rooms });
    }

    pub fn sockets_leave(&self, target: Target, rooms: Vec<String>) {
        self.publish(Message::SocketsLeave { target, rooms });
    }

    pub fn disconnect_sockets(&self, target: Target, close: bool) {
        self.publish(Message::DisconnectSockets { target, close });
    }

    pub fn fetch_sockets(&self, target: Target, timeout: Duration) -> RequestSent {
        self.request(timeout, |request_id| Message::FetchSockets {
            request_id,
            target,
        })
    }

    /// `serverSideEmit`; with `ack_timeout` the other servers' replies are awaited that long,
    /// without it the emit is fire-and-forget (and nothing is awaited).
    pub fn server_side_emit(
        &self,
        args: Vec<PacketPart>,
        ack_timeout: Option<Duration>,
    ) -> RequestSent {
        match ack_timeout {
            None => {
                let request_id = None;
                self.publish(Message::ServerSideEmit { request_id, args });
                RequestSent::NONE
            }
            Some(timeout) => self.request(timeout, |request_id| Message::ServerSideEmit {
                request_id: Some(request_id),
                args,
            }),
        }
    }

    /// Answers server `to`'s request (a response message).
    pub fn reply(&self, to: &str, message: Message) {
        if let Some(node) = &self.node {
            node.reply(to, &self.ns.name, message);
        }
    }

    /// Connection state recovery: writes a disconnected socket's session to the log.
    pub fn persist_session(&self, session: SessionToPersist) {
        if let Some(node) = &self.node {
            node.persist_session(&self.ns.name, session);
        }
    }

    /// Connection state recovery: the session `pid` and the packets its client missed since
    /// `offset`, with the handle [`finish_restore`](Self::finish_restore) takes.
    pub async fn restore_session(&self, pid: &str, offset: &str) -> Option<(u64, Restored)> {
        let node = self.node.as_ref()?;
        node.restore_session(&self.ns.name, pid, offset).await
    }

    /// Puts the restored socket `sid` into the index (as `add_all` with the session's rooms) and
    /// returns the live packets recorded for it since the scan.
    pub fn finish_restore(&self, handle: u64, sid: &str) -> Option<(Joined, Vec<Vec<PacketPart>>)> {
        let node = self.node.as_ref()?;
        let (outcome, rooms, packets) = node.finish_restore(&self.ns, handle, sid)?;
        Some((self.joined(outcome, &rooms), packets))
    }

    /// Flags created rooms whose binding is on its way (room routing) and asks for them.
    fn joined(&self, outcome: AddOutcome, rooms: &[String]) -> Joined {
        let mut changes = outcome.changes;
        if let Some(node) = &self.node {
            let nsp = &self.ns.name;
            let mut created = Vec::new();
            for (room, change) in rooms.iter().zip(&mut changes) {
                if *change & ROOM_CREATED != 0 && node.routes_room(nsp, room) {
                    *change |= BINDING_PENDING;
                    created.push(room.as_str());
                }
            }
            node.rooms_changed(nsp, created);
        }
        Joined {
            slot: outcome.slot,
            changes,
        }
    }

    fn publish(&self, message: Message) {
        if let Some(node) = &self.node {
            node.publish(&self.ns.name, message);
        }
    }

    fn rooms_changed<'a>(&self, rooms: impl IntoIterator<Item = &'a str>) {
        if let Some(node) = &self.node {
            node.rooms_changed(&self.ns.name, rooms);
        }
    }

    fn request(&self, timeout: Duration, make: impl FnOnce(u32) -> Message) -> RequestSent {
        let Some(node) = &self.node else {
            return RequestSent::NONE;
        };
        let (request_id, expected) = node.request(&self.ns.name, timeout, make);
        RequestSent {
            request_id,
            expected,
        }
    }
}
