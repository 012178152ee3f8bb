//! One restore scan over the recovery log, free of AMQP: the records from the scan's start to its
//! fence go in, in log order; what each restore asked for comes out.
//!
//! A restore of `(nsp, pid, offset)` succeeds when, before the fence, the log holds
//! - the packet the client last received (`offset`): everything after it is what it missed, and
//!   retention has not cut into that span;
//! - a session record for `pid` in `nsp` not claimed by another restore since it was written (a
//!   fence naming the pid claims it: a session is used once), and not expired.
//!
//! The missed packets are the storable broadcasts of `nsp` after the offset's packet whose target
//! matches the session's rooms, as Socket.IO's in-memory adapter would have delivered them.

use crate::wire::{Envelope, Message, PacketPart, Target};

/// A packet stored in the log: its offset and its encoded parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPacket {
    pub offset: String,
    pub parts: Vec<PacketPart>,
}

/// A session found in the log, with the packets its socket missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub sid: String,
    pub rooms: Vec<String>,
    pub data: Vec<PacketPart>,
    pub packets: Vec<StoredPacket>,
    /// The log position right after the scan's fence, where a further read starts (room
    /// routing's catch-up); set by the reader.
    pub resume_at: Option<u64>,
}

/// What a read of the log feeds records to, in log order, until it has read its fence.
pub trait Reading {
    fn feed(&mut self, envelope: Envelope);
    fn done(&self) -> bool;
}

/// Why a restore found nothing (reported in the stats; the client is simply not recovered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The client's offset is not in the scanned span (retention removed it, or it never existed).
    UnknownOffset,
    /// No session for the pid (never persisted, or persisted after the scan's fence).
    NoSession,
    /// The session was restored already (another fence claimed it).
    AlreadyUsed,
    Expired,
    /// More packets to replay than a restore may hold: the client reconnects as a new one.
    TooManyPackets,
}

struct Wanted {
    nsp: String,
    pid: String,
    offset: String,
    /// Where the offset's packet was in the scan's `packets`: what follows is what was missed.
    offset_at: Option<usize>,
    session: Option<SessionRecord>,
    claimed: bool,
}

struct SessionRecord {
    sid: String,
    rooms: Vec<String>,
    data: Vec<PacketPart>,
    expires_at_ms: u64,
}

/// The state of one scan: fed records until its fence, then finished.
pub struct Scan {
    fence: String,
    wanted: Vec<Wanted>,
    /// The storable broadcasts of the wanted namespaces from the first offset found on, once for
    /// the whole round (each restore filters its part by its session's rooms at the end: the rooms
    /// are only known once the session record, written after the packets, has been read).
    packets: Vec<(String, Target, StoredPacket)>,
    packet_bytes: usize,
    /// The most packets one restore replays.
    max_packets: usize,
    /// The scan kept more than [`MAX_SCAN_BYTES`]: its restores fail rather than replay a gap.
    overflow: bool,
    done: bool,
}

/// How much of the log one scan keeps in memory.
const MAX_SCAN_BYTES: usize = 256 * 1024 * 1024;

impl Scan {
    /// A scan ending at the fence `fence`, for `(nsp, pid, offset)` restores, each holding at most
    /// `max_packets` candidates.
    pub fn new(
        fence: String,
        restores: impl IntoIterator<Item = (String, String, String)>,
        max_packets: usize,
    ) -> Scan {
        let wanted = restores
            .into_iter()
            .map(|(nsp, pid, offset)| Wanted {
                nsp,
                pid,
                offset,
                offset_at: None,
                session: None,
                claimed: false,
            })
            .collect();
        Scan {
            fence,
            wanted,
            packets: Vec::new(),
            packet_bytes: 0,
            max_packets,
            overflow: false,
            done: false,
        }
    }

