//! Server-wide presence while a uid's owner worker is being replaced (a single host; with a
//! cluster that this worker reaches, Redis decides and none of this speaks).
//!
//! Two things the owner alone knew would be lost with it:
//!
//! - **The uids it held itself.** The owner tells its *backup* (the next worker id) which of
//!   the uids it owns it holds connections of (`PeerMsg::UidsBacked`: the whole list when
//!   their link opens, then each change). When the owner's link ends (it died), the backup
//!   says `offline` for each of them that no live worker may hold: itself (its registry) and
//!   every other sibling (its picture of their uid buckets; a sibling without a picture yet may
//!   hold anything, and then nothing is said).
//! - **Departures in the gap.** A worker whose uid loses its last connection while it has no
//!   link to the uid's owner keeps the uid (bounded by [`ORPHANS`]); when its link to the new
//!   owner opens, right after the snapshot of what it holds, it sends them
//!   (`PeerMsg::UidsGone`). The new owner waits until every sibling has linked to it (so their
//!   snapshots are in), or [`GONE_WAIT`] ticks, and until it has linked to every sibling itself
//!   (its events reach their subscribers; [`GONE_MAX`] ticks at most), then says `offline` for
//!   those nobody holds.

use super::upstream::owner;
use super::Worker;
use crate::events;
use herald_ipc::PeerMsg;
use std::collections::HashSet;

/// Departures kept for owners out of reach, over all owners, at most (beyond: dropped and
/// counted in `events_dropped`).
pub(super) const ORPHANS: usize = 100_000;
/// Ticks (seconds) an owner waits for its siblings' snapshots before deciding on departures it
/// was told of late.
const GONE_WAIT: u32 = 3;
/// Ticks it waits at most for its own links to the siblings (an `offline` for a subscriber
/// of a sibling it has no link to yet would be dropped).
const GONE_MAX: u32 = 10;

/// The backup of worker `id` among `n`: the next worker id (none alone).
pub(super) fn backup_of(id: u32, n: usize) -> Option<u32> {
    (n > 1).then(|| (id + 1) % n as u32)
}

impl Worker {
    /// This worker, owner of `uid`, got its first connection (`on`) or lost its last: its
    /// backup hears (if their link is up; the whole list follows when it opens).
    pub(super) fn tell_backup(&mut self, uid: &str, on: bool) {
        let Some(b) = backup_of(self.id, self.cfg.worker_count().max(1)) else {
            return;
        };
        if b == self.id {
            return;
        }
        let link = self
            .links
            .iter_mut()
            .find(|(_, l)| l.outbound && l.peer_worker == b);
        if let Some((_, l)) = link {
            l.dirty = true;
            let msg = PeerMsg::UidsBacked {
                whole: false,
                on,
                uids: vec![uid.to_string()],
            };
            let _ = l.chan.send(&msg);
        }
    }

    /// What an opening outbound link to `worker` carries for presence, after the snapshot:
    /// the backup's whole list if `worker` is this worker's backup, and the departures kept for
    /// `worker` as owner.
    pub(super) fn gap_link_opened(&self, worker: u32) -> Vec<PeerMsg> {
        let n = self.cfg.worker_count().max(1);
        let mut out = Vec::new();
        if backup_of(self.id, n) == Some(worker) && worker != self.id {
            let uids: Vec<String> = self
                .registry
                .iter()
                .filter(|(u, _)| owner(u, n) == self.id)
                .map(|(u, _)| u.to_string())
                .collect();
            out.push(PeerMsg::UidsBacked {
                whole: true,
                on: true,
                uids,
            });
        }
        out
    }

    /// The departures kept for owner `worker`, taken (to send when the link to it opens).
    pub(super) fn take_orphans(&mut self, worker: u32) -> Vec<String> {
        let list = self.up.orphans.remove(&worker).unwrap_or_default();
        self.up.orphans_len -= list.len();
        list.into_iter().map(String::from).collect()
    }

    /// `uid`'s last connection here ended while owner `o` is out of reach: kept for it.
    pub(super) fn keep_orphan(&mut self, o: u32, uid: &str) {
        if self.up.orphans_len >= ORPHANS {
            self.stats.events_dropped += 1;
            return;
        }
        if self.up.orphans.entry(o).or_default().insert(uid.into()) {
            self.up.orphans_len += 1;
        }
    }

