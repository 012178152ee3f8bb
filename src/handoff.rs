//! Handing the outbox to the broker link, from whichever thread asks: the connection task, which
//! waits for lapin's writes when more is waiting (back-pressure), or the host's thread at the end
//! of its turn, which never waits: it leaves the hand-off to the connection task once a few of its
//! own are still unwritten.
//!
//! Why the host's thread: waking the connection task to hand off cost a thread wake-up per JS turn,
//! and waiting there for lapin's write cost another when lapin finished. Now a publish goes from the
//! JS thread straight to lapin's I/O thread, and a write is waited for only when hand-offs pile up
//! behind it (lapin holds at most a few hand-offs that are not written; the rest waits, bounded,
//! in the outbox).
//!
//! What a failed connection had not written yet is put back at the front of the outbox, as it was
//! (numbered): the next session sends it again, and a receiver that did get it drops the copy.

use crate::bus::{Link, WriteState};
use crate::outbox::{Outbox, MAX_BATCH};
use crate::transport::LOG_KEY;
use crate::wire::{self, Envelope};
use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// AMQP messages handed to lapin together: messages to different rooms cannot share a batch, but
/// they can share a hand-off.
const PUBLISHES_PER_HAND_OFF: usize = 64;

/// Hand-offs the host's thread may leave unwritten in lapin before the connection task takes over
/// (and waits for the writes). More than one: on a busy machine lapin's thread often has not run
/// yet when the next JS turn publishes, and waking the connection task then costs the hand-off
/// this module saves.
const UNWRITTEN_HAND_OFFS: usize = 4;

#[derive(Default)]
pub(crate) struct Handoff {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The link the host's thread may hand off to: set while a session serves.
    attached: Option<Arc<dyn Link>>,
    /// What was handed off and is not known to be written yet, in order.
    unwritten: Vec<(String, Envelope)>,
    /// How many hand-offs that is.
    hand_offs: usize,
}

/// The outbox and its publish counter, which every hand-off updates together.
pub(crate) struct Sending<'a> {
    pub outbox: &'a Outbox,
    pub published: &'a AtomicU64,
}

impl Handoff {
    /// From now on the host's thread may hand off to `link` (the session serves).
    pub(crate) fn attach(&self, link: Arc<dyn Link>) {
        self.state.lock().attached = Some(link);
    }

    /// The session is over: only the connection task hands off from now on. With the connection
    /// `lost`, what it had not written goes back to the outbox.
    pub(crate) fn detach(&self, link: &dyn Link, lost: bool, sending: &Sending<'_>) {
        let mut state = self.state.lock();
        state.attached = None;
        if lost && link.write_state() != WriteState::Done {
            put_back(&mut state, sending);
        }
    }

    /// The host's end of turn: hands off on the calling thread what it can (see [`send_now`]), and
    /// wakes the connection task for the rest.
    ///
    /// [`send_now`]: Self::send_now
    pub(crate) fn send_at_end_of_turn(&self, sending: &Sending<'_>) {
        if !self.send_now(sending) {
            sending.outbox.wake();
        }
    }

    /// Hands off what is waiting unless the attached link still has [`UNWRITTEN_HAND_OFFS`]
    /// hand-offs to write. False when something is left for the connection task (no link, writes
    /// behind, more than one hand-off's worth, a failure).
    fn send_now(&self, sending: &Sending<'_>) -> bool {
        let Some(mut state) = self.state.try_lock() else {
            return false;
        };
        let Some(link) = state.attached.clone() else {
            return false;
        };
        match settle(&mut state, &*link, sending) {
            Ok(true) => {}
            Ok(false) if state.hand_offs < UNWRITTEN_HAND_OFFS => {}
            Ok(false) | Err(_) => return false,
        }
        matches!(hand_off_next(&mut state, &*link, sending), Ok(false))
    }

    /// The connection task's flush: hands off everything waiting, waiting for each hand-off's
    /// write before the next one, and not for the last one's.
    pub(crate) async fn flush(&self, link: &dyn Link, sending: &Sending<'_>) -> Result<(), String> {
        loop {
            {
                let mut state = self.state.lock();
                if settle(&mut state, link, sending)? && !hand_off_next(&mut state, link, sending)?
                {
                    return Ok(());
                }
            }
            if let Err(error) = link.written().await {
                put_back(&mut self.state.lock(), sending);
                return Err(error);
            }
        }
    }

