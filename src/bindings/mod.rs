//! The napi-rs surface: thin wrappers that convert between JS values and the plain-Rust core.
//! Nothing here decides behaviour; see `cluster`, `room_index`, `membership`, `requests` and
//! `emitter`. Every export catches panics, so a bug surfaces as a JS exception, never an abort.

mod adapter;
mod emitter;
mod from_js;

use crate::transport::BrokerConfig;
use crate::wire::PacketPart;
use napi::bindgen_prelude::{Buffer, Either};
use napi_derive::napi;
use once_cell::sync::Lazy;
use std::time::Duration;

/// How to reach the broker (lib/options.js `brokerSettings`), for a node or an emitter.
#[napi(object)]
pub struct BrokerOptions {
    pub urls: Vec<String>,
    pub exchange_name: String,
    pub connect_timeout_ms: u32,
    pub reconnect_delay_ms: u32,
    pub reconnect_delay_max_ms: u32,
    pub publish_buffer: u32,
    pub tls_ca: Option<String>,
    pub connection_name: Option<String>,
}

impl From<BrokerOptions> for BrokerConfig {
    fn from(options: BrokerOptions) -> Self {
        BrokerConfig {
            urls: options.urls,
            exchange: options.exchange_name,
            connect_timeout: millis(options.connect_timeout_ms),
            reconnect_delay: millis(options.reconnect_delay_ms),
            reconnect_delay_max: millis(options.reconnect_delay_max_ms),
            publish_buffer: options.publish_buffer as usize,
            tls_ca: options.tls_ca,
            connection_name: options.connection_name,
        }
    }
}

/// A duration option in milliseconds; zero would mean "spin", so it becomes 1 ms.
pub(crate) fn millis(value: u32) -> Duration {
    Duration::from_millis(value.max(1).into())
}

/// The runtime the broker sessions of this process run on: one worker thread. The connection task,
/// the consumer and lapin's I/O then hand work to each other inside one thread instead of waking
/// other threads (measured: on a small machine those cross-thread wake-ups, not the work, were most
/// of the adapter's CPU). It is separate from napi's runtime, which only runs the async exports.
static RUNTIME: Lazy<tokio::runtime::Runtime> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("socket.io-amqp0")
        .enable_all()
        .build()
        .expect("the adapter's runtime starts")
});

/// Runs `start` inside the adapter's runtime (so what it spawns runs there).
pub(crate) fn in_runtime<T>(start: impl FnOnce() -> T) -> T {
    let _guard = RUNTIME.enter();
    start()
}

/// A JS-side encoded packet chunk: the parser's string or a binary attachment.
type JsPart = Either<String, Buffer>;

/// A packet as the JS side takes it whole: one text part as the string itself (no array), else
/// its parts.
pub(crate) fn to_js_packet(mut parts: Vec<PacketPart>) -> Either<String, Vec<JsPart>> {
    match parts.as_mut_slice() {
        [PacketPart::Text(text)] => Either::A(std::mem::take(text)),
        _ => Either::B(to_js_parts(parts)),
    }
}

pub(crate) fn to_js_parts(parts: Vec<PacketPart>) -> Vec<JsPart> {
    parts
        .into_iter()
        .map(|part| match part {
            PacketPart::Text(text) => Either::A(text),
            PacketPart::Binary(bytes) => Either::B(bytes.into()),
        })
        .collect()
}
