//! What each command does. Errors end as `herald: <message>` and exit status 1 (a worker's
//! exit statuses are the ones the master understands).

use crate::config::{self, Flags, LoadError, Sources};
use crate::logger;
use crate::{Command, Locate, StartArgs, WorkerArgs};
use herald_ipc::{Config, EXIT_BAD_START, EXIT_BIND_FAILED};
use herald_master::client::{self, ClientError};
use herald_master::pidfile::{self, Probe};
use herald_master::{Daemon, DaemonError, MasterError, Options};
use herald_worker::WorkerError;
use nix::sys::signal::Signal;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use thiserror::Error;

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The configuration could not be built.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// The running master could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The master failed.
    #[error(transparent)]
    Master(#[from] MasterError),
    /// Daemonizing failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Anything else, already worded.
    #[error("{0}")]
    Other(String),
}

/// Runs a command and turns its outcome into an exit status.
pub fn dispatch(command: Command) -> ExitCode {
    let status = matches!(command, Command::Status(_));
    let result = match command {
        Command::Worker(w) => return worker(w),
        Command::Start(a) => start(a),
        Command::Stop(a) => stop(&a.locate, a.graceful, false).map(drop),
        Command::Restart(a) => stop(&a.start.locate, a.graceful, true).and_then(|_| start(a.start)),
        Command::Reload(a) => reload(&a.locate, a.graceful),
        Command::Status(a) => report(&a.locate, Report::Status, a.watch),
        Command::Connections(l) => report(&l, Report::Connections, false),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("herald: {e}");
            // LSB init scripts: `status` of a program that is not running exits 3.
            let not_running = matches!(
                e,
                CommandError::Client(ClientError::NotRunning { .. } | ClientError::Stale { .. })
            );
            if status && not_running {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The configuration sources of a command that only needs to find the master.
fn locate_sources(l: &Locate) -> Sources {
    Sources {
        file: l.config.clone(),
        sets: Vec::new(),
        flags: Flags {
            pid_file: l.pid_file.clone(),
            ..Flags::default()
        },
    }
}

fn load(sources: &Sources) -> Result<Config, CommandError> {
    let config = config::load(sources)?;
    log::set_max_level(config::parse_level(&config.log_level)?);
    logger::set_json(config.log_format == "json");
    Ok(config)
}

fn start(a: StartArgs) -> Result<(), CommandError> {
    let sources = Sources {
        file: a.locate.config.clone(),
        sets: a.set.clone(),
        flags: Flags {
            ws: a.ws.clone(),
            text: a.text.clone(),
            http: a.http.clone(),
            socketio: a.socketio.clone(),
            workers: a.workers,
            pid_file: a.locate.pid_file.clone(),
            log_level: a.log_level.clone(),
        },
    };
    let mut config = load(&sources)?;
    config::load_tls(&mut config)?;
    let pid_file = PathBuf::from(&config.pid_file);
    // A friendly early answer; the master's own lock is what really decides.
    if let Ok(Probe::Running(pid)) = pidfile::probe(&pid_file) {
        return Err(CommandError::Other(format!(
            "already running (pid {pid}, pid file {})",
            pid_file.display()
        )));
    }
    let reload_sources = sources.clone();
    let options = |ready_pipe| Options {
        reload_config: Some(Box::new(move || {
            let (mut c, notes) = config::load_noting(&reload_sources).map_err(|e| e.to_string())?;
            // A renewed certificate is read now; a broken one keeps the running material.
            config::load_tls(&mut c).map_err(|e| e.to_string())?;
            // The start command's flags still win; an edited file that loses to them is said.
            for n in notes {
                log::warn!("reload: {n}");
            }
            Ok(c)
        })),
        ready_pipe,
    };
    if !a.daemon {
        herald_master::run(config, options(None))?;
        return Ok(());
    }
    let log_file = PathBuf::from(&config.log_file);
    // SAFETY: no thread has been started: argument parsing, configuration loading and the
    // logger all run on the main thread, so forking here is sound.
    match unsafe { herald_master::daemonize(&log_file) }? {
        Daemon::Parent(Ok(pid)) => {
            println!(
                "herald: started (pid {pid}, pid file {}, log {})",
                pid_file.display(),
                log_file.display()
            );
            Ok(())
        }
        Daemon::Parent(Err(msg)) => Err(CommandError::Other(msg)),
        Daemon::Child(pipe) => {
            herald_master::run(config, options(Some(pipe)))?;
            Ok(())
        }
    }
}

/// Stops the master; with `lenient`, a master that is not running is not an error (restart).
fn stop(l: &Locate, graceful: bool, lenient: bool) -> Result<bool, CommandError> {
    let config = load(&locate_sources(l))?;
    let pid_file = PathBuf::from(&config.pid_file);
    let pid = match client::master_pid(&pid_file) {
        Ok(pid) => pid,
        Err(e @ (ClientError::NotRunning { .. } | ClientError::Stale { .. })) if lenient => {
            println!("herald: {e}; starting");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let (sig, how) = if graceful {
        (Signal::SIGQUIT, "gracefully, draining connections")
    } else {
        (Signal::SIGTERM, "")
    };
    client::signal(pid, sig)?;
    println!(
        "herald: stopping pid {pid}{}",
        if how.is_empty() {
            String::new()
        } else {
            format!(" {how}")
        }
    );
    let mut timeout = Duration::try_from_secs_f64(config.stop_timeout).unwrap_or_default()
        + Duration::from_secs(5);
    if graceful {
        timeout += Duration::try_from_secs_f64(config.drain_timeout).unwrap_or_default();
    }
    client::wait_stopped(pid, &pid_file, timeout, |waited| {
        println!("herald: waiting for pid {pid} ({} s)", waited.as_secs());
    })?;
    println!("herald: stopped");
    Ok(true)
}

fn reload(l: &Locate, graceful: bool) -> Result<(), CommandError> {
    let config = load(&locate_sources(l))?;
    let pid = client::master_pid(Path::new(&config.pid_file))?;
    let sig = if graceful {
        Signal::SIGUSR2
    } else {
        Signal::SIGUSR1
    };
    client::signal(pid, sig)?;
    println!(
        "herald: {}reload requested (pid {pid}); workers are replaced one at a time (see the log)",
        if graceful { "graceful " } else { "" }
    );
    Ok(())
}

/// Which report.
#[derive(Clone, Copy)]
enum Report {
    /// `status` (SIGIOT, which is SIGABRT on Linux).
    Status,
    /// `connections` (SIGIO).
    Connections,
}

fn report(l: &Locate, which: Report, watch: bool) -> Result<(), CommandError> {
    let config = load(&locate_sources(l))?;
    let pid_file = PathBuf::from(&config.pid_file);
    let (sig, path) = match which {
        Report::Status if config.status_file.is_empty() => {
            (Signal::SIGABRT, client::beside(&pid_file, ".status"))
        }
        Report::Status => (Signal::SIGABRT, PathBuf::from(&config.status_file)),
        Report::Connections => (Signal::SIGIO, client::beside(&pid_file, ".connections")),
    };
    loop {
        let pid = client::master_pid(&pid_file)?;
        let text = client::request_report(pid, sig, &path, Duration::from_secs(3))?;
        let mut out = std::io::stdout().lock();
        if watch {
            let _ = out.write_all(b"\x1b[2J\x1b[H");
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        drop(out);
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn worker(w: WorkerArgs) -> ExitCode {
    if let Ok(level) = config::parse_level(&w.log_level) {
        log::set_max_level(level);
    }
    logger::set_json(w.log_format == "json");
    // SAFETY: F_GETFD only reads the descriptor flags of an integer; it has no effect, and
    // fails with EBADF if nothing is open there.
    if unsafe { libc::fcntl(w.control_fd, libc::F_GETFD) } == -1 {
        log::error!("control fd {} is not open", w.control_fd);
        return ExitCode::from(EXIT_BAD_START as u8);
    }
    // SAFETY: the master passed this descriptor (the child's end of a socket pair, kept open
    // across exec for this purpose) and nothing else in this process owns it; it was checked
    // open above, and from here on the stream is its only owner.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(w.control_fd) };
    // Not to be inherited by anything this worker might start.
    let _ = nix::fcntl::fcntl(
        &stream,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    match herald_worker::run(w.id, w.instance, stream) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            let code = match e {
                WorkerError::Bind { .. } => EXIT_BIND_FAILED,
                _ => EXIT_BAD_START,
            };
            ExitCode::from(code as u8)
        }
    }
}
