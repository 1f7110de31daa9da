//! `start -d`: detach from the terminal (fork, `setsid`, fork), with stdin on `/dev/null` and
//! stdout/stderr appended to the log file. The process that ran `herald start -d` waits on a
//! pipe until the daemon says whether start-up worked, so its exit status means something.

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid, ForkResult};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use thiserror::Error;

/// Why the daemon could not be set up (reported before anything detached).
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The log file could not be opened for appending.
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        /// The log file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("cannot daemonize ({what}): {source}")]
    Sys {
        /// Which step.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// Which side of the detachment this process is.
pub enum Daemon {
    /// The original process: the daemon reported its pid (`Ok`) or why it failed (`Err`).
    /// The caller prints and exits.
    Parent(Result<u32, String>),
    /// The detached process: run the master and report through the pipe.
    Child(ReadyPipe),
}

/// The daemon's end of the pipe to the waiting `herald start -d`.
pub struct ReadyPipe {
    /// Write end; closing it without a word means the daemon died during start-up.
    fd: File,
}

impl ReadyPipe {
    /// Start-up succeeded: the parent exits 0.
    pub fn ready(mut self) {
        let _ = writeln!(self.fd, "ok {}", std::process::id());
    }

    /// Start-up failed: the parent prints `msg` and exits 1.
    pub fn fail(mut self, msg: &str) {
        let _ = writeln!(self.fd, "err {}", msg.replace('\n', " "));
    }
}

/// Parses the daemon's one-line report.
fn parse_report(text: &str, log_file: &Path) -> Result<u32, String> {
    let line = text.lines().next().unwrap_or("");
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| format!("bad report {line:?}"));
    }
    if let Some(msg) = line.strip_prefix("err ") {
        return Err(msg.to_string());
    }
    Err(format!(
        "the daemon exited during start-up; see {}",
        log_file.display()
    ))
}

/// Detaches. The original process gets [`Daemon::Parent`] once the daemon has reported; the
/// daemon (a grandchild, session leader's child, so it can never reacquire a terminal) gets
/// [`Daemon::Child`] with stdin on `/dev/null` and stdout/stderr on `log_file`. The working
/// directory is kept, so relative paths in the configuration mean the same in the daemon.
///
/// # Safety
/// Must be called while the process has a single thread: the forked children continue with
/// arbitrary Rust code, which is only sound when no other thread held a lock at the fork.
pub unsafe fn daemonize(log_file: &Path) -> Result<Daemon, DaemonError> {
    let sys = |what| {
        move |e: nix::errno::Errno| DaemonError::Sys {
            what,
            source: e.into(),
        }
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(|source| DaemonError::LogFile {
            path: log_file.display().to_string(),
            source,
        })?;
    let null = File::open("/dev/null").map_err(|source| DaemonError::Sys {
        what: "open /dev/null",
        source,
    })?;
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: the caller guarantees a single thread, so the child's copy of memory holds no
    // lock owned by a thread that does not exist there.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut text = String::new();
            let _ = File::from(read_end).read_to_string(&mut text);
            // The intermediate child exits at once; reap it.
            let _ = waitpid(child, None);
            Ok(Daemon::Parent(parse_report(&text, log_file)))
        }
        ForkResult::Child => {
            drop(read_end);
            let mut pipe = File::from(write_end);
            if let Err(e) = setsid() {
                let _ = writeln!(pipe, "err setsid: {e}");
                // SAFETY: _exit ends this forked child without running the parent's exit
                // handlers or destructors, which belong to the original process.
                unsafe { libc::_exit(1) };
            }
            // SAFETY: still single-threaded (this child has only the forking thread).
            match unsafe { fork() } {
                Ok(ForkResult::Parent { .. }) => {
                    // SAFETY: as above, the intermediate child leaves without cleanup.
                    unsafe { libc::_exit(0) }
                }
                Ok(ForkResult::Child) => {}
                Err(e) => {
                    let _ = writeln!(pipe, "err fork: {e}");
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) };
                }
            }
            let redirect = dup2_stdin(&null)
                .and_then(|_| dup2_stdout(&log))
                .and_then(|_| dup2_stderr(&log));
            if let Err(e) = redirect {
                let _ = writeln!(pipe, "err redirecting output: {e}");
                // SAFETY: as above.
                unsafe { libc::_exit(1) };
            }
            Ok(Daemon::Child(ReadyPipe { fd: pipe }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse() {
        let log = Path::new("x.log");
        assert_eq!(parse_report("ok 42\n", log), Ok(42));
        assert_eq!(
            parse_report("err already running\n", log),
            Err("already running".into())
        );
        assert_eq!(
            parse_report("", log),
            Err("the daemon exited during start-up; see x.log".into())
        );
    }
}
