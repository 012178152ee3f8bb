//! The bus seam: what a node and an emitter need from the broker, and nothing else. Connect (to
//! one of the broker's URLs), then on that link: bind and unbind routing keys, publish in order,
//! and a stream of deliveries that ends when the connection is lost.
//!
//! Two implementations: [`amqp`] (RabbitMQ through lapin: the product) and, for `cargo test`,
//! `memory` (an in-process exchange the tests can hold, reorder and cut, so the cluster protocol
//! runs without a broker and in any interleaving). The node and the emitter only see these traits.

pub mod amqp;
#[cfg(test)]
pub(crate) mod memory;

use futures_lite::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use crate::transport::{LogError, Refused, WriteState};

/// A boxed future: the seam is used through `dyn`, so its methods return these.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What one connection is for: a server's (a queue it consumes, with bindings from the start)
/// or an emitter's (publish only).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Shown in the broker's connection list, unless the user chose a name.
    pub connection_name: String,
    /// The server's queue; `None` for a publish-only connection.
    pub queue: Option<String>,
    /// Unacknowledged deliveries the broker may push before waiting.
    pub prefetch: u16,
    /// Routing keys bound before deliveries start (the cluster key, the server's own key).
    pub initial_bindings: Vec<String>,
    /// How long the queue outlives a lost connection.
    pub queue_expiry: Duration,
    /// An earlier session declared the queue: the link finds out whether it is still there.
    pub queue_existed: bool,
}

impl Endpoint {
    /// A publish-only connection (the emitter).
    pub fn publisher(connection_name: String) -> Endpoint {
        Endpoint {
            connection_name,
            queue: None,
            prefetch: 0,
            initial_bindings: Vec::new(),
            queue_expiry: Duration::from_secs(60),
            queue_existed: false,
        }
    }
}

/// A broker, or a cluster of them: hands out connections.
pub trait Bus: Send + Sync {
    /// Connects (each URL in turn, the last one that worked first), declares what `endpoint`
    /// needs and, for a server, starts its deliveries.
    fn connect<'a>(&'a self, endpoint: &'a Endpoint) -> BusFuture<'a, Result<Connected, String>>;
}

/// A new connection: its link and, for a server, its deliveries.
pub struct Connected {
    pub link: Arc<dyn Link>,
    pub deliveries: Option<Box<dyn Deliveries>>,
}

/// One connection's publishing side. Everything on a link happens in call order: a binding and
/// the publishes after it reach the broker in that order.
pub trait Link: Send + Sync {
    fn bind<'a>(&'a self, key: &'a str) -> BusFuture<'a, Result<(), String>>;
    fn unbind<'a>(&'a self, key: &'a str) -> BusFuture<'a, Result<(), String>>;
    /// Binds (`true`) or unbinds each key, all in flight at once; the first error, if any.
    fn rebind<'a>(&'a self, changes: &'a [(String, bool)]) -> BusFuture<'a, Result<(), String>>;
    /// Hands each (routing key, body, copy-to key) to the connection, in order, without waiting
    /// for it to be written: the caller's thread queues it and wakes the connection's writer
    /// (waiting for each write would wake the caller's thread again per publish). The copy-to key
    /// also receives the message (the recovery log). A link that is not connected refuses: then
    /// the messages from the first refused one on were not handed off.
    fn hand_off(&self, messages: Vec<Outgoing<'_>>) -> Result<(), Refused>;
    /// Hands one message to the connection (as [`hand_off`](Self::hand_off)).
    fn publish(&self, key: &str, body: Vec<u8>) -> Result<(), String>;
    /// How the writes of the last hand-off stand, found out without waking anyone.
    fn write_state(&self) -> WriteState;
    /// Resolves once everything handed off so far is written (or its writing failed).
    fn written(&self) -> BusFuture<'_, Result<(), String>>;
    /// An earlier session declared the queue and it was still there.
    fn queue_kept(&self) -> bool;
    /// An earlier session declared the queue and it was gone.
    fn queue_lost(&self) -> bool;
    /// Makes sure the recovery log (a stream) exists and binds it with `key`.
    fn declare_log<'a>(
        &'a self,
        stream: &'a str,
        key: &'a str,
        arguments: lapin::types::FieldTable,
    ) -> BusFuture<'a, Result<(), LogError>>;
    /// The AMQP connection, for reading the recovery log (streams exist on RabbitMQ only).
    fn log_connection(&self) -> Option<Arc<lapin::Connection>>;
    /// Deletes the server's queue (closing for good).
    fn delete_queue(&self) -> BusFuture<'_, Result<(), String>>;
    fn close(&self) -> BusFuture<'_, ()>;
    /// Runs the server's receive task (its consumer loop) where deliveries are cheapest to take:
    /// for RabbitMQ, on the connection's lapin I/O thread (see `io_thread.rs`).
    fn spawn_receiver(&self, task: BusFuture<'static, ()>);
}

/// One message to publish: routing key, body, and the key of a copy (the recovery log).
pub type Outgoing<'a> = (String, Vec<u8>, Option<&'a str>);

/// One message delivered to the server's queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Vec<u8>,
    /// The routing key it was published with.
    pub key: String,
}

/// A server's deliveries, in queue order. The stream ends (or yields an error) when the
/// connection is lost; what was not acknowledged is then delivered again to the next session.
pub trait Deliveries: Stream<Item = Result<Delivery, String>> + Send + Unpin {
    /// Acknowledges every delivery this stream has yielded so far.
    fn ack_delivered(&mut self) -> BusFuture<'_, ()>;
}
