use super::*;

/// The host's end of turn hands its publishes to the link on its own thread (no connection task in
/// between), without waiting for lapin's writes; once a few of its hand-offs are unwritten the
/// connection task takes over and waits for the writes instead of piling more into the link. Order
/// is kept throughout.
#[tokio::test(start_paused = true)]
async fn the_host_hands_off_itself_and_unwritten_hand_offs_stay_bounded() {
    let (broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    settle().await;
    broker.hold_writes();
    a.broadcast(&["r"], "0");
    // Nothing was awaited since the call: the host's thread handed it off.
    assert_eq!(broker.unwritten(), 1, "handed off by the host's call");
    for i in 1..8 {
        a.broadcast(&["r"], &i.to_string());
    }
    settle().await;
    assert_eq!(
        broker.unwritten(),
        4,
        "four hand-offs (one per turn here) and no more wait to be written"
    );
    assert_eq!(a.node.outbox.len(), 4, "the rest waits in the outbox");
    broker.release_writes();
    let mut got = Vec::new();
    until(Duration::from_millis(100), "eight packets at B", || {
        got.extend(b.packets());
        got.len() >= 8
    })
    .await;
    let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    assert_eq!(a.node.outbox.len(), 0);
}

/// Hand-offs the connection dropped before writing go again after the reconnect, once each, in
/// order, and before the reconnect's hello (numbered later: a receiver would drop them as old).
#[tokio::test(start_paused = true)]
async fn hand_offs_the_connection_lost_unwritten_go_again_once() {
    let (broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    settle().await;
    let before = broker.published().len();
    broker.hold_writes();
    for text in ["cut 1", "cut 2", "cut 3"] {
        a.broadcast(&["r"], text);
    }
    assert_eq!(broker.unwritten(), 3);
    broker.drop_connections();
    broker.release_writes();
    assert_eq!(broker.unwritten(), 0, "the drop took the hand-offs with it");
    let mut got = Vec::new();
    until(
        Duration::from_secs(5),
        "B gets them after the reconnect",
        || {
            got.extend(b.packets());
            got.len() >= 3
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    got.extend(b.packets());
    assert_eq!(got, ["cut 1", "cut 2", "cut 3"], "once each, in order");
    let broadcasts = broker.published()[before..]
        .iter()
        .filter(|(key, _)| *key == namespace_key("/"))
        .count();
    assert_eq!(broadcasts, 3, "each written once, by the next session");
}
