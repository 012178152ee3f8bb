//! `NativeEmitter`: the emitter's side of the napi surface (see `crate::emitter`).

use super::from_js::JsPacket;
use super::BrokerOptions;
use crate::emitter::{Broadcast, Emitter, EmitterEvent};
use crate::wire::{Target, WriteFlags};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[napi(object)]
pub struct EmitterStats {
    pub published: f64,
    pub dropped: f64,
    pub buffered: f64,
}

/// `on_event([kind, detail])` (one array argument): kind is "error", "disconnect", "reconnect"
/// (detail: attempts) or "dropped" (detail: count).
type EventCallback = ThreadsafeFunction<(String, String), (), (String, String), Status, false>;

#[napi]
pub struct NativeEmitter {
    emitter: Arc<Emitter>,
}

#[napi]
impl NativeEmitter {
    #[napi(constructor, catch_unwind)]
    pub fn new(options: BrokerOptions, on_event: EventCallback) -> Result<Self> {
        let config = options.into();
        let sink = move |event: EmitterEvent| {
            let (kind, detail) = match event {
                EmitterEvent::Error(message) => ("error", message),
                EmitterEvent::Disconnected(message) => ("disconnect", message),
                EmitterEvent::Reconnected { attempts } => ("reconnect", attempts.to_string()),
                EmitterEvent::Dropped { count } => ("dropped", count.to_string()),
            };
            on_event.call(
                (kind.to_string(), detail),
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        };
        let emitter = super::in_runtime(move || Emitter::start(config, sink));
        // lib/emitter.js calls sendQueued() at the end of every JS turn that published.
        emitter.sent_by_host();
        Ok(NativeEmitter { emitter })
    }

    /// Sends what this JS turn queued (from this thread when the link can take it).
    #[napi(catch_unwind)]
    pub fn send_queued(&self) {
        self.emitter.send_queued();
    }

    #[napi(getter, catch_unwind)]
    pub fn uid(&self) -> String {
        self.emitter.uid().to_string()
    }

    #[napi(catch_unwind)]
    pub async fn ready(&self) -> Result<()> {
        let ready = self.emitter.ready().await;
        ready.map_err(|error| Error::from_reason(error.to_string()))
    }

    #[napi(catch_unwind)]
    pub async fn close(&self) {
        self.emitter.close().await;
    }

    #[napi(catch_unwind)]
    pub fn stats(&self) -> EmitterStats {
        EmitterStats {
            published: self.emitter.published.load(Ordering::Relaxed) as f64,
            dropped: self.emitter.dropped() as f64,
            buffered: self.emitter.buffered() as f64,
        }
    }

    // Positional: a JS object per broadcast costs a property lookup per field on the hot path.
    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind)]
    pub fn broadcast(
        &self,
        nsp: String,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] packet: JsPacket,
        rooms: Vec<String>,
        except: Vec<String>,
        volatile: bool,
        compress: Option<bool>,
        offset: Option<String>,
    ) {
        self.emitter
            .of(&nsp)
            .target(Target { rooms, except })
            .flags(WriteFlags { volatile, compress })
            .emit_encoded(packet.0, offset);
    }

    #[napi(catch_unwind)]
    pub fn sockets_join(
        &self,
        nsp: String,
        rooms: Vec<String>,
        except: Vec<String>,
        join: Vec<String>,
    ) {
        let join: Vec<&str> = join.iter().map(String::as_str).collect();
        self.to(&nsp, rooms, except).sockets_join(&join);
    }

    #[napi(catch_unwind)]
    pub fn sockets_leave(
        &self,
        nsp: String,
        rooms: Vec<String>,
        except: Vec<String>,
        leave: Vec<String>,
    ) {
        let leave: Vec<&str> = leave.iter().map(String::as_str).collect();
        self.to(&nsp, rooms, except).sockets_leave(&leave);
    }

    #[napi(catch_unwind)]
    pub fn disconnect_sockets(
        &self,
        nsp: String,
        rooms: Vec<String>,
        except: Vec<String>,
        close: bool,
    ) {
        self.to(&nsp, rooms, except).disconnect_sockets(close);
    }

    #[napi(catch_unwind)]
    pub fn server_side_emit(
        &self,
        nsp: String,
        #[napi(ts_arg_type = "string | Array<string | Buffer>")] args: JsPacket,
    ) {
        self.emitter.of(&nsp).server_side_emit_parts(args.0);
    }
}

impl NativeEmitter {
    fn to(&self, nsp: &str, rooms: Vec<String>, except: Vec<String>) -> Broadcast<'_> {
        self.emitter.of(nsp).target(Target { rooms, except })
    }
}
