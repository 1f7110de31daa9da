//! Starting one worker process: a socket pair for the control channel, then fork and exec of
//! the herald binary as `herald worker --id N --instance MASTER --control-fd FD`, with only
//! the child's end of the pair left open across the exec, and the configuration sent as the
//! first control frame.

use herald_ipc::{Channel, ChannelError, Control};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use thiserror::Error;

/// Bound on control bytes queued for one worker (a stuck worker cannot grow the master).
const CONTROL_MAX_PENDING: usize = 16 * 1024 * 1024;

/// The master's end of a worker's control channel.
pub type ControlChannel = Channel<Control, Control>;

/// A worker could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The control socket pair could not be made.
    #[error("cannot create a control socket for worker {id}: {source}")]
    SocketPair {
        /// Worker id.
        id: u32,
        /// The OS error.
        source: io::Error,
    },
    /// Fork or exec failed.
    #[error("cannot start worker {id} ({exe}): {source}")]
    Exec {
        /// Worker id.
        id: u32,
        /// The program.
        exe: String,
        /// The OS error.
        source: io::Error,
    },
    /// The configuration could not be queued.
    #[error("cannot send the configuration to worker {id}: {source}")]
    Send {
        /// Worker id.
        id: u32,
        /// The channel error.
        source: ChannelError,
    },
}

/// How to start workers: the same for every one of them.
pub struct Launcher {
    /// The program to exec: the herald binary's path as it was at start, so a binary replaced
    /// on disk (a new inode) is what the next worker runs; `/proc/self/exe` if that is gone.
    exe: PathBuf,
    /// `argv[0]` shown by `ps` for workers.
    arg0: OsString,
    /// The master's pid: the workers' instance name and their expected parent.
    master: u32,
}

/// A started worker: its pid, and the channel with `Start` queued.
pub struct Spawned {
    /// Worker pid.
    pub pid: u32,
    /// Control channel (non-blocking); `Start` is queued and an attempt to write it made.
    pub channel: ControlChannel,
}

impl Launcher {
    /// Remembers the current executable and `argv[0]`.
    pub fn new() -> Launcher {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let arg0 = std::env::args_os()
            .next()
            .unwrap_or_else(|| OsString::from("herald"));
        Launcher {
            exe,
            arg0,
            master: std::process::id(),
        }
    }

    /// The program the next worker runs.
    fn program(&self) -> PathBuf {
        if self.exe.exists() {
            self.exe.clone()
        } else {
            PathBuf::from("/proc/self/exe")
        }
    }

    /// Forks and execs worker `id`, then queues `Start { config }` on its channel.
    pub fn spawn(
        &self,
        id: u32,
        log: (&str, &str),
        config: &serde_json::Value,
    ) -> Result<Spawned, SpawnError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|source| SpawnError::SocketPair { id, source })?;
        let fd = theirs.as_raw_fd();
        let master = self.master as libc::pid_t;
        let program = self.program();
        let mut cmd = Command::new(&program);
        cmd.arg0(&self.arg0)
            .arg("worker")
            .arg("--id")
            .arg(id.to_string())
            .arg("--instance")
            .arg(self.master.to_string())
            .arg("--control-fd")
            .arg(fd.to_string())
            .arg("--log-level")
            .arg(log.0)
            .arg("--log-format")
            .arg(log.1)
            .env(
                "GLIBC_TUNABLES",
                worker_tunables(std::env::var("GLIBC_TUNABLES").ok()),
            )
            .stdin(Stdio::null());
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe system calls (fcntl, prctl, getppid, setpgid) on plain integers;
        // it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                // Keep only the child's end of the control pair open across exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // Die with the master: an orphan worker would hold the ports forever.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The master may have died before the prctl: then no signal will come.
                if libc::getppid() != master {
                    return Err(io::Error::other("master exited"));
                }
                // Its own process group: a terminal's Ctrl-C reaches the master only, which
                // then stops the workers in order.
                if libc::setpgid(0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Exec {
            id,
            exe: program.display().to_string(),
            source,
        })?;
        drop(theirs);
        let pid = child.id();
        // The Child handle is dropped without waiting: the supervisor reaps with waitpid.
        drop(child);
        let start = Channel::from_std(ours, CONTROL_MAX_PENDING)
            .map_err(ChannelError::from)
            .and_then(|mut channel| {
                channel.send(&Control::Start {
                    config: config.clone(),
                })?;
                Ok(channel)
            });
        let mut channel = match start {
            Ok(c) => c,
            Err(source) => {
                // Without its configuration the worker is useless: end it (it is reaped as an
                // unknown pid).
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(SpawnError::Send { id, source });
            }
        };
        // A failure here shows again on the first event; the process is reaped either way.
        let _ = channel.flush();
        Ok(Spawned { pid, channel })
    }
}

/// The worker's `GLIBC_TUNABLES`: the operator's, plus glibc's per-thread cache of freed chunks
/// turned off unless the operator set its size. After a peak of connections the chunks that
/// cache keeps are scattered over the heap, and `malloc_trim` cannot give their pages back
/// (measured: 10,000 clients churned, the worker's anonymous memory stayed ~120 KiB above its
/// baseline with the cache, returned to it without). The worker allocates little per push, so
/// the cache buys nothing measurable on the hot path.
fn worker_tunables(inherited: Option<String>) -> String {
    const NO_TCACHE: &str = "glibc.malloc.tcache_count=0";
    match inherited {
        Some(t) if t.contains("glibc.malloc.tcache_count=") => t,
        Some(t) if !t.is_empty() => format!("{t}:{NO_TCACHE}"),
        _ => NO_TCACHE.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_tunables_keep_the_operators() {
        assert_eq!(worker_tunables(None), "glibc.malloc.tcache_count=0");
        assert_eq!(
            worker_tunables(Some(String::new())),
            "glibc.malloc.tcache_count=0"
        );
        assert_eq!(
            worker_tunables(Some("glibc.malloc.arena_max=2".into())),
            "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
        );
        assert_eq!(
            worker_tunables(Some("glibc.malloc.tcache_count=7".into())),
            "glibc.malloc.tcache_count=7"
        );
    }
}
