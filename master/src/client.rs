//! The command-line side of operating a running master: find it through its pid file, send it
//! a signal, wait for it to go away, or wait for the report it writes.

use crate::pidfile::{self, Probe};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a command could not reach the master.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No pid file.
    #[error("not running (no pid file at {path})")]
    NotRunning {
        /// The pid file looked for.
        path: String,
    },
    /// A pid file nobody holds: the master it names is gone.
    #[error("not running (stale pid file {path}{})", pid.map(|p| format!(" of pid {p}")).unwrap_or_default())]
    Stale {
        /// The pid file.
        path: String,
        /// The pid it names, if readable.
        pid: Option<u32>,
    },
    /// The pid file could not be read.
    #[error("cannot read pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The signal could not be sent.
    #[error("cannot signal pid {pid}: {source}")]
    Signal {
        /// The master's pid.
        pid: u32,
        /// The error.
        source: nix::errno::Errno,
    },
    /// The master did not do what was asked in time.
    #[error("{what} (waited {} s)", waited.as_secs())]
    Timeout {
        /// What did not happen.
        what: String,
        /// How long it was waited for.
        waited: Duration,
    },
}

/// The pid of the master holding `pid_file`.
pub fn master_pid(pid_file: &Path) -> Result<u32, ClientError> {
    let path = pid_file.display().to_string();
    match pidfile::probe(pid_file) {
        Ok(Probe::Running(pid)) => Ok(pid),
        Ok(Probe::Missing) => Err(ClientError::NotRunning { path }),
        Ok(Probe::Stale(pid)) => Err(ClientError::Stale { path, pid }),
        Err(source) => Err(ClientError::PidFile { path, source }),
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: Signal) -> Result<(), ClientError> {
    kill(Pid::from_raw(pid as i32), sig).map_err(|source| ClientError::Signal { pid, source })
}

/// Waits until process `pid` is gone and `pid_file` removed, calling `progress` about once a
/// second with the time waited.
pub fn wait_stopped(
    pid: u32,
    pid_file: &Path,
    timeout: Duration,
    mut progress: impl FnMut(Duration),
) -> Result<(), ClientError> {
    let start = Instant::now();
    let mut last = Duration::ZERO;
    loop {
        let alive = pidfile::alive(pid);
        if !alive && !pid_file.exists() {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(ClientError::Timeout {
                what: if alive {
                    format!("master pid {pid} is still running")
                } else {
                    format!("pid file {} was not removed", pid_file.display())
                },
                waited,
            });
        }
        if waited >= last + Duration::from_secs(1) {
            last = waited;
            progress(waited);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks the master for a report: removes any old `report` file, sends `sig`, and waits (up to
/// `timeout`) for the master to write the file again; returns its text.
pub fn request_report(
    pid: u32,
    sig: Signal,
    report: &Path,
    timeout: Duration,
) -> Result<String, ClientError> {
    match std::fs::remove_file(report) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ClientError::PidFile {
                path: report.display().to_string(),
                source,
            })
        }
    }
    signal(pid, sig)?;
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(report) {
            Ok(text) => return Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ClientError::PidFile {
                    path: report.display().to_string(),
                    source,
                })
            }
        }
        if start.elapsed() >= timeout {
            return Err(ClientError::Timeout {
                what: format!("the master wrote no report to {}", report.display()),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `<pid_file><suffix>`: where reports are written beside the pid file.
pub fn beside(pid_file: &Path, suffix: &str) -> PathBuf {
    let mut p = pid_file.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}
