//! The `status` and `connections` requests (SIGIOT and SIGIO): the master asks every worker
//! that can still hear for its rows, collects the replies in a [`Gather`] until all are in or
//! [`GATHER_TIMEOUT`] passes, then writes the report beside the pid file (or to
//! `status_file`), atomically. A worker that dies meanwhile is dropped from the gather; one
//! that does not answer in time is reported as silent. [`crate::report`] formats the
//! report; this module only asks, waits and writes.

use super::Master;
use crate::report::{self, Answer, Global, SlotInfo};
use herald_ipc::Control;
use mio::Token;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How long `status` and `connections` wait for the workers' answers.
const GATHER_TIMEOUT: Duration = Duration::from_secs(1);

/// A status or connections request in flight.
pub(super) struct Gather<T> {
    /// Request number, echoed by the replies.
    pub(super) seq: u64,
    /// Write the report with whatever came by then.
    pub(super) deadline: Instant,
    /// One entry per process asked, keyed by token.
    pub(super) answers: BTreeMap<usize, Answer<T>>,
}

impl<T> Gather<T> {
    /// Every process asked has answered.
    fn complete(&self) -> bool {
        self.answers.values().all(|a| a.reply.is_some())
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

    /// Asks every worker for its status row, unless a status request is already in flight.
    pub(super) fn start_status(&mut self) {
        if self.status.is_none() {
            let g = self.start_gather(|seq| Control::StatusRequest { seq });
            self.status = Some(g);
            self.finish_gathers(false);
        }
    }

    /// Asks every worker for its connection rows, unless a connections request is already in
    /// flight.
    pub(super) fn start_connections(&mut self) {
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
    pub(super) fn finish_gathers(&mut self, timers: bool) {
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
