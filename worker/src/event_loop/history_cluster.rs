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
//! - A group push goes to every member of the cluster (`P:all`, first byte
//!   [`GROUP`]); each writes the push for the group's members it holds, with the group push's
//!   name as a token, so that a uid held by several workers is written once (the first), and
//!   answers the entry with the count its write reached. A member held nowhere is not written
//!   (it cannot be found cheaply). `all` is delivered as without a history (no position).
//!
//! [`GROUP`]: crate::cluster_history::GROUP

use super::mesh::Job;
use super::query::QReply;
use super::resume::Waiter;
use super::{mono_ns, Worker};
use crate::cluster::{envelope, open_envelope, BusCmd};
use crate::cluster_history::{parse_positioned, HistCmd, HistEvent, Limits, GROUP};
use crate::delivery::{OP_BINARY, OP_TEXT};
use crate::gather::{Peers, Waiting};
use crate::history::MAX_RECOVERY_BYTES;
use crate::mesh::ReplyTo;
use crate::registry::Recipient;
use bytes::Bytes;
use herald_ipc::codec::{read_frame, write_frame};
use herald_ipc::{HistoryMsg, PeerMsg, Push, Query, Share, Whose};
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
/// The link key standing for a member of the cluster in a relay entry's reply (see
/// `sibling_settled`): a group push written here for another member's entry.
pub(super) const MEMBER_LINK: usize = usize::MAX - 1;

/// A push waiting for Redis to say it was kept (or a group push to be published), for the
/// way without a history if not.
struct Sent {
    /// Whom it is for: uids, or the groups of a group push.
    uids: Vec<String>,
    /// The message.
    payload: Bytes,
    /// A binary frame.
    binary: bool,
    /// When it was sent (forgotten well after its entry gave up).
    at: Instant,
}

/// The cluster history's state in a worker.
#[derive(Default)]
pub(super) struct State {
    /// Pushes waiting for their count, by entry id.
    pushes: HashMap<u64, Sent>,
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
    /// Group pushes written here for a member's entry, by this worker's relay id: the member
    /// and its entry's id, answered when the write's count is known.
    relays: HashMap<u64, (String, u64, Instant)>,
    /// Next relay id.
    next_relay: u64,
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

    /// A push for `uids` (distinct, none excluded): kept and published by Redis in one step;
    /// the outcome to `reply` once every member reached answered.
    pub(super) fn ch_push(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        self.ch_write(uids, payload, binary, reply, String::new());
    }

    /// [`Worker::ch_push`] with a group push's token (empty: none).
    fn ch_write(
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
        if !self.hist_cmd(cmd) {
            if grouped {
                // Every member delivers its own part without a history.
                return self.ch_unkept_here(uids, payload, binary, reply);
            }
            return self.ch_unkept(uids, payload, binary, reply);
        }
        let sent = (!grouped).then(|| Sent {
            uids,
            payload: Bytes::copy_from_slice(payload),
            binary,
            at: started,
        });
        self.ch_await(id, sent, started, reply);
    }

