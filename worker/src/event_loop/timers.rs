//! Time: one coarse sweep over the connections for every deadline (handshake, login, request,
//! idle, slow consumer, a close its peer does not read) and the periodic pings, and giving
//! memory back after a peak. No connection owns a timer.

use super::http::Refusal;
use super::{shrink_idle, ticks, Worker};
use crate::conn::{Proto, CLOSING, WANT_WRITE};
use crate::delivery::{frame, OP_PING};
use crate::proto::http;
use std::time::Duration;

impl Worker {
    /// How often deadlines are checked: a quarter of the shortest timeout, within 50 ms..1 s.
    pub(super) fn sweep_interval(&self) -> Duration {
        let c = &self.cfg;
        let shortest = [
            c.auth_timeout,
            c.ping_interval,
            c.idle_timeout,
            c.slow_timeout,
            c.header_timeout,
        ]
        .into_iter()
        .filter(|t| *t > 0.0)
        .fold(4.0, f64::min);
        Duration::from_secs_f64((shortest / 4.0).clamp(0.05, 1.0))
    }

    /// After a peak of connections, return the tables' spare room and the allocator's free
    /// pages to the system, so memory goes back to its baseline when the clients leave.
    pub(super) fn give_back_memory(&mut self) {
        let mut shrunk = false;
        if self.conns.capacity() > 2 * self.conns.len() + 1024 {
            self.conns.shrink_to_fit();
            shrunk = true;
        }
        shrunk |= self.registry.shrink();
        // Work lists are reused from turn to turn; one sized by a peak keeps its room.
        shrunk |= shrink_idle(&mut self.dirty)
            | shrink_idle(&mut self.resume)
            | shrink_idle(&mut self.slots_buf);
        if self.per_ip.capacity() > 2 * self.per_ip.len() + 1024 {
            self.per_ip.shrink_to_fit();
            shrunk = true;
        }
        let n = self.conns.len();
        if shrunk || n + 1000 < self.trim_mark {
            // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps and
            // in free pages; it touches no live allocation.
            unsafe {
                libc::malloc_trim(0);
            }
            self.trim_mark = n;
        } else if n > self.trim_mark {
            self.trim_mark = n;
        }
    }

