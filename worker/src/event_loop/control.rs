//! TODO

use super::*;

impl Worker {
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

    pub(super) fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        // Take every connection already queued in the kernel, then close: a closing
        // SO_REUSEPORT listener resets what is left in its queue (unless tcp_migrate_req).
        self.accept_paused_until = None;
        self.mesh_known = true;
        self.accept_all();
        for l in [
            self.ws_listener.take(),
            self.text_listener.take(),
            self.http_listener.take(),
            self.sio_listener.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut l = l;
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.drain_deadline = Some(Instant::now() + ms(self.cfg.drain_timeout));
        log::info!(
            "draining: listeners closed, serving {} connections for up to {}s",
            self.conns.len(),
            self.cfg.drain_timeout
        );
        self.tell_master(Control::ListenersClosed { worker: self.id });
    }

    pub(super) fn status_row(&self) -> serde_json::Value {
        let mut ws = 0;
        let mut text = 0;
        let mut http = 0;
        let mut sio = 0;
        for (_, c) in self.conns.iter() {
            match c.port {
                Port::Ws => ws += 1,
                Port::Text => text += 1,
                Port::Http => http += 1,
                Port::Sio => sio += 1,
            }
        }
        let listen: Vec<String> = [
            ("websocket", self.addrs.ws, self.ws_listener.is_some()),
            ("text", self.addrs.text, self.text_listener.is_some()),
            ("http", self.addrs.http, self.http_listener.is_some()),
            ("socketio", self.addrs.socketio, self.sio_listener.is_some()),
        ]
        .iter()
        .filter_map(|(n, a, open)| a.filter(|_| *open).map(|a| format!("{n}://{a}")))
        .collect();
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        serde_json::json!({
            "worker": self.id,
            "pid": self.pid,
            "rss_kib": rss_kib(),
            "listen": listen,
            "connections": self.conns.len(),
            "ws": ws,
            "text": text,
            "http": http,
            "socketio": sio,
            "sessions": self.sio.sessions.len(),
            "logged_in": self.registry.connection_count(),
            "uids": self.registry.uid_count(),
            "pushes": self.stats.pushes,
            "delivered": self.stats.delivered,
            "send_fail": self.stats.send_fail,
            "ipc_undelivered": self.stats.ipc_undelivered,
            "rejected": self.stats.rejected,
            "over_max_connections": self.stats.over_max_connections,
            "over_per_ip": self.stats.over_per_ip,
            "bad_origin": self.stats.bad_origin,
            "auth_failed": self.stats.auth_failed,
            "auth_timeout": self.stats.auth_timeout,
            "idle_closed": self.stats.idle_closed,
            "slow_closed": self.stats.slow_closed,
            "oversize": self.stats.oversize,
            "unauthorized": self.stats.unauthorized,
            "handed_off": self.stats.handed_off,
            "adopted": self.stats.adopted,
            "accepted": self.stats.accepted,
            "qps": (self.qps * 10.0).round() / 10.0,
            "links": self.links.len(),
            "inflight": self.inflight.len(),
            "draining": self.drain_deadline.is_some(),
            "started": started,
        })
    }

    pub(super) fn connection_rows(&self) -> Vec<serde_json::Value> {
        self.conns
            .iter()
            .map(|(_, c)| {
                let uid = match &c.proto {
                    Proto::Ws(ws) => ws.uid.as_deref().map(str::to_string),
                    _ => None,
                };
                serde_json::json!({
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
