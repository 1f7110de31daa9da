//! The registry: uid → this worker's connections of that uid.
//!
//! A uid may hold several connections (tabs, devices); a push to it reaches all of them. The
//! uid string is stored once and shared with the connection (`Rc<str>`), and a uid's first two
//! connections are kept in the entry itself, so a logged-in idle connection costs one small
//! entry here and no allocation of its own; a push finds its recipients without following a
//! pointer to a separate list.
//!
//! An entry is a [`Recipient`]: a connection of the worker's table, or a Socket.IO session
//! (which keeps its uid while its transport changes from polling to a WebSocket). The push path
//! asks a recipient what it is ([`Recipient::who`]) and hands it to that protocol's delivery.
//!
//! The map hashes with foldhash, seeded at random per process: several times faster than the
//! standard SipHash on short uids (the lookup is on every push), and an outsider who picks uids
//! still cannot predict which collide.

use std::collections::HashMap;
use std::rc::Rc;

use smallvec::SmallVec;

/// Who receives a push for a uid: four bytes, so an idle login costs no more than a slot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Recipient(u32);

/// What a [`Recipient`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// A plain WebSocket: its slot in the connection table.
    Conn(usize),
    /// A Socket.IO session: its index in the session table.
    Session(usize),
}

impl Recipient {
    /// The high bit tells sessions from connections.
    const SESSION: u32 = 1 << 31;

    /// Connection `slot` (below 2^31: the table would not fit in memory otherwise).
    pub fn conn(slot: usize) -> Recipient {
        Recipient(slot as u32 & !Self::SESSION)
    }

    /// Socket.IO session `idx`.
    pub fn session(idx: usize) -> Recipient {
        Recipient(idx as u32 | Self::SESSION)
    }

    /// What it is, and where to find it.
    pub fn who(self) -> Who {
        if self.0 & Self::SESSION != 0 {
            Who::Session((self.0 & !Self::SESSION) as usize)
        } else {
            Who::Conn(self.0 as usize)
        }
    }
}

/// A uid's recipients: up to two without an allocation.
pub type Slots = SmallVec<[Recipient; 2]>;

/// uid → recipients (connections of the worker's table, Socket.IO sessions).
pub struct Registry {
    /// The map; a uid with no connection left is removed.
    uids: HashMap<Rc<str>, Slots, foldhash::fast::RandomState>,
    /// Logged-in connections, summed over all uids.
    connections: usize,
    /// Logins and logouts so far: a count asked again with nothing changed is not redone.
    generation: u64,
    /// The uids' hashes, sorted, as of `hashed_at` (built for the first count, kept while the
    /// set of uids stays the same).
    hashes: Vec<u64>,
    /// The generation `hashes` was built at (`u64::MAX`: never).
    hashed_at: u64,
    /// The uids, sorted, each followed by `\n`, as of `listed_at` (built for the first `uids`
    /// question, kept while the set of uids stays the same).
    list: String,
    /// The generation `list` was built at (`u64::MAX`: never).
    listed_at: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            uids: HashMap::default(),
            connections: 0,
            generation: 0,
            hashes: Vec::new(),
            hashed_at: u64::MAX,
            list: String::new(),
            listed_at: u64::MAX,
        }
    }
}

impl Registry {
    /// Records that `slot` is logged in as `uid`; returns the shared uid.
    pub fn add(&mut self, uid: &str, slot: Recipient) -> Rc<str> {
        self.connections += 1;
        self.generation += 1;
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

    /// Forgets recipient `slot` of `uid`.
    pub fn remove(&mut self, uid: &str, slot: Recipient) {
        if let Some(v) = self.uids.get_mut(uid) {
            if let Some(i) = v.iter().position(|&s| s == slot) {
                v.swap_remove(i);
                self.connections -= 1;
                self.generation += 1;
            }
            if v.is_empty() {
                self.uids.remove(uid);
            }
        }
    }

    /// This worker's recipients of `uid`.
    pub fn get(&self, uid: &str) -> &[Recipient] {
        self.uids.get(uid).map(|s| s.as_slice()).unwrap_or(&[])
    }

    /// Every (uid, connections) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&Rc<str>, &Slots)> {
        self.uids.iter()
    }