    fn feed_message(&mut self, nsp: &str, message: Message) {
        if self.done {
            return;
        }
        match message {
            Message::Broadcast {
                target,
                packet,
                offset: Some(offset),
                ack: None,
                ..
            } => {
                // Kept when some restore already found its offset (a packet it may have missed).
                let collecting = self.wanted.iter().any(|w| w.offset_at.is_some());
                let wanted_nsp = self.wanted.iter().any(|w| w.nsp == nsp);
                if collecting && wanted_nsp && !self.overflow {
                    self.packet_bytes += offset.len() + parts_len(&packet);
                    self.overflow = self.packet_bytes > MAX_SCAN_BYTES;
                    let stored = StoredPacket {
                        offset: offset.clone(),
                        parts: packet,
                    };
                    self.packets.push((nsp.to_string(), target, stored));
                }
                // A restore whose offset this is replays what comes after it.
                let next = self.packets.len();
                for wanted in self.wanted.iter_mut() {
                    if wanted.offset_at.is_none() && wanted.nsp == nsp && wanted.offset == offset {
                        wanted.offset_at = Some(next);
                    }
                }
            }
            Message::Session {
                pid,
                sid,
                rooms,
                data,
                expires_at_ms,
            } => {
                for wanted in self
                    .wanted
                    .iter_mut()
                    .filter(|w| w.nsp == nsp && w.pid == pid)
                {
                    // A later session of the same pid (a recovered socket disconnected again)
                    // replaces the earlier one and is unclaimed.
                    wanted.session = Some(SessionRecord {
                        sid: sid.clone(),
                        rooms: rooms.clone(),
                        data: data.clone(),
                        expires_at_ms,
                    });
                    wanted.claimed = false;
                }
            }
            Message::Fence { id, claims } => {
                if id == self.fence {
                    self.done = true;
                    return;
                }
                for wanted in self.wanted.iter_mut() {
                    if wanted.session.is_some() && claims.contains(&wanted.pid) {
                        wanted.claimed = true;
                    }
                }
            }
            _ => {}
        }
    }

    /// The outcome of each restore, in the order they were given, judged at `now_ms`.
    pub fn finish(self, now_ms: u64) -> Vec<Result<Restored, Miss>> {
        let Scan {
            wanted,
            packets,
            max_packets,
            overflow,
            ..
        } = self;
        wanted
            .into_iter()
            .map(|wanted| {
                let session = wanted.session.ok_or(Miss::NoSession)?;
                let from = wanted.offset_at.ok_or(Miss::UnknownOffset)?;
                if wanted.claimed {
                    return Err(Miss::AlreadyUsed);
                }
                if now_ms > session.expires_at_ms {
                    return Err(Miss::Expired);
                }
                if overflow {
                    return Err(Miss::TooManyPackets);
                }
                let packets: Vec<StoredPacket> = packets[from.min(packets.len())..]
                    .iter()
                    .filter(|(nsp, target, _)| {
                        *nsp == wanted.nsp && reaches(target, &session.rooms)
                    })
                    .map(|(_, _, packet)| packet.clone())
                    .collect();
                if packets.len() > max_packets {
                    return Err(Miss::TooManyPackets);
                }
                Ok(Restored {
                    sid: session.sid,
                    rooms: session.rooms,
                    data: session.data,
                    packets,
                    resume_at: None,
                })
            })
            .collect()
    }
}

impl Reading for Scan {
    /// The next record of the log (records after the fence are ignored).
    fn feed(&mut self, envelope: Envelope) {
        if self.done {
            return;
        }
        let Envelope { nsp, message, .. } = envelope;
        for_each_message(message, |message| self.feed_message(&nsp, message));
    }

    /// Whether the fence was read: the scan has seen everything it needs.
    fn done(&self) -> bool {
        self.done
    }
}

/// A second read for one restore, from the first scan's fence to a new one: with room routing the
/// restoring server receives a room's broadcasts only once it binds the room, so what was sent to
/// the session's rooms between the first fence and that binding is read from the log.
pub struct CatchUp {
    fence: String,
    nsp: String,
    rooms: Vec<String>,
    packets: Vec<StoredPacket>,
    max_packets: usize,
    overflow: bool,
    done: bool,
}

impl CatchUp {
    pub fn new(fence: String, nsp: String, rooms: Vec<String>, max_packets: usize) -> CatchUp {
        CatchUp {
            fence,
            nsp,
            rooms,
            packets: Vec::new(),
            max_packets,
            overflow: false,
            done: false,
        }
    }

    /// The storable packets for the session's rooms, in log order; `None` past the limit.
    pub fn finish(self) -> Option<Vec<StoredPacket>> {
        (!self.overflow).then_some(self.packets)
    }
}