    /// One coarse pass over the connections: handshake, login and request deadlines, idle and
    /// slow connections, and the periodic ping (one shared frame for every WebSocket). Costs
    /// one comparison per connection per sweep; no connection owns a timer.
    pub(super) fn sweep(&mut self) {
        let now = self.now;
        let auth = ticks(self.cfg.auth_timeout);
        // 0 turns the idle deadline off (with pings off too, a silent client stays for ever).
        let idle = match ticks(self.cfg.idle_timeout) {
            0 => u32::MAX,
            t => t,
        };
        let slow = ticks(self.cfg.slow_timeout);
        // 0 turns the request deadline off.
        let request = match ticks(self.cfg.header_timeout) {
            0 => u32::MAX,
            t => t,
        };
        let ping_due = self.cfg.ping_interval > 0.0
            && now.saturating_sub(self.last_ping) >= ticks(self.cfg.ping_interval);
        if ping_due {
            self.last_ping = now;
        }
        // WebSockets are pinged a slice per sweep, each every `ping_interval`: 10,000
        // connections pinged at once would hold up pushes for one write each (tens of ms).
        let slices = if self.cfg.ping_interval > 0.0 {
            (self.cfg.ping_interval / self.sweep_interval().as_secs_f64())
                .round()
                .max(1.0) as usize
        } else {
            0
        };
        let slice = self.ping_sweeps % slices.max(1);
        self.ping_sweeps = self.ping_sweeps.wrapping_add(1);
        let ping = frame(OP_PING, b"");
        self.groups.expire(now, ticks(self.cfg.group_ttl));
        self.give_back_memory();
        self.sio_sweep(ping_due);
        self.tls_sweep(auth);
        enum Act {
            Drop,
            Close(u16, &'static str),
            Ping,
            RequestTimeout,
            Stuck,
        }
        let mut acts: Vec<(usize, Act)> = Vec::new();
        for (slot, c) in self.conns.iter() {
            if c.flags & CLOSING != 0 {
                // It closes once its output is written, which a peer that does not read
                // would put off for ever, holding the kernel's buffer: it gets slow_timeout
                // from when its socket was first seen full here.
                if c.flags & WANT_WRITE != 0 {
                    if c.slow_since == 0 {
                        acts.push((slot, Act::Stuck));
                    } else if now.saturating_sub(c.slow_since) >= slow {
                        acts.push((slot, Act::Drop));
                    }
                }
                continue;
            }
            if c.slow_since != 0 && now.saturating_sub(c.slow_since) >= slow {
                acts.push((slot, Act::Drop));
                continue;
            }
            let age = now.saturating_sub(c.since);
            let quiet = now.saturating_sub(c.last_seen);
            match &c.proto {
                Proto::Handshake | Proto::Refused { .. } if age >= auth => {
                    acts.push((slot, Act::Drop))
                }
                Proto::Ws(ws) if ws.uid.is_none() && ws.session.is_none() && age >= auth => {
                    acts.push((slot, Act::Close(1008, "login timeout")))
                }
                Proto::Ws(ws) if !ws.close_sent && quiet >= idle => {
                    acts.push((slot, Act::Close(1001, "idle timeout")))
                }
                Proto::Ws(ws)
                    if slices > 0
                        && slot % slices == slice
                        && ws.uid.is_some()
                        && !ws.close_sent =>
                {
                    acts.push((slot, Act::Ping))
                }
                // A request (head and body) must arrive whole within header_timeout of its
                // first byte: each byte resets the idle timer, so a client trickling one byte
                // at a time would otherwise hold the connection, and its buffer, for ever.
                Proto::Http(h)
                    if !h.waiting && h.started != 0 && now.saturating_sub(h.started) >= request =>
                {
                    acts.push((slot, Act::RequestTimeout))
                }
                Proto::Http(h) if !h.waiting && quiet >= idle => acts.push((slot, Act::Drop)),
                _ => {}
            }
        }
        for (slot, act) in acts {
            let Some(c) = self.conns.get_mut(slot) else {
                continue;
            };
            let (id, remote) = (c.id, c.remote);
            match act {
                Act::Ping => self.queue(slot, ping.clone()),
                Act::Stuck => c.slow_since = now.max(1),
                Act::Drop => {
                    if c.slow_since != 0 {
                        self.stats.slow_closed += 1;
                        log::info!(
                            "connection {id} from {remote}: output not read for slow_timeout (over max_send_buffer, or a close it does not take); resetting"
                        );
                        // Its output will never be read: a reset frees the kernel's buffers
                        // at once and tells the client, where a close would wait behind them.
                        let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                    } else if matches!(c.proto, Proto::Handshake) {
                        self.stats.auth_timeout += 1;
                        log::info!(
                            "websocket {id} from {remote}: handshake not finished in time; closing"
                        );
                    } else {
                        self.stats.idle_closed += 1;
                        log::debug!("http connection {id} from {remote}: idle; closing");
                    }
                    self.close(slot);
                }
                Act::RequestTimeout => {
                    self.stats.header_timeout += 1;
                    let why = "request not received whole within header_timeout";
                    let r = http::text(408, "request timeout\n", false);
                    self.reject(slot, why, r, Refusal::Counted);
                }
                Act::Close(code, why) => {
                    if code == 1008 {
                        self.stats.auth_timeout += 1;
                    } else {
                        self.stats.idle_closed += 1;
                    }
                    log::info!("websocket {id} from {remote}: {why}; closing");
                    self.ws_close(slot, code, why);
                }
            }
        }
    }
}
