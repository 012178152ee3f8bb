//! AMQP transport (lapin): one connection per server, one channel that publishes and manages
//! bindings (so a binding and the publishes after it reach the broker in order), one channel that
//! consumes the server's own queue.
//!
//! Topology: a non-durable `direct` exchange shared by the cluster; per server an exclusive,
//! auto-delete queue whose name the client picks (`<prefix>.<instance>.<uid>`), bound with one
//! routing key per namespace the server serves. A message is published once per namespace key and
//! RabbitMQ copies it to each bound queue at most once.

use crate::io_thread::IoThread;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::ShortString;
use lapin::types::{AMQPValue, FieldTable};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How a node or an emitter reaches the broker: what the adapter and the emitter share.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Broker URLs, tried in turn (a RabbitMQ cluster); the last one that worked first.
    pub urls: Vec<String>,
    /// The cluster's exchange (`exchangeName`, default `socket.io`).
    pub exchange: String,
    pub connect_timeout: Duration,
    /// First delay before reconnecting; it doubles per failed attempt up to `reconnect_delay_max`.
    pub reconnect_delay: Duration,
    pub reconnect_delay_max: Duration,
    /// Publishes that may wait to go out; when full the oldest is dropped, counted and reported.
    pub publish_buffer: usize,
    /// Extra CA certificates (PEM) to trust for `amqps://` URLs.
    pub tls_ca: Option<String>,
    /// The connection name shown by the broker, when the user chose one.
    pub connection_name: Option<String>,
}

impl BrokerConfig {
    /// The adapter's defaults for one broker URL.
    pub fn new(url: &str) -> Self {
        BrokerConfig {
            urls: vec![url.to_string()],
            exchange: "socket.io".into(),
            connect_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_millis(500),
            reconnect_delay_max: Duration::from_secs(30),
            publish_buffer: 10_000,
            tls_ca: None,
            connection_name: None,
        }
    }

    /// The settings for one connection attempt to `url`.
    pub fn transport(&self, url: &str, connection_name: String) -> TransportConfig {
        TransportConfig {
            url: url.to_string(),
            exchange: self.exchange.clone(),
            queue: None,
            connection_name: self.connection_name.clone().unwrap_or(connection_name),
            connect_timeout: self.connect_timeout,
            prefetch: 0,
            initial_bindings: Vec::new(),
            queue_expiry: Duration::from_secs(60),
            queue_existed: false,
            tls_ca: self.tls_ca.clone(),
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub url: String,
    pub exchange: String,
    /// The queue to declare and consume; `None` for a publish-only connection (the emitter).
    pub queue: Option<String>,
    /// Shown in the broker's connection list (`rabbitmqctl list_connections name`).
    pub connection_name: String,
    pub connect_timeout: Duration,
    pub prefetch: u16,
    /// Routing keys bound before consuming starts (the cluster key, the server's own key).
    pub initial_bindings: Vec<String>,
    /// The broker deletes the queue this long after its last consumer left: it outlives a lost
    /// connection, so what is sent meanwhile waits for the reconnect.
    pub queue_expiry: Duration,
    /// The queue was declared by an earlier session: find out whether it is still there.
    pub queue_existed: bool,
    /// Extra CA certificates (PEM) to trust for `amqps://`, besides the system's.
    pub tls_ca: Option<String>,
}

pub struct Transport {
    /// Shared with the recovery log's scans, which open channels of their own.
    connection: Arc<Connection>,
    publisher: Channel,
    exchange: String,
    queue: String,
    /// An earlier session declared the queue; `queue_kept` says whether it was still there.
    queue_existed: bool,
    /// An earlier session's queue was still there (its messages waited for this session).
    queue_kept: bool,
    /// How this connection was made (for a set-up connection beside it: see `declare_log`).
    config: TransportConfig,
    /// The write of the last publish handed to lapin (see `hand_off`).
    last_write: Mutex<LastWrite>,
    /// Runs the receive task on this connection's lapin I/O thread.
    io_thread: IoThread,
}

/// A server's consumer and the channel it consumes on (acknowledgements go on it directly).
pub struct Consuming {
    pub channel: Channel,
    pub consumer: Consumer,
}

/// A publish lapin has queued, whose write nobody waits for unless they ask: lapin writes in queue
/// order, so once the last one is written, so is every one before.
#[derive(Default)]
struct LastWrite {
    write: Option<InFlight<'static, lapin::Result<PublisherConfirm>>>,
    /// The task waiting for it (`written`). Only that task polls the write meanwhile, since a poll
    /// replaces the waker lapin wakes at completion; and a newer hand-off, which replaces the
    /// write, wakes it to wait for the new one (else it would wait on a write nobody holds).
    waiter: Option<Waker>,
    /// A write failed: the connection is broken, and says so from now on.
    failed: Option<String>,
}

impl LastWrite {
    /// Polls the write (if any); a result ends it.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if let Some(reason) = &self.failed {
            return Poll::Ready(Err(reason.clone()));
        }
        let Some(write) = self.write.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(write.as_mut().poll(cx));
        self.write = None;
        Poll::Ready(result.map(|_| ()).map_err(|e| {
            let reason = format!("publishing failed: {e}");
            self.failed = Some(reason.clone());
            reason
        }))
    }
}

