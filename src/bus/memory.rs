//! An in-process bus for the protocol tests: one direct exchange, queues that outlive their
//! connection (as the servers' queues do at the broker, until deleted), unacknowledged deliveries
//! delivered again after a lost connection. The tests control what a real broker only does now
//! and then: hold a queue's deliveries and let some senders' through first (reordering between
//! senders; each sender's own order is kept, as one AMQP channel's is), stall a queue's bindings,
//! drop every connection at once, refuse new ones.

use super::{
    Bus, BusFuture, Connected, Deliveries, Delivery, Endpoint, Link, LogError, Outgoing, Refused,
    WriteState,
};
use futures_lite::Stream;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, Notify};

#[derive(Default)]
pub struct MemoryBroker {
    state: Mutex<State>,
    /// Wakes stalled bindings when the test lets them through.
    unstalled: Notify,
    /// Wakes those waiting for held writes.
    writes_released: Notify,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// Routing key → queues bound with it.
    bindings: HashMap<String, BTreeSet<String>>,
    live: HashSet<u64>,
    next_connection: u64,
    refusing: bool,
    /// Queues whose bindings wait until `unstall_binds`.
    stalled: HashSet<String>,
    /// Every publish, in order: (routing key, body).
    published: Vec<(String, Vec<u8>)>,
    /// Hand-offs are not written (routed) until `release_writes`, as when lapin's writer lags.
    holding_writes: bool,
    /// Held hand-offs: (connection, routing key, body, copy-to key).
    unwritten: Vec<(u64, String, Vec<u8>, Option<String>)>,
    /// Connections that were dropped with hand-offs not written.
    failed_writes: HashSet<u64>,
}

#[derive(Default)]
struct Queue {
    consumer: Option<(u64, mpsc::UnboundedSender<(u64, Delivery)>)>,
    /// Not delivered yet: no consumer, or held.
    ready: VecDeque<Delivery>,
    unacked: VecDeque<(u64, Delivery)>,
    next_tag: u64,
    held: bool,
}

impl Queue {
    /// The consumer is gone: what it had not acknowledged is delivered again, first, in order.
    fn requeue_unacked(&mut self) {
        self.consumer = None;
        while let Some((_, delivery)) = self.unacked.pop_back() {
            self.ready.push_front(delivery);
        }
    }

    /// Hands what is ready to the consumer, unless held.
    fn deliver(&mut self) {
        if self.held {
            return;
        }
        let Some((_, consumer)) = &self.consumer else {
            return;
        };
        while let Some(delivery) = self.ready.pop_front() {
            self.next_tag += 1;
            let _ = consumer.send((self.next_tag, delivery.clone()));
            self.unacked.push_back((self.next_tag, delivery));
        }
    }
}

impl State {
    fn route(&mut self, key: &str, copy_to: Option<&str>, body: &[u8]) {
        self.published.push((key.to_string(), body.to_vec()));
        let mut targets: BTreeSet<String> = self.bindings.get(key).cloned().unwrap_or_default();
        if let Some(copy) = copy_to.and_then(|copy| self.bindings.get(copy)) {
            targets.extend(copy.iter().cloned());
        }
        for name in targets {
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.ready.push_back(Delivery {
                    body: body.to_vec(),
                    key: key.to_string(),
                });
                queue.deliver();
            }
        }
    }
}

impl MemoryBroker {
    pub fn new() -> Arc<MemoryBroker> {
        Arc::default()
    }

    /// Drops every connection at once (as a broker restart or a network cut would): their
    /// deliveries end with an error, their links fail, and what they had not acknowledged is
    /// delivered again to the next consumer of their queues.
    pub fn drop_connections(&self) {
        let mut state = self.state.lock();
        state.live.clear();
        let lost: Vec<u64> = state.unwritten.drain(..).map(|(c, ..)| c).collect();
        state.failed_writes.extend(lost);
        self.writes_released.notify_waiters();
        for queue in state.queues.values_mut() {
            queue.requeue_unacked();
        }
    }

    /// Keeps what links hand off from being written until `release_writes`.
    pub fn hold_writes(&self) {
        self.state.lock().holding_writes = true;
    }

    /// Writes (routes) the held hand-offs, in order, and stops holding.
    pub fn release_writes(&self) {
        let mut state = self.state.lock();
        state.holding_writes = false;
        for (_, key, body, copy_to) in std::mem::take(&mut state.unwritten) {
            state.route(&key, copy_to.as_deref(), &body);
        }
        self.writes_released.notify_waiters();
    }

    /// Hand-offs held, not written.
    pub fn unwritten(&self) -> usize {
        self.state.lock().unwritten.len()
    }

    /// Refuses (`true`) or accepts new connections.
    pub fn refuse_connections(&self, refusing: bool) {
        self.state.lock().refusing = refusing;
    }

    /// Keeps what arrives for `queue` from its consumer until released.
    pub fn hold(&self, queue: &str) {
        let mut state = self.state.lock();
        state.queues.entry(queue.to_string()).or_default().held = true;
    }

