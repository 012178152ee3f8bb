//! Socket.IO's default packet encoding (socket.io-parser), for senders without a Socket.IO server:
//! the Rust emitter. Adapters write these parts straight to their clients, so they must be exactly
//! what socket.io-parser would produce:
//! `<type>[<attachments>-][<nsp>,][<ack id>]<json array>` plus one binary part per attachment, each
//! replaced in the JSON by `{"_placeholder":true,"num":<i>}`.

use crate::wire::PacketPart;

const EVENT: u8 = 2;
const ACK: u8 = 3;
const BINARY_EVENT: u8 = 5;
const BINARY_ACK: u8 = 6;

/// One argument of an emitted event: a JSON value (its text) or bytes (a Buffer on the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Json(String),
    Binary(Vec<u8>),
}

impl Arg {
    /// A JSON value given as its text, e.g. `Arg::json(r#"{"a":1}"#)` or `Arg::json("42")`.
    pub fn json(text: impl Into<String>) -> Self {
        Arg::Json(text.into())
    }

    /// A string value (quoted and escaped here).
    pub fn string(text: &str) -> Self {
        Arg::Json(json_string(text))
    }

    pub fn binary(bytes: impl Into<Vec<u8>>) -> Self {
        Arg::Binary(bytes.into())
    }
}

/// The parts of `socket.emit(event, ...args)` in namespace `nsp`, as the default parser encodes it.
pub fn event(nsp: &str, event: &str, args: &[Arg]) -> Vec<PacketPart> {
    let mut values = vec![Arg::Json(json_string(event))];
    values.extend_from_slice(args);
    encode(EVENT, BINARY_EVENT, nsp, None, &values)
}

/// A JS value holding `values` as an array, in the encoding `lib/payload.js` reads (an ack packet
/// with id 0 whose single argument is the array): how server-side emit arguments travel.
pub fn value_array(values: &[Arg]) -> Vec<PacketPart> {
    let mut parts = encode(ACK, BINARY_ACK, "/", Some(0), values);
    // payload.js wraps the value in one more array: `[value]`.
    if let Some(PacketPart::Text(text)) = parts.first_mut() {
        let json_start = text.find('[').expect("an encoded packet has a JSON array");
        text.insert(json_start, '[');
        text.push(']');
    }
    parts
}

fn encode(plain: u8, binary: u8, nsp: &str, id: Option<u64>, values: &[Arg]) -> Vec<PacketPart> {
    let attachments: Vec<&Vec<u8>> = values
        .iter()
        .filter_map(|value| match value {
            Arg::Binary(bytes) => Some(bytes),
            Arg::Json(_) => None,
        })
        .collect();
    let mut text = String::new();
    if attachments.is_empty() {
        text.push(char::from(b'0' + plain));
    } else {
        text.push(char::from(b'0' + binary));
        text.push_str(&format!("{}-", attachments.len()));
    }
    if nsp != "/" {
        text.push_str(nsp);
        text.push(',');
    }
    if let Some(id) = id {
        text.push_str(&id.to_string());
    }
    text.push('[');
    let mut placeholder = 0;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match value {
            Arg::Json(json) => text.push_str(json),
            Arg::Binary(_) => {
                text.push_str(&format!("{{\"_placeholder\":true,\"num\":{placeholder}}}"));
                placeholder += 1;
            }
        }
    }
    text.push(']');
    let mut parts = vec![PacketPart::Text(text)];
    parts.extend(
        attachments
            .into_iter()
            .map(|bytes| PacketPart::Binary(bytes.clone())),
    );
    parts
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(parts: &[PacketPart]) -> &str {
        match &parts[0] {
            PacketPart::Text(text) => text,
            PacketPart::Binary(_) => panic!("the first part is text"),
        }
    }

    #[test]
    fn encodes_an_event_like_socket_io_parser() {
        let parts = event("/", "news", &[Arg::string("hi"), Arg::json("{\"n\":1}")]);
        assert_eq!(
            parts,
            vec![PacketPart::Text(r#"2["news","hi",{"n":1}]"#.into())]
        );
        let parts = event("/chat", "ev", &[]);
        assert_eq!(text(&parts), r#"2/chat,["ev"]"#);
    }

    #[test]
    fn binary_arguments_become_attachments() {
        let parts = event(
            "/admin",
            "file",
            &[
                Arg::binary(vec![1, 2]),
                Arg::string("x"),
                Arg::binary(vec![3]),
            ],
        );
        assert_eq!(
            text(&parts),
            r#"52-/admin,["file",{"_placeholder":true,"num":0},"x",{"_placeholder":true,"num":1}]"#
        );
        assert_eq!(parts[1], PacketPart::Binary(vec![1, 2]));
        assert_eq!(parts[2], PacketPart::Binary(vec![3]));
    }

    #[test]
    fn value_arrays_are_wrapped_as_payload_js_expects() {
        let parts = value_array(&[Arg::string("ev"), Arg::json("1")]);
        assert_eq!(text(&parts), r#"30[["ev",1]]"#);
        let parts = value_array(&[Arg::string("ev"), Arg::binary(vec![9])]);
        assert_eq!(
            text(&parts),
            r#"61-0[["ev",{"_placeholder":true,"num":0}]]"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