    /// `uid` got a connection here again while owner `o` is still out of reach: if it was kept
    /// as gone, it was never said offline, so it is no news (true: handled).
    pub(super) fn orphan_back(&mut self, o: u32, uid: &str) -> bool {
        let back = self
            .up
            .orphans
            .get_mut(&o)
            .is_some_and(|set| set.remove(uid));
        if back {
            self.up.orphans_len -= 1;
            // Held here, as decided alone (its departure, still alone, then says offline).
            self.up.held.entry(uid.into()).or_default().push(self.pid);
        }
        back
    }

    /// The backup's part: what owner `pid` holds itself.
    pub(super) fn backed(&mut self, pid: u32, whole: bool, on: bool, uids: Vec<String>) {
        let set = self.up.backed.entry(pid).or_default();
        if whole {
            set.clear();
        }
        for u in uids {
            if on {
                set.insert(u.into());
            } else {
                set.remove(u.as_str());
            }
        }
        if set.is_empty() {
            self.up.backed.remove(&pid);
        }
    }

    /// Owner `pid`, whose backup this worker is, is gone: `offline` for the uids it held that
    /// no live worker may hold.
    pub(super) fn backed_owner_lost(&mut self, pid: u32) {
        let Some(set) = self.up.backed.remove(&pid) else {
            return;
        };
        for uid in set {
            if self.nobody_may_hold(&uid, pid) {
                self.say_offline(&uid);
            }
        }
    }

    /// An owner's part: departures a sibling could not tell it in time.
    pub(super) fn gone_told(&mut self, uids: Vec<String>) {
        for u in uids {
            if self.up.gone.len() >= ORPHANS {
                self.stats.events_dropped += 1;
                continue;
            }
            self.up.gone.push((self.up.ticks, u.into()));
        }
    }

    /// Once a second: decide on the departures told late, once every sibling has linked here
    /// (their snapshots are in) or after [`GONE_WAIT`] ticks, once it has linked to them all
    /// (or after [`GONE_MAX`] ticks).
    pub(super) fn gap_tick(&mut self) {
        self.up.ticks = self.up.ticks.wrapping_add(1);
        if self.up.gone.is_empty() {
            return;
        }
        let linked = |outbound: bool| -> HashSet<u32> {
            self.links
                .iter()
                .filter(|(_, l)| l.outbound == outbound)
                .map(|(_, l)| l.peer_pid)
                .collect()
        };
        let (inbound, outbound) = (linked(false), linked(true));
        let others = || self.peers.iter().filter(|p| p.pid != self.pid);
        // Their snapshots are in once they all linked here; the events can reach their
        // subscribers once this worker linked to them all.
        let all_in = others().all(|p| inbound.contains(&p.pid));
        let all_out = others().all(|p| outbound.contains(&p.pid));
        let now = self.up.ticks;
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.up.gone)
            .into_iter()
            .partition(|(t, _)| {
                let age = now.wrapping_sub(*t);
                age >= GONE_MAX || (all_out && (age >= GONE_WAIT || (all_in && age >= 1)))
            });
        self.up.gone = wait;
        for (_, uid) in ready {
            if !self.up.held.contains_key(&uid) && self.registry.get(&uid).is_empty() {
                self.say_offline(&uid);
            }
        }
    }

    /// Whether no live worker but `dead` may hold `uid`: not this one, and no other sibling
    /// by its picture.
    fn nobody_may_hold(&self, uid: &str, dead: u32) -> bool {
        if !self.registry.get(uid).is_empty() || self.up.held.contains_key(uid) {
            return false;
        }
        self.peers
            .iter()
            .filter(|p| p.pid != dead && p.pid != self.pid)
            .all(|p| !self.may_hold(p.pid, super::mesh::Holders::Uid(uid)))
    }

    /// `offline` for `uid`, in the host's view.
    fn say_offline(&mut self, uid: &str) {
        if !self.host_presence_speaks() {
            return;
        }
        let id = self.event_id();
        let json = self.host_presence_json(&id, false, uid);
        self.emit(events::OFFLINE, uid, json, id, None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups() {
        assert_eq!(backup_of(0, 1), None);
        assert_eq!(backup_of(0, 2), Some(1));
        assert_eq!(backup_of(1, 2), Some(0));
        assert_eq!(backup_of(3, 4), Some(0));
    }
}
