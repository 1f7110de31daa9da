//! `herald-ipc`: what Herald's processes say to each other, the channel that carries it, and
//! the configuration they share.
//!
//! This crate owns the wire between processes: the message types a worker sends its siblings
//! (`Push`, `Delivered`, queries), the control messages between the master and a worker, the
//! length-prefixed frame format with its hard maximum, and [`Channel`], a non-blocking
//! Unix-socket endpoint that registers on a mio `Poll` like any socket and bounds what it
//! buffers for a slow peer.
//!
//! It names a worker's figures once ([`stats::TABLE`]: every output of them is produced from
//! it) and the whole-server questions workers ask each other ([`Query`], [`Share`]).
//!
//! It also holds [`Config`], the configuration `Control::Start` carries, with its checks, and
//! the exit statuses a worker reports to the master: everything the master needs to know of a
//! worker, so the master depends on this crate and not on the worker's.
//!
//! It must not know about connections, protocols or the master's supervision logic: it is the
//! seam where a cross-host bus (Redis, NATS) could later stand in for the sibling mesh.
#![deny(missing_docs, rust_2018_idioms, unused_imports)]

pub mod channel;
pub mod codec;
pub mod config;
pub mod control;
pub mod history;
pub mod msg;
pub mod query;
pub mod stats;

pub use channel::{Channel, ChannelError};
pub use codec::{CodecError, Wire, FRAME_HEADER, MAX_FRAME};
pub use config::{AuthMode, Config, ConfigError, Listeners};
pub use history::{history_owner, HistoryMsg, Kept, MovedBinding, MovedEntry, MovedStream, Whose};
pub use msg::{
    mesh_name, Control, Peer, PeerMsg, Presence, Push, Target, EXIT_BAD_START, EXIT_BIND_FAILED,
};
pub use query::{uid_hash, Query, Share};
pub use stats::Stats;
