//! What clients see of the history (see `recovery` for where it lives):
//!
//! - **Socket.IO v4** (socket.io-client ≥ 4.6 recovers by itself): the CONNECT answer gives a
//!   private session id (`pid`), every event to the session ends with its position as a last
//!   string argument (`"EPOCH:OFFSET"`, the epoch in hex), and a client that comes back with
//!   `{pid, offset}` in its CONNECT gets the same socket id, is logged in again as its uid,
//!   and receives what it missed, in order, before anything new. Socket.IO 2 clients (the
//!   seed page) see nothing of this. (The CONNECT side is in `sio_recovery`; the positions,
//!   waiting and answers are shared here.)
//! - **Plain WebSocket, opt-in**: `?envelope=1` on the URL wraps each message to the uid in
//!   `{"type":"msg","epoch":…,"offset":…,"data":…}` and tells the position at login
//!   (`{"type":"position",…}`); `?since=EPOCH:OFFSET` (which implies the envelope) asks for
//!   what came after it: one `{"type":"recovery","recovered":…,"epoch":…,"offset":…}` frame,
//!   then the missed messages, then live ones. Without these parameters the bytes are those
//!   of a server without history.
//! - **Offline delivery** (`offline_delivery`): at login, the messages nobody received.
//!
//! A connection waiting for its recovery keeps the live messages that arrive meanwhile (at
//! most [`MAX_BUFFERED`]) and sends those the answer did not hold, so nothing is doubled.

use super::sio_push::SioEvent;
use super::Worker;
use crate::delivery::{frame, OP_BINARY, OP_TEXT};
use crate::registry::{Recipient, Who};
use base64::Engine;
use bytes::Bytes;
use herald_ipc::{HistoryMsg, Kept, Whose};
use serde_json::json;
use std::rc::Rc;
use std::time::Instant;

/// Live messages kept for a connection while its recovery is asked (beyond: dropped, and the
/// recovery answers `recovered: false`).
pub(super) const MAX_BUFFERED: usize = 1000;

/// A WebSocket connection that asked for positions.
pub(super) struct ConnState {
    /// The connection's id (its slot may be reused).
    pub(super) id: u64,
    /// Messages go out wrapped with their positions.
    envelope: bool,
    /// The `since` it asked for (`Err`: unreadable).
    since: Since,
    /// Its position: epoch (0: none yet) and offset.
    epoch: u64,
    /// See `epoch`.
    offset: u64,
    /// While its recovery is asked: the live messages that came (epoch, offset, payload,
    /// binary); `None` otherwise.
    buffer: Option<Vec<(u64, u64, Bytes, bool)>>,
    /// More than [`MAX_BUFFERED`] came: the recovery cannot be whole.
    overflow: bool,
}

/// A Socket.IO v4 session with a private id.
pub(super) struct SioState {
    /// The session's Engine.IO id (its index may be reused).
    pub(super) esid: Rc<str>,
    /// Its private id.
    pub(super) pid: String,
    /// Its socket id (kept over a recovery).
    pub(super) socket_id: String,
    /// The uid, once logged in.
    pub(super) uid: Option<String>,
    /// Its position (epoch 0: none yet).
    pub(super) epoch: u64,
    /// See `epoch`.
    pub(super) offset: u64,
}

/// Who waits for an owner's answer.
pub(super) enum Waiter {
    /// A WebSocket connection: `since` recovery, or its login position (and offline
    /// messages).
    Conn {
        /// Its slot.
        slot: usize,
        /// Its id.
        id: u64,
        /// It asked for `since`.
        since: bool,
    },
    /// A Socket.IO session: a CONNECT with `{pid, offset}` (`pid` given), or its login
    /// position (and offline messages).
    Session {
        /// Its index.
        idx: usize,
        /// Its Engine.IO id.
        esid: Rc<str>,
        /// The private id it came back with.
        pid: Option<String>,
    },
}

/// A recovery waiting for answers.
pub(super) struct Pending {
    /// When it gives up.
    pub(super) deadline: Instant,
    /// Answers still expected (a pid is asked of every sibling).
    pub(super) left: usize,
    /// Who waits.
    pub(super) what: Waiter,
}

/// A `since` as asked: a position, or `Err` when unreadable.
type Since = Option<Result<(u64, u64), ()>>;

