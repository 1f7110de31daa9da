//! The master's event loop: one mio `Poll` over the signal pipe and every worker's control
//! channel. It starts the workers, restarts a dead one (throttled by [`Backoff`]), turns
//! signals into stop, drain, reload, status and connections, keeps every worker told who its
//! live siblings are, and speaks to systemd.
//!
//! Bookkeeping: a *slot* per worker id (stable across restarts) holds the id's history and its
//! *current* process; a *proc* is one live worker process. During a reload an id has two procs:
//! the *candidate* (new, not yet ready) or, once it is ready, the new current plus the
//! *retiring* old one.
//!
//! This module holds the entry point ([`run`]), the master's state ([`Master`]), its life
//! phases (start-up, running, stopping) and the loop that dispatches signals, channel events
//! and timers. The work is split by concern into child modules, all of them `impl Master`
//! blocks over the one struct below (so its fields stay private to the supervisor):
//!
//! - [`workers`]: the process table (slots and procs), spawning, orders, reaping, restarts;
//! - [`channel`]: the control channel to each worker: sending, receiving, dispatching what a
//!   worker says, announcing the live siblings;
//! - [`reload`]: replacing the workers one id at a time, and re-reading the configuration;
//! - [`gather`]: asking every worker for its `status` or `connections` rows and writing the
//!   report file ([`crate::report`] formats it).
//!
//! [`Backoff`]: crate::backoff::Backoff

mod channel;
mod gather;
mod reload;
mod workers;

use self::gather::Gather;
use self::reload::Reload;
use self::workers::{Order, Proc, Role, Slot};
use crate::daemon::ReadyPipe;
use crate::notify::Notifier;
use crate::pidfile::{PidFile, PidFileError};
use crate::preflight::{self, PreflightError};
use crate::spawn::{Launcher, SpawnError};
use herald_ipc::{Config, ConfigError, Control};
use mio::event::Source;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;
use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGIO, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
};
use signal_hook_mio::v1_0::Signals;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// SIGIOT, Workerman's status signal (the same number as SIGABRT on Linux).
const SIGIOT: i32 = libc::SIGIOT;

/// Token of the signal pipe; worker channels get tokens from 1 up, never reused.
const SIGNALS: Token = Token(0);
/// How long a new worker may take to report `Ready` (start-up and reload).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest poll sleep: timers are re-checked at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Builds the configuration again on reload (file, `--set`, flags); `Err` is shown and the
/// old configuration kept.
pub type ConfigLoader = Box<dyn FnMut() -> Result<Config, String>>;

/// How the master was started, beyond the configuration.
#[derive(Default)]
pub struct Options {
    /// Re-reads the configuration on reload; without it a reload keeps the configuration.
    pub reload_config: Option<ConfigLoader>,
    /// Set by `start -d`: the waiting parent learns through it whether start-up worked.
    pub ready_pipe: Option<ReadyPipe>,
}

/// Why the master stopped with an error.
#[derive(Debug, Error)]
pub enum MasterError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The pid file is taken or unusable.
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    /// A port is taken.
    #[error(transparent)]
    Port(#[from] PreflightError),
    /// A worker could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The configuration could not be encoded for the workers.
    #[error("cannot encode the configuration: {0}")]
    Encode(#[from] serde_json::Error),
    /// The poll loop or the signal pipe failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
    /// A worker could not bind during start-up.
    #[error("worker {worker} cannot listen: {error}")]
    Bind {
        /// Worker id.
        worker: u32,
        /// What the worker said.
        error: String,
    },
    /// A worker died during start-up.
    #[error("worker {worker} exited during start-up ({status})")]
    StartupExit {
        /// Worker id.
        worker: u32,
        /// How it ended.
        status: String,
    },
    /// Workers never reported ready.
    #[error("worker(s) {ids} did not report ready within {} s", READY_TIMEOUT.as_secs())]
    StartupTimeout {
        /// The silent ids.
        ids: String,
    },
}

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for every worker's first `Ready`; any death fails `start`.
    Starting {
        /// Give up then.
        deadline: Instant,
    },
    /// Serving: deaths are restarted, reloads allowed.
    Running,
    /// Stopping: exit once no process is left.
    Stopping {
        /// QUIT (drain) rather than TERM.
        graceful: bool,
    },
}

