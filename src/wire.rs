//! Wire format: what crosses the broker between servers.
//!
//! Every AMQP message body is one msgpack-encoded [`Envelope`] (named fields, so a newer peer can add
//! fields without breaking an older one). `v` is the protocol version: a receiver drops, counts and
//! reports an envelope whose version it does not speak instead of guessing at its layout.
//!
//! Socket.IO packets travel pre-encoded: the sending server runs its Socket.IO parser once and ships
//! the resulting parts (text and binary chunks); receivers write those parts straight to their
//! clients. Binary parts stay msgpack `bin`, so Buffers survive the trip byte for byte.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// One chunk of an encoded Socket.IO packet: the parser's text header or a binary attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketPart {
    Text(String),
    Binary(Vec<u8>),
}

impl Serialize for PacketPart {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PacketPart::Text(text) => serializer.serialize_str(text),
            PacketPart::Binary(bytes) => serializer.serialize_bytes(bytes),
        }
    }
}

impl<'de> Deserialize<'de> for PacketPart {
    // Hand-written so a msgpack `bin` that happens to be valid UTF-8 stays binary.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;
        impl<'de> Visitor<'de> for PartVisitor {
            type Value = PacketPart;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a binary chunk")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PacketPart::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(PacketPart::Text(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(PacketPart::Binary(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(PacketPart::Binary(v))
            }
            // rmp-serde hands `bin` to visitors that ask for "any" as bytes; arrays of u8 are not
            // accepted so a malformed sender cannot smuggle a number list in as binary.
            fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(
                    "a packet part must be a string or binary",
                ))
            }
        }
        deserializer.deserialize_any(PartVisitor)
    }
}

/// Which sockets a broadcast (or a remote socket operation) targets, as Socket.IO's
/// `BroadcastOptions`: members of any of `rooms` (every socket when empty) minus members of any of
/// `except`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub rooms: Vec<String>,
    pub except: Vec<String>,
}

/// The per-packet write options Socket.IO passes to the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFlags {
    pub volatile: bool,
    /// `None` leaves the engine's default (compress when the transport allows it).
    pub compress: Option<bool>,
}

/// What a requester needs to route replies back: responses go to the requester's own routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    pub request_id: u32,
    /// How long the requester waits; the receiver forgets the request after that.
    pub timeout_ms: u32,
}

/// Every kind of message that crosses the bus. Payloads the Rust side never looks into (server-side
/// emit arguments, acknowledgement replies, fetched socket descriptions) are carried as encoded
/// packet parts too, so binary stays binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Message {
    /// A server joined (or rejoined) the cluster; everyone answers with a heartbeat.
    Hello {
        namespaces: Vec<String>,
        /// The server binds a key per room it has members in (see `transport::room_key`), so
        /// single-room broadcasts may be sent to it by room. Absent (false) from older servers.
        #[serde(default)]
        room_routing: bool,
    },
    /// "I am alive and serve these namespaces." Sent periodically and when the set changes.
    Heartbeat {
        namespaces: Vec<String>,
        #[serde(default)]
        room_routing: bool,
    },
    /// A server is closing: stop counting it and stop waiting for its replies.
    Goodbye,
    /// A packet for the matching sockets of every server; with `ack`, each server reports its
    /// client count and forwards every client's acknowledgement.
    Broadcast {
        target: Target,
        flags: WriteFlags,
        packet: Vec<PacketPart>,
        ack: Option<AckRequest>,
        /// Connection state recovery: the packet's offset (also the last argument inside
        /// `packet`). Such a broadcast is copied to the recovery log as it is published.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<String>,
    },
    SocketsJoin {
        target: Target,
        rooms: Vec<String>,
    },
    SocketsLeave {
        target: Target,
        rooms: Vec<String>,
    },
    DisconnectSockets {
        target: Target,
        close: bool,
    },
    FetchSockets {
        request_id: u32,
        target: Target,
    },
    /// `io.serverSideEmit(ev, ...args)`; with `request_id` the sender waits for one reply per server.
    ServerSideEmit {
        request_id: Option<u32>,
        args: Vec<PacketPart>,
    },
    /// The matching sockets of one server (an empty list when it has none).
    FetchSocketsResponse {
        request_id: u32,
        sockets: Vec<PacketPart>,
    },
    ServerSideEmitResponse {
        request_id: u32,
        reply: Vec<PacketPart>,
    },
    BroadcastClientCount {
        request_id: u32,
        count: u32,
    },
    BroadcastAck {
        request_id: u32,
        reply: Vec<PacketPart>,
    },
    /// A disconnected socket's session (connection state recovery). Written to the recovery log
    /// only, never to a server's queue: see `recovery`.
    Session {
        pid: String,
        sid: String,
        rooms: Vec<String>,
        /// `socket.data`, encoded as server-side emit arguments are.
        data: Vec<PacketPart>,
        /// Wall-clock time (ms since the epoch) after which the session is no longer restored.
        expires_at_ms: u64,
    },
    /// The end of one restore scan of the recovery log: the scanning server reads the log up to
    /// this record. It claims the sessions of `claims` (pids): a session is restored once.
    Fence {
        id: String,
        claims: Vec<String>,
    },
    /// Several messages of one sender and namespace, in order, in one AMQP message: under load
    /// the broker then routes and delivers batches instead of single packets.
    Batch(Vec<Message>),
}

