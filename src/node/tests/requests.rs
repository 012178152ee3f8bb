use super::*;

fn fetch(server: &Server, timeout: Duration) -> (u32, usize) {
    let made = server
        .node
        .request("/", timeout, |request_id| Message::FetchSockets {
            request_id,
            target: target(&["r"]),
        });
    server.node.send_queued();
    made
}

fn done_of(drained: &[Drained], id: u32) -> Option<(bool, u32, Option<String>)> {
    drained.iter().find_map(|item| match item {
        Drained::RequestDone {
            request_id,
            timed_out,
            answered,
            incomplete,
        } if *request_id == id => Some((*timed_out, *answered, incomplete.clone())),
        _ => None,
    })
}

/// Waits until `server`'s host is asked for its sockets: how many match, who asks, the request.
async fn fetch_asked(server: &Server) -> (usize, String, u32) {
    let mut work = Vec::new();
    until(Duration::from_millis(100), "the host is asked", || {
        work.extend(server.drain());
        !work.is_empty()
    })
    .await;
    let Drained::FetchSockets {
        slots,
        from,
        request_id,
        ..
    } = &work[0]
    else {
        panic!("the host was given {work:?}");
    };
    (slots.len(), from.clone(), *request_id)
}

/// `server`'s host answers `from`'s fetch `request_id` with one socket, `sid`.
fn answer_fetch(server: &Server, from: &str, request_id: u32, sid: &str) {
    server.node.reply(
        from,
        "/",
        Message::FetchSocketsResponse {
            request_id,
            sockets: vec![PacketPart::Text(sid.into())],
        },
    );
    server.node.send_queued();
}

/// B has a matching socket and answers through its host; C has none and Rust answers alone,
/// without waking C's host. The request completes with both.
#[tokio::test(start_paused = true)]
async fn a_fetch_completes_and_only_servers_with_matches_wake_their_host() {
    let (_broker, [a, b, c]) = three().await;
    b.join("sb", &["r"]);
    let c_wakes = c.wakes.load(Ordering::SeqCst);
    let (id, expected) = fetch(&a, Duration::from_secs(5));
    assert_eq!(expected, 2);
    let (slots, from, request_id) = fetch_asked(&b).await;
    assert_eq!((slots, from.as_str()), (1, a.node.uid()));
    answer_fetch(&b, &from, request_id, "sb");
    let mut got = Vec::new();
    until(Duration::from_millis(100), "the request completes", || {
        got.extend(a.drain());
        done_of(&got, id).is_some()
    })
    .await;
    assert_eq!(done_of(&got, id), Some((false, 0, None)));
    let replies = got
        .iter()
        .filter(|d| matches!(d, Drained::Reply { .. }))
        .count();
    assert_eq!(replies, 1, "C's empty answer is not handed to the host");
    assert_eq!(
        c.wakes.load(Ordering::SeqCst),
        c_wakes,
        "C's host was woken"
    );
    assert_eq!(
        c.node.stats.answered_without_host.load(Ordering::Relaxed),
        1
    );
    assert_eq!(a.node.pending_requests(), 0);
}

/// A host that drains the moment it is woken gets a request's last reply and the request's end
/// in one wake-up: the consumer holds the wake-up back until it has handled the message. (Woken
/// for the reply alone, the JS thread drained it and was woken again for the end: two wake-ups
/// on the critical path of every request.)
#[tokio::test(start_paused = true)]
async fn a_requests_last_reply_and_its_end_wake_an_eager_host_once() {
    let (_broker, b, a, batches) = eager_pair().await;
    b.join("sb", &["r"]);
    let wakes = a.wakes.load(Ordering::SeqCst);
    let (id, expected) = fetch(&a, Duration::from_secs(5));
    assert_eq!(expected, 1);
    let (_, from, request_id) = fetch_asked(&b).await;
    answer_fetch(&b, &from, request_id, "sb");
    until(Duration::from_millis(100), "the request completes", || {
        batches
            .lock()
            .iter()
            .any(|batch| done_of(batch, id).is_some())
    })
    .await;
    let batches = batches.lock();
    let kinds: Vec<Vec<&str>> = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|item| match item {
                    Drained::Reply { .. } => "reply",
                    Drained::RequestDone { .. } => "done",
                    _ => "other",
                })
                .collect()
        })
        .collect();
    assert_eq!(
        kinds,
        vec![vec!["reply", "done"]],
        "A's host was woken per item"
    );
    assert_eq!(a.wakes.load(Ordering::SeqCst) - wakes, 1);
}