impl Reading for CatchUp {
    fn feed(&mut self, envelope: Envelope) {
        if self.done {
            return;
        }
        let Envelope { nsp, message, .. } = envelope;
        for_each_message(message, |message| match message {
            Message::Fence { id, .. } if id == self.fence => self.done = true,
            Message::Broadcast {
                target,
                packet,
                offset: Some(offset),
                ack: None,
                ..
            } if !self.done && nsp == self.nsp && reaches(&target, &self.rooms) => {
                if self.packets.len() >= self.max_packets {
                    self.overflow = true;
                } else {
                    self.packets.push(StoredPacket {
                        offset,
                        parts: packet,
                    });
                }
            }
            _ => {}
        });
    }
    fn done(&self) -> bool {
        self.done
    }
}

fn parts_len(parts: &[PacketPart]) -> usize {
    parts
        .iter()
        .map(|part| match part {
            PacketPart::Text(text) => text.len(),
            PacketPart::Binary(bytes) => bytes.len(),
        })
        .sum()
}

/// Each message of a record (the messages of a batch, in order).
fn for_each_message(message: Message, mut each: impl FnMut(Message)) {
    match message {
        Message::Batch(messages) => messages.into_iter().for_each(each),
        message => each(message),
    }
}

/// Whether a broadcast to `target` reaches a socket in `rooms` (its own id among them): Socket.IO's
/// rule — in any of the target's rooms (any socket when there are none), in none of its excepts.
pub fn reaches(target: &Target, rooms: &[String]) -> bool {
    let included = target.rooms.is_empty() || target.rooms.iter().any(|r| rooms.contains(r));
    included && !target.except.iter().any(|r| rooms.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WriteFlags;

    fn broadcast(rooms: &[&str], except: &[&str], offset: Option<&str>) -> Message {
        Message::Broadcast {
            target: Target {
                rooms: rooms.iter().map(|r| r.to_string()).collect(),
                except: except.iter().map(|r| r.to_string()).collect(),
            },
            flags: WriteFlags::default(),
            packet: vec![PacketPart::Text(format!(
                "2[\"ev\",\"{}\"]",
                offset.unwrap_or("-")
            ))],
            ack: None,
            offset: offset.map(str::to_string),
        }
    }

    fn session(pid: &str, rooms: &[&str], expires_at_ms: u64) -> Message {
        Message::Session {
            pid: pid.into(),
            sid: format!("sid-of-{pid}"),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            data: vec![PacketPart::Text("{}".into())],
            expires_at_ms,
        }
    }

    fn fence(id: &str, claims: &[&str]) -> Message {
        Message::Fence {
            id: id.into(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn env(nsp: &str, message: Message) -> Envelope {
        Envelope::new("sender", nsp, message)
    }

    fn scan_of(
        records: Vec<Envelope>,
        restores: &[(&str, &str, &str)],
    ) -> Vec<Result<Restored, Miss>> {
        let restores = restores
            .iter()
            .map(|(n, p, o)| (n.to_string(), p.to_string(), o.to_string()));
        let mut scan = Scan::new("F".into(), restores, 100);
        for record in records {
            scan.feed(record);
        }
        assert!(scan.done(), "the scan read its fence");
        scan.finish(1_000)
    }

    fn offsets(restored: &Restored) -> Vec<&str> {
        restored.packets.iter().map(|p| p.offset.as_str()).collect()
    }

    #[test]
    fn replays_what_matched_the_sessions_rooms_after_the_offset_in_log_order() {
        let records = vec![
            env("/", broadcast(&[], &[], Some("o1"))),
            env("/", broadcast(&["a"], &[], Some("o2"))),
            env("/", session("p", &["sid-of-p", "a"], 2_000)),
            env("/", broadcast(&["b"], &[], Some("o3"))), // another room
            env("/", broadcast(&[], &["a"], Some("o4"))), // excepted
            env("/chat", broadcast(&[], &[], Some("o5"))), // another namespace
            env("/", broadcast(&["a"], &[], None)),       // volatile / not storable: no offset
            env(
                "/",
                Message::Batch(vec![
                    broadcast(&["sid-of-p"], &[], Some("o6")),
                    broadcast(&["a", "b"], &[], Some("o7")),
                ]),
            ),
            env("/", fence("F", &["p"])),
            env("/", broadcast(&[], &[], Some("o8"))), // after the fence
        ];
        let out = scan_of(records, &[("/", "p", "o1")]);
        let restored = out[0].as_ref().expect("restored");
        assert_eq!(restored.sid, "sid-of-p");
        assert_eq!(offsets(restored), ["o2", "o6", "o7"]);
    }

    #[test]
    fn a_session_is_used_once_and_a_later_session_of_the_pid_is_fresh() {
        let claimed = vec![
            env("/", broadcast(&[], &[], Some("o1"))),
            env("/", session("p", &[], 2_000)),
            env("/", fence("other", &["p"])),
            env("/", fence("F", &["p"])),
        ];
        assert_eq!(
            scan_of(claimed, &[("/", "p", "o1")])[0],
            Err(Miss::AlreadyUsed)
        );
        let persisted_again = vec![
            env("/", broadcast(&[], &[], Some("o1"))),
            env("/", session("p", &[], 2_000)),
            env("/", fence("other", &["p"])),
            env("/", session("p", &[], 2_000)),
            env("/", fence("F", &["p"])),
        ];
        assert!(scan_of(persisted_again, &[("/", "p", "o1")])[0].is_ok());
    }

    #[test]
    fn unknown_offsets_missing_or_expired_sessions_and_floods_are_not_restored() {
        let records = || {
            vec![
                env("/", broadcast(&[], &[], Some("o1"))),
                env("/", session("p", &[], 2_000)),
                env("/", session("old", &[], 999)),
                env("/chat", session("q", &[], 2_000)),
                env("/", fence("F", &[])),
            ]
        };
        let out = scan_of(
            records(),
            &[
                ("/", "p", "nope"),
                ("/", "nobody", "o1"),
                ("/", "old", "o1"),
                ("/", "q", "o1"), // its session is in another namespace
            ],
        );
        assert_eq!(
            out,
            vec![
                Err(Miss::UnknownOffset),
                Err(Miss::NoSession),
                Err(Miss::Expired),
                Err(Miss::NoSession)
            ]
        );
        let mut flood = vec![env("/", broadcast(&[], &[], Some("o0")))];
        for n in 0..101 {
            flood.push(env("/", broadcast(&[], &[], Some(&format!("x{n}")))));
        }
        flood.push(env("/", session("p", &[], 2_000)));
        flood.push(env("/", fence("F", &[])));
        assert_eq!(
            scan_of(flood, &[("/", "p", "o0")])[0],
            Err(Miss::TooManyPackets)
        );
        // The limit is on what one restore replays, not on the traffic the scan reads.
        let mut busy = vec![env("/", broadcast(&[], &[], Some("o0")))];
        for n in 0..500 {
            busy.push(env("/", broadcast(&["other"], &[], Some(&format!("x{n}")))));
        }
        busy.push(env("/", broadcast(&["a"], &[], Some("mine"))));
        busy.push(env("/", session("p", &["sid-of-p", "a"], 2_000)));
        busy.push(env("/", fence("F", &[])));
        let restored = scan_of(busy, &[("/", "p", "o0")])
            .remove(0)
            .expect("restored");
        assert_eq!(offsets(&restored), ["mine"]);
    }

    #[test]
    fn a_catch_up_reads_the_sessions_rooms_to_its_fence() {
        let mut catch_up =
            CatchUp::new("F2".into(), "/".into(), vec!["sid".into(), "a".into()], 10);
        for record in [
            env("/", broadcast(&["a"], &[], Some("o1"))),
            env("/", broadcast(&["b"], &[], Some("o2"))),
            env("/chat", broadcast(&["a"], &[], Some("o3"))),
            env(
                "/",
                Message::Batch(vec![broadcast(&[], &[], Some("o4")), fence("F2", &[])]),
            ),
            env("/", broadcast(&[], &[], Some("o5"))),
        ] {
            catch_up.feed(record);
        }
        assert!(Reading::done(&catch_up));
        let offsets: Vec<String> = catch_up
            .finish()
            .unwrap()
            .into_iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(offsets, ["o1", "o4"]);
    }

    #[test]
    fn target_rules_are_socket_ios() {
        let rooms = vec!["sid".to_string(), "a".to_string()];
        let t = |r: &[&str], e: &[&str]| Target {
            rooms: r.iter().map(|s| s.to_string()).collect(),
            except: e.iter().map(|s| s.to_string()).collect(),
        };
        assert!(reaches(&t(&[], &[]), &rooms));
        assert!(reaches(&t(&["b", "a"], &[]), &rooms));
        assert!(!reaches(&t(&["b"], &[]), &rooms));
        assert!(!reaches(&t(&[], &["sid"]), &rooms));
        assert!(!reaches(&t(&["a"], &["a"]), &rooms));
    }
}
