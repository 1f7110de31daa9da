//! The master's control channel: the list of siblings, status and connection reports, stop
//! and drain.

use super::{ms, Worker};
use crate::conn::{Port, Proto, RETIRED};
use herald_ipc::{ChannelError, Control, Stats};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant, SystemTime};

impl Worker {
    /// Reads what the master sent and acts on it; a closed channel stops the worker.
    pub(super) fn on_control(&mut self) {
        let mut msgs = Vec::new();
        let res = self.control.receive(&mut msgs);
        for m in msgs {
            self.control_msg(m);
        }
        match res {
            Ok(()) => {}
            Err(ChannelError::Closed) => {
                log::info!("master is gone; stopping");
                self.begin_stop();
            }
            Err(e) => {
                log::error!("control channel: {e}; stopping");
                self.begin_stop();
            }
        }
        if let Err(e) = self.control.flush() {
            log::debug!("control flush: {e}");
        }
    }

    /// One message from the master.
    pub(super) fn control_msg(&mut self, m: Control) {
        match m {
            Control::Peers { peers } => {
                self.peers = peers.into_iter().filter(|p| p.pid != self.pid).collect();
                // Drop outbound links to processes that are gone.
                let gone: Vec<usize> = self
                    .links
                    .iter()
                    .filter(|(_, l)| l.outbound && !self.peers.iter().any(|p| p.pid == l.peer_pid))
                    .map(|(k, _)| k)
                    .collect();
                for k in gone {
                    self.drop_link(k, "worker left");
                }
                self.connect_peers();
                if !self.mesh_known {
                    self.mesh_known = true;
                    self.accept_all();
                }
            }
            Control::StatusRequest { seq } => {
                let row = self.status_row();
                self.tell_master(Control::Status { seq, row });
            }
            Control::ConnectionsRequest { seq } => {
                let rows = self.connection_rows();
                self.tell_master(Control::Connections { seq, rows });
            }
            Control::Stop => {
                log::info!("stop requested");
                self.begin_stop();
            }
            Control::Drain => self.begin_drain(),
            Control::Ping { seq } => self.tell_master(Control::Pong { seq }),
            other => log::warn!("unexpected control message {other:?}"),
        }
    }

