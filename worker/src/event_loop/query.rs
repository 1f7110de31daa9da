//! Whole-server questions and group changes in the loop: this worker's [`Share`] of a
//! [`Query`] (changes are applied here), asking every sibling through the one scatter-gather
//! (`mesh`), and what becomes of the merged answer ([`QReply`]). Merging and wording are
//! pure, in [`crate::query`].

use super::mesh::{Holders, Job};
use super::Worker;
use crate::query::{merge, render_metrics, Merged};
use crate::registry::Who;
use crate::render;
use bytes::Bytes;
use herald_ipc::{PeerMsg, Query, Share};
use std::rc::Rc;

/// Where a query's merged answer goes.
#[derive(Debug, Clone)]
pub(super) enum QReply {
    /// A backend's question on the text port or the JSON API (see [`render::To`]).
    Answer(render::To),
    /// `GET /metrics` on HTTP connection `slot`: the stats in Prometheus text format.
    Metrics {
        /// Slot.
        slot: usize,
        /// Connection id.
        id: u64,
    },
    /// A uid logged in here: adopt the groups its siblings know for it.
    LoginSync(Rc<str>),
    /// The once-a-second check whether any worker's logins moved, before Socket.IO's count.
    OnlineGeneration,
    /// The count of uids and pages for Socket.IO's `update_online_count`.
    OnlineCount,
    /// This worker linked to its siblings, or (re)joined the cluster: its uids adopt the
    /// groups the others know for them (a login made before could not ask), and it learns
    /// whether groups are in use at all.
    ClusterSync,
}

impl Worker {
    /// This worker's share of `q` (a change is applied here).
    pub(super) fn answer_query(&mut self, q: &Query) -> Share {
        let now = self.now;
        match q {
            Query::Online { uid } => Share::Connections {
                connections: self.registry.get(uid).len() as u64,
            },
            Query::Count { group } => {
                let Some(g) = group.as_deref().filter(|g| !g.is_empty()) else {
                    let connections = self.registry.connection_count() as u64;
                    return Share::Hashes {
                        connections,
                        hashes: self.registry.uid_hashes().to_vec(),
                    };
                };
                let (mut connections, mut hashes_of) = (0u64, Vec::new());
                for u in self.groups.members(g) {
                    let n = self.registry.get(u).len() as u64;
                    if n > 0 {
                        connections += n;
                        hashes_of.push(herald_ipc::uid_hash(u));
                    }
                }
                hashes_of.sort_unstable();
                hashes_of.dedup();
                Share::Hashes {
                    connections,
                    hashes: hashes_of,
                }
            }
            Query::Generation => Share::Generation {
                pid: self.pid,
                generation: self.registry.generation(),
            },
            Query::Uids { group } => {
                let Some(g) = group.as_deref().filter(|g| !g.is_empty()) else {
                    let connections = self.registry.connection_count() as u64;
                    return Share::UidList {
                        connections,
                        uids: self.registry.uid_list().to_string(),
                    };
                };
                let (mut connections, mut uids) = (0u64, Vec::<&str>::new());
                for u in self.groups.members(g) {
                    let n = self.registry.get(u).len() as u64;
                    if n > 0 {
                        connections += n;
                        uids.push(u);
                    }
                }
                uids.sort_unstable();
                let mut list = String::with_capacity(uids.iter().map(|u| u.len() + 1).sum());
                for u in uids {
                    list.push_str(u);
                    list.push('\n');
                }
                Share::UidList {
                    connections,
                    uids: list,
                }
            }
            Query::Groups => Share::Groups {
                groups: self
                    .groups
                    .all()
                    .map(|(g, u)| (g.clone(), u.iter().cloned().collect()))
                    .collect(),
            },
            Query::GroupsOf { uid } => Share::GroupsOf {
                groups: self.groups.groups_of(uid),
            },
            Query::Join { uid, group } => {
                self.groups_in_use = true;
                let present = !self.registry.get(uid).is_empty();
                self.groups.join(uid, group, present, now);
                Share::Done
            }
            Query::Leave { uid, group } => {
                self.groups.leave(uid, group);
                Share::Done
            }
            Query::Ungroup { group } => {
                self.groups.ungroup(group);
                Share::Done
            }
            Query::Kick { uid, data } => {
                let recipients = self.registry.get(uid).to_vec();
                for r in &recipients {
                    match r.who() {
                        Who::Session(idx) => self.sio_kick(idx, data.as_deref()),
                        Who::Conn(slot) => self.ws_kick(slot, data.as_deref()),
                    }
                }
                Share::Connections {
                    connections: recipients.len() as u64,
                }
            }
            Query::History { uid } => self.history_share(uid),
            Query::Stats => Share::Stats {
                row: self.status_row(),
            },
        }
    }

