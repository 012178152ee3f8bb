//! socket.io-amqp0-native: a Socket.IO v4 adapter over RabbitMQ.
//!
//! The core (`room_index`, `wire`, `transport`, `cluster`) is plain Rust with no napi types, usable
//! and testable without Node; `bindings` is the only napi-aware module.

pub mod cluster;
mod connection;
pub mod membership;
mod outbox;
pub mod requests;
pub mod room_index;
pub mod transport;
pub mod wire;

mod bindings;
