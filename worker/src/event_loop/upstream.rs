//! Events from clients in the loop: what a logged-in client says, and its login and logout,
//! become events (`crate::events` words them) for the backends that listen: the webhook
//! (`crate::webhook`'s thread) and the text-port connections that subscribed.
//!
//! DESIGN — clients live in every worker, subscribers in whichever worker accepted their text
//! connection. Each worker tells its siblings its subscribers whenever they change
//! (`PeerMsg::Subscribers`), so every worker knows the whole server's list. A `login`,
//! `message` or `logout` goes to one subscriber chosen by its uid over that list (the same
//! choice in every worker: a uid's events reach one backend, in order); `online` and
//! `offline` go to every subscriber that wants them. An event for a subscriber of a sibling
//! crosses the mesh once (`PeerMsg::Event`), bounded like any link traffic (`ipc_max_pending`);
//! a subscriber that does not read is bounded like any slow consumer (`max_send_buffer`, then
//! `slow_timeout`). Every event that cannot be placed is counted in `events_dropped`.
//!
//! Server-wide presence: each uid has one owner worker (by hash over the worker ids). A worker
//! tells the owner when a uid gets its first connection there or loses its last one
//! (`PeerMsg::UidsHeld`); the owner keeps, per uid, which workers hold it, and emits `online`
//! when the first arrives and `offline` when the last leaves (or its worker's link ends). A
//! worker that links to the owner again tells it the uids it holds (`PeerMsg::UidsSnapshot`),
//! so a restarted owner knows them again, without announcing them again; what only the owner
//! knew is covered by `presence_gap`. With a cluster the owner speaks only while Redis is out
//! of reach (`presence_cluster`).

use super::Worker;
use crate::conn::CLOSING;
use crate::delivery::kernel_unsent;
use crate::events::{self, Body, ConnRef, Origin, Rate};
use crate::mesh::ReplyTo;
use crate::proto::engineio::Event;
use crate::proto::push::parse_relay;
use crate::registry::{Recipient, Who};
use crate::webhook::{Outgoing, Settings, Webhook};
use bytes::Bytes;
use herald_ipc::PeerMsg;
use smallvec::SmallVec;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// A logged-in client, as its events name it: kept small (no allocation of its own), since
/// every logged-in connection has one while events are on.
#[derive(Debug)]
pub(super) struct Client {
    /// What its `conn` string is made of, besides the worker's pid and its slot.
    key: ConnKey,
    /// When it logged in (milliseconds since the worker's clock origin), for the logout's
    /// `duration`.
    since_ms: u64,
}

/// A client connection's lasting identity in this worker.
#[derive(Debug, Clone)]
enum ConnKey {
    /// A WebSocket's connection id (its slot is the recipient's).
    Ws(u64),
    /// A Socket.IO session's id (shared with the session).
    Session(Rc<str>),
}

impl Client {
    /// Its `conn` string (`node` is `NODE/` in a cluster, else empty).
    fn conn(&self, node: &str, pid: u32, who: Recipient) -> String {
        match (&self.key, who.who()) {
            (ConnKey::Ws(id), Who::Conn(slot)) => {
                format!("{node}{}", ConnRef::Ws { pid, slot, id: *id })
            }
            (ConnKey::Session(sid), _) => format!("{node}{pid}.s.{sid}"),
            (ConnKey::Ws(id), Who::Session(_)) => format!("{node}{pid}.0.{id}"),
        }
    }
}

