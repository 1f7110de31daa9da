//! Pushing: the one place that reads the registry and the groups to deliver, and that sends a
//! push to the siblings. A push from any port, or from a sibling, ends here:
//!
//! [`Worker::push`] → [`Worker::deliver_local`] (recipients from the registry or the groups,
//! each handed to its protocol: [`Worker::deliver`] for a WebSocket, `sio_deliver` for a
//! Socket.IO session) → `fan_out` to every sibling (see `mesh`) → [`Worker::settle`] once the
//! outcome is known (at once when it is already decided, else when the siblings answered).

use super::mesh::{Holders, Job};
use super::resume;
use super::sio_push::SioEvent;
use super::{mono_ns, Worker};
use crate::conn::CLOSING;
use crate::delivery::{frame, OP_BINARY, OP_TEXT};
use crate::mesh::{ReplyKind, ReplyTo};
use crate::proto::http;
use crate::registry::Who;
use bytes::Bytes;
use herald_ipc::{PeerMsg, Push, Target};
use std::collections::HashSet;
use std::time::Instant;

/// Whom a push is for: a target as the mesh carries it, or one uid borrowed from the line or
/// request that named it (the seeds' hot path: no allocation unless a sibling must be told).
pub(crate) enum To<'a> {
    /// Uids, everyone or groups.
    Target(Target),
    /// One uid.
    Uid(&'a str),
}

impl To<'_> {
    /// Everyone.
    pub(crate) const ALL: To<'static> = To::Target(Target::All);
}

impl From<Target> for To<'_> {
    fn from(t: Target) -> Self {
        To::Target(t)
    }
}

impl Worker {
    /// Delivers here, sends to every sibling, and arranges for the outcome to reach `reply`.
    pub(super) fn push(
        &mut self,
        target: To<'_>,
        exclude: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        self.stats.pushes += 1;
        // With a history, a push for uids or groups goes through each uid's owner (see
        // `recovery`); a broadcast to everyone is delivered as always, and each worker keeps
        // it for the uids it owns (see `history_all`). In a cluster the history is in Redis,
        // where every node writes a group push or a broadcast for its share of the uids (see
        // `history_cluster_fan`).
        if let (true, To::Target(t @ (Target::Groups(_) | Target::All))) =
            (self.cluster_history(), &target)
        {
            let t = t.clone();
            return self.ch_group_push(t, exclude, payload, binary, reply);
        }
        if self.hist.is_some() && !matches!(target, To::Target(Target::All)) {
            return self.history_push(target, exclude, payload, binary, reply);
        }
        self.plain_push(target, exclude, payload, binary, reply);
    }

    /// A push the way it goes without a history: delivered here, sent to every sibling (and
    /// the cluster), the outcome to `reply`.
    pub(super) fn plain_push(
        &mut self,
        target: To<'_>,
        exclude: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        // Its wait counts from the turn that read it (no clock read per push).
        let started = self.turn_start;
        let local = self.deliver_local(&target, &exclude, payload, binary);
        // Siblings that may hold the target: all of them for a broadcast or a group.
        let uids = match &target {
            To::Uid(u) => Holders::Uid(u),
            To::Target(Target::Uids(u)) => Holders::Uids(u),
            To::Target(_) => Holders::All,
        };
        let asked = self
            .links
            .iter()
            .any(|(_, l)| l.outbound && self.may_hold(l.peer_pid, uids));
        if !asked && self.bus.is_none() {
            let missing = self.unlinked_peers(uids);
            self.stats.ipc_undelivered += missing as u64;
            self.settle_in_turn(reply, local, missing > 0);
            return;
        }
        let id = self.gather.next_id();
        let target = match target {
            To::Target(t) => t,
            To::Uid(u) => Target::Uids(vec![u.to_owned()]),
        };
        let msg = PeerMsg::Push(Push {
            id,
            deadline: self.sibling_deadline(),
            target,
            exclude,
            payload: payload.to_vec(),
            binary,
        });
        // Already decided (`ok` once one connection got it): the backend hears now, and the
        // entry only collects the siblings' answers.
        let early = reply.decided(local);
        if early {
            self.settle_in_turn(reply, local, false);
        }
        let job = Job::Push {
            started,
            total: local,
            reply: if early { ReplyTo::Nobody } else { reply },
        };
        let uids = match &msg {
            PeerMsg::Push(Push {
                target: Target::Uids(u),
                ..
            }) => Holders::Uids(u),
            _ => Holders::All,
        };
        self.fan_out(&msg, job, uids);
    }