    /// Closes the listeners (after taking what waits in their queues) and serves the
    /// remaining connections until they end or `drain_timeout` passes; backends are retired
    /// at once ([`retire_backends`](Self::retire_backends)).
    pub(super) fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        // Take every connection already queued in the kernel, then close: a closing
        // SO_REUSEPORT listener resets what is left in its queue (unless tcp_migrate_req).
        self.close_listeners(true);
        self.drain_deadline = Some(Instant::now() + ms(self.cfg.drain_timeout));
        log::info!(
            "draining: listeners closed, serving {} connections for up to {}s",
            self.conns.len(),
            self.cfg.drain_timeout
        );
        self.tell_master(Control::ListenersClosed { worker: self.id });
        self.history_handover();
        self.retire_backends();
    }

    /// Stop: the listeners close (the kernel moves their queues to a sibling's listener when
    /// `tcp_migrate_req` is on; otherwise what waits is taken first), the clients are closed
    /// with 1001, and the backends are retired; the worker exits once their answers are
    /// written, within the retirement's bound.
    pub(super) fn begin_stop(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.close_listeners(!migrate_req());
        self.retire_backends();
        self.close_clients(1001, "server stopping");
    }

    /// Closes every listener; with `take_queued`, accepts what waits in their queues first.
    fn close_listeners(&mut self, take_queued: bool) {
        if take_queued {
            self.accept_paused_until = None;
            self.mesh_known = true;
            self.accept_all();
        }
        for (_, l) in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
    }

    /// Drain and stop: the backends' connections (text and HTTP ports) are read no further.
    /// Each is read once more, now, or, for one that has sent nothing yet (just accepted),
    /// when its first bytes come within [`RETIRE_GRACE`]; every line and request read is
    /// answered (siblings stay linked meanwhile); then each closes after its answers with a
    /// lingering close. A line left unread gets no reply and was not processed: a backend
    /// sends it again on a new connection. The retirement ends at `until`, when what is
    /// still open is closed.
    pub(super) fn retire_backends(&mut self) {
        if self.retire.is_some() {
            return;
        }
        let now = Instant::now();
        let window = (RETIRE_GRACE + ms(self.cfg.ipc_timeout) + RETIRE_LINGER)
            .min(ms(self.cfg.stop_timeout * 0.8));
        self.retire = Some(Retire {
            grace_until: now + RETIRE_GRACE,
            until: now + window,
            graced: false,
            cut: false,
            clients_closed: false,
            lingering: Vec::new(),
        });
        let slots: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_backend())
            .map(|(s, _)| s)
            .collect();
        for slot in slots {
            // Reads once more, then retires it (unless it has sent nothing yet).
            self.on_readable(slot, false);
        }
    }

    /// Retires backend `slot` once it has sent something, or at once with `force` (the grace
    /// is over): nothing more is read, and it closes after its answers.
    pub(super) fn retire_conn(&mut self, slot: usize, force: bool) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if !c.is_backend() || c.flags & RETIRED != 0 || (c.bytes_in == 0 && !force) {
            return;
        }
        c.flags |= RETIRED;
        if let Proto::Http(h) = &mut c.proto {
            // The response in flight, if any, says `Connection: close` and is the last: a
            // request pipelined behind it was not processed, and the client retries it
            // elsewhere (RFC 9112 §9.3).
            h.close_after = true;
        }
        self.mark_dirty(slot);
    }

    /// Retired connection `slot` (`id`) has shut its side for writing after its answers: it
    /// closes at its peer's EOF, or once its peer's TCP has acknowledged every byte (the
    /// answers and the FIN), or after [`RETIRE_LINGER`].
    pub(super) fn linger(&mut self, slot: usize, id: u64) {
        if let Some(r) = self.retire.as_mut() {
            if !r.lingering.iter().any(|(s, i, _)| (*s, *i) == (slot, id)) {
                r.lingering.push((slot, id, Instant::now() + RETIRE_LINGER));
            }
        }
    }

    /// Drain and stop, at the end of a turn: retires the backends whose grace is over, closes
    /// the clients at the drain deadline (a stop closed them at once), and at the retirement's
    /// end closes the backends still open (and, once the clients are closed, anything else).
    /// The worker exits once no connection is left (`run`).
    pub(super) fn wind_down(&mut self, now: Instant) {
        let Some(r) = self.retire.as_mut() else {
            return;
        };
        let grace_over = !r.graced && now >= r.grace_until;
        r.graced |= grace_over;
        let cut = !r.cut && now >= r.until;
        r.cut |= cut;
        let close_clients =
            !r.clients_closed && !self.stopping && self.drain_deadline.is_some_and(|d| now >= d);
        r.clients_closed |= close_clients || self.stopping;
        let everything = r.cut && r.clients_closed;
        let mut lingering = std::mem::take(&mut r.lingering);
        lingering.retain(|&(slot, id, until)| {
            let Some(c) = self.conns.get(slot).filter(|c| c.id == id) else {
                return false;
            };
            if now < until && unacknowledged(&c.stream) > 0 {
                return true;
            }
            self.close(slot);
            false
        });
        if let Some(r) = self.retire.as_mut() {
            r.lingering = lingering;
        }
        if grace_over {
            let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
            for slot in slots {
                self.retire_conn(slot, true);
            }
        }
        if close_clients {
            let n = self.conns.iter().filter(|(_, c)| !c.is_backend()).count();
            log::info!("drain timeout: closing {n} remaining connections with 1001");
            self.close_clients(1001, "server going away");
        }
        if cut || everything {
            let slots: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| everything || c.is_backend())
                .map(|(s, _)| s)
                .collect();
            if !slots.is_empty() {
                log::info!(
                    "closing {} connections still open at the end of the retirement",
                    slots.len()
                );
            }
            if everything {
                self.close_all(1001, "server going away");
            } else {
                for slot in slots {
                    self.close(slot);
                }
            }
        }
    }

    /// The next deadline of a drain or stop, if one is pending.
    pub(super) fn wind_down_deadline(&self) -> Option<Instant> {
        let r = self.retire.as_ref()?;
        [
            // A lingering connection is looked at again soon: the acknowledgement it waits
            // for raises no event.
            (!r.lingering.is_empty()).then(|| Instant::now() + LINGER_CHECK),
            (!r.graced).then_some(r.grace_until),
            (!r.cut).then_some(r.until),
            self.drain_deadline.filter(|_| !r.clients_closed),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// This worker's figures: the counters, and the gauges read now.
    pub(super) fn stats_now(&self) -> Stats {
        let mut s = self.stats;
        let mut per_port = [0u64; 4];
        for (_, c) in self.conns.iter() {
            per_port[c.port.index()] += 1;
        }
        s.connections = self.conns.len() as u64;
        s.ws = per_port[Port::Ws.index()];
        s.text = per_port[Port::Text.index()];
        s.http = per_port[Port::Http.index()];
        s.socketio = per_port[Port::Sio.index()];
        s.sessions = self.sio.sessions.len() as u64;
        s.logged_in = self.registry.connection_count() as u64;
        s.uids = self.registry.uid_count() as u64;
        s.links = self.links.len() as u64;
        s.subscribers = self.up.subscribers() as u64;
        s.inflight = self.gather.len() as u64;
        self.history_stats(&mut s);
        s.rss_kib = rss_kib();
        s.resident_memory_bytes = s.rss_kib * 1024;
        s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        s.start_time_seconds = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.cluster_up = self.cluster_up as u64;
        s
    }

    /// The status row: who this worker is, then every figure of the stats table.
    pub(super) fn status_row(&self) -> Value {
        let listen: Vec<String> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.is_some())
            .filter_map(|(p, _)| p.addr(&self.addrs).map(|a| format!("{}://{a}", p.name())))
            .collect();
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut row = Map::new();
        row.insert("worker".into(), json!(self.id));
        row.insert("pid".into(), json!(self.pid));
        row.insert("listen".into(), json!(listen));
        for (stat, v) in self.stats_now().values() {
            row.insert(stat.name.into(), json!(v));
        }
        row.insert("qps".into(), json!((self.qps * 10.0).round() / 10.0));
        row.insert("push_latency".into(), self.push_latency.to_json());
        row.insert("delivery_latency".into(), self.delivery_latency.to_json());
        if let Some(bus) = &self.bus {
            row.insert("cluster_node".into(), json!(bus.node));
            row.insert("cluster_nodes".into(), json!(self.cluster_nodes));
        }
        row.insert("draining".into(), json!(self.drain_deadline.is_some()));
        row.insert("started".into(), json!(started));
        Value::Object(row)
    }

    /// One row per connection, for `connections`.
    pub(super) fn connection_rows(&self) -> Vec<Value> {
        self.conns
            .iter()
            .map(|(_, c)| {
                let uid = match &c.proto {
                    Proto::Ws(ws) => ws.uid.as_deref().map(str::to_string),
                    _ => None,
                };
                json!({
                    "worker": self.id,
                    "id": c.id,
                    "protocol": c.port.name(),
                    "uid": uid,
                    "remote": c.remote.to_string(),
                    "bytes_in": c.bytes_in,
                    "bytes_out": c.bytes_out,
                    "send_queue": c.out.len(),
                })
            })
            .collect()
    }
}

