//! History in the loop (with `history_size` > 0): where a uid's history lives, how a push is
//! recorded there, and how the owner answers the questions of its siblings. What clients see
//! of it (Socket.IO recovery, the WebSocket `since` and envelope, offline delivery) is in
//! `resume`.
//!
//! DESIGN — one owner per uid: a uid may have connections in several workers, and a client
//! that reconnects may land in any of them, so its history must be one sequence. Each uid's
//! history is kept by one worker, its owner: worker `uid_hash(uid) % workers` (with two
//! processes on that id during a graceful reload, the larger pid, the same choice in every
//! worker). A push for uids (a group push is made a push for its members here, since every
//! worker knows the groups) goes to each uid's owner (`PeerMsg::Route`); the owner records
//! it, which gives it its offset, delivers it to its own connections, and sends it with the
//! offsets to the siblings holding the uid (`PeerMsg::Positioned`). Every positioned message
//! for a uid therefore leaves one worker, in offset order, on one link per sibling: a client
//! sees its offsets grow. The owner answers the entry worker's `Route` with the whole count
//! once its siblings answered, so `ok`/`fail` keep their meaning. A broadcast to `all` is
//! kept by every worker for the uids it owns (see `history_all`).
//!
//! Graceful reload: a draining owner hands its store to the new worker with its worker id
//! (`HistoryMsg::Handover`, in pieces); streams keep their epoch, and the new store's offset
//! counter continues above the old one.
//!
//! Recovery: the client's worker asks the owner (`HistoryMsg::Recover`); the owner answers
//! on its own link to that worker (`Recovered`), so that every push it records afterwards
//! follows the answer on the same link, and marks the uid as held there at once (the
//! asker's presence may come later). The answer's messages come first, then live ones.

use super::mesh::{Holders, Job};
use super::{mono_ns, Worker};
use crate::delivery::{frame, OP_BINARY, OP_TEXT};
use crate::gather::{Peers, Waiting};
use crate::history::{Found, History, Refusal};
use crate::mesh::ReplyTo;
use crate::presence::bucket;
use bytes::Bytes;
use herald_ipc::{history_owner, HistoryMsg, Kept, PeerMsg, Push, Share, Target, Whose};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::push::To;
use super::resume::{ConnState, Pending, SioState};

/// Where a push kept by its owner goes next (see `Worker::next_step`).
enum Next {
    /// Nowhere: its count is answered.
    Settled,
    /// Back to the sibling that routed it, in the answer.
    Answer {
        /// That sibling's pid.
        asker: u32,
        /// Its link (where the `Route` came).
        key: usize,
        /// The `Route`'s id.
        id: u64,
    },
    /// To every sibling that may hold one of its uids.
    Siblings,
}

/// The positions of a push's uids (one, inline, for the usual unicast).
type Positions = smallvec::SmallVec<[(u64, u64); 1]>;

/// The link key standing for this worker itself in a gather entry (the entry worker's own
/// share of a push whose uids it owns).
pub(super) const SELF_LINK: usize = usize::MAX;

/// The history state of a worker.
pub(super) struct Recovery {
    /// The messages of the uids this worker owns, and the Socket.IO bindings.
    pub(super) store: History,
    /// The store's clock origin (milliseconds from it).
    clock: Instant,
    /// Next recovery id.
    pub(super) next_id: u64,
    /// Recoveries waiting for an owner's answer, by id.
    pub(super) pending: HashMap<u64, Pending>,
    /// WebSocket connections that asked for positions (`envelope`, `since`), by slot.
    pub(super) conns: HashMap<usize, ConnState, foldhash::fast::RandomState>,
    /// Socket.IO sessions with a private id, by session index.
    pub(super) sessions: HashMap<usize, SioState, foldhash::fast::RandomState>,
    /// A login being completed by a recovery (it asks the owner nothing more).
    pub(super) recovering: bool,
    /// When the store was last swept (store milliseconds).
    last_sweep: u64,
    /// Draining: the history is to be handed to the worker replacing this one, as soon as
    /// it is known and linked.
    pub(super) handover_due: bool,
    /// Until when a draining worker with no connection left stays to hand its history over
    /// (its clients may all be away, and want it back on the new worker).
    pub(super) handover_by: Option<Instant>,
    /// In a cluster, where the history lives in Redis: what waits for it.
    pub(super) ch: super::history_cluster::State,
}

