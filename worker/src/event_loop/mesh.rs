//! TODO

use super::*;

impl Worker {
    /// Siblings the master announced that have no outbound link yet (starting, reconnecting):
    /// a push or query cannot reach them, and says so.
    pub(super) fn unlinked_peers(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| {
                !self
                    .links
                    .iter()
                    .any(|(_, l)| l.outbound && l.peer_pid == p.pid)
            })
            .count()
    }

    pub(super) fn connect_peers(&mut self) {
        let mut retry = false;
        let peers = self.peers.clone();
        for p in peers {
            let linked = self
                .links
                .iter()
                .any(|(_, l)| l.outbound && l.peer_pid == p.pid);
            if linked {
                continue;
            }
            match self.connect_peer(&p) {
                Ok(()) => log::debug!("linked to worker {} (pid {})", p.worker, p.pid),
                Err(e) => {
                    log::debug!(
                        "cannot link to worker {} (pid {}) yet: {e}",
                        p.worker,
                        p.pid
                    );
                    retry = true;
                }
            }
        }
        if retry {
            self.reconnect_at = Some(Instant::now() + Duration::from_millis(50));
        }
    }

    pub(super) fn connect_peer(&mut self, p: &Peer) -> io::Result<()> {
        let name = mesh_name(self.instance, p.pid);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        let mut chan = Channel::from_std(s, self.cfg.ipc_max_pending)?;
        chan.send(&PeerMsg::Hello { worker: self.id })
            .map_err(|e| io::Error::other(e.to_string()))?;
        let entry = self.links.vacant_entry();
        self.poll.registry().register(
            &mut chan,
            Token(LINK_BASE + entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Link {
            chan,
            outbound: true,
            peer_pid: p.pid,
            peer_worker: p.worker,
            inflight: Default::default(),
            dirty: true,
        });
        Ok(())
    }

    pub(super) fn accept_mesh(&mut self) {
        loop {
            match self.mesh_listener.accept() {
                Ok((s, _)) => {
                    let mut chan = Channel::new(s, self.cfg.ipc_max_pending);
                    let entry = self.links.vacant_entry();
                    if let Err(e) = self.poll.registry().register(
                        &mut chan,
                        Token(LINK_BASE + entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("cannot register a sibling link: {e}");
                        continue;
                    }
                    let key = entry.key();
                    entry.insert(Link {
                        chan,
                        outbound: false,
                        peer_pid: 0,
                        peer_worker: u32::MAX,
                        inflight: Default::default(),
                        dirty: false,
                    });
                    self.on_link(key);
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("mesh accept: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn on_link(&mut self, key: usize) {
        let mut msgs = Vec::new();
        let res = match self.links.get_mut(key) {
            Some(l) => {
                let r = l.chan.receive(&mut msgs);
                // WRITABLE after a full socket: write what waits.
                l.dirty = true;
                r
            }
            None => return,
        };
        for m in msgs {
            self.link_msg(key, m);
        }
        if let Err(e) = res {
            let why = match e {
                ChannelError::Closed => "closed".to_string(),
                e => e.to_string(),
            };
            self.drop_link(key, &why);
        }
    }

    pub(super) fn link_msg(&mut self, key: usize, m: PeerMsg) {
        match m {
            PeerMsg::Hello { worker } => {
                if let Some(l) = self.links.get_mut(key) {
                    l.peer_worker = worker;
                }
            }
            PeerMsg::Push(p) => {
                let f = frame(if p.binary { OP_BINARY } else { OP_TEXT }, &p.payload);
                let count =
                    self.deliver_local(&To::Target(p.target), &p.exclude, f, &p.payload, p.binary);
                if let Some(l) = self.links.get_mut(key) {
                    l.dirty = true;
                    if let Err(e) = l.chan.send(&PeerMsg::Delivered { id: p.id, count }) {
                        log::warn!(
                            "cannot answer push {} of worker {}: {e}",
                            p.id,
                            l.peer_worker
                        );
                    }
                }
            }
            PeerMsg::Delivered { id, count } => {
                if let Some(l) = self.links.get_mut(key) {
                    if l.inflight.front() == Some(&id) {
                        l.inflight.pop_front();
                    } else if let Some(i) = l.inflight.iter().position(|&x| x == id) {
                        l.inflight.remove(i);
                    }
                }
                self.answered(id, count, true);
            }
            PeerMsg::Query { id, body } => self.sibling_query(key, id, &body),
            PeerMsg::Answer { id, body } => self.sibling_answer(key, id, &body),
        }
    }

    /// A sibling answered push `id` (or will never: `answered == false`).
    pub(super) fn answered(&mut self, id: u64, count: u32, answered: bool) {
        let Some(p) = self.inflight.get(id) else {
            return;
        };
        p.total += count;
        p.waiting = p.waiting.saturating_sub(1);
        if !answered {
            self.stats.ipc_undelivered += 1;
        }
        p.partial |= !answered;
        let (total, waiting, reply, partial) = (p.total, p.waiting, p.reply, p.partial);
        if waiting == 0 {
            self.inflight.take(id);
            self.settle(reply, total, partial);
        } else if reply.decided(total) {
            p.reply = ReplyTo::Nobody;
            self.settle(reply, total, partial);
        }
    }

    pub(super) fn drop_link(&mut self, key: usize, why: &str) {
        if !self.links.contains(key) {
            return;
        }
        let mut l = self.links.remove(key);
        let _ = self.poll.registry().deregister(&mut l.chan);
        log::info!(
            "link {} worker {} (pid {}) ended: {why}",
            if l.outbound { "to" } else { "from" },
            l.peer_worker,
            l.peer_pid
        );
        for id in l.inflight.drain(..) {
            self.answered(id, 0, false);
        }
        self.queries_link_lost(key);
        if l.outbound && self.peers.iter().any(|p| p.pid == l.peer_pid) {
            self.reconnect_at = Some(Instant::now() + Duration::from_millis(100));
        }
    }
}
