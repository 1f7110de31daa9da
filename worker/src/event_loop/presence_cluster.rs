//! `online` and `offline` for the whole cluster, the loop's side (Redis's side, run on the bus's
//! command thread, is `crate::cluster_presence`).
//!
//! With `cluster` set and events on, each worker tells Redis when a uid gets its first
//! connection in the worker or loses its last one; an atomic script answers whether that was the
//! uid's first or last connection anywhere in the cluster. The worker that hears so emits the
//! event: to the webhook (once for the whole cluster: the endpoint is usually one URL shared by
//! every node), to the subscribers of its host (over the mesh, as any `online`), and to the
//! subscribers of every other node (announced once on the bus's cluster-wide channel; each
//! member of another node passes it to its own subscribers). A member that dies without saying
//! so (`kill -9`, a host lost) is reaped by a live member once its `alive` key expires, and that
//! member emits the `offline`s: within `ALIVE_TTL` + one heartbeat (13 s).
//!
//! The host's own presence (each uid's owner worker, `backends`) stays kept, silently, while
//! this worker reaches Redis; while it does not, the owner speaks for the host as without a
//! cluster (`"scope":"host"`), and the resync after reconnecting puts Redis right.

use super::Worker;
use crate::cluster::{envelope, BusCmd};
use crate::cluster_presence::{PresenceCmd, Transition};
use crate::events;
use herald_ipc::codec::write_frame;
use herald_ipc::PeerMsg;
use serde_json::{Map, Value};

/// The JSON of an `online`/`offline` event, with the cluster's fields: the node that decided it
/// and the scope of the decision (`cluster`: Redis said so; `host`: this host's view only, while
/// Redis is out of reach), and `lost` for the offline of a dead member's uid.
pub(super) fn presence_json(
    id: &str,
    online: bool,
    uid: &str,
    worker: u32,
    node: &str,
    scope: &str,
    lost: bool,
) -> String {
    let mut m = Map::new();
    m.insert("id".into(), Value::from(id));
    m.insert(
        "event".into(),
        Value::from(if online { "online" } else { "offline" }),
    );
    m.insert("uid".into(), Value::from(uid));
    m.insert("worker".into(), Value::from(worker));
    m.insert("node".into(), Value::from(node));
    m.insert("scope".into(), Value::from(scope));
    if lost {
        m.insert("lost".into(), Value::Bool(true));
    }
    m.insert("time".into(), Value::from(super::unix_ms()));
    Value::Object(m).to_string()
}

impl Worker {
    /// Whether the host's owner worker emits `online`/`offline` itself: without a cluster, or
    /// while this worker cannot reach Redis.
    pub(super) fn host_presence_speaks(&self) -> bool {
        self.bus.is_none() || !self.cluster_up
    }

    /// The JSON of a presence event decided by the host's owner worker.
    pub(super) fn host_presence_json(&self, id: &str, online: bool, uid: &str) -> String {
        match &self.bus {
            None => events::presence(id, online, uid, self.id, super::unix_ms()),
            Some(b) => presence_json(id, online, uid, self.id, &b.node, "host", false),
        }
    }

    /// `uid` got its first connection in this worker (`on`) or lost its last: Redis hears, and
    /// answers with a transition when it was the first or last in the cluster.
    pub(super) fn cluster_held(&mut self, uid: &str, on: bool) {
        let Some(bus) = &self.bus else { return };
        let cmd = if on {
            PresenceCmd::Arrive(uid.to_string())
        } else {
            PresenceCmd::Depart(uid.to_string())
        };
        if !bus.send(BusCmd::Presence(cmd)) {
            // The resync after the next reconnection repairs it.
            self.stats.cluster_dropped += 1;
        }
    }

    /// Connected to Redis (again): the worker's whole list of uids goes to presence.
    pub(super) fn cluster_presence_resync(&mut self) {
        if !self.up.on {
            return;
        }
        let Some(bus) = &self.bus else { return };
        let uids: Vec<String> = self.registry.iter().map(|(u, _)| u.to_string()).collect();
        if !bus.send(BusCmd::Presence(PresenceCmd::Resync(uids))) {
            self.stats.cluster_dropped += 1;
        }
    }

    /// Redis said these uids came online or went offline for the whole cluster: this worker
    /// emits the events, and announces them to the other nodes' subscribers (the lines of each
    /// kind in one message).
    pub(super) fn cluster_transitions(&mut self, list: Vec<Transition>) {
        if !self.up.on {
            return;
        }
        let Some(node) = self.bus.as_ref().map(|b| b.node.clone()) else {
            return;
        };
        let mut onlines = Vec::new();
        let mut offlines = Vec::new();
        for t in list {
            self.stats.cluster_presence += 1;
            if t.reaped {
                self.stats.cluster_reaped += 1;
            }
            let id = self.event_id();
            let json = presence_json(&id, t.online, &t.uid, self.id, &node, "cluster", t.reaped);
            let (bit, lines) = if t.online {
                (events::ONLINE, &mut onlines)
            } else {
                (events::OFFLINE, &mut offlines)
            };
            lines.extend_from_slice(json.as_bytes());
            lines.push(b'\n');
            self.emit(bit, &t.uid, json, id, None, None);
        }
        for (bit, lines) in [(events::ONLINE, onlines), (events::OFFLINE, offlines)] {
            if !lines.is_empty() {
                self.announce(bit, lines);
            }
        }
    }

    /// Event lines of kind `bit` for the subscribers of the other nodes, on the bus's
    /// cluster-wide channel.
    fn announce(&mut self, bit: u8, lines: Vec<u8>) {
        let msg = PeerMsg::Event {
            sub: 0,
            mask: bit,
            line: lines,
        };
        let mut frame = Vec::new();
        if let Err(e) = write_frame(&msg, &mut frame) {
            log::warn!("cluster: cannot frame presence events: {e}");
            return;
        }
        let Some(bus) = &self.bus else { return };
        let env = envelope(&bus.member, &frame);
        if !bus.send(BusCmd::Presence(PresenceCmd::Announce(env))) {
            self.stats.cluster_dropped += 1;
            self.stats.events_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_presence_json() {
        let v: Value =
            serde_json::from_str(&presence_json("e1", false, "u", 1, "n-a", "cluster", true))
                .unwrap_or_default();
        assert_eq!(v["event"], "offline");
        assert_eq!(v["node"], "n-a");
        assert_eq!(v["scope"], "cluster");
        assert_eq!(v["lost"], true);
        let v: Value =
            serde_json::from_str(&presence_json("e2", true, "u", 0, "n-a", "host", false))
                .unwrap_or_default();
        assert_eq!(v["event"], "online");
        assert!(v.get("lost").is_none());
    }
}
