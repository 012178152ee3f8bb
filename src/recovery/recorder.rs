//! Live packets recorded while restores are under way. A restore's scan ends at its fence; packets
//! published after the fence reach this server's queue (or, for its own, its publish path) and
//! would be filtered out, since the restored socket is not in the room index yet. Each restore
//! records the storable broadcasts of its namespace from before its fence until the socket is in
//! the index; then what reaches the session's rooms and was not replayed already is handed over.

use super::scan::reaches;
use crate::wire::{PacketPart, Target};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A recording nobody finished (the host never came back for it) is dropped after this.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);
/// The most packets one recording holds; past it the restore fails rather than replay a gap.
const MAX_RECORDED: usize = 10_000;

#[derive(Default)]
pub struct Recorders {
    inner: Mutex<Recordings>,
    active: AtomicUsize,
}

#[derive(Default)]
pub struct Recordings {
    next_id: u64,
    list: Vec<Recording>,
}

struct Recording {
    id: u64,
    nsp: String,
    started: Instant,
    packets: Vec<(Target, String, Vec<PacketPart>)>,
    overflow: bool,
    /// Set once the scan found the session: its rooms, and the offsets the scan replays.
    session: Option<(Vec<String>, HashSet<String>)>,
}

impl Recorders {
    /// Starts recording the live storable packets of `nsp`; returns the recording's id.
    pub(crate) fn start(&self, nsp: &str) -> u64 {
        let mut inner = self.inner.lock();
        inner.list.retain(|r| r.started.elapsed() < ABANDONED_AFTER);
        inner.next_id += 1;
        let id = inner.next_id;
        inner.list.push(Recording {
            id,
            nsp: nsp.to_string(),
            started: Instant::now(),
            packets: Vec::new(),
            overflow: false,
            session: None,
        });
        self.active.store(inner.list.len(), Ordering::SeqCst);
        id
    }

    /// The scan found the session: keep recording for it, knowing what the scan replays.
    pub(crate) fn expect(&self, id: u64, rooms: Vec<String>, replayed: HashSet<String>) {
        if let Some(recording) = self.inner.lock().list.iter_mut().find(|r| r.id == id) {
            recording.session = Some((rooms, replayed));
        }
    }

    /// Offsets a further read replays: the recording skips them too.
    pub(crate) fn also_replayed(&self, id: u64, offsets: impl IntoIterator<Item = String>) {
        let mut inner = self.inner.lock();
        let session = inner
            .list
            .iter_mut()
            .find(|r| r.id == id)
            .and_then(|r| r.session.as_mut());
        if let Some((_, replayed)) = session {
            replayed.extend(offsets);
        }
    }

    pub(crate) fn stop(&self, id: u64) {
        let mut inner = self.inner.lock();
        inner.list.retain(|r| r.id != id);
        self.active.store(inner.list.len(), Ordering::SeqCst);
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::SeqCst) > 0
    }

    /// Locks the recordings: the consumer holds this from recording a packet to filtering it
    /// against the room index (see `Recovery::finish_restore`).
    pub(crate) fn lock(&self) -> RecordersGuard<'_> {
        RecordersGuard {
            inner: self.inner.lock(),
            active: &self.active,
        }
    }
}

pub(crate) struct RecordersGuard<'a> {
    inner: MutexGuard<'a, Recordings>,
    active: &'a AtomicUsize,
}

impl RecordersGuard<'_> {
    /// A storable broadcast of `nsp` seen live.
    pub(crate) fn record(
        &mut self,
        nsp: &str,
        target: &Target,
        offset: &str,
        packet: &[PacketPart],
    ) {
        for recording in self.inner.list.iter_mut().filter(|r| r.nsp == nsp) {
            if recording.packets.len() >= MAX_RECORDED {
                recording.overflow = true;
            } else {
                recording
                    .packets
                    .push((target.clone(), offset.to_string(), packet.to_vec()));
            }
        }
    }

    /// The session's rooms of recording `id`, if it can be finished: known, found by its scan, not
    /// overflowing. (An overflowing one is dropped.)
    pub(crate) fn rooms_of(&mut self, id: u64) -> Option<Vec<String>> {
        let position = self.inner.list.iter().position(|r| r.id == id)?;
        let recording = &self.inner.list[position];
        match (&recording.session, recording.overflow) {
            (Some((rooms, _)), false) => Some(rooms.clone()),
            _ => {
                self.inner.list.swap_remove(position);
                self.active.store(self.inner.list.len(), Ordering::SeqCst);
                None
            }
        }
    }

    /// Ends recording `id`: the session's rooms and the packets recorded for it that the scan did
    /// not replay, in arrival order. `None` when unknown, not found by its scan, or overflowing.
    ///
    /// The consumer skips the lock while no recording is active: end a recording only once the
    /// socket is in the room index (`Recovery::finish_restore`), or a packet could find neither.
    pub(crate) fn take(&mut self, id: u64) -> Option<(Vec<String>, Vec<Vec<PacketPart>>)> {
        let position = self.inner.list.iter().position(|r| r.id == id)?;
        let recording = self.inner.list.swap_remove(position);
        self.active.store(self.inner.list.len(), Ordering::SeqCst);
        let (rooms, mut replayed) = recording.session?;
        if recording.overflow {
            return None;
        }
        let packets = recording
            .packets
            .into_iter()
            .filter(|(target, offset, _)| {
                reaches(target, &rooms) && replayed.insert(offset.clone())
            })
            .map(|(_, _, parts)| parts)
            .collect();
        Some((rooms, packets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rooms: &[&str]) -> Target {
        Target {
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            except: Vec::new(),
        }
    }

    fn part(text: &str) -> Vec<PacketPart> {
        vec![PacketPart::Text(text.into())]
    }

    #[test]
    fn hands_over_what_reaches_the_session_once_and_not_what_the_scan_replayed() {
        let recorders = Recorders::default();
        let id = recorders.start("/");
        let other = recorders.start("/chat");
        assert!(recorders.active());
        {
            let mut guard = recorders.lock();
            guard.record("/", &target(&["a"]), "o1", &part("1"));
            guard.record("/", &target(&["b"]), "o2", &part("2"));
            guard.record("/chat", &target(&[]), "o3", &part("3"));
            guard.record("/", &target(&[]), "o4", &part("4"));
            guard.record("/", &target(&[]), "o4", &part("4 again"));
        }
        recorders.expect(
            id,
            vec!["sid".into(), "a".into()],
            HashSet::from(["o1".to_string()]),
        );
        assert!(
            recorders.lock().rooms_of(other).is_none(),
            "its scan found no session"
        );
        assert_eq!(
            recorders.lock().rooms_of(id),
            Some(vec!["sid".to_string(), "a".to_string()])
        );
        assert!(
            recorders.active(),
            "recording until taken: the socket joins the index in between"
        );
        let (rooms, packets) = recorders.lock().take(id).expect("found");
        assert_eq!(rooms, ["sid", "a"]);
        assert_eq!(packets, vec![part("4")]);
        assert!(recorders.lock().take(id).is_none(), "taken once");
        assert!(
            recorders.lock().take(other).is_none(),
            "its scan found no session"
        );
        assert!(!recorders.active());
    }
}
