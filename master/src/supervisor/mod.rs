//! The master's event loop: one mio `Poll` over the signal pipe and every worker's control
//! channel. It starts the workers, restarts a dead one (throttled by [`Backoff`]), turns
//! signals into stop, drain, reload, status and connections, keeps every worker told who its
//! live siblings are, and speaks to systemd.
//!
//! Bookkeeping: a *slot* per worker id (stable across restarts) holds the id's history and its
//! *current* process; a *proc* is one live worker process. During a reload an id has two procs:
//! the *candidate* (new, not yet ready) or, once it is ready, the new current plus the
//! *retiring* old one.

use crate::backoff::Backoff;
use crate::daemon::ReadyPipe;
use crate::notify::Notifier;
use crate::pidfile::{PidFile, PidFileError};
use crate::preflight::{self, PreflightError};
use crate::report::{self, Answer, Global, SlotInfo};
use crate::spawn::{ControlChannel, Launcher, SpawnError};
use herald_ipc::{ChannelError, Config, ConfigError, Control, Peer, EXIT_BIND_FAILED};
use mio::event::Source;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::Value;
use signal_hook::consts::signal::{
    SIGCHLD, SIGHUP, SIGINT, SIGIO, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
};
use signal_hook_mio::v1_0::Signals;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// SIGIOT, Workerman's status signal (the same number as SIGABRT on Linux).
const SIGIOT: i32 = libc::SIGIOT;

/// Token of the signal pipe; worker channels get tokens from 1 up, never reused.
const SIGNALS: Token = Token(0);
/// How long a new worker may take to report `Ready` (start-up and reload).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `status` and `connections` wait for the workers' answers.
const GATHER_TIMEOUT: Duration = Duration::from_secs(1);
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

/// What a process is to its worker id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The id's process: restarted if it dies unasked.
    Current,
    /// A reload's new process, not yet ready; the old one still serves.
    Candidate,
    /// Replaced by a reload (or its id removed): stopping or draining, never restarted.
    Retiring,
}

/// What the master told a process to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// `Control::Stop`: close everything now.
    Stop,
    /// `Control::Drain`: close listeners, finish connections.
    Drain,
}

/// One live worker process.
struct Proc {
    /// Its stable worker id.
    id: u32,
    /// Its pid (how `waitpid` names it).
    pid: u32,
    /// The control channel; `None` once the worker closed its end (it is exiting).
    channel: Option<ControlChannel>,
    /// Current, candidate or retiring.
    role: Role,
    /// It sent `Ready`: it listens and is announced to its siblings.
    ready: bool,
    /// When it was spawned, for the back-off reset.
    born: Instant,
    /// The last order sent, so it is not repeated and the report can show it.
    order: Option<Order>,
    /// When to SIGKILL it if it has not exited.
    kill_at: Option<Instant>,
}

impl Proc {
    /// The state word shown in the status report.
    fn state(&self) -> &'static str {
        match (self.order, self.ready) {
            (Some(Order::Stop), _) => "stopping",
            (Some(Order::Drain), _) => "draining",
            (None, false) => "starting",
            (None, true) => "ready",
        }
    }
}

/// One worker id's history.
#[derive(Default)]
struct Slot {
    /// The id's current process, if one is alive.
    current: Option<Token>,
    /// Restart throttling.
    backoff: Backoff,
    /// A restart is due at this time.
    restart_at: Option<Instant>,
    /// Deaths that were not asked for.
    restarts: u32,
    /// How the last process of this id ended.
    last_exit: Option<String>,
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

/// What the current reload step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The candidate's `Ready`.
    NewReady,
    /// The stopped old process's exit (USR1).
    OldExit(Token),
    /// The draining old process's `ListenersClosed` (USR2, HUP).
    ListenersClosed(Token),
}

/// Replacing one worker id.
struct Step {
    /// The id being replaced.
    id: u32,
    /// The candidate.
    new: Token,
    /// What is awaited.
    wait: Wait,
    /// When to stop waiting.
    deadline: Instant,
}

/// A reload in progress: one id at a time.
struct Reload {
    /// USR2/HUP (old drains) rather than USR1 (old stops).
    graceful: bool,
    /// Ids still to replace.
    queue: VecDeque<u32>,
    /// The id being replaced now.
    step: Option<Step>,
}

