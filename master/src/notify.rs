//! The systemd notification protocol (`sd_notify`): one datagram to `$NOTIFY_SOCKET` per state
//! change. Without that variable (not under systemd, or `Type=simple`) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends state changes to systemd, if it asked for them.
pub struct Notifier {
    /// The unbound datagram socket and the manager's address; `None` when not under systemd.
    target: Option<(UnixDatagram, SocketAddr)>,
    /// `WatchdogSec=` of the unit (`WATCHDOG_USEC`), when systemd expects `WATCHDOG=1` pings.
    pub watchdog: Option<std::time::Duration>,
}

/// The watchdog interval systemd set for this process (`WATCHDOG_USEC`, for `WATCHDOG_PID` if
/// given), removed from the environment as `NOTIFY_SOCKET` is.
fn watchdog_from_env() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    (for_us && usec > 0).then(|| std::time::Duration::from_micros(usec))
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace) and removes it from
    /// the environment so that workers, which must not speak for the service, do not see it.
    pub fn from_env() -> Notifier {
        let watchdog = watchdog_from_env();
        let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier {
                target: None,
                watchdog: None,
            };
        };
        // The master has a single thread, so changing the environment races with nothing.
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(raw.as_os_str()).to_vec();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(_) => SocketAddr::from_pathname(std::path::Path::new(&raw)),
            None => {
                return Notifier {
                    target: None,
                    watchdog: None,
                }
            }
        };
        let target = match (addr, UnixDatagram::unbound()) {
            (Ok(addr), Ok(sock)) => Some((sock, addr)),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("NOTIFY_SOCKET {raw:?} unusable: {e}");
                None
            }
        };
        let watchdog = watchdog.filter(|_| target.is_some());
        Notifier { target, watchdog }
    }

    /// Whether systemd is listening.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one state message (`KEY=VALUE` lines).
    pub fn send(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::warn!("cannot notify systemd ({}): {e}", state.replace('\n', " "));
            }
        }
    }

    /// The service is alive (every worker's loop answered since the last ping).
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    /// Every worker is listening.
    pub fn ready(&self) {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    /// A reload begins (systemd wants the monotonic clock with it).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The service is stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Free-form status shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={text}"));
    }
}

/// `CLOCK_MONOTONIC` in microseconds.
fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64) * 1_000_000 + (ts.tv_nsec() as u64) / 1000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("herald-notify-test-{}", std::process::id());
        let Ok(addr) = SocketAddr::from_abstract_name(name.as_bytes()) else {
            return;
        };
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
            watchdog: None,
        };
        n.ready();
        let mut buf = [0u8; 128];
        let len = server.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(got.starts_with("READY=1\nMAINPID="), "{got}");
        n.reloading();
        let len = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }
}
