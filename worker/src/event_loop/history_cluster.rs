//! History in a cluster (`history_size` > 0 with `cluster`): a uid's history lives in Redis
//! (see `crate::cluster_history` for the layout and the scripts), so a client that comes back
//! on another host recovers. The per-host owner of `recovery` is not used: every worker
//! reaches Redis itself, through its bus's command thread (never from the loop).
//!
//! - A push for uids is one script that keeps it for each uid (its offset) and publishes it to
//!   every member holding one of them, this worker included: every positioned message a worker
//!   delivers comes on its one subscriber connection, in offset order. The entry waits for the
//!   number of members reached, then for their `Delivered` answers, as a bus push does. When
//!   Redis cannot be reached the push goes the way it goes without a history (this host, no
//!   position), so local delivery goes on.
//! - The questions `resume` and `sio_recovery` ask an owner (`ask_owner`, `ask_everyone`) are
//!   asked of Redis instead; the answers come back as the owners' would.
//! - A Socket.IO private id's binding is a Redis key living `recovery_window` (refreshed while
//!   its session lives), so it resolves on any node. Its recovery adds this member to the
//!   uid's holders in the same script that reads the history, so what is pushed after the read
//!   comes here; what comes before the session is logged in again is held for it.
//! - A group push and a broadcast to everyone (`all`) go to every member of the cluster, which
//!   writes them for its share of the uids (see `history_cluster_fan`): every uid gets its
//!   copy with a position, written once, and recovers it on any host.

use super::mesh::Job;
use super::push::To;
use super::query::QReply;
use super::resume::Waiter;
use super::{mono_ns, Worker};
use crate::cluster::BusCmd;
use crate::cluster_history::{parse_positioned, HistCmd, HistEvent, Limits};
use crate::delivery::{OP_BINARY, OP_TEXT};
use crate::gather::{Peers, Waiting};
use crate::history::MAX_RECOVERY_BYTES;
use crate::mesh::ReplyTo;
use crate::registry::Recipient;
use bytes::Bytes;
use herald_ipc::{HistoryMsg, Query, Share, Target, Whose};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Messages held for sessions being recovered by private id (beyond: not held, counted).
const MAX_HELD: usize = 10_000;
/// Private ids whose bindings are refreshed in one command.
const REFRESH_CHUNK: usize = 1000;
/// A `history` question gets its answer within this, or a partial one.
const READ_WAIT: Duration = Duration::from_secs(5);
/// Recovered messages delivered in one loop turn at most (past it, answers wait for the
/// next turn: a burst of recoveries does not hold the loop).
const TURN_BUDGET: usize = 20_000;
/// The link key standing for a push written here in chunks in a chunk's reply (see
/// `history_cluster_fan`): a group push or a broadcast for a member's entry, or a push to a
/// long list of uids.
pub(super) const MEMBER_LINK: usize = usize::MAX - 1;

/// A push waiting for Redis to say it was kept (or a group push or a broadcast to be
/// published), for the way without a history if not.
pub(super) struct Sent {
    /// Whom it is for: uids, groups, or everyone.
    pub(super) target: Target,
    /// Uids left out (a group push's or a broadcast's).
    pub(super) exclude: Vec<String>,
    /// The message.
    pub(super) payload: Bytes,
    /// A binary frame.
    pub(super) binary: bool,
    /// A member's share of a group push or a broadcast (uids): unkept, it goes to this
    /// worker's connections only (every member got the push).
    pub(super) here: bool,
    /// When it was sent (forgotten well after its entry gave up).
    pub(super) at: Instant,
}

/// The cluster history's state in a worker.
#[derive(Default)]
pub(super) struct State {
    /// Pushes waiting for their count, by entry id.
    pub(super) pushes: HashMap<u64, Sent>,
    /// `history` questions waiting for Redis, by their id: the uid, where the answer goes, and
    /// when it was asked.
    reads: HashMap<u64, (String, QReply, Instant)>,
    /// Next question id.
    next_read: u64,
    /// Recoveries by private id in flight (their ids).
    pid_asks: HashSet<u64>,
    /// While some are: positioned messages for uids with no recipient here, which may be a
    /// recovering session's (epoch, offset, payload, binary), by uid.
    held: HashMap<String, Vec<(u64, u64, Bytes, bool)>>,
    /// Messages in `held`.
    held_count: usize,
    /// When live sessions' bindings were last refreshed.
    refreshed: Option<Instant>,
    /// When the maps were last swept.
    swept: Option<Instant>,
    /// Pushes written here in chunks (group pushes and broadcasts for members' entries,
    /// pushes to long lists), and the uids that dropped recently (see `history_cluster_fan`).
    pub(super) fan: super::history_cluster_fan::Fan,
    /// Recovery answers waiting for a later loop turn ([`TURN_BUDGET`]).
    deferred: std::collections::VecDeque<HistoryMsg>,
    /// Recovered messages delivered in this loop turn.
    spent: usize,
}