    /// Until when a sibling may deliver a push sent now: a tenth of `ipc_timeout` (at most
    /// 100 ms) before the entry gives up, so that its answer has time to come back and a
    /// `fail` stays true.
    pub(super) fn sibling_deadline(&self) -> u64 {
        let timeout = self.cfg.ipc_timeout.max(0.0);
        let margin = (timeout / 10.0).min(0.1);
        mono_ns() + ((timeout - margin) * 1e9) as u64
    }

    /// A push of `payload` for `uids` to a sibling, with id `id` and the siblings' deadline.
    pub(super) fn uids_push(
        &self,
        id: u64,
        uids: Vec<String>,
        payload: &[u8],
        binary: bool,
    ) -> Push {
        Push {
            id,
            deadline: self.sibling_deadline(),
            target: Target::Uids(uids),
            exclude: Vec::new(),
            payload: payload.to_vec(),
            binary,
        }
    }

    /// Queues the push's frame to every local recipient `target` names; returns how many got
    /// it.
    pub(super) fn deliver_local(
        &mut self,
        target: &To<'_>,
        exclude: &[String],
        payload: &[u8],
        binary: bool,
    ) -> u32 {
        let opcode = if binary { OP_BINARY } else { OP_TEXT };
        // The seeds' unicast, a uid with one plain WebSocket and nothing excluded, goes
        // straight to it (as the loop below would deliver it).
        if let (To::Uid(u), []) = (target, exclude) {
            if let [r] = *self.registry.get(u) {
                if let Who::Conn(slot) = r.who() {
                    if self.hist.is_none() {
                        return self.deliver(slot, frame(opcode, payload)) as u32;
                    }
                }
            }
        }
        // Reused between pushes: no allocation per push for the recipient list.
        let mut slots = std::mem::take(&mut self.slots_buf);
        slots.clear();
        // A long list of excluded uids is made a set once: linear in its length. Short ones
        // (the usual zero or one) are searched, and the seeds' unicast builds nothing.
        let excluded: Option<HashSet<&str>> =
            (exclude.len() > 8).then(|| exclude.iter().map(String::as_str).collect());
        let is_excluded = |u: &str| match &excluded {
            Some(set) => set.contains(u),
            None => exclude.iter().any(|e| e == u),
        };
        match target {
            To::Uid(u) => {
                if !is_excluded(u) {
                    slots.extend_from_slice(self.registry.get(u));
                }
            }
            To::Target(Target::Uids(uids)) if uids.len() == 1 => {
                if !is_excluded(&uids[0]) {
                    slots.extend_from_slice(self.registry.get(&uids[0]));
                }
            }
            To::Target(Target::Uids(uids)) => {
                // A uid named twice is delivered once.
                let mut seen: HashSet<&str> = HashSet::with_capacity(uids.len());
                for u in uids {
                    if is_excluded(u) || !seen.insert(u) {
                        continue;
                    }
                    slots.extend_from_slice(self.registry.get(u));
                }
            }
            To::Target(Target::All) => {
                slots.reserve(self.registry.connection_count());
                for (uid, s) in self.registry.iter() {
                    if exclude.is_empty() || !is_excluded(uid) {
                        slots.extend_from_slice(s);
                    }
                }
                // In table order, not the map's: sockets accepted together sit together in
                // the kernel's tables and in ours, so a broadcast walks memory in order.
                slots.sort_unstable();
            }
            To::Target(Target::Groups(groups)) => {
                let mut seen: HashSet<&str> = HashSet::new();
                for g in groups {
                    for u in self.groups.members(g) {
                        if is_excluded(u) || !seen.insert(u) {
                            continue;
                        }
                        slots.extend_from_slice(self.registry.get(u));
                    }
                }
            }
        }
        let mut n = 0;
        // A broadcast with a history on one host: connections that want positions get it
        // from their uid's owner, positioned (see `history_all`); counted here.
        let positioned = matches!(target, To::Target(Target::All)) && self.positions_broadcasts();
        // Socket.IO sessions get the push as a `new_msg` event, encoded once, on first need.
        let mut event = SioEvent::new(payload, binary);
        let last = slots.len().saturating_sub(1);
        // The frame, built on first need and shared by the recipients.
        let mut f: Option<Bytes> = None;
        // With a history, connections that asked for the envelope get a broadcast wrapped
        // too (without a position), encoded once.
        let mut wrapped: Option<Bytes> = None;
        for (i, &r) in slots.iter().enumerate() {
            if positioned && self.gets_positioned_broadcast(r) {
                n += 1;
                continue;
            }
            let got = match r.who() {
                Who::Session(idx) => self.sio_deliver(idx, &mut event),
                Who::Conn(slot) if self.hist.is_some() && self.wants_envelope(slot) => {
                    let w = wrapped.get_or_insert_with(|| resume::unpositioned(payload, binary));
                    let w = w.clone();
                    self.deliver(slot, w)
                }
                // The last recipient takes the frame itself: a unicast push shares nothing, so
                // its frame needs no shared reference count (one allocation less).
                Who::Conn(slot) => {
                    let one = if i == last {
                        f.take().unwrap_or_else(|| frame(opcode, payload))
                    } else {
                        f.get_or_insert_with(|| frame(opcode, payload)).clone()
                    };
                    self.deliver(slot, one)
                }
            };
            n += got as u32;
        }
        if slots.capacity() > 64 * 1024 {
            slots = Vec::new();
        }
        self.slots_buf = slots;
        if positioned {
            self.keep_broadcast(exclude, payload, binary);
        }
        n
    }