    /// Delivers the held messages of `queue` that `first` picks, in their order, and keeps
    /// holding the others (a reordering between senders).
    pub fn release_only(&self, queue: &str, first: impl Fn(&Delivery) -> bool) {
        let mut state = self.state.lock();
        let Some(queue) = state.queues.get_mut(queue) else {
            return;
        };
        let (picked, kept): (VecDeque<Delivery>, VecDeque<Delivery>) =
            queue.ready.drain(..).partition(|d| first(d));
        queue.ready = picked;
        queue.held = false;
        queue.deliver();
        queue.ready = kept;
        queue.held = true;
    }

    /// Stops holding `queue`: what waited is delivered, in order.
    pub fn release(&self, queue: &str) {
        let mut state = self.state.lock();
        if let Some(queue) = state.queues.get_mut(queue) {
            queue.held = false;
            queue.deliver();
        }
    }

    /// Messages held for `queue`.
    pub fn held(&self, queue: &str) -> Vec<Delivery> {
        let state = self.state.lock();
        state
            .queues
            .get(queue)
            .map(|q| q.ready.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes `queue`'s bindings wait (as a slow broker would) until `unstall_binds`.
    pub fn stall_binds(&self, queue: &str) {
        self.state.lock().stalled.insert(queue.to_string());
    }

    pub fn unstall_binds(&self, queue: &str) {
        self.state.lock().stalled.remove(queue);
        self.unstalled.notify_waiters();
    }

    /// Whether `queue` exists and is bound with `key`.
    pub fn is_bound(&self, queue: &str, key: &str) -> bool {
        let state = self.state.lock();
        state.bindings.get(key).is_some_and(|q| q.contains(queue))
    }

    pub fn queue_exists(&self, queue: &str) -> bool {
        self.state.lock().queues.contains_key(queue)
    }

    /// Every publish so far: (routing key, body).
    pub fn published(&self) -> Vec<(String, Vec<u8>)> {
        self.state.lock().published.clone()
    }

    /// Deletes a queue and its bindings (as a broker restart does to non-durable queues).
    pub fn lose_queue(&self, queue: &str) {
        let mut state = self.state.lock();
        state.queues.remove(queue);
        for bound in state.bindings.values_mut() {
            bound.remove(queue);
        }
    }
}

/// One server's (or emitter's) way to the shared [`MemoryBroker`].
pub struct MemoryBus(pub Arc<MemoryBroker>);

impl Bus for MemoryBus {
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> BusFuture<'a, Result<Connected, String>> {
        Box::pin(async move {
            let mut state = self.0.state.lock();
            if state.refusing {
                return Err("connection refused (in-memory bus)".to_string());
            }
            state.next_connection += 1;
            let connection = state.next_connection;
            state.live.insert(connection);
            let mut queue_kept = false;
            let mut deliveries = None;
            if let Some(name) = &endpoint.queue {
                queue_kept = endpoint.queue_existed && state.queues.contains_key(name);
                for key in &endpoint.initial_bindings {
                    let bound = state.bindings.entry(key.clone()).or_default();
                    bound.insert(name.clone());
                }
                let (sender, receiver) = mpsc::unbounded_channel();
                let queue = state.queues.entry(name.clone()).or_default();
                queue.consumer = Some((connection, sender));
                queue.deliver();
                deliveries = Some(Box::new(MemoryDeliveries {
                    broker: self.0.clone(),
                    connection,
                    queue: name.clone(),
                    receiver,
                    last_tag: 0,
                    failed: false,
                }) as Box<dyn Deliveries>);
            }
            Ok(Connected {
                link: Arc::new(MemoryLink {
                    broker: self.0.clone(),
                    connection,
                    queue: endpoint.queue.clone().unwrap_or_default(),
                    queue_existed: endpoint.queue_existed,
                    queue_kept,
                }),
                deliveries,
            })
        })
    }
}

struct MemoryLink {
    broker: Arc<MemoryBroker>,
    connection: u64,
    queue: String,
    queue_existed: bool,
    queue_kept: bool,
}

impl MemoryLink {
    fn live(&self, state: &State) -> Result<(), String> {
        if state.live.contains(&self.connection) {
            Ok(())
        } else {
            Err("the connection was dropped (in-memory bus)".to_string())
        }
    }

    /// Routes a hand-off now, or holds it while the broker holds writes.
    fn write(&self, state: &mut State, key: String, body: Vec<u8>, copy_to: Option<&str>) {
        if state.holding_writes {
            let copy_to = copy_to.map(str::to_string);
            state.unwritten.push((self.connection, key, body, copy_to));
        } else {
            state.route(&key, copy_to, &body);
        }
    }

