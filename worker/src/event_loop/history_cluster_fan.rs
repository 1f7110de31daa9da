//! History in a cluster, pushes to many uids: a group push and a broadcast to everyone
//! (`all`). Nobody knows every uid of the cluster, so the push goes to every member of the
//! cluster (`P:all`, first byte [`GROUP`]), and each member writes it (the `PUSH` script,
//! see `crate::cluster_history`) for its own share of the uids:
//!
//! - a group push: the group's members it holds a connection of (the entry member also those
//!   nobody may hold: membership is known everywhere, connections are not);
//! - `all`: every uid logged in here, and the uids whose last recipient here went away less
//!   than `history_ttl` ago ([`Dropped`]): a uid dropped for a moment, with no connection
//!   anywhere when the broadcast comes, is kept too, recovers it, and with offline delivery
//!   gets it at its next login.
//!
//! The push's name (`MEMBER/ID`) goes with each write as a token, so that a uid held by
//! several members is written once (the first writer's), with one position. A member writes
//! at most [`WRITE_CHUNK`] uids per script call (Redis runs one script at a time: a broadcast
//! to tens of thousands of uids is many short calls, not one long one), and answers the
//! entry once, with the sum of its calls' counts. A push to a long list of uids is written in
//! the same chunks by the worker it entered, which answers its backend once. When the push cannot be published, or a
//! member cannot write, it goes the way it goes without a history (no position, not kept).
//!
//! [`GROUP`]: crate::cluster_history::GROUP

use super::history_cluster::{Sent, MEMBER_LINK};
use super::mesh::Job;
use super::push::To;
use super::Worker;
use crate::cluster::{envelope, open_envelope, BusCmd};
use crate::cluster_history::GROUP;
use crate::dropped::Dropped;
use crate::mesh::ReplyTo;
use bytes::Bytes;
use herald_ipc::codec::{read_frame, write_frame};
use herald_ipc::{PeerMsg, Push, Target};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Most uids one `PUSH` script call writes: a group push or a broadcast for more is written
/// in several calls, each short enough not to hold Redis (nor its other clients) for long.
pub(super) const WRITE_CHUNK: usize = 500;

/// Where the sum of a push's chunks goes.
enum RelayTo {
    /// A member's entry (a group push or a broadcast written here for it): answered with
    /// `Delivered`.
    Member {
        /// The entry member.
        from: String,
        /// Its entry's id.
        id: u64,
    },
    /// The backend of a push to a long list of uids that entered here.
    Backend {
        /// Where its outcome goes.
        reply: ReplyTo,
        /// When it came (the `push_seconds` histogram).
        started: Instant,
    },
}

/// A push written here in chunks, waiting for every chunk's count.
struct Relay {
    /// Where the sum goes once every chunk's count is known.
    to: RelayTo,
    /// Chunks whose count is not known yet.
    left: usize,
    /// The counts known so far, summed.
    total: u32,
    /// Some chunk's count is incomplete.
    partial: bool,
    /// When it was written (forgotten well after its entries gave up).
    at: Instant,
}

/// The state of pushes to many in a worker.
#[derive(Default)]
pub(super) struct Fan {
    /// Pushes written here in chunks, by this worker's relay id.
    relays: HashMap<u64, Relay>,
    /// Next relay id.
    next_relay: u64,
    /// Uids whose last recipient here went away recently (for `all`).
    dropped: Dropped,
}

