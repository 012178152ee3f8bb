use super::*;
use crate::node::{NamespaceHandle, BINDING_PENDING};
use crate::room_index::{ROOM_CREATED, ROOM_DELETED, SOCKET_JOINED, SOCKET_LEFT};
use crate::transport::room_key;

fn rooms(names: &[&str]) -> Vec<String> {
    names.iter().map(|r| r.to_string()).collect()
}

/// With room routing, a join that creates a room says its binding is on its way, and the
/// binding is at the broker once `rooms_bound` resolves; the last member leaving unbinds it.
/// Socket-id rooms are never bound.
#[tokio::test(start_paused = true)]
async fn a_room_change_updates_the_index_and_the_bindings_together() {
    let broker = MemoryBroker::new();
    let server = Server::serving(&broker, config(true)).await;
    let handle = NamespaceHandle::of(&server.node, "/");
    let queue = server.node.queue_name();
    let own_room = "Xc2_gWvN-8pZkLmQaB3d";
    let joined = handle.add_all(own_room, &rooms(&[own_room, "r"]));
    assert_eq!(
        joined.changes,
        [
            ROOM_CREATED | SOCKET_JOINED,
            ROOM_CREATED | SOCKET_JOINED | BINDING_PENDING
        ]
    );
    handle.rooms_bound().await;
    assert!(broker.is_bound(queue, &room_key("/", "r").unwrap()));
    let second = handle.add_all("other", &rooms(&["r"]));
    assert_eq!(second.changes, [SOCKET_JOINED], "the room existed");
    assert_eq!(handle.del(own_room, "r"), SOCKET_LEFT);
    handle.rooms_bound().await;
    assert!(broker.is_bound(queue, &room_key("/", "r").unwrap()));
    let (_, left) = handle.del_all("other").expect("a known socket");
    assert_eq!(left, [("r".to_string(), true)]);
    handle.rooms_bound().await;
    assert!(!broker.is_bound(queue, &room_key("/", "r").unwrap()));
    assert_eq!(handle.del(own_room, own_room), SOCKET_LEFT | ROOM_DELETED);
}

/// A local-only broadcast publishes nothing; a standalone handle (no broker) serves its own
/// index and answers requests with nobody to ask.
#[tokio::test(start_paused = true)]
async fn local_only_and_standalone_handles_publish_nothing() {
    let broker = MemoryBroker::new();
    let server = Server::serving(&broker, config(false)).await;
    settle().await;
    let handle = NamespaceHandle::of(&server.node, "/");
    handle.add_all("s1", &rooms(&["r"]));
    let before = broker.published().len();
    let packet = vec![PacketPart::Text("x".into())];
    let slots = handle.broadcast(packet, target(&["r"]), WriteFlags::default(), true, None);
    server.node.send_queued();
    settle().await;
    assert_eq!(slots.len(), 1);
    assert_eq!(broker.published().len(), before);

    let alone = NamespaceHandle::standalone();
    alone.add_all("s1", &rooms(&["r"]));
    let packet = vec![PacketPart::Text("x".into())];
    let slots = alone.broadcast(packet, target(&["r"]), WriteFlags::default(), false, None);
    assert_eq!(slots.len(), 1);
    assert_eq!(alone.server_count(), 1);
    let sent = alone.fetch_sockets(target(&["r"]), Duration::from_secs(1));
    assert_eq!((sent.request_id, sent.expected), (0, 0));
}
