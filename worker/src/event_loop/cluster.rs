//! The cluster in the loop: what crosses hosts goes through the [`Bus`] (see `crate::cluster`
//! for the threads and what Redis holds). A push or a question leaves with the same id as on the
//! mesh, and its [`Job`] waits, beside the siblings' links, for the bus to say how many members
//! got it, then for that many answers (the gather's `remote` count).
//!
//! [`Bus`]: crate::cluster::Bus
//! [`Job`]: super::mesh::Job

use super::mesh::{Holders, Job};
use super::push::To;
use super::query::QReply;
use super::Worker;
use crate::cluster::{envelope, node_of, open_envelope, redacted, Bus, BusCmd, BusEvent};
use herald_ipc::codec::{read_frame, write_frame};
use herald_ipc::{PeerMsg, Push, Query, Share};
use std::sync::Arc;

/// Bus events handled per loop turn before other work gets a turn (the rest wake the loop again).
const EVENTS_PER_TURN: usize = 4096;

/// This host's node name: `node_id`, else the host name and the master's pid.
pub(super) fn node_name(node_id: &str, instance: u32) -> String {
    if !node_id.is_empty() {
        return node_id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{}-{instance}",
        if host.is_empty() { "herald" } else { &host }
    )
}

/// Starts the bus of a worker whose configuration names a cluster.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_bus(
    url: &str,
    ca: &str,
    prefix: &str,
    node: &str,
    pid: u32,
    instance: u32,
    waker: Option<Arc<mio::Waker>>,
    own_subscriber: bool,
) -> std::io::Result<Bus> {
    let waker =
        waker.ok_or_else(|| std::io::Error::other("the cluster bus needs the loop's waker"))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let owner = format!("{}:{instance}", host.trim());
    Bus::start(url, ca, prefix, node, pid, &owner, waker, own_subscriber)
        .map_err(std::io::Error::other)
}

/// `msg` as a frame.
fn framed(msg: &PeerMsg) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = write_frame(msg, &mut out) {
        log::warn!("cluster: cannot frame a message: {e}");
    }
    out
}

impl Worker {
    /// Also sends `msg`, which waits as entry `id`, to the members of other hosts it concerns.
    /// `None` without a cluster; `Some(sent)` with one (the entry then waits for the count).
    pub(super) fn cluster_out(
        &mut self,
        id: u64,
        msg: &PeerMsg,
        uids: Holders<'_>,
    ) -> Option<bool> {
        let bus = self.bus.as_ref()?;
        // A host's monotonic clock means nothing on another: a push crossing hosts has no
        // deadline there (its `fail` at the timeout is for this host's part).
        let env = match msg {
            PeerMsg::Push(p) => envelope(
                &bus.member,
                &framed(&PeerMsg::Push(Push {
                    deadline: u64::MAX,
                    ..p.clone()
                })),
            ),
            other => envelope(&bus.member, &framed(other)),
        };
        let cmd = match uids {
            Holders::Uid(u) => BusCmd::Route {
                id,
                uids: vec![u.to_string()],
                env,
            },
            Holders::Uids(list) => BusCmd::Route {
                id,
                uids: list.to_vec(),
                env,
            },
            Holders::All => BusCmd::Broadcast { id, env },
        };
        let sent = self.bus_send(cmd);
        if !sent {
            self.stats.cluster_dropped += 1;
        }
        Some(sent)
    }

    /// Tells the cluster that `uid` got its first connection here (`arrived`) or lost its
    /// last.
    pub(super) fn cluster_presence(&mut self, uid: &str, arrived: bool) {
        let Some(bus) = &self.bus else { return };
        let cmd = if arrived {
            BusCmd::Arrive(uid.to_string())
        } else {
            BusCmd::Depart(uid.to_string())
        };
        if !bus.send(cmd) {
            // A resync after the next reconnect repairs the directory.
            self.stats.cluster_dropped += 1;
        }
    }

    /// The bus woke the loop: handle what it brought.
    pub(super) fn on_bus(&mut self) {
        for _ in 0..EVENTS_PER_TURN {
            let Some(ev) = self.bus.as_ref().and_then(|b| b.rx.try_recv().ok()) else {
                return;
            };
            self.bus_event(ev);
        }
        // More wait: come back next turn, after the other sockets.
        self.bus_again = true;
    }

