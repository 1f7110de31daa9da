//! `herald-worker`: one worker process of Herald.
//!
//! A worker binds every configured port itself (SO_REUSEPORT, so its siblings bind the same
//! ports and the kernel spreads connections), runs one mio `Poll` loop, and owns everything
//! about its connections: the WebSocket, text and HTTP protocols, the registry of uids and
//! groups, delivery with shared frame bytes, timers, and its links to sibling workers.
//!
//! It must not supervise anything: it knows the master only as the control channel it was
//! given (configuration in, readiness and status out, stop and drain orders in), and it exits
//! when that channel closes.
#![deny(missing_docs, rust_2018_idioms, unused_imports)]

pub mod config;

pub use config::{Config, ConfigError, Listeners};

use thiserror::Error;

/// Exit status of a worker that could not bind a port: the master aborts `start` on it.
pub const EXIT_BIND_FAILED: i32 = 3;
/// Exit status of a worker whose configuration or control channel was unusable.
pub const EXIT_BAD_START: i32 = 4;

/// Why a worker stopped abnormally.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The control channel failed before the configuration arrived.
    #[error("control channel: {0}")]
    Control(String),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs worker `id` of the master whose pid is `instance`, until told to stop or until the
/// master's `control` channel closes. The first frame on `control` must be `Control::Start`.
pub fn run(
    id: u32,
    instance: u32,
    control: std::os::unix::net::UnixStream,
) -> Result<(), WorkerError> {
    let _ = (id, instance, control);
    Err(WorkerError::Control("not yet built".into()))
}
