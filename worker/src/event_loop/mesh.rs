//! The sibling mesh in the loop: links to and from every other live worker, and the one
//! scatter-gather over them. A push or a query entering this worker goes once to each
//! outbound link ([`Worker::fan_out`]) and becomes a [`Job`] in the worker's [`Gather`]; each
//! sibling answers on the same link (`Delivered`, `Answer`), and the job completes when the
//! last link answered, a link broke, or `ipc_timeout` passed (then it is `partial`).
//!
//! [`Gather`]: crate::gather::Gather

use super::push::To;
use super::query::QReply;
use super::{mono_ns, ms, would_block, Worker, LINK_BASE};
use crate::gather::{Peers, Waiting};
use crate::mesh::{Link, ReplyTo};
use crate::presence::View;
use herald_ipc::{mesh_name, Channel, ChannelError, Peer, PeerMsg, Presence, Query, Share};
use mio::{Interest, Token};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::time::{Duration, Instant};

/// Whom a message to the siblings concerns, to skip those whose picture says they cannot
/// hold any of it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Holders<'a> {
    /// Everyone (a broadcast, a group, a query).
    All,
    /// One uid.
    Uid(&'a str),
    /// Any of these uids.
    Uids(&'a [String]),
}

impl Holders<'_> {
    /// Whether a sibling with picture `view` (none yet: it may hold anything) may hold one.
    fn held_by(self, view: Option<&View>) -> bool {
        match (self, view) {
            (Holders::Uid(u), Some(v)) => v.may_hold(u),
            (Holders::Uids(list), Some(v)) => list.iter().any(|u| v.may_hold(u)),
            _ => true,
        }
    }
}

/// What siblings' answers are gathered into.
#[derive(Debug)]
pub(super) enum Job {
    /// A push: connections reached so far, and where the outcome goes (`Nobody` once it was
    /// replied early).
    Push {
        /// The start of the turn that read it (for the `push_seconds` histogram).
        started: std::time::Instant,
        /// Connections reached here and in the siblings that answered.
        total: u32,
        /// Where the outcome goes.
        reply: ReplyTo,
    },
    /// A query: the shares so far (this worker's first).
    Query {
        /// The question (it also tells how to merge and render).
        query: Query,
        /// Shares received.
        shares: Vec<Share>,
        /// Where the merged answer goes.
        reply: QReply,
    },
}

impl Worker {
    /// Siblings the master announced that have no outbound link yet (starting, reconnecting):
    /// a push or query cannot reach them, and says so.
    /// Only those that may hold one of `uids` count.
    pub(super) fn unlinked_peers(&self, uids: Holders<'_>) -> usize {
        self.peers
            .iter()
            .filter(|p| self.link_to(p.pid).is_none() && self.may_hold(p.pid, uids))
            .count()
    }

    /// Whether sibling `pid` may hold a connection of one of `uids`. A sibling whose picture
    /// has not arrived may hold anything.
    pub(super) fn may_hold(&self, pid: u32, uids: Holders<'_>) -> bool {
        uids.held_by(self.views.get(&pid))
    }