    /// One event from the bus.
    pub(super) fn bus_event(&mut self, ev: BusEvent) {
        match ev {
            BusEvent::Up => {
                if !self.cluster_up {
                    log::info!(
                        "cluster: connected to Redis at {}",
                        redacted(&self.cfg.cluster)
                    );
                }
                self.cluster_up = true;
                self.cluster_down_logged = false;
                let uids: Vec<String> = self.registry.iter().map(|(u, _)| u.to_string()).collect();
                if let Some(bus) = &self.bus {
                    if !bus.send(BusCmd::Resync(uids)) {
                        self.stats.cluster_dropped += 1;
                    }
                }
                // Logins made while Redis was out of reach could not ask for their groups, and
                // whether groups are in use anywhere in the cluster is learned here.
                self.query(Query::Groups, QReply::ClusterSync);
                self.cluster_presence_resync();
            }
            BusEvent::Down(why) => {
                if !self.cluster_down_logged {
                    log::warn!(
                        "cluster: cannot reach Redis at {}: {why}; serving this host, retrying",
                        redacted(&self.cfg.cluster)
                    );
                    self.cluster_down_logged = true;
                }
                self.cluster_up = false;
            }
            BusEvent::Nodes(nodes) => {
                if self.id == 0 && nodes != self.cluster_nodes {
                    log::info!("cluster: nodes {}", nodes.join(", "));
                }
                self.cluster_nodes = nodes;
            }
            BusEvent::Published { id, count } => {
                if self.ch_published(id, count.is_some()) {
                    return;
                }
                if let Some(w) = self.gather.get_mut(id) {
                    w.remote_count(count);
                }
                if count.is_none() {
                    self.stats.cluster_dropped += 1;
                }
                self.progress(id);
            }
            BusEvent::Message(env) => self.bus_message(&env),
            BusEvent::History(ev) => self.ch_event(ev),
            BusEvent::Presence(list) => self.cluster_transitions(list),
        }
    }

    /// A message from a member of the cluster.
    fn bus_message(&mut self, env: &[u8]) {
        if env.first() == Some(&crate::cluster_history::POSITIONED) {
            return self.ch_positioned(&env[1..]);
        }
        if env.first() == Some(&crate::cluster_history::GROUP) {
            return self.ch_group_message(&env[1..]);
        }
        let Some((from, body)) = open_envelope(env) else {
            return;
        };
        let msg = match read_frame::<PeerMsg>(body) {
            Ok(Some((m, _))) => m,
            _ => {
                log::debug!("cluster: unreadable message from {from}");
                return;
            }
        };
        let from = from.to_string();
        let ours = self.bus.as_ref().is_some_and(|b| node_of(&from) == b.node);
        match msg {
            PeerMsg::Push(p) => {
                // From this host (a broadcast on the cluster channel): its mesh delivered here
                // already; the entry still counts on an answer.
                let count = if ours {
                    0
                } else {
                    self.deliver_local(&To::Target(p.target), &p.exclude, &p.payload, p.binary)
                };
                self.bus_send_msg(&from, &PeerMsg::Delivered { id: p.id, count });
            }
            PeerMsg::Query { id, query } => {
                let share = if ours {
                    Share::Done
                } else {
                    self.answer_query(&query)
                };
                self.bus_send_msg(&from, &PeerMsg::Answer { id, share });
            }
            PeerMsg::Delivered { id, count } => self.remote_delivered(id, count),
            PeerMsg::Answer { id, share } => {
                if let Some(w) = self.gather.get_mut(id) {
                    if let Job::Query { shares, .. } = &mut w.job {
                        shares.push(share);
                    }
                    w.remote -= 1;
                }
                self.progress(id);
            }
            // A presence event from another node, for this worker's subscribers.
            PeerMsg::Event { sub: 0, mask, line } if !ours => {
                self.send_to_subs(mask, bytes::Bytes::from(line))
            }
            // A backend's reply or ack that entered another node, for a client here.
            PeerMsg::ToClient {
                conn,
                ack,
                binary,
                payload,
            } => self.handed_answer(&conn, ack, binary, payload),
            // The rest never crosses hosts (the mesh's own; a history in Redis travels as its
            // own messages, see `history_cluster`).
            PeerMsg::Hello { .. }
            | PeerMsg::Presence(_)
            | PeerMsg::Subscribers(_)
            | PeerMsg::Event { .. }
            | PeerMsg::UidsHeld { .. }
            | PeerMsg::Route(_)
            | PeerMsg::Positioned { .. }
            | PeerMsg::History(_)
            | PeerMsg::AllPositioned { .. }
            | PeerMsg::PositionedAnswer { .. }
            | PeerMsg::Record(_)
            | PeerMsg::UidsSnapshot(_)
            | PeerMsg::UidsBacked { .. }
            | PeerMsg::UidsGone(_) => {}
        }
    }

    /// A member of the cluster reached `count` connections for push `id`.
    pub(super) fn remote_delivered(&mut self, id: u64, count: u32) {
        if let Some(w) = self.gather.get_mut(id) {
            if let Job::Push { total, .. } = &mut w.job {
                *total += count;
            }
            w.remote -= 1;
        }
        self.progress(id);
    }

    /// Sends `msg` to member `to` of the cluster; false (counted) when it cannot go.
    pub(super) fn bus_send_msg(&mut self, to: &str, msg: &PeerMsg) -> bool {
        let Some(bus) = &self.bus else { return false };
        let env = envelope(&bus.member, &framed(msg));
        let sent = self.bus_send(BusCmd::Send {
            to: to.to_string(),
            env,
        });
        if !sent {
            self.stats.cluster_dropped += 1;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert_eq!(node_name("web-1", 7), "web-1");
        let n = node_name("", 42);
        assert!(n.ends_with("-42"), "{n}");
        assert!(n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
}
