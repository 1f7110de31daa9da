//! Group membership: which uids are in which group.
//!
//! Membership belongs to the uid, not to a connection, and is replicated in every worker: a
//! `join` reaches all workers before it is answered, so a group push is answered by each worker
//! from its own copy, reaching that worker's connections of every member (one lookup per
//! member, never a scan of all connections). A membership lives while its uid has a connection
//! here, and `group_ttl` after the last one closes; a worker that sees a uid log in asks its
//! siblings for the uid's groups, so a membership still alive elsewhere is never lost here.

use std::collections::{HashMap, HashSet};

/// The membership tables.
#[derive(Default)]
pub struct Groups {
    /// group → member uids.
    members: HashMap<String, HashSet<String>>,
    /// uid → its groups (the reverse index, for logins and expiry).
    of_uid: HashMap<String, HashSet<String>>,
    /// Members with no connection in this worker, and since when (worker clock ticks).
    absent_since: HashMap<String, u32>,
}

impl Groups {
    /// Adds `uid` to `group`. `present` tells whether the uid has a connection here.
    pub fn join(&mut self, uid: &str, group: &str, present: bool, now: u32) {
        self.members
            .entry(group.to_string())
            .or_default()
            .insert(uid.to_string());
        self.of_uid
            .entry(uid.to_string())
            .or_default()
            .insert(group.to_string());
        if !present {
            self.absent_since.entry(uid.to_string()).or_insert(now);
        }
    }

    /// Removes `uid` from `group`.
    pub fn leave(&mut self, uid: &str, group: &str) {
        if let Some(m) = self.members.get_mut(group) {
            m.remove(uid);
            if m.is_empty() {
                self.members.remove(group);
            }
        }
        if let Some(g) = self.of_uid.get_mut(uid) {
            g.remove(group);
            if g.is_empty() {
                self.of_uid.remove(uid);
                self.absent_since.remove(uid);
            }
        }
    }

    /// Dissolves `group`.
    pub fn ungroup(&mut self, group: &str) {
        for uid in self.members.remove(group).unwrap_or_default() {
            if let Some(g) = self.of_uid.get_mut(&uid) {
                g.remove(group);
                if g.is_empty() {
                    self.of_uid.remove(&uid);
                    self.absent_since.remove(&uid);
                }
            }
        }
    }

    /// The members of `group`.
    pub fn members(&self, group: &str) -> impl Iterator<Item = &String> {
        self.members.get(group).into_iter().flatten()
    }

    /// Every group with its members.
    pub fn all(&self) -> impl Iterator<Item = (&String, &HashSet<String>)> {
        self.members.iter()
    }

    /// The groups of `uid`.
    pub fn groups_of(&self, uid: &str) -> Vec<String> {
        self.of_uid
            .get(uid)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `uid` got its first connection here.
    pub fn arrived(&mut self, uid: &str) {
        self.absent_since.remove(uid);
    }

    /// `uid` lost its last connection here.
    pub fn departed(&mut self, uid: &str, now: u32) {
        if self.of_uid.contains_key(uid) {
            self.absent_since.insert(uid.to_string(), now);
        }
    }

    /// Drops the memberships of uids absent here for `ttl` ticks.
    pub fn expire(&mut self, now: u32, ttl: u32) {
        let old: Vec<String> = self
            .absent_since
            .iter()
            .filter(|(_, &t)| now.saturating_sub(t) >= ttl)
            .map(|(u, _)| u.clone())
            .collect();
        for uid in old {
            for g in self.groups_of(&uid) {
                self.leave(&uid, &g);
            }
            self.absent_since.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_ungroup_expire() {
        let mut g = Groups::default();
        g.join("u1", "a", true, 0);
        g.join("u2", "a", false, 0);
        g.join("u1", "b", true, 0);
        assert_eq!(g.members("a").count(), 2);
        let mut of = g.groups_of("u1");
        of.sort();
        assert_eq!(of, vec!["a", "b"]);
        g.leave("u1", "b");
        assert_eq!(g.members("b").count(), 0);
        g.expire(100, 50);
        assert_eq!(g.members("a").collect::<Vec<_>>(), vec!["u1"]);
        g.departed("u1", 100);
        g.expire(120, 50);
        assert_eq!(g.members("a").count(), 1);
        g.arrived("u1");
        g.expire(1000, 50);
        assert_eq!(g.members("a").count(), 1);
        g.ungroup("a");
        assert_eq!(g.all().count(), 0);
        assert!(g.groups_of("u1").is_empty());
    }
}