impl Message {
    /// The request a response answers, for messages sent to one server's own routing key.
    pub fn response_to(&self) -> Option<u32> {
        match self {
            Message::FetchSocketsResponse { request_id, .. }
            | Message::ServerSideEmitResponse { request_id, .. }
            | Message::BroadcastClientCount { request_id, .. }
            | Message::BroadcastAck { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }

    /// Whether a copy of this message goes to the recovery log: it holds a broadcast with an
    /// offset (a batch does when any of its messages does).
    pub fn recoverable(&self) -> bool {
        match self {
            Message::Broadcast { offset, .. } => offset.is_some(),
            Message::Batch(messages) => messages.iter().any(Message::recoverable),
            _ => false,
        }
    }
}

/// The outer layer of every message on the exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    /// The sending server's uid; a server ignores its own messages.
    pub uid: String,
    /// The Socket.IO namespace the message belongs to.
    pub nsp: String,
    pub message: Message,
    /// The sender's number for this AMQP message, from 1 for its lifetime (see `sequence.rs`);
    /// stamped when it is published. Absent from older versions: then nothing is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The sender's number for this message among those to the same routing key, on keys whose
    /// receivers keep them bound (namespace and server keys): a jump is a lost message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_seq: Option<u64>,
}

impl Envelope {
    /// An envelope of this protocol version, not numbered yet.
    pub fn new(uid: &str, nsp: &str, message: Message) -> Envelope {
        Envelope {
            v: PROTOCOL_VERSION,
            uid: uid.to_string(),
            nsp: nsp.to_string(),
            message,
            seq: None,
            key_seq: None,
        }
    }
}

/// Why an incoming body was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is not an envelope at all (garbage, truncated, a foreign producer).
    Malformed(String),
    /// A well-formed envelope of a protocol version this build does not speak.
    UnsupportedVersion(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(reason) => write!(f, "malformed message: {reason}"),
            DecodeError::UnsupportedVersion(v) => write!(
        f,
        "message of protocol version {v} dropped (this server speaks version {PROTOCOL_VERSION})"
      ),
        }
    }
}

pub fn encode(envelope: &Envelope) -> Vec<u8> {
    // Room for a typical batch up front: growing from empty cost a handful of reallocations per
    // publish, on the JS thread when it hands publishes off.
    let mut body = Vec::with_capacity(512);
    // Serialising our own plain structs into a Vec cannot fail.
    rmp_serde::encode::write_named(&mut body, envelope).expect("envelope serialises");
    body
}

pub fn decode(body: &[u8]) -> Result<Envelope, DecodeError> {
    // With no own uid to skip, every well-formed envelope comes back.
    decode_unless_from(body, "")?.ok_or_else(|| DecodeError::Malformed("no envelope".into()))
}

/// Like [`decode`], but `None` without decoding the rest when the sender is `own_uid`: a server
/// receives its own broadcasts back through its queue (RabbitMQ ignores AMQP's no-local), and
/// building their packets only to drop them cost the consumer a decode per own message.
pub fn decode_unless_from(body: &[u8], own_uid: &str) -> Result<Option<Envelope>, DecodeError> {
    #[derive(Deserialize)]
    struct Header<'a> {
        v: u32,
        #[serde(borrow)]
        uid: std::borrow::Cow<'a, str>,
    }
    // Read the version first so a future layout is reported as such, not as garbage.
    let header = rmp_serde::from_slice::<Header<'_>>(body)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if header.v != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(header.v));
    }
    if !own_uid.is_empty() && header.uid == own_uid {
        return Ok(None);
    }
    rmp_serde::from_slice(body)
        .map(Some)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// 64 random bits as hex: the node's identity on the bus (and part of its queue name).
