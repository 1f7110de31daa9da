//! Checks and settings done once before any worker is forked: the open-file limit, the
//! kernel's accept-queue migration for reloads, and whether every port is free (so that a
//! taken port fails `start` at once, before there is any process to clean up).

use herald_ipc::Listeners;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::SocketAddr;
use thiserror::Error;

/// A port that cannot be listened on.
#[derive(Debug, Error)]
pub enum PreflightError {
    /// Someone else listens there (or the address is not ours).
    #[error("cannot listen on {addr} ({what}): {source}")]
    PortTaken {
        /// Which port (`ws`, `text`, `http`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (workers inherit it). Returns the limit
/// now in force.
pub fn raise_nofile() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                log::info!("open-file limit raised from {soft} to {hard}");
                hard
            }
            Err(e) => {
                log::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            log::warn!("cannot read the open-file limit: {e}");
            0
        }
    }
}

/// The accept queue every listener asks for (the worker's `listen(4096)`).
const BACKLOG: u64 = 4096;

/// Descriptors a worker holds besides its connections (listeners, links, the epoll, files).
const OVERHEAD_FDS: u64 = 32;

/// Says at start what the machine's limits let this server hold, and warns about a limit that
/// caps it below what the configuration asks: the open-file limit per worker against
/// `max_connections`, and `net.core.somaxconn` against the listeners' accept queue (a login storm beyond them is dropped by the kernel and counted in
/// `ListenOverflows`).
pub fn capacity(nofile: u64, workers: usize, fd_reserve: usize, max_connections: usize) {
    let per_worker = nofile.saturating_sub(fd_reserve as u64 + OVERHEAD_FDS);
    log::info!(
        "capacity: {workers} workers x about {per_worker} connections each (open-file limit {nofile}, fd_reserve {fd_reserve}) = about {} connections",
        per_worker * workers as u64
    );
    if max_connections > 0 && (max_connections as u64) > per_worker {
        log::warn!(
            "max_connections = {max_connections} per worker, but the open-file limit ({nofile}) caps a worker at about {per_worker}: raise LimitNOFILE= in the unit (or ulimit -n), or add workers"
        );
    }
    for (path, what) in [("/proc/sys/net/core/somaxconn", "net.core.somaxconn")] {
        let Some(v) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            continue;
        };
        if v < BACKLOG {
            log::warn!(
                "{what} = {v} caps each listener's queue of connections not yet accepted below {BACKLOG}: in a reconnect storm the kernel drops the excess (ListenOverflows in /proc/net/netstat); `sysctl -w {what}={BACKLOG}` raises it"
            );
        }
    }
}

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Turns on `net.ipv4.tcp_migrate_req` if it is off: the kernel then moves connections queued
/// on a closing SO_REUSEPORT listener to a sibling listener instead of resetting them.
pub fn enable_migrate_req() {
    match std::fs::read_to_string(MIGRATE_REQ) {
        Ok(v) if v.trim() == "1" => log::debug!("{MIGRATE_REQ} is already 1"),
        Ok(_) => match std::fs::write(MIGRATE_REQ, "1\n") {
            Ok(()) => log::info!("set {MIGRATE_REQ} to 1 (queued connections survive reloads)"),
            Err(e) => log::warn!(
                "{MIGRATE_REQ} is 0 and cannot be set ({e}): a reload relies on workers draining \
                 their accept queues (run `sysctl -w net.ipv4.tcp_migrate_req=1` as root)"
            ),
        },
        Err(e) => log::warn!(
            "{MIGRATE_REQ} unavailable ({e}): this kernel cannot migrate queued connections on reload"
        ),
    }
}

/// The enabled ports, named.
pub fn ports(l: &Listeners) -> Vec<(&'static str, SocketAddr)> {
    [
        ("ws", l.ws),
        ("text", l.text),
        ("http", l.http),
        ("socketio", l.socketio),
    ]
    .into_iter()
    .filter_map(|(what, addr)| addr.map(|a| (what, a)))
    .collect()
}

/// Binds each enabled port once, without SO_REUSEPORT, and lets go: a port another process
/// listens on (even with SO_REUSEPORT) fails here.
pub fn check_ports(l: &Listeners) -> Result<(), PreflightError> {
    for (what, addr) in ports(l) {
        let taken = |source| PreflightError::PortTaken { what, addr, source };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(taken)?;
        sock.set_reuse_address(true).map_err(taken)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true).map_err(taken)?;
        }
        sock.bind(&addr.into()).map_err(taken)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_reported_taken() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap();
        let l = Listeners {
            ws: None,
            text: Some(addr),
            http: None,
            socketio: None,
        };
        let err = check_ports(&l).unwrap_err();
        assert!(err.to_string().contains("(text)"), "{err}");
        drop(busy);
        check_ports(&l).unwrap();
    }
}
