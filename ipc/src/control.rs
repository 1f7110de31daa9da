//! Master ↔ worker control messages ([`Control`]): JSON in a frame, rare, and readable in a
//! packet capture; with the worker list the master announces ([`Peer`]) and the exit statuses
//! it reads. Re-exported by `msg`, beside the workers' own messages.

use crate::codec::{put, CodecError, Wire};
use serde::{Deserialize, Serialize};

/// Master ↔ worker control messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Control {
    /// Master → worker, first frame on the control channel: the whole configuration (kept off
    /// the command line, where `ps` would show its secrets).
    Start {
        /// The configuration as JSON (a [`crate::config::Config`]).
        config: serde_json::Value,
    },
    /// Master → worker: the live workers, sent at start and whenever the set changes. A worker
    /// connects to each sibling's mesh socket it is not yet connected to.
    Peers {
        /// Every live worker, this one included.
        peers: Vec<Peer>,
    },
    /// Worker → master: every listener is bound and the loop is running.
    Ready {
        /// Worker id.
        worker: u32,
        /// Worker pid.
        pid: u32,
    },
    /// Worker → master: a listener could not be bound; the worker exits after this.
    BindFailed {
        /// Worker id.
        worker: u32,
        /// What failed, for the operator.
        error: String,
    },
    /// Master → worker: send your status row.
    StatusRequest {
        /// Echoed in the reply.
        seq: u64,
    },
    /// Worker → master: status row (a JSON object).
    Status {
        /// The request's seq.
        seq: u64,
        /// The row.
        row: serde_json::Value,
    },
    /// Master → worker: list your connections.
    ConnectionsRequest {
        /// Echoed in the reply.
        seq: u64,
    },
    /// Worker → master: one JSON object per connection.
    Connections {
        /// The request's seq.
        seq: u64,
        /// The rows.
        rows: Vec<serde_json::Value>,
    },
    /// Master → worker: close listeners and connections now, then exit.
    Stop,
    /// Master → worker: close listeners, keep serving connections until they end or the
    /// drain timeout passes (then close WebSockets with 1001), then exit.
    Drain,
    /// Worker → master: listeners are closed (the accept queue was drained first).
    ListenersClosed {
        /// Worker id.
        worker: u32,
    },
    /// Master → worker: answer `Pong` (the systemd watchdog asks whether every worker's loop
    /// turns).
    Ping {
        /// Echoed in the `Pong`.
        seq: u64,
    },
    /// Worker → master: the loop turned since `Ping { seq }`.
    Pong {
        /// The ping's seq.
        seq: u64,
    },
}

/// Exit status of a worker that could not bind a port (after `Control::BindFailed`): the master
/// aborts `start` on it instead of restarting the worker.
pub const EXIT_BIND_FAILED: i32 = 3;
/// Exit status of a worker whose configuration or control channel was unusable.
pub const EXIT_BAD_START: i32 = 4;

/// One live worker process, as the master announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Stable worker id (0..count).
    pub worker: u32,
    /// Its pid: two processes share an id during a graceful reload, never a pid.
    pub pid: u32,
}

/// Name of the abstract Unix socket on which worker `pid` of master `instance` accepts its
/// siblings. Abstract names need no directory and vanish with the process.
pub fn mesh_name(instance: u32, pid: u32) -> String {
    format!("herald-{instance}-{pid}")
}

const CONTROL: u8 = 100;

impl Wire for Control {
    fn encode(&self, out: &mut Vec<u8>) {
        put::u8(out, CONTROL);
        // Serialising this plain enum to a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }

    fn decode(kind: u8, body: &[u8]) -> Result<Self, CodecError> {
        if kind != CONTROL {
            return Err(CodecError::UnknownKind(kind));
        }
        serde_json::from_slice(body).map_err(|e| CodecError::Json(e.to_string()))
    }
}