impl Worker {
    /// How long a dropped uid is remembered for `all`: as long as what it missed is kept.
    fn dropped_keep(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.history_ttl.max(0.0))
    }

    /// A group push or a broadcast with the history in Redis: to every member of the cluster,
    /// which writes it for its share of the uids; the outcome to `reply` once every member
    /// answered. Redis out of reach: the way without a history.
    pub(super) fn ch_group_push(
        &mut self,
        target: Target,
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
            target: target.clone(),
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
            return self.plain_push(To::Target(target), exclude, payload, binary, reply);
        }
        let sent = Sent {
            target,
            exclude,
            payload: Bytes::copy_from_slice(payload),
            binary,
            here: false,
            at: started,
        };
        self.ch_await(id, Some(sent), started, reply);
    }

    /// Redis said whether broadcast `id` was published; one that was not, if it was a group
    /// push or an `all` of the history, is delivered the way without a history. True when
    /// that was done (nothing more to do with the answer).
    pub(super) fn ch_published(&mut self, id: u64, published: bool) -> bool {
        let Some(s) = self.hist.as_mut().and_then(|h| h.ch.pushes.remove(&id)) else {
            return false;
        };
        if published {
            return false;
        }
        self.stats.cluster_dropped += 1;
        if let Some(w) = self.gather.take(id) {
            if let Job::Push { reply, .. } = w.job {
                self.ch_unkept(s, reply);
            }
        }
        true
    }

    /// A group push or a broadcast from a member (after its first byte): written for this
    /// worker's share of the uids, in chunks; the count answered to that member once.
    pub(super) fn ch_group_message(&mut self, env: &[u8]) {
        let Some((from, body)) = open_envelope(env) else {
            return;
        };
        let Ok(Some((PeerMsg::Push(p), _))) = read_frame::<PeerMsg>(body) else {
            log::debug!("cluster history: unreadable group push from {from}");
            return;
        };
        let from = from.to_string();
        let entry = self.bus.as_ref().is_some_and(|b| b.member == from);
        let uids = match &p.target {
            Target::Groups(groups) => self.ch_group_uids(groups, &p.exclude, entry),
            Target::All => self.ch_all_uids(&p.exclude),
            Target::Uids(_) => return,
        };
        if uids.is_empty() {
            return self.ch_answer_member(from, p.id, 0);
        }
        let token = format!("{from}/{}", p.id);
        let to = RelayTo::Member { from, id: p.id };
        self.ch_write_chunks(uids, &p.payload, p.binary, to, token);
    }

    /// A push for `uids` with the history in Redis, in chunks of at most [`WRITE_CHUNK`]
    /// uids; the sum of their counts to the backend's `reply` once every chunk is settled.
    pub(super) fn ch_push_chunked(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        let to = RelayTo::Backend {
            reply,
            started: Instant::now(),
        };
        self.ch_write_chunks(uids, payload, binary, to, String::new());
    }

    /// Writes `uids` (not empty) in chunks, each its own entry answering the relay, which
    /// sends the sum to `to`.
    fn ch_write_chunks(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        to: RelayTo,
        token: String,
    ) {
        let Some(h) = self.hist.as_mut() else { return };
        let fan = &mut h.ch.fan;
        fan.next_relay += 1;
        let rid = fan.next_relay;
        fan.relays.insert(
            rid,
            Relay {
                to,
                left: uids.len().div_ceil(WRITE_CHUNK),
                total: 0,
                partial: false,
                at: Instant::now(),
            },
        );
        let reply = ReplyTo::Sibling {
            key: MEMBER_LINK,
            id: rid,
        };
        let mut rest = uids.into_iter();
        loop {
            let chunk: Vec<String> = rest.by_ref().take(WRITE_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            self.ch_write(chunk, payload, binary, reply, token.clone());
        }
    }

    /// A group push's uids to write here: the members held here (the entry: every member
    /// nobody may hold too), each once, none excluded.
    fn ch_group_uids(&self, groups: &[String], exclude: &[String], entry: bool) -> Vec<String> {
        // A set: members × excluded uids would be quadratic in a long list.
        let excluded: HashSet<&str> = exclude.iter().map(String::as_str).collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut uids = Vec::new();
        for g in groups {
            for u in self.groups.members(g) {
                if !excluded.contains(u.as_str())
                    && (entry || !self.registry.get(u).is_empty())
                    && seen.insert(u)
                {
                    uids.push(u.to_string());
                }
            }
        }
        uids
    }

    /// A broadcast's uids to write here: every uid logged in here, and those that dropped
    /// recently, none excluded.
    fn ch_all_uids(&mut self, exclude: &[String]) -> Vec<String> {
        let excluded: HashSet<&str> = exclude.iter().map(String::as_str).collect();
        let mut uids: Vec<String> = self
            .registry
            .iter()
            .filter(|(u, _)| !excluded.contains(&***u))
            .map(|(u, _)| u.to_string())
            .collect();
        let keep = self.dropped_keep();
        if let Some(h) = self.hist.as_mut() {
            for u in h.ch.fan.dropped.uids(Instant::now(), keep) {
                // One logged in again is in the list already.
                if !excluded.contains(u) && self.registry.get(u).is_empty() {
                    uids.push(u.to_string());
                }
            }
        }
        uids
    }

    /// One chunk of a push written here in chunks reached `total` connections; the last one
    /// sends the sum where it goes.
    pub(super) fn ch_relay_settled(&mut self, rid: u64, total: u32) {
        self.ch_relay_part(rid, total, false);
    }

    /// [`Worker::ch_relay_settled`], `partial` when the chunk's count is incomplete.
    pub(super) fn ch_relay_part(&mut self, rid: u64, total: u32, partial: bool) {
        let Some(relays) = self.hist.as_mut().map(|h| &mut h.ch.fan.relays) else {
            return;
        };
        let Some(r) = relays.get_mut(&rid) else {
            return;
        };
        r.total = r.total.saturating_add(total);
        r.partial |= partial;
        r.left = r.left.saturating_sub(1);
        if r.left > 0 {
            return;
        }
        let Some(r) = relays.remove(&rid) else { return };
        match r.to {
            RelayTo::Member { from, id } => self.ch_answer_member(from, id, r.total),
            RelayTo::Backend { reply, started } => {
                self.settle_timed(reply, r.total, r.partial, started)
            }
        }
    }

    /// Answers member `to`'s entry `id` with a count (this member's own entry directly).
    pub(super) fn ch_answer_member(&mut self, to: String, id: u64, count: u32) {
        let Some(bus) = &self.bus else { return };
        if to == bus.member {
            return self.remote_delivered(id, count);
        }
        self.bus_send_msg(&to, &PeerMsg::Delivered { id, count });
    }

    /// A part of a group push or a broadcast that Redis could not keep, delivered to this
    /// worker's connections only (each member of the cluster got the push).
    pub(super) fn ch_unkept_here(
        &mut self,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        let target = To::Target(Target::Uids(uids));
        let n = self.deliver_local(&target, &[], payload, binary);
        self.settle(reply, n, true);
    }

    /// `uid` lost its last recipient here: with the history in Redis, a broadcast within
    /// `history_ttl` is still kept for it.
    pub(super) fn ch_dropped(&mut self, uid: &str) {
        if !self.cluster_history() {
            return;
        }
        let Some(h) = self.hist.as_mut() else { return };
        let forgotten = h.ch.fan.dropped.note(uid, Instant::now());
        self.stats.history_drops_forgotten += forgotten as u64;
    }

    /// Once a second: forgets relays whose entry gave up long ago (after `keep`), and
    /// dropped uids past `history_ttl`.
    pub(super) fn ch_fan_sweep(&mut self, now: Instant, keep: Duration) {
        let ttl = self.dropped_keep();
        let Some(h) = self.hist.as_mut() else { return };
        h.ch.fan.relays.retain(|_, r| now < r.at + keep);
        h.ch.fan.dropped.expire(now, ttl);
    }
}
