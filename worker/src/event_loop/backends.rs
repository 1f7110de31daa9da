//! Events, the backends' side: text connections that subscribe, backends' answers to one
//! client (a reply or a Socket.IO ack, from a subscriber's line or a webhook's answer),
//! server-wide presence kept by each uid's owner worker, and the events' messages on the
//! sibling mesh. See `upstream` for the design.

use super::upstream::owner;
use super::Worker;
use crate::conn::Proto;
use crate::delivery::{frame, OP_BINARY, OP_TEXT};
use crate::events::{self, ConnRef, UpCmd};
use crate::mesh::ReplyTo;
use crate::proto::engineio;
use crate::proto::text;
use crate::webhook::News;
use bytes::Bytes;
use herald_ipc::PeerMsg;
use serde_json::Value;
use std::collections::HashMap;
use std::rc::Rc;

/// Webhook news handled per loop turn before other work gets a turn.
const NEWS_PER_TURN: usize = 256;

impl Worker {
    // ---- Subscribers --------------------------------------------------------------------

    /// A text-port event command on connection `slot` (`id`), answered in reply slot `seq`.
    pub(super) fn up_command(
        &mut self,
        slot: usize,
        id: u64,
        seq: u64,
        cmd: Result<UpCmd, String>,
    ) {
        let reply = match cmd {
            Err(e) => text::error_reply(&e),
            Ok(UpCmd::Subscribe(_)) if !self.up.on => {
                text::error_reply("events are off: set events = true (or a webhook_url)")
            }
            Ok(UpCmd::Subscribe(mask)) => {
                self.up.subs.insert(slot, (id, mask));
                self.subscribers_changed();
                if let Some(c) = self.conns.get(slot) {
                    log::info!(
                        "text connection {id} from {} subscribed to events",
                        c.remote
                    );
                }
                b"ok\n".to_vec()
            }
            Ok(UpCmd::Unsubscribe) => {
                if self.up.subs.remove(&slot).is_some() {
                    self.subscribers_changed();
                }
                b"ok\n".to_vec()
            }
            Ok(UpCmd::Reply {
                conn,
                node,
                payload,
                binary,
            }) => ok_fail(self.answer_anywhere(&conn, node, None, binary, payload)),
            Ok(UpCmd::Ack {
                conn,
                node,
                ack,
                args,
            }) => ok_fail(self.answer_anywhere(&conn, node, Some(ack), false, args)),
        };
        self.text_reply(slot, id, seq, Bytes::from(reply));
    }

    /// Text connection `slot` closed: it subscribes no more.
    pub(super) fn up_unsubscribe(&mut self, slot: usize) {
        if self.up.subs.remove(&slot).is_some() {
            self.subscribers_changed();
        }
    }

