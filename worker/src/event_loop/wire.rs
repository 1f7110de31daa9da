//! The cluster's hot path on the loop's own sockets. With a plain `redis://` cluster URL, a
//! worker keeps two connections to Redis in its `mio::Poll` beside its clients:
//!
//! - the **command link** carries what a push needs: the routing script, broadcasts and the
//!   answers to other members, written once per loop turn, replies matched in order;
//! - the **subscriber link** listens on this member's channel and the cluster's.
//!
//! A cross-node push thus leaves and arrives without a thread hand-off: the loop writes it to
//! Redis and the receiving loop reads it from Redis. The bus's command thread (`crate::cluster`)
//! keeps what is not urgent: the heartbeat and node name, the uid directory, and every command
//! while the command link is down (it then carries the push instead). With `rediss://` (TLS)
//! or a Unix socket both paths stay on the bus's threads.

use super::Worker;
use crate::cluster::{BusCmd, BusEvent};
use crate::redis_link::Link;
use crate::resp::Value;
use mio::Token;
use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The command link's token.
pub(super) const TOK_WIRE_CMD: Token = Token(12);
/// The subscriber link's token.
pub(super) const TOK_WIRE_SUB: Token = Token(13);
/// A command link whose oldest command has had no reply this long is taken down (Redis hung
/// with its socket open): what waited on it is answered as not sent.
const STALL: Duration = Duration::from_secs(5);

/// Where Redis is and how to greet it, when the URL allows the loop's own links.
pub(super) struct Plan {
    /// Redis's addresses (resolved once, at the worker's start).
    addrs: Vec<SocketAddr>,
    /// `AUTH` arguments, if any (a password, or a user and a password).
    auth: Vec<String>,
    /// The database to select (the routing script's keys live there).
    db: i64,
}

impl Plan {
    /// The plan for `url`: `None` for TLS (`rediss://`), a Unix socket, a CA file, or a host
    /// name that does not resolve (the bus's threads then carry everything).
    pub(super) fn of(url: &str, ca: &str) -> Option<Plan> {
        if !ca.is_empty() {
            return None;
        }
        let client = redis::Client::open(url).ok()?;
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let addrs: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs().ok()?.collect();
        if addrs.is_empty() {
            return None;
        }
        let r = info.redis_settings();
        let auth = match (r.username(), r.password()) {
            (Some(u), Some(p)) => vec![u.to_string(), p.to_string()],
            (None, Some(p)) => vec![p.to_string()],
            _ => Vec::new(),
        };
        Some(Plan {
            addrs,
            auth,
            db: r.db(),
        })
    }
}

/// The two links and what waits on them.
pub(super) struct Wire {
    /// Routes, broadcasts and answers.
    cmd: Link,
    /// What each reply due on `cmd` answers, in order: `Some(id)` is entry `id`'s count of
    /// members reached, `None` a reply nobody waits for.
    waiting: VecDeque<Option<u64>>,
    /// This member's channel and the cluster's.
    sub: Link,
    /// The routing script's SHA-1 (loaded by the command link's greeting).
    route_sha: String,
    /// The key and channel prefix.
    prefix: String,
    /// The cluster's channel, `P:all` (named once, not per broadcast).
    all: String,
    /// `NODE/`: members of this node, which the mesh reaches, are left out of a route.
    mine: String,
    /// The bus's thread holds the node's name: only then may this member listen.
    joined: Arc<AtomicBool>,
    /// Told to the bus's thread: the subscriber link listens (the bus is then up).
    listening: Arc<AtomicBool>,
    /// A link stopped reading at its budget: read it again next turn.
    again: bool,
    /// When the command link last made progress: a reply came, or a command was queued with
    /// none waiting (a hung Redis is noticed by [`STALL`]).
    progress_at: Instant,
}