/// The events state of a worker.
#[derive(Default)]
pub(super) struct Upstream {
    /// Events are produced (`events` or `webhook_url`).
    pub(super) on: bool,
    /// The start of every event id of this worker process (its start time and pid).
    pub(super) id_prefix: String,
    /// `NODE/` in a cluster (else empty), first in every `conn` string: a backend's reply
    /// entering another node is sent on to this one.
    pub(super) conn_node: String,
    /// The last event id's number.
    pub(super) seq: u64,
    /// The webhook's thread, if one is configured.
    pub(super) webhook: Option<Webhook>,
    /// The events the webhook gets.
    pub(super) webhook_mask: u8,
    /// The webhook endpoint is failing (logged once per episode).
    pub(super) webhook_failing: bool,
    /// Events are being dropped for a full webhook queue (logged once per episode).
    pub(super) webhook_full: bool,
    /// Webhook news remain from the last turn.
    pub(super) news_again: bool,
    /// This worker's subscribers: text connection slot → (connection id, events).
    pub(super) subs: HashMap<usize, (u64, u8)>,
    /// The siblings' subscribers, by pid.
    pub(super) remote: HashMap<u32, Vec<(u64, u8)>>,
    /// The whole server's subscribers of each per-uid event, sorted (pid, id); rebuilt after
    /// a change.
    pub(super) rings: HashMap<u8, Rc<[(u32, u64)]>>,
    /// Logged-in clients (only while events are on).
    pub(super) clients: HashMap<Recipient, Client>,
    /// WebSockets past their handshake, not logged in yet: slot → (connection id, query).
    pub(super) handshakes: HashMap<usize, (u64, String)>,
    /// Socket.IO sessions not logged in yet: index → (query, remote address).
    pub(super) sessions: HashMap<usize, (String, Option<SocketAddr>)>,
    /// How a client's connection is ending: (close code, reason), noted when the close starts.
    pub(super) closes: HashMap<Recipient, (Option<u16>, String)>,
    /// Owner's part of presence: uid → the worker pids holding it.
    pub(super) held: HashMap<Box<str>, SmallVec<[u32; 2]>>,
    /// Messages per second per logged-in client (with `max_upstream_rate`).
    pub(super) rates: HashMap<Recipient, Rate>,
    /// Backup's part of presence: owner pid → the uids it owns and holds itself.
    pub(super) backed: HashMap<u32, HashSet<Box<str>>>,
    /// Uids whose last connection here ended while their owner (by worker id) was out of
    /// reach, told when the link to it opens.
    pub(super) orphans: HashMap<u32, HashSet<Box<str>>>,
    /// How many uids `orphans` holds (bounded).
    pub(super) orphans_len: usize,
    /// Owner's part: departures told late, with the tick they came at, decided on once the
    /// siblings' snapshots are in.
    pub(super) gone: Vec<(u32, Box<str>)>,
    /// Ticks of `up_tick` (seconds) since the worker started.
    pub(super) ticks: u32,
    /// Siblings (by pid) whose list of subscribers has arrived.
    pub(super) subs_from: HashSet<u32>,
    /// Every sibling's subscribers are known and reachable (or [`EARLY_TICKS`] passed): the
    /// events of a new worker's first moments are held until then (see [`Upstream::early`]).
    pub(super) settled: bool,
    /// Events for subscribers (event bit, uid, line) produced before `settled`: a worker that
    /// starts beside running siblings would otherwise send its first `online`s to no one.
    pub(super) early: Vec<(u8, Box<str>, Vec<u8>)>,
}

/// Ticks (seconds) a new worker holds its subscribers' events at most, waiting for its
/// siblings' lists of subscribers.
const EARLY_TICKS: u32 = 3;
/// Events held at most meanwhile (beyond: dropped and counted in `events_dropped`).
const EARLY_MAX: usize = 100_000;

impl Upstream {
    /// The state for worker `pid`; starts the webhook's thread if one is configured (waking
    /// the loop through `waker`).
    pub(super) fn new(
        cfg: &crate::config::Config,
        pid: u32,
        waker: Option<Arc<mio::Waker>>,
    ) -> std::io::Result<Upstream> {
        let start_ms = super::unix_ms();
        let mut up = Upstream {
            on: cfg.events_on(),
            id_prefix: format!("{start_ms:x}-{pid}"),
            ..Upstream::default()
        };
        if let (false, Some(waker)) = (cfg.webhook_url.is_empty(), waker) {
            up.webhook_mask =
                events::mask_of(&cfg.webhook_events).map_err(std::io::Error::other)?;
            let s = Settings {
                url: cfg.webhook_url.clone(),
                secret: cfg.webhook_secret.clone(),
                batch: cfg.webhook_batch,
                delay: Duration::from_secs_f64(cfg.webhook_delay.max(0.0)),
                queue: cfg.webhook_queue,
                timeout: Duration::from_secs_f64(cfg.webhook_timeout.max(0.001)),
            };
            up.webhook = Some(Webhook::start(s, waker).map_err(std::io::Error::other)?);
        }
        Ok(up)
    }

