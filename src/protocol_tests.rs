//! The cluster protocol, run on the in-memory bus (`bus::memory`): several nodes in one process,
//! on tokio's paused clock, so every interleaving a test sets up happens the same way on every
//! run, and a heartbeat interval passes in no real time. No broker, no JS: the host is the test,
//! draining what a node hands it.

use crate::bus::memory::{MemoryBroker, MemoryBus};
use crate::cluster::{Drained, Node, NodeConfig};
use crate::transport::{namespace_key, BrokerConfig, CLUSTER_KEY};
use crate::wire::{self, Message, PacketPart, Target, WriteFlags};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Heartbeats so rare that a test that converges has done it by hello and answer alone.
const RARE_HEARTBEATS: Duration = Duration::from_secs(3600);

fn config(room_routing: bool) -> NodeConfig {
    let mut broker = BrokerConfig::new("memory://");
    broker.reconnect_delay = Duration::from_millis(50);
    broker.reconnect_delay_max = Duration::from_millis(200);
    NodeConfig {
        broker,
        queue_prefix: "test".into(),
        instance_name: "node".into(),
        prefetch: 100,
        max_pending_deliveries: 10_000,
        heartbeat_interval: RARE_HEARTBEATS,
        heartbeat_timeout: RARE_HEARTBEATS * 3,
        room_routing,
        queue_expiry: Duration::from_secs(60),
        recovery: None,
    }
}

/// One server: its node and how often it woke its host.
struct Server {
    node: Arc<Node>,
    wakes: Arc<AtomicUsize>,
}

impl Server {
    fn new(broker: &Arc<MemoryBroker>, config: NodeConfig) -> Server {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = wakes.clone();
        let waker = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let bus = Arc::new(MemoryBus(broker.clone()));
        let node = Node::with_bus(config, waker, bus);
        node.start();
        Server { node, wakes }
    }

    /// A server serving `/`, started on `broker` (not awaited: see [`Server::serving`]).
    async fn serving(broker: &Arc<MemoryBroker>, config: NodeConfig) -> Server {
        let server = Server::new(broker, config);
        // As the adapter does: the namespace's state exists before it is bound.
        server.node.namespace("/");
        server
            .node
            .bind_namespace("/")
            .await
            .expect("binding / on the in-memory bus");
        server
    }

    fn count(&self, nsp: &str) -> usize {
        self.node.server_count(nsp)
    }

    fn join(&self, sid: &str, rooms: &[&str]) {
        let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        let ns = self.node.namespace("/");
        let outcome = ns.index.lock().add_all(sid, &rooms);
        let created = rooms
            .iter()
            .zip(&outcome.changes)
            .filter(|(_, c)| **c & crate::room_index::ROOM_CREATED != 0)
            .map(|(r, _)| r.as_str());
        self.node.rooms_changed("/", created);
    }

    fn broadcast(&self, rooms: &[&str], text: &str) {
        let message = Message::Broadcast {
            target: target(rooms),
            flags: WriteFlags::default(),
            packet: vec![PacketPart::Text(text.into())],
            ack: None,
            offset: None,
        };
        self.node.publish("/", message);
        self.node.send_queued();
    }

    fn drain(&self) -> Vec<Drained> {
        self.node.drain()
    }

    /// The packets drained, as text (other work is dropped).
    fn packets(&self) -> Vec<String> {
        self.drain()
            .into_iter()
            .filter_map(|item| match item {
                Drained::Broadcast { packet, .. } => match &packet[0] {
                    PacketPart::Text(text) => Some(text.clone()),
                    PacketPart::Binary(_) => None,
                },
                _ => None,
            })
            .collect()
    }
}

fn target(rooms: &[&str]) -> Target {
    Target {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        except: Vec::new(),
    }
}

/// Runs the other tasks until `done` holds, failing after `within` of (paused) time.
async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "not within {within:?} (virtual): {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets every task run until nothing is left to do now (time does not pass).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn all_count(servers: &[Server], expected: usize) -> bool {
    servers.iter().all(|s| s.count("/") == expected)
}

mod membership {
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
        let broker = MemoryBroker::new();
        let servers = [
            Server::serving(&broker, config(false)).await,
            Server::serving(&broker, config(false)).await,
            Server::serving(&broker, config(false)).await,
        ];
        until(Duration::from_millis(100), "3 count 3", || {
            all_count(&servers, 3)
        })
        .await;
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
}

mod requests {
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

    async fn three() -> (Arc<MemoryBroker>, [Server; 3]) {
        let broker = MemoryBroker::new();
        let servers = [
            Server::serving(&broker, config(false)).await,
            Server::serving(&broker, config(false)).await,
            Server::serving(&broker, config(false)).await,
        ];
        until(Duration::from_millis(100), "3 count 3", || {
            all_count(&servers, 3)
        })
        .await;
        (broker, servers)
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
        let mut work = Vec::new();
        until(Duration::from_millis(100), "B's host is asked", || {
            work.extend(b.drain());
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
            panic!("B was given {work:?}");
        };
        assert_eq!((slots.len(), from.as_str()), (1, a.node.uid()));
        b.node.reply(
            from,
            "/",
            Message::FetchSocketsResponse {
                request_id: *request_id,
                sockets: vec![PacketPart::Text("sb".into())],
            },
        );
        b.node.send_queued();
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
}

mod delivery {
    use super::*;

    async fn pair(room_routing: bool) -> (Arc<MemoryBroker>, Server, Server) {
        let broker = MemoryBroker::new();
        let a = Server::serving(&broker, config(room_routing)).await;
        let b = Server::serving(&broker, config(room_routing)).await;
        until(Duration::from_millis(100), "both count 2", || {
            a.count("/") == 2 && b.count("/") == 2
        })
        .await;
        (broker, a, b)
    }

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
            let message = Message::Broadcast {
                target: target(&["r"]),
                flags: WriteFlags::default(),
                packet: vec![PacketPart::Text(i.to_string())],
                ack: None,
                offset: None,
            };
            a.node.publish("/", message);
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
                .publish(&namespace_key("/"), &junk)
                .await
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
}