pub(crate) fn random_uid() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::time::SystemTime;
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_envelopes_are_recognised_without_decoding_the_rest() {
        let mut envelope = sample();
        let body = encode(&envelope);
        assert_eq!(decode_unless_from(&body, &envelope.uid), Ok(None));
        assert_eq!(
            decode_unless_from(&body, "someone-else"),
            Ok(Some(envelope.clone()))
        );
        assert_eq!(decode(&body), Ok(envelope.clone()));
        envelope.v = 99;
        let future = encode(&envelope);
        assert_eq!(
            decode_unless_from(&future, &envelope.uid),
            Err(DecodeError::UnsupportedVersion(99)),
            "the version is checked first, whoever sent it"
        );
        assert!(matches!(
            decode_unless_from(b"garbage", "a"),
            Err(DecodeError::Malformed(_))
        ));
    }

    fn sample() -> Envelope {
        broadcast_of(vec![
            PacketPart::Text("51-[\"ev\",{\"_placeholder\":true,\"num\":0}]".into()),
            PacketPart::Binary(vec![0, 159, 255, 1]),
        ])
    }

    fn broadcast_of(packet: Vec<PacketPart>) -> Envelope {
        Envelope {
            v: PROTOCOL_VERSION,
            uid: "a1b2".into(),
            nsp: "/chat".into(),
            message: Message::Broadcast {
                target: Target {
                    rooms: vec!["r1".into(), "r2".into()],
                    except: vec!["sid".into()],
                },
                flags: WriteFlags {
                    volatile: true,
                    compress: Some(false),
                },
                packet,
                ack: Some(AckRequest {
                    request_id: 7,
                    timeout_ms: 1000,
                }),
                offset: None,
            },
            seq: Some(41),
            key_seq: Some(3),
        }
    }

    #[test]
    fn round_trips_an_envelope() {
        let envelope = sample();
        assert_eq!(decode(&encode(&envelope)).unwrap(), envelope);
    }

    #[test]
    fn round_trips_every_message_kind() {
        let target = Target {
            rooms: vec!["r".into()],
            except: vec![],
        };
        let parts = vec![
            PacketPart::Text("30[1]".into()),
            PacketPart::Binary(vec![1]),
        ];
        let messages = vec![
            Message::Hello {
                namespaces: vec!["/".into(), "/chat".into()],
                room_routing: true,
            },
            Message::Heartbeat {
                namespaces: vec![],
                room_routing: false,
            },
            Message::Goodbye,
            Message::SocketsJoin {
                target: target.clone(),
                rooms: vec!["a".into()],
            },
            Message::SocketsLeave {
                target: target.clone(),
                rooms: vec!["a".into()],
            },
            Message::DisconnectSockets {
                target: target.clone(),
                close: true,
            },
            Message::FetchSockets {
                request_id: 1,
                target,
            },
            Message::ServerSideEmit {
                request_id: None,
                args: parts.clone(),
            },
            Message::FetchSocketsResponse {
                request_id: 2,
                sockets: vec![],
            },
            Message::ServerSideEmitResponse {
                request_id: 3,
                reply: parts.clone(),
            },
            Message::BroadcastClientCount {
                request_id: 4,
                count: 9,
            },
            Message::BroadcastAck {
                request_id: 5,
                reply: parts,
            },
        ];
        for message in messages {
            let envelope = Envelope::new("u", "/", message);
            assert_eq!(decode(&encode(&envelope)).unwrap(), envelope);
        }
    }

    #[test]
    fn sequence_numbers_are_optional_both_ways() {
        // A receiver of the version before sequence numbers reads a numbered envelope...
        #[derive(Deserialize)]
        struct Unnumbered {
            v: u32,
            uid: String,
            nsp: String,
            message: Message,
        }
        let numbered = sample();
        let old: Unnumbered = rmp_serde::from_slice(&encode(&numbered)).unwrap();
        assert_eq!(
            (old.v, old.uid.as_str(), old.nsp.as_str()),
            (1, "a1b2", "/chat")
        );
        assert_eq!(old.message, numbered.message);
        // ...and an unnumbered envelope (from that version) decodes without numbers.
        let plain = Envelope::new("u", "/", Message::Goodbye);
        let bytes = encode(&plain);
        assert_eq!(decode(&bytes).unwrap().seq, None);
        assert!(bytes.len() < encode(&numbered).len());
    }

    #[test]
    fn a_batch_round_trips_in_order() {
        let inner = vec![
            Message::Goodbye,
            Message::BroadcastClientCount {
                request_id: 1,
                count: 2,
            },
        ];
        let envelope = Envelope::new("u", "/", Message::Batch(inner));
        assert_eq!(decode(&encode(&envelope)).unwrap(), envelope);
    }

    #[test]
    fn responses_name_their_request() {
        assert_eq!(
            Message::BroadcastClientCount {
                request_id: 4,
                count: 0
            }
            .response_to(),
            Some(4)
        );
        assert_eq!(Message::Goodbye.response_to(), None);
    }

    #[test]
    fn binary_that_is_valid_utf8_stays_binary() {
        let envelope = broadcast_of(vec![PacketPart::Binary(b"plain ascii".to_vec())]);
        assert_eq!(decode(&encode(&envelope)).unwrap(), envelope);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [&b""[..], b"\xc1", b"hello world", &[0x93, 1, 2, 3]] {
            assert!(matches!(decode(body), Err(DecodeError::Malformed(_))));
        }
    }

    #[test]
    fn a_truncated_envelope_is_malformed() {
        let bytes = encode(&sample());
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn another_version_is_reported_as_such() {
        #[derive(Serialize)]
        struct Future {
            v: u32,
            uid: String,
            shape: Vec<u8>,
        }
        let body = rmp_serde::to_vec_named(&Future {
            v: 2,
            uid: "x".into(),
            shape: vec![1],
        })
        .unwrap();
        assert_eq!(decode(&body), Err(DecodeError::UnsupportedVersion(2)));
    }
}