/// The supervisor's whole state.
struct Master {
    /// The configuration in force (replaced by a valid one on reload).
    config: Config,
    /// The same, as sent to workers in `Control::Start`.
    config_json: Value,
    /// The event loop: one `Poll` over the signal pipe ([`SIGNALS`]) and every worker's
    /// control channel.
    poll: Poll,
    /// Signals, as a readable pipe, so they are handled in the loop and not in a handler.
    signals: Signals,
    /// Forks and execs workers, the same way at start-up, on a restart and on a reload.
    launcher: Launcher,
    /// systemd, if it is listening: told when the master is ready, reloading or stopping.
    notifier: Notifier,
    /// The last watchdog ping sent to the workers.
    watchdog_seq: u64,
    /// When to check the workers' answers and ping them again (half the watchdog interval).
    watchdog_at: Option<Instant>,
    /// Live processes by token, the token their channel's events carry.
    procs: HashMap<Token, Proc>,
    /// Token of each live pid, for `waitpid` results.
    by_pid: HashMap<u32, Token>,
    /// Per worker id: what outlives one process of the id (its current process, back-off,
    /// restarts, last exit).
    slots: BTreeMap<u32, Slot>,
    /// Next channel token (never reused, so a late event cannot reach a new process).
    next_token: usize,
    /// Life phase: it decides what a death, a `Ready` or a signal means.
    phase: Phase,
    /// The reload in progress (one at a time).
    reload: Option<Reload>,
    /// A reload was asked for during one: run it after (graceful if any of them was).
    reload_again: Option<bool>,
    /// Status request in flight (one at a time: another SIGIOT meanwhile is folded into it).
    status: Option<Gather<Value>>,
    /// Connections request in flight (one at a time, like `status`).
    connections: Option<Gather<Vec<Value>>>,
    /// Last request number, so a late reply to an earlier request is not taken for this one.
    seq: u64,
    /// For the report's start time and uptime.
    started: SystemTime,
    /// Why start-up failed: returned once everything stopped.
    failure: Option<MasterError>,
    /// The waiting `start -d` parent: told once, that start-up worked or why it failed.
    ready_pipe: Option<ReadyPipe>,
    /// Re-reads the configuration on reload.
    reload_config: Option<ConfigLoader>,
    /// `start -d`: the log file stdout and stderr go to, opened again at each reload so that
    /// logrotate can move it away (the new workers then write to the new file).
    log_file: Option<PathBuf>,
    /// The pid file (fixed for the master's life), beside which reports are written.
    pid_file: PathBuf,
}

/// Runs the master until it is stopped: takes the pid file, checks the ports, starts
/// `config.worker_count()` workers and supervises them. Returns `Ok` after a requested stop,
/// `Err` if start-up failed (every process it started is gone by then).
pub fn run(config: Config, options: Options) -> Result<(), MasterError> {
    let Options {
        reload_config,
        mut ready_pipe,
    } = options;
    let result = supervise(config, reload_config, &mut ready_pipe);
    if let Some(pipe) = ready_pipe.take() {
        match &result {
            Ok(()) => pipe.fail("stopped before every worker was ready"),
            Err(e) => pipe.fail(&e.to_string()),
        }
    }
    result
}

