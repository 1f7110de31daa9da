//! Whole-server questions and group changes, as they cross between workers: a [`Query`] asked
//! of every worker, and each worker's [`Share`] of the answer.
//!
//! The entry worker answers its own share, sends the query to every sibling, and merges the
//! shares once all have answered or the deadline passed (the worker's `query` module merges and
//! renders; this module only names what travels).

use serde::{Deserialize, Serialize};

/// A question for every worker (or a change every worker applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum Query {
    /// How many connections `uid` has (text `online`, `GET /api/online/{uid}`).
    Online {
        /// The uid asked about.
        uid: String,
    },
    /// The uids with a connection, and their connections (in `group` when given).
    Uids {
        /// Only members of this group.
        group: Option<String>,
    },
    /// As [`Query::Uids`], answered as two numbers (text `count`).
    Count {
        /// Only members of this group.
        group: Option<String>,
    },
    /// Every group and its members.
    Groups,
    /// The groups `uid` belongs to: a login adopts what its siblings know.
    GroupsOf {
        /// The uid that logged in.
        uid: String,
    },
    /// `uid` joins `group` (in every worker: membership belongs to the uid).
    Join {
        /// Who joins.
        uid: String,
        /// Which group.
        group: String,
    },
    /// `uid` leaves `group`.
    Leave {
        /// Who leaves.
        uid: String,
        /// Which group.
        group: String,
    },
    /// `group` is dissolved.
    Ungroup {
        /// Which group.
        group: String,
    },
    /// Close every connection of `uid`, after sending it `data` when given.
    Kick {
        /// Whose connections.
        uid: String,
        /// A last message for them.
        data: Option<String>,
    },
    /// Every worker's status row (`GET /api/stats`, `/metrics`).
    Stats,
}

/// One worker's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
pub enum Share {
    /// A number of connections (online, kick).
    Connections {
        /// Connections here.
        connections: u64,
    },
    /// The uids with a connection here, and those connections.
    Uids {
        /// Connections here.
        connections: u64,
        /// Their uids.
        uids: Vec<String>,
    },
    /// Groups and members as this worker knows them.
    Groups {
        /// (group, members) pairs.
        groups: Vec<(String, Vec<String>)>,
    },
    /// The groups of one uid.
    GroupsOf {
        /// Group names.
        groups: Vec<String>,
    },
    /// A change was applied; nothing to report.
    Done,
    /// This worker's status row.
    Stats {
        /// The row, as `status` shows it.
        row: serde_json::Value,
    },
}