impl Recovery {
    /// The state for a configuration with a history.
    pub(super) fn new(cfg: &crate::config::Config) -> Recovery {
        let mut e = [0u8; 8];
        if getrandom::fill(&mut e).is_err() {
            // The clock's nanoseconds still differ between two starts.
            e = mono_ns().to_le_bytes();
        }
        // Never 0: a position of epoch 0 means "none".
        let epoch = u64::from_le_bytes(e).max(1);
        Recovery {
            store: History::new(
                cfg.history_size,
                (cfg.history_ttl * 1000.0) as u64,
                cfg.history_max_bytes,
                epoch,
            ),
            clock: Instant::now(),
            next_id: 1,
            pending: HashMap::new(),
            conns: HashMap::default(),
            sessions: HashMap::default(),
            recovering: false,
            last_sweep: 0,
            handover_due: false,
            handover_by: None,
            ch: Default::default(),
        }
    }

    /// Milliseconds on the store's clock.
    pub(super) fn ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

/// A kept message as it crosses the mesh.
pub(super) fn kept(found: Found) -> (u64, Vec<Kept>) {
    let top = found.top;
    let list = found
        .messages
        .into_iter()
        .map(|e| Kept {
            offset: e.offset,
            payload: e.payload.to_vec(),
            binary: e.binary,
        })
        .collect();
    (top, list)
}

impl Worker {
    /// The pid of the worker that owns `uid`'s history (this worker's own when alone).
    pub(super) fn history_owner_pid(&self, uid: &str) -> Option<u32> {
        self.owning_pid(history_owner(uid, self.cfg.worker_count()))
    }

    /// The pid that owns the history of worker number `w`'s share of the uids.
    pub(super) fn owning_pid(&self, w: u32) -> Option<u32> {
        // This worker is a candidate too: while the master's list still names the worker it
        // replaced (same number, smaller pid), the larger pid, this one, owns the uid.
        let mine = (w == self.id).then_some(self.pid);
        self.peers
            .iter()
            .filter(|p| p.worker == w)
            .map(|p| p.pid)
            .chain(mine)
            .max()
    }

    /// A push for uids or groups with a history: each uid's part goes to its owner (here, or
    /// a sibling), and the outcome to `reply` once every owner answered with its count.
    pub(super) fn history_push(
        &mut self,
        target: To<'_>,
        exclude: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        let started = Instant::now();
        let uids = match &target {
            // The seeds' unicast: one uid, nothing to exclude or deduplicate; kept and
            // delivered here when this worker owns it.
            To::Uid(u) if exclude.is_empty() => {
                if !self.cluster_history() {
                    match self.history_owner_pid(u) {
                        Some(o) if o == self.pid => {
                            return self.owner_push_uid(u, payload, binary, reply)
                        }
                        Some(o) => {
                            if let Some(n) = self.deliver_here_and_record(u, o, payload, binary) {
                                return self.settle_timed(reply, n, false, started);
                            }
                        }
                        None => {}
                    }
                }
                vec![u.to_string()]
            }
            _ => self.history_uids(&target, &exclude),
        };
        if uids.is_empty() {
            return self.settle_timed(reply, 0, false, started);
        }
        if self.cluster_history() {
            return self.ch_push(uids, payload, binary, reply);
        }
        let mut parts: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut missing = 0;
        for u in uids {
            match self.history_owner_pid(&u) {
                Some(pid) => parts.entry(pid).or_default().push(u),
                None => missing += 1,
            }
        }
        // Every uid is this worker's own: recorded and delivered here, answered directly.
        if missing == 0 && parts.len() == 1 {
            if let Some(list) = parts.remove(&self.pid) {
                return self.owner_push(list, payload, binary, reply);
            }
        }
        let id = self.gather.next_id();
        let own = parts.remove(&self.pid);
        let mut peers = Peers::new();
        for (pid, list) in parts {
            let key = self.link_to(pid);
            let msg = PeerMsg::Route(self.uids_push(id, list, payload, binary));
            let sent = self.send_to_sibling(pid, &msg);
            match key {
                Some(k) if sent => peers.push(k),
                _ => missing += 1,
            }
        }
        if own.is_some() {
            peers.push(SELF_LINK);
        }
        self.stats.ipc_undelivered += missing as u64;
        let id = self.gather.add(Waiting {
            job: Job::Push {
                started,
                total: 0,
                reply,
            },
            peers,
            deadline: started + super::ms(self.cfg.ipc_timeout),
            partial: missing > 0,
            remote: 0,
            remote_unknown: false,
        });
        if let Some(list) = own {
            self.owner_push(
                list,
                payload,
                binary,
                ReplyTo::Sibling { key: SELF_LINK, id },
            );
        }
        self.progress(id);
    }