    /// Push `id`, handed to Redis, waits as an entry of the gather for Redis's count of the
    /// members reached, then for their answers; `sent` is kept to deliver it without a history
    /// should Redis not publish it.
    fn ch_await(&mut self, id: u64, sent: Option<Sent>, started: Instant, reply: ReplyTo) {
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

    /// Redis could not keep a push: it goes the way without a history (this host's workers,
    /// no position).
    fn ch_unkept(&mut self, uids: Vec<String>, payload: &[u8], binary: bool, reply: ReplyTo) {
        self.plain_push(
            super::push::To::Target(herald_ipc::Target::Uids(uids)),
            Vec::new(),
            payload,
            binary,
            reply,
        );
    }

    /// A group push's part, unkept, delivered to this worker's connections only (each
    /// member of the cluster got the group push).
    fn ch_unkept_here(&mut self, uids: Vec<String>, payload: &[u8], binary: bool, reply: ReplyTo) {
        let target = super::push::To::Target(herald_ipc::Target::Uids(uids));
        let n = self.deliver_local(&target, &[], payload, binary);
        self.settle(reply, n, true);
    }

    /// A group push with the history in Redis: to every member of the cluster, which writes
    /// it for the members it holds; the outcome to `reply` once every member answered.
    pub(super) fn ch_group_push(
        &mut self,
        groups: Vec<String>,
        exclude: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        let started = Instant::now();
        let id = self.gather.next_id();
        let msg = PeerMsg::Push(Push {
            id,
            deadline: u64::MAX,
            target: herald_ipc::Target::Groups(groups.clone()),
            exclude: exclude.clone(),
            payload: payload.to_vec(),
            binary,
        });
        let mut frame = Vec::new();
        let env = match (&self.bus, write_frame(&msg, &mut frame)) {
            (Some(b), Ok(())) => {
                let mut env = vec![GROUP];
                env.extend(envelope(&b.member, &frame));
                Some(env)
            }
            _ => None,
        };
        // On the loop's own link when it is up, as any broadcast.
        let sent = env.is_some_and(|env| self.bus_send(BusCmd::Broadcast { id, env }));
        if !sent {
            self.stats.cluster_dropped += 1;
            let target = super::push::To::Target(herald_ipc::Target::Groups(groups));
            return self.plain_push(target, exclude, payload, binary, reply);
        }
        let sent = Sent {
            uids: groups,
            payload: Bytes::copy_from_slice(payload),
            binary,
            at: started,
        };
        self.ch_await(id, Some(sent), started, reply);
    }

    /// A group push could not be published (Redis down): delivered the way without a
    /// history. True when `id` was one.
    pub(super) fn ch_unpublished(&mut self, id: u64) -> bool {
        let Some(s) = self.hist.as_mut().and_then(|h| h.ch.pushes.remove(&id)) else {
            return false;
        };
        self.stats.cluster_dropped += 1;
        if let Some(w) = self.gather.take(id) {
            if let Job::Push { reply, .. } = w.job {
                let target = super::push::To::Target(herald_ipc::Target::Groups(s.uids));
                self.plain_push(target, Vec::new(), &s.payload, s.binary, reply);
            }
        }
        true
    }

    /// A group push from a member (after its first byte): written for the group's members
    /// held here; the count answered to that member.
    pub(super) fn ch_group_message(&mut self, env: &[u8]) {
        let Some((from, body)) = open_envelope(env) else {
            return;
        };
        let Ok(Some((PeerMsg::Push(p), _))) = read_frame::<PeerMsg>(body) else {
            log::debug!("cluster history: unreadable group push from {from}");
            return;
        };
        let from = from.to_string();
        let herald_ipc::Target::Groups(groups) = &p.target else {
            return;
        };
        // Every member writes the group's members it holds a connection of; the entry also
        // writes those nobody may hold (membership is known everywhere, connections are not):
        // a member dropped for a moment is then kept too, and recovers what it missed. The
        // push's token keeps one copy per uid, whoever writes first.
        let entry = self.bus.as_ref().is_some_and(|b| b.member == from);
        let mut seen: HashSet<&str> = HashSet::new();
        let mut uids = Vec::new();
        for g in groups {
            for u in self.groups.members(g) {
                if !p.exclude.iter().any(|e| e == u)
                    && (entry || !self.registry.get(u).is_empty())
                    && seen.insert(u)
                {
                    uids.push(u.to_string());
                }
            }
        }
        if uids.is_empty() {
            return self.ch_answer_member(from, p.id, 0);
        }
        let Some(h) = self.hist.as_mut() else { return };
        h.ch.next_relay += 1;
        let rid = h.ch.next_relay;
        let token = format!("{from}/{}", p.id);
        h.ch.relays.insert(rid, (from, p.id, Instant::now()));
        let reply = ReplyTo::Sibling {
            key: MEMBER_LINK,
            id: rid,
        };
        self.ch_write(uids, &p.payload, p.binary, reply, token);
    }

    /// A group push written here for a member's entry reached `total` connections.
    pub(super) fn ch_relay_settled(&mut self, rid: u64, total: u32) {
        let Some((from, id, _)) = self.hist.as_mut().and_then(|h| h.ch.relays.remove(&rid)) else {
            return;
        };
        self.ch_answer_member(from, id, total);
    }

    /// Answers member `to`'s entry `id` with a count (this member's own entry directly).
    fn ch_answer_member(&mut self, to: String, id: u64, count: u32) {
        let Some(bus) = &self.bus else { return };
        if to == bus.member {
            return self.remote_delivered(id, count);
        }
        self.bus_send_msg(&to, &PeerMsg::Delivered { id, count });
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
                    self.ch_unkept(s.uids, &s.payload, s.binary, reply);
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
        h.ch.relays.retain(|_, r| now < r.2 + keep);
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
