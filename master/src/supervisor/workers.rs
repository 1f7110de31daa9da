//! The worker process table and each process's life: a [`Slot`] per worker id, a [`Proc`] per
//! live process, and what the master does to them — spawning, ordering a stop or a drain
//! (with a SIGKILL deadline behind it), reaping, and restarting an id whose process died
//! unasked, throttled by the slot's [`Backoff`].
//!
//! What a death means depends on the master's phase and on the process's [`Role`]: during
//! start-up it fails `start`, while running a current process is restarted and a reload's
//! processes move the reload on ([`super::reload`]).

use super::reload::Wait;
use super::{Master, MasterError, Phase};
use crate::backoff::Backoff;
use crate::spawn::ControlChannel;
use herald_ipc::{Control, EXIT_BIND_FAILED};
use mio::event::Source;
use mio::{Interest, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// What a process is to its worker id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The id's process: restarted if it dies unasked.
    Current,
    /// A reload's new process, not yet ready; the old one still serves.
    Candidate,
    /// Replaced by a reload (or its id removed): stopping or draining, never restarted.
    Retiring,
}

/// What the master told a process to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// `Control::Stop`: close everything now.
    Stop,
    /// `Control::Drain`: close listeners, finish connections.
    Drain,
}

/// One live worker process.
pub(super) struct Proc {
    /// Its stable worker id.
    pub(super) id: u32,
    /// Its pid (how `waitpid` names it).
    pub(super) pid: u32,
    /// The control channel; `None` once the worker closed its end (it is exiting).
    pub(super) channel: Option<ControlChannel>,
    /// Current, candidate or retiring: whether its death is restarted or moves a reload on.
    pub(super) role: Role,
    /// It sent `Ready`: it listens and is announced to its siblings.
    pub(super) ready: bool,
    /// When it was spawned, for the back-off reset.
    pub(super) born: Instant,
    /// The last order sent, so it is not repeated and the report can show it.
    pub(super) order: Option<Order>,
    /// When to SIGKILL it if it has not exited, so an order cannot be ignored forever.
    pub(super) kill_at: Option<Instant>,
    /// The last watchdog ping it answered: a worker whose loop is stuck holds back systemd's
    /// `WATCHDOG=1`.
    pub(super) pong: u64,
}

impl Proc {
    /// The state word shown in the status report.
    pub(super) fn state(&self) -> &'static str {
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
pub(super) struct Slot {
    /// The id's current process, if one is alive.
    pub(super) current: Option<Token>,
    /// Restart throttling, so a crash loop cannot spin.
    pub(super) backoff: Backoff,
    /// A restart is due at this time (the id's process died and the back-off runs).
    pub(super) restart_at: Option<Instant>,
    /// Deaths that were not asked for, shown in the status report.
    pub(super) restarts: u32,
    /// How the last process of this id ended, shown in the status report.
    pub(super) last_exit: Option<String>,
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

impl Master {
    /// A timeout from the configuration, in seconds; 5 s if it is not a valid duration.
    fn secs(v: f64) -> Duration {
        Duration::try_from_secs_f64(v).unwrap_or(Duration::from_secs(5))
    }

    /// How long a stopped process may take to exit before its SIGKILL.
    pub(super) fn stop_timeout(&self) -> Duration {
        Self::secs(self.config.stop_timeout)
    }

    /// How long a draining process may keep its connections.
    fn drain_timeout(&self) -> Duration {
        Self::secs(self.config.drain_timeout)
    }

    /// Spawns every worker for the first time.
    pub(super) fn start(&mut self) {
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
    pub(super) fn spawn_proc(&mut self, id: u32, role: Role) -> Result<Token, MasterError> {
        let spawned = self.launcher.spawn(
            id,
            (&self.config.log_level, &self.config.log_format),
            &self.config_json,
        )?;
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
                pong: self.watchdog_seq,
            },
        );
        Ok(token)
    }

    /// Sends `order` to a process and arms its SIGKILL deadline.
    pub(super) fn order(&mut self, token: Token, order: Order) {
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

    /// SIGKILLs every process and waits for each (the loop failed: leave nothing behind).
    pub(super) fn kill_all(&mut self) {
        for p in self.procs.values() {
            let pid = Pid::from_raw(p.pid as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        self.procs.clear();
    }

    /// Collects every child that has exited, without blocking, and handles each exit.
    pub(super) fn reap(&mut self) {
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

    /// One process is gone: forgets it (channel, pending report answers, its slot's current
    /// process), then acts on what its death means in the master's phase and to its role —
    /// start-up fails, an unasked death is restarted after the back-off, and a death the
    /// reload waits for moves it on. The siblings learn if a ready process left.
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

    /// Restarts every dead id whose back-off is over at `now` (while running), except the id
    /// a reload is replacing: its candidate is already on the way.
    pub(super) fn restart_due(&mut self, now: Instant) {
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

    /// SIGKILLs every process that was ordered to stop or drain and has not exited by its
    /// deadline.
    pub(super) fn kill_overdue(&mut self, now: Instant) {
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
    }
}