    async fn set_binding(&self, key: &str, bind: bool) -> Result<(), String> {
        loop {
            let unstalled = self.broker.unstalled.notified();
            tokio::pin!(unstalled);
            unstalled.as_mut().enable();
            {
                let mut state = self.broker.state.lock();
                self.live(&state)?;
                if !state.stalled.contains(&self.queue) {
                    let bound = state.bindings.entry(key.to_string()).or_default();
                    if bind {
                        bound.insert(self.queue.clone());
                    } else {
                        bound.remove(&self.queue);
                    }
                    return Ok(());
                }
            }
            unstalled.await;
        }
    }
}

impl Link for MemoryLink {
    fn bind<'a>(&'a self, key: &'a str) -> BusFuture<'a, Result<(), String>> {
        Box::pin(self.set_binding(key, true))
    }

    fn unbind<'a>(&'a self, key: &'a str) -> BusFuture<'a, Result<(), String>> {
        Box::pin(self.set_binding(key, false))
    }

    fn rebind<'a>(&'a self, changes: &'a [(String, bool)]) -> BusFuture<'a, Result<(), String>> {
        Box::pin(async move {
            for (key, bind) in changes {
                self.set_binding(key, *bind).await?;
            }
            Ok(())
        })
    }

    fn hand_off(&self, messages: Vec<Outgoing<'_>>) -> Result<(), Refused> {
        let mut state = self.broker.state.lock();
        for (accepted, (key, body, copy_to)) in messages.into_iter().enumerate() {
            self.live(&state)
                .map_err(|reason| Refused { accepted, reason })?;
            self.write(&mut state, key, body, copy_to);
        }
        Ok(())
    }

    fn publish(&self, key: &str, body: Vec<u8>) -> Result<(), String> {
        let mut state = self.broker.state.lock();
        self.live(&state)?;
        self.write(&mut state, key.to_string(), body, None);
        Ok(())
    }

    fn write_state(&self) -> WriteState {
        let state = self.broker.state.lock();
        if state.failed_writes.contains(&self.connection) {
            WriteState::Failed("the connection was dropped before writing (in-memory bus)".into())
        } else if state.unwritten.iter().any(|(c, ..)| *c == self.connection) {
            WriteState::Pending
        } else {
            WriteState::Done
        }
    }

    fn spawn_receiver(&self, task: BusFuture<'static, ()>) {
        tokio::spawn(task);
    }

    fn written(&self) -> BusFuture<'_, Result<(), String>> {
        Box::pin(async move {
            loop {
                let released = self.broker.writes_released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                match self.write_state() {
                    WriteState::Done => return Ok(()),
                    WriteState::Failed(reason) => return Err(reason),
                    WriteState::Pending => released.await,
                }
            }
        })
    }

    fn queue_kept(&self) -> bool {
        self.queue_kept
    }

    fn queue_lost(&self) -> bool {
        self.queue_existed && !self.queue_kept
    }

    fn declare_log<'a>(
        &'a self,
        _stream: &'a str,
        _key: &'a str,
        _arguments: lapin::types::FieldTable,
    ) -> BusFuture<'a, Result<(), LogError>> {
        Box::pin(async {
            Err(LogError::Unsupported(
                "the in-memory bus has no streams".into(),
            ))
        })
    }

    fn log_connection(&self) -> Option<Arc<lapin::Connection>> {
        None
    }

    fn delete_queue(&self) -> BusFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let state = self.broker.state.lock();
            self.live(&state)?;
            drop(state);
            self.broker.lose_queue(&self.queue);
            Ok(())
        })
    }

    fn close(&self) -> BusFuture<'_, ()> {
        Box::pin(async move {
            let mut state = self.broker.state.lock();
            state.live.remove(&self.connection);
            if let Some(queue) = state.queues.get_mut(&self.queue) {
                if queue
                    .consumer
                    .as_ref()
                    .is_some_and(|c| c.0 == self.connection)
                {
                    queue.requeue_unacked();
                }
            }
        })
    }
}

struct MemoryDeliveries {
    broker: Arc<MemoryBroker>,
    connection: u64,
    queue: String,
    receiver: mpsc::UnboundedReceiver<(u64, Delivery)>,
    last_tag: u64,
    failed: bool,
}

impl Stream for MemoryDeliveries {
    type Item = Result<Delivery, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let live = self.broker.state.lock().live.contains(&self.connection);
        if !live {
            self.failed = true;
            let error = "the broker connection failed: dropped (in-memory bus)".to_string();
            return Poll::Ready(Some(Err(error)));
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some((tag, delivery))) => {
                self.last_tag = tag;
                Poll::Ready(Some(Ok(delivery)))
            }
            Poll::Ready(None) => {
                // The broker dropped the consumer: the connection is gone.
                self.failed = true;
                let error = "the broker connection failed: dropped (in-memory bus)".to_string();
                Poll::Ready(Some(Err(error)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Deliveries for MemoryDeliveries {
    fn ack_delivered(&mut self) -> BusFuture<'_, ()> {
        Box::pin(async move {
            let mut state = self.broker.state.lock();
            if !state.live.contains(&self.connection) {
                return;
            }
            if let Some(queue) = state.queues.get_mut(&self.queue) {
                while queue
                    .unacked
                    .front()
                    .is_some_and(|(tag, _)| *tag <= self.last_tag)
                {
                    queue.unacked.pop_front();
                }
            }
        })
    }
}
