//! socket.io-amqp0-native: a Socket.IO v4 adapter over RabbitMQ.
//!
//! The core (`room_index`, `wire`, `transport`, `node`, `emitter`, ...) is plain Rust with no
//! napi types, usable and testable without Node; `bindings`, built with the default `node` feature,
//! is the only napi-aware module. A Rust service that emits to Socket.IO clients uses
//! [`emitter::Emitter`] with `default-features = false`.

// No unsafe code of our own (the FFI code napi-derive generates is napi's).
#![deny(unsafe_code)]
#![warn(rust_2018_idioms)]
// A panic in the addon is caught and reported, but it still costs the message or the call: an
// `expect` outside tests names the invariant it relies on, and `unwrap` is not used at all.
#![warn(clippy::unwrap_used, clippy::dbg_macro, clippy::todo)]

pub mod bus;
pub mod emitter;
pub mod membership;
pub mod node;
mod outbox;
pub mod packet;
mod reconnect;
pub mod recovery;
pub mod requests;
mod room_bindings;
pub mod room_index;
mod sequence;
mod throttle;
pub mod transport;
pub mod wire;

#[cfg(feature = "node")]
mod bindings;
