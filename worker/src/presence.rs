//! Which siblings may hold a uid: each worker tells the others, in a compact form, which uids
//! it holds connections of, so a push for a uid goes only to the workers that may hold it and
//! waits only for them. A stalled worker then delays only the pushes for its own uids (and
//! the few whose bucket collides with one of them), not every push on the server.
//!
//! A uid maps to one of [`BUCKETS`] buckets by a hash that every worker computes alike (a
//! fixed seed: the worst a chosen uid can do is make a push wait for one more sibling). A
//! worker counts its uids per bucket ([`Local`]); a bucket going from empty to used, or back,
//! is a change its siblings learn in the next batch (one message per loop turn, sent with the
//! other link traffic). A sibling's picture of it ([`View`]) is one bit per bucket: a set bit
//! means "may hold", a clear one "holds none of these uids". A link starts with the whole
//! picture (a snapshot), then changes follow on the same link, in order.
//!
//! Until a sibling's snapshot has arrived, it may hold anything (pushes wait for it, as they
//! would without this module). A push that reaches a worker after the uid logged in there but
//! before the entry worker learned it answers `fail`, as a push sent just before the login
//! would: `fail` still means that nobody got it.
//!
//! Memory: a worker's counts are one byte per bucket (256 KiB), allocated when its first
//! sibling link opens (a single worker has none), and its picture of each sibling one bit per
//! bucket (32 KiB): fixed, whatever the number of connections. With 20,000 uids in a worker about 7% of its bits are set, which is how often
//! a push for a uid it does not hold still waits for it.

use std::hash::BuildHasher;

/// Buckets uids are hashed into.
pub const BUCKETS: usize = 1 << 18;

/// The same seed in every worker: pictures are compared across processes.
const SEED: u64 = 0x4865_7261_6c64_2121;

/// The bucket of `uid`.
pub fn bucket(uid: &str) -> u32 {
    let h = foldhash::fast::FixedState::with_seed(SEED).hash_one(uid.as_bytes());
    (h as usize % BUCKETS) as u32
}

/// This worker's uids, counted per bucket, and the buckets that changed since the last batch.
#[derive(Debug, Default)]
pub struct Local {
    /// Uids per bucket (saturating: a bucket that reached 255 stays set); empty until
    /// [`Local::enable`], as long as no sibling needs the picture.
    counts: Vec<u8>,
    /// Buckets that went from 0 to 1 or 1 to 0 since the last [`Local::take_changes`].
    changed: Vec<u32>,
}

impl Local {
    /// Starts counting, with the uids held now (the first sibling link opens).
    pub fn enable<'a>(&mut self, uids: impl Iterator<Item = &'a str>) {
        if !self.counts.is_empty() {
            return;
        }
        self.counts = vec![0; BUCKETS];
        for u in uids {
            let c = &mut self.counts[bucket(u) as usize];
            *c = c.saturating_add(1);
        }
    }

    /// `uid` got its first connection in this worker.
    pub fn arrive(&mut self, uid: &str) {
        if self.counts.is_empty() {
            return;
        }
        let b = bucket(uid);
        let c = &mut self.counts[b as usize];
        if *c == 0 {
            self.changed.push(b);
        }
        *c = c.saturating_add(1);
    }

    /// `uid` lost its last connection in this worker.
    pub fn depart(&mut self, uid: &str) {
        if self.counts.is_empty() {
            return;
        }
        let b = bucket(uid);
        let c = &mut self.counts[b as usize];
        match *c {
            0 | u8::MAX => {}
            1 => {
                *c = 0;
                self.changed.push(b);
            }
            _ => *c -= 1,
        }
    }

    /// Whether any bucket changed since the last batch.
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The buckets that are now set and now clear among those that changed (a bucket that
    /// went and came back within one batch is sent as it is now).
    pub fn take_changes(&mut self) -> (Vec<u32>, Vec<u32>) {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        changed
            .into_iter()
            .partition(|&b| self.counts[b as usize] > 0)
    }

    /// Every bucket, one bit each (bucket `b` is bit `b % 8` of byte `b / 8`).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bits = vec![0u8; BUCKETS / 8];
        if self.counts.is_empty() {
            // Not counting: every bucket may hold (a sibling then asks this worker always).
            bits.fill(0xff);
            return bits;
        }
        for (b, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                bits[b / 8] |= 1 << (b % 8);
            }
        }
        bits
    }
}

