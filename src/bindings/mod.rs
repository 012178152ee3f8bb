//! The napi-rs surface: thin wrappers that convert between JS values and the plain-Rust core.
//! Nothing here decides behaviour; see `cluster`, `room_index`, `membership`, `requests` and
//! `emitter`. Every export catches panics, so a bug surfaces as a JS exception, never an abort.

mod adapter;
mod emitter;

use crate::wire::PacketPart;
use napi::bindgen_prelude::{Buffer, Either};

/// A JS-side encoded packet chunk: the parser's string or a binary attachment.
type JsPart = Either<String, Buffer>;

pub(crate) fn to_js_parts(parts: Vec<PacketPart>) -> Vec<JsPart> {
    parts
        .into_iter()
        .map(|part| match part {
            PacketPart::Text(text) => Either::A(text),
            PacketPart::Binary(bytes) => Either::B(bytes.into()),
        })
        .collect()
}

pub(crate) fn from_js_parts(parts: Vec<JsPart>) -> Vec<PacketPart> {
    parts
        .into_iter()
        .map(|part| match part {
            Either::A(text) => PacketPart::Text(text),
            Either::B(bytes) => PacketPart::Binary(bytes.to_vec()),
        })
        .collect()
}
