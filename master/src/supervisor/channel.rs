//! The control channel to each worker, from the master's side: sending a message (a worker
//! that does not read is not waited for), receiving what a worker says and acting on it, and
//! announcing the live workers to every worker so they can find their siblings.
//!
//! A worker says when it is ready, when it cannot listen, when it has closed its listeners
//! (a graceful reload waits for that), and answers `status` and `connections` requests; each
//! message goes to the concern that waits for it.

use super::reload::Wait;
use super::workers::Role;
use super::{Master, MasterError, Phase};
use herald_ipc::{ChannelError, Control, Peer};
use mio::event::Source;
use mio::Token;
use std::io;

impl Master {
    /// Drops a process's channel (the worker closed it, or it failed).
    fn close_channel(&mut self, token: Token) {
        if let Some(p) = self.procs.get_mut(&token) {
            if let Some(mut ch) = p.channel.take() {
                let _ = ch.deregister(self.poll.registry());
            }
        }
    }

    /// Queues and writes one message; `false` if the process cannot be told.
    pub(super) fn send(&mut self, token: Token, msg: &Control) -> bool {
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

    /// A worker's channel is readable or writable: reads every message it sent, flushes what
    /// is queued for it, closes the channel if the worker closed or broke it, then handles the
    /// messages.
    pub(super) fn on_channel(&mut self, token: Token) {
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

    /// Acts on one message from the process `token`: `Ready` finishes start-up or promotes a
    /// reload's candidate, `BindFailed` fails start-up, status and connections rows go to
    /// their request, `ListenersClosed` moves a graceful reload on.
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
            Control::Pong { seq } => p.pong = p.pong.max(seq),
            other => log::warn!("worker {id} (pid {pid}) sent an unexpected {other:?}"),
        }
    }

    /// Announces the live (ready) workers to every worker.
    pub(super) fn broadcast_peers(&mut self) {
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
}
