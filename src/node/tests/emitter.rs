use super::*;
use crate::emitter::Emitter;
use crate::packet::Arg;
use crate::recovery::offset_time_ms;

/// The emitter's broadcasts reach the servers' sockets; a recoverable one carries its offset as
/// the packet's last argument and in the envelope (so it is copied to the recovery log), a
/// volatile one never does.
#[tokio::test(start_paused = true)]
async fn an_emitters_recoverable_broadcast_carries_its_offset() {
    let broker = MemoryBroker::new();
    let server = Server::serving(&broker, config(false)).await;
    server.join("s1", &["r"]);
    let bus = Arc::new(MemoryBus(broker.clone()));
    let emitter = Emitter::start_on(bus, config(false).broker, |_| {});
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
