//! One scatter-gather for everything a worker asks its siblings: a push waits for each
//! sibling's `Delivered`, a query for each sibling's share. Both are a [`Waiting`] entry here,
//! with the links it waits on, a deadline and whether an answer is already known to be
//! missing (`partial`).
//!
//! An entry ends when its last link answered, or when its deadline passed, or when a link it
//! waits on broke (that link's answer is then missing: `partial`). Ids grow by one, and every
//! entry gets the same timeout (`ipc_timeout`), so the entries form a queue whose front has the
//! oldest deadline: expiry looks at the front only, and an id is an index. Pure bookkeeping:
//! no socket, no clock of its own (the caller passes `now`).

use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::Instant;

/// Link keys an entry waits on (a handful of siblings: kept inline).
pub type Peers = SmallVec<[usize; 4]>;

/// One question out to siblings.
#[derive(Debug)]
pub struct Waiting<T> {
    /// What the answers are gathered into, and where the outcome goes.
    pub job: T,
    /// Links that have not answered yet.
    pub peers: Peers,
    /// When to stop waiting and settle with what came.
    pub deadline: Instant,
    /// Some sibling's answer is missing (it could not be asked, its link broke, or it was
    /// too slow): the outcome says `partial`.
    pub partial: bool,
    /// Answers still expected from outside the links (the cluster's other hosts): the count
    /// Redis gives adds to it, each answer takes one away. It may go below zero while an
    /// answer comes before its count (they travel on different connections).
    pub remote: i64,
    /// How many remote answers to expect is not known yet.
    pub remote_unknown: bool,
}

impl<T> Waiting<T> {
    /// Every link that was asked has answered (or is known never to), and so has every
    /// remote member that got the message.
    pub fn complete(&self) -> bool {
        self.peers.is_empty() && !self.remote_unknown && self.remote <= 0
    }

    /// The number of remote answers became known (`None`: the message could not be sent).
    pub fn remote_count(&mut self, count: Option<u32>) {
        self.remote_unknown = false;
        match count {
            Some(n) => self.remote += i64::from(n),
            None => self.partial = true,
        }
    }

    /// Answers missing now: links, remote members, and an unknown remote count as one.
    fn missing(&self) -> usize {
        self.peers.len() + self.remote.max(0) as usize + self.remote_unknown as usize
    }
}

/// Entries by id.
#[derive(Debug)]
pub struct Gather<T> {
    /// Id of `queue.front()`.
    first: u64,
    /// Entries in id order; `None` once settled (removed from the front lazily).
    queue: VecDeque<Option<Waiting<T>>>,
    /// Entries not yet settled, for `status`.
    live: usize,
}

impl<T> Default for Gather<T> {
    fn default() -> Self {
        Gather {
            first: 1,
            queue: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> Gather<T> {
    /// The id the next [`add`](Self::add) returns (sent to siblings before the entry exists).
    pub fn next_id(&self) -> u64 {
        self.first + self.queue.len() as u64
    }

    /// Adds an entry; returns its id.
    pub fn add(&mut self, w: Waiting<T>) -> u64 {
        let id = self.next_id();
        self.queue.push_back(Some(w));
        self.live += 1;
        id
    }

    /// Entry `id`, if still waiting.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Waiting<T>> {
        let i = id.checked_sub(self.first)?;
        self.queue.get_mut(usize::try_from(i).ok()?)?.as_mut()
    }

    /// Link `key` answered entry `id`: it no longer waits on that link. `None` when there is
    /// no such entry, or it was not waiting on `key` (a late or repeated answer).
    pub fn answered(&mut self, id: u64, key: usize) -> Option<&mut Waiting<T>> {
        let w = self.get_mut(id)?;
        let i = w.peers.iter().position(|&k| k == key)?;
        w.peers.swap_remove(i);
        Some(w)
    }

    /// Settles entry `id`, returning it.
    pub fn take(&mut self, id: u64) -> Option<Waiting<T>> {
        let i = usize::try_from(id.checked_sub(self.first)?).ok()?;
        let w = self.queue.get_mut(i)?.take();
        if w.is_some() {
            self.live -= 1;
        }
        self.trim();
        w
    }

    /// Drops settled entries from the front.
    fn trim(&mut self) {
        while let Some(None) = self.queue.front() {
            self.queue.pop_front();
            self.first += 1;
        }
        if self.queue.is_empty() && self.queue.capacity() > 1024 {
            self.queue = VecDeque::new();
        }
    }

    /// Link `key` broke: every entry waiting on it stops waiting and becomes partial. Pushes
    /// the ids of the entries concerned to `out` (the caller settles those now complete).
    pub fn link_lost(&mut self, key: usize, out: &mut Vec<u64>) {
        for (i, w) in self.queue.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            if let Some(p) = w.peers.iter().position(|&k| k == key) {
                w.peers.swap_remove(p);
                w.partial = true;
                out.push(self.first + i as u64);
            }
        }
    }

    /// Settles every entry whose deadline has passed, oldest first, into `out`; each is
    /// partial if it still waited on a link. Returns how many answers were missing.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Waiting<T>>) -> usize {
        self.trim();
        let mut missing = 0;
        while let Some(Some(w)) = self.queue.front() {
            if w.deadline > now {
                break;
            }
            if let Some(Some(mut w)) = self.queue.pop_front() {
                let m = w.missing();
                missing += m;
                w.partial |= m > 0;
                self.live -= 1;
                out.push(w);
            }
            self.first += 1;
            self.trim();
        }
        missing
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().flatten().map(|w| w.deadline).next()
    }

