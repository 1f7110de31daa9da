//! The sibling mesh: one Unix-socket link to each other live worker, and where the outcome of
//! a push goes.
//!
//! Every worker listens on an abstract Unix socket named by its master and its own pid, and
//! connects to each sibling the master announces. A push entering this worker goes once to each
//! outbound link; each sibling answers `Delivered` on the same link. The waiting itself is the
//! one scatter-gather of `gather`, shared with queries.

use herald_ipc::{Channel, PeerMsg};

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
    /// With a history: the owner of a push's uids answers the entry worker on link `key`
    /// (`Delivered { id }`) with the whole count; `key` is `SELF_LINK` for the entry
    /// worker's own part.
    Sibling {
        /// The link the push came on.
        key: usize,
        /// The entry worker's id for it.
        id: u64,
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
    /// `{"cmd":"push"}` with `offline_delivery`: `ok` when at least one connection got it,
    /// `stored` when none did but the history kept it for the next login, else `fail`.
    Pushed,
}

impl ReplyTo {
    /// Whether the reply is already decided by `total` (so it can go before the siblings
    /// answer: they still deliver, only the backend hears sooner).
    pub fn decided(&self, total: u32) -> bool {
        let kind = match self {
            ReplyTo::Nobody | ReplyTo::Sibling { .. } => return false,
            ReplyTo::Text { kind, .. } | ReplyTo::Http { kind, .. } => kind,
        };
        match kind {
            ReplyKind::AlwaysOk => true,
            ReplyKind::OkFail | ReplyKind::Publish | ReplyKind::Pushed => total > 0,
            ReplyKind::Count => false,
        }
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
    /// Output queued since the last flush.
    pub dirty: bool,
}
