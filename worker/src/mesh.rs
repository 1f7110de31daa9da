//! The sibling mesh: one Unix-socket link to each other live worker, and the pushes in flight.
//!
//! Every worker listens on an abstract Unix socket named by its master and its own pid, and
//! connects to each sibling the master announces. A push entering this worker goes once to each
//! outbound link; each sibling answers `Delivered` on the same link, in order. A push waits
//! here until every link it went to has answered, the link breaks, or `ipc_timeout` passes;
//! what did not answer counts as undelivered there. Because ids grow by one and every push has
//! the same timeout, the in-flight set is a queue: its front is always the oldest deadline.

use herald_ipc::{Channel, PeerMsg};
use std::collections::VecDeque;
use std::time::Instant;

/// Where the outcome of a push goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// Nobody waits (a client relay, a sibling's push).
    Nobody,
    /// Reply slot `seq` of text connection `slot`, if it is still connection `id`.
    Text {
        /// Connection table slot.
        slot: usize,
        /// Connection id.
        id: u64,
        /// Reply slot.
        seq: u64,
        /// How to word the reply.
        kind: ReplyKind,
    },
    /// The pending request of HTTP connection `slot`, if it is still connection `id`.
    Http {
        /// Connection table slot.
        slot: usize,
        /// Connection id.
        id: u64,
        /// How to word the reply.
        kind: ReplyKind,
    },
}

/// How a push's total becomes a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// `ok` when at least one connection got it, else `fail`.
    OkFail,
    /// Always `ok` (broadcast).
    AlwaysOk,
    /// `ok` or `offline` (the seed's HTTP publish to a uid).
    Publish,
    /// `{"delivered":N}` once every worker answered (the JSON API).
    Count,
}

impl ReplyTo {
    /// Whether the reply is already decided by `total` (so it can go before the siblings
    /// answer: they still deliver, only the backend hears sooner).
    pub fn decided(&self, total: u32) -> bool {
        let kind = match self {
            ReplyTo::Nobody => return false,
            ReplyTo::Text { kind, .. } | ReplyTo::Http { kind, .. } => kind,
        };
        match kind {
            ReplyKind::AlwaysOk => true,
            ReplyKind::OkFail | ReplyKind::Publish => total > 0,
            ReplyKind::Count => false,
        }
    }
}

/// A push waiting for its siblings.
pub struct Pending {
    /// Connections reached so far (here and in siblings that answered).
    pub total: u32,
    /// Links that have not answered.
    pub waiting: u32,
    /// Where the outcome goes; `Nobody` once replied.
    pub reply: ReplyTo,
    /// When to stop waiting.
    pub deadline: Instant,
    /// A sibling's share is missing (link full or broken).
    pub partial: bool,
}

/// Pushes in flight, by id.
#[derive(Default)]
pub struct InFlight {
    /// Id of `queue.front()`.
    first: u64,
    /// `None` once settled (removed from the front lazily).
    queue: VecDeque<Option<Pending>>,
}

impl InFlight {
    /// Adds a push; returns its id.
    pub fn add(&mut self, p: Pending) -> u64 {
        self.queue.push_back(Some(p));
        self.first + self.queue.len() as u64 - 1
    }

    /// The id the next [`add`](Self::add) will return.
    pub fn next_id(&self) -> u64 {
        self.first + self.queue.len() as u64
    }

    /// The push `id`, if still waiting.
    pub fn get(&mut self, id: u64) -> Option<&mut Pending> {
        let i = id.checked_sub(self.first)?;
        self.queue.get_mut(i as usize)?.as_mut()
    }

    /// Settles push `id`, returning it.
    pub fn take(&mut self, id: u64) -> Option<Pending> {
        let i = id.checked_sub(self.first)?;
        let p = self.queue.get_mut(i as usize)?.take();
        self.trim();
        p
    }

    fn trim(&mut self) {
        while let Some(None) = self.queue.front() {
            self.queue.pop_front();
            self.first += 1;
        }
    }

    /// Settles every push whose deadline has passed, oldest first.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Pending>) {
        self.trim();
        while let Some(Some(p)) = self.queue.front() {
            if p.deadline > now {
                break;
            }
            if let Some(Some(p)) = self.queue.pop_front() {
                out.push(p);
            }
            self.first += 1;
            self.trim();
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().flatten().map(|p| p.deadline).next()
    }

    /// No push in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pushes in flight.
    pub fn len(&self) -> usize {
        self.queue.iter().flatten().count()
    }
}

/// One Unix-socket link to a sibling.
pub struct Link {
    /// The framed channel.
    pub chan: Channel<PeerMsg, PeerMsg>,
    /// True when this worker connected (it carries our pushes); false when the sibling did
    /// (it carries theirs, and our answers).
    pub outbound: bool,
    /// The sibling's pid (outbound: known from the master; inbound: from its `Hello`).
    pub peer_pid: u32,
    /// The sibling's worker id.
    pub peer_worker: u32,
    /// Ids of our pushes sent on this link and not answered, in send order.
    pub inflight: VecDeque<u64>,
    /// Output queued since the last flush.
    pub dirty: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(deadline: Instant) -> Pending {
        Pending {
            total: 0,
            waiting: 1,
            reply: ReplyTo::Nobody,
            deadline,
            partial: false,
        }
    }

    #[test]
    fn ids_deadlines_and_settling() {
        let now = Instant::now();
        let mut f = InFlight::default();
        let a = f.add(p(now));
        let b = f.add(p(now + Duration::from_secs(5)));
        assert_eq!((a, b), (0, 1));
        assert!(f.get(b).is_some());
        let mut out = Vec::new();
        f.expire(now, &mut out);
        assert_eq!(out.len(), 1);
        assert!(f.get(a).is_none());
        assert!(f.take(b).is_some());
        assert_eq!(f.len(), 0);
        assert_eq!(f.next_id(), 2);
    }
}
