use super::*;
use crate::emitter::{Emitter, EmitterEvent};
use crate::packet::Arg;
use crate::recovery::offset_time_ms;

/// A broker, a server with socket "s1" in room "r", and an emitter on the same broker.
async fn server_and_emitter(
    on_event: impl Fn(EmitterEvent) + Send + Sync + 'static,
) -> (Arc<MemoryBroker>, Server, Arc<Emitter>) {
    let broker = MemoryBroker::new();
    let server = Server::serving(&broker, config(false)).await;
    server.join("s1", &["r"]);
    let bus = Arc::new(MemoryBus(broker.clone()));
    let emitter = Emitter::start_on(bus, config(false).broker, on_event);
    (broker, server, emitter)
}

/// The emitter's broadcasts reach the servers' sockets; a recoverable one carries its offset as
/// the packet's last argument and in the envelope (so it is copied to the recovery log), a
/// volatile one never does.
#[tokio::test(start_paused = true)]
async fn an_emitters_recoverable_broadcast_carries_its_offset() {
    let (broker, server, emitter) = server_and_emitter(|_| {}).await;
    emitter.ready().await.expect("the emitter connects");
    emitter.of("/").to("r").emit("plain", &[Arg::string("a")]);
    emitter
        .of("/")
        .to("r")
        .recoverable()
        .emit("stored", &[Arg::string("b")]);
    emitter
        .of("/")
        .to("r")
        .volatile()
        .recoverable()
        .emit("volatile", &[]);
    let mut packets = Vec::new();
    until(
        Duration::from_millis(100),
        "3 packets at the server",
        || {
            packets.extend(server.packets());
            packets.len() == 3
        },
    )
    .await;
    assert_eq!(packets[0], r#"2["plain","a"]"#);
    assert_eq!(packets[2], r#"2["volatile"]"#);
    let mut offsets: Vec<Option<String>> = Vec::new();
    let sent = broker
        .published()
        .into_iter()
        .filter_map(|(_, body)| wire::decode(&body).ok())
        .filter(|e| e.uid == emitter.uid());
    for envelope in sent {
        // What one turn emits may leave as one batch.
        let messages = match envelope.message {
            Message::Batch(messages) => messages,
            message => vec![message],
        };
        for message in messages {
            let Message::Broadcast { offset, .. } = message else {
                panic!("the emitter sent {message:?}");
            };
            offsets.push(offset);
        }
    }
    assert_eq!(offsets.len(), 3);
    assert_eq!((&offsets[0], &offsets[2]), (&None, &None));
    let offset = offsets[1].as_deref().expect("the stored packet's offset");
    assert!(offset_time_ms(offset).is_some(), "{offset}");
    assert_eq!(packets[1], format!(r#"2["stored","b","{offset}"]"#));
    emitter.close().await;
}

/// The emitter's connection drops with every other and is refused for a while: it reports the
/// loss and the refused attempts, reconnects by the shared loop, reports how many attempts it
/// took, and what it emitted meanwhile arrives once.
#[tokio::test(start_paused = true)]
async fn an_emitter_reconnects_and_sends_what_waited() {
    let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = events.clone();
    let (broker, server, emitter) = server_and_emitter(move |event| sink.lock().push(event)).await;
    emitter.ready().await.expect("the emitter connects");
    broker.refuse_connections(true);
    broker.drop_connections();
    emitter.of("/").to("r").emit("during", &[]);
    until(Duration::from_secs(1), "two refused attempts", || {
        let events = events.lock();
        events
            .iter()
            .filter(|e| matches!(e, EmitterEvent::Error(_)))
            .count()
            >= 2
    })
    .await;
    broker.refuse_connections(false);
    let mut packets = Vec::new();
    until(
        Duration::from_secs(2),
        "the packet after the outage",
        || {
            packets.extend(server.packets());
            !packets.is_empty()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    packets.extend(server.packets());
    assert_eq!(packets, [r#"2["during"]"#], "once");
    let events = events.lock().clone();
    assert!(
        matches!(events[0], EmitterEvent::Disconnected(_)),
        "{events:?}"
    );
    let refused = events
        .iter()
        .filter(|e| matches!(e, EmitterEvent::Error(_)))
        .count() as u32;
    assert_eq!(
        events.last(),
        Some(&EmitterEvent::Reconnected {
            attempts: refused + 1
        })
    );
    emitter.close().await;
}

/// With the host sending (the Node binding), an emit only queues: nothing leaves until the host's
/// `send_queued`, which hands the turn's publishes to the link on the calling thread, together
/// and without the connection task; they arrive in order.
#[tokio::test(start_paused = true)]
async fn an_emitter_sent_by_its_host_hands_off_on_the_hosts_call() {
    let (broker, server, emitter) = server_and_emitter(|_| {}).await;
    emitter.sent_by_host();
    emitter.ready().await.expect("the emitter connects");
    settle().await;
    let before = broker.published().len();
    broker.hold_writes();
    for text in ["one", "two", "three"] {
        emitter.of("/").to("r").emit(text, &[]);
    }
    settle().await;
    assert_eq!(broker.unwritten(), 0, "queued only, until the host sends");
    assert_eq!(emitter.buffered(), 3);
    emitter.send_queued();
    // Nothing was awaited since the call: the host's thread handed them off, as one hand-off.
    assert_eq!(broker.unwritten(), 1, "handed off by the host's call");
    assert_eq!(emitter.buffered(), 0);
    broker.release_writes();
    let mut packets = Vec::new();
    until(
        Duration::from_millis(100),
        "3 packets at the server",
        || {
            packets.extend(server.packets());
            packets.len() >= 3
        },
    )
    .await;
    assert_eq!(packets, [r#"2["one"]"#, r#"2["two"]"#, r#"2["three"]"#]);
    assert_eq!(broker.published().len() - before, 1, "one AMQP message");
    emitter.close().await;
}