/// [`run`] without the ready pipe's last word: checks, takes the pid file, builds the
/// [`Master`] and runs its loop. Hands the ready pipe back if start-up never finished, so
/// [`run`] can tell the waiting parent why.
fn supervise(
    config: Config,
    reload_config: Option<ConfigLoader>,
    ready_pipe: &mut Option<ReadyPipe>,
) -> Result<(), MasterError> {
    let listeners = config.validate()?;
    let pid_file = PathBuf::from(&config.pid_file);
    let _lock = PidFile::create(&pid_file)?;
    let nofile = preflight::raise_nofile();
    preflight::capacity(
        nofile,
        config.worker_count(),
        config.fd_reserve,
        config.max_connections,
    );
    preflight::check_ports(&listeners)?;
    preflight::enable_migrate_req();

    let poll = Poll::new()?;
    let mut signals = Signals::new([
        SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP, SIGIOT, SIGIO, SIGCHLD,
    ])?;
    signals.register(poll.registry(), SIGNALS, Interest::READABLE)?;
    let log_file = ready_pipe.as_ref().map(|_| PathBuf::from(&config.log_file));
    let mut m = Master {
        log_file,
        config_json: serde_json::to_value(&config)?,
        config,
        poll,
        signals,
        launcher: Launcher::new(),
        notifier: Notifier::from_env(),
        watchdog_seq: 0,
        watchdog_at: Some(Instant::now()),
        procs: HashMap::new(),
        by_pid: HashMap::new(),
        slots: BTreeMap::new(),
        next_token: 1,
        phase: Phase::Starting {
            deadline: Instant::now() + READY_TIMEOUT,
        },
        reload: None,
        reload_again: None,
        status: None,
        connections: None,
        seq: 0,
        started: SystemTime::now(),
        failure: None,
        ready_pipe: ready_pipe.take(),
        reload_config,
        pid_file,
    };
    m.start();
    let looped = m.run_loop();
    *ready_pipe = m.ready_pipe.take();
    if looped.is_err() {
        m.kill_all();
    }
    looped?;
    match m.failure.take() {
        Some(e) => Err(e),
        None => {
            log::info!("stopped");
            Ok(())
        }
    }
}

impl Master {
    /// Records the first start-up failure and stops everything.
    fn fail(&mut self, e: MasterError) {
        log::error!("{e}");
        if self.failure.is_none() {
            self.failure = Some(e);
        }
        self.begin_stop(false);
    }

