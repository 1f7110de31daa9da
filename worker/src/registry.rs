//! The registry: uid → this worker's connections of that uid.
//!
//! A uid may hold several connections (tabs, devices); a push to it reaches all of them. The
//! uid string is stored once and shared with the connection (`Rc<str>`), and a uid's first two
//! connections are kept in the entry itself, so a logged-in idle connection costs one small
//! entry here and no allocation of its own; a push finds its recipients without following a
//! pointer to a separate list.
//!
//! The map hashes with foldhash, seeded at random per process: several times faster than the
//! standard SipHash on short uids (the lookup is on every push), and an outsider who picks uids
//! still cannot predict which collide.

use std::collections::HashMap;
use std::rc::Rc;

use smallvec::SmallVec;

/// A uid's connection slots: up to two without an allocation.
pub type Slots = SmallVec<[u32; 2]>;

/// uid → connection slots (indexes into the worker's connection table).
#[derive(Default)]
pub struct Registry {
    /// The map; a uid with no connection left is removed.
    uids: HashMap<Rc<str>, Slots, foldhash::fast::RandomState>,
    /// Logged-in connections, summed over all uids.
    connections: usize,
}

impl Registry {
    /// Records that connection `slot` is logged in as `uid`; returns the shared uid.
    pub fn add(&mut self, uid: &str, slot: u32) -> Rc<str> {
        self.connections += 1;
        if let Some(k) = self.uids.get_key_value(uid).map(|(k, _)| k.clone()) {
            if let Some(v) = self.uids.get_mut(uid) {
                v.push(slot);
            }
            return k;
        }
        let k: Rc<str> = Rc::from(uid);
        let mut slots = Slots::new();
        slots.push(slot);
        self.uids.insert(k.clone(), slots);
        k
    }

    /// Forgets connection `slot` of `uid`.
    pub fn remove(&mut self, uid: &str, slot: u32) {
        if let Some(v) = self.uids.get_mut(uid) {
            if let Some(i) = v.iter().position(|&s| s == slot) {
                v.swap_remove(i);
                self.connections -= 1;
            }
            if v.is_empty() {
                self.uids.remove(uid);
            }
        }
    }

    /// This worker's connections of `uid`.
    pub fn get(&self, uid: &str) -> &[u32] {
        self.uids.get(uid).map(|s| s.as_slice()).unwrap_or(&[])
    }

    /// Every (uid, connections) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&Rc<str>, &Slots)> {
        self.uids.iter()
    }

    /// Gives back table space left over from a peak (called from the sweep).
    pub fn shrink(&mut self) -> bool {
        if self.uids.capacity() > 2 * self.uids.len() + 1024 {
            self.uids.shrink_to_fit();
            return true;
        }
        false
    }

    /// Distinct uids with at least one connection here.
    pub fn uid_count(&self) -> usize {
        self.uids.len()
    }

    /// Logged-in connections here.
    pub fn connection_count(&self) -> usize {
        self.connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_connections_per_uid() {
        let mut r = Registry::default();
        r.add("u1", 1);
        r.add("u1", 2);
        r.add("u2", 3);
        assert_eq!(r.get("u1").len(), 2);
        assert_eq!(r.uid_count(), 2);
        r.remove("u1", 1);
        assert_eq!(r.get("u1"), &[2]);
        r.remove("u1", 2);
        assert_eq!(r.get("u1"), &[] as &[u32]);
        assert_eq!(r.uid_count(), 1);
        assert_eq!(r.connection_count(), 1);
        for s in 10..20 {
            r.add("u3", s);
        }
        assert_eq!(r.get("u3"), &(10..20).collect::<Vec<u32>>()[..]);
    }
}
