//! The broadcasts to everyone (`all`) a worker keeps beside its uids' streams (see
//! `history`): one stream per worker, not one copy per uid, positioned on the worker's one
//! offset counter, so a uid's recovery merges the uid's own messages and the broadcasts after
//! its position by offset. Pure bookkeeping; `History` counts these entries in its bytes and
//! messages and drops them by time and memory like any other.
//!
//! DESIGN — why a merged stream and not per-uid copies: a broadcast is aimed at every uid,
//! and a worker owns the history of a share of all uids (tens of thousands at scale). A copy
//! per uid would cost ~160 bytes and a map lookup per uid per broadcast, and would evict the
//! uids' own messages from `history_max_bytes` within a few broadcasts; one entry per worker
//! costs the payload once. The counter being shared by the worker's uids, an offset of a
//! broadcast sits between the offsets of the uids' own messages in the order they were kept.

use crate::history::Entry;
use std::collections::VecDeque;

/// One kept broadcast.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// The message, positioned on the worker's counter.
    pub entry: Entry,
    /// Uids the broadcast left out (`exclude`): their recoveries skip it.
    pub exclude: Vec<String>,
}

/// A worker's kept broadcasts, oldest first.
#[derive(Debug, Default)]
pub struct Broadcasts {
    /// Oldest first; at most the store's per-uid size.
    pub list: VecDeque<Broadcast>,
    /// The highest offset of a broadcast dropped (size, time, memory): a position below it
    /// missed a broadcast that is gone.
    pub floor: u64,
    /// The offset of the last broadcast kept (0: none yet).
    pub top: u64,
}

impl Broadcasts {
    /// Drops the oldest broadcast when its offset is `offset`; its cost.
    pub fn drop_front(&mut self, offset: u64) -> Option<usize> {
        if self.list.front().is_some_and(|b| b.entry.offset == offset) {
            let b = self.list.pop_front()?;
            self.floor = self.floor.max(offset);
            return Some(b.cost());
        }
        None
    }

    /// Whether an entry at `offset` of the keeping order is still kept here.
    pub fn holds(&self, offset: u64) -> bool {
        self.list.front().is_some_and(|b| b.entry.offset <= offset)
    }

    /// The broadcasts after `offset` that `uid` was not left out of, oldest first.
    pub fn after<'a>(&'a self, offset: u64, uid: &'a str) -> impl Iterator<Item = &'a Entry> {
        let start = self.list.partition_point(|b| b.entry.offset <= offset);
        self.list
            .range(start..)
            .filter(move |b| !b.exclude.iter().any(|e| e == uid))
            .map(|b| &b.entry)
    }
}

impl Broadcast {
    /// Bytes counted for it.
    pub fn cost(&self) -> usize {
        self.entry.cost() + self.exclude.iter().map(String::len).sum::<usize>()
    }
}

/// `own` and `all`, both in offset order, as one list in offset order.
pub fn merge<'a>(
    own: impl Iterator<Item = &'a Entry>,
    all: impl Iterator<Item = &'a Entry>,
) -> Vec<&'a Entry> {
    let mut out: Vec<&Entry> = own.collect();
    let before = out.len();
    out.extend(all);
    if out.len() > before && before > 0 {
        // Two sorted runs: a stable sort on the offset merges them in linear time.
        out.sort_by_key(|e| e.offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(offset: u64) -> Entry {
        Entry {
            offset,
            at: 0,
            payload: Bytes::from(offset.to_string()),
            binary: false,
            delivered: true,
        }
    }

    #[test]
    fn after_skips_the_excluded_and_merge_keeps_the_order() {
        let mut b = Broadcasts::default();
        for (o, ex) in [(2, vec![]), (5, vec!["u".to_string()]), (7, vec![])] {
            b.list.push_back(Broadcast {
                entry: e(o),
                exclude: ex,
            });
        }
        let offs: Vec<u64> = b.after(1, "u").map(|e| e.offset).collect();
        assert_eq!(offs, [2, 7]);
        let offs: Vec<u64> = b.after(2, "v").map(|e| e.offset).collect();
        assert_eq!(offs, [5, 7]);
        let own = [e(3), e(6), e(9)];
        let m: Vec<u64> = merge(own.iter(), b.after(0, "v"))
            .iter()
            .map(|e| e.offset)
            .collect();
        assert_eq!(m, [2, 3, 5, 6, 7, 9]);
        assert_eq!(b.drop_front(3), None);
        assert!(b.drop_front(2).is_some());
        assert_eq!(b.floor, 2);
        assert!(b.holds(5) && !b.holds(4));
    }
}