const NAMESPACE_KEY_PREFIX: &str = "nsp:";
const SERVER_KEY_PREFIX: &str = "srv:";

/// The routing key every server serving `nsp` binds.
pub fn namespace_key(nsp: &str) -> String {
    format!("{NAMESPACE_KEY_PREFIX}{nsp}")
}

/// The routing key only the server `uid` binds: replies to its requests.
pub fn server_key(uid: &str) -> String {
    format!("{SERVER_KEY_PREFIX}{uid}")
}

/// The routing key every server binds: hellos, heartbeats and goodbyes.
pub const CLUSTER_KEY: &str = "cluster";

/// The routing key that reaches the recovery log (see `recovery`).
pub const LOG_KEY: &str = "recovery-log";

/// Whether a server bound to `key` stays bound for as long as it serves it (namespace and server
/// keys, not room keys), so a message it missed on that key is a loss (see `sequence.rs`).
pub fn is_gap_checked_key(key: &str) -> bool {
    key.starts_with(NAMESPACE_KEY_PREFIX) || key.starts_with(SERVER_KEY_PREFIX)
}

/// AMQP routing keys are short strings: at most 255 bytes.
const MAX_ROUTING_KEY: usize = 255;

/// With room routing, the key a server binds while it has members in `room` of `nsp`, and the key
/// a single-room broadcast is published to. `None` for rooms that are not bound, whose broadcasts
/// go to the namespace key: a key too long for AMQP, and rooms that look like socket ids (every
/// socket is in its own room: binding those would cost a broker round trip per connection, and a
/// message to a socket right after it connected could beat its binding). The namespace's length
/// comes first so no two (namespace, room) pairs share a key.
pub fn room_key(nsp: &str, room: &str) -> Option<String> {
    routable_room(nsp, room).then(|| format!("room:{}:{nsp}:{room}", nsp.len()))
}

/// Whether `room` of `nsp` has a [`room_key`] (without building it).
pub fn routable_room(nsp: &str, room: &str) -> bool {
    // Called per broadcast: the length's digits are counted, not formatted.
    let digits = nsp.len().checked_ilog10().map_or(1, |log| log as usize + 1);
    let key_len = "room:".len() + digits + 1 + nsp.len() + 1 + room.len();
    key_len <= MAX_ROUTING_KEY && !looks_like_socket_id(room)
}