    /// Polls until the master is stopping and no process is left: signals and channel events
    /// first, then every exited child is reaped, then the timers run.
    fn run_loop(&mut self) -> Result<(), MasterError> {
        let mut events = Events::with_capacity(64);
        loop {
            if matches!(self.phase, Phase::Stopping { .. }) && self.procs.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            let sleep = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            if let Err(e) = self.poll.poll(&mut events, Some(sleep)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for ev in events.iter() {
                if ev.token() == SIGNALS {
                    self.on_signals();
                } else {
                    self.on_channel(ev.token());
                }
            }
            // Reaping every turn (not only on SIGCHLD) also covers coalesced signals.
            self.reap();
            self.tick(Instant::now());
        }
    }

    /// The earliest timer.
    fn next_deadline(&self) -> Option<Instant> {
        let mut all: Vec<Instant> = Vec::new();
        if let Phase::Starting { deadline } = self.phase {
            all.push(deadline);
        }
        all.extend(self.slots.values().filter_map(|s| s.restart_at));
        all.extend(self.procs.values().filter_map(|p| p.kill_at));
        if let Some(step) = self.reload.as_ref().and_then(|r| r.step.as_ref()) {
            all.push(step.deadline);
        }
        all.extend(self.status.as_ref().map(|g| g.deadline));
        all.extend(self.connections.as_ref().map(|g| g.deadline));
        all.extend(
            self.watchdog_at
                .filter(|_| self.notifier.watchdog.is_some()),
        );
        all.into_iter().min()
    }

    /// Turns each pending signal into its action: TERM/INT stop, QUIT drains, USR1 reloads
    /// fast, USR2/HUP gracefully, IOT asks for status, IO for connections.
    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGTERM | SIGINT => self.begin_stop(false),
                SIGQUIT => self.begin_stop(true),
                SIGUSR1 => self.start_reload(false),
                SIGUSR2 | SIGHUP => self.start_reload(true),
                SIGIOT => self.start_status(),
                SIGIO => self.start_connections(),
                _ => {} // SIGCHLD: reaped after the events.
            }
        }
    }

    /// Runs every timer that is due at `now`, in order: the start-up deadline, restarts of
    /// dead ids, SIGKILLs of processes that outstayed their order, the reload step's deadline,
    /// and the reports whose time is up.
    fn tick(&mut self, now: Instant) {
        if let Phase::Starting { deadline } = self.phase {
            if now >= deadline {
                let ids: Vec<String> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| {
                        !s.current
                            .and_then(|t| self.procs.get(&t))
                            .is_some_and(|p| p.ready)
                    })
                    .map(|(id, _)| id.to_string())
                    .collect();
                self.fail(MasterError::StartupTimeout {
                    ids: ids.join(", "),
                });
            }
        }
        if self.phase == Phase::Running {
            self.restart_due(now);
        }
        self.kill_overdue(now);
        self.reload_deadline(now);
        self.finish_gathers(true);
        self.watchdog(now);
    }

    /// systemd's watchdog (`WatchdogSec=`): every half interval, `WATCHDOG=1` if every current
    /// worker answered the last ping (its loop turns), then a new ping. A worker stuck in its
    /// loop holds the pings back, and systemd restarts the service.
    fn watchdog(&mut self, now: Instant) {
        let Some(interval) = self.notifier.watchdog else {
            self.watchdog_at = None;
            return;
        };
        if self.watchdog_at.is_some_and(|t| now < t) {
            return;
        }
        let current: Vec<Token> = self
            .procs
            .iter()
            .filter(|(_, p)| p.role == Role::Current && p.channel.is_some())
            .map(|(t, _)| *t)
            .collect();
        let answered = current.iter().all(|t| {
            self.procs
                .get(t)
                .is_some_and(|p| p.pong >= self.watchdog_seq)
        });
        if self.phase == Phase::Running && answered {
            self.notifier.watchdog_ping();
        }
        self.watchdog_seq += 1;
        let seq = self.watchdog_seq;
        for t in current {
            self.send(t, &Control::Ping { seq });
        }
        self.watchdog_at = Some(now + interval / 2);
    }

    /// Start-up is over once every id's current process is ready.
    fn check_started(&mut self) {
        let all_ready = self.slots.values().all(|s| {
            s.current
                .and_then(|t| self.procs.get(&t))
                .is_some_and(|p| p.ready)
        });
        if !all_ready {
            return;
        }
        self.phase = Phase::Running;
        self.notifier.ready();
        self.notifier
            .status(&format!("{} workers running", self.slots.len()));
        if let Some(pipe) = self.ready_pipe.take() {
            pipe.ready();
        }
        let listen: Vec<String> = self
            .config
            .validate()
            .map(|l| {
                preflight::ports(&l)
                    .iter()
                    .map(|(w, a)| format!("{w} {a}"))
                    .collect()
            })
            .unwrap_or_default();
        log::info!(
            "running: {} workers, listening on {}",
            self.slots.len(),
            listen.join(", ")
        );
    }

    /// Enters [`Phase::Stopping`]: cancels any reload and pending restart, and orders every
    /// process to drain (`graceful`) or stop. A fast stop overrides a graceful one in
    /// progress; anything else during a stop is ignored.
    fn begin_stop(&mut self, graceful: bool) {
        match self.phase {
            Phase::Stopping { graceful: true } if !graceful => {
                log::info!("fast stop: stopping every worker now");
            }
            Phase::Stopping { .. } => return,
            _ if graceful => log::info!(
                "graceful stop: workers finish their connections (at most {} s)",
                self.config.drain_timeout
            ),
            _ => log::info!("stopping"),
        }
        self.phase = Phase::Stopping { graceful };
        self.reload = None;
        self.reload_again = None;
        self.notifier.stopping();
        for s in self.slots.values_mut() {
            s.restart_at = None;
        }
        let want = if graceful { Order::Drain } else { Order::Stop };
        let tokens: Vec<Token> = self
            .procs
            .iter()
            .filter(|(_, p)| p.order != Some(Order::Stop) && p.order != Some(want))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.order(t, want);
        }
    }
}