    /// The worker exits: what the webhook still has queued is POSTed, for at most `limit`.
    pub(super) fn finish(&mut self, limit: Duration) {
        if let Some(w) = self.webhook.take() {
            if !w.finish(limit) {
                log::warn!(
                    "webhook: events still queued at exit after {} s were not sent",
                    limit.as_secs_f64()
                );
            }
        }
    }

    /// Subscribers in this worker (the `subscribers` gauge).
    pub(super) fn subscribers(&self) -> usize {
        self.subs.len()
    }
}

/// The worker id that keeps the presence of `uid`, among `n` workers.
pub(super) fn owner(uid: &str, n: usize) -> u32 {
    events::pick(&format!("owner:{uid}"), n) as u32
}

impl Worker {
    /// A new event id.
    pub(super) fn event_id(&mut self) -> String {
        self.up.seq += 1;
        format!("{}-{}", self.up.id_prefix, self.up.seq)
    }

    // ---- What clients do --------------------------------------------------------------

    /// A WebSocket finished its handshake for `target` (its query string goes in `login`).
    pub(super) fn up_handshake(&mut self, slot: usize, target: &str) {
        if !self.up.on {
            return;
        }
        let Some(id) = self.conns.get(slot).map(|c| c.id) else {
            return;
        };
        let query = target.split_once('?').map_or("", |(_, q)| q).to_string();
        self.up.handshakes.insert(slot, (id, query));
    }

    /// A Socket.IO session `idx` was opened by a request on `slot` with `query`.
    pub(super) fn up_sio_handshake(&mut self, idx: usize, slot: usize, query: &str) {
        if !self.up.on || !self.sio.sessions.contains(idx) {
            return;
        }
        let remote = self.conns.get(slot).map(|c| c.remote);
        self.up.sessions.insert(idx, (query.to_string(), remote));
    }

    /// A client's connection is closing with `code` (a WebSocket's close frame) and `reason`.
    pub(super) fn up_note_close(&mut self, who: Recipient, code: Option<u16>, reason: &str) {
        if self.up.on && self.up.clients.contains_key(&who) {
            self.up
                .closes
                .entry(who)
                .or_insert_with(|| (code, reason.to_string()));
        }
    }

    /// `who` logged in as `uid` (`first_here`: the uid's first connection in this worker).
    pub(super) fn up_login(&mut self, who: Recipient, uid: &Rc<str>, first_here: bool) {
        if !self.up.on {
            return;
        }
        let (key, remote, protocol, query) = match who.who() {
            Who::Conn(slot) => {
                let Some(c) = self.conns.get(slot) else {
                    return;
                };
                let query = match self.up.handshakes.remove(&slot) {
                    Some((id, q)) if id == c.id => q,
                    _ => String::new(),
                };
                (ConnKey::Ws(c.id), Some(c.remote), "websocket", query)
            }
            Who::Session(idx) => {
                let Some(s) = self.sio.sessions.get(idx) else {
                    return;
                };
                let (query, remote) = self.up.sessions.remove(&idx).unwrap_or_default();
                (ConnKey::Session(s.sid.clone()), remote, "socketio", query)
            }
        };
        let client = Client {
            key,
            since_ms: self.epoch.elapsed().as_millis() as u64,
        };
        let conn = client.conn(&self.up.conn_node, self.pid, who);
        self.up.clients.insert(who, client);
        let id = self.event_id();
        let o = self.origin(&id, uid, &conn);
        let json = events::login(&o, remote, protocol, &query);
        self.emit(events::LOGIN, uid, json, id, Some(&conn), None);
        if first_here {
            self.up_held(uid, true);
        }
    }

