//! The master's control channel: the list of siblings, status and connection reports, stop
//! and drain.

use super::{ms, Worker};
use crate::conn::{Port, Proto};
use herald_ipc::{ChannelError, Control, Stats};
use serde_json::{json, Map, Value};
use std::time::{Instant, SystemTime};

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
                self.stop = true;
            }
            Err(e) => {
                log::error!("control channel: {e}; stopping");
                self.stop = true;
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
                self.stop = true;
            }
            Control::Drain => self.begin_drain(),
            other => log::warn!("unexpected control message {other:?}"),
        }
    }

    /// Closes the listeners (after taking what waits in their queues) and serves the
    /// remaining connections until they end or `drain_timeout` passes.
    pub(super) fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        // Take every connection already queued in the kernel, then close: a closing
        // SO_REUSEPORT listener resets what is left in its queue (unless tcp_migrate_req).
        self.accept_paused_until = None;
        self.mesh_known = true;
        self.accept_all();
        for (_, l) in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        self.drain_deadline = Some(Instant::now() + ms(self.cfg.drain_timeout));
        log::info!(
            "draining: listeners closed, serving {} connections for up to {}s",
            self.conns.len(),
            self.cfg.drain_timeout
        );
        self.tell_master(Control::ListenersClosed { worker: self.id });
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
        s.inflight = self.gather.len() as u64;
        s.rss_kib = rss_kib();
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
        if self.bus.is_some() {
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

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
        .unwrap_or(0)
}
