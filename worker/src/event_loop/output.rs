//! Output: frames and replies queued per connection during a turn, written once per turn
//! with `writev` (WRITABLE asked for only when a socket is full), and closing.

use super::read::read_blocked;
use super::{Worker, CONN_BASE};
use crate::conn::{Port, Proto, CLOSING, DIRTY, READ_PAUSED, RESUME, WANT_WRITE};
use crate::delivery::{close_frame, kernel_unsent};
use crate::registry::Recipient;
use bytes::Bytes;
use mio::{Interest, Token};
use std::os::fd::AsRawFd;

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

    /// Writes every connection that got output this turn, then the links and the control
    /// channel.
    pub(super) fn flush_all(&mut self) {
        self.sio_flush();
        let mut i = 0;
        while i < self.dirty.len() {
            let slot = self.dirty[i];
            i += 1;
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.flags &= !DIRTY;
            let res = conn.out.flush(&mut conn.stream, &mut conn.bytes_out);
            if conn.flags & READ_PAUSED != 0 && !read_blocked(conn, &self.cfg) {
                conn.flags &= !READ_PAUSED;
                if conn.flags & RESUME == 0 {
                    conn.flags |= RESUME;
                    self.resume.push(slot);
                }
            }
            match res {
                Ok(true) => {
                    conn.slow_since = 0;
                    if conn.flags & CLOSING != 0 {
                        self.close(slot);
                    } else if conn.flags & WANT_WRITE != 0 {
                        conn.flags &= !WANT_WRITE;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(CONN_BASE + slot),
                            Interest::READABLE,
                        );
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
        }
        self.dirty.clear();
        for (_, link) in self.links.iter_mut() {
            if link.dirty {
                link.dirty = false;
                if let Err(e) = link.chan.flush() {
                    log::warn!("link to worker {}: {e}", link.peer_worker);
                }
            }
        }
        let _ = self.control.flush();
    }

    /// Removes a connection now.
    pub(super) fn close(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        let mut conn = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.forget_ip(conn.remote.ip());
        if conn.port == Port::Sio {
            self.sio_conn_closed(slot, &conn);
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
        let f = close_frame(code, reason);
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
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
