//! The cluster bus: how a worker reaches the workers of other hosts, through one Redis.
//!
//! Inside a host the sibling mesh stays the path; Redis carries only what must cross hosts.
//! Each worker is a *member* of the cluster, named `NODE/PID`, and owns two Redis connections,
//! each driven by a thread of its own (the redis crate's client is blocking; the worker's mio
//! loop must never wait on Redis):
//!
//! - the **command** thread takes [`BusCmd`]s from the loop over a bounded crossbeam channel,
//!   sends them to Redis in pipelined batches, and keeps the member's directory entries;
//! - the **subscriber** thread listens on the member's own channel (`P:m:MEMBER`) and the
//!   cluster-wide one (`P:all`), and hands each message to the loop as a [`BusEvent`], waking
//!   it through a `mio::Waker`.
//!
//! What Redis holds, under the prefix `P` (`cluster_prefix`):
//!
//! - `P:u:UID`, a set of the members holding a connection of UID (added at a uid's first
//!   connection in a worker, removed at its last, and rebuilt after a reconnect);
//! - `P:alive:MEMBER`, a key with a 10 s time to live, refreshed every 3 s: a member killed with
//!   `kill -9` stops being reached within 10 s, and the routing script removes its entries;
//! - `P:members`, the set of members that ever joined (listed by `status`).
//!
//! A push for uids is routed by a Lua script, in one round trip: it reads the uids' member sets
//! and publishes the push to each live member of another node, so a unicast costs the same
//! however many nodes there are. A broadcast, a group push or a question goes to `P:all`. The
//! number of members Redis delivered to comes back with the reply ([`BusEvent::Published`]),
//! and the entry worker waits for that many answers, as it does for its siblings.

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use mio::Waker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Commands the loop may queue before it is told the bus is full (each is counted as dropped,
/// and a push or question waiting on it is answered as partial).
const QUEUE: usize = 16 * 1024;
/// Events the subscriber may queue for the loop before it waits (Redis then buffers for us).
const EVENTS: usize = 64 * 1024;
/// Commands sent to Redis in one pipelined batch at most.
const BATCH: usize = 512;
/// How long a member's `alive` key lives, and how often it is refreshed.
const ALIVE_TTL: u64 = 10;
/// How often the `alive` key is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(3);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Routes a push: for each uid (ARGV[4..]) its members, each live member of another node once.
pub(crate) const ROUTE: &str = r#"
local p, mine, env = ARGV[1], ARGV[2], ARGV[3]
local seen, alive, n = {}, {}, 0
for i = 4, #ARGV do
  local key = p .. ':u:' .. ARGV[i]
  for _, m in ipairs(redis.call('SMEMBERS', key)) do
    if string.sub(m, 1, #mine) ~= mine then
      if alive[m] == nil then
        alive[m] = redis.call('EXISTS', p .. ':alive:' .. m) == 1
      end
      if not alive[m] then
        redis.call('SREM', key, m)
      elseif not seen[m] then
        seen[m] = true
        n = n + redis.call('PUBLISH', p .. ':m:' .. m, env)
      end
    end
  end
end
return n
"#;

/// The heartbeat: refreshes this member's `alive` key and this node's claim on its name, and
/// lists the live nodes. ARGV: prefix, member, node, the node's owner token, ttl. Returns the
/// owner of the node name when another process holds it (a second node with the same
/// `node_id`), else the live nodes, `|`-joined, after a leading `+`.
const HEARTBEAT_SCRIPT: &str = r#"
local p, member, node, token, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local claim = p .. ':node:' .. node
local owner = redis.call('GET', claim)
if owner and owner ~= token then
  return owner
end
redis.call('SET', claim, token, 'EX', ttl)
redis.call('SET', p .. ':alive:' .. member, node, 'EX', ttl)
redis.call('SADD', p .. ':members', member)
local nodes, seen = {}, {}
for _, m in ipairs(redis.call('SMEMBERS', p .. ':members')) do
  local n = redis.call('GET', p .. ':alive:' .. m)
  if not n then
    redis.call('SREM', p .. ':members', m)
  elseif not seen[n] then
    seen[n] = true
    table.insert(nodes, n)
  end
end
table.sort(nodes)
return '+' .. table.concat(nodes, '|')
"#;

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Why the bus could not start.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The `cluster` URL cannot be used.
    #[error("cluster URL: {0}")]
    Url(String),
    /// A thread could not be started.
    #[error("starting the cluster bus: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the loop asks of Redis.
#[derive(Debug)]
pub enum BusCmd {
    /// `env` to every live member of another node holding one of `uids`; answered with
    /// [`BusEvent::Published`] for `id`.
    Route {
        /// The entry's id for the push.
        id: u64,
        /// Whom the push is for.
        uids: Vec<String>,
        /// The message, as [`envelope`] made it.
        env: Vec<u8>,
    },
    /// `env` to every member (`P:all`); answered with [`BusEvent::Published`].
    Broadcast {
        /// The entry's id.
        id: u64,
        /// The message.
        env: Vec<u8>,
    },
    /// `env` to one member (an answer).
    Send {
        /// The member.
        to: String,
        /// The message.
        env: Vec<u8>,
    },
    /// `uid` got its first connection in this worker.
    Arrive(String),
    /// `uid` lost its last connection in this worker.
    Depart(String),
    /// Every uid this worker holds (after a connection to Redis was made).
    Resync(Vec<String>),
    /// The history in Redis (`history_size` with `cluster`; see `crate::cluster_history`).
    History(crate::cluster_history::HistCmd),
    /// Whole-cluster presence (see `crate::cluster_presence`).
    Presence(crate::cluster_presence::PresenceCmd),
}

/// What Redis brings back to the loop.
#[derive(Debug)]
pub enum BusEvent {
    /// Connected to Redis (again): the loop answers with [`BusCmd::Resync`].
    Up,
    /// Lost Redis, or cannot reach it (why, for the log).
    Down(String),
    /// The live nodes of the cluster, sorted (after each change).
    Nodes(Vec<String>),
    /// How many members a `Route` or `Broadcast` reached; `None` when it could not be sent.
    Published {
        /// The entry's id.
        id: u64,
        /// Members that got it.
        count: Option<u32>,
    },
    /// A message from another member, as [`envelope`] made it.
    Message(Vec<u8>),
    /// An answer about the history in Redis.
    History(crate::cluster_history::HistEvent),
    /// Uids that came online or went offline for the whole cluster, decided by this member.
    Presence(Vec<crate::cluster_presence::Transition>),
}

/// This worker's end of the bus.
pub struct Bus {
    /// Commands to the command thread.
    tx: Sender<BusCmd>,
    /// Events from both threads.
    pub rx: Receiver<BusEvent>,
    /// This member's name, `NODE/PID`.
    pub member: String,
    /// This node's name.
    pub node: String,
    /// The command thread holds the node's name (a loop-driven subscriber may listen).
    pub joined: Arc<AtomicBool>,
    /// The subscriber listens (set by the subscriber thread, or by the loop's own link).
    pub listening: Arc<AtomicBool>,
}

/// A message for other members: the sender's name, a newline, then the message's frame.
pub fn envelope(member: &str, frame: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(member.len() + 1 + frame.len());
    v.extend_from_slice(member.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(frame);
    v
}

/// The sender and the frame of an envelope.
pub fn open_envelope(env: &[u8]) -> Option<(&str, &[u8])> {
    let nl = env.iter().position(|&b| b == b'\n')?;
    Some((std::str::from_utf8(&env[..nl]).ok()?, &env[nl + 1..]))
}

/// The node part of a member's name.
pub fn node_of(member: &str) -> &str {
    member.rsplit_once('/').map_or(member, |(n, _)| n)
}

impl Bus {
    /// Starts the two threads for member `NODE/PID` of the cluster at `url`; `waker` wakes the
    /// loop when events wait. Connecting happens in the background (and again after a loss).
    /// `token` names this node's process (host and master pid): a second process claiming the
    /// same node name is refused.
    /// `ca` is a PEM file of the CA that signed a `rediss://` server's certificate (empty: the
    /// system's trusted roots). With `own_subscriber` the loop listens on its own link (see
    /// `event_loop/wire.rs`) and no subscriber thread is started.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        url: &str,
        ca: &str,
        prefix: &str,
        node: &str,
        pid: u32,
        token: &str,
        waker: Arc<Waker>,
        own_subscriber: bool,
    ) -> Result<Bus, ClusterError> {
        // `rediss://` runs on rustls with ring: make it the process's provider (once; a later
        // call finds it installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = if ca.is_empty() {
            redis::Client::open(url)
        } else {
            let root = std::fs::read(ca)
                .map_err(|e| ClusterError::Url(format!("cluster_ca {ca}: {e}")))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            )
        }
        .map_err(|e| ClusterError::Url(e.to_string()))?;
        let member = format!("{node}/{pid}");
        let (tx, cmd_rx) = bounded(QUEUE);
        let (ev_tx, rx) = bounded(EVENTS);
        let ctx = Ctx {
            client,
            prefix: prefix.to_string(),
            member: member.clone(),
            node: node.to_string(),
            token: token.to_string(),
            joined: Arc::new(AtomicBool::new(false)),
            listening: Arc::new(AtomicBool::new(false)),
            events: ev_tx,
            waker,
        };
        let sub = ctx.clone();
        let (joined, listening) = (ctx.joined.clone(), ctx.listening.clone());
        thread::Builder::new()
            .name("cluster-cmd".into())
            .spawn(move || ctx.commands(cmd_rx))?;
        if !own_subscriber {
            thread::Builder::new()
                .name("cluster-sub".into())
                .spawn(move || sub.subscriber())?;
        }
        Ok(Bus {
            tx,
            rx,
            member,
            node: node.to_string(),
            joined,
            listening,
        })
    }

    /// Queues a command; false when the queue is full or the bus is gone (the caller counts
    /// it and answers without it).
    pub fn send(&self, cmd: BusCmd) -> bool {
        match self.tx.try_send(cmd) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// What both threads share.
#[derive(Clone)]
struct Ctx {
    /// Where Redis is.
    client: redis::Client,
    /// Key and channel prefix.
    prefix: String,
    /// This member's name.
    member: String,
    /// This node's name.
    node: String,
    /// This node's process (host and master pid), the owner of its name in Redis.
    token: String,
    /// The command thread holds the node's name: the subscriber may listen.
    joined: Arc<AtomicBool>,
    /// The subscriber listens: answers to what this member asks can reach it, so the loop
    /// may be told the bus is up.
    listening: Arc<AtomicBool>,
    /// Events to the loop.
    events: Sender<BusEvent>,
    /// Wakes the loop.
    waker: Arc<Waker>,
}

impl Ctx {
    /// Hands an event to the loop; false when the loop is gone (the thread then ends).
    fn emit(&self, ev: BusEvent) -> bool {
        if self.events.send(ev).is_err() {
            return false;
        }
        let _ = self.waker.wake();
        true
    }

    /// A connection with short timeouts: a dead Redis must not hold a thread for long.
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let con = self
            .client
            .get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_write_timeout(Some(Duration::from_secs(2)))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(con)
    }

    /// The command thread: connect, then run batches of commands until the link fails; after
    /// a failure (Redis down, a name conflict) wait a growing back-off before trying again.
    fn commands(self, rx: Receiver<BusCmd>) {
        let mut backoff = Duration::from_millis(100);
        let mut presence = crate::cluster_presence::State::default();
        loop {
            let connected = self.connect().and_then(|mut c| {
                redis::cmd("PING").query::<String>(&mut c)?;
                Ok(c)
            });
            let failure = match connected {
                Ok(mut con) => {
                    let served = Instant::now();
                    match self.serve(&mut con, &rx, &mut presence) {
                        Ok(()) => return,
                        Err(e) => {
                            self.joined.store(false, Ordering::SeqCst);
                            if served.elapsed() > Duration::from_secs(10) {
                                backoff = Duration::from_millis(100);
                            }
                            e
                        }
                    }
                }
                Err(e) => e,
            };
            if !self.emit(BusEvent::Down(failure.to_string())) || !self.refuse_for(&rx, backoff) {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits `wait` before the next attempt, answering every command that comes meanwhile
    /// (nothing reaches other hosts: no backlog is kept); false when the loop is gone.
    fn refuse_for(&self, rx: &Receiver<BusCmd>, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(cmd) => {
                    if !self.refuse(cmd) {
                        return false;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    /// Answers a command that cannot be sent (Redis is down); false when the loop is gone.
    fn refuse(&self, cmd: BusCmd) -> bool {
        match cmd {
            BusCmd::Route { id, .. } | BusCmd::Broadcast { id, .. } => {
                self.emit(BusEvent::Published { id, count: None })
            }
            BusCmd::History(c) => c.failed().is_none_or(|ev| self.emit(BusEvent::History(ev))),
            _ => true,
        }
    }

    /// Runs batches on a live connection; `Ok` when the loop is gone, `Err` when Redis is.
    fn serve(
        &self,
        con: &mut redis::Connection,
        rx: &Receiver<BusCmd>,
        presence: &mut crate::cluster_presence::State,
    ) -> redis::RedisResult<()> {
        let route = redis::Script::new(ROUTE);
        let beat = redis::Script::new(HEARTBEAT_SCRIPT);
        let p = &self.prefix;
        let mut next_beat = Instant::now();
        let mut nodes = String::new();
        let mut up = false;
        // Loaded once per connection (a restarted Redis forgets it; we reconnect then).
        route.prepare_invoke().load(con)?;
        crate::cluster_history::load(con)?;
        presence.load(con)?;
        loop {
            if Instant::now() >= next_beat {
                let answer: String = beat
                    .arg(p)
                    .arg(&self.member)
                    .arg(&self.node)
                    .arg(&self.token)
                    .arg(ALIVE_TTL)
                    .invoke(con)?;
                let Some(list) = answer.strip_prefix('+') else {
                    self.joined.store(false, Ordering::SeqCst);
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "node_id in use",
                        format!(
                            "node_id {} is already used by another running node ({answer}); \
                             give each node its own node_id",
                            self.node
                        ),
                    )));
                };
                if !self.joined.swap(true, Ordering::SeqCst) {
                    // A subscriber on the loop's own link starts listening now.
                    let _ = self.waker.wake();
                }
                let gone = presence.reap(con, p)?;
                for c in crate::cluster_presence::in_chunks(gone) {
                    if !self.emit(BusEvent::Presence(c)) {
                        return Ok(());
                    }
                }
                // Reaped as dead while alive: the loop resyncs as after a reconnection.
                if presence.beat(Duration::from_secs(ALIVE_TTL)) && up && !self.emit(BusEvent::Up) {
                    return Ok(());
                }
                if list != nodes {
                    nodes = list.to_string();
                    let v = nodes.split('|').filter(|n| !n.is_empty()).map(String::from);
                    if !self.emit(BusEvent::Nodes(v.collect())) {
                        return Ok(());
                    }
                }
                next_beat = Instant::now() + HEARTBEAT;
            }
            // Up once the subscriber listens too (until then, wake often to see it).
            if !up && self.listening.load(Ordering::SeqCst) {
                up = true;
                if !self.emit(BusEvent::Up) {
                    return Ok(());
                }
            }
            let wait = if up {
                next_beat.saturating_duration_since(Instant::now())
            } else {
                Duration::from_millis(10)
            };
            let first = match rx.recv_timeout(wait) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let (hist, batch): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|c| matches!(c, BusCmd::History(_)));
            let hist: Vec<_> = hist
                .into_iter()
                .filter_map(|c| match c {
                    BusCmd::History(h) => Some(h),
                    _ => None,
                })
                .collect();
            let (batch, pres) = crate::cluster_presence::split(batch);
            if !pres.is_empty() {
                match presence.run(con, p, &self.member, pres) {
                    Ok(t) => {
                        for c in crate::cluster_presence::in_chunks(t) {
                            if !self.emit(BusEvent::Presence(c)) {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => {
                        for cmd in batch {
                            self.refuse(cmd);
                        }
                        for ev in hist.into_iter().filter_map(|c| c.failed()) {
                            self.emit(BusEvent::History(ev));
                        }
                        return Err(e);
                    }
                }
            }
            let mut pipe = redis::pipe();
            let mut answers: Vec<u64> = Vec::new();
            for cmd in &batch {
                match cmd {
                    BusCmd::Route { id, uids, env } => {
                        let mine = format!("{}/", self.node);
                        pipe.cmd("EVALSHA")
                            .arg(route.get_hash())
                            .arg(0)
                            .arg(p)
                            .arg(mine)
                            .arg(env.as_slice())
                            .arg(uids.as_slice());
                        answers.push(*id);
                    }
                    BusCmd::Broadcast { id, env } => {
                        pipe.cmd("PUBLISH")
                            .arg(format!("{p}:all"))
                            .arg(env.as_slice());
                        answers.push(*id);
                    }
                    BusCmd::Send { to, env } => {
                        pipe.cmd("PUBLISH")
                            .arg(format!("{p}:m:{to}"))
                            .arg(env.as_slice())
                            .ignore();
                    }
                    BusCmd::Arrive(uid) => {
                        pipe.cmd("SADD")
                            .arg(format!("{p}:u:{uid}"))
                            .arg(&self.member)
                            .ignore();
                    }
                    BusCmd::Depart(uid) => {
                        pipe.cmd("SREM")
                            .arg(format!("{p}:u:{uid}"))
                            .arg(&self.member)
                            .ignore();
                    }
                    BusCmd::Resync(uids) => {
                        for uid in uids {
                            pipe.cmd("SADD")
                                .arg(format!("{p}:u:{uid}"))
                                .arg(&self.member)
                                .ignore();
                        }
                    }
                    BusCmd::History(_) => {}
                    // Taken out of the batch above.
                    BusCmd::Presence(_) => {}
                }
            }
            // A batch may hold nothing to send (a resync of no uid).
            if pipe.cmd_iter().next().is_none() {
                self.history(con, hist)?;
                continue;
            }
            match pipe.query::<Vec<u32>>(con) {
                Ok(counts) => {
                    for (id, n) in answers.iter().zip(counts) {
                        if !self.emit(BusEvent::Published {
                            id: *id,
                            count: Some(n),
                        }) {
                            return Ok(());
                        }
                    }
                    self.history(con, hist)?;
                }
                Err(e) => {
                    for id in answers {
                        self.emit(BusEvent::Published { id, count: None });
                    }
                    for ev in hist.into_iter().filter_map(|c| c.failed()) {
                        self.emit(BusEvent::History(ev));
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Runs the history commands of a batch (after the rest of it: a uid's arrival is in
    /// Redis before a recovery read that follows it).
    fn history(
        &self,
        con: &mut redis::Connection,
        cmds: Vec<crate::cluster_history::HistCmd>,
    ) -> redis::RedisResult<()> {
        crate::cluster_history::run(con, &self.prefix, &self.member, cmds, |ev| {
            self.emit(BusEvent::History(ev))
        })
    }

    /// The subscriber thread: listen on this member's channel and the cluster-wide one,
    /// reconnecting after a loss.
    fn subscriber(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Listen only while the command thread holds the node's name (the thread ends
            // with the worker's process).
            while !self.joined.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            let res = self.connect().and_then(|mut con| {
                let mut sub = con.as_pubsub();
                sub.subscribe(format!("{}:m:{}", self.prefix, self.member))?;
                sub.subscribe(format!("{}:all", self.prefix))?;
                self.listening.store(true, Ordering::SeqCst);
                // A quiet channel is not a dead one: time out, then listen again.
                sub.set_read_timeout(Some(Duration::from_secs(1)))?;
                backoff = Duration::from_millis(100);
                loop {
                    if !self.joined.load(Ordering::SeqCst) {
                        // Not (or no longer) holding the node's name: stop listening.
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "not joined",
                        )));
                    }
                    match sub.get_message() {
                        Ok(msg) => {
                            let payload = msg.get_payload_bytes().to_vec();
                            if !self.emit(BusEvent::Message(payload)) {
                                return Ok(());
                            }
                        }
                        Err(e) if e.is_timeout() => {
                            if self.events.is_full() && self.waker.wake().is_err() {
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
            self.listening.store(false, Ordering::SeqCst);
            match res {
                Ok(()) => return,
                Err(e) => log::debug!("cluster subscriber: {e}; reconnecting"),
            }
            thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_names() {
        let env = envelope("node-a/42", b"\x00\x01frame");
        assert_eq!(
            open_envelope(&env),
            Some(("node-a/42", &b"\x00\x01frame"[..]))
        );
        assert_eq!(open_envelope(b"no newline"), None);
        assert_eq!(node_of("host.example/17"), "host.example");
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://…@10.0.0.5:6379/0"
        );
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