/// `EPOCH:OFFSET` (epoch in hex, offset in decimal; `%3A` for the colon accepted).
pub(super) fn parse_pos(s: &str) -> Option<(u64, u64)> {
    let s = s.replace("%3A", ":").replace("%3a", ":");
    let (e, o) = s.split_once(':')?;
    if e.is_empty() || e.len() > 16 || o.is_empty() || o.len() > 20 {
        return None;
    }
    let e = u64::from_str_radix(e, 16).ok()?;
    let o: u64 = o.parse().ok()?;
    (e != 0).then_some((e, o))
}

/// A position as clients see it.
pub(super) fn pos_text(epoch: u64, offset: u64) -> String {
    format!("{epoch:x}:{offset}")
}

/// A message wrapped with its position, as one text frame.
fn envelope(epoch: u64, offset: u64, payload: &[u8], binary: bool) -> Bytes {
    let mut v = match (binary, std::str::from_utf8(payload)) {
        (false, Ok(t)) => {
            json!({ "type": "msg", "epoch": format!("{epoch:x}"), "offset": offset, "data": t })
        }
        _ => json!({
            "type": "msg",
            "epoch": format!("{epoch:x}"),
            "offset": offset,
            "data": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    if binary {
        v["binary"] = json!(true);
    }
    frame(OP_TEXT, v.to_string().as_bytes())
}

/// A message without a position (a broadcast to everyone) for an envelope connection:
/// `{"type":"msg","data":…}`.
pub(super) fn unpositioned(payload: &[u8], binary: bool) -> Bytes {
    let v = match (binary, std::str::from_utf8(payload)) {
        (false, Ok(t)) => json!({ "type": "msg", "data": t }),
        _ => json!({
            "type": "msg",
            "data": base64::engine::general_purpose::STANDARD.encode(payload),
            "binary": true,
        }),
    };
    frame(OP_TEXT, v.to_string().as_bytes())
}

/// The `?since=` and `?envelope=` of a WebSocket URL.
fn url_options(target: &str) -> (bool, Since) {
    let Some((_, query)) = target.split_once('?') else {
        return (false, None);
    };
    let mut envelope = false;
    let mut since = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "envelope" => envelope = matches!(v, "1" | "true" | "yes"),
            "since" => since = Some(parse_pos(v).ok_or(())),
            _ => {}
        }
    }
    (envelope, since)
}

impl Worker {
    /// A WebSocket handshake's URL: remembers `envelope` and `since` (with a history).
    pub(super) fn ws_history_options(&mut self, slot: usize, target: &str) {
        let Some(id) = self.conns.get(slot).map(|c| c.id) else {
            return;
        };
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        let (envelope, since) = url_options(target);
        if !envelope && since.is_none() {
            h.conns.remove(&slot);
            return;
        }
        h.conns.insert(
            slot,
            ConnState {
                id,
                envelope: true,
                since,
                epoch: 0,
                offset: 0,
                buffer: None,
                overflow: false,
            },
        );
    }

    /// The epoch of recipient `r`'s position (0: none yet, or it has no position state).
    pub(super) fn position_epoch(&self, r: Recipient) -> u64 {
        let Some(h) = self.hist.as_ref() else {
            return 0;
        };
        match r.who() {
            Who::Conn(slot) => h.conns.get(&slot).map_or(0, |s| s.epoch),
            Who::Session(idx) => h.sessions.get(&idx).map_or(0, |s| s.epoch),
        }
    }

    /// Whether connection `slot` asked for the envelope.
    pub(super) fn wants_envelope(&self, slot: usize) -> bool {
        let id = self.conns.get(slot).map(|c| c.id);
        self.hist
            .as_ref()
            .and_then(|h| h.conns.get(&slot))
            .is_some_and(|s| s.envelope && Some(s.id) == id)
    }

    /// Registers a recovery waiting for `left` answers; its id.
    pub(super) fn add_pending(&mut self, what: Waiter, left: usize) -> u64 {
        let deadline = Instant::now() + super::ms(self.cfg.ipc_timeout.max(0.2));
        let Some(h) = self.hist.as_mut() else {
            return 0;
        };
        let id = h.next_id;
        h.next_id += 1;
        h.pending.insert(
            id,
            Pending {
                deadline,
                left,
                what,
            },
        );
        id
    }

    /// Asks the owner of `uid`; a failure to ask fails the recovery at once.
    fn ask_owner_for(&mut self, uid: &str, what: Waiter, m: impl FnOnce(u64) -> HistoryMsg) {
        let id = self.add_pending(what, 1);
        if !self.ask_owner(uid, m(id)) {
            if let Some(p) = self.hist.as_mut().and_then(|h| h.pending.remove(&id)) {
                self.recovery_failed(p);
            }
        }
    }

    /// `who` logged in as `uid` (from `login`): binds a Socket.IO session's private id, and
    /// asks the owner for the position, a `since` recovery or offline messages.
    pub(super) fn history_login(&mut self, who: Recipient, uid: &str) {
        let offline = self.cfg.offline_delivery;
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        if h.recovering {
            return;
        }
        match who.who() {
            Who::Conn(slot) => {
                let cid = self.conns.get(slot).map(|c| c.id);
                let st = h.conns.get_mut(&slot).filter(|s| Some(s.id) == cid);
                let Some(id) = cid else { return };
                let since = match st {
                    None if !offline => return,
                    None => None,
                    Some(st) => match st.since.take() {
                        Some(Ok(pos)) => {
                            st.buffer = Some(Vec::new());
                            Some(pos)
                        }
                        Some(Err(())) => {
                            self.stats.recovery_failed += 1;
                            let m = json!({"type": "recovery", "recovered": false, "error": "since must be EPOCH:OFFSET"});
                            self.deliver(slot, frame(OP_TEXT, m.to_string().as_bytes()));
                            None
                        }
                        None => None,
                    },
                };
                let what = Waiter::Conn {
                    slot,
                    id,
                    since: since.is_some(),
                };
                let uid_s = uid.to_string();
                self.ask_owner_for(uid, what, |id| HistoryMsg::Recover {
                    id,
                    whose: Whose::Uid { uid: uid_s },
                    epoch: since.map(|s| s.0),
                    offset: since.map(|s| s.1),
                    offline: offline && since.is_none(),
                });
            }
            Who::Session(idx) => {
                let Some(esid) = self.sio.sessions.get(idx).map(|s| s.sid.clone()) else {
                    return;
                };
                let st = h.sessions.get_mut(&idx).filter(|s| s.esid == esid);
                let bind = st.map(|st| {
                    st.uid = Some(uid.to_string());
                    HistoryMsg::Bind {
                        pid: st.pid.clone(),
                        uid: uid.to_string(),
                        sid: st.socket_id.clone(),
                        ended: false,
                        by: st.esid.to_string(),
                    }
                });
                let has_pid = bind.is_some();
                if let Some(b) = bind {
                    self.ask_owner(uid, b);
                }
                if !has_pid && !offline {
                    return;
                }
                let what = Waiter::Session {
                    idx,
                    esid,
                    pid: None,
                };
                let uid_s = uid.to_string();
                self.ask_owner_for(uid, what, |id| HistoryMsg::Recover {
                    id,
                    whose: Whose::Uid { uid: uid_s },
                    epoch: None,
                    offset: None,
                    offline,
                });
            }
        }
    }

    /// `who`, logged in as `uid`, is gone: a Socket.IO session's recovery window starts.
    pub(super) fn history_logout(&mut self, who: Recipient, uid: &str) {
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        match who.who() {
            Who::Conn(slot) => {
                h.conns.remove(&slot);
            }
            Who::Session(idx) => {
                let esid = self.sio.sessions.get(idx).map(|s| s.sid.clone());
                let Some(st) = h.sessions.remove(&idx) else {
                    return;
                };
                if esid.is_some_and(|e| e != st.esid) {
                    return;
                }
                let m = HistoryMsg::Bind {
                    pid: st.pid,
                    uid: uid.to_string(),
                    sid: st.socket_id,
                    ended: true,
                    by: st.esid.to_string(),
                };
                self.ask_owner(uid, m);
            }
        }
    }

    /// One positioned message to one recipient (a message it already has is skipped).
    pub(super) fn deliver_one(
        &mut self,
        r: Recipient,
        epoch: u64,
        offset: u64,
        payload: &Bytes,
        binary: bool,
        plain: &Bytes,
    ) -> bool {
        match r.who() {
            Who::Conn(slot) => {
                let cid = self.conns.get(slot).map(|c| c.id);
                if let Some(st) = self
                    .hist
                    .as_mut()
                    .and_then(|h| h.conns.get_mut(&slot))
                    .filter(|s| Some(s.id) == cid)
                {
                    if let Some(buf) = &mut st.buffer {
                        if buf.len() < MAX_BUFFERED {
                            buf.push((epoch, offset, payload.clone(), binary));
                        } else {
                            st.overflow = true;
                        }
                        return true;
                    }
                    if st.epoch == epoch && offset <= st.offset {
                        return false;
                    }
                    st.epoch = epoch;
                    st.offset = offset;
                    if st.envelope {
                        return self.deliver(slot, envelope(epoch, offset, payload, binary));
                    }
                }
                self.deliver(slot, plain.clone())
            }
            Who::Session(idx) => {
                let esid = self.sio.sessions.get(idx).map(|s| s.sid.clone());
                if let Some(st) = self
                    .hist
                    .as_mut()
                    .and_then(|h| h.sessions.get_mut(&idx))
                    .filter(|s| Some(&s.esid) == esid.as_ref())
                {
                    if st.epoch == epoch && offset <= st.offset {
                        return false;
                    }
                    st.epoch = epoch;
                    st.offset = offset;
                }
                let mut ev = SioEvent::new(payload, binary);
                self.sio_deliver(idx, &mut ev)
            }
        }
    }

    /// Kept messages to recipient `r`, oldest first.
    pub(super) fn deliver_kept(&mut self, r: Recipient, epoch: u64, list: Vec<Kept>) {
        for k in list {
            let payload = Bytes::from(k.payload);
            let plain = frame(if k.binary { OP_BINARY } else { OP_TEXT }, &payload);
            self.deliver_one(r, epoch, k.offset, &payload, k.binary, &plain);
        }
    }

    /// Offline messages to recipient `r`, oldest first: older than anything live it may have
    /// got already, so they are not checked against its position (nor move it).
    fn deliver_offline(&mut self, r: Recipient, epoch: u64, list: Vec<Kept>) {
        for k in list {
            let payload = Bytes::from(k.payload);
            match r.who() {
                Who::Conn(slot) => {
                    let f = if self.wants_envelope(slot) {
                        envelope(epoch, k.offset, &payload, k.binary)
                    } else {
                        frame(if k.binary { OP_BINARY } else { OP_TEXT }, &payload)
                    };
                    self.deliver(slot, f);
                }
                Who::Session(idx) => {
                    let mut ev = SioEvent::new(&payload, k.binary);
                    self.sio_deliver(idx, &mut ev);
                }
            }
        }
    }

    /// An owner's answer (or this worker's own).
    pub(super) fn on_recovered(&mut self, m: HistoryMsg) {
        let HistoryMsg::Recovered {
            id,
            found,
            uid,
            sid,
            recovered,
            epoch,
            top,
            messages,
        } = m
        else {
            return;
        };
        let Some(h) = self.hist.as_mut() else {
            return;
        };
        let Some(p) = h.pending.get_mut(&id) else {
            return;
        };
        if !found {
            p.left = p.left.saturating_sub(1);
            if p.left == 0 {
                if let Some(p) = h.pending.remove(&id) {
                    self.recovery_failed(p);
                }
            }
            return;
        }
        let Some(p) = h.pending.remove(&id) else {
            return;
        };
        match p.what {
            Waiter::Conn { slot, id, since } => {
                if self.conns.get(slot).map(|c| c.id) != Some(id) {
                    return;
                }
                let r = Recipient::conn(slot);
                let st = self
                    .hist
                    .as_mut()
                    .and_then(|h| h.conns.get_mut(&slot))
                    .filter(|s| s.id == id);
                let Some(st) = st else {
                    // A plain connection: offline messages only.
                    return self.deliver_offline(r, epoch, messages);
                };
                let buffered = st.buffer.take().unwrap_or_default();
                let whole = recovered && !st.overflow;
                st.overflow = false;
                // Live messages may have gone out before this answer (without `since`): the
                // position told is the furthest the connection got.
                let shown = if st.epoch == epoch {
                    top.max(st.offset)
                } else {
                    top
                };
                let head = if since {
                    json!({"type": "recovery", "recovered": whole, "epoch": format!("{epoch:x}"), "offset": top})
                } else {
                    json!({"type": "position", "epoch": format!("{epoch:x}"), "offset": shown})
                };
                if since {
                    if whole {
                        self.stats.recovered += 1;
                    } else {
                        self.stats.recovery_failed += 1;
                    }
                }
                if since {
                    self.deliver(slot, frame(OP_TEXT, head.to_string().as_bytes()));
                    self.deliver_kept(r, epoch, messages);
                } else {
                    // Offline messages first: the position told last is where the client is.
                    self.deliver_offline(r, epoch, messages);
                    self.deliver(slot, frame(OP_TEXT, head.to_string().as_bytes()));
                }
                if let Some(st) = self.hist.as_mut().and_then(|h| h.conns.get_mut(&slot)) {
                    if st.epoch != epoch || st.offset < top {
                        st.epoch = epoch;
                        st.offset = top;
                    }
                }
                for (e, o, payload, binary) in buffered {
                    let plain = frame(if binary { OP_BINARY } else { OP_TEXT }, &payload);
                    self.deliver_one(r, e, o, &payload, binary, &plain);
                }
            }
            Waiter::Session { idx, esid, pid } => {
                if self.sio.sessions.get(idx).map(|s| &s.sid) != Some(&esid) {
                    return;
                }
                let r = Recipient::session(idx);
                match pid {
                    Some(pid) if recovered => {
                        self.sio_recovered(idx, esid, pid, uid, sid, epoch, top, messages)
                    }
                    Some(_) => {
                        self.stats.recovery_failed += 1;
                        self.sio_fresh_connect(idx, esid, None);
                    }
                    None => {
                        self.deliver_offline(r, epoch, messages);
                        if let Some(st) = self.hist.as_mut().and_then(|h| h.sessions.get_mut(&idx))
                        {
                            if st.epoch != epoch || st.offset < top {
                                st.epoch = epoch;
                                st.offset = top;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A recovery got no usable answer in time (or could not be asked).
    pub(super) fn recovery_failed(&mut self, p: Pending) {
        match p.what {
            Waiter::Conn { slot, id, since } => {
                if self.conns.get(slot).map(|c| c.id) != Some(id) {
                    return;
                }
                let buffered = self
                    .hist
                    .as_mut()
                    .and_then(|h| h.conns.get_mut(&slot))
                    .and_then(|s| s.buffer.take())
                    .unwrap_or_default();
                if since {
                    self.stats.recovery_failed += 1;
                    let m = json!({"type": "recovery", "recovered": false});
                    self.deliver(slot, frame(OP_TEXT, m.to_string().as_bytes()));
                }
                let r = Recipient::conn(slot);
                for (e, o, payload, binary) in buffered {
                    let plain = frame(if binary { OP_BINARY } else { OP_TEXT }, &payload);
                    self.deliver_one(r, e, o, &payload, binary, &plain);
                }
            }
            Waiter::Session { idx, esid, pid } => {
                if pid.is_some() && self.sio.sessions.get(idx).map(|s| &s.sid) == Some(&esid) {
                    self.stats.recovery_failed += 1;
                    self.sio_fresh_connect(idx, esid, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(parse_pos("ff:12"), Some((255, 12)));
        assert_eq!(parse_pos("ff%3A12"), Some((255, 12)));
        for bad in [
            "",
            ":",
            "ff",
            "ff:",
            ":1",
            "0:1",
            "zz:1",
            "ff:-1",
            "ff:1.5",
            "ffffffffffffffffff:1",
            "ff:99999999999999999999999",
        ] {
            assert_eq!(parse_pos(bad), None, "{bad}");
        }
        assert_eq!(url_options("/?since=a:1"), (false, Some(Ok((10, 1)))));
        assert_eq!(url_options("/?envelope=1&since=x"), (true, Some(Err(()))));
        assert_eq!(url_options("/"), (false, None));
        assert_eq!(pos_text(255, 3), "ff:3");
    }

    #[test]
    fn envelopes_carry_the_position() {
        let f = envelope(255, 7, b"{\"a\":1}", false);
        let text = String::from_utf8_lossy(&f[2..]).into_owned();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["epoch"], "ff");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["data"], "{\"a\":1}");
    }
}
