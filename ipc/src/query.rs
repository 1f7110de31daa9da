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
    /// How often each worker's uids and connections changed so far: a once-a-second count
    /// asks this first, and counts again only when a figure moved.
    Generation,
    /// What the history keeps for `uid` (text `history`, `GET /api/history/{uid}`).
    History {
        /// Whose history.
        uid: String,
    },
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
    /// The uids with a connection here, sorted and joined by `\n` (a uid has no control
    /// character): one string to encode and decode instead of one per uid, and lists that an
    /// answer merges in one pass.
    UidList {
        /// Connections here.
        connections: u64,
        /// The uids, ascending, each followed by `\n`.
        uids: String,
    },
    /// The uids with a connection here as [`uid_hash`]es, sorted and distinct, and those
    /// connections: what a count needs, at 8 bytes a uid and a merge of numbers.
    Hashes {
        /// Connections here.
        connections: u64,
        /// The uids' hashes, ascending.
        hashes: Vec<u64>,
    },
    /// Which worker answered, and how many times its logins and logouts changed.
    Generation {
        /// The worker's pid (a replaced worker starts counting again).
        pid: u32,
        /// Logins and logouts so far.
        generation: u64,
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
    /// What this worker keeps for a uid (only its owner keeps anything).
    History {
        /// The owner's epoch.
        epoch: u64,
        /// The uid's last offset (0: nothing kept).
        top: u64,
        /// The kept messages, oldest first.
        messages: Vec<crate::history::Kept>,
    },
}

/// A uid's 64-bit hash, the same in every worker and every build (FNV-1a, then a finalizer
/// that spreads the bits): counts compare hashes instead of strings. Two of 100,000 uids
/// share a hash with a probability near 3e-10, which would count them as one.
pub fn uid_hash(uid: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod hash_tests {
    use super::uid_hash;

    #[test]
    fn uid_hash_is_stable_and_spreads() {
        // Fixed values: workers of two builds (a reload) must agree.
        assert_eq!(uid_hash("u1"), 7_185_976_944_083_972_785);
        assert_ne!(uid_hash("u1"), uid_hash("u2"));
        let mut seen: Vec<u64> = (0..100_000).map(|i| uid_hash(&format!("u{i}"))).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 100_000);
    }
}