    /// The subscribers here changed: the siblings learn the new list.
    fn subscribers_changed(&mut self) {
        self.up.rings.clear();
        let msg = PeerMsg::Subscribers(self.up.subs.values().copied().collect());
        for (_, l) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            l.dirty = true;
            if let Err(e) = l.chan.send(&msg) {
                log::warn!(
                    "cannot tell worker {} about subscribers: {e}",
                    l.peer_worker
                );
            }
        }
    }

    // ---- Answers to clients ------------------------------------------------------------

    /// A backend's reply or ack for client `conn` of `node` (a cluster's node, named by the
    /// `conn` string): sent on to that node's worker over Redis when it is another, else
    /// [`Worker::answer_client`]. False when it cannot go.
    fn answer_anywhere(
        &mut self,
        conn: &ConnRef,
        node: Option<String>,
        ack: Option<u64>,
        binary: bool,
        payload: Vec<u8>,
    ) -> bool {
        let here = self.bus.as_ref().map(|b| b.node.as_str());
        match node {
            Some(n) if Some(n.as_str()) != here => {
                if here.is_none() || !self.cluster_up {
                    // Not a node of this cluster's, or Redis out of reach.
                    return false;
                }
                let msg = PeerMsg::ToClient {
                    conn: conn.to_string(),
                    ack,
                    binary,
                    payload,
                };
                let to = format!("{n}/{}", conn.pid());
                self.bus_send_msg(&to, &msg)
            }
            _ => self.answer_client(conn, ack, binary, payload),
        }
    }

    /// A backend's answer that a sibling or another node handed over for client `conn` of
    /// this worker (anything else is not ours to answer).
    pub(super) fn handed_answer(
        &mut self,
        conn: &str,
        ack: Option<u64>,
        binary: bool,
        payload: Vec<u8>,
    ) {
        if let Some(c) = ConnRef::parse(conn).filter(|c| c.pid() == self.pid) {
            self.answer_client(&c, ack, binary, payload);
        }
    }

    /// A backend's reply (`ack` None) or ack for client `conn`, here or in a sibling; false
    /// when it cannot go (no such connection here, no link to its worker).
    fn answer_client(
        &mut self,
        conn: &ConnRef,
        ack: Option<u64>,
        binary: bool,
        payload: Vec<u8>,
    ) -> bool {
        if conn.pid() != self.pid {
            let msg = PeerMsg::ToClient {
                conn: conn.to_string(),
                ack,
                binary,
                payload,
            };
            return self.send_to_sibling(conn.pid(), &msg);
        }
        match conn {
            ConnRef::Ws { slot, id, .. } => {
                let ok = self.conns.get(*slot).is_some_and(|c| {
                    c.id == *id && matches!(&c.proto, Proto::Ws(ws) if ws.uid.is_some() && ws.session.is_none())
                });
                if !ok || ack.is_some() {
                    return false;
                }
                self.deliver(
                    *slot,
                    frame(if binary { OP_BINARY } else { OP_TEXT }, &payload),
                )
            }
            ConnRef::Session { sid, .. } => {
                let Some(&idx) = self.sio.sids.get(sid.as_str()) else {
                    return false;
                };
                let m = match ack {
                    Some(a) => {
                        let args = match serde_json::from_slice::<Value>(&payload) {
                            Ok(Value::Array(a)) => a,
                            _ => return false,
                        };
                        engineio::ack_message("/", a, &args)
                    }
                    None if binary => return false,
                    None => engineio::event_message(
                        "/",
                        "new_msg",
                        &[Value::from(String::from_utf8_lossy(&payload))],
                    ),
                };
                self.sio_send(idx, Rc::from(m.as_str()), None)
            }
        }
    }

    /// Webhook news: counts, failures, and the endpoint's answers applied.
    pub(super) fn on_webhook(&mut self) {
        let mut news = Vec::new();
        if let Some(w) = &self.up.webhook {
            news.extend(w.rx.try_iter().take(NEWS_PER_TURN));
        }
        self.up.news_again = news.len() == NEWS_PER_TURN;
        for n in news {
            match n {
                News::Sent(k) => {
                    self.stats.webhook_sent += k as u64;
                    if std::mem::take(&mut self.up.webhook_failing) {
                        log::info!("webhook: {} answers again", self.cfg.webhook_url);
                    }
                }
                News::Failed(why) => {
                    self.stats.webhook_retries += 1;
                    if !self.up.webhook_failing {
                        self.up.webhook_failing = true;
                        log::warn!(
                            "webhook: POST to {} failed ({why}); retrying with back-off",
                            self.cfg.webhook_url
                        );
                    }
                }
                News::Answers(list) => {
                    for r in list {
                        self.apply_answer(r.conn.as_deref(), r.ack, &r.answer);
                    }
                }
            }
        }
    }

    /// One event's answer from a backend: a reply and an ack to its client, pushes to others.
    fn apply_answer(&mut self, conn: Option<&str>, ack: Option<u64>, answer: &Value) {
        let (a, errors) = events::answer(answer, self.cfg.max_targets);
        for e in errors {
            log::info!("webhook answer: {e}");
        }
        let conn = conn.and_then(ConnRef::parse);
        if let (Some(c), Some((payload, binary))) = (&conn, a.reply) {
            self.answer_client(c, None, binary, payload);
        }
        if let (Some(c), Some(id), Some(args)) = (&conn, ack, a.ack) {
            self.answer_client(c, Some(id), false, args);
        }
        for p in a.pushes {
            self.push(
                p.target.into(),
                p.exclude,
                &p.payload,
                p.binary,
                ReplyTo::Nobody,
            );
        }
    }

    // ---- Presence over the server ------------------------------------------------------

    /// `uid` arrived in this worker (first connection) or left it (last one): its owner hears.
    pub(super) fn up_held(&mut self, uid: &str, on: bool) {
        self.cluster_held(uid, on);
        let n = self.cfg.worker_count().max(1);
        let o = owner(uid, n);
        if o != self.id {
            let link = self
                .links
                .iter_mut()
                .find(|(_, l)| l.outbound && l.peer_worker == o);
            if let Some((_, l)) = link {
                l.dirty = true;
                let msg = PeerMsg::UidsHeld {
                    on,
                    uids: vec![uid.to_string()],
                };
                if l.chan.send(&msg).is_ok() {
                    return;
                }
            }
            // No way to the owner (starting, restarting, full): this worker decides alone,
            // for what it announced alone; a departure of a uid the owner knew of waits for
            // the new owner (`presence_gap`).
            if !on && !self.up.held.contains_key(uid) {
                self.keep_orphan(o, uid);
                return;
            }
            if on && self.orphan_back(o, uid) {
                return;
            }
        } else {
            self.tell_backup(uid, on);
        }
        self.apply_held(self.pid, uid, on);
    }

    /// The owner's part: worker `pid` holds `uid` now (`on`) or no more.
    fn apply_held(&mut self, pid: u32, uid: &str, on: bool) {
        let changed = if on {
            let e = self.up.held.entry(uid.into()).or_default();
            let first = e.is_empty();
            if !e.contains(&pid) {
                e.push(pid);
            }
            first
        } else {
            match self.up.held.get_mut(uid) {
                Some(e) => {
                    e.retain(|p| *p != pid);
                    let last = e.is_empty();
                    if last {
                        self.up.held.remove(uid);
                    }
                    last
                }
                None => false,
            }
        };
        // In a cluster that this worker reaches, Redis decides (`presence_cluster`).
        if changed && self.host_presence_speaks() {
            let id = self.event_id();
            let json = self.host_presence_json(&id, on, uid);
            let bit = if on { events::ONLINE } else { events::OFFLINE };
            self.emit(bit, uid, json, id, None, None);
        }
    }

    // ---- The mesh ------------------------------------------------------------------------

    /// A new outbound link `key`: the sibling learns this worker's subscribers and, if it
    /// owns some of this worker's uids, that they are here.
    pub(super) fn up_link_opened(&mut self, key: usize) {
        if !self.up.on {
            return;
        }
        let Some(worker) = self.links.get(key).map(|l| l.peer_worker) else {
            return;
        };
        let n = self.cfg.worker_count().max(1);
        let uids: Vec<String> = self
            .registry
            .iter()
            .filter(|(u, _)| owner(u, n) == worker)
            .map(|(u, _)| u.to_string())
            .collect();
        // What this worker decided alone for them while it had no way to their owner is the
        // owner's business again (it holds only this worker's pid).
        self.up.held.retain(|u, _| owner(u, n) != worker);
        let subs = PeerMsg::Subscribers(self.up.subs.values().copied().collect());
        let mut gap = self.gap_link_opened(worker);
        let gone = self.take_orphans(worker);
        if !gone.is_empty() {
            gap.push(PeerMsg::UidsGone(gone));
        }
        if let Some(l) = self.links.get_mut(key) {
            l.dirty = true;
            let _ = l.chan.send(&subs);
            if !uids.is_empty() {
                let _ = l.chan.send(&PeerMsg::UidsSnapshot(uids));
            }
            for m in gap {
                let _ = l.chan.send(&m);
            }
        }
        // Events held at this worker's start may now reach that sibling's subscribers.
        self.flush_early();
    }

    /// Link from sibling `pid` ended: its subscribers are gone, and it holds no uid any more.
    pub(super) fn up_link_lost(&mut self, pid: u32, outbound: bool) {
        if outbound || !self.up.on {
            return;
        }
        if self.up.remote.remove(&pid).is_some() {
            self.up.rings.clear();
        }
        self.up.subs_from.remove(&pid);
        let gone: Vec<String> = self
            .up
            .held
            .iter()
            .filter(|(_, pids)| pids.contains(&pid))
            .map(|(u, _)| u.to_string())
            .collect();
        for uid in gone {
            self.apply_held(pid, &uid, false);
        }
        self.backed_owner_lost(pid);
    }

    /// An events message from the sibling on link `key`.
    pub(super) fn up_peer_msg(&mut self, key: usize, msg: PeerMsg) {
        let Some(pid) = self.links.get(key).map(|l| l.peer_pid) else {
            return;
        };
        match msg {
            PeerMsg::Subscribers(list) => {
                if list.is_empty() {
                    self.up.remote.remove(&pid);
                } else {
                    self.up.remote.insert(pid, list);
                }
                self.up.rings.clear();
                self.up.subs_from.insert(pid);
                self.flush_early();
            }
            PeerMsg::Event { sub: 0, mask, line } => self.send_to_subs(mask, Bytes::from(line)),
            PeerMsg::Event { sub, line, .. } => self.send_to_sub(sub, Bytes::from(line)),
            PeerMsg::UidsHeld { on, uids } if self.up.on => {
                for u in uids {
                    self.apply_held(pid, &u, on);
                }
            }
            PeerMsg::UidsBacked { whole, on, uids } if self.up.on => {
                self.backed(pid, whole, on, uids)
            }
            PeerMsg::UidsGone(uids) if self.up.on => self.gone_told(uids),
            // Held before the link opened: announced already (see `PeerMsg::UidsSnapshot`).
            PeerMsg::UidsSnapshot(uids) if self.up.on => {
                for u in uids {
                    let e = self.up.held.entry(u.into()).or_default();
                    if !e.contains(&pid) {
                        e.push(pid);
                    }
                }
            }
            PeerMsg::ToClient {
                conn,
                ack,
                binary,
                payload,
            } => self.handed_answer(&conn, ack, binary, payload),
            _ => {}
        }
    }

    /// Once a second: forget handshakes of connections that went without logging in.
    pub(super) fn up_tick(&mut self) {
        if !self.up.on {
            return;
        }
        self.flush_early();
        let conns = &self.conns;
        self.up
            .handshakes
            .retain(|slot, (id, _)| conns.get(*slot).is_some_and(|c| c.id == *id));
        let sessions = &self.sio.sessions;
        self.up.sessions.retain(|idx, _| sessions.contains(*idx));
        // Tables sized by a peak (a login storm) give their room back.
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
            if m.capacity() > 1024 && m.len() * 4 < m.capacity() {
                m.shrink_to_fit();
            }
        }
        shrink(&mut self.up.handshakes);
        shrink(&mut self.up.sessions);
        shrink(&mut self.up.closes);
        shrink(&mut self.up.clients);
        shrink(&mut self.up.rates);
        shrink(&mut self.up.held);
        self.gap_tick();
    }
}

/// `ok` or `fail` as a reply line.
fn ok_fail(ok: bool) -> Vec<u8> {
    if ok {
        b"ok\n".to_vec()
    } else {
        b"fail\n".to_vec()
    }
}
