//! What workers say to each other about the history of uids (see the worker's `history` and
//! `event_loop::recovery`): each uid's history is kept by one worker, its owner
//! ([`history_owner`]); a push for a uid is recorded there, which gives it its position, and a
//! reconnecting client's worker asks the owner for what the client missed.
//!
//! These messages are rare next to pushes (a login, a reconnection), so they travel as JSON
//! inside one [`crate::PeerMsg::History`] frame; the pushes themselves, with their positions,
//! are binary ([`crate::PeerMsg::Positioned`]).

use crate::query::uid_hash;
use serde::{Deserialize, Serialize};

/// The worker id (0..`workers`) that keeps `uid`'s history.
pub fn history_owner(uid: &str, workers: usize) -> u32 {
    (uid_hash(uid) % workers.max(1) as u64) as u32
}

/// Whose history a recovery is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Whose {
    /// A Socket.IO session's private id: the owner that bound it knows the uid.
    Pid {
        /// The private session id the client presented.
        pid: String,
    },
    /// A logged-in uid (plain WebSocket `since`, offline delivery).
    Uid {
        /// The uid.
        uid: String,
    },
}

/// One kept message, as a recovery carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// Its position in the uid's history.
    pub offset: u64,
    /// The push's payload.
    pub payload: Vec<u8>,
    /// It was pushed as a binary frame.
    pub binary: bool,
}

/// One kept message as it moves to the worker replacing its owner (graceful reload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedEntry {
    /// Its position.
    pub offset: u64,
    /// How long ago it was kept, in milliseconds.
    pub age_ms: u64,
    /// The pushed bytes when they are UTF-8 (compact in JSON)…
    pub text: Option<String>,
    /// …else as they are.
    pub bytes: Option<Vec<u8>>,
    /// Pushed as a binary frame.
    pub binary: bool,
    /// Some connection had it.
    pub delivered: bool,
}

/// One uid's stream as it moves to the worker replacing its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedStream {
    /// The uid.
    pub uid: String,
    /// The epoch its positions belong to (kept by the new owner).
    pub epoch: u64,
    /// Its last offset.
    pub top: u64,
    /// The highest offset it lost.
    pub floor: u64,
    /// How long ago its last message was kept, in milliseconds.
    pub age_ms: u64,
    /// Its messages, oldest first.
    pub entries: Vec<MovedEntry>,
}

/// A Socket.IO binding as it moves to the worker replacing its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedBinding {
    /// The private session id.
    pub pid: String,
    /// Its uid.
    pub uid: String,
    /// Its socket id.
    pub sid: String,
    /// The Engine.IO id of the session that bound it.
    pub by: String,
    /// In how many milliseconds it expires (`None`: its session lives).
    pub expires_in_ms: Option<u64>,
}

/// A history message between siblings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "h", rename_all = "snake_case")]
pub enum HistoryMsg {
    /// To the owner of `uid`: a Socket.IO session with private id `pid` logged in as `uid`
    /// (`ended: false`), or ended (`ended: true`: it stays recoverable for `recovery_window`).
    Bind {
        /// The session's private id.
        pid: String,
        /// The uid it logged in as.
        uid: String,
        /// Its Socket.IO socket id, given again on a recovered connect.
        sid: String,
        /// The session is over: the recovery window starts.
        ended: bool,
        /// The Engine.IO id of the session binding it: after a recovery, the old session's
        /// end does not start the window of the new one.
        by: String,
    },
    /// To the owner (or to every sibling, for a pid): what came after `offset`?
    Recover {
        /// Echoed in the answer.
        id: u64,
        /// Whose history.
        whose: Whose,
        /// The epoch the client's position belongs to (`None`: no position).
        epoch: Option<u64>,
        /// The last offset the client got.
        offset: Option<u64>,
        /// Messages nobody received (offline delivery) instead of those after `offset`.
        offline: bool,
    },
    /// From a draining worker to the one replacing it (same worker id, graceful reload): part
    /// of its history, in pieces that each fit a frame.
    Handover {
        /// The old store's offset counter (the new one continues above it).
        counter: u64,
        /// Streams moving.
        streams: Vec<MovedStream>,
        /// Socket.IO bindings moving.
        bindings: Vec<MovedBinding>,
    },
    /// The answer to `Recover { id }`, on the owner's own link to the asker, so every push
    /// the owner records after it follows it on the same link.
    Recovered {
        /// The question's id.
        id: u64,
        /// This worker knows the pid (or owns the uid); false: ask no further here.
        found: bool,
        /// The uid (for a pid).
        uid: String,
        /// The session's socket id (for a pid).
        sid: String,
        /// Every missed message is in `messages`.
        recovered: bool,
        /// The uid's current epoch.
        epoch: u64,
        /// The uid's last offset (the client's new position).
        top: u64,
        /// The missed messages, oldest first.
        messages: Vec<Kept>,
    },
}

impl HistoryMsg {
    /// The answer to recovery `id` that found nothing (an unknown session, no history).
    pub fn not_found(id: u64) -> HistoryMsg {
        HistoryMsg::Recovered {
            id,
            found: false,
            uid: String::new(),
            sid: String::new(),
            recovered: false,
            epoch: 0,
            top: 0,
            messages: Vec::new(),
        }
    }
}