    /// A push for `uid`, owned by sibling `owner`, whose connections are all here and want no
    /// position (no other worker, the owner included, may hold one): delivered here at once,
    /// and sent to the owner only to be kept (`Record`, one message, no answer) instead of the
    /// owner's round trip; how many got it. `None` (nothing done) when that does not apply.
    fn deliver_here_and_record(
        &mut self,
        uid: &str,
        owner: u32,
        payload: &[u8],
        binary: bool,
    ) -> Option<u32> {
        let here = self.registry.get(uid);
        if here.is_empty() || here.iter().any(|&r| self.is_positioned(r)) {
            return None;
        }
        let holders = Holders::Uid(uid);
        if self.holding_siblings(holders).0 > 0 || self.unlinked_peers(holders) > 0 {
            return None;
        }
        let msg = PeerMsg::Record(self.uids_push(0, vec![uid.to_string()], payload, binary));
        if !self.send_to_sibling(owner, &msg) {
            return None;
        }
        Some(self.deliver_local(&To::Uid(uid), &[], payload, binary))
    }

    /// The distinct uids a push for `target` names, without `exclude`.
    fn history_uids<'a>(&'a self, target: &'a To<'_>, exclude: &[String]) -> Vec<String> {
        let excluded: HashSet<&str> = exclude.iter().map(String::as_str).collect();
        let mut uids: Vec<String> = Vec::new();
        let mut seen: HashSet<&'a str> = HashSet::new();
        let mut add = |u: &'a str| {
            if !excluded.contains(u) && seen.insert(u) {
                uids.push(u.to_string());
            }
        };
        match target {
            To::Uid(u) => add(u),
            To::Target(Target::Uids(list)) => list.iter().for_each(|u| add(u)),
            To::Target(Target::Groups(groups)) => {
                for g in groups {
                    for u in self.groups.members(g) {
                        add(u);
                    }
                }
            }
            To::Target(Target::All) => {}
        }
        uids
    }

    /// This worker owns `uids`: records the push (each uid gets its offset), delivers it here,
    /// and sends it with the offsets to the siblings that may hold one of them.
    pub(super) fn owner_push(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        let started = Instant::now();
        let Some((positions, local)) =
            self.keep_and_deliver(uids.iter().map(String::as_str), payload, binary)
        else {
            return self.settle(reply, 0, true);
        };
        match self.next_step(Holders::Uids(&uids), local, started, reply) {
            Next::Settled => {}
            Next::Answer { asker, key, id } => {
                self.answer_positioned(asker, key, id, uids, positions, local, payload, binary)
            }
            Next::Siblings => {
                self.send_positioned(uids, positions, local, payload, binary, started, reply)
            }
        }
    }

    /// [`Worker::owner_push`] for one uid borrowed from the line that named it (the seeds'
    /// unicast): nothing is allocated for the uid unless a sibling may hold it.
    fn owner_push_uid(&mut self, uid: &str, payload: &[u8], binary: bool, reply: ReplyTo) {
        let started = Instant::now();
        let Some((positions, local)) = self.keep_and_deliver(std::iter::once(uid), payload, binary)
        else {
            return self.settle(reply, 0, true);
        };
        // Entered here: never an answer to a sibling.
        if let Next::Siblings = self.next_step(Holders::Uid(uid), local, started, reply) {
            let uids = vec![uid.to_string()];
            self.send_positioned(uids, positions, local, payload, binary, started, reply);
        }
    }

    /// The siblings linked to this worker that may hold one of `uids`: how many, and the pid
    /// of one of them (those without a link are `unlinked_peers`).
    fn holding_siblings(&self, uids: Holders<'_>) -> (usize, Option<u32>) {
        let mut n = 0;
        let mut one = None;
        for (_, l) in self.links.iter() {
            if l.outbound && self.may_hold(l.peer_pid, uids) {
                n += 1;
                one = Some(l.peer_pid);
            }
        }
        (n, one)
    }

    /// Where a push kept and delivered here (`local` connections) goes next. No sibling may
    /// hold one of `uids`: `reply` has the count now. Only the sibling that routed it here
    /// may: it goes back in the answer. Else to every sibling that may hold one.
    fn next_step(
        &mut self,
        uids: Holders<'_>,
        local: u32,
        started: Instant,
        reply: ReplyTo,
    ) -> Next {
        let (holding, one) = self.holding_siblings(uids);
        let missing = self.unlinked_peers(uids);
        if holding == 0 {
            self.stats.ipc_undelivered += missing as u64;
            self.settle_timed(reply, local, missing > 0, started);
            return Next::Settled;
        }
        if let (1, Some(asker), 0, ReplyTo::Sibling { key, id }) = (holding, one, missing, reply) {
            if self.links.get(key).is_some_and(|l| l.peer_pid == asker) {
                return Next::Answer { asker, key, id };
            }
        }
        Next::Siblings
    }

    /// Answers sibling `asker`'s `Route` (`id`, on its link `key`) with the push and its
    /// positions (`PositionedAnswer`), on this worker's own link to it, behind the other
    /// positioned messages sent there.
    #[allow(clippy::too_many_arguments)]
    fn answer_positioned(
        &mut self,
        asker: u32,
        key: usize,
        id: u64,
        uids: Vec<String>,
        positions: Positions,
        local: u32,
        payload: &[u8],
        binary: bool,
    ) {
        let msg = PeerMsg::PositionedAnswer {
            count: local,
            push: self.uids_push(id, uids, payload, binary),
            positions: positions.into_vec(),
        };
        if !self.send_to_sibling(asker, &msg) {
            // Its part could not be sent: the asker hears the owner's count alone.
            self.stats.ipc_undelivered += 1;
            self.answer_link(key, PeerMsg::Delivered { id, count: local });
        }
    }

    /// Keeps a push for `uids` (each gets its offset) and delivers it to their connections
    /// here: the positions, and how many got it (`None` without a history).
    fn keep_and_deliver<'a>(
        &mut self,
        uids: impl Iterator<Item = &'a str> + Clone,
        payload: &[u8],
        binary: bool,
    ) -> Option<(Positions, u32)> {
        let h = self.hist.as_mut()?;
        let now = h.ms();
        // One allocation for the frame and the kept payload, a view into it.
        let plain = frame(if binary { OP_BINARY } else { OP_TEXT }, payload);
        let shared = plain.slice(plain.len() - payload.len()..);
        let mut positions = Positions::new();
        for u in uids.clone() {
            let online =
                !self.registry.get(u).is_empty() || self.views.values().any(|v| v.may_hold(u));
            let offset = h.store.append(u, shared.clone(), binary, online, now);
            positions.push((h.store.epoch_of(u), offset));
        }
        let mut local = 0;
        for (u, &(e, o)) in uids.zip(&positions) {
            local += self.deliver_positioned_framed(u, e, o, &shared, binary, &plain);
        }
        Some((positions, local))
    }

    /// Sends a kept push with its positions to the siblings that may hold one of `uids`;
    /// the whole count to `reply` once they answered.
    #[allow(clippy::too_many_arguments)]
    fn send_positioned(
        &mut self,
        uids: Vec<String>,
        positions: Positions,
        local: u32,
        payload: &[u8],
        binary: bool,
        started: Instant,
        reply: ReplyTo,
    ) {
        let msg = PeerMsg::Positioned {
            push: self.uids_push(self.gather.next_id(), uids, payload, binary),
            positions: positions.into_vec(),
        };
        let job = Job::Push {
            started,
            total: local,
            reply,
        };
        let holders = match &msg {
            PeerMsg::Positioned {
                push:
                    Push {
                        target: Target::Uids(u),
                        ..
                    },
                ..
            } => Holders::Uids(u),
            _ => Holders::All,
        };
        self.fan_out(&msg, job, holders);
    }

    /// The count of a push a sibling (or this worker, `SELF_LINK`) owned is known.
    pub(super) fn sibling_settled(&mut self, key: usize, id: u64, total: u32) {
        if key == super::history_cluster::MEMBER_LINK {
            return self.ch_relay_settled(id, total);
        }
        if key != SELF_LINK {
            return self.answer_link(key, PeerMsg::Delivered { id, count: total });
        }
        if let Some(w) = self.gather.answered(id, SELF_LINK) {
            if let Job::Push { total: t, .. } = &mut w.job {
                *t += total;
            }
        }
        self.progress(id);
    }

    /// A history message from the sibling on link `key`.
    pub(super) fn history_link_msg(&mut self, key: usize, m: PeerMsg) {
        match m {
            PeerMsg::Route(p) => {
                if mono_ns() > p.deadline || self.hist.is_none() {
                    self.stats.late_dropped += 1;
                    return self.answer_link(key, PeerMsg::Delivered { id: p.id, count: 0 });
                }
                let Target::Uids(uids) = p.target else {
                    return self.answer_link(key, PeerMsg::Delivered { id: p.id, count: 0 });
                };
                let reply = ReplyTo::Sibling { key, id: p.id };
                self.owner_push(uids, &p.payload, p.binary, reply);
            }
            PeerMsg::Positioned { push, positions } => {
                let mut count = 0;
                if mono_ns() > push.deadline {
                    self.stats.late_dropped += 1;
                } else if let Target::Uids(uids) = &push.target {
                    let shared = Bytes::from(push.payload);
                    for (u, &(e, o)) in uids.iter().zip(&positions) {
                        count += self.deliver_positioned(u, e, o, &shared, push.binary);
                    }
                }
                self.answer_link(key, PeerMsg::Delivered { id: push.id, count });
            }
            PeerMsg::Record(p) => {
                if let Target::Uids(uids) = p.target {
                    let kept = self.keep_and_deliver(
                        uids.iter().map(String::as_str),
                        &p.payload,
                        p.binary,
                    );
                    if kept.is_none() {
                        self.stats.late_dropped += 1;
                    }
                }
            }
            PeerMsg::PositionedAnswer {
                count,
                push,
                positions,
            } => {
                // The answer to this worker's `Route`, sent on the owner's own link: the
                // gather entry waits on this worker's link to the owner.
                let from = self.links.get(key).map_or(0, |l| l.peer_pid);
                let mut total = count;
                if mono_ns() > push.deadline {
                    self.stats.late_dropped += 1;
                } else if let Target::Uids(uids) = &push.target {
                    let shared = Bytes::from(push.payload);
                    for (u, &(e, o)) in uids.iter().zip(&positions) {
                        total += self.deliver_positioned(u, e, o, &shared, push.binary);
                    }
                }
                let out = self.link_to(from).unwrap_or(key);
                if let Some(w) = self.gather.answered(push.id, out) {
                    if let Job::Push { total: t, .. } = &mut w.job {
                        *t += total;
                    }
                }
                self.progress(push.id);
            }
            PeerMsg::AllPositioned {
                epoch,
                offset,
                exclude,
                binary,
                payload,
            } => {
                let from = self.links.get(key).map_or(0, |l| l.peer_pid);
                let payload = Bytes::from(payload);
                self.deliver_broadcast_positioned(from, epoch, offset, &exclude, &payload, binary);
            }
            PeerMsg::History(h) => {
                let asker = self.links.get(key).map_or(0, |l| l.peer_pid);
                match self.as_owner(h, asker) {
                    Ok(Some(a)) => self.send_to_pid(asker, key, PeerMsg::History(a)),
                    Ok(None) => {}
                    Err(r @ HistoryMsg::Recovered { .. }) => self.on_recovered(r),
                    Err(HistoryMsg::Handover {
                        counter,
                        streams,
                        bindings,
                    }) => {
                        // Only from the worker this one replaces (the same worker id).
                        let from = self.links.get(key).map(|l| l.peer_worker);
                        if from != Some(self.id) {
                            log::warn!("history handed over by worker {from:?}: ignored");
                            return;
                        }
                        if let Some(h) = self.hist.as_mut() {
                            let now = h.ms();
                            let n = h.store.adopt(counter, streams, bindings, now);
                            log::info!("history: {n} uids' history taken over from pid {asker}");
                        }
                    }
                    // A binding and a recovery are taken by `as_owner`.
                    Err(HistoryMsg::Bind { .. } | HistoryMsg::Recover { .. }) => {}
                }
            }
            _ => {}
        }
    }

    /// A question for this worker as the owner of a uid's history, from `asker`: a binding is
    /// recorded (`Ok(None)`), a recovery answered (`Ok(Some(answer))`); any other message is
    /// given back (`Err`).
    fn as_owner(&mut self, m: HistoryMsg, asker: u32) -> Result<Option<HistoryMsg>, HistoryMsg> {
        match m {
            HistoryMsg::Bind {
                pid,
                uid,
                sid,
                ended,
                by,
            } => {
                self.history_bind(&pid, &uid, &sid, &by, ended);
                Ok(None)
            }
            HistoryMsg::Recover {
                id,
                whose,
                epoch,
                offset,
                offline,
            } => Ok(Some(
                self.answer_recover(id, whose, epoch, offset, offline, asker),
            )),
            other => Err(other),
        }
    }

    /// Sends `m` to sibling `pid` on this worker's own link to it (so it follows the pushes
    /// sent there), or on link `key` when there is none.
    fn send_to_pid(&mut self, pid: u32, key: usize, m: PeerMsg) {
        let out = self.link_to(pid).unwrap_or(key);
        self.answer_link(out, m);
    }

    /// Records a Socket.IO binding here (this worker owns the uid).
    pub(super) fn history_bind(&mut self, pid: &str, uid: &str, sid: &str, by: &str, ended: bool) {
        let window = (self.cfg.recovery_window * 1000.0) as u64;
        if let Some(h) = self.hist.as_mut() {
            let now = h.ms();
            if !h
                .store
                .bind(pid, uid, sid, by, ended.then_some(now + window), now)
            {
                log::warn!("history: too many Socket.IO sessions kept; {pid} is not recoverable");
            }
        }
    }

    /// The owner's answer to a recovery asked by worker `asker` (this worker's own pid for
    /// one asked here).
    pub(super) fn answer_recover(
        &mut self,
        id: u64,
        whose: Whose,
        epoch: Option<u64>,
        offset: Option<u64>,
        offline: bool,
        asker: u32,
    ) -> HistoryMsg {
        let window = (self.cfg.recovery_window * 1000.0) as u64;
        // What one connection may have queued: more is refused (`recovered: false`) rather
        // than dropped on the way.
        let max_bytes = self.cfg.max_send_buffer / 2;
        let mut a = HistoryMsg::not_found(id);
        let Some(h) = self.hist.as_mut() else {
            return a;
        };
        let now = h.ms();
        // A pid's binding as it was, put back if the recovery fails (a wrong offset must not
        // shorten the life of a live session's binding).
        let mut taken = None;
        let (uid, sid) = match whose {
            Whose::Uid { uid } => (uid, String::new()),
            Whose::Pid { pid } => match h.store.take_binding(&pid, now) {
                Some(b) => {
                    // Recoverable again only through the recovered session (which binds it
                    // for good) or for the window, if that session never completes.
                    h.store
                        .bind(&pid, &b.uid, &b.sid, &b.by, Some(now + window), now);
                    let kept = (b.uid.clone(), b.sid.clone());
                    taken = Some((pid, b));
                    kept
                }
                None => return a,
            },
        };
        let result: Result<Found, Refusal> = if offline {
            Ok(h.store.undelivered(&uid, now, max_bytes))
        } else {
            match (epoch, offset) {
                (Some(e), Some(o)) => h.store.since(&uid, e, o, now, max_bytes),
                _ => Err(Refusal::Gone),
            }
        };
        let (store_epoch, top_now) = h.store.position(&uid, now);
        let (recovered, (top, messages)) = match result {
            Ok(f) => (true, kept(f)),
            Err(e) => {
                log::debug!("recovery for {uid}: {e}");
                if let Some((pid, b)) = taken {
                    h.store.bind(&pid, &b.uid, &b.sid, &b.by, b.expires, now);
                }
                (false, (top_now, Vec::new()))
            }
        };
        if asker != self.pid {
            if let Some(v) = self.views.get_mut(&asker) {
                v.apply(&[bucket(&uid)], &[]);
            }
        }
        if let HistoryMsg::Recovered {
            found,
            uid: u,
            sid: s,
            recovered: r,
            epoch: e,
            top: t,
            messages: m,
            ..
        } = &mut a
        {
            *found = true;
            *u = uid;
            *s = sid;
            *r = recovered;
            *e = store_epoch;
            *t = top;
            *m = messages;
        }
        a
    }

    /// Sends a history question to the owner of `uid` (answered here at once when this
    /// worker owns it); false when the owner cannot be reached.
    pub(super) fn ask_owner(&mut self, uid: &str, m: HistoryMsg) -> bool {
        if self.cluster_history() {
            return self.ch_ask(m);
        }
        let Some(owner) = self.history_owner_pid(uid) else {
            return false;
        };
        if owner == self.pid {
            match self.as_owner(m, self.pid) {
                Ok(Some(a)) | Err(a @ HistoryMsg::Recovered { .. }) => self.on_recovered(a),
                Ok(None) | Err(_) => {}
            }
            return true;
        }
        // The asker's presence first, so that the owner knows where the uid lives before the
        // question (a login made it arrive here in this turn).
        self.send_presence();
        self.send_to_sibling(owner, &PeerMsg::History(m))
    }

    /// Sends a history question to every sibling (a private id names no uid); how many were
    /// asked.
    pub(super) fn ask_everyone(&mut self, m: HistoryMsg) -> usize {
        if self.cluster_history() {
            return usize::from(self.ch_ask(m));
        }
        let m = PeerMsg::History(m);
        let mut n = 0;
        for (_, l) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            if l.chan.send(&m).is_ok() {
                l.dirty = true;
                n += 1;
            }
        }
        n
    }

    /// This worker's share of a `history` query.
    pub(super) fn history_share(&mut self, uid: &str) -> Share {
        let Some(h) = self.hist.as_mut() else {
            return Share::History {
                epoch: 0,
                top: 0,
                messages: Vec::new(),
            };
        };
        let now = h.ms();
        let (top, messages) = kept(h.store.read(uid, now));
        Share::History {
            epoch: h.store.epoch,
            top,
            messages,
        }
    }

    /// Once a loop turn: recoveries past their deadline fail, and once a second the store
    /// drops what expired.
    pub(super) fn recovery_tick(&mut self, now: Instant) {
        self.ch_tick(now);
        let (registry, views) = (&self.registry, &self.views);
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        let ms = h.ms();
        if ms >= h.last_sweep + 1000 {
            h.last_sweep = ms;
            // A uid with a connection here or in a sibling keeps its position.
            let held =
                |u: &str| !registry.get(u).is_empty() || views.values().any(|v| v.may_hold(u));
            h.store.sweep(ms, held);
        }
        if h.handover_due {
            self.try_handover();
        }
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        if h.pending.is_empty() {
            return;
        }
        let late: Vec<u64> = h
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(p) = self.hist.as_mut().and_then(|h| h.pending.remove(&id)) else {
                continue;
            };
            self.recovery_failed(p);
        }
    }

    /// The history figures for a status row.
    pub(super) fn history_stats(&self, s: &mut herald_ipc::Stats) {
        if let Some(h) = &self.hist {
            s.history_messages = h.store.messages as u64;
            s.history_bytes = h.store.bytes as u64;
            s.history_evicted = h.store.evicted;
        }
    }

    /// Delivers a positioned message of `uid` to its recipients here; how many got it.
    pub(super) fn deliver_positioned(
        &mut self,
        uid: &str,
        epoch: u64,
        offset: u64,
        payload: &Bytes,
        binary: bool,
    ) -> u32 {
        if self.registry.get(uid).is_empty() {
            return 0;
        }
        let f = frame(if binary { OP_BINARY } else { OP_TEXT }, payload);
        self.deliver_positioned_framed(uid, epoch, offset, payload, binary, &f)
    }

    /// [`Worker::deliver_positioned`] with the message's plain frame made already.
    pub(super) fn deliver_positioned_framed(
        &mut self,
        uid: &str,
        epoch: u64,
        offset: u64,
        payload: &Bytes,
        binary: bool,
        plain: &Bytes,
    ) -> u32 {
        let recipients: crate::registry::Slots = self.registry.get(uid).iter().copied().collect();
        let mut n = 0;
        for r in recipients {
            n += self.deliver_one(r, epoch, offset, payload, binary, plain) as u32;
        }
        n
    }
}