    /// `who`, logged in as `uid`, is gone (`last_here`: the uid's last connection here).
    pub(super) fn up_logout(&mut self, who: Recipient, uid: &str, last_here: bool) {
        self.up.rates.remove(&who);
        if !self.up.on {
            return;
        }
        let close = self.up.closes.remove(&who);
        if let Some(c) = self.up.clients.remove(&who) {
            // A stop or the end of a drain closes every client at once (with 1001).
            let ending = if self.stopping {
                Some("server stopping")
            } else if self.retire.is_some() {
                Some("server going away")
            } else {
                None
            };
            let (code, reason) = close.unwrap_or(match (who.who(), ending) {
                (Who::Conn(_), Some(r)) => (Some(1001), r.to_string()),
                (Who::Session(_), Some(r)) => (None, r.to_string()),
                (Who::Conn(_), None) => (Some(1006), "connection lost".to_string()),
                (Who::Session(_), None) => (None, "session ended".to_string()),
            });
            let id = self.event_id();
            let conn = c.conn(&self.up.conn_node, self.pid, who);
            let o = self.origin(&id, uid, &conn);
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            let duration = now_ms.saturating_sub(c.since_ms) as f64 / 1000.0;
            let json = events::logout(&o, code, &reason, duration);
            self.emit(events::LOGOUT, uid, json, id, Some(&conn), None);
        }
        if last_here {
            self.up_held(uid, false);
        }
    }

