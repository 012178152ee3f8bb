use super::*;

/// Every order of starting three servers, one after the other and all at once: each counts
/// the other two by hello and answer, long before any heartbeat.
#[tokio::test(start_paused = true)]
async fn every_start_order_of_three_servers_converges_without_heartbeats() {
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let broker = MemoryBroker::new();
        let mut started: Vec<(usize, Server)> = Vec::new();
        for &i in &order {
            started.push((i, Server::serving(&broker, config(false)).await));
        }
        started.sort_by_key(|(i, _)| *i);
        let servers: Vec<Server> = started.into_iter().map(|(_, s)| s).collect();
        until(Duration::from_millis(100), "3 servers count 3", || {
            all_count(&servers, 3)
        })
        .await;
        for server in &servers {
            server.node.close().await;
        }
    }
    // All at once: the hellos cross each other.
    let broker = MemoryBroker::new();
    let (a, b, c) = tokio::join!(
        Server::serving(&broker, config(false)),
        Server::serving(&broker, config(false)),
        Server::serving(&broker, config(false)),
    );
    let servers = [a, b, c];
    until(Duration::from_millis(100), "3 servers count 3", || {
        all_count(&servers, 3)
    })
    .await;
}

/// A hello that arrives while the answering server is binding a namespace: the answer must
/// carry the namespace (written when it is sent, after the bind's own heartbeat), not the list
/// as it was when the hello arrived, which would reach the newcomer after the bind's
/// heartbeat and undo it until the next heartbeat.
#[tokio::test(start_paused = true)]
async fn a_hello_answered_during_a_bind_does_not_undo_the_bind() {
    let broker = MemoryBroker::new();
    let a = Server::new(&broker, config(false));
    settle().await;
    broker.stall_binds(a.node.queue_name());
    let binding = {
        let node = a.node.clone();
        tokio::spawn(async move { node.bind_namespace("/").await })
    };
    settle().await;
    // B says hello while A's bind is at the broker.
    let b = Server::serving(&broker, config(false)).await;
    settle().await;
    broker.unstall_binds(a.node.queue_name());
    binding.await.unwrap().expect("A binds /");
    until(Duration::from_millis(100), "B counts A", || {
        b.count("/") == 2
    })
    .await;
    // Everything A sent has arrived by now; B still counts it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.count("/"), 2, "a stale answer undid A's bind at B");
    assert_eq!(a.count("/"), 2);
}