/// The messages a recovery answer carries (at least 1: the answer itself costs).
fn weight(m: &HistoryMsg) -> usize {
    match m {
        HistoryMsg::Recovered { messages, .. } => messages.len().max(1),
        _ => 1,
    }
}

/// A fresh random epoch (never 0).
fn fresh_epoch() -> u64 {
    let mut e = [0u8; 8];
    if getrandom::fill(&mut e).is_err() {
        e = mono_ns().to_le_bytes();
    }
    u64::from_le_bytes(e).max(1)
}

impl Worker {
    /// The history lives in Redis.
    pub(super) fn cluster_history(&self) -> bool {
        self.bus.is_some() && self.hist.is_some()
    }

    /// The bounds of the history commands.
    fn limits(&self) -> Limits {
        Limits {
            size: self.cfg.history_size,
            ttl_ms: (self.cfg.history_ttl * 1000.0) as u64,
            window_s: self.cfg.recovery_window.ceil().max(1.0) as u64,
            max_bytes: (self.cfg.max_send_buffer / 2).min(MAX_RECOVERY_BYTES),
        }
    }

    /// Queues a history command; false (counted) when the bus cannot take it.
    fn hist_cmd(&mut self, c: HistCmd) -> bool {
        let sent = self
            .bus
            .as_ref()
            .is_some_and(|b| b.send(BusCmd::History(c)));
        if !sent {
            self.stats.cluster_dropped += 1;
        }
        sent
    }

    /// A push for `uids` (distinct, none excluded): kept and published by Redis in one step
    /// (one per chunk of uids past `WRITE_CHUNK`); the outcome to `reply` once every member
    /// reached answered.
    pub(super) fn ch_push(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        if uids.len() > super::history_cluster_fan::WRITE_CHUNK {
            return self.ch_push_chunked(uids, payload, binary, reply);
        }
        self.ch_write(uids, payload, binary, reply, String::new());
    }

    /// [`Worker::ch_push`] with a group push's token (empty: none).
    pub(super) fn ch_write(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
        token: String,
    ) {
        let started = Instant::now();
        let id = self.gather.next_id();
        let grouped = !token.is_empty();
        let cmd = HistCmd::Push {
            id,
            uids: uids.clone(),
            payload: payload.to_vec(),
            binary,
            lim: self.limits(),
            epoch: fresh_epoch(),
            token,
        };
        let sent = Sent {
            target: Target::Uids(uids),
            exclude: Vec::new(),
            payload: Bytes::copy_from_slice(payload),
            binary,
            here: grouped,
            at: started,
        };
        if !self.hist_cmd(cmd) {
            return self.ch_unkept(sent, reply);
        }
        self.ch_await(id, Some(sent), started, reply);
    }

    /// Push `id`, handed to Redis, waits as an entry of the gather for Redis's count of the
    /// members reached, then for their answers; `sent` is kept to deliver it without a history
    /// should Redis not publish it.
    pub(super) fn ch_await(
        &mut self,
        id: u64,
        sent: Option<Sent>,
        started: Instant,
        reply: ReplyTo,
    ) {
        if let (Some(h), Some(sent)) = (self.hist.as_mut(), sent) {
            h.ch.pushes.insert(id, sent);
        }
        let id = self.gather.add(Waiting {
            job: Job::Push {
                started,
                total: 0,
                reply,
            },
            peers: Peers::new(),
            deadline: started + super::ms(self.cfg.ipc_timeout),
            partial: false,
            remote: 0,
            remote_unknown: true,
        });
        self.progress(id);
    }

    /// Redis could not keep (or publish) a push: it goes the way without a history (this
    /// host's workers, no position; a member's share to this worker's connections).
    pub(super) fn ch_unkept(&mut self, s: Sent, reply: ReplyTo) {
        let Sent {
            target,
            exclude,
            payload,
            binary,
            here,
            ..
        } = s;
        match target {
            Target::Uids(uids) if here => self.ch_unkept_here(uids, &payload, binary, reply),
            target => self.plain_push(To::Target(target), exclude, &payload, binary, reply),
        }
    }