    pub(super) fn origin<'a>(&self, id: &'a str, uid: &'a str, conn: &'a str) -> Origin<'a> {
        Origin {
            id,
            uid,
            conn,
            worker: self.id,
            time_ms: super::unix_ms(),
        }
    }

    /// Counts one message of `who` against `max_upstream_rate`; false when it is over.
    fn up_rate_ok(&mut self, who: Recipient) -> bool {
        self.stats.upstream_messages += 1;
        let max = self.cfg.max_upstream_rate;
        if max == 0 {
            return true;
        }
        let second = self.now / 10;
        if self.up.rates.entry(who).or_default().allow(second, max) {
            return true;
        }
        self.stats.upstream_limited += 1;
        false
    }

    /// A logged-in WebSocket's message (`text`, or else binary `data`).
    pub(super) fn up_ws_message(
        &mut self,
        slot: usize,
        uid: Rc<str>,
        text: Option<&str>,
        data: &[u8],
    ) {
        let who = Recipient::conn(slot);
        if !self.up_rate_ok(who) {
            if self.cfg.upstream_rate_close {
                if let Some(c) = self.conns.get(slot) {
                    log::info!(
                        "websocket {} from {}: over max_upstream_rate; closing",
                        c.id,
                        c.remote
                    );
                }
                self.up_note_close(who, Some(1008), "rate limit");
                self.ws_close(slot, 1008, "rate limit");
            }
            return;
        }
        if let (true, Some(msg)) = (self.cfg.client_relay, text) {
            if let Some(p) = parse_relay(msg) {
                self.push(
                    p.target.into(),
                    p.exclude,
                    &p.payload,
                    false,
                    ReplyTo::Nobody,
                );
            }
        }
        if !self.up.on {
            return;
        }
        let Some(conn) = self.client_conn(who) else {
            return;
        };
        let body = match text {
            Some(t) => Body::Text(t),
            None => Body::Binary(data),
        };
        let id = self.event_id();
        let json = events::message(&self.origin(&id, &uid, &conn), body);
        self.emit(events::MESSAGE, &uid, json, id, Some(&conn), None);
    }

    /// A Socket.IO event other than `login` from session `idx`.
    pub(super) fn up_sio_event(&mut self, idx: usize, ev: Event) {
        let who = Recipient::session(idx);
        let Some(uid) = self.sio.sessions.get(idx).and_then(|s| s.uid.clone()) else {
            return;
        };
        if !self.up_rate_ok(who) {
            if self.cfg.upstream_rate_close {
                log::info!("socket.io session of {uid}: over max_upstream_rate; closing");
                self.up_note_close(who, None, "rate limit");
                self.sio_close(idx, "rate limit");
            }
            return;
        }
        if !self.up.on {
            return;
        }
        let Some(conn) = self.client_conn(who) else {
            return;
        };
        let id = self.event_id();
        let body = Body::Sio {
            name: &ev.name,
            args: &ev.args,
            ack: ev.id,
        };
        let json = events::message(&self.origin(&id, &uid, &conn), body);
        self.emit(events::MESSAGE, &uid, json, id, Some(&conn), ev.id);
    }

    /// The `conn` string of logged-in client `who` (`None`: not one, or events are off).
    fn client_conn(&self, who: Recipient) -> Option<String> {
        let c = self.up.clients.get(&who)?;
        Some(c.conn(&self.up.conn_node, self.pid, who))
    }

    // ---- Where events go -------------------------------------------------------------

    /// Sends one event to the webhook (if it wants it) and the subscribers that get it.
    pub(super) fn emit(
        &mut self,
        bit: u8,
        uid: &str,
        json: String,
        id: String,
        conn: Option<&str>,
        ack: Option<u64>,
    ) {
        self.stats.events += 1;
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json.as_bytes());
        line.push(b'\n');
        if let (Some(w), true) = (&self.up.webhook, self.up.webhook_mask & bit != 0) {
            let ev = Outgoing {
                id,
                json,
                conn: conn.map(str::to_string),
                ack,
            };
            if w.send(ev) {
                self.up.webhook_full = false;
            } else {
                self.stats.webhook_dropped += 1;
                if !self.up.webhook_full {
                    self.up.webhook_full = true;
                    log::warn!(
                        "webhook queue full ({} events): dropping events until it drains (counted in webhook_dropped)",
                        self.cfg.webhook_queue
                    );
                }
            }
        }
        if !self.subs_settled() {
            if self.up.early.len() < EARLY_MAX {
                self.up.early.push((bit, uid.into(), line));
            } else {
                self.stats.events_dropped += 1;
            }
            return;
        }
        self.emit_to_subscribers(bit, uid, line);
    }

    /// Whether every sibling's subscribers are known and linked to (then for good), or this
    /// worker has waited [`EARLY_TICKS`] for them.
    fn subs_settled(&mut self) -> bool {
        if !self.up.settled {
            let known = self.mesh_known
                && self
                    .peers
                    .iter()
                    .all(|p| self.up.subs_from.contains(&p.pid) && self.link_to(p.pid).is_some());
            self.up.settled = known || self.up.ticks >= EARLY_TICKS;
        }
        self.up.settled
    }

    /// Sends the events held in this worker's first moments, once its siblings' subscribers
    /// are known.
    pub(super) fn flush_early(&mut self) {
        if self.up.early.is_empty() || !self.subs_settled() {
            return;
        }
        for (bit, uid, line) in std::mem::take(&mut self.up.early) {
            self.emit_to_subscribers(bit, &uid, line);
        }
    }

    /// The subscribers' part of [`Worker::emit`].
    fn emit_to_subscribers(&mut self, bit: u8, uid: &str, line: Vec<u8>) {
        if self.up.subs.is_empty() && self.up.remote.is_empty() {
            return;
        }
        if bit & events::PER_UID != 0 {
            let ring = self.ring(bit);
            if ring.is_empty() {
                return;
            }
            let (pid, sub) = ring[events::choose(uid, &ring)];
            if pid == self.pid {
                self.send_to_sub(sub, Bytes::from(line));
            } else {
                self.event_to(
                    pid,
                    PeerMsg::Event {
                        sub,
                        mask: bit,
                        line,
                    },
                );
            }
            return;
        }
        let pids: Vec<u32> = self
            .up
            .remote
            .iter()
            .filter(|(_, l)| l.iter().any(|(_, m)| m & bit != 0))
            .map(|(p, _)| *p)
            .collect();
        for pid in pids {
            self.event_to(
                pid,
                PeerMsg::Event {
                    sub: 0,
                    mask: bit,
                    line: line.clone(),
                },
            );
        }
        self.send_to_subs(bit, Bytes::from(line));
    }

    /// The whole server's subscribers of per-uid event `bit`, sorted.
    fn ring(&mut self, bit: u8) -> Rc<[(u32, u64)]> {
        if let Some(r) = self.up.rings.get(&bit) {
            return r.clone();
        }
        let mut v: Vec<(u32, u64)> = self
            .up
            .subs
            .values()
            .filter(|(_, m)| m & bit != 0)
            .map(|(id, _)| (self.pid, *id))
            .chain(self.up.remote.iter().flat_map(|(pid, l)| {
                l.iter()
                    .filter(|(_, m)| m & bit != 0)
                    .map(move |(id, _)| (*pid, *id))
            }))
            .collect();
        v.sort_unstable();
        let r: Rc<[(u32, u64)]> = v.into();
        self.up.rings.insert(bit, r.clone());
        r
    }

    /// An event for sibling `pid`'s subscribers, on the link to it (counted if it cannot go).
    fn event_to(&mut self, pid: u32, msg: PeerMsg) {
        if !self.send_to_sibling(pid, &msg) {
            self.stats.events_dropped += 1;
            log::debug!("event not sent to the worker of pid {pid} (no link, or it is full)");
        }
    }

    /// One event line to this worker's subscriber `sub` (its connection id).
    pub(super) fn send_to_sub(&mut self, sub: u64, line: Bytes) {
        let slot = self
            .up
            .subs
            .iter()
            .find(|(_, (id, _))| *id == sub)
            .map(|(s, _)| *s);
        match slot {
            Some(slot) => self.line_to(slot, line),
            None => self.stats.events_dropped += 1,
        }
    }

    /// One event line to every subscriber here that wants `bit`.
    pub(super) fn send_to_subs(&mut self, bit: u8, line: Bytes) {
        let slots: Vec<usize> = self
            .up
            .subs
            .iter()
            .filter(|(_, (_, m))| m & bit != 0)
            .map(|(s, _)| *s)
            .collect();
        for slot in slots {
            self.line_to(slot, line.clone());
        }
    }

    /// Queues an event line to subscriber connection `slot`, bounded by `max_send_buffer`.
    fn line_to(&mut self, slot: usize, line: Bytes) {
        let cap = self.cfg.max_send_buffer;
        let now = self.now;
        let Some(c) = self.conns.get_mut(slot) else {
            self.stats.events_dropped += 1;
            return;
        };
        if c.flags & CLOSING == 0 && !c.out.is_empty() && c.out.len() + line.len() > cap {
            // A burst of events within one loop turn (many clients read in one turn) may fill
            // the queue of a subscriber that reads well: write what is queued now, and drop
            // only what the kernel will not take either. The end of the turn's flush still
            // handles the connection (it is in the flush list) and any write error.
            if c.out
                .flush(&mut c.stream, &mut c.bytes_out)
                .is_ok_and(|done| !done)
            {
                c.out
                    .set_kernel_backlog(kernel_unsent(c.stream.as_raw_fd()));
            }
        }
        if c.flags & CLOSING != 0 || c.out.len() + line.len() > cap {
            // A subscriber that does not read: its events are dropped, counted, and the sweep
            // closes it after `slow_timeout`, as any slow consumer.
            self.stats.events_dropped += 1;
            if c.slow_since == 0 && c.flags & CLOSING == 0 {
                c.slow_since = now.max(1);
            }
            return;
        }
        self.queue(slot, line);
    }
}