    /// Tells every sibling which uid buckets changed in this turn (one message per link).
    pub(super) fn send_presence(&mut self) {
        if !self.presence.has_changes() {
            return;
        }
        let (on, off) = self.presence.take_changes();
        let m = PeerMsg::Presence(Presence::Changes { on, off });
        for (_, link) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            link.dirty = true;
            if let Err(e) = link.chan.send(&m) {
                // The link is full or broken: it will be dropped and, once reconnected,
                // start again with a snapshot.
                log::debug!("presence not sent to worker {}: {e}", link.peer_worker);
            }
        }
    }

    /// Links to every announced sibling not linked yet; retries soon if one is not ready.
    pub(super) fn connect_peers(&mut self) {
        let mut retry = false;
        let peers = self.peers.clone();
        for p in peers {
            if self.link_to(p.pid).is_some() {
                continue;
            }
            match self.connect_peer(&p) {
                Ok(()) => log::debug!("linked to worker {} (pid {})", p.worker, p.pid),
                Err(e) => {
                    log::debug!(
                        "cannot link to worker {} (pid {}) yet: {e}",
                        p.worker,
                        p.pid
                    );
                    retry = true;
                }
            }
        }
        if retry {
            self.reconnect_at = Some(Instant::now() + Duration::from_millis(50));
        }
        // Once linked, learn the groups the siblings know, once: whether groups are in use at
        // all (a login then asks for its uid's groups only if they are), and the memberships
        // of the uids already here.
        if !self.groups_synced && self.links.iter().any(|(_, l)| l.outbound) {
            self.groups_synced = true;
            self.query(Query::Groups, QReply::ClusterSync);
        }
    }

    /// Connects to sibling `p`'s mesh socket and says who is calling.
    pub(super) fn connect_peer(&mut self, p: &Peer) -> io::Result<()> {
        let name = mesh_name(self.instance, p.pid);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        let mut chan = Channel::from_std(s, self.cfg.ipc_max_pending)?;
        // Who is calling, then which uids this worker holds: the sibling's picture of it
        // (counted from the first sibling on).
        self.presence
            .enable(self.registry.iter().map(|(u, _)| u.as_ref()));
        for m in [
            PeerMsg::Hello {
                worker: self.id,
                pid: self.pid,
            },
            PeerMsg::Presence(Presence::Snapshot(self.presence.snapshot())),
        ] {
            chan.send(&m).map_err(|e| io::Error::other(e.to_string()))?;
        }
        let entry = self.links.vacant_entry();
        self.poll.registry().register(
            &mut chan,
            Token(LINK_BASE + entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let key = entry.key();
        entry.insert(Link {
            chan,
            outbound: true,
            peer_pid: p.pid,
            peer_worker: p.worker,
            dirty: true,
        });
        self.up_link_opened(key);
        Ok(())
    }

    /// Siblings connecting to this worker.
    pub(super) fn accept_mesh(&mut self) {
        loop {
            match self.mesh_listener.accept() {
                Ok((s, _)) => {
                    let mut chan = Channel::new(s, self.cfg.ipc_max_pending);
                    let entry = self.links.vacant_entry();
                    if let Err(e) = self.poll.registry().register(
                        &mut chan,
                        Token(LINK_BASE + entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register a sibling link: {e}");
                        continue;
                    }
                    let key = entry.key();
                    entry.insert(Link {
                        chan,
                        outbound: false,
                        peer_pid: 0,
                        peer_worker: u32::MAX,
                        dirty: false,
                    });
                    self.on_link(key);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("mesh accept: {e}");
                    return;
                }
            }
        }
    }

    /// Link `key` is readable or writable: read its messages, write what waits.
    pub(super) fn on_link(&mut self, key: usize) {
        let mut msgs = Vec::new();
        let res = match self.links.get_mut(key) {
            Some(l) => {
                let r = l.chan.receive(&mut msgs);
                // WRITABLE after a full socket: write what waits.
                l.dirty = true;
                r
            }
            None => return,
        };
        for m in msgs {
            self.link_msg(key, m);
        }
        if let Err(e) = res {
            let why = match e {
                ChannelError::Closed => "closed".to_string(),
                e => e.to_string(),
            };
            self.drop_link(key, &why);
        }
    }

    /// One message from a sibling on link `key`.
    fn link_msg(&mut self, key: usize, m: PeerMsg) {
        match m {
            PeerMsg::Hello { worker, pid } => {
                if let Some(l) = self.links.get_mut(key) {
                    l.peer_worker = worker;
                    l.peer_pid = pid;
                }
            }
            PeerMsg::Presence(p) => {
                let Some(pid) = self.links.get(key).map(|l| l.peer_pid) else {
                    return;
                };
                match p {
                    Presence::Snapshot(bits) => match View::from_snapshot(bits) {
                        Some(v) => {
                            self.views.insert(pid, v);
                        }
                        None => log::warn!("worker pid {pid} sent a presence of another size"),
                    },
                    Presence::Changes { on, off } => {
                        if let Some(v) = self.views.get_mut(&pid) {
                            v.apply(&on, &off);
                        }
                    }
                }
            }
            PeerMsg::Push(p) => {
                if mono_ns() > p.deadline {
                    // The entry worker has answered without us: delivering now would make
                    // its `fail` untrue.
                    self.stats.late_dropped += 1;
                    log::debug!("push {} arrived after its deadline; dropped", p.id);
                    return self.answer_link(key, PeerMsg::Delivered { id: p.id, count: 0 });
                }
                let count =
                    self.deliver_local(&To::Target(p.target), &p.exclude, &p.payload, p.binary);
                self.answer_link(key, PeerMsg::Delivered { id: p.id, count });
            }
            m @ (PeerMsg::Route(_)
            | PeerMsg::Positioned { .. }
            | PeerMsg::History(_)
            | PeerMsg::PositionedAnswer { .. }
            | PeerMsg::Record(_)
            | PeerMsg::AllPositioned { .. }) => self.history_link_msg(key, m),
            PeerMsg::Query { id, query } => {
                let share = self.answer_query(&query);
                self.answer_link(key, PeerMsg::Answer { id, share });
            }
            PeerMsg::Delivered { id, count } => {
                if let Some(w) = self.gather.answered(id, key) {
                    if let Job::Push { total, .. } = &mut w.job {
                        *total += count;
                    }
                }
                self.progress(id);
            }
            PeerMsg::Answer { id, share } => {
                if let Some(w) = self.gather.answered(id, key) {
                    if let Job::Query { shares, .. } = &mut w.job {
                        shares.push(share);
                    }
                }
                self.progress(id);
            }
            m @ (PeerMsg::Subscribers(_)
            | PeerMsg::Event { .. }
            | PeerMsg::UidsHeld { .. }
            | PeerMsg::ToClient { .. }
            | PeerMsg::UidsSnapshot(_)
            | PeerMsg::UidsBacked { .. }
            | PeerMsg::UidsGone(_)) => self.up_peer_msg(key, m),
        }
    }

    /// The key of this worker's own (outbound) link to sibling `pid`.
    pub(super) fn link_to(&self, pid: u32) -> Option<usize> {
        self.links
            .iter()
            .find(|(_, l)| l.outbound && l.peer_pid == pid)
            .map(|(k, _)| k)
    }

    /// Queues `msg` on this worker's own link to sibling `pid` (written this turn); false when
    /// there is no such link or it is full.
    pub(super) fn send_to_sibling(&mut self, pid: u32, msg: &PeerMsg) -> bool {
        let Some(l) = self.link_to(pid).and_then(|k| self.links.get_mut(k)) else {
            return false;
        };
        l.dirty = true;
        l.chan.send(msg).is_ok()
    }

    /// Sends a sibling the answer to what it asked on link `key`.
    pub(super) fn answer_link(&mut self, key: usize, m: PeerMsg) {
        if let Some(l) = self.links.get_mut(key) {
            l.dirty = true;
            if let Err(e) = l.chan.send(&m) {
                log::warn!("cannot answer worker {}: {e}", l.peer_worker);
            }
        }
    }

    /// Sends `msg` (whose id is `gather.next_id()`) to every outbound link, or only to those
    /// that may hold one of `uids` when given, and waits for their answers as `job`. A
    /// sibling that cannot be asked (link full or broken, or announced and not linked yet) is
    /// counted as missing at once.
    pub(super) fn fan_out(&mut self, msg: &PeerMsg, job: Job, uids: Holders<'_>) {
        let mut peers = Peers::new();
        let mut missing = self.unlinked_peers(uids);
        let views = &self.views;
        let holds = |pid: u32| uids.held_by(views.get(&pid));
        for (key, link) in self
            .links
            .iter_mut()
            .filter(|(_, l)| l.outbound && holds(l.peer_pid))
        {
            match link.chan.send(msg) {
                Ok(()) => {
                    link.dirty = true;
                    peers.push(key);
                }
                Err(e) => {
                    // Counted, never silent; logged at debug since a stalled sibling would
                    // otherwise log once per push.
                    missing += 1;
                    log::debug!("not sent to worker {}: {e}", link.peer_worker);
                }
            }
        }
        let id = self.gather.next_id();
        let remote = self.cluster_out(id, msg, uids);
        if remote == Some(false) {
            missing += 1;
        }
        self.stats.ipc_undelivered += missing as u64;
        let id = self.gather.add(Waiting {
            job,
            peers,
            deadline: Instant::now() + ms(self.cfg.ipc_timeout),
            partial: missing > 0,
            remote: 0,
            remote_unknown: remote == Some(true),
        });
        self.progress(id);
    }

    /// Settles entry `id` if every answer is in; a push whose reply got decided by the answers
    /// so far replies now and keeps collecting.
    pub(super) fn progress(&mut self, id: u64) {
        let Some(w) = self.gather.get_mut(id) else {
            return;
        };
        if w.complete() {
            if let Some(w) = self.gather.take(id) {
                self.complete(w);
            }
            return;
        }
        if let Job::Push {
            total,
            reply,
            started,
        } = &mut w.job
        {
            if reply.decided(*total) {
                let (r, t, partial, started) = (*reply, *total, w.partial, *started);
                *reply = ReplyTo::Nobody;
                self.settle_timed(r, t, partial, started);
            }
        }
    }

    /// An entry is done: its outcome goes where it belongs.
    fn complete(&mut self, w: Waiting<Job>) {
        match w.job {
            Job::Push {
                total,
                reply,
                started,
            } => self.settle_timed(reply, total, w.partial, started),
            Job::Query {
                query,
                shares,
                reply,
            } => self.finish_query(&query, &shares, reply, w.partial),
        }
    }

    /// Settles every entry past its deadline with what it has.
    pub(super) fn expire_gathers(&mut self, now: Instant) {
        let mut done = Vec::new();
        let missing = self.gather.expire(now, &mut done);
        self.stats.ipc_undelivered += missing as u64;
        for w in done {
            self.complete(w);
        }
    }

    /// Closes link `key`; what waited for its answers completes without them.
    pub(super) fn drop_link(&mut self, key: usize, why: &str) {
        if !self.links.contains(key) {
            return;
        }
        let mut l = self.links.remove(key);
        let _ = self.poll.registry().deregister(&mut l.chan);
        log::info!(
            "link {} worker {} (pid {}) ended: {why}",
            if l.outbound { "to" } else { "from" },
            l.peer_worker,
            l.peer_pid
        );
        if !l.outbound {
            // Its picture came on this link; a new link brings a new snapshot.
            self.views.remove(&l.peer_pid);
        }
        self.up_link_lost(l.peer_pid, l.outbound);
        let mut ids = Vec::new();
        self.gather.link_lost(key, &mut ids);
        self.stats.ipc_undelivered += ids.len() as u64;
        for id in ids {
            self.progress(id);
        }
        if l.outbound && self.peers.iter().any(|p| p.pid == l.peer_pid) {
            self.reconnect_at = Some(Instant::now() + Duration::from_millis(100));
        }
    }
}