    /// A question `resume` or `sio_recovery` would ask an owner, asked of Redis; false when
    /// it cannot be sent (or is not one for Redis).
    pub(super) fn ch_ask(&mut self, m: HistoryMsg) -> bool {
        let lim = self.limits();
        let (cmd, pid_ask) = match m {
            HistoryMsg::Bind {
                pid,
                uid,
                sid,
                ended,
                by,
            } => (
                HistCmd::Bind {
                    pid,
                    uid,
                    sid,
                    by,
                    ended,
                    lim,
                },
                None,
            ),
            HistoryMsg::Recover {
                id,
                whose,
                epoch,
                offset,
                offline,
            } => {
                let by_pid = matches!(whose, Whose::Pid { .. });
                (
                    HistCmd::Recover {
                        id,
                        whose,
                        pos: epoch.zip(offset),
                        offline,
                        lim,
                        epoch: fresh_epoch(),
                    },
                    by_pid.then_some(id),
                )
            }
            _ => return false,
        };
        if !self.hist_cmd(cmd) {
            return false;
        }
        if let (Some(id), Some(h)) = (pid_ask, self.hist.as_mut()) {
            h.ch.pid_asks.insert(id);
        }
        true
    }

    /// `{"cmd":"history"}` and `GET /api/history/{uid}`: asked of Redis.
    pub(super) fn ch_query(&mut self, uid: String, reply: QReply) {
        let lim = self.limits();
        let Some(h) = self.hist.as_mut() else { return };
        h.ch.next_read += 1;
        let id = h.ch.next_read;
        let cmd = HistCmd::Read {
            id,
            uid: uid.clone(),
            lim,
        };
        if !self.hist_cmd(cmd) {
            return self.ch_read_answer(uid, reply, None);
        }
        if let Some(h) = self.hist.as_mut() {
            h.ch.reads.insert(id, (uid, reply, Instant::now()));
        }
    }

    /// A `history` answer (`None`: Redis could not answer: empty and partial).
    fn ch_read_answer(
        &mut self,
        uid: String,
        reply: QReply,
        kept: Option<(u64, u64, Vec<herald_ipc::Kept>)>,
    ) {
        let partial = kept.is_none();
        let (epoch, top, messages) = kept.unwrap_or_default();
        let share = Share::History {
            epoch,
            top,
            messages,
        };
        self.finish_query(&Query::History { uid }, &[share], reply, partial);
    }

    /// An answer from Redis.
    pub(super) fn ch_event(&mut self, ev: HistEvent) {
        match ev {
            HistEvent::Pushed { id, count } => {
                let sent = self.hist.as_mut().and_then(|h| h.ch.pushes.remove(&id));
                if count.is_some() {
                    if let Some(w) = self.gather.get_mut(id) {
                        w.remote_count(count);
                    }
                    return self.progress(id);
                }
                self.stats.cluster_dropped += 1;
                // Not kept: this host's part the way without a history, the entry's backend
                // answered from it.
                let Some(w) = self.gather.take(id) else {
                    return;
                };
                if let (Some(s), Job::Push { reply, .. }) = (sent, w.job) {
                    self.ch_unkept(s, reply);
                }
            }
            HistEvent::Recovered(m) => {
                let Some(h) = self.hist.as_mut() else { return };
                let w = weight(&m);
                if h.ch.deferred.is_empty() && (h.ch.spent == 0 || h.ch.spent + w <= TURN_BUDGET) {
                    h.ch.spent += w;
                    self.ch_recovered(m);
                } else {
                    h.ch.deferred.push_back(m);
                    // Come back at once (the next turn drains, see `ch_tick`).
                    self.bus_again = true;
                }
            }
            HistEvent::Read { id, kept } => {
                let Some((uid, reply, _)) = self.hist.as_mut().and_then(|h| h.ch.reads.remove(&id))
                else {
                    return;
                };
                self.ch_read_answer(uid, reply, kept);
            }
        }
    }

