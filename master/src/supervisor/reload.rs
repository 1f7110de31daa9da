//! Reloading: the configuration is read again (an invalid one is shown and the running one
//! kept), then the workers are replaced one id at a time, so all but one keep serving. For
//! each id a *candidate* is spawned; once it is ready it becomes the id's process and the old
//! one stops (USR1) or drains (USR2, HUP); the next id starts when the old one has exited or
//! closed its listeners, or when the step's deadline passes. A candidate that dies or is not
//! ready in time leaves the old process serving. Ids no longer configured are retired at the
//! end, and a reload asked for during one runs again after it.

use super::workers::{Order, Role};
use super::{Master, Phase, READY_TIMEOUT};
use mio::Token;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the current reload step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// The candidate's `Ready`.
    NewReady,
    /// The stopped old process's exit (USR1).
    OldExit(Token),
    /// The draining old process's `ListenersClosed` (USR2, HUP).
    ListenersClosed(Token),
}

/// Replacing one worker id.
pub(super) struct Step {
    /// The id being replaced.
    pub(super) id: u32,
    /// The candidate, to promote once it is ready (or to kill if it is late).
    pub(super) new: Token,
    /// What is awaited before the next id.
    pub(super) wait: Wait,
    /// When to stop waiting, so one stuck process cannot hold up the reload.
    pub(super) deadline: Instant,
}

/// A reload in progress: one id at a time.
pub(super) struct Reload {
    /// USR2/HUP (old drains) rather than USR1 (old stops).
    graceful: bool,
    /// Ids still to replace, in order.
    queue: VecDeque<u32>,
    /// The id being replaced now; `None` between steps.
    pub(super) step: Option<Step>,
}

impl Master {
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

    /// Starts a reload (`graceful`: old processes drain rather than stop), or, during one,
    /// remembers to run another after it. Ignored during start-up and while stopping.
    pub(super) fn start_reload(&mut self, graceful: bool) {
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
        self.reopen_log();
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
    pub(super) fn next_step(&mut self) {
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
    pub(super) fn promote(&mut self, token: Token) {
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

    /// The current step waited past its deadline at `now`: a candidate that never got ready
    /// is killed (the old process keeps serving), an old process that did not confirm is left
    /// to its own SIGKILL deadline, and the reload goes on to the next id.
    pub(super) fn reload_deadline(&mut self, now: Instant) {
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
    }

    /// Every id is replaced: retires the ids no longer configured, tells systemd the master
    /// is ready again, and runs the reload asked for meanwhile, if any.
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

    /// With `start -d`: opens the log file again (logrotate moved the old one away) and points
    /// stdout and stderr at it; the workers this reload starts inherit it.
    fn reopen_log(&mut self) {
        let Some(path) = &self.log_file else { return };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        match file {
            Ok(f) => {
                let res = nix::unistd::dup2_stdout(&f).and_then(|()| nix::unistd::dup2_stderr(&f));
                match res {
                    Ok(()) => log::info!("log file {} opened again", path.display()),
                    Err(e) => log::warn!("cannot switch to log file {}: {e}", path.display()),
                }
            }
            Err(e) => log::warn!(
                "cannot open log file {} again: {e}; keeping the old one",
                path.display()
            ),
        }
    }
}