/// B's hello is held at A's queue until after A's and C's traffic: A answers late, and
/// nobody loses anybody meanwhile.
#[tokio::test(start_paused = true)]
async fn a_hello_delivered_late_is_still_answered() {
    let broker = MemoryBroker::new();
    let a = Server::serving(&broker, config(false)).await;
    settle().await;
    broker.hold(a.node.queue_name());
    let b = Server::serving(&broker, config(false)).await;
    let c = Server::serving(&broker, config(false)).await;
    until(
        Duration::from_millis(100),
        "B and C count each other",
        || b.count("/") == 2 && c.count("/") == 2,
    )
    .await;
    let hellos_held: Vec<String> = broker
        .held(a.node.queue_name())
        .iter()
        .filter_map(|d| wire::decode(&d.body).ok())
        .filter(|e| matches!(e.message, Message::Hello { .. }))
        .map(|e| e.uid)
        .collect();
    assert_eq!(hellos_held, [b.node.uid(), c.node.uid()]);
    // Let C's hello (and the rest of C's traffic) through first, B's after.
    let c_uid = c.node.uid().to_string();
    broker.release_only(a.node.queue_name(), |d| {
        wire::decode(&d.body).is_ok_and(|e| e.uid == c_uid)
    });
    settle().await;
    broker.release(a.node.queue_name());
    let servers = [a, b, c];
    until(Duration::from_millis(100), "all count 3", || {
        all_count(&servers, 3)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn goodbye_and_namespaces_appearing_and_disappearing() {
    let broker = MemoryBroker::new();
    let a = Server::serving(&broker, config(false)).await;
    let b = Server::serving(&broker, config(false)).await;
    until(Duration::from_millis(100), "both count 2", || {
        a.count("/") == 2 && b.count("/") == 2
    })
    .await;
    assert_eq!(a.count("/chat"), 1);
    b.node.bind_namespace("/chat").await.unwrap();
    until(Duration::from_millis(100), "A sees B serve /chat", || {
        a.count("/chat") == 2
    })
    .await;
    b.node.release_namespace("/chat");
    until(Duration::from_millis(100), "A sees B leave /chat", || {
        a.count("/chat") == 1
    })
    .await;
    assert!(!broker.is_bound(b.node.queue_name(), &namespace_key("/chat")));
    assert_eq!(a.count("/"), 2, "B still serves /");
    b.node.close().await;
    until(Duration::from_millis(100), "A forgets B on goodbye", || {
        a.count("/") == 1
    })
    .await;
    assert!(
        !broker.queue_exists(b.node.queue_name()),
        "closing deletes the queue"
    );
}

/// A server that goes silent is forgotten after the heartbeat timeout, and requests waiting
/// on it end saying so.
#[tokio::test(start_paused = true)]
async fn a_silent_server_expires_and_its_requests_end_incomplete() {
    let broker = MemoryBroker::new();
    let mut fast = config(false);
    fast.heartbeat_interval = Duration::from_millis(100);
    fast.heartbeat_timeout = Duration::from_millis(400);
    let a = Server::serving(&broker, fast.clone()).await;
    let b = Server::serving(&broker, fast.clone()).await;
    until(Duration::from_millis(100), "A counts B", || {
        a.count("/") == 2
    })
    .await;
    // Several heartbeat periods: heartbeats keep B counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.count("/"), 2);
    let (id, expected) = a.node.request("/", Duration::from_secs(60), |request_id| {
        Message::FetchSockets {
            request_id,
            target: Target::default(),
        }
    });
    a.node.send_queued();
    assert_eq!(expected, 1);
    broker.hold(a.node.queue_name());
    let started = Instant::now();
    until(Duration::from_secs(1), "A forgets silent B", || {
        a.count("/") == 1
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "forgotten after {waited:?}, before the 400 ms timeout"
    );
    let done = a.drain().into_iter().find_map(|item| match item {
        Drained::RequestDone {
            request_id,
            incomplete,
            ..
        } if request_id == id => Some(incomplete),
        _ => None,
    });
    let reason = done.expect("the request ended").expect("incomplete");
    assert!(reason.contains(b.node.uid()), "{reason}");
}

/// The broker drops every server's connection at once and refuses them for a while: each
/// reports the loss, reconnects, reports it once its bindings are back, and they count each
/// other again; a broadcast sent during the outage arrives once.
#[tokio::test(start_paused = true)]
async fn every_connection_dropped_at_once() {
    let (broker, servers) = three().await;
    servers[1].join("s1", &["r"]);
    for round in 0..5 {
        broker.refuse_connections(true);
        broker.drop_connections();
        until(
            Duration::from_millis(100),
            "all count only themselves",
            || all_count(&servers, 1),
        )
        .await;
        servers[0].broadcast(&["r"], &format!("during outage {round}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.refuse_connections(false);
        until(Duration::from_secs(2), "3 count 3 again", || {
            all_count(&servers, 3)
        })
        .await;
        for server in &servers {
            let drained = server.drain();
            let lost = drained
                .iter()
                .filter(|d| matches!(d, Drained::Disconnected(_)))
                .count();
            let back = drained
                .iter()
                .filter(|d| matches!(d, Drained::Reconnected { .. }))
                .count();
            assert_eq!((lost, back), (1, 1), "round {round}: {drained:?}");
            let packets: Vec<&Drained> = drained
                .iter()
                .filter(|d| matches!(d, Drained::Broadcast { .. }))
                .collect();
            let expected = usize::from(std::ptr::eq(server, &servers[1]));
            assert_eq!(packets.len(), expected, "round {round}: {packets:?}");
        }
    }
}
