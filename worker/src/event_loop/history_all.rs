//! Broadcasts to everyone (`all`) with a history, on one host: recoverable like a push to a
//! uid (see `crate::history_all` for how they are kept).
//!
//! A broadcast still reaches every worker the way it always did (`plain_push`, one mesh
//! message per sibling), and every connection that did not ask for positions gets it there,
//! plainly. A connection that asked for positions (`?envelope=1`/`?since=`, a Socket.IO v4
//! session with a private id) must see its offsets grow, and its offsets come from the owner
//! of its uid's history; so each worker, as it delivers the broadcast, also keeps it in its
//! own history (which positions it on its counter) and sends it, positioned, to every sibling
//! (`PeerMsg::AllPositioned`) on the link that carries its other positioned messages. Each
//! worker then delivers that copy to its positioned connections whose uid the sender owns,
//! and leaves them out of the plain delivery. A recovery merges the broadcasts the owner kept
//! after the position with the uid's own messages.

use super::Worker;
use crate::conn::Proto;
use crate::delivery::{frame, OP_BINARY, OP_TEXT};
use crate::registry::{Recipient, Who};
use bytes::Bytes;
use herald_ipc::{history_owner, PeerMsg};

impl Worker {
    /// Broadcasts are kept and positioned here (a history on one host).
    pub(super) fn positions_broadcasts(&self) -> bool {
        self.hist.is_some() && !self.cluster_history()
    }

    /// The uid of recipient `r` when it asked for positions (its state is current), else
    /// `None`.
    fn positioned_uid(&self, r: Recipient) -> Option<std::rc::Rc<str>> {
        let h = self.hist.as_ref()?;
        match r.who() {
            Who::Conn(slot) => {
                let c = self.conns.get(slot)?;
                let st = h.conns.get(&slot)?;
                match &c.proto {
                    Proto::Ws(ws) if st.id == c.id => ws.uid.clone(),
                    _ => None,
                }
            }
            Who::Session(idx) => {
                let s = self.sio.sessions.get(idx)?;
                let st = h.sessions.get(&idx)?;
                (st.esid == s.sid).then(|| s.uid.clone()).flatten()
            }
        }
    }

    /// Whether recipient `r` asked for positions (and is logged in).
    pub(super) fn is_positioned(&self, r: Recipient) -> bool {
        self.positioned_uid(r).is_some()
    }

    /// Whether recipient `r` gets broadcasts positioned, from its uid's owner (which is
    /// known): then the plain delivery leaves it out.
    pub(super) fn gets_positioned_broadcast(&self, r: Recipient) -> bool {
        self.positioned_uid(r)
            .is_some_and(|u| self.history_owner_pid(&u).is_some())
    }

    /// Keeps a broadcast in this worker's history, delivers it positioned to the connections
    /// here whose uid this worker owns, and sends it positioned to every sibling.
    pub(super) fn keep_broadcast(&mut self, exclude: &[String], payload: &[u8], binary: bool) {
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        let now = h.ms();
        let shared = Bytes::copy_from_slice(payload);
        let offset = h
            .store
            .append_all(shared.clone(), binary, exclude.to_vec(), now);
        let epoch = h.store.epoch;
        self.deliver_broadcast_positioned(self.pid, epoch, offset, exclude, &shared, binary);
        let msg = PeerMsg::AllPositioned {
            epoch,
            offset,
            exclude: exclude.to_vec(),
            binary,
            payload: payload.to_vec(),
        };
        let mut missing = 0;
        for (_, l) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            l.dirty = true;
            if l.chan.send(&msg).is_err() {
                missing += 1;
            }
        }
        self.stats.ipc_undelivered += missing;
    }

    /// A broadcast kept by worker `owner` at `offset`: to the positioned recipients here
    /// whose uid `owner` keeps the history of; how many got it.
    pub(super) fn deliver_broadcast_positioned(
        &mut self,
        owner: u32,
        epoch: u64,
        offset: u64,
        exclude: &[String],
        payload: &Bytes,
        binary: bool,
    ) -> u32 {
        let Some(h) = self.hist.as_ref() else {
            return 0;
        };
        // The share of the uids `owner` keeps (none when it was replaced since).
        let share = if owner == self.pid {
            Some(self.id)
        } else {
            self.peers.iter().find(|p| p.pid == owner).map(|p| p.worker)
        };
        let Some(share) = share.filter(|&w| self.owning_pid(w) == Some(owner)) else {
            return 0;
        };
        let workers = self.cfg.worker_count();
        let candidates: Vec<Recipient> = h
            .conns
            .keys()
            .map(|&s| Recipient::conn(s))
            .chain(h.sessions.keys().map(|&i| Recipient::session(i)))
            .collect();
        let plain = frame(if binary { OP_BINARY } else { OP_TEXT }, payload);
        let mut n = 0;
        for r in candidates {
            let Some(uid) = self.positioned_uid(r) else {
                continue;
            };
            if exclude.iter().any(|e| **e == *uid) || history_owner(&uid, workers) != share {
                continue;
            }
            // A connection with no position yet takes the owner's epoch.
            let e = match self.position_epoch(r) {
                0 => epoch,
                e => e,
            };
            n += self.deliver_one(r, e, offset, payload, binary, &plain) as u32;
        }
        n
    }
}