/// How long a retiring worker waits for the first bytes of a backend connection that has
/// sent nothing yet (one accepted just before the drain or stop, whose line is on its way).
const RETIRE_GRACE: Duration = Duration::from_millis(250);
/// How long, after the answers, a retired connection may linger for its peer's
/// acknowledgement or EOF.
const RETIRE_LINGER: Duration = Duration::from_secs(1);

/// A drain or stop in progress: the backends' retirement and the closing of the clients.
pub(super) struct Retire {
    /// Backends that have sent nothing yet are retired at this time.
    grace_until: Instant,
    /// Backends still open at this time are closed.
    until: Instant,
    /// `grace_until` has passed.
    graced: bool,
    /// `until` has passed.
    cut: bool,
    /// The clients were closed (stop: at once; drain: at its deadline).
    clients_closed: bool,
    /// Retired connections shut for writing, awaiting their peer's acknowledgement or EOF:
    /// (slot, connection id, when to close anyway).
    lingering: Vec<(usize, u64, Instant)>,
}

/// How often lingering connections are looked at.
const LINGER_CHECK: Duration = Duration::from_millis(10);

/// Bytes written to `s` (the FIN included) that its peer has not acknowledged yet.
fn unacknowledged(s: &crate::stream::Stream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which points to `n`;
    // the descriptor is the live socket `s` borrows.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// Whether the kernel moves a closing listener's queued connections to a sibling listener
/// (`net.ipv4.tcp_migrate_req`), rather than resetting them.
fn migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
        .unwrap_or(0)
}