    /// Queues one frame to one logged-in connection, unless its output is over the cap.
    pub(super) fn deliver(&mut self, slot: usize, f: Bytes) -> bool {
        let cap = self.cfg.max_send_buffer;
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if conn.flags & CLOSING != 0 {
            return false;
        }
        if conn.out.len() + f.len() > cap {
            self.stats.send_fail += 1;
            if conn.slow_since == 0 {
                conn.slow_since = self.now.max(1);
            }
            return false;
        }
        self.stats.delivered += 1;
        self.queue(slot, f);
        true
    }

    /// [`Worker::settle`] for a push read in this turn: a backend that gets an answer waits
    /// until the turn's writes, and all such waits go into the `push_seconds` histogram
    /// together when they begin (see `flush_conns`), with one clock read per turn.
    pub(super) fn settle_in_turn(&mut self, reply: ReplyTo, total: u32, partial: bool) {
        if reply != ReplyTo::Nobody {
            self.answered_in_turn += 1;
        }
        self.settle(reply, total, partial);
    }

    /// [`Worker::settle`], and the wait of a backend that gets an answer goes into the
    /// `push_seconds` histogram.
    pub(super) fn settle_timed(
        &mut self,
        reply: ReplyTo,
        total: u32,
        partial: bool,
        started: Instant,
    ) {
        if reply != ReplyTo::Nobody {
            self.push_latency.observe(started.elapsed());
        }
        self.settle(reply, total, partial);
    }

    /// Sends a push's outcome where it belongs.
    pub(super) fn settle(&mut self, reply: ReplyTo, total: u32, partial: bool) {
        let word = |kind: ReplyKind| -> &'static [u8] {
            match kind {
                ReplyKind::AlwaysOk => b"ok",
                ReplyKind::OkFail if total > 0 => b"ok",
                ReplyKind::OkFail => b"fail",
                ReplyKind::Publish if total > 0 => b"ok",
                ReplyKind::Publish => b"offline",
                ReplyKind::Pushed if total > 0 => b"ok",
                // Kept for the uid's next login (unless part of the push was lost).
                ReplyKind::Pushed if !partial => b"stored",
                ReplyKind::Pushed => b"fail",
                ReplyKind::Count => b"",
            }
        };
        match reply {
            ReplyTo::Nobody => {}
            // A chunk of a push written in chunks (history in a cluster): with its `partial`.
            ReplyTo::Sibling { key, id } if key == super::history_cluster::MEMBER_LINK => {
                self.ch_relay_part(id, total, partial)
            }
            ReplyTo::Sibling { key, id } => self.sibling_settled(key, id, total),
            ReplyTo::Text {
                slot,
                id,
                seq,
                kind,
            } => {
                let b: &'static [u8] = match word(kind) {
                    b"ok" => b"ok\n",
                    b"stored" => b"stored\n",
                    _ => b"fail\n",
                };
                self.text_reply(slot, id, seq, Bytes::from_static(b));
            }
            ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::Count,
            } => {
                let mut v = serde_json::json!({ "delivered": total });
                if total == 0 && self.cfg.offline_delivery && !partial {
                    // Kept by the uid's owner for its next login.
                    v["stored"] = serde_json::json!(true);
                }
                if partial {
                    v["partial"] = serde_json::json!(true);
                }
                self.http_json(slot, id, 200, &v, None);
            }
            ReplyTo::Http { slot, id, kind } => {
                let Some(keep) = self.http_keep_alive(slot, id) else {
                    return;
                };
                let body = word(kind);
                self.http_respond(
                    slot,
                    http::response(200, "text/plain; charset=utf-8", body, keep, ""),
                );
                self.http_resume(slot);
            }
        }
    }
}