    /// Entries not yet settled.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn w(job: &'static str, peers: &[usize], deadline: Instant) -> Waiting<&'static str> {
        Waiting {
            job,
            peers: peers.iter().copied().collect(),
            deadline,
            partial: false,
            remote: 0,
            remote_unknown: false,
        }
    }

    #[test]
    fn answers_complete_an_entry() {
        let now = Instant::now();
        let mut g = Gather::default();
        let id = g.add(w("push", &[3, 5], now + Duration::from_secs(1)));
        assert_eq!(g.len(), 1);
        assert!(g.answered(id, 3).is_some_and(|w| !w.complete()));
        // A repeated or stray answer changes nothing.
        assert!(g.answered(id, 3).is_none());
        assert!(g.answered(id + 7, 5).is_none());
        assert!(g
            .answered(id, 5)
            .is_some_and(|w| w.complete() && !w.partial));
        let done = g.take(id).map(|w| w.job);
        assert_eq!(done, Some("push"));
        assert!(g.is_empty());
        assert!(g.take(id).is_none());
    }

    #[test]
    fn the_deadline_settles_with_what_came() {
        let now = Instant::now();
        let mut g = Gather::default();
        let a = g.add(w("a", &[1, 2], now));
        let b = g.add(w("b", &[1], now + Duration::from_secs(5)));
        g.answered(a, 1);
        let mut out = Vec::new();
        assert_eq!(g.expire(now, &mut out), 1);
        assert_eq!(out.len(), 1);
        assert!(out[0].partial && out[0].job == "a");
        assert!(g.get_mut(a).is_none());
        assert_eq!(g.next_deadline(), Some(now + Duration::from_secs(5)));
        out.clear();
        assert_eq!(g.expire(now + Duration::from_secs(5), &mut out), 1);
        assert!(out[0].job == "b" && g.is_empty() && g.get_mut(b).is_none());
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn a_lost_link_makes_its_entries_partial() {
        let now = Instant::now() + Duration::from_secs(5);
        let mut g = Gather::default();
        let a = g.add(w("a", &[1, 2], now));
        let b = g.add(w("b", &[2], now));
        let c = g.add(w("c", &[1], now));
        let mut ids = Vec::new();
        g.link_lost(2, &mut ids);
        assert_eq!(ids, vec![a, b]);
        let wa = g.get_mut(a).map(|w| (w.partial, w.complete()));
        assert_eq!(wa, Some((true, false)));
        let wb = g.get_mut(b).map(|w| (w.partial, w.complete()));
        assert_eq!(wb, Some((true, true)));
        let wc = g.get_mut(c).map(|w| w.partial);
        assert_eq!(wc, Some(false));
    }

    #[test]
    fn remote_answers_may_come_before_their_count() {
        let later = Instant::now() + Duration::from_secs(5);
        let mut g = Gather::default();
        let mut e = w("push", &[], later);
        e.remote_unknown = true;
        let id = g.add(e);
        // One answer first, then the count of two: one still awaited.
        let entry = g.get_mut(id).map(|w| {
            w.remote -= 1;
            w.complete()
        });
        assert_eq!(entry, Some(false));
        let entry = g.get_mut(id).map(|w| {
            w.remote_count(Some(2));
            w.complete()
        });
        assert_eq!(entry, Some(false));
        let entry = g.get_mut(id).map(|w| {
            w.remote -= 1;
            (w.complete(), w.partial)
        });
        assert_eq!(entry, Some((true, false)));
        // A count that could not be had settles at once, partial.
        let id = g.add(Waiting {
            remote_unknown: true,
            ..w("push", &[], later)
        });
        let entry = g.get_mut(id).map(|w| {
            w.remote_count(None);
            (w.complete(), w.partial)
        });
        assert_eq!(entry, Some((true, true)));
        // At the deadline, an unknown count and missing answers are counted missing.
        let now = Instant::now();
        let mut g = Gather::default();
        g.add(Waiting {
            remote: 2,
            ..w("push", &[1], now)
        });
        let mut out = Vec::new();
        assert_eq!(g.expire(now, &mut out), 3);
        assert!(out[0].partial);
    }

    #[test]
    fn settled_entries_leave_from_the_front_in_any_order() {
        let later = Instant::now() + Duration::from_secs(5);
        let mut g = Gather::default();
        let ids: Vec<u64> = (0..4).map(|_| g.add(w("x", &[1], later))).collect();
        g.take(ids[2]);
        g.take(ids[0]);
        assert_eq!(g.len(), 2);
        assert!(g.get_mut(ids[1]).is_some());
        g.take(ids[1]);
        g.take(ids[3]);
        assert!(g.is_empty());
        assert_eq!(g.next_id(), ids[3] + 1);
    }
}