    /// The answer writer, started on first use; `None` if its thread cannot start (the loop
    /// then writes big answers itself).
    fn renderer(&mut self) -> Option<&render::Renderer> {
        if self.renderer.is_none() {
            let waker = self.waker.clone()?;
            match render::Renderer::start(waker) {
                Ok(r) => self.renderer = Some(r),
                Err(e) => {
                    log::warn!("cannot start the answer writer thread: {e}");
                    return None;
                }
            }
        }
        self.renderer.as_ref()
    }

    /// Answers the writer thread finished: send them.
    pub(super) fn on_rendered(&mut self) {
        loop {
            let Some((to, written)) = self.renderer.as_ref().and_then(|r| r.rx.try_recv().ok())
            else {
                return;
            };
            self.send_written(to, written);
        }
    }

    /// Sends a written answer where it goes.
    fn send_written(&mut self, to: render::To, written: render::Written) {
        match (to, written) {
            (render::To::Text { slot, id, seq }, render::Written::Text(line)) => {
                self.text_reply(slot, id, seq, Bytes::from(line));
            }
            (render::To::Http { slot, id }, render::Written::Http(status, body)) => {
                self.http_json_text(slot, id, status, body);
            }
            _ => {}
        }
    }

    /// Answers `q` here and asks every sibling; the merged answer goes to `reply`.
    pub(super) fn query(&mut self, q: Query, reply: QReply) {
        if let Query::History { uid } = &q {
            if self.cluster_history() {
                return self.ch_query(uid.clone(), reply);
            }
        }
        let local = self.answer_query(&q);
        let msg = PeerMsg::Query {
            id: self.gather.next_id(),
            query: q.clone(),
        };
        let job = Job::Query {
            query: q,
            shares: vec![local],
            reply,
        };
        self.fan_out(&msg, job, Holders::All);
    }

    /// Every share is in (or the rest is missing): merge, and answer.
    pub(super) fn finish_query(
        &mut self,
        q: &Query,
        shares: &[Share],
        reply: QReply,
        partial: bool,
    ) {
        let merged = merge(q, shares);
        match reply {
            QReply::Answer(to) => {
                let job = render::Job {
                    to,
                    query: q.clone(),
                    merged,
                    partial,
                };
                // Big answers are written on the answer thread, the others here.
                let writer = if render::is_big(&job.merged) {
                    self.renderer()
                } else {
                    None
                };
                let job = match writer {
                    Some(r) => match r.submit(job) {
                        Ok(()) => return,
                        Err(job) => *job,
                    },
                    None => job,
                };
                let written = render::write(&job);
                self.send_written(to, written);
            }
            QReply::Metrics { slot, id } => {
                let Some(keep) = self.http_keep_alive(slot, id) else {
                    return;
                };
                let rows = match &merged {
                    Merged::Workers(rows) => rows.as_slice(),
                    _ => &[],
                };
                let body = render_metrics(rows, partial);
                let r = crate::proto::http::response(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    keep,
                    "",
                );
                self.http_respond(slot, r);
                self.http_resume(slot);
            }
            QReply::OnlineGeneration => {
                // A partial answer moves the figure too: the count after it is redone.
                let g = match merged {
                    Merged::Generation(g) if !partial => Some(g),
                    _ => None,
                };
                match g {
                    Some(g) => self.sio_generation(g),
                    None => {
                        self.sio.online_generation = None;
                        self.sio_generation(0);
                    }
                }
            }
            QReply::OnlineCount => {
                if let Merged::Count { connections, uids } = &merged {
                    self.sio_online(*uids, *connections);
                } else {
                    self.sio_online(0, 0);
                }
            }
            QReply::ClusterSync => {
                let now = self.now;
                if let Merged::Groups(groups) = merged {
                    self.groups_in_use |= !groups.is_empty();
                    for (g, members) in groups {
                        for u in members {
                            if !self.registry.get(&u).is_empty() {
                                self.groups.join(&u, &g, true, now);
                            }
                        }
                    }
                }
            }
            QReply::LoginSync(uid) => {
                if self.registry.get(&uid).is_empty() {
                    return;
                }
                let now = self.now;
                if let Merged::GroupsOf(groups) = merged {
                    for g in groups {
                        self.groups.join(&uid, &g, true, now);
                    }
                }
            }
        }
    }
}
