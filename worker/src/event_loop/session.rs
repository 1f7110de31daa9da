//! TODO

use super::*;

impl Worker {
    /// Registers a checked uid for connection `slot`; false (and the connection closing) if
    /// the uid is not acceptable.
    pub(super) fn login(&mut self, slot: usize, uid: &str) -> bool {
        if uid.is_empty() || uid.len() > MAX_UID || uid.chars().any(char::is_control) {
            self.stats.auth_failed += 1;
            self.ws_close(slot, 1008, "invalid uid");
            return false;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return false;
        };
        let first_here = self.registry.get(uid).is_empty();
        let rc = self.registry.add(uid, slot as u32);
        log::debug!(
            "websocket {} from {} logged in as {uid}",
            conn.id,
            conn.remote
        );
        ws.uid = Some(rc);
        if self.cfg.login_reply {
            let msg = format!("login success, your uid is {uid}");
            self.queue(slot, frame(OP_TEXT, msg.as_bytes()));
        }
        if first_here {
            self.groups.arrived(uid);
            if self.links.iter().any(|(_, l)| l.outbound) {
                self.query(
                    serde_json::json!({"q": "groups_of", "uid": uid}),
                    QReply::LoginSync(uid.to_string()),
                );
            }
        }
        true
    }
}