    /// Sends again, first, what a lost connection had not written (numbered already): a receiver
    /// drops a message numbered below one it has seen, so nothing numbered later (the reconnect's
    /// hello) may reach it first.
    pub(crate) async fn resend_unwritten(
        &self,
        link: &dyn Link,
        sending: &Sending<'_>,
    ) -> Result<(), String> {
        {
            let mut state = self.state.lock();
            settle(&mut state, link, sending)?;
            let mut resent = Vec::new();
            while let Some(next) = sending.outbox.pop_numbered() {
                resent.push(next);
            }
            if resent.is_empty() {
                return Ok(());
            }
            hand_off(&mut state, link, resent, sending)?;
        }
        link.written().await.inspect_err(|_| {
            put_back(&mut self.state.lock(), sending);
        })
    }

    /// Publishes around the outbox (announcements, goodbye): numbered and handed off in the order
    /// of every other hand-off.
    pub(crate) fn publish_numbered(
        &self,
        link: &dyn Link,
        key: &str,
        mut envelope: Envelope,
        sending: &Sending<'_>,
    ) -> Result<(), String> {
        let _in_order = self.state.lock();
        sending.outbox.stamp(key, &mut envelope);
        link.publish(key, wire::encode(&envelope))?;
        sending.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Whether the last hand-off is written (then it is forgotten); a failed write puts it back.
fn settle(
    state: &mut MutexGuard<'_, State>,
    link: &dyn Link,
    sending: &Sending<'_>,
) -> Result<bool, String> {
    match link.write_state() {
        WriteState::Done => {
            state.unwritten.clear();
            state.hand_offs = 0;
            Ok(true)
        }
        WriteState::Pending => Ok(false),
        WriteState::Failed(reason) => {
            put_back(state, sending);
            Err(reason)
        }
    }
}

/// Hands off the next publishes (up to [`PUBLISHES_PER_HAND_OFF`] AMQP messages, each a batch of
/// up to [`MAX_BATCH`]); true when more is waiting.
fn hand_off_next(
    state: &mut MutexGuard<'_, State>,
    link: &dyn Link,
    sending: &Sending<'_>,
) -> Result<bool, String> {
    let mut envelopes = Vec::new();
    while envelopes.len() < PUBLISHES_PER_HAND_OFF {
        match sending.outbox.pop_batch(MAX_BATCH) {
            Some(next) => envelopes.push(next),
            None => break,
        }
    }
    if envelopes.is_empty() {
        return Ok(false);
    }
    hand_off(state, link, envelopes, sending)?;
    Ok(sending.outbox.len() > 0)
}

/// Hands `envelopes` (popped from the outbox, numbered) to the link, after the unwritten ones.
fn hand_off(
    state: &mut MutexGuard<'_, State>,
    link: &dyn Link,
    envelopes: Vec<(String, Envelope)>,
    sending: &Sending<'_>,
) -> Result<(), String> {
    let bodies = envelopes
        .iter()
        .map(|(key, envelope)| {
            // Storable packets also go to the recovery log, by the same publish.
            let copy = envelope.message.recoverable() && key != LOG_KEY;
            (key.clone(), wire::encode(envelope), copy.then_some(LOG_KEY))
        })
        .collect();
    let count = envelopes.len() as u64;
    sending.published.fetch_add(count, Ordering::Relaxed);
    state.unwritten.extend(envelopes);
    state.hand_offs += 1;
    link.hand_off(bodies).map_err(|refused| {
        // What the link took will not be written either: it is not connected.
        put_back(state, sending);
        refused.reason
    })
}

/// What is not known to be written back to the front of the outbox, in order, uncounted.
fn put_back(state: &mut MutexGuard<'_, State>, sending: &Sending<'_>) {
    state.hand_offs = 0;
    let unwritten = std::mem::take(&mut state.unwritten);
    sending
        .published
        .fetch_sub(unwritten.len() as u64, Ordering::Relaxed);
    for (key, envelope) in unwritten.into_iter().rev() {
        sending.outbox.push_front(key, envelope);
    }
}