/// A sibling's picture: one bit per bucket.
#[derive(Debug, Clone)]
pub struct View {
    /// Bucket `b` is bit `b % 8` of byte `b / 8`.
    bits: Vec<u8>,
}

impl View {
    /// The picture a snapshot gives; `None` for one of the wrong size (another build).
    pub fn from_snapshot(bits: Vec<u8>) -> Option<View> {
        (bits.len() == BUCKETS / 8).then_some(View { bits })
    }

    /// Applies a batch of changes (buckets out of range are ignored).
    pub fn apply(&mut self, on: &[u32], off: &[u32]) {
        for &b in on {
            if let Some(byte) = self.bits.get_mut(b as usize / 8) {
                *byte |= 1 << (b % 8);
            }
        }
        for &b in off {
            if let Some(byte) = self.bits.get_mut(b as usize / 8) {
                *byte &= !(1 << (b % 8));
            }
        }
    }

    /// Whether the sibling may hold a connection of `uid`.
    pub fn may_hold(&self, uid: &str) -> bool {
        let b = bucket(uid) as usize;
        self.bits[b / 8] & (1 << (b % 8)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sibling_learns_what_a_worker_holds() {
        let mut local = Local::default();
        local.enable(std::iter::empty());
        local.arrive("u1");
        local.arrive("u2");
        let mut view = View::from_snapshot(local.snapshot()).unwrap_or_else(|| unreachable!());
        assert!(view.may_hold("u1") && view.may_hold("u2"));
        let held = (0..1000)
            .filter(|i| view.may_hold(&format!("x{i}")))
            .count();
        assert!(held < 5, "{held} of 1000 absent uids look held");
        // Changes since the snapshot: u3 arrives, u1 leaves.
        assert!(!local.has_changes() || local.take_changes().0.len() == 2);
        local.arrive("u3");
        local.depart("u1");
        let (on, off) = local.take_changes();
        view.apply(&on, &off);
        assert!(view.may_hold("u3") && view.may_hold("u2"));
        assert!(
            !view.may_hold("u1") || bucket("u1") == bucket("u2") || bucket("u1") == bucket("u3")
        );
        assert!(!local.has_changes());
    }

    #[test]
    fn a_bucket_shared_by_two_uids_stays_set_until_both_leave() {
        // Find two uids in one bucket.
        let first = bucket("a0");
        let twin = (1..)
            .map(|i| format!("a{i}"))
            .find(|u| bucket(u) == first)
            .unwrap_or_default();
        let mut local = Local::default();
        local.enable(std::iter::empty());
        local.arrive("a0");
        local.arrive(&twin);
        local.take_changes();
        local.depart("a0");
        assert!(!local.has_changes());
        local.depart(&twin);
        assert_eq!(local.take_changes(), (vec![], vec![first]));
    }

    #[test]
    fn counting_starts_with_the_uids_held_when_enabled() {
        let mut local = Local::default();
        local.arrive("early");
        assert!(!local.has_changes());
        local.enable(["early"].into_iter());
        let view = View::from_snapshot(local.snapshot()).unwrap_or_else(|| unreachable!());
        assert!(view.may_hold("early"));
        local.depart("early");
        assert_eq!(local.take_changes(), (vec![], vec![bucket("early")]));
    }

    #[test]
    fn a_bucket_that_comes_back_within_a_batch_is_sent_as_it_is() {
        let mut local = Local::default();
        local.enable(std::iter::empty());
        local.arrive("u");
        local.depart("u");
        local.arrive("u");
        assert_eq!(local.take_changes(), (vec![bucket("u")], vec![]));
        assert!(View::from_snapshot(vec![0; 3]).is_none());
    }
}
