//! Restart throttling for one worker id: a worker that dies over and over is restarted after
//! a delay that doubles each time (from [`MIN`] to [`MAX`]), so a crash loop costs at most one
//! fork every [`MAX`]; a worker that lived at least [`RESET_AFTER`] starts again from [`MIN`].

use std::time::Duration;

/// First restart delay, and the delay after a worker that lived long enough.
pub const MIN: Duration = Duration::from_millis(100);
/// Longest delay between two restarts of one id.
pub const MAX: Duration = Duration::from_secs(10);
/// A worker that lived this long is considered healthy: its next death restarts quickly again.
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// The restart delay of one worker id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay the next death will wait before its restart.
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN }
    }
}

impl Backoff {
    /// Records a death of a worker that lived `lived`, and returns how long to wait before
    /// starting its replacement.
    pub fn on_death(&mut self, lived: Duration) -> Duration {
        if lived >= RESET_AFTER {
            self.next = MIN;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..10).map(|_| b.on_death(quick).as_millis()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
    }

    #[test]
    fn a_long_life_resets_it() {
        let mut b = Backoff::default();
        for _ in 0..6 {
            b.on_death(Duration::from_secs(1));
        }
        assert_eq!(b.on_death(RESET_AFTER), MIN);
        assert_eq!(b.on_death(Duration::ZERO), MIN * 2);
    }

    #[test]
    fn first_restart_is_within_a_second() {
        assert!(Backoff::default().on_death(Duration::ZERO) < Duration::from_secs(1));
    }
}
