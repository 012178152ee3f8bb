//! socket.io-amqp0-native: a Socket.IO v4 adapter over RabbitMQ.
//!
//! The core (`room_index`, `wire`, `transport`, `cluster`) is plain Rust with no napi types, usable
//! and testable without Node; `bindings` is the only napi-aware module.

pub mod cluster;
pub mod membership;
pub mod requests;
pub mod room_index;
pub mod transport;
pub mod wire;

mod bindings;
