//! The master's pid file: created and locked (`flock`, exclusive) for the master's whole life,
//! so a second master fails at once with the first one's pid, and a pid file left by a crash
//! (unlocked) is never mistaken for a running master. Removed when the master exits.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the pid file could not be taken.
#[derive(Debug, Error)]
pub enum PidFileError {
    /// Another master holds the lock.
    #[error("already running (pid {pid}, pid file {path})")]
    Locked {
        /// The running master's pid, as its pid file says (`?` if unreadable).
        pid: String,
        /// The pid file.
        path: String,
    },
    /// The file could not be opened, locked or written.
    #[error("pid file {path}: {source}")]
    Io {
        /// The pid file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

/// A locked pid file holding this process's pid; removed on drop.
pub struct PidFile {
    /// Where it is, to remove it at exit.
    path: PathBuf,
    /// The open, locked file: the lock lives as long as this value.
    _lock: Flock<File>,
}

impl PidFile {
    /// Creates (or takes over an unlocked, stale) pid file at `path`, locks it and writes the
    /// current pid.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        let io_err = |source| PidFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = match text.trim() {
                    "" => "?".to_string(),
                    t => t.to_string(),
                };
                return Err(PidFileError::Locked {
                    pid,
                    path: path.display().to_string(),
                });
            }
            Err((_, errno)) => return Err(io_err(errno.into())),
        };
        lock.set_len(0).map_err(io_err)?;
        lock.rewind().map_err(io_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
        lock.flush().map_err(io_err)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The pid file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Removed while still locked, so no other master can have taken it over meanwhile.
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove pid file {}: {e}", self.path.display());
        }
    }
}

/// What a pid file says about a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No pid file.
    Missing,
    /// A pid file nobody holds locked (left by a crash), or whose process is gone.
    Stale(Option<u32>),
    /// A locked pid file of a live process.
    Running(u32),
}

/// Looks at the pid file at `path` without disturbing the master holding it.
pub fn probe(path: &Path) -> io::Result<Probe> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => return Err(e),
    };
    let locked = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_shared) => false, // dropped at once: unlocked again
        Err((_, Errno::EWOULDBLOCK)) => true,
        Err((_, errno)) => return Err(errno.into()),
    };
    // A master writes its pid just after taking the lock: give it a moment.
    let mut pid = None;
    for _ in 0..20 {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
            Err(e) => return Err(e),
        };
        pid = text.trim().parse::<u32>().ok();
        if pid.is_some() || !locked {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(match pid {
        Some(p) if locked && alive(p) => Probe::Running(p),
        other => Probe::Stale(other),
    })
}

/// Whether a process with this pid exists (ours to signal or not) and has not exited: a
/// zombie, which a parent such as a test harness has not reaped yet, counts as gone.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let exists = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == Errno::EPERM,
    };
    exists && !zombie(pid)
}

/// Whether `/proc/PID/stat` says the process is a zombie (state `Z`) or dead (`X`).
fn zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "Z" || state == "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_with_the_pid_and_drop_removes() {
        let dir = std::env::temp_dir().join(format!("herald-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.pid");
        assert_eq!(probe(&path).unwrap(), Probe::Missing);
        let first = PidFile::create(&path).unwrap();
        assert_eq!(probe(&path).unwrap(), Probe::Running(std::process::id()));
        match PidFile::create(&path) {
            Err(PidFileError::Locked { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(first);
        assert!(!path.exists());
        std::fs::write(&path, "999999999\n").unwrap();
        assert_eq!(probe(&path).unwrap(), Probe::Stale(Some(999_999_999)));
        // A stale, unlocked file is taken over.
        let again = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreaped_child_is_not_alive() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!alive(pid), "a zombie counts as gone");
        let mut child = child;
        child.wait().unwrap();
        assert!(alive(std::process::id()));
    }
}
