//! Output: frames and replies queued per connection during a turn, written once per turn
//! with `writev` (WRITABLE asked for only when a socket is full), and closing.

use super::read::read_blocked;
use super::{Worker, CONN_BASE};
use crate::conn::{
    Conn, Port, Proto, CLOSING, DIRTY, EOF_IN, READ_PAUSED, RESUME, RETIRED, WANT_WRITE,
};
use crate::delivery::{close_frame, kernel_unsent};
use crate::registry::Recipient;
use bytes::Bytes;
use mio::{Interest, Token};
use std::os::fd::AsRawFd;
use std::time::Instant;

impl Worker {
    /// Queues bytes to connection `slot`, to be written at the end of the turn.
    pub(super) fn queue(&mut self, slot: usize, b: Bytes) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.out.push(b);
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push(slot);
        }
    }

    /// Puts `slot` in this turn's flush list (it has output, or its socket became writable).
    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & DIRTY == 0 {
                conn.flags |= DIRTY;
                self.dirty.push(slot);
            }
        }
    }

    /// Closes `slot` once what is queued for it is written; nothing more is read from it.
    pub(super) fn close_after_flush(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.flags |= CLOSING;
        }
        self.mark_dirty(slot);
    }

    /// Writes the links, then every connection that got output this turn, then the control
    /// channel. Links first: a sibling's socket holds the news of a login (`presence`) before
    /// the client can hear it is logged in, and siblings read their links before the rest of a
    /// turn, so a push a client's answer makes a backend send finds the uid wherever it enters.
    pub(super) fn flush_all(&mut self) {
        let broken = self.flush_links();
        self.sio_flush();
        self.flush_conns();
        if !broken.is_empty() {
            // A sibling gone while we write to it (it exited in a reload, or died) is
            // expected: what it answered before it went is read first, then its link ends
            // (logged once, at info) and what still waited for it completes without it. The
            // answers that completes go out in this turn too.
            for (key, why) in broken {
                self.on_link(key);
                self.drop_link(key, &why);
            }
            self.sio_flush();
            self.flush_conns();
            // A link failing now is dropped when its end is read.
            let _ = self.flush_links();
        }
        let _ = self.control.flush();
    }

    /// Writes every connection in this turn's flush list.
    fn flush_conns(&mut self) {
        let mut i = 0;
        // Frames written in this turn count from the turn's start; the clock is read once
        // per batch of writes, and the writes of one batch are recorded together.
        let mut clock = Instant::now();
        // The backends answered in this turn have waited until now.
        self.push_latency.observe_n(
            clock.saturating_duration_since(self.turn_start),
            std::mem::take(&mut self.answered_in_turn),
        );
        let mut same = 0;
        while i < self.dirty.len() {
            if i % 64 == 0 && same > 0 {
                clock = Instant::now();
                self.delivery_latency
                    .observe_n(clock.saturating_duration_since(self.turn_start), same);
                same = 0;
            }
            let slot = self.dirty[i];
            i += 1;
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.flags &= !DIRTY;
            if conn.flags & (EOF_IN | RETIRED) != 0 && conn.flags & CLOSING == 0 && conn.answered()
            {
                // Its input is over and every request read is answered: close after the answers.
                conn.flags |= CLOSING;
            }
            let client = !conn.out.is_empty() && !conn.is_backend();
            let res = conn.out.flush(&mut conn.stream, &mut conn.bytes_out);
            if client {
                let done = matches!(res, Ok(true));
                let waited = if done {
                    self.blocked_since.remove(&slot)
                } else {
                    self.blocked_since.entry(slot).or_insert(self.turn_start);
                    None
                };
                match (done, waited) {
                    (true, Some(since)) => self
                        .delivery_latency
                        .observe(clock.saturating_duration_since(since)),
                    (true, None) => same += 1,
                    _ => {}
                }
            }
            if conn.flags & READ_PAUSED != 0 && !read_blocked(conn, &self.cfg) {
                conn.flags &= !READ_PAUSED;
                if conn.flags & RESUME == 0 {
                    conn.flags |= RESUME;
                    self.resume.push(slot);
                }
            }
            let mut handoff = false;
            match res {
                Ok(true) => {
                    conn.slow_since = 0;
                    if let Proto::Http(h) = &mut conn.proto {
                        handoff = std::mem::take(&mut h.handoff_after_flush);
                        h.waiting &= !handoff;
                    }
                    if conn.flags & WANT_WRITE != 0 {
                        conn.flags &= !WANT_WRITE;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(CONN_BASE + slot),
                            Interest::READABLE,
                        );
                    }
                    if conn.flags & (CLOSING | RETIRED | EOF_IN) == CLOSING | RETIRED {
                        // Lingering close (RFC 9112 §9.6): the FIN goes after the last answer,
                        // and what the peer still sends is read and discarded, until its EOF
                        // or until its TCP acknowledged everything (`linger`), so that unread
                        // input cannot make the close a reset that destroys answers in flight.
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                        if conn.flags & RESUME == 0 {
                            conn.flags |= RESUME;
                            self.resume.push(slot);
                        }
                        let id = conn.id;
                        self.linger(slot, id);
                    } else if conn.flags & CLOSING != 0 {
                        self.close(slot);
                    }
                }
                Ok(false) => {
                    // What the kernel holds for it counts against max_send_buffer.
                    conn.out
                        .set_kernel_backlog(kernel_unsent(conn.stream.as_raw_fd()));
                    // The socket is full: ask for WRITABLE until the queue drains. Only slow
                    // connections pay for it; the common case writes at once and never gets
                    // a writable event per write.
                    if conn.flags & WANT_WRITE == 0 {
                        conn.flags |= WANT_WRITE;
                        if let Err(e) = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(CONN_BASE + slot),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log::debug!("reregister connection {}: {e}", conn.id);
                            self.close(slot);
                        }
                    }
                }
                Err(e) => {
                    log::debug!("write to connection {}: {e}", conn.id);
                    self.close(slot);
                }
            }
            if handoff {
                // Written out: the pipelined request for another worker's session goes on.
                self.http_resume(slot);
            }
        }
        if same > 0 {
            let now = Instant::now();
            self.delivery_latency
                .observe_n(now.saturating_duration_since(self.turn_start), same);
        }
        self.dirty.clear();
    }

    /// Writes every sibling link with output; returns the links whose write failed, and why.
    fn flush_links(&mut self) -> Vec<(usize, String)> {
        let mut broken = Vec::new();
        for (key, link) in self.links.iter_mut() {
            if link.dirty {
                link.dirty = false;
                if let Err(e) = link.chan.flush() {
                    broken.push((key, e.to_string()));
                }
            }
        }
        broken
    }

    /// Removes a connection now.
    pub(super) fn close(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        let mut conn = self.conns.remove(slot);
        conn.stream.goodbye();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if !self.blocked_since.is_empty() {
            self.blocked_since.remove(&slot);
        }
        if !matches!(conn.proto, Proto::Refused { .. }) {
            self.forget_ip(conn.remote.ip());
        }
        if conn.port == Port::Sio {
            self.sio_conn_closed(slot, &conn);
        }
        if conn.port == Port::Text {
            self.up_unsubscribe(slot);
        }
        if let Proto::Ws(ws) = &conn.proto {
            if let Some(uid) = &ws.uid {
                self.logout(Recipient::conn(slot), uid);
            }
        }
        log::debug!(
            "{} connection {} from {} closed",
            conn.port.name(),
            conn.id,
            conn.remote
        );
    }

    /// Stop or drain end: WebSockets get a close frame with `code`, best effort, then all go.
    pub(super) fn close_all(&mut self, code: u16, reason: &str) {
        self.tls_end_relays();
        self.close_where(code, reason, |_| true);
    }

    /// Stop or drain end for the clients (the WebSocket and Socket.IO ports), as
    /// [`close_all`](Self::close_all); backends are left to finish their answers.
    pub(super) fn close_clients(&mut self, code: u16, reason: &str) {
        self.tls_end_relays();
        self.close_where(code, reason, |c| !c.is_backend());
    }

    /// Closes every connection `which` selects, a WebSocket after a close frame with `code`.
    fn close_where(&mut self, code: u16, reason: &str, which: impl Fn(&Conn) -> bool) {
        let f = close_frame(code, reason);
        let slots: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| which(c))
            .map(|(s, _)| s)
            .collect();
        for slot in slots {
            if let Some(conn) = self.conns.get_mut(slot) {
                if let Proto::Ws(ws) = &mut conn.proto {
                    if !ws.close_sent {
                        ws.close_sent = true;
                        conn.out.push(f.clone());
                    }
                }
                let _ = conn.out.flush(&mut conn.stream, &mut conn.bytes_out);
            }
            self.close(slot);
        }
    }
}