impl Wire {
    /// The links of member `member` of the cluster whose keys start with `prefix`.
    pub(super) fn new(
        plan: Plan,
        prefix: &str,
        node: &str,
        member: &str,
        joined: Arc<AtomicBool>,
        listening: Arc<AtomicBool>,
    ) -> Wire {
        let route = redis::Script::new(crate::cluster::ROUTE);
        let mut cmd = Link::new(plan.addrs.clone(), TOK_WIRE_CMD);
        let mut sub = Link::new(plan.addrs, TOK_WIRE_SUB);
        let db = plan.db.to_string();
        for link in [&mut cmd, &mut sub] {
            if !plan.auth.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                args.extend(plan.auth.iter().map(|a| a.as_bytes()));
                link.greet(&args);
            }
            if plan.db != 0 {
                link.greet(&[b"SELECT", db.as_bytes()]);
            }
        }
        cmd.greet(&[b"SCRIPT", b"LOAD", crate::cluster::ROUTE.as_bytes()]);
        sub.greet(&[b"SUBSCRIBE", format!("{prefix}:m:{member}").as_bytes()]);
        sub.greet(&[b"SUBSCRIBE", format!("{prefix}:all").as_bytes()]);
        Wire {
            cmd,
            waiting: VecDeque::new(),
            sub,
            route_sha: route.get_hash().to_string(),
            prefix: prefix.to_string(),
            all: format!("{prefix}:all"),
            mine: format!("{node}/"),
            joined,
            listening,
            again: false,
            progress_at: Instant::now(),
        }
    }

    /// Queues `cmd` on the command link when it is ready and `cmd` is one it carries; else
    /// gives it back (for the bus's thread).
    fn send(&mut self, cmd: BusCmd) -> Option<BusCmd> {
        if !self.cmd.ready() {
            return Some(cmd);
        }
        if self.waiting.is_empty() {
            self.progress_at = Instant::now();
        }
        let p = &self.prefix;
        match cmd {
            BusCmd::Route { id, uids, env } => {
                let mut args: Vec<&[u8]> = Vec::with_capacity(6 + uids.len());
                args.extend([
                    &b"EVALSHA"[..],
                    self.route_sha.as_bytes(),
                    b"0",
                    p.as_bytes(),
                    self.mine.as_bytes(),
                    &env,
                ]);
                args.extend(uids.iter().map(|u| u.as_bytes()));
                self.cmd.queue(&args);
                self.waiting.push_back(Some(id));
            }
            BusCmd::Broadcast { id, env } => {
                self.cmd.queue(&[b"PUBLISH", self.all.as_bytes(), &env]);
                self.waiting.push_back(Some(id));
            }
            BusCmd::Send { to, env } => {
                let chan = format!("{p}:m:{to}");
                self.cmd.queue(&[b"PUBLISH", chan.as_bytes(), &env]);
                self.waiting.push_back(None);
            }
            other => return Some(other),
        }
        None
    }

    /// What the command link's replies mean, in order, into `out`.
    fn settle(&mut self, replies: Vec<Value>, out: &mut Vec<BusEvent>) {
        if !replies.is_empty() {
            self.progress_at = Instant::now();
        }
        for v in replies {
            let Some(waited) = self.waiting.pop_front() else {
                log::warn!("cluster: a reply from Redis that nothing asked for: {v:?}");
                continue;
            };
            if let Some(id) = waited {
                let count = match v {
                    Value::Int(n) => u32::try_from(n).ok(),
                    other => {
                        log::debug!("cluster: a route was refused by Redis: {other:?}");
                        None
                    }
                };
                out.push(BusEvent::Published { id, count });
            }
        }
    }

    /// The command link is down: everything that waited on it was not sent.
    fn lost(&mut self, out: &mut Vec<BusEvent>) {
        for id in self.waiting.drain(..).flatten() {
            out.push(BusEvent::Published { id, count: None });
        }
    }

    /// What the subscriber link brought, into `out`.
    fn heard(replies: Vec<Value>, out: &mut Vec<BusEvent>) {
        for v in replies {
            if let Value::Array(Some(mut parts)) = v {
                if parts.len() == 3 && parts[0].bytes() == Some(b"message") {
                    if let Some(Value::Bulk(Some(payload))) = parts.pop() {
                        out.push(BusEvent::Message(payload));
                    }
                }
            }
        }
    }
}

impl Worker {
    /// Sends `cmd` to Redis: on the loop's own link when it can, else through the bus's
    /// thread. False when neither took it (counted by the caller).
    pub(super) fn bus_send(&mut self, cmd: BusCmd) -> bool {
        let cmd = match self.wire.as_mut() {
            Some(w) if self.cluster_up => match w.send(cmd) {
                None => return true,
                Some(back) => back,
            },
            _ => cmd,
        };
        self.bus.as_ref().is_some_and(|b| b.send(cmd))
    }

