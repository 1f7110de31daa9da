//! Reading: a readable socket is read into the worker's scratch buffer, within a budget and
//! under backpressure, and the bytes go to the connection's protocol. Only an incomplete tail
//! (a frame, a line, a request still arriving) is kept with the connection.

use super::{would_block, Worker, MAX_PENDING_REPLIES, READ_BUDGET, SCRATCH};
use crate::config::Config;
use crate::conn::{Conn, Port, Proto, CLOSING, EOF_IN, READ_PAUSED, RESUME};
use crate::proto::http;
use std::io::{self, Read};

/// Whether a connection must not be read now: its queued output is over `max_send_buffer`
/// (a client sending pings, or requests, faster than it reads answers), its unparsed input is
/// over what one frame, line or request may take, or too many of its replies are in flight.
/// (An HTTP request's parser always decides before `http::request_max` bytes, so reading never
/// pauses on a request that is still undecided.)
pub(super) fn read_blocked(c: &Conn, cfg: &Config) -> bool {
    let max_in = cfg
        .max_line
        .max(cfg.max_frame)
        .max(http::request_max(cfg.max_header, cfg.max_body))
        + SCRATCH;
    // With the history in Redis each push is a command on the cluster bus, whose queue is
    // shared by the worker: one backend may have a sixteenth of it in flight (it then waits,
    // rather than having its pushes dropped at a full queue).
    let max_replies = if cfg.history_size > 0 && !cfg.cluster.is_empty() {
        MAX_PENDING_REPLIES / 16
    } else {
        MAX_PENDING_REPLIES
    };
    c.out.len() > cfg.max_send_buffer
        || c.inbuf.len() > max_in
        || matches!(&c.proto, Proto::Text(t) if t.replies.len() > max_replies)
}

impl Worker {
    /// The slot of a backend connection (text port, HTTP API) that event `ev` says is
    /// readable (or ended), read before the clients in a loop turn.
    pub(super) fn backend_event(&self, ev: &mio::event::Event) -> Option<usize> {
        let slot = ev.token().0.checked_sub(super::CONN_BASE)?;
        if ev.token().0 >= super::tls::RELAY_BASE
            || !(ev.is_readable() || ev.is_read_closed() || ev.is_error())
        {
            return None;
        }
        self.conns
            .get(slot)
            .is_some_and(|c| c.is_backend())
            .then_some(slot)
    }

    /// Reads connection `slot` in a later loop turn (this turn's client reads are spent).
    pub(super) fn read_later(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            if c.flags & RESUME == 0 {
                c.flags |= RESUME;
                self.resume.push(slot);
            }
        }
    }

    /// Reads `slot` until `WouldBlock`, its read budget or backpressure. With `short_ok` (the
    /// event said readable and nothing else), a read that did not fill the buffer ends it: the
    /// socket was empty then, and saving the `read` that would only say `WouldBlock` is one
    /// system call less per backend connection and turn. The end of the peer's input ends
    /// reading, not the connection ([`Worker::on_eof`]).
    pub(super) fn on_readable(&mut self, slot: usize, short_ok: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut budget = READ_BUDGET;
        while let Some(conn) = self.conns.get_mut(slot) {
            if !conn.reads() {
                break;
            }
            let closing = conn.flags & CLOSING != 0;
            if !closing && read_blocked(conn, &self.cfg) {
                // Backpressure: read again once its output drains or its requests finish.
                conn.flags |= READ_PAUSED;
                break;
            }
            if budget == 0 {
                if conn.flags & RESUME == 0 {
                    conn.flags |= RESUME;
                    self.resume.push(slot);
                }
                break;
            }
            match conn.stream.read(&mut scratch) {
                Ok(0) => {
                    self.on_eof(slot);
                    break;
                }
                // Discard what a closing peer still sends, until WouldBlock or its EOF.
                Ok(n) if closing => budget = budget.saturating_sub(n),
                Ok(n) => {
                    let first = conn.bytes_in == 0;
                    conn.bytes_in += n as u64;
                    conn.last_seen = self.now;
                    budget = budget.saturating_sub(n);
                    if first && self.tls_on_plain(slot, &scratch[..n]) {
                        break;
                    }
                    self.on_bytes(slot, &mut scratch[..n]);
                    // (A TLS stream's short read may leave records in rustls.)
                    if short_ok && n < scratch.len() && !self.tls_read_more(slot) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    log::debug!("read from connection in slot {slot}: {e}");
                    self.tls_read_failed(slot, &e);
                    self.close(slot);
                    break;
                }
            }
        }
        self.scratch = scratch;
        self.tls_after_read(slot);
        if self.retire.is_some() {
            self.retire_conn(slot, false);
        }
    }

    /// The peer of `slot` finished sending. A backend's lines and requests already read are
    /// still answered, those waiting for siblings included, and the connection closes once
    /// the answers are written (the flush decides). A WebSocket's end closes it now, after a
    /// last write of what is queued (a close frame); so does the end of a connection already
    /// closing with nothing left to write.
    fn on_eof(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.flags |= EOF_IN;
        let closing = conn.flags & CLOSING != 0;
        let answers_due = !closing && matches!(conn.proto, Proto::Text(_) | Proto::Http(_));
        if answers_due || (closing && !conn.out.is_empty()) {
            self.mark_dirty(slot);
        } else {
            let _ = conn.out.flush(&mut conn.stream, &mut conn.bytes_out);
            self.close(slot);
        }
    }

    /// Handles bytes just read. Works on the bytes in place when nothing was pending, and keeps
    /// only an incomplete tail with the connection.
    pub(super) fn on_bytes(&mut self, slot: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut buf = std::mem::take(&mut conn.inbuf);
        let port = conn.port;
        let handshake = matches!(conn.proto, Proto::Handshake);
        let used_inbuf = !buf.is_empty() || handshake || port == Port::Http || port == Port::Sio;
        let rest = if used_inbuf {
            buf.extend_from_slice(data);
            let used = self.consume(slot, &mut buf);
            buf.drain(..used.min(buf.len()));
            buf
        } else {
            let used = self.consume(slot, data);
            data[used.min(data.len())..].to_vec()
        };
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & CLOSING == 0 {
                conn.inbuf = rest;
                if conn.inbuf.capacity() > conn.inbuf.len() * 2 + 1024 {
                    conn.inbuf.shrink_to_fit();
                }
            }
        }
    }

    /// Handles what it can of `buf`; returns how many bytes were used.
    pub(super) fn consume(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let Some(conn) = self.conns.get(slot) else {
            return buf.len();
        };
        match conn.proto {
            Proto::Handshake => self.consume_handshake(slot, buf),
            Proto::Ws(_) => self.consume_ws(slot, buf),
            Proto::Text(_) => self.consume_text(slot, buf),
            Proto::Http(_) => self.consume_http(slot, buf),
            Proto::Refused { status, why } => {
                self.refuse_in_words(slot, status, why);
                buf.len()
            }
        }
    }
}