    /// Gives back table space left over from a peak (called from the sweep).
    pub fn shrink(&mut self) -> bool {
        let mut shrunk = false;
        if self.uids.capacity() > 2 * self.uids.len() + 1024 {
            self.uids.shrink_to_fit();
            shrunk = true;
        }
        // Hashes of a set long gone are not worth their memory.
        if self.hashed_at != self.generation && !self.hashes.is_empty() {
            self.hashes = Vec::new();
            self.hashed_at = u64::MAX;
        }
        if self.listed_at != self.generation && !self.list.is_empty() {
            self.list = String::new();
            self.listed_at = u64::MAX;
        }
        shrunk
    }

    /// Logins and logouts so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every uid's [`herald_ipc::uid_hash`], ascending: rebuilt only when a login or logout
    /// came since the last call.
    pub fn uid_hashes(&mut self) -> &[u64] {
        if self.hashed_at != self.generation {
            self.hashes.clear();
            self.hashes
                .extend(self.uids.keys().map(|u| herald_ipc::uid_hash(u)));
            self.hashes.sort_unstable();
            self.hashes.shrink_to_fit();
            self.hashed_at = self.generation;
        }
        &self.hashes
    }

    /// Every uid, ascending, each followed by `\n`: rebuilt only when a login or logout came
    /// since the last call.
    pub fn uid_list(&mut self) -> &str {
        if self.listed_at != self.generation {
            let mut uids: Vec<&str> = self.uids.keys().map(|u| &**u).collect();
            uids.sort_unstable();
            self.list.clear();
            self.list
                .reserve(uids.iter().map(|u| u.len() + 1).sum::<usize>());
            for u in uids {
                self.list.push_str(u);
                self.list.push('\n');
            }
            self.list.shrink_to_fit();
            self.listed_at = self.generation;
        }
        &self.list
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
    fn lists_and_hashes_follow_logins_and_logouts() {
        let mut r = Registry::default();
        r.add("b", Recipient::conn(1));
        r.add("a", Recipient::conn(2));
        assert_eq!(r.uid_list(), "a\nb\n");
        assert_eq!(r.uid_hashes().len(), 2);
        let g = r.generation();
        // A second connection of a known uid moves the generation, not the list.
        r.add("a", Recipient::conn(3));
        assert!(r.generation() > g);
        assert_eq!(r.uid_list(), "a\nb\n");
        r.remove("b", Recipient::conn(1));
        assert_eq!(r.uid_list(), "a\n");
        assert_eq!(r.uid_hashes(), &[herald_ipc::uid_hash("a")][..]);
        r.add("c", Recipient::session(0));
        let mut want = [herald_ipc::uid_hash("a"), herald_ipc::uid_hash("c")];
        want.sort_unstable();
        assert_eq!(r.uid_hashes(), &want[..]);
        assert_eq!(r.uid_list(), "a\nc\n");
    }

    #[test]
    fn several_connections_per_uid() {
        let c = Recipient::conn;
        let mut r = Registry::default();
        r.add("u1", c(1));
        r.add("u1", c(2));
        r.add("u2", c(3));
        assert_eq!(r.get("u1").len(), 2);
        assert_eq!(r.uid_count(), 2);
        r.remove("u1", c(1));
        assert_eq!(r.get("u1"), &[c(2)]);
        r.remove("u1", c(2));
        assert_eq!(r.get("u1"), &[] as &[Recipient]);
        assert_eq!(r.uid_count(), 1);
        assert_eq!(r.connection_count(), 1);
        for s in 10..20 {
            r.add("u3", c(s));
        }
        assert_eq!(r.get("u3"), &(10..20).map(c).collect::<Vec<_>>()[..]);
    }

    #[test]
    fn sessions_and_connections_are_told_apart() {
        assert_eq!(Recipient::conn(7).who(), Who::Conn(7));
        assert_eq!(Recipient::session(7).who(), Who::Session(7));
        assert_ne!(Recipient::conn(7), Recipient::session(7));
        // A broadcast walks connections in table order, sessions after them.
        assert!(Recipient::conn(9) < Recipient::conn(10));
        assert!(Recipient::conn(1 << 20) < Recipient::session(0));
    }
}