/// Socket.IO v4 socket ids: 20 characters of base64url (15 random bytes). A room name that merely
/// looks like one is just not room-routed.
fn looks_like_socket_id(room: &str) -> bool {
    room.len() == 20
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Transport {
    /// Connects, declares the exchange and (unless publish-only) the server's queue, and starts
    /// consuming it.
    pub async fn connect(
        config: &TransportConfig,
    ) -> Result<(Transport, Option<Consuming>), String> {
        let timeout = config.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(config)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "could not connect to the AMQP broker at {} within {} ms",
                redact(&config.url),
                timeout.as_millis()
            )),
        }
    }

    async fn connect_inner(
        config: &TransportConfig,
    ) -> Result<(Transport, Option<Consuming>), String> {
        let properties = ConnectionProperties::default()
            .with_connection_name(config.connection_name.clone().into());
        let (connection, io_thread) = open_connection(config, properties).await?;
        let step = |what: &'static str| move |e: lapin::Error| format!("{what} failed: {e}");

        let publisher = connection
            .create_channel()
            .await
            .map_err(step("opening a channel"))?;
        publisher
            .exchange_declare(
                config.exchange.clone().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                format!(
          "declaring exchange '{}' (direct, non-durable) failed: {e}; if an exchange of that name \
           already exists with another type or durability, pick another `exchangeName`",
          config.exchange
        )
            })?;

        let mut queue_kept = false;
        let consumer = match &config.queue {
            Some(queue) => {
                queue_kept = config.queue_existed && Self::queue_exists(&connection, queue).await?;
                Some(Self::consume(&connection, config, queue).await?)
            }
            None => None,
        };
        let transport = Transport {
            connection: Arc::new(connection),
            publisher,
            exchange: config.exchange.clone(),
            queue: config.queue.clone().unwrap_or_default(),
            queue_existed: config.queue_existed,
            queue_kept,
            config: config.clone(),
            last_write: Mutex::default(),
            io_thread,
        };
        Ok((transport, consumer))
    }

    /// Whether `queue` exists (a passive declare; the broker closes the channel when it does
    /// not, so it gets a channel of its own).
    async fn queue_exists(connection: &Connection, queue: &str) -> Result<bool, String> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("opening a channel failed: {e}"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(true)
            }
            Err(error) => match error.kind() {
                lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404 => Ok(false),
                _ => Err(format!("looking for the server's queue failed: {error}")),
            },
        }
    }

    /// An earlier session's queue was still there when this one connected.
    pub fn queue_kept(&self) -> bool {
        self.queue_kept
    }

    /// An earlier session declared the queue and it was gone when this one connected.
    pub fn queue_lost(&self) -> bool {
        self.queue_existed && !self.queue_kept
    }

    /// Declares the server's queue, binds the initial keys and starts consuming.
    async fn consume(
        connection: &Connection,
        config: &TransportConfig,
        queue: &str,
    ) -> Result<Consuming, String> {
        let step = |what: &'static str| move |e: lapin::Error| format!("{what} failed: {e}");
        let channel = connection
            .create_channel()
            .await
            .map_err(step("opening a channel"))?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(step("setting the prefetch"))?;
        channel
            .queue_declare(
                queue.into(),
                // Not exclusive: an exclusive queue dies with its connection, and whatever is
                // sent to it while the server reconnects is lost. This one waits `x-expires`
                // for a consumer to come back; `close()` deletes it at once.
                QueueDeclareOptions::default(),
                queue_arguments(config.queue_expiry),
            )
            .await
            .map_err(step("declaring the server's queue"))?;
        for key in &config.initial_bindings {
            channel
                .queue_bind(
                    queue.into(),
                    config.exchange.clone().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("binding '{key}' failed: {e}"))?;
        }
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(step("consuming the server's queue"))?;
        Ok(Consuming { channel, consumer })
    }

    /// Runs the server's receive task on this connection's lapin I/O thread (see `io_thread.rs`).
    pub fn spawn_receiver(&self, task: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.io_thread.spawn(task);
    }

    pub async fn bind(&self, routing_key: &str) -> Result<(), String> {
        self.publisher
            .queue_bind(
                self.queue.clone().into(),
                self.exchange.clone().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("binding '{routing_key}' failed: {e}"))
    }

    pub async fn unbind(&self, routing_key: &str) -> Result<(), String> {
        self.publisher
            .queue_unbind(
                self.queue.clone().into(),
                self.exchange.clone().into(),
                routing_key.into(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("unbinding '{routing_key}' failed: {e}"))
    }

    /// Binds (`true`) or unbinds each key, all in flight at once (the broker answers a channel's
    /// requests in order, so pipelining costs one round trip instead of one per key).
    pub async fn rebind(&self, changes: &[(String, bool)]) -> Result<(), String> {
        let requests = changes
            .iter()
            .map(|(key, bind)| -> InFlight<'_, Result<(), String>> {
                if *bind {
                    Box::pin(self.bind(key))
                } else {
                    Box::pin(self.unbind(key))
                }
            })
            .collect();
        all_in_order(requests).await.into_iter().collect()
    }

    /// Publishes every (routing key, body) in order, all in flight at once: one hand-off to
    /// lapin's I/O thread for the lot instead of a round trip each. One result per publish.
    /// `copy_to`: a second routing key the broker also delivers the message to (the recovery
    /// log), through the `BCC` header: one publish, and the broker strips the header.
    /// Queues the publishes in lapin, in order, on the calling thread (lapin's I/O thread is woken
    /// from here), and keeps the last one's write for `write_state` / `written`.
    pub fn hand_off(&self, messages: Vec<(String, Vec<u8>, Option<&str>)>) -> Result<(), Refused> {
        let noop = &mut Context::from_waker(Waker::noop());
        let mut last = None;
        for (accepted, (key, body, copy_to)) in messages.into_iter().enumerate() {
            let mut write = self.publish_owned(key, body, copy_to);
            // The first poll queues the frames; what is left is waiting for the write.
            match write.as_mut().poll(noop) {
                Poll::Ready(Err(e)) => {
                    return Err(Refused {
                        accepted,
                        reason: format!("publishing failed: {e}"),
                    })
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => last = Some(write),
            }
        }
        if let Some(write) = last {
            let mut last_write = self.last_write.lock();
            last_write.write = Some(write);
            if let Some(waiter) = last_write.waiter.take() {
                waiter.wake();
            }
        }
        Ok(())
    }

    fn publish_owned(
        &self,
        routing_key: String,
        body: Vec<u8>,
        copy_to: Option<&str>,
    ) -> InFlight<'static, lapin::Result<PublisherConfirm>> {
        let properties = match copy_to {
            None => BasicProperties::default(),
            Some(key) => {
                let mut headers = FieldTable::default();
                let keys = vec![AMQPValue::LongString(key.into())];
                headers.insert("BCC".into(), AMQPValue::FieldArray(keys.into()));
                BasicProperties::default().with_headers(headers)
            }
        };
        let channel = self.publisher.clone();
        let exchange = ShortString::from(self.exchange.as_str());
        Box::pin(async move {
            channel
                .basic_publish(
                    exchange,
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
        })
    }

    /// Where the last hand-off's write is, without waking anyone.
    pub fn write_state(&self) -> WriteState {
        let mut last_write = self.last_write.lock();
        if last_write.waiter.is_some() {
            return WriteState::Pending;
        }
        match last_write.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => WriteState::Pending,
            Poll::Ready(Ok(())) => WriteState::Done,
            Poll::Ready(Err(reason)) => WriteState::Failed(reason),
        }
    }

    /// Resolves once the last hand-off is written (or failed to be).
    pub async fn written(&self) -> Result<(), String> {
        std::future::poll_fn(|cx| {
            let mut last_write = self.last_write.lock();
            let poll = last_write.poll(cx);
            last_write.waiter = poll.is_pending().then(|| cx.waker().clone());
            poll
        })
        .await
    }

    /// Makes sure the recovery log (a durable stream) exists and binds it to the exchange with
    /// `key`. Declaring a stream on a broker without streams is a *connection* error (541), so a
    /// missing stream is declared on a short-lived connection of its own: the session's connection
    /// never risks it. A stream that exists is used as it is (its retention is whoever declared it
    /// first's; a declaration with other arguments would fail).
    pub async fn declare_log(
        &self,
        stream: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), LogError> {
        let exists = Self::queue_exists(&self.connection, stream)
            .await
            .map_err(LogError::NotReady)?;
        if !exists {
            let name = format!("{} (recovery log set-up)", self.config.connection_name);
            let properties = ConnectionProperties::default().with_connection_name(name.into());
            let timeout = self.config.connect_timeout;
            let setup = tokio::time::timeout(timeout, open_connection(&self.config, properties))
                .await
                .map_err(|_| {
                    LogError::NotReady("the recovery log's set-up connection timed out".into())
                })?
                .map_err(LogError::NotReady)?
                .0;
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            let declared = match setup.create_channel().await {
                Ok(channel) => channel
                    .queue_declare(stream.into(), durable, arguments)
                    .await
                    .map(|_| ()),
                Err(error) => Err(error),
            };
            let _ = setup.close(200, "recovery log declared".into()).await;
            match declared {
                Ok(()) => {}
                // Declared meanwhile by another server with other arguments: it exists.
                Err(error) if is_precondition_failed(&error) => {}
                Err(error) => {
                    let message =
                        format!("declaring the recovery stream '{stream}' failed: {error}");
                    // A broker without streams closes the connection (541, "feature flag is
                    // disabled"); anything else (e.g. a stream whose node is still starting after
                    // a restart: 404) may pass.
                    let unsupported = message.contains("feature flag")
                        || matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 541);
                    return Err(if unsupported {
                        LogError::Unsupported(message)
                    } else {
                        LogError::NotReady(message)
                    });
                }
            }
        }
        let step =
            |what: String| move |e: lapin::Error| LogError::NotReady(format!("{what} failed: {e}"));
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(step("opening a channel".into()))?;
        channel
            .queue_bind(
                stream.into(),
                self.exchange.clone().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(step(format!("binding the recovery stream '{stream}'")))?;
        let _ = channel.close(200, "bound".into()).await;
        Ok(())
    }

    /// The connection, for work on channels of its own (the recovery log's scans).
    pub fn connection(&self) -> Arc<Connection> {
        self.connection.clone()
    }

    /// Deletes the server's queue (closing for good: nobody will come back for it).
    pub async fn delete_queue(&self) -> Result<(), String> {
        self.publisher
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| format!("deleting the queue '{}' failed: {e}", self.queue))
    }

    pub async fn close(&self) {
        let _ = self
            .connection
            .close(200, "socket.io adapter closed".into())
            .await;
    }
}

