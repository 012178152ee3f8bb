//! The connection loop the node and the emitter share ([`keep_connected`]): connect, run a session,
//! and when the connection is lost or an attempt fails, wait with capped exponential backoff and
//! try again, until `close()`. Also the pieces around it: an attempt that `close()` may cut short
//! and panic messages.

use crate::bus::Connected;
use crate::outbox::Outbox;
use std::future::Future;

use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a session ended.
pub(crate) enum SessionEnd {
    /// `close()`: the owner has flushed, said goodbye and closed the link.
    Closed,
    /// The connection was lost (the link is closed): the reason.
    Lost(String),
}

/// What a session is told when it starts.
pub(crate) struct SessionStart {
    /// An earlier session existed (this one follows a lost connection).
    pub(crate) ever_connected: bool,
    /// Attempts this connection took, 1 when the first one worked.
    pub(crate) attempts: u32,
}

/// The owner of a connection loop: the node or the emitter.
pub(crate) trait Connecting: Sync {
    /// What the sessions and the offline waits share (the node's control channel).
    type Commands: Send;
    fn outbox(&self) -> &Outbox;
    /// The first and the longest delay between attempts.
    fn reconnect_delays(&self) -> (Duration, Duration);
    /// One attempt (each broker URL once). `ever_connected`: an earlier session existed.
    fn connect(
        &self,
        ever_connected: bool,
    ) -> impl Future<Output = Result<Connected, String>> + Send;
    /// Runs a connected session until `close()` (then cleans up) or until the connection is lost.
    fn session(
        &self,
        connected: Connected,
        start: SessionStart,
        commands: &mut Self::Commands,
        closing: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = SessionEnd> + Send;
    fn connection_lost(&self, reason: String);
    fn attempt_failed(&self, error: String);
    /// Waits `delay` without a connection; false when `close()` was called meanwhile.
    fn wait_offline(
        &self,
        delay: Duration,
        last_error: &str,
        commands: &mut Self::Commands,
        closing: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = bool> + Send;
    /// `close()` was called while not connected: what waited can no longer be sent.
    fn closed_offline(&self, commands: &mut Self::Commands);
}

/// Keeps `owner` connected until `close()`: sessions, and between them the backoff.
pub(crate) async fn keep_connected<C: Connecting>(
    owner: &C,
    commands: &mut C::Commands,
    closing: &mut watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    let mut ever_connected = false;
    loop {
        let attempt = owner.connect(ever_connected);
        let Some(connected) = connect_unless_closed(attempt, closing, owner.outbox()).await else {
            break;
        };
        let last_error = match connected {
            Ok(connected) => {
                let start = SessionStart {
                    ever_connected,
                    attempts: failures + 1,
                };
                ever_connected = true;
                failures = 0;
                match owner.session(connected, start, commands, closing).await {
                    SessionEnd::Closed => return,
                    SessionEnd::Lost(reason) => {
                        owner.connection_lost(reason.clone());
                        reason
                    }
                }
            }
            Err(error) => {
                failures += 1;
                owner.attempt_failed(error.clone());
                error
            }
        };
        let (initial, max) = owner.reconnect_delays();
        let delay = backoff(failures.max(1), initial, max, jitter_seed());
        if !owner
            .wait_offline(delay, &last_error, commands, closing)
            .await
        {
            break;
        }
    }
    owner.closed_offline(commands);
}

/// Delay before reconnect attempt `failures` (1-based): doubling from `initial`, capped at `max`,
/// with up to 20% taken off at random so servers that lost the broker together do not return in
/// lockstep.
fn backoff(failures: u32, initial: Duration, max: Duration, jitter_seed: u64) -> Duration {
    let doubled = initial.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = doubled.min(max);
    let jitter = (jitter_seed % 1000) as u32; // per mille
    capped.saturating_sub(capped * jitter / 5000)
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Awaits a connection attempt, unless `close()` is called meanwhile with nothing waiting to be
/// sent: then `None`. With publishes waiting, the attempt may finish (it is bounded by the connect
/// timeout) so they still go out.
async fn connect_unless_closed<T>(
    attempt: impl std::future::Future<Output = T>,
    closing: &mut watch::Receiver<bool>,
    outbox: &Outbox,
) -> Option<T> {
    tokio::pin!(attempt);
    tokio::select! {
        result = &mut attempt => Some(result),
        _ = closed(closing) => {
            if outbox.len() == 0 {
                None
            } else {
                Some(attempt.await)
            }
        }
    }
}

/// Resolves once `close()` has been called.
pub(crate) async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

fn jitter_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    RandomState::new().hash_one(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert_eq!(backoff(1, initial, max, 0), Duration::from_millis(100));
        assert_eq!(backoff(2, initial, max, 0), Duration::from_millis(200));
        assert_eq!(backoff(4, initial, max, 0), Duration::from_millis(800));
        assert_eq!(backoff(10, initial, max, 0), max);
        assert_eq!(backoff(1000, initial, max, 0), max);
        let jittered = backoff(3, initial, max, 999);
        assert!(jittered <= Duration::from_millis(400) && jittered >= Duration::from_millis(320));
    }
}
