//! Login and logout, one path for every protocol: a plain WebSocket (uid or token in its first
//! message, or a token in its URL) and a Socket.IO session (`login` event) both log in here,
//! and both leave here when their connection or session ends.
//!
//! A login checks the uid, records the recipient in the registry, and — for the uid's first
//! recipient in this worker — takes up the uid's groups: those this worker kept for it
//! (`group_ttl`) and those its siblings know (asked with [`Query::GroupsOf`], once any group
//! exists: a server that uses no group logs in without asking).

use super::query::QReply;
use super::Worker;
use crate::registry::Recipient;
use herald_ipc::Query;
use std::rc::Rc;

/// Longest uid accepted at login.
pub(super) const MAX_UID: usize = 256;

/// Whether `uid` may be logged in: not empty, at most [`MAX_UID`] bytes, no control
/// characters (it appears in logs and reports).
pub(super) fn valid_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= MAX_UID && !uid.chars().any(char::is_control)
}

impl Worker {
    /// Logs `who` in as `uid`; the shared uid, or `None` (counted as `auth_failed`) when the
    /// uid is not acceptable. The caller words the refusal for its protocol.
    pub(super) fn login(&mut self, who: Recipient, uid: &str) -> Option<Rc<str>> {
        if !valid_uid(uid) {
            self.stats.auth_failed += 1;
            return None;
        }
        let first_here = self.registry.get(uid).is_empty();
        let rc = self.registry.add(uid, who);
        if first_here {
            self.presence.arrive(uid);
            self.cluster_presence(uid, true);
            self.groups.arrived(uid);
            if self.groups_in_use && self.links.iter().any(|(_, l)| l.outbound) {
                self.query(
                    Query::GroupsOf {
                        uid: uid.to_string(),
                    },
                    QReply::LoginSync(rc.clone()),
                );
            }
        }
        self.up_login(who, &rc, first_here);
        self.history_login(who, uid);
        Some(rc)
    }

    /// `who`, logged in as `uid`, is gone; the uid's last recipient here starts its groups'
    /// `group_ttl` (and, with the history in Redis, its time in the record of uids that
    /// dropped recently, for which `all` is still kept).
    pub(super) fn logout(&mut self, who: Recipient, uid: &str) {
        self.history_logout(who, uid);
        self.registry.remove(uid, who);
        let last_here = self.registry.get(uid).is_empty();
        if last_here {
            self.presence.depart(uid);
            self.cluster_presence(uid, false);
            self.groups.departed(uid, self.now);
            self.ch_dropped(uid);
        }
        self.up_logout(who, uid, last_here);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids() {
        assert!(valid_uid("u1"));
        assert!(valid_uid(&"x".repeat(MAX_UID)));
        assert!(!valid_uid(""));
        assert!(!valid_uid(&"x".repeat(MAX_UID + 1)));
        assert!(!valid_uid("a\nb"));
    }
}
