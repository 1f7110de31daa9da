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

pub mod auth;
pub mod cluster;
pub mod cluster_history;
pub mod cluster_presence;
pub mod conn;
pub mod delivery;
pub mod dropped;
pub mod event_loop;
pub mod events;
pub mod gather;
pub mod groups;
pub mod histogram;
pub mod history;
pub mod history_all;
pub mod mesh;
pub mod presence;
pub mod proto;
pub mod query;
pub mod redis_link;
pub mod registry;
pub mod render;
pub mod resp;
pub mod stream;
pub mod tls;
pub mod webhook;

pub use config::{Config, ConfigError, Listeners};
/// The configuration lives in `herald-ipc` (the master needs it without this crate); it is
/// re-exported here so `crate::config::…` and `herald_worker::Config` keep their paths.
pub use herald_ipc::config;

use thiserror::Error;

/// The exit statuses the master reads, defined beside the control messages in `herald-ipc`.
pub use herald_ipc::{EXIT_BAD_START, EXIT_BIND_FAILED};

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
    /// Switching user or group failed.
    #[error("dropping privileges: {0}")]
    Privileges(String),
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs worker `id` of the master whose pid is `instance`, until told to stop or until the
/// master's `control` channel closes. The first frame on `control` must be `Control::Start`.
pub fn run(
    id: u32,
    instance: u32,
    mut control: std::os::unix::net::UnixStream,
) -> Result<(), WorkerError> {
    use herald_ipc::{Channel, Control};
    let start = read_start(&mut control)?;
    let Control::Start { config } = start else {
        return Err(WorkerError::Control(format!(
            "expected Start, got {start:?}"
        )));
    };
    let cfg: Config = serde_json::from_value(config)
        .map_err(|e| WorkerError::Control(format!("bad configuration: {e}")))?;
    let addrs = cfg.validate()?;
    let mut listeners = conn::PortMap::default();
    for port in conn::Port::ALL {
        let Some(addr) = port.addr(&addrs) else {
            continue;
        };
        match event_loop::bind(addr) {
            Ok(l) => listeners[port] = Some(l),
            Err(source) => {
                let what = port.name();
                let err = WorkerError::Bind { what, addr, source };
                let _ = send_blocking(
                    &mut control,
                    &Control::BindFailed {
                        worker: id,
                        error: err.to_string(),
                    },
                );
                return Err(err);
            }
        }
    }
    let chan = Channel::from_std(control, 1 << 20)?;
    let mut worker = event_loop::Worker::new(id, instance, cfg.clone(), addrs, listeners, chan)?;
    drop_privileges(&cfg.user, &cfg.group)?;
    worker.tell_master(Control::Ready {
        worker: id,
        pid: std::process::id(),
    });
    log::info!("worker {id} listening (pid {})", std::process::id());
    worker.run()?;
    log::info!("worker {id} exiting");
    Ok(())
}

/// Switches to `user` (and `group`, else the user's primary group) once every socket is bound,
/// so privileged ports can be used without running the event loop as root.
fn drop_privileges(user: &str, group: &str) -> Result<(), WorkerError> {
    use nix::unistd::{setgid, setgroups, setuid, Group, User};
    if user.is_empty() && group.is_empty() {
        return Ok(());
    }
    let fail = |what: String| WorkerError::Privileges(what);
    let u = if user.is_empty() {
        None
    } else {
        Some(
            User::from_name(user)
                .map_err(|e| fail(format!("looking up user {user}: {e}")))?
                .ok_or_else(|| fail(format!("no user named {user}")))?,
        )
    };
    let gid = if group.is_empty() {
        u.as_ref().map(|u| u.gid)
    } else {
        Some(
            Group::from_name(group)
                .map_err(|e| fail(format!("looking up group {group}: {e}")))?
                .ok_or_else(|| fail(format!("no group named {group}")))?
                .gid,
        )
    };
    if let Some(gid) = gid {
        setgroups(&[gid]).map_err(|e| fail(format!("setgroups: {e}")))?;
        setgid(gid).map_err(|e| fail(format!("setgid: {e}")))?;
    }
    if let Some(u) = u {
        setuid(u.uid).map_err(|e| fail(format!("setuid to {}: {e}", u.name)))?;
        log::info!("running as user {} (uid {})", u.name, u.uid);
    }
    Ok(())
}

/// Reads exactly one frame (the `Start` message) from the still-blocking control socket, so no
/// byte of the frames after it is consumed before the channel takes over.
fn read_start(s: &mut std::os::unix::net::UnixStream) -> Result<herald_ipc::Control, WorkerError> {
    use herald_ipc::{codec, Wire};
    use std::io::Read;
    let bad = |e: String| WorkerError::Control(e);
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| bad(e.to_string()))?;
    let mut head = [0u8; codec::FRAME_HEADER];
    s.read_exact(&mut head)
        .map_err(|e| bad(format!("reading Start: {e}")))?;
    let len = u32::from_be_bytes(head) as usize;
    if len == 0 || len > codec::MAX_FRAME {
        return Err(bad(format!("Start frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .map_err(|e| bad(format!("reading Start: {e}")))?;
    herald_ipc::Control::decode(body[0], &body[1..]).map_err(|e| bad(e.to_string()))
}

fn send_blocking(
    s: &mut std::os::unix::net::UnixStream,
    msg: &herald_ipc::Control,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = Vec::new();
    herald_ipc::codec::write_frame(msg, &mut out).map_err(std::io::Error::other)?;
    s.write_all(&out)
}
