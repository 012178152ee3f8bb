//! The hot calls' arguments, converted with one `typeof` each: a string, or an array of them (of
//! strings and Buffers for packet parts). napi-rs's `Either` allocates an error value up front and
//! one more for every alternative it rules out, and its `Vec` goes through a generic element
//! getter: under callgrind, those were half the instructions of a `broadcast` call.
//!
//! The one module with unsafe code of our own: napi's C calls on the `env` and value napi-derive's
//! generated wrapper hands to `from_napi_value` for the current call, as napi-rs's own conversions
//! do; nothing is kept past the call (Buffers are copied).
#![allow(unsafe_code)]

use crate::wire::PacketPart;
use napi::bindgen_prelude::{BufferSlice, FromNapiValue, Result, TypeName, ValueType};
use napi::{check_status, sys, type_of};
use std::ptr;

/// A room list: one room as the string itself, or an array of rooms.
pub struct JsRooms(pub Vec<String>);

/// An encoded packet: one text part as the string itself, or an array of strings and Buffers.
pub struct JsPacket(pub Vec<PacketPart>);

impl TypeName for JsRooms {
    fn type_name() -> &'static str {
        "string | string[]"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl TypeName for JsPacket {
    fn type_name() -> &'static str {
        "string | Array<string | Buffer>"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

impl FromNapiValue for JsRooms {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        if type_of!(env, value)? == ValueType::String {
            return Ok(JsRooms(vec![unsafe {
                String::from_napi_value(env, value)?
            }]));
        }
        let mut rooms = Vec::new();
        unsafe {
            for_each_element(env, value, |room| {
                rooms.push(String::from_napi_value(env, room)?);
                Ok(())
            })?;
        }
        Ok(JsRooms(rooms))
    }
}

impl FromNapiValue for JsPacket {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> Result<Self> {
        if type_of!(env, value)? == ValueType::String {
            let text = unsafe { String::from_napi_value(env, value)? };
            return Ok(JsPacket(vec![PacketPart::Text(text)]));
        }
        let mut parts = Vec::new();
        unsafe {
            for_each_element(env, value, |part| {
                parts.push(packet_part(env, part)?);
                Ok(())
            })?;
        }
        Ok(JsPacket(parts))
    }
}

/// A string, or else a Buffer (napi reports anything else as not a Buffer).
unsafe fn packet_part(env: sys::napi_env, value: sys::napi_value) -> Result<PacketPart> {
    Ok(if type_of!(env, value)? == ValueType::String {
        PacketPart::Text(unsafe { String::from_napi_value(env, value)? })
    } else {
        PacketPart::Binary(unsafe { BufferSlice::from_napi_value(env, value)? }.to_vec())
    })
}

unsafe fn for_each_element(
    env: sys::napi_env,
    array: sys::napi_value,
    mut each: impl FnMut(sys::napi_value) -> Result<()>,
) -> Result<()> {
    let mut length = 0;
    check_status!(
        unsafe { sys::napi_get_array_length(env, array, &mut length) },
        "expected a string or an array"
    )?;
    for index in 0..length {
        let mut element = ptr::null_mut();
        check_status!(unsafe { sys::napi_get_element(env, array, index, &mut element) })?;
        each(element)?;
    }
    Ok(())
}
