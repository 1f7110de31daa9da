//! The uids whose last recipient in this worker went away recently: a bounded, time-ordered
//! record, used in a cluster with a history so that a broadcast to everyone (`all`) is also
//! kept for a uid that dropped for a moment and has no connection anywhere when the broadcast
//! comes (it then recovers the broadcast, or gets it at its next login with offline delivery).
//!
//! Each uid is in the record once, at the time it was last noted; the record forgets entries
//! older than the time it is asked with, and its oldest entries past [`MAX_DROPPED`] (the
//! caller counts them). Pure bookkeeping: no clock of its own (the caller passes `now`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most uids kept; past it the oldest go first (a worker losing more uids than this within
/// `history_ttl` keeps `all` for the latest ones only).
pub const MAX_DROPPED: usize = 100_000;

/// Recently dropped uids.
#[derive(Debug, Default)]
pub struct Dropped {
    /// The uids by the order they were last noted (a sequence number), with the time: the
    /// front is the oldest, to expire and to bound.
    order: BTreeMap<u64, (String, Instant)>,
    /// Each uid's sequence number in `order` (a uid noted again moves to the back).
    seq_of: HashMap<String, u64>,
    /// The next sequence number.
    next: u64,
}

impl Dropped {
    /// `uid` lost its last recipient here at `now`. Returns how many uids were forgotten
    /// before their time to stay under [`MAX_DROPPED`].
    pub fn note(&mut self, uid: &str, now: Instant) -> usize {
        let seq = self.next;
        self.next += 1;
        match self.seq_of.get_mut(uid) {
            Some(old) => {
                let prev = std::mem::replace(old, seq);
                if let Some(entry) = self.order.remove(&prev) {
                    self.order.insert(seq, (entry.0, now));
                }
            }
            None => {
                self.seq_of.insert(uid.to_string(), seq);
                self.order.insert(seq, (uid.to_string(), now));
            }
        }
        let mut forgotten = 0;
        while self.order.len() > MAX_DROPPED {
            self.pop_front();
            forgotten += 1;
        }
        forgotten
    }

    /// Forgets what was noted `keep` or more before `now`.
    pub fn expire(&mut self, now: Instant, keep: Duration) {
        while let Some((_, (_, at))) = self.order.first_key_value() {
            if now.saturating_duration_since(*at) < keep {
                break;
            }
            self.pop_front();
        }
        if self.order.is_empty() && self.seq_of.capacity() > 1024 {
            self.seq_of = HashMap::new();
        }
    }

    /// The uids noted less than `keep` before `now`, oldest first.
    pub fn uids(&mut self, now: Instant, keep: Duration) -> impl Iterator<Item = &str> {
        self.expire(now, keep);
        self.order.values().map(|(u, _)| u.as_str())
    }

    /// Uids in the record.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets the oldest uid.
    fn pop_front(&mut self) {
        if let Some((_, (uid, _))) = self.order.pop_first() {
            self.seq_of.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(d: &mut Dropped, now: Instant, keep: Duration) -> Vec<String> {
        let mut v: Vec<String> = d.uids(now, keep).map(str::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn forgets_by_time_and_keeps_a_uid_noted_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Dropped::default();
        d.note("a", t0);
        d.note("b", t0 + s(1));
        d.note("a", t0 + s(2));
        assert_eq!(sorted(&mut d, t0 + s(2), s(10)), ["a", "b"]);
        // b's time is over; a's first entry too, but not its second.
        assert_eq!(sorted(&mut d, t0 + s(11), s(10)), ["a"]);
        assert_eq!(d.len(), 1);
        assert!(sorted(&mut d, t0 + s(12), s(10)).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn bounded_oldest_first() {
        let t0 = Instant::now();
        let mut d = Dropped::default();
        let mut forgotten = 0;
        for i in 0..MAX_DROPPED + 5 {
            forgotten += d.note(&format!("u{i}"), t0);
        }
        assert_eq!(d.len(), MAX_DROPPED);
        assert_eq!(forgotten, 5);
        let keep = Duration::from_secs(60);
        assert!(!d.uids(t0, keep).any(|u| u == "u4"));
        assert!(d.uids(t0, keep).any(|u| u == "u5"));
        // Noting the same uid over and over keeps it once and forgets nobody else.
        let mut d = Dropped::default();
        d.note("x", t0);
        for _ in 0..MAX_DROPPED + 5 {
            assert_eq!(d.note("y", t0), 0);
        }
        assert_eq!(d.len(), 2);
        assert_eq!(sorted(&mut d, t0, keep), ["x", "y"]);
    }
}