/// C closes before answering: once B has answered, the request ends (not at its timeout),
/// incomplete, naming C.
#[tokio::test(start_paused = true)]
async fn a_server_leaving_mid_request_ends_it_incomplete() {
    let (broker, [a, b, c]) = three().await;
    b.join("sb", &["r"]);
    c.join("sc", &["r"]);
    // C's host never sees the request: its queue holds it.
    broker.hold(c.node.queue_name());
    let (id, _) = fetch(&a, Duration::from_secs(60));
    let mut work = Vec::new();
    until(Duration::from_millis(100), "B's host is asked", || {
        work.extend(b.drain());
        !work.is_empty()
    })
    .await;
    let started = Instant::now();
    c.node.close().await;
    settle().await;
    let Drained::FetchSockets {
        from, request_id, ..
    } = &work[0]
    else {
        panic!("B was given {work:?}");
    };
    let sockets = vec![PacketPart::Text("sb".into())];
    let reply = Message::FetchSocketsResponse {
        request_id: *request_id,
        sockets,
    };
    b.node.reply(from, "/", reply);
    b.node.send_queued();
    let mut got = Vec::new();
    until(Duration::from_millis(100), "the request ends", || {
        got.extend(a.drain());
        done_of(&got, id).is_some()
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let (timed_out, answered, reason) = done_of(&got, id).unwrap();
    assert!(!timed_out);
    assert_eq!(answered, 1);
    let reason = reason.expect("incomplete");
    assert!(reason.contains(c.node.uid()), "{reason}");
}

/// B's host never answers: the request times out, saying how many answered (C, by Rust).
#[tokio::test(start_paused = true)]
async fn a_request_times_out_with_the_answers_it_got() {
    let (_broker, [a, b, _c]) = three().await;
    b.join("sb", &["r"]);
    let (id, _) = fetch(&a, Duration::from_millis(500));
    let started = Instant::now();
    let mut got = Vec::new();
    until(Duration::from_secs(1), "the request times out", || {
        got.extend(a.drain());
        done_of(&got, id).is_some()
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(done_of(&got, id), Some((true, 1, None)));
    assert_eq!(a.node.pending_requests(), 0);
}

/// Requests with different timeouts each end at their own deadline, whatever the order they were
/// opened in (the timer task sleeps until the earliest and is woken for an earlier one), and one
/// that completed does not time out later.
#[tokio::test(start_paused = true)]
async fn requests_time_out_at_their_own_deadlines_in_any_order() {
    let (_broker, [a, b, _c]) = three().await;
    b.join("sb", &["r"]);
    let started = Instant::now();
    // Each opened once the timer task sleeps again.
    let (long, _) = fetch(&a, Duration::from_secs(10));
    settle().await;
    let (short, _) = fetch(&a, Duration::from_secs(1));
    settle().await;
    let (middle, _) = fetch(&a, Duration::from_secs(3));
    let mut got = Vec::new();
    let mut ended = Vec::new();
    until(Duration::from_secs(11), "every request times out", || {
        for item in a.drain() {
            if let Drained::RequestDone { request_id, .. } = &item {
                ended.push((*request_id, started.elapsed()));
            }
            got.push(item);
        }
        ended.len() == 3
    })
    .await;
    let order: Vec<u32> = ended.iter().map(|(id, _)| *id).collect();
    assert_eq!(order, vec![short, middle, long]);
    for ((_, at), timeout) in ended.iter().zip([1, 3, 10]) {
        let timeout = Duration::from_secs(timeout);
        assert!(
            *at >= timeout && *at < timeout + Duration::from_millis(10),
            "ended after {at:?}, timeout {timeout:?}"
        );
    }
    for id in [short, middle, long] {
        assert_eq!(done_of(&got, id), Some((true, 1, None)));
    }
    assert_eq!(a.node.pending_requests(), 0);
}

/// No other server: nothing is sent and nothing stays open.
#[tokio::test(start_paused = true)]
async fn a_request_with_nobody_to_ask_sends_nothing() {
    let broker = MemoryBroker::new();
    let a = Server::serving(&broker, config(false)).await;
    settle().await;
    let before = broker.published().len();
    let (_, expected) = fetch(&a, Duration::from_secs(5));
    settle().await;
    assert_eq!(expected, 0);
    assert_eq!(broker.published().len(), before);
    assert_eq!(a.node.pending_requests(), 0);
}