/// Opens a connection as `config` says (URL, TLS, timeout is the caller's), on a lapin runtime that
/// can run a task on the connection's I/O thread.
async fn open_connection(
    config: &TransportConfig,
    properties: ConnectionProperties,
) -> Result<(Connection, IoThread), String> {
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: config.tls_ca.clone(),
    };
    let (runtime, io_thread) = IoThread::runtime();
    Connection::connect_with_config(&config.url, properties, tls, runtime)
        .await
        .map(|connection| (connection, io_thread))
        .map_err(|e| {
            format!(
                "could not connect to the AMQP broker at {}: {e}",
                redact(&config.url)
            )
        })
}

/// A hand-off the link refused (it is not connected): the first `accepted` messages went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub accepted: usize,
    pub reason: String,
}

/// Where the writes of a link's last hand-off are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteState {
    /// Written to the connection (or nothing was handed off).
    Done,
    /// Still queued for the connection's writer.
    Pending,
    /// The connection failed before they were written.
    Failed(String),
}

/// Why the recovery log could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The broker has no streams: recovery stays off.
    Unsupported(String),
    /// Not now (a stream still starting after a broker restart, a failed channel): try again.
    NotReady(String),
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// The server queue's arguments: `x-expires`, in milliseconds.
fn queue_arguments(expiry: Duration) -> FieldTable {
    let mut arguments = FieldTable::default();
    let millis = u32::try_from(expiry.as_millis()).unwrap_or(u32::MAX).max(1);
    arguments.insert("x-expires".into(), AMQPValue::LongUInt(millis));
    arguments
}