/// A status or connections request in flight.
struct Gather<T> {
    /// Request number, echoed by the replies.
    seq: u64,
    /// Write the report with whatever came by then.
    deadline: Instant,
    /// One entry per process asked, keyed by token.
    answers: BTreeMap<usize, Answer<T>>,
}

impl<T> Gather<T> {
    fn complete(&self) -> bool {
        self.answers.values().all(|a| a.reply.is_some())
    }
}

/// The supervisor's whole state.
struct Master {
    /// The configuration in force (replaced by a valid one on reload).
    config: Config,
    /// The same, as sent to workers in `Control::Start`.
    config_json: Value,
    /// The event loop.
    poll: Poll,
    /// Signals, as a readable pipe.
    signals: Signals,
    /// Forks and execs workers.
    launcher: Launcher,
    /// systemd, if it is listening.
    notifier: Notifier,
    /// Live processes by token.
    procs: HashMap<Token, Proc>,
    /// Token of each live pid, for `waitpid` results.
    by_pid: HashMap<u32, Token>,
    /// Per worker id.
    slots: BTreeMap<u32, Slot>,
    /// Next channel token (never reused, so a late event cannot reach a new process).
    next_token: usize,
    /// Life phase.
    phase: Phase,
    /// The reload in progress.
    reload: Option<Reload>,
    /// A reload was asked for during one: run it after (graceful if any of them was).
    reload_again: Option<bool>,
    /// Status request in flight.
    status: Option<Gather<Value>>,
    /// Connections request in flight.
    connections: Option<Gather<Vec<Value>>>,
    /// Last request number.
    seq: u64,
    /// For the report's start time and uptime.
    started: SystemTime,
    /// Why start-up failed: returned once everything stopped.
    failure: Option<MasterError>,
    /// The waiting `start -d` parent.
    ready_pipe: Option<ReadyPipe>,
    /// Re-reads the configuration on reload.
    reload_config: Option<ConfigLoader>,
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

fn supervise(
    config: Config,
    reload_config: Option<ConfigLoader>,
    ready_pipe: &mut Option<ReadyPipe>,
) -> Result<(), MasterError> {
    let listeners = config.validate()?;
    let pid_file = PathBuf::from(&config.pid_file);
    let _lock = PidFile::create(&pid_file)?;
    preflight::raise_nofile();
    preflight::check_ports(&listeners)?;
    preflight::enable_migrate_req();

    let poll = Poll::new()?;
    let mut signals = Signals::new([
        SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGHUP, SIGIOT, SIGIO, SIGCHLD,
    ])?;
    signals.register(poll.registry(), SIGNALS, Interest::READABLE)?;
    let mut m = Master {
        config_json: serde_json::to_value(&config)?,
        config,
        poll,
        signals,
        launcher: Launcher::new(),
        notifier: Notifier::from_env(),
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

/// `exit 3`, `killed by SIGKILL`.
fn describe(status: &WaitStatus) -> (u32, String, Option<i32>) {
    match *status {
        WaitStatus::Exited(pid, code) => (pid.as_raw() as u32, format!("exit {code}"), Some(code)),
        WaitStatus::Signaled(pid, sig, core) => (
            pid.as_raw() as u32,
            format!(
                "killed by {}{}",
                sig.as_str(),
                if core { " (core dumped)" } else { "" }
            ),
            None,
        ),
        _ => (0, String::new(), None),
    }
}

/// Writes `text` to `path` through `path.tmp` and a rename, so a reader never sees half.
fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl Master {
    fn secs(v: f64) -> Duration {
        Duration::try_from_secs_f64(v).unwrap_or(Duration::from_secs(5))
    }

    fn stop_timeout(&self) -> Duration {
        Self::secs(self.config.stop_timeout)
    }

    fn drain_timeout(&self) -> Duration {
        Self::secs(self.config.drain_timeout)
    }

    /// Spawns every worker for the first time.
    fn start(&mut self) {
        let count = self.config.worker_count() as u32;
        log::info!(
            "herald {} starting {count} workers (pid {}, pid file {})",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.pid_file.display()
        );
        for id in 0..count {
            self.slots.insert(id, Slot::default());
            match self.spawn_proc(id, Role::Current) {
                Ok(token) => {
                    if let Some(s) = self.slots.get_mut(&id) {
                        s.current = Some(token);
                    }
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
        }
    }

    /// Starts one worker process and registers its channel.
    fn spawn_proc(&mut self, id: u32, role: Role) -> Result<Token, MasterError> {
        let spawned = self
            .launcher
            .spawn(id, &self.config.log_level, &self.config_json)?;
        let token = Token(self.next_token);
        self.next_token += 1;
        let mut channel = spawned.channel;
        if let Err(e) = channel.register(
            self.poll.registry(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            let _ = kill(Pid::from_raw(spawned.pid as i32), Signal::SIGKILL);
            return Err(e.into());
        }
        log::debug!("worker {id} spawned (pid {})", spawned.pid);
        self.by_pid.insert(spawned.pid, token);
        self.procs.insert(
            token,
            Proc {
                id,
                pid: spawned.pid,
                channel: Some(channel),
                role,
                ready: false,
                born: Instant::now(),
                order: None,
                kill_at: None,
            },
        );
        Ok(token)
    }

    /// Records the first start-up failure and stops everything.
    fn fail(&mut self, e: MasterError) {
        log::error!("{e}");
        if self.failure.is_none() {
            self.failure = Some(e);
        }
        self.begin_stop(false);
    }

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
        all.into_iter().min()
    }

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

    /// Drops a process's channel (the worker closed it, or it failed).
    fn close_channel(&mut self, token: Token) {
        if let Some(p) = self.procs.get_mut(&token) {
            if let Some(mut ch) = p.channel.take() {
                let _ = ch.deregister(self.poll.registry());
            }
        }
    }

    /// Queues and writes one message; `false` if the process cannot be told.
    fn send(&mut self, token: Token, msg: &Control) -> bool {
        let Some(p) = self.procs.get_mut(&token) else {
            return false;
        };
        let Some(ch) = p.channel.as_mut() else {
            return false;
        };
        let result = ch.send(msg).and_then(|()| ch.flush().map(drop));
        match result {
            Ok(()) => true,
            Err(ChannelError::Full { pending }) => {
                log::warn!(
                    "worker {} (pid {}) is not reading its control channel ({pending} bytes queued)",
                    p.id,
                    p.pid
                );
                false
            }
            Err(e) => {
                log::debug!("worker {} (pid {}) control channel: {e}", p.id, p.pid);
                self.close_channel(token);
                false
            }
        }
    }

    fn on_channel(&mut self, token: Token) {
        let mut msgs = Vec::new();
        let mut closed = false;
        if let Some(p) = self.procs.get_mut(&token) {
            if let Some(ch) = p.channel.as_mut() {
                match ch.receive(&mut msgs) {
                    Ok(()) => {}
                    Err(ChannelError::Closed) => closed = true,
                    // A worker that exits with our messages unread resets the socket.
                    Err(ChannelError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                        closed = true
                    }
                    Err(e) => {
                        log::warn!("worker {} (pid {}) control channel: {e}", p.id, p.pid);
                        closed = true;
                    }
                }
                if !closed && ch.flush().is_err() {
                    closed = true;
                }
            }
        }
        if closed {
            self.close_channel(token);
        }
        for msg in msgs {
            self.on_message(token, msg);
        }
    }

    fn on_message(&mut self, token: Token, msg: Control) {
        let Some(p) = self.procs.get_mut(&token) else {
            return;
        };
        let (id, pid) = (p.id, p.pid);
        match msg {
            Control::Ready { worker, pid: said } => {
                if worker != id || said != pid {
                    log::warn!(
                        "worker {id} (pid {pid}) reported ready as worker {worker} pid {said}"
                    );
                }
                if p.ready {
                    return;
                }
                p.ready = true;
                let role = p.role;
                log::info!("worker {id} ready (pid {pid})");
                match self.phase {
                    Phase::Starting { .. } => self.check_started(),
                    Phase::Running if role == Role::Candidate => self.promote(token),
                    _ => {}
                }
                self.broadcast_peers();
            }
            Control::BindFailed { worker, error } => {
                if let Phase::Starting { .. } = self.phase {
                    self.fail(MasterError::Bind { worker, error });
                } else {
                    log::error!("worker {worker} (pid {pid}) cannot listen: {error}");
                }
            }
            Control::Status { seq, row } => {
                if let Some(g) = self.status.as_mut().filter(|g| g.seq == seq) {
                    if let Some(a) = g.answers.get_mut(&token.0) {
                        a.reply = Some(row);
                    }
                }
                self.finish_gathers(false);
            }
            Control::Connections { seq, rows } => {
                if let Some(g) = self.connections.as_mut().filter(|g| g.seq == seq) {
                    if let Some(a) = g.answers.get_mut(&token.0) {
                        a.reply = Some(rows);
                    }
                }
                self.finish_gathers(false);
            }
            Control::ListenersClosed { .. } => {
                log::info!("worker {id} (pid {pid}) closed its listeners");
                let waited = self
                    .reload
                    .as_ref()
                    .and_then(|r| r.step.as_ref())
                    .is_some_and(|s| s.wait == Wait::ListenersClosed(token));
                if waited {
                    self.next_step();
                }
            }
            other => log::warn!("worker {id} (pid {pid}) sent an unexpected {other:?}"),
        }
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

    /// Announces the live (ready) workers to every worker.
    fn broadcast_peers(&mut self) {
        let mut peers: Vec<Peer> = self
            .procs
            .values()
            .filter(|p| p.ready)
            .map(|p| Peer {
                worker: p.id,
                pid: p.pid,
            })
            .collect();
        peers.sort_by_key(|p| (p.worker, p.pid));
        let targets: Vec<Token> = self
            .procs
            .iter()
            .filter(|(_, p)| p.channel.is_some())
            .map(|(t, _)| *t)
            .collect();
        let msg = Control::Peers { peers };
        for t in targets {
            self.send(t, &msg);
        }
    }

    /// Sends `order` to a process and arms its SIGKILL deadline.
    fn order(&mut self, token: Token, order: Order) {
        let now = Instant::now();
        let grace = match order {
            Order::Stop => self.stop_timeout(),
            Order::Drain => self.drain_timeout() + self.stop_timeout(),
        };
        let msg = match order {
            Order::Stop => Control::Stop,
            Order::Drain => Control::Drain,
        };
        self.send(token, &msg);
        if let Some(p) = self.procs.get_mut(&token) {
            p.order = Some(order);
            let at = now + grace;
            p.kill_at = Some(p.kill_at.map_or(at, |k| k.min(at)));
        }
    }

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

    /// SIGKILLs every process and waits for each (the loop failed: leave nothing behind).
    fn kill_all(&mut self) {
        for p in self.procs.values() {
            let pid = Pid::from_raw(p.pid as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        self.procs.clear();
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    let (pid, desc, code) = describe(&status);
                    self.on_exit(pid, desc, code);
                }
                Ok(_) => {}
            }
        }
    }

    fn on_exit(&mut self, pid: u32, desc: String, code: Option<i32>) {
        let Some(token) = self.by_pid.remove(&pid) else {
            log::debug!("reaped unknown child {pid} ({desc})");
            return;
        };
        let Some(mut p) = self.procs.remove(&token) else {
            return;
        };
        if let Some(ch) = p.channel.as_mut() {
            let _ = ch.deregister(self.poll.registry());
        }
        if let Some(g) = self.status.as_mut() {
            g.answers.remove(&token.0);
        }
        if let Some(g) = self.connections.as_mut() {
            g.answers.remove(&token.0);
        }
        let id = p.id;
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.last_exit = Some(desc.clone());
            if slot.current == Some(token) {
                slot.current = None;
            }
        }
        match self.phase {
            Phase::Starting { .. } => {
                let e = if code == Some(EXIT_BIND_FAILED) {
                    MasterError::Bind {
                        worker: id,
                        error: format!("it exited with status {EXIT_BIND_FAILED} (see its log)"),
                    }
                } else {
                    MasterError::StartupExit {
                        worker: id,
                        status: desc,
                    }
                };
                self.fail(e);
            }
            Phase::Stopping { .. } => log::info!("worker {id} (pid {pid}) exited: {desc}"),
            Phase::Running => match p.role {
                Role::Current if p.order.is_none() => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.restarts += 1;
                        let delay = slot.backoff.on_death(p.born.elapsed());
                        slot.restart_at = Some(Instant::now() + delay);
                        log::warn!(
                            "worker {id} (pid {pid}) died ({desc}); restarting in {:.1} s",
                            delay.as_secs_f64()
                        );
                    }
                }
                Role::Current | Role::Retiring => {
                    log::info!("worker {id} (pid {pid}) exited: {desc}");
                    let waited = self
                        .reload
                        .as_ref()
                        .and_then(|r| r.step.as_ref())
                        .is_some_and(|s| {
                            s.wait == Wait::OldExit(token) || s.wait == Wait::ListenersClosed(token)
                        });
                    if waited {
                        self.next_step();
                    }
                }
                Role::Candidate => {
                    log::error!(
                        "reload: new worker {id} (pid {pid}) exited before it was ready ({desc}); \
                         the old one keeps serving"
                    );
                    let waited = self
                        .reload
                        .as_ref()
                        .and_then(|r| r.step.as_ref())
                        .is_some_and(|s| s.new == token);
                    if waited {
                        self.next_step();
                    }
                }
            },
        }
        if p.ready {
            self.broadcast_peers();
        }
        self.finish_gathers(false);
    }

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
            let replacing = self
                .reload
                .as_ref()
                .and_then(|r| r.step.as_ref())
                .filter(|s| s.wait == Wait::NewReady)
                .map(|s| s.id);
            let due: Vec<u32> = self
                .slots
                .iter()
                .filter(|(id, s)| {
                    s.current.is_none()
                        && s.restart_at.is_some_and(|t| t <= now)
                        && replacing != Some(**id)
                })
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.restart(id, now);
            }
        }
        for p in self.procs.values_mut() {
            if p.kill_at.is_some_and(|t| t <= now) {
                p.kill_at = None;
                log::warn!(
                    "worker {} (pid {}) did not exit in time: SIGKILL",
                    p.id,
                    p.pid
                );
                let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
            }
        }
        let expired = self
            .reload
            .as_ref()
            .and_then(|r| r.step.as_ref())
            .filter(|s| s.deadline <= now)
            .map(|s| (s.id, s.new, s.wait));
        if let Some((id, new, wait)) = expired {
            match wait {
                Wait::NewReady => {
                    log::error!(
                        "reload: new worker {id} not ready within {} s; the old one keeps serving",
                        READY_TIMEOUT.as_secs()
                    );
                    if let Some(p) = self.procs.get_mut(&new) {
                        p.role = Role::Retiring;
                        p.order = Some(Order::Stop);
                        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
                    }
                }
                Wait::ListenersClosed(_) => log::warn!(
                    "reload: old worker {id} did not confirm closing its listeners; going on"
                ),
                Wait::OldExit(_) => {}
            }
            self.next_step();
        }
        self.finish_gathers(true);
    }

    /// Starts a replacement for a dead worker id.
    fn restart(&mut self, id: u32, now: Instant) {
        match self.spawn_proc(id, Role::Current) {
            Ok(token) => {
                if let Some(s) = self.slots.get_mut(&id) {
                    s.current = Some(token);
                    s.restart_at = None;
                }
            }
            Err(e) => {
                if let Some(s) = self.slots.get_mut(&id) {
                    let delay = s.backoff.on_death(Duration::ZERO);
                    s.restart_at = Some(now + delay);
                    log::error!(
                        "cannot restart worker {id}: {e}; trying again in {:.1} s",
                        delay.as_secs_f64()
                    );
                }
            }
        }
    }

    /// Re-reads the configuration; keeps the old one if the new one is invalid.
    fn reread_config(&mut self) {
        let Some(loader) = self.reload_config.as_mut() else {
            return;
        };
        let mut config = match loader() {
            Ok(c) => c,
            Err(e) => {
                let e = e.split_whitespace().collect::<Vec<_>>().join(" ");
                log::error!("reload: {e}; keeping the running configuration");
                return;
            }
        };
        if let Err(e) = config.validate() {
            log::error!("reload: configuration: {e}; keeping the running configuration");
            return;
        }
        if config.pid_file != self.config.pid_file {
            log::warn!(
                "reload: pid_file cannot change while running; keeping {}",
                self.config.pid_file
            );
            config.pid_file = self.config.pid_file.clone();
        }
        match serde_json::to_value(&config) {
            Ok(json) => {
                if let Ok(level) = config.log_level.parse::<log::LevelFilter>() {
                    log::set_max_level(level);
                }
                if config != self.config {
                    log::info!("reload: configuration changed");
                }
                self.config = config;
                self.config_json = json;
            }
            Err(e) => log::error!("reload: cannot encode the configuration: {e}"),
        }
    }

    fn start_reload(&mut self, graceful: bool) {
        match self.phase {
            Phase::Starting { .. } => {
                log::warn!("reload ignored: start-up is not finished");
                return;
            }
            Phase::Stopping { .. } => return,
            Phase::Running => {}
        }
        if self.reload.is_some() {
            self.reload_again = Some(self.reload_again.unwrap_or(false) || graceful);
            log::info!("reload requested during a reload: it will run again after this one");
            return;
        }
        self.notifier.reloading();
        self.reread_config();
        let count = self.config.worker_count() as u32;
        log::info!(
            "{} reload: replacing {count} workers one at a time",
            if graceful { "graceful" } else { "fast" }
        );
        self.reload = Some(Reload {
            graceful,
            queue: (0..count).collect(),
            step: None,
        });
        self.next_step();
    }

    /// Moves the reload to its next id (or finishes it).
    fn next_step(&mut self) {
        loop {
            let Some(r) = self.reload.as_mut() else {
                return;
            };
            r.step = None;
            let Some(id) = r.queue.pop_front() else {
                self.finish_reload();
                return;
            };
            self.slots.entry(id).or_default();
            match self.spawn_proc(id, Role::Candidate) {
                Ok(new) => {
                    if let Some(r) = self.reload.as_mut() {
                        r.step = Some(Step {
                            id,
                            new,
                            wait: Wait::NewReady,
                            deadline: Instant::now() + READY_TIMEOUT,
                        });
                    }
                    return;
                }
                Err(e) => log::error!("reload: {e}; worker {id} keeps its old process"),
            }
        }
    }

    /// The candidate is ready: it becomes the id's process, and the old one stops or drains.
    fn promote(&mut self, token: Token) {
        let Some(p) = self.procs.get_mut(&token) else {
            return;
        };
        p.role = Role::Current;
        let id = p.id;
        let old = self.slots.get_mut(&id).and_then(|s| {
            s.restart_at = None;
            s.current.replace(token)
        });
        let Some(graceful) = self.reload.as_ref().map(|r| r.graceful) else {
            return;
        };
        let old = old.filter(|o| *o != token && self.procs.contains_key(o));
        let Some(old) = old else {
            self.next_step();
            return;
        };
        if let Some(o) = self.procs.get_mut(&old) {
            o.role = Role::Retiring;
        }
        let (order, wait, wait_for) = if graceful {
            (
                Order::Drain,
                Wait::ListenersClosed(old),
                self.stop_timeout().max(Duration::from_secs(5)),
            )
        } else {
            (
                Order::Stop,
                Wait::OldExit(old),
                self.stop_timeout() + Duration::from_secs(2),
            )
        };
        self.order(old, order);
        if let Some(step) = self.reload.as_mut().and_then(|r| r.step.as_mut()) {
            step.wait = wait;
            step.deadline = Instant::now() + wait_for;
        }
    }

    fn finish_reload(&mut self) {
        let graceful = self.reload.take().is_some_and(|r| r.graceful);
        let count = self.config.worker_count() as u32;
        let extra: Vec<u32> = self.slots.range(count..).map(|(id, _)| *id).collect();
        for id in extra {
            if let Some(token) = self.slots.remove(&id).and_then(|s| s.current) {
                log::info!("worker {id} is no longer configured: retiring it");
                if let Some(p) = self.procs.get_mut(&token) {
                    p.role = Role::Retiring;
                }
                self.order(token, if graceful { Order::Drain } else { Order::Stop });
            }
        }
        log::info!("reload finished");
        self.notifier.ready();
        if let Some(again) = self.reload_again.take() {
            self.start_reload(again);
        }
    }

    /// Processes asked by a status or connections request: every one that can still hear.
    fn askable(&self) -> Vec<(Token, Answer<()>)> {
        self.procs
            .iter()
            .filter(|(_, p)| p.channel.is_some())
            .map(|(t, p)| {
                (
                    *t,
                    Answer {
                        worker: p.id,
                        pid: p.pid,
                        state: p.state(),
                        reply: None,
                    },
                )
            })
            .collect()
    }

    fn start_status(&mut self) {
        if self.status.is_none() {
            let g = self.start_gather(|seq| Control::StatusRequest { seq });
            self.status = Some(g);
            self.finish_gathers(false);
        }
    }

    fn start_connections(&mut self) {
        if self.connections.is_none() {
            let g = self.start_gather(|seq| Control::ConnectionsRequest { seq });
            self.connections = Some(g);
            self.finish_gathers(false);
        }
    }

    /// Sends the request `make(seq)` to every worker that can answer and returns the gather
    /// that collects their replies until `GATHER_TIMEOUT`.
    fn start_gather<T>(&mut self, make: impl Fn(u64) -> Control) -> Gather<T> {
        self.seq += 1;
        let seq = self.seq;
        let mut answers = BTreeMap::new();
        for (t, a) in self.askable() {
            if self.send(t, &make(seq)) {
                answers.insert(
                    t.0,
                    Answer {
                        worker: a.worker,
                        pid: a.pid,
                        state: a.state,
                        reply: None,
                    },
                );
            }
        }
        Gather {
            seq,
            deadline: Instant::now() + GATHER_TIMEOUT,
            answers,
        }
    }

    /// Where `status` writes: `status_file`, or beside the pid file.
    fn status_path(&self) -> PathBuf {
        if self.config.status_file.is_empty() {
            let mut p = self.pid_file.as_os_str().to_owned();
            p.push(".status");
            PathBuf::from(p)
        } else {
            PathBuf::from(&self.config.status_file)
        }
    }

    /// Where `connections` writes: beside the pid file.
    fn connections_path(&self) -> PathBuf {
        let mut p = self.pid_file.as_os_str().to_owned();
        p.push(".connections");
        PathBuf::from(p)
    }

    /// Writes the reports whose answers are all in (or, with `timers`, whose time is up).
    fn finish_gathers(&mut self, timers: bool) {
        let now = Instant::now();
        let due = |complete: bool, deadline: Instant| complete || (timers && deadline <= now);
        if let Some(g) = self.status.take() {
            if due(g.complete(), g.deadline) {
                let global = Global {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    master_pid: std::process::id(),
                    started: self.started,
                    now: SystemTime::now(),
                    load: report::load_average(),
                    workers: self.config.worker_count(),
                    processes: self.procs.len(),
                    slots: self
                        .slots
                        .iter()
                        .map(|(id, s)| SlotInfo {
                            id: *id,
                            restarts: s.restarts,
                            last_exit: s.last_exit.clone(),
                        })
                        .collect(),
                };
                let answers: Vec<Answer<Value>> = g.answers.into_values().collect();
                let text = report::format_status(&global, &answers);
                let path = self.status_path();
                match write_atomic(&path, &text) {
                    Ok(()) => log::debug!("status written to {}", path.display()),
                    Err(e) => log::error!("cannot write status to {}: {e}", path.display()),
                }
            } else {
                self.status = Some(g);
            }
        }
        if let Some(g) = self.connections.take() {
            if due(g.complete(), g.deadline) {
                let answers: Vec<Answer<Vec<Value>>> = g.answers.into_values().collect();
                let text = report::format_connections(&answers);
                let path = self.connections_path();
                match write_atomic(&path, &text) {
                    Ok(()) => log::debug!("connections written to {}", path.display()),
                    Err(e) => log::error!("cannot write connections to {}: {e}", path.display()),
                }
            } else {
                self.connections = Some(g);
            }
        }
    }
}
