use super::*;

/// A broadcast nobody on B matches never wakes B's host; one that matches wakes it once.
#[tokio::test(start_paused = true)]
async fn only_broadcasts_with_local_recipients_wake_the_host() {
    let (_broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    settle().await;
    let wakes = b.wakes.load(Ordering::SeqCst);
    let echoes = a.node.stats.own_ignored.load(Ordering::Relaxed);
    a.broadcast(&["elsewhere"], "not for B");
    until(Duration::from_millis(100), "B drops it", || {
        b.node.stats.no_local_recipient.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(b.wakes.load(Ordering::SeqCst), wakes);
    a.broadcast(&["r"], "for B");
    until(Duration::from_millis(100), "B's host is woken", || {
        b.wakes.load(Ordering::SeqCst) == wakes + 1
    })
    .await;
    assert_eq!(b.packets(), ["for B"]);
    assert_eq!(a.packets(), Vec::<String>::new(), "a sender's own echo");
    let echoes = a.node.stats.own_ignored.load(Ordering::Relaxed) - echoes;
    assert_eq!(echoes, 2, "both broadcasts came back to A and were dropped");
}

/// What one host turn emits leaves batched (fewer AMQP messages than packets) and arrives
/// whole and in order, with one wake-up for many packets.
#[tokio::test(start_paused = true)]
async fn a_turns_emits_leave_batched_and_arrive_in_order() {
    let (broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    settle().await;
    let before = broker.published().len();
    let wakes = b.wakes.load(Ordering::SeqCst);
    for i in 0..300 {
        a.node.publish("/", packet_to(&["r"], &i.to_string()));
    }
    a.node.send_queued();
    let mut got = Vec::new();
    until(Duration::from_millis(100), "300 packets at B", || {
        got.extend(b.packets());
        got.len() == 300
    })
    .await;
    let expected: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    let sent = broker.published().len() - before;
    assert!(sent <= 2, "{sent} AMQP messages for 300 packets");
    assert!(b.wakes.load(Ordering::SeqCst) - wakes <= 2);
}

/// The same with a host that drains the moment it is woken (the JS thread on the other core):
/// a batch still wakes it once, not once per packet, because the consumer holds the wake-up
/// back until it has handled the whole message.
#[tokio::test(start_paused = true)]
async fn a_batch_wakes_an_eager_host_once() {
    let (broker, a, b, batches) = eager_pair().await;
    b.join("sb", &["r"]);
    settle().await;
    batches.lock().clear();
    let before = broker.published().len();
    for i in 0..300 {
        a.node.publish("/", packet_to(&["r"], &i.to_string()));
    }
    a.node.send_queued();
    let packets = |batches: &Vec<Vec<Drained>>| -> usize {
        batches
            .iter()
            .flatten()
            .filter(|item| matches!(item, Drained::Broadcast { .. }))
            .count()
    };
    until(Duration::from_millis(100), "300 packets at B", || {
        packets(&batches.lock()) == 300
    })
    .await;
    let sent = broker.published().len() - before;
    let wake_ups = batches.lock().len();
    assert!(
        wake_ups <= sent,
        "{wake_ups} wake-ups for {sent} AMQP messages"
    );
}

/// Garbage on the namespace key is counted and reported once per period; what follows is
/// delivered.
#[tokio::test(start_paused = true)]
async fn malformed_messages_are_dropped_and_reported_and_traffic_goes_on() {
    let (broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    let intruder = MemoryBus(broker.clone());
    let connected = crate::bus::Bus::connect(
        &intruder,
        &crate::bus::Endpoint::publisher("intruder".into()),
    )
    .await
    .unwrap();
    for i in 0..100u8 {
        let junk = [0xc1, i, 0xff];
        connected
            .link
            .publish(&namespace_key("/"), junk.to_vec())
            .unwrap();
    }
    a.broadcast(&["r"], "after the junk");
    let mut got = Vec::new();
    until(Duration::from_millis(100), "B gets the packet", || {
        got.extend(b.drain());
        got.iter().any(|d| matches!(d, Drained::Broadcast { .. }))
    })
    .await;
    assert_eq!(b.node.stats.malformed.load(Ordering::Relaxed), 100);
    let reports = got
        .iter()
        .filter(|d| matches!(d, Drained::Error(e) if e.contains("dropped an incoming message")))
        .count();
    assert_eq!(reports, 1, "{got:?}");
}

/// With room routing on every server, a single-room broadcast goes by the room's key and
/// reaches only the server with members; with one server without it, by the namespace key.
#[tokio::test(start_paused = true)]
async fn room_routing_sends_by_room_only_when_every_server_binds_rooms() {
    let (broker, a, b) = pair(true).await;
    b.join("sb", &["r"]);
    b.node.rooms_bound().await;
    let before = broker.published().len();
    let echoes = a.node.stats.own_ignored.load(Ordering::Relaxed);
    a.broadcast(&["r"], "by room");
    until(Duration::from_millis(100), "B gets it", || {
        b.packets() == ["by room"]
    })
    .await;
    let keys: Vec<String> = broker.published()[before..]
        .iter()
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(keys, [crate::transport::room_key("/", "r").unwrap()]);
    assert_eq!(
        a.node.stats.own_ignored.load(Ordering::Relaxed) - echoes,
        0,
        "A has no member: by room, its own broadcast does not come back"
    );
    // A server without room routing joins: it must get every broadcast.
    let c = Server::serving(&broker, config(false)).await;
    c.join("sc", &["r"]);
    until(Duration::from_millis(100), "A counts C", || {
        a.count("/") == 3
    })
    .await;
    let before = broker.published().len();
    a.broadcast(&["r"], "by namespace");
    until(Duration::from_millis(100), "C gets it", || {
        c.packets() == ["by namespace"]
    })
    .await;
    assert_eq!(b.packets(), ["by namespace"]);
    let keys: Vec<String> = broker.published()[before..]
        .iter()
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(keys, [namespace_key("/")]);
    assert_ne!(keys[0], CLUSTER_KEY);
}

/// Room routing never routes by room key what every server must see: an ack broadcast (each
/// server answers with its count), a broadcast to several rooms, and, for a while, a broadcast
/// to a room a `socketsJoin` just named (the servers joining sockets to it may not have bound it).
#[tokio::test(start_paused = true)]
async fn room_routing_keeps_the_namespace_key_where_every_server_must_see_it() {
    let (broker, a, b) = pair(true).await;
    b.join("sb", &["r", "s"]);
    b.node.rooms_bound().await;
    let keys_of = |before: usize| -> Vec<String> {
        broker.published()[before..]
            .iter()
            .map(|(key, _)| key.clone())
            .filter(|key| key != CLUSTER_KEY)
            .collect()
    };
    let nsp_key = namespace_key("/");

    let before = broker.published().len();
    a.node
        .open_ended_request("/", Duration::from_secs(1), |request_id| {
            Message::Broadcast {
                target: target(&["r"]),
                flags: WriteFlags::default(),
                packet: vec![PacketPart::Text("with ack".into())],
                ack: Some(crate::wire::AckRequest {
                    request_id,
                    timeout_ms: 1000,
                }),
                offset: None,
            }
        });
    // One JS turn: the broadcast's send_queued sends both.
    a.broadcast(&["r", "s"], "two rooms");
    settle().await;
    assert_eq!(
        keys_of(before),
        std::slice::from_ref(&nsp_key),
        "one batch by namespace key"
    );

    let before = broker.published().len();
    a.node.publish(
        "/",
        Message::SocketsJoin {
            target: Target::default(),
            rooms: vec!["fresh".into()],
        },
    );
    a.broadcast(&["fresh"], "right after the join");
    settle().await;
    assert_eq!(keys_of(before), std::slice::from_ref(&nsp_key));
    // Long after the join the room goes by its key again.
    tokio::time::sleep(Duration::from_secs(120)).await;
    b.node.rooms_bound().await;
    let before = broker.published().len();
    a.broadcast(&["fresh"], "later");
    settle().await;
    assert_eq!(
        keys_of(before),
        [crate::transport::room_key("/", "fresh").unwrap()]
    );
}
