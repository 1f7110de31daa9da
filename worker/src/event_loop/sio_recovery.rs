//! Socket.IO's connection state recovery (with a history; see `resume` for the WebSocket
//! forms and `recovery` for where the history lives): a v4 CONNECT is answered with a private
//! session id (`pid`), each event to the session ends with its position (`"EPOCH:OFFSET"`,
//! the last string argument, which socket.io-client ≥ 4.6 keeps as its offset), and a CONNECT
//! that brings `{pid, offset}` back is held while the owners are asked who that pid was: a
//! session found whole gets its old socket id, is logged in again as its uid, and receives
//! what it missed before anything new; any other gets a new session (`recovered` false on the
//! client), and its page logs in again.

use super::resume::{parse_pos, pos_text, SioState, Waiter};
use super::Worker;
use crate::proto::engineio::{EioVersion, SioPacket};
use crate::registry::Recipient;
use herald_ipc::{HistoryMsg, Kept, Whose};
use serde_json::{json, Value};
use std::rc::Rc;

/// Longest private session id accepted from a client.
const MAX_PID: usize = 64;

impl Worker {
    /// A Socket.IO CONNECT (v4, with a history): answered here with a private id, or held
    /// while the session it names is recovered. False: not handled here.
    pub(super) fn sio_history_connect(
        &mut self,
        idx: usize,
        version: EioVersion,
        pkt: &SioPacket,
    ) -> bool {
        if self.hist.is_none() || version != EioVersion::V4 || pkt.nsp != "/" {
            return false;
        }
        let Some(esid) = self.sio.sessions.get(idx).map(|s| s.sid.clone()) else {
            return true;
        };
        let auth = pkt.data.as_ref();
        let pid = auth
            .and_then(|a| a.get("pid"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty() && p.len() <= MAX_PID);
        let Some(pid) = pid.map(str::to_string) else {
            self.sio_fresh_connect(idx, esid, None);
            return true;
        };
        let pos = auth
            .and_then(|a| a.get("offset"))
            .and_then(Value::as_str)
            .and_then(parse_pos);
        let what = Waiter::Session {
            idx,
            esid: esid.clone(),
            pid: Some(pid.clone()),
        };
        let id = self.add_pending(what, 1);
        let q = |id| HistoryMsg::Recover {
            id,
            whose: Whose::Pid { pid: pid.clone() },
            epoch: pos.map(|p| p.0),
            offset: pos.map(|p| p.1),
            offline: false,
        };
        // This worker may own the binding: answered at once.
        let local = self.answer_recover(
            id,
            Whose::Pid { pid: pid.clone() },
            pos.map(|p| p.0),
            pos.map(|p| p.1),
            false,
            self.pid,
        );
        if matches!(local, HistoryMsg::Recovered { found: true, .. }) {
            self.on_recovered(local);
            return true;
        }
        let asked = self.ask_everyone(q(id));
        match self.hist.as_mut().and_then(|h| h.pending.get_mut(&id)) {
            Some(p) if asked > 0 => p.left = asked,
            _ => {
                if let Some(p) = self.hist.as_mut().and_then(|h| h.pending.remove(&id)) {
                    self.recovery_failed(p);
                }
            }
        }
        true
    }

    /// Answers a v4 CONNECT as a new session: a new private id, the socket id given (or the
    /// Engine.IO id, as without a history).
    pub(super) fn sio_fresh_connect(
        &mut self,
        idx: usize,
        esid: Rc<str>,
        socket_id: Option<String>,
    ) {
        let pid = self.sio.gen.next_sid();
        let socket_id = socket_id.unwrap_or_else(|| esid.to_string());
        let Some(s) = self.sio.sessions.get_mut(idx) else {
            return;
        };
        s.connected = true;
        let m = format!("40{}", json!({ "sid": socket_id, "pid": pid }));
        if let Some(h) = self.hist.as_mut() {
            h.sessions.insert(
                idx,
                SioState {
                    esid,
                    pid,
                    socket_id,
                    uid: None,
                    epoch: 0,
                    offset: 0,
                },
            );
        }
        self.sio_send(idx, Rc::from(m.as_str()), None);
        self.sio_online_to(idx);
    }

    /// An event packet for session `idx` with its position appended (Socket.IO's offset is
    /// an event's last string argument); `None` to send it as it is.
    pub(super) fn sio_stamp(&self, idx: usize, packet: &str) -> Option<Rc<str>> {
        let h = self.hist.as_ref()?;
        let st = h.sessions.get(&idx)?;
        if self.sio.sessions.get(idx).map(|s| &s.sid) != Some(&st.esid) {
            return None;
        }
        let body = packet.strip_prefix("42[")?.strip_suffix(']')?;
        let pos = if st.epoch == 0 {
            String::new()
        } else {
            pos_text(st.epoch, st.offset)
        };
        Some(Rc::from(
            format!("42[{body},{}]", Value::from(pos)).as_str(),
        ))
    }

    /// A Socket.IO session came back whole: logged in again, its old socket id, then what
    /// it missed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sio_recovered(
        &mut self,
        idx: usize,
        esid: Rc<str>,
        pid: String,
        uid: String,
        socket_id: String,
        epoch: u64,
        top: u64,
        messages: Vec<Kept>,
    ) {
        if let Some(h) = self.hist.as_mut() {
            h.recovering = true;
        }
        let rc = self.login(Recipient::session(idx), &uid);
        if let Some(h) = self.hist.as_mut() {
            h.recovering = false;
        }
        let Some(rc) = rc else {
            self.stats.recovery_failed += 1;
            return self.sio_fresh_connect(idx, esid, None);
        };
        self.stats.recovered += 1;
        if let Some(s) = self.sio.sessions.get_mut(idx) {
            s.uid = Some(rc);
            s.connected = true;
        }
        let since = messages.first().map_or(top, |m| m.offset.saturating_sub(1));
        let esid_text = esid.to_string();
        if let Some(h) = self.hist.as_mut() {
            h.sessions.insert(
                idx,
                SioState {
                    esid,
                    pid: pid.clone(),
                    socket_id: socket_id.clone(),
                    uid: Some(uid.clone()),
                    epoch,
                    offset: since,
                },
            );
        }
        self.ask_owner(
            &uid,
            HistoryMsg::Bind {
                pid: pid.clone(),
                uid: uid.clone(),
                sid: socket_id.clone(),
                ended: false,
                by: esid_text,
            },
        );
        let m = format!("40{}", json!({ "sid": socket_id, "pid": pid }));
        self.sio_send(idx, Rc::from(m.as_str()), None);
        let r = Recipient::session(idx);
        self.deliver_kept(r, epoch, messages);
        if let Some(st) = self.hist.as_mut().and_then(|h| h.sessions.get_mut(&idx)) {
            if st.offset < top {
                st.offset = top;
            }
        }
        self.sio_online_to(idx);
    }
}