    /// A link's socket is ready (or read again after its budget).
    pub(super) fn on_wire(&mut self, token: Token) {
        let Some(w) = self.wire.as_mut() else { return };
        let reg = self.poll.registry();
        let mut replies = Vec::new();
        let mut events = Vec::new();
        if token == TOK_WIRE_CMD {
            // Replies read before a loss answer what they answer; the rest was not sent.
            let res = w.cmd.on_ready(reg, &mut replies);
            w.settle(replies, &mut events);
            match res {
                Ok(more) => w.again |= more,
                Err(e) => {
                    log::debug!("cluster: command link to Redis: {e}");
                    w.lost(&mut events);
                }
            }
        } else {
            match w.sub.on_ready(reg, &mut replies) {
                Ok(more) => w.again |= more,
                Err(e) => log::debug!("cluster: subscriber link to Redis: {e}"),
            }
            w.listening.store(w.sub.ready(), Ordering::SeqCst);
            Wire::heard(replies, &mut events);
        }
        for ev in events {
            self.bus_event(ev);
        }
    }

    /// Once a turn: reads what a budget left, (re)connects the links when due, and writes
    /// what the turn queued.
    pub(super) fn wire_turn(&mut self, now: Instant) {
        let Some(w) = self.wire.as_mut() else { return };
        if std::mem::take(&mut w.again) {
            self.on_wire(TOK_WIRE_CMD);
            self.on_wire(TOK_WIRE_SUB);
        }
        let Some(w) = self.wire.as_mut() else { return };
        let reg = self.poll.registry();
        let mut events = Vec::new();
        if let Err(e) = w.cmd.tick(reg, now) {
            log::debug!("cluster: command link to Redis: {e}");
            w.lost(&mut events);
        }
        if !w.waiting.is_empty() && now.saturating_duration_since(w.progress_at) > STALL {
            log::warn!("cluster: Redis has not answered for {STALL:?}; reconnecting");
            w.cmd.down(reg, now);
            w.lost(&mut events);
        }
        if w.joined.load(Ordering::SeqCst) {
            if let Err(e) = w.sub.tick(reg, now) {
                log::debug!("cluster: subscriber link to Redis: {e}");
            }
        } else if w.sub.connected() {
            // The node's name is not (or no longer) ours: stop listening.
            w.sub.down(reg, now);
        }
        w.listening.store(w.sub.ready(), Ordering::SeqCst);
        if w.cmd.pending_out() {
            if let Err(e) = w.cmd.flush(reg) {
                log::debug!("cluster: command link to Redis: {e}");
                w.lost(&mut events);
            }
        }
        for ev in events {
            self.bus_event(ev);
        }
    }

    /// When the links next want [`Worker::wire_turn`]; now when a budget left bytes unread.
    pub(super) fn wire_due(&self) -> Option<Instant> {
        let w = self.wire.as_ref()?;
        if w.again {
            return Some(Instant::now());
        }
        let sub = w
            .joined
            .load(Ordering::SeqCst)
            .then(|| w.sub.due())
            .flatten();
        let stall = (!w.waiting.is_empty()).then(|| w.progress_at + STALL);
        [w.cmd.due(), sub, stall].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_get_the_loops_links_and_tls_stays_on_threads() {
        let p = Plan::of("redis://:s3cret@127.0.0.1:6390/2", "").expect("plain");
        assert_eq!(p.addrs, vec!["127.0.0.1:6390".parse().expect("addr")]);
        assert_eq!(p.auth, vec!["s3cret".to_string()]);
        assert_eq!(p.db, 2);
        let p = Plan::of("redis://app:pw@127.0.0.1:6390", "").expect("user");
        assert_eq!(p.auth, vec!["app".to_string(), "pw".to_string()]);
        assert_eq!(p.db, 0);
        assert!(Plan::of("rediss://127.0.0.1:6390/0", "").is_none());
        assert!(Plan::of("redis://127.0.0.1:6390/0", "/etc/ca.pem").is_none());
        assert!(Plan::of("redis+unix:///run/redis.sock", "").is_none());
        assert!(Plan::of("not a url", "").is_none());
    }
}