type InFlight<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs the futures together and returns their results in order. Each is first polled in order, and
/// a lapin request queues its frames on its first poll, so they reach the broker in this order.
async fn all_in_order<T>(futures: Vec<InFlight<'_, T>>) -> Vec<T> {
    let mut running: Vec<Option<InFlight<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<T>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (slot, result) in running.iter_mut().zip(results.iter_mut()) {
            let Some(future) = slot else { continue };
            match future.as_mut().poll(cx) {
                Poll::Ready(value) => {
                    *result = Some(value);
                    *slot = None;
                }
                Poll::Pending => waiting = true,
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// Tries each URL once, starting with `preferred` (the last one that worked), which it updates.
/// `config_for` gives the settings for one URL.
pub async fn connect_any(
    urls: &[String],
    preferred: &mut usize,
    config_for: impl Fn(&str) -> TransportConfig,
) -> Result<(Transport, Option<Consuming>), String> {
    let mut errors = Vec::new();
    for offset in 0..urls.len() {
        let index = (*preferred + offset) % urls.len();
        match Transport::connect(&config_for(&urls[index])).await {
            Ok(connected) => {
                *preferred = index;
                return Ok(connected);
            }
            Err(error) => errors.push(error),
        }
    }
    Err(errors.join("; "))
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keys_are_unambiguous_and_fit_amqp() {
        assert_ne!(room_key("/a:b", "c"), room_key("/a", "b:c"));
        assert_eq!(room_key("/", "r1").as_deref(), Some("room:1:/:r1"));
        assert!(room_key("/", &"x".repeat(240)).is_some());
        assert_eq!(room_key("/", &"x".repeat(250)), None);
        assert_eq!(room_key("/", "Xc2_gWvN-8pZkLmQaB3d"), None, "a socket id");
        assert!(
            room_key("/", "Xc2_gWvN-8pZkLmQaB3").is_some(),
            "19 characters"
        );
        assert!(
            room_key("/", "Xc2_gWvN-8pZkLmQaB3!").is_some(),
            "not base64url"
        );
        for len in 240..250 {
            let room = "y".repeat(len);
            let fits = format!("room:5:/chat:{room}").len() <= 255;
            assert_eq!(routable_room("/chat", &room), fits, "length {len}");
            assert_eq!(room_key("/chat", &room).is_some(), fits);
        }
        let long_nsp = "/".repeat(120); // a three-digit length
        for len in 120..130 {
            let room = "y".repeat(len);
            let fits = format!("room:120:{long_nsp}:{room}").len() <= 255;
            assert_eq!(routable_room(&long_nsp, &room), fits, "length {len}");
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/vh"),
            "amqp://guest:***@host:5672/vh"
        );
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact("not a url"), "not a url");
    }
}
