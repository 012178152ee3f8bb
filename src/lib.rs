//! socket.io-amqp0-native: a Socket.IO v4 adapter over RabbitMQ.
//!
//! The core (`room_index`, `wire`, `transport`, `node`, `emitter`, ...) is plain Rust with no
//! napi types, usable and testable without Node; `bindings`, built with the default `node` feature,
//! is the only napi-aware module. A Rust service that emits to Socket.IO clients uses [`Emitter`]
//! (the crate root re-exports its API) with `default-features = false`.

// No unsafe code of our own (the FFI code napi-derive generates is napi's), except the argument
// conversions of the hot napi calls in `bindings::from_js`, which say why.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms)]
// A panic in the addon is caught and reported, but it still costs the message or the call: an
// `expect` outside tests names the invariant it relies on, and `unwrap` is not used at all.
#![warn(clippy::unwrap_used, clippy::dbg_macro, clippy::todo)]

// The Rust API: the emitter, for services that are not Socket.IO servers.
pub use emitter::{Broadcast, Emitter, EmitterError, EmitterEvent};
pub use packet::Arg;
pub use transport::BrokerConfig;
pub use wire::{PacketPart, Target, WriteFlags};

// The adapter's core, public for the napi bindings' sake and for reading: not a stable API.
#[doc(hidden)]
pub mod bus;
pub mod emitter;
mod handoff;
mod io_thread;
#[doc(hidden)]
pub mod membership;
#[doc(hidden)]
pub mod node;
mod outbox;
pub mod packet;
mod reconnect;
#[doc(hidden)]
pub mod recovery;
#[doc(hidden)]
pub mod requests;
mod room_bindings;
#[doc(hidden)]
pub mod room_index;
mod sequence;
mod throttle;
pub mod transport;
pub mod wire;

#[cfg(feature = "node")]
mod bindings;
