//! "At most once every so often": reports of things that come in floods (dropped publishes,
//! undecodable messages) go through one of these so the user hears of them without being flooded.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: Mutex::default(),
        }
    }

    /// True when a report is due now (the first time, and then once per period).
    pub(crate) fn due(&self) -> bool {
        let mut last = self.last.lock();
        if last.is_none_or(|at| at.elapsed() >= self.every) {
            *last = Some(Instant::now());
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_once_per_period() {
        let throttle = Throttle::new(Duration::from_secs(60));
        assert!(throttle.due());
        assert!(!throttle.due());
        let fast = Throttle::new(Duration::ZERO);
        assert!(fast.due());
        assert!(fast.due());
    }
}
