//! TODO

use super::*;
use crate::proto::http;

impl Worker {
    /// Delivers here, sends to every sibling, and arranges for the outcome to reach `reply`.
    pub(super) fn push(
        &mut self,
        target: To<'_>,
        exclude: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        self.stats.pushes += 1;
        let f = frame(if binary { OP_BINARY } else { OP_TEXT }, payload);
        let local = self.deliver_local(&target, &exclude, f, payload, binary);
        if !self.links.iter().any(|(_, l)| l.outbound) {
            let missing = self.unlinked_peers();
            self.stats.ipc_undelivered += missing as u64;
            self.settle(reply, local, missing > 0);
            return;
        }
        let id = self.inflight.next_id();
        let target = match target {
            To::Target(t) => t,
            To::Uid(u) => Target::Uids(vec![u.to_owned()]),
        };
        let msg = PeerMsg::Push(Push {
            id,
            target,
            exclude,
            payload: payload.to_vec(),
            binary,
        });
        let mut waiting = 0;
        let mut partial = self.unlinked_peers() > 0;
        for (_, link) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            match link.chan.send(&msg) {
                Ok(()) => {
                    link.inflight.push_back(id);
                    link.dirty = true;
                    waiting += 1;
                }
                Err(e) => {
                    // Counted, never silent; logged at debug since a stalled sibling would
                    // otherwise log once per push.
                    self.stats.ipc_undelivered += 1;
                    partial = true;
                    log::debug!("push {id} not sent to worker {}: {e}", link.peer_worker);
                }
            }
        }
        if waiting == 0 {
            self.settle(reply, local, partial);
            return;
        }
        let reply = if reply.decided(local) {
            self.settle(reply, local, partial);
            ReplyTo::Nobody
        } else {
            reply
        };
        self.inflight.add(Pending {
            total: local,
            waiting,
            reply,
            deadline: Instant::now() + ms(self.cfg.ipc_timeout),
            partial,
        });
    }

    /// Queues `f` to every local connection `target` names; returns how many.
    pub(super) fn deliver_local(
        &mut self,
        target: &To<'_>,
        exclude: &[String],
        f: Bytes,
        payload: &[u8],
        binary: bool,
    ) -> u32 {
        // Reused between pushes: no allocation per push for the recipient list.
        let mut slots = std::mem::take(&mut self.slots_buf);
        slots.clear();
        match target {
            To::Uid(u) => {
                if !exclude.iter().any(|e| e == u) {
                    slots.extend_from_slice(self.registry.get(u));
                }
            }
            To::Target(Target::Uids(uids)) => {
                for (i, u) in uids.iter().enumerate() {
                    if exclude.contains(u) || uids[..i].contains(u) {
                        continue;
                    }
                    slots.extend_from_slice(self.registry.get(u));
                }
            }
            To::Target(Target::All) => {
                slots.reserve(self.registry.connection_count());
                for (uid, s) in self.registry.iter() {
                    if exclude.is_empty() || !exclude.iter().any(|e| **e == **uid) {
                        slots.extend_from_slice(s);
                    }
                }
                // In table order, not the map's: sockets accepted together sit together in
                // the kernel's tables and in ours, so a broadcast walks memory in order.
                slots.sort_unstable();
            }
            To::Target(Target::Groups(groups)) => {
                let mut seen: HashSet<&str> = HashSet::new();
                for g in groups {
                    for u in self.groups.members(g) {
                        if exclude.contains(u) || !seen.insert(u) {
                            continue;
                        }
                        slots.extend_from_slice(self.registry.get(u));
                    }
                }
            }
        }
        let mut n = 0;
        // Socket.IO sessions get the push as a `new_msg` event, encoded once, on first need.
        let mut sio: Option<Option<(Rc<str>, Bytes)>> = None;
        let last = slots.len().saturating_sub(1);
        let mut f = Some(f);
        for (i, &s) in slots.iter().enumerate() {
            if s & SESSION_BIT != 0 {
                let enc = sio.get_or_insert_with(|| {
                    let text = std::str::from_utf8(payload).ok().filter(|_| !binary)?;
                    let m = crate::proto::engineio::event_message(
                        "/",
                        "new_msg",
                        &[serde_json::Value::from(text)],
                    );
                    let f = frame(OP_TEXT, m.as_bytes());
                    Some((Rc::from(m.as_str()), f))
                });
                if let Some((m, f)) = enc {
                    let (m, f) = (m.clone(), f.clone());
                    if self.sio_send((s & !SESSION_BIT) as usize, m, Some(&f)) {
                        self.stats.delivered += 1;
                        n += 1;
                    }
                }
                continue;
            }
            // The last recipient takes the frame itself: a unicast push shares nothing, so its
            // frame needs no shared reference count (one allocation less).
            let one = if i == last { f.take() } else { f.clone() };
            if one.is_some_and(|one| self.deliver(s as usize, one)) {
                n += 1;
            }
        }
        if slots.capacity() > 64 * 1024 {
            slots = Vec::new();
        }
        self.slots_buf = slots;
        n
    }

    /// Queues one frame to one logged-in connection, unless its output is over the cap.
    pub(super) fn deliver(&mut self, slot: usize, f: Bytes) -> bool {
        let cap = self.cfg.max_send_buffer;
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if conn.flags & CLOSING != 0 {
            return false;
        }
        if conn.out.len() + f.len() > cap {
            self.stats.send_fail += 1;
            if conn.slow_since == 0 {
                conn.slow_since = self.now.max(1);
            }
            return false;
        }
        self.stats.delivered += 1;
        self.queue(slot, f);
        true
    }

    /// Sends a push's outcome where it belongs.
    pub(super) fn settle(&mut self, reply: ReplyTo, total: u32, partial: bool) {
        let word = |kind: ReplyKind| -> &'static [u8] {
            match kind {
                ReplyKind::AlwaysOk => b"ok",
                ReplyKind::OkFail if total > 0 => b"ok",
                ReplyKind::OkFail => b"fail",
                ReplyKind::Publish if total > 0 => b"ok",
                ReplyKind::Publish => b"offline",
                ReplyKind::Count => b"",
            }
        };
        match reply {
            ReplyTo::Nobody => {}
            ReplyTo::Text {
                slot,
                id,
                seq,
                kind,
            } => {
                let b: &'static [u8] = match word(kind) {
                    b"ok" => b"ok\n",
                    _ => b"fail\n",
                };
                self.text_reply(slot, id, seq, Bytes::from_static(b));
            }
            ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::Count,
            } => {
                let mut v = serde_json::json!({ "delivered": total });
                if partial {
                    v["partial"] = serde_json::json!(true);
                }
                self.http_json(slot, id, "200 OK", &v);
            }
            ReplyTo::Http { slot, id, kind } => {
                let Some(keep) = self.http_keep_alive(slot, id) else {
                    return;
                };
                let body = word(kind);
                self.http_respond(
                    slot,
                    http::response("200 OK", "text/plain; charset=utf-8", body, keep, ""),
                );
                self.http_resume(slot);
            }
        }
    }
}
