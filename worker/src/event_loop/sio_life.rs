//! The end of Socket.IO sessions: closing one (out of the registry and the sid map, its
//! transports closed), detaching a connection that closed from its session, and the sweep's
//! heartbeats (v4: the server pings) and silent sessions.

use super::socketio::PING_TIMEOUT_MS;
use super::{ticks, Worker};
use crate::conn::{Conn, Proto};
use crate::delivery::{frame, OP_TEXT};
use crate::proto::engineio::{push_payload, EioVersion};
use crate::registry::Recipient;
use std::rc::Rc;

impl Worker {
    /// Ends a session: out of the registry and the sid map; its transports closed.
    pub(super) fn sio_close(&mut self, idx: usize, why: &str) {
        if !self.sio.sessions.contains(idx) {
            return;
        }
        let s = self.sio.sessions.remove(idx);
        self.sio.sids.remove(&s.sid);
        log::debug!("socket.io session {} closed: {why}", s.sid);
        if let Some(uid) = &s.uid {
            self.up_note_close(Recipient::session(idx), None, why);
            self.logout(Recipient::session(idx), uid);
        }
        if let Some((slot, id)) = s.poll {
            let mut body = String::new();
            push_payload(s.version, &mut body, "1");
            self.sio_answer_poll(slot, id, body, s.origin.as_deref());
        }
        for (slot, id) in [s.ws, s.probe].into_iter().flatten() {
            if self.conns.get(slot).is_some_and(|c| c.id == id) {
                if let Some(Proto::Ws(ws)) = self.conns.get_mut(slot).map(|c| &mut c.proto) {
                    ws.session = None;
                }
                self.ws_close(slot, 1000, "");
            }
        }
    }

    /// A connection closed: detach it from its session.
    pub(super) fn sio_conn_closed(&mut self, slot: usize, conn: &Conn) {
        match &conn.proto {
            Proto::Ws(ws) => {
                if let Some(idx) = ws.session {
                    let idx = idx as usize;
                    let Some(s) = self.sio.sessions.get_mut(idx) else {
                        return;
                    };
                    if s.probe == Some((slot, conn.id)) {
                        s.probe = None;
                    } else if s.ws == Some((slot, conn.id)) {
                        s.ws = None;
                        self.sio_close(idx, "transport closed");
                    }
                }
            }
            Proto::Http(h) => {
                if let Some(idx) = h.poll_for {
                    if let Some(s) = self.sio.sessions.get_mut(idx as usize) {
                        if s.poll == Some((slot, conn.id)) {
                            s.poll = None;
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Sweep: heartbeats (v4: the server pings) and sessions that went silent.
    pub(super) fn sio_sweep(&mut self, ping_due: bool) {
        let limit = ticks(self.cfg.ping_interval) + ticks(PING_TIMEOUT_MS as f64 / 1000.0) + 20;
        let now = self.now;
        let mut dead = Vec::new();
        let mut ping = Vec::new();
        for (idx, s) in self.sio.sessions.iter_mut() {
            if s.poll.is_some() {
                s.last_seen = now;
            }
            if now.saturating_sub(s.last_seen) > limit {
                dead.push(idx);
            } else if ping_due && s.version == EioVersion::V4 {
                ping.push(idx);
            }
        }
        for idx in dead {
            self.sio_close(idx, "ping timeout");
        }
        let p: Rc<str> = Rc::from("2");
        let f = frame(OP_TEXT, b"2");
        for idx in ping {
            self.sio_send(idx, p.clone(), Some(&f));
        }
    }
}
