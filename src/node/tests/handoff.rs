use super::*;

/// The host's end of turn hands its publishes to the link on its own thread (no connection task in
/// between), and while that hand-off is not written, later ones wait for it in the connection task
/// instead of piling up in the link: at most one unwritten hand-off, order kept.
#[tokio::test(start_paused = true)]
async fn the_host_hands_off_itself_and_only_one_hand_off_is_ever_unwritten() {
    let (broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    settle().await;
    broker.hold_writes();
    a.broadcast(&["r"], "one");
    // Nothing was awaited since the call: the host's thread handed it off.
    assert_eq!(broker.unwritten(), 1, "handed off by the host's call");
    a.broadcast(&["r"], "two");
    a.broadcast(&["r"], "three");
    settle().await;
    assert_eq!(
        broker.unwritten(),
        1,
        "nothing is handed off behind an unwritten hand-off"
    );
    assert_eq!(a.node.outbox.len(), 2, "the rest waits in the outbox");
    broker.release_writes();
    let mut got = Vec::new();
    until(Duration::from_millis(100), "three packets at B", || {
        got.extend(b.packets());
        got.len() >= 3
    })
    .await;
    assert_eq!(got, ["one", "two", "three"]);
    assert_eq!(a.node.outbox.len(), 0);
}

/// A hand-off the connection dropped before writing goes again after the reconnect, once, and
/// before the reconnect's hello (numbered later: a receiver would drop the resent one as old).
#[tokio::test(start_paused = true)]
async fn a_hand_off_the_connection_lost_unwritten_goes_again_once() {
    let (broker, a, b) = pair(false).await;
    b.join("sb", &["r"]);
    settle().await;
    let before = broker.published().len();
    broker.hold_writes();
    a.broadcast(&["r"], "in the cut");
    assert_eq!(broker.unwritten(), 1);
    broker.drop_connections();
    broker.release_writes();
    assert_eq!(broker.unwritten(), 0, "the drop took the hand-off with it");
    let mut got = Vec::new();
    until(
        Duration::from_secs(5),
        "B gets it after the reconnect",
        || {
            got.extend(b.packets());
            !got.is_empty()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    got.extend(b.packets());
    assert_eq!(got, ["in the cut"], "once");
    let broadcasts = broker.published()[before..]
        .iter()
        .filter(|(key, _)| *key == namespace_key("/"))
        .count();
    assert_eq!(broadcasts, 1, "written once: by the next session");
}