    /// A recovery's answer from Redis, handled as an owner's; a session recovered by private
    /// id also gets what was held for its uid meanwhile.
    fn ch_recovered(&mut self, m: HistoryMsg) {
        let HistoryMsg::Recovered { id, found, uid, .. } = &m else {
            return;
        };
        let (id, found, uid) = (*id, *found, uid.clone());
        let Some(h) = self.hist.as_mut() else { return };
        let by_pid = h.ch.pid_asks.remove(&id);
        let session = h.pending.get(&id).and_then(|p| match &p.what {
            Waiter::Session {
                idx,
                esid,
                pid: Some(_),
            } => Some((*idx, esid.clone())),
            _ => None,
        });
        self.on_recovered(m);
        if !by_pid {
            return;
        }
        let Some(h) = self.hist.as_mut() else { return };
        let held = h.ch.held.remove(&uid).unwrap_or_default();
        h.ch.held_count -= held.len();
        if h.ch.pid_asks.is_empty() {
            h.ch.held.clear();
            h.ch.held_count = 0;
        }
        if let Some((idx, esid)) = session {
            let here = self.sio.sessions.get(idx).map(|s| &s.sid) == Some(&esid);
            if here && self.registry.get(&uid).contains(&Recipient::session(idx)) {
                let r = Recipient::session(idx);
                for (e, o, payload, binary) in held {
                    let op = if binary { OP_BINARY } else { OP_TEXT };
                    let plain = crate::delivery::frame(op, &payload);
                    self.deliver_one(r, e, o, &payload, binary, &plain);
                }
            }
        }
        // The script made this member a holder of the uid: if nothing here holds it after
        // all, say so.
        if found && !uid.is_empty() && self.registry.get(&uid).is_empty() {
            self.cluster_presence(&uid, false);
        }
    }

    /// A positioned push on this member's channel (after its first byte): delivered here,
    /// answered to the member that wrote it.
    pub(super) fn ch_positioned(&mut self, m: &[u8]) {
        let Some(p) = parse_positioned(m) else {
            log::debug!("cluster history: unreadable positioned push");
            return;
        };
        let payload = Bytes::copy_from_slice(p.payload);
        let mut count = 0;
        for &(uid, epoch, offset) in &p.uids {
            // A session being recovered by private id may be this uid's: it is not logged in
            // yet, and gets these after its recovery (those it has are skipped by offset).
            if let Some(h) = self.hist.as_mut() {
                let ch = &mut h.ch;
                if !ch.pid_asks.is_empty() && ch.held_count < MAX_HELD {
                    ch.held.entry(uid.to_string()).or_default().push((
                        epoch,
                        offset,
                        payload.clone(),
                        p.binary,
                    ));
                    ch.held_count += 1;
                }
            }
            count += self.deliver_positioned(uid, epoch, offset, &payload, p.binary);
        }
        let (from, id) = (p.from.to_string(), p.id);
        self.ch_answer_member(from, id, count);
    }

    /// Once a loop turn (work once a second): live Socket.IO sessions' bindings are
    /// refreshed every third of `recovery_window`, and answers that never came are given up.
    pub(super) fn ch_tick(&mut self, now: Instant) {
        if !self.cluster_history() {
            return;
        }
        // A new turn: the recovery answers that waited go first, within the budget.
        if let Some(h) = self.hist.as_mut() {
            h.ch.spent = 0;
        }
        loop {
            let Some(h) = self.hist.as_mut() else { return };
            if h.ch.spent >= TURN_BUDGET {
                self.bus_again = true;
                break;
            }
            let Some(m) = h.ch.deferred.pop_front() else {
                break;
            };
            h.ch.spent += weight(&m);
            self.ch_recovered(m);
        }
        let lim = self.limits();
        let Some(h) = self.hist.as_mut() else { return };
        if h.ch.swept.is_some_and(|t| now < t + Duration::from_secs(1)) {
            return;
        }
        h.ch.swept = Some(now);
        let keep = Duration::from_secs(30).max(super::ms(self.cfg.ipc_timeout * 2.0));
        h.ch.pushes.retain(|_, s| now < s.at + keep);
        self.ch_fan_sweep(now, keep);
        let Some(h) = self.hist.as_mut() else { return };
        let late: Vec<u64> =
            h.ch.reads
                .iter()
                .filter(|(_, r)| now >= r.2 + READ_WAIT)
                .map(|(id, _)| *id)
                .collect();
        for id in late {
            if let Some((uid, reply, _)) = self.hist.as_mut().and_then(|h| h.ch.reads.remove(&id)) {
                self.ch_read_answer(uid, reply, None);
            }
        }
        let Some(h) = self.hist.as_mut() else { return };
        let every = Duration::from_secs((lim.window_s / 3).max(1));
        if h.ch.refreshed.is_some_and(|t| now < t + every) {
            return;
        }
        h.ch.refreshed = Some(now);
        let pids: Vec<String> = h
            .sessions
            .values()
            .filter(|s| s.uid.is_some())
            .map(|s| s.pid.clone())
            .collect();
        for chunk in pids.chunks(REFRESH_CHUNK) {
            self.hist_cmd(HistCmd::Refresh {
                pids: chunk.to_vec(),
                lim,
            });
        }
    }
}
