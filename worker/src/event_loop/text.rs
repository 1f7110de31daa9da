//! The text port: one JSON line in, one reply line out, in the order of the lines (a line
//! whose push waits for siblings holds back the replies after it, not the reading).

use super::push::To;
use super::query::QReply;
use super::Worker;
use crate::auth;
use crate::conn::{Proto, CLOSING, DIRTY};
use crate::mesh::{ReplyKind, ReplyTo};
use crate::proto::text::{self, Command};
use bytes::Bytes;
use herald_ipc::Target;

impl Worker {
    /// Every whole line of `buf`; returns the bytes used (a partial line stays).
    pub(super) fn consume_text(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            if nl > self.cfg.max_line {
                self.line_too_long(slot);
                return buf.len();
            }
            let line = &buf[pos..pos + nl];
            pos += nl + 1;
            self.text_line(slot, line);
            match self.conns.get(slot) {
                Some(c) if c.flags & CLOSING == 0 => {}
                _ => return buf.len(),
            }
        }
        if buf.len() - pos > self.cfg.max_line {
            self.line_too_long(slot);
            return buf.len();
        }
        pos
    }

    /// A line over `max_line`: replies already due go out, then the connection closes.
    fn line_too_long(&mut self, slot: usize) {
        self.stats.oversize += 1;
        if let Some(c) = self.conns.get(slot) {
            log::warn!(
                "text connection {} from {}: line longer than max_line ({} bytes); closing",
                c.id,
                c.remote,
                self.cfg.max_line
            );
        }
        // Replies already due for earlier lines are written first.
        self.close_after_flush(slot);
    }

    /// One line: the push secret first if one is configured, then a command.
    fn text_line(&mut self, slot: usize, line: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let id = conn.id;
        let Proto::Text(t) = &mut conn.proto else {
            return;
        };
        let seq = t.reserve();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !t.authed {
            // The first line must present the push secret; nothing else is read before it.
            let ok = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .is_some_and(|v| {
                    v.get("cmd").and_then(|c| c.as_str()) == Some("auth")
                        && v.get("secret").and_then(|s| s.as_str()).is_some_and(|s| {
                            auth::secret_eq(s.as_bytes(), self.cfg.push_secret.as_bytes())
                        })
                });
            if ok {
                t.authed = true;
                self.text_reply(slot, id, seq, Bytes::from_static(b"ok\n"));
            } else {
                self.stats.unauthorized += 1;
                log::warn!(
                    "text connection {id} from {}: no valid push secret; closing",
                    conn.remote
                );
                self.text_reply(
                    slot,
                    id,
                    seq,
                    Bytes::from(text::error_reply("unauthorized")),
                );
                self.close_after_flush(slot);
            }
            return;
        }
        let reply = |kind| ReplyTo::Text {
            slot,
            id,
            seq,
            kind,
        };
        match text::parse_line(line, self.cfg.max_targets) {
            Command::Seed { uid } => {
                self.push(
                    To::Uid(&uid),
                    Vec::new(),
                    line,
                    false,
                    reply(ReplyKind::OkFail),
                );
            }
            Command::Push(p) => {
                let kind = if p.target == Target::All {
                    ReplyKind::AlwaysOk
                } else if self.cfg.offline_delivery && matches!(p.target, Target::Uids(_)) {
                    ReplyKind::Pushed
                } else {
                    ReplyKind::OkFail
                };
                self.push(
                    p.target.into(),
                    p.exclude,
                    &p.payload,
                    p.binary,
                    reply(kind),
                );
            }
            Command::Query(req) => self.query(
                req,
                QReply::Answer(crate::render::To::Text { slot, id, seq }),
            ),
            Command::Fail(why) => {
                log::debug!("text connection {id}: {why}; replying fail");
                self.text_reply(slot, id, seq, Bytes::from_static(b"fail\n"));
            }
            Command::Error(e) => {
                self.text_reply(slot, id, seq, Bytes::from(text::error_reply(&e)));
            }
            Command::Upstream(cmd) => self.up_command(slot, id, seq, cmd),
        }
    }

    /// Fills reply slot `seq` of text connection `slot` (if it is still connection `id`) and
    /// writes every reply now due, in line order.
    pub(super) fn text_reply(&mut self, slot: usize, id: u64, seq: u64, reply: Bytes) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.id != id {
            return;
        }
        let Proto::Text(t) = &mut conn.proto else {
            return;
        };
        t.fill(seq, reply);
        // Queued as `queue` does, without a list of what is ready in between.
        let mut queued = false;
        while let Some(b) = t.next_ready() {
            conn.out.push(b);
            queued = true;
        }
        if queued && conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push(slot);
        }
    }
}
