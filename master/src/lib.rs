//! `herald-master`: Herald's supervisor process, and the operator's side of talking to it.
//!
//! The master forks the workers (fork, then exec of the herald binary, so a replaced binary
//! is picked up by the next worker), restarts a worker that dies (throttled, so a crash loop
//! cannot spin), turns signals into actions (stop, drain, reload, status, connections), holds
//! the locked pid file, daemonizes on `start -d`, and tells systemd when it is ready. The
//! [`client`] module is the other end: what `herald stop|reload|status|connections` do to find
//! the master and wait for it.
//!
//! It must not touch client traffic: it never accepts, reads or writes a client connection,
//! and it knows a worker only as a process with a control channel ([`herald_ipc::Control`]).
#![deny(missing_docs, rust_2018_idioms, unused_imports)]

pub mod backoff;
pub mod client;
pub mod clock;
pub mod daemon;
pub mod notify;
pub mod pidfile;
pub mod preflight;
pub mod report;
mod spawn;
mod supervisor;

pub use daemon::{daemonize, Daemon, DaemonError, ReadyPipe};
pub use spawn::SpawnError;
pub use supervisor::{run, ConfigLoader, MasterError, Options};
