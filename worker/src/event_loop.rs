//! The worker's event loop: one mio `Poll` for the listeners, every connection, the sibling
//! links and the master's control channel.
//!
//! A loop turn: wait for readiness (or the next deadline), handle every event — reading each
//! socket until `WouldBlock` and handling everything a read brought — then settle expired
//! pushes, and last flush every connection that got output during the turn, once, with
//! `writev`. So a broadcast costs one shared frame plus one queue entry per recipient, and all
//! the frames and replies one connection got in a turn share a system call.

use crate::auth::{self, Auth, Mode};
use crate::config::{Config, Listeners};
use crate::conn::{
    Conn, Fragments, Http, Port, Proto, Text, Ws, CLOSING, DIRTY, READ_PAUSED, RESUME, WANT_WRITE,
};
use crate::delivery::{close_frame, frame, OP_BINARY, OP_PING, OP_PONG, OP_TEXT};
use crate::groups::Groups;
use crate::http::{self, Parsed};
use crate::mesh::{InFlight, Link, Pending, ReplyKind, ReplyTo};
use crate::registry::Registry;
use crate::text::{self, Command};
use crate::websocket::{self, Handshake, WsError};
use bytes::Bytes;
use herald_ipc::{mesh_name, Channel, ChannelError, Control, Peer, PeerMsg, Push, Target};
use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::linux::net::SocketAddrExt;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

#[path = "queries.rs"]
mod queries;
use queries::{PendingQuery, QReply};
#[path = "socketio.rs"]
mod socketio;
use socketio::{Sio, SESSION_BIT};

const TOK_WS: Token = Token(0);
const TOK_TEXT: Token = Token(1);
const TOK_HTTP: Token = Token(2);
const TOK_CONTROL: Token = Token(3);
const TOK_MESH: Token = Token(4);
const TOK_SIO: Token = Token(5);
const TOK_HANDOFF: Token = Token(6);
/// Connection tokens start here: `Token(CONN_BASE + slot)`.
const CONN_BASE: usize = 16;
/// Sibling link tokens start here: `Token(LINK_BASE + slot)`.
const LINK_BASE: usize = 1 << 40;

/// How long a new worker waits for the master's list of workers before accepting anyway.
const MESH_WAIT: Duration = Duration::from_secs(2);

/// Size of the per-worker read buffer every socket is read into.
const SCRATCH: usize = 64 * 1024;
/// Bytes read from one connection per readiness before others get a turn; the rest is read
/// next loop turn (its readiness is remembered in the resume list: edge-triggered epoll will
/// not report it again).
const READ_BUDGET: usize = 4 * SCRATCH;
/// Replies a text connection may have in flight before it is read no further.
const MAX_PENDING_REPLIES: usize = 16 * 1024;
/// Longest uid accepted at login.
const MAX_UID: usize = 256;
/// How long accepting pauses after `EMFILE`/`ENFILE`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Counters shown by `status`.
#[derive(Default, Clone, Copy)]
pub struct Stats {
    /// Pushes received from backends and relaying clients (not siblings').
    pub pushes: u64,
    /// Frames queued to client connections (including siblings' pushes delivered here).
    pub delivered: u64,
    /// Frames dropped because a connection's output was over `max_send_buffer`.
    pub send_fail: u64,
    /// Sibling answers missing (link full, broken or too slow).
    pub ipc_undelivered: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed for a protocol violation (bad frame, bad request, bad uid).
    pub rejected: u64,
    /// Connections refused at accept: over `max_connections`.
    pub over_max_connections: u64,
    /// Connections refused at accept: over `max_connections_per_ip`.
    pub over_per_ip: u64,
    /// Handshakes refused for their `Origin`.
    pub bad_origin: u64,
    /// Logins refused: bad or expired token (or invalid uid).
    pub auth_failed: u64,
    /// Connections closed for not logging in within `auth_timeout`.
    pub auth_timeout: u64,
    /// Connections closed after `idle_timeout` of silence.
    pub idle_closed: u64,
    /// Connections closed after `slow_timeout` over `max_send_buffer`.
    pub slow_closed: u64,
    /// Frames, lines, bodies or heads over their size limit.
    pub oversize: u64,
    /// Backend requests refused for a missing or wrong `push_secret`.
    pub unauthorized: u64,
    /// Socket.IO connections handed to the worker owning their session.
    pub handed_off: u64,
    /// Socket.IO connections adopted from a sibling.
    pub adopted: u64,
}

/// One worker: everything its loop owns.
pub struct Worker {
    /// Stable worker id (0..count).
    id: u32,
    /// The master's pid: names the mesh sockets.
    instance: u32,
    /// Own pid, cached.
    pid: u32,
    cfg: Config,
    /// Addresses, for `status`.
    addrs: Listeners,
    poll: Poll,
    /// Listeners by port; `None` when disabled or closed by a drain.
    ws_listener: Option<TcpListener>,
    text_listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    sio_listener: Option<TcpListener>,
    /// Accepting is paused after EMFILE until then.
    accept_paused_until: Option<Instant>,
    /// The master has said which workers are alive (its first `Peers`), and this worker has
    /// linked to them. Until then connections wait in the kernel's accept queue: a push taken
    /// by a fresh worker that does not know its siblings yet would reach nobody and answer
    /// `fail` for a uid that is online elsewhere.
    mesh_known: bool,
    /// Accept anyway after this, should the master's word not come.
    mesh_wait_until: Instant,
    conns: Slab<Conn>,
    registry: Registry,
    /// The per-worker read buffer.
    scratch: Vec<u8>,
    /// Connections with output queued this turn.
    dirty: Vec<usize>,
    /// Connection ids.
    next_conn_id: u64,
    control: Channel<Control, Control>,
    mesh_listener: UnixListener,
    links: Slab<Link>,
    /// Peers the master announced (other than this process).
    peers: Vec<Peer>,
    /// When to retry connecting to announced peers we have no link to.
    reconnect_at: Option<Instant>,
    inflight: InFlight,
    stats: Stats,
    /// qps over the last stats tick.
    qps: f64,
    last_tick: Instant,
    last_tick_pushes: u64,
    started: SystemTime,
    /// Set by `Drain`: when to close remaining connections.
    drain_deadline: Option<Instant>,
    /// Set by `Stop` or a closed control channel.
    stop: bool,
    /// Checks login tokens.
    auth: Auth,
    /// The worker clock's origin: ticks are tenths of a second since then.
    epoch: Instant,
    /// Ticks at the start of this loop turn.
    now: u32,
    /// Next sweep for deadlines (handshake, login, idle, slow).
    next_sweep: Instant,
    /// Last time the heartbeat was due (ticks): Socket.IO sessions are pinged all at once.
    last_ping: u32,
    /// Sweeps so far: which slice of the WebSockets the next sweep pings.
    ping_sweeps: usize,
    /// Connections per remote IP (kept only when `max_connections_per_ip` is set).
    per_ip: HashMap<IpAddr, u32>,
    /// Group membership (replicated in every worker).
    groups: Groups,
    /// Queries waiting for siblings, by id, with whether a share is already missing.
    queries: HashMap<u64, (PendingQuery, bool)>,
    /// Next query id.
    next_query_id: u64,
    /// Accepting hit EMFILE/ENFILE and has not succeeded since (logged once per episode).
    emfile: bool,
    /// Connections to read again next turn (budget spent, or backpressure lifted).
    resume: Vec<usize>,
    /// Recipient slots of the push being delivered (kept to avoid an allocation per push).
    slots_buf: Vec<u32>,
    /// Text replies ready to write (kept to avoid an allocation per reply).
    ready_buf: Vec<Bytes>,
    /// Socket.IO sessions and the handoff socket.
    sio: Sio,
    /// Connections at the last heap trim (or the peak since): a drop of 1,000 below it trims.
    trim_mark: usize,
}

/// Whether a connection must not be read now: its queued output is over `max_send_buffer`
/// (a client sending pings, or requests, faster than it reads answers), its unparsed input is
/// over what one frame, line or request may take, or too many of its replies are in flight.
fn read_blocked(c: &Conn, cfg: &Config) -> bool {
    let max_in = cfg
        .max_line
        .max(cfg.max_frame)
        .max(cfg.max_header + cfg.max_body)
        + SCRATCH;
    c.out.len() > cfg.max_send_buffer
        || c.inbuf.len() > max_in
        || matches!(&c.proto, Proto::Text(t) if t.replies.len() > MAX_PENDING_REPLIES)
}

/// Which `status` counter a refused request moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Malformed or not allowed: `rejected`.
    Protocol,
    /// Over a size limit (413, 431): `oversize`.
    Oversize,
    /// The caller already counted it (`auth_failed`, `bad_origin`).
    Counted,
}

impl Refusal {
    fn for_status(status: u16) -> Refusal {
        match status {
            413 | 431 => Refusal::Oversize,
            _ => Refusal::Protocol,
        }
    }
}

/// Seconds to worker clock ticks (tenths of a second).
fn ticks(secs: f64) -> u32 {
    (secs * 10.0).ceil().clamp(0.0, u32::MAX as f64) as u32
}

/// Whom a push is for: a target as the mesh carries it, or one uid borrowed from the line or
/// request that named it (the seeds' hot path: no allocation unless a sibling must be told).
pub(crate) enum To<'a> {
    /// Uids, everyone or groups.
    Target(Target),
    /// One uid.
    Uid(&'a str),
}

impl To<'_> {
    /// Everyone.
    pub(crate) const ALL: To<'static> = To::Target(Target::All);
}

impl From<Target> for To<'_> {
    fn from(t: Target) -> Self {
        To::Target(t)
    }
}

/// Drops the room of an empty work list grown past a few pages by a peak; whether it did.
fn shrink_idle<T>(v: &mut Vec<T>) -> bool {
    if v.is_empty() && v.capacity() * std::mem::size_of::<T>() > 16 * 1024 {
        *v = Vec::new();
        return true;
    }
    false
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn ms(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.max(0.0))
}

/// Binds one TCP listener with SO_REUSEPORT, so every worker binds the same port.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(TcpListener::from_std(s.into()))
}

impl Worker {
    /// Builds the worker around bound listeners and the control channel.
    pub fn new(
        id: u32,
        instance: u32,
        cfg: Config,
        addrs: Listeners,
        listeners: [Option<TcpListener>; 4],
        control: Channel<Control, Control>,
    ) -> io::Result<Worker> {
        let pid = std::process::id();
        let name = mesh_name(instance, pid);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std_mesh = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std_mesh.set_nonblocking(true)?;
        let mesh_listener = UnixListener::from_std(std_mesh);
        let [ws, text, http, sio_l] = listeners;
        let mode = cfg.auth_mode(&addrs).map_err(io::Error::other)?;
        let auth = Auth::new(mode, &cfg.auth_secret);
        let mut w = Worker {
            id,
            instance,
            pid,
            cfg,
            addrs,
            poll: Poll::new()?,
            ws_listener: ws,
            text_listener: text,
            http_listener: http,
            sio_listener: sio_l,
            accept_paused_until: None,
            mesh_known: false,
            mesh_wait_until: Instant::now() + MESH_WAIT,
            conns: Slab::new(),
            registry: Registry::default(),
            scratch: vec![0; SCRATCH],
            dirty: Vec::new(),
            next_conn_id: 1,
            control,
            mesh_listener,
            links: Slab::new(),
            peers: Vec::new(),
            reconnect_at: None,
            inflight: InFlight::default(),
            stats: Stats::default(),
            qps: 0.0,
            last_tick: Instant::now(),
            last_tick_pushes: 0,
            started: SystemTime::now(),
            drain_deadline: None,
            stop: false,
            auth,
            epoch: Instant::now(),
            now: 0,
            next_sweep: Instant::now(),
            last_ping: 0,
            ping_sweeps: 0,
            per_ip: HashMap::new(),
            groups: Groups::default(),
            queries: HashMap::new(),
            next_query_id: 1,
            emfile: false,
            resume: Vec::new(),
            slots_buf: Vec::new(),
            ready_buf: Vec::new(),
            sio: Sio::new(instance, pid)?,
            trim_mark: 0,
        };
        let reg = w.poll.registry();
        if let Some(l) = w.ws_listener.as_mut() {
            reg.register(l, TOK_WS, Interest::READABLE)?;
        }
        if let Some(l) = w.text_listener.as_mut() {
            reg.register(l, TOK_TEXT, Interest::READABLE)?;
        }
        if let Some(l) = w.http_listener.as_mut() {
            reg.register(l, TOK_HTTP, Interest::READABLE)?;
        }
        if let Some(l) = w.sio_listener.as_mut() {
            reg.register(l, TOK_SIO, Interest::READABLE)?;
        }
        reg.register(&mut w.sio.handoff, TOK_HANDOFF, Interest::READABLE)?;
        reg.register(
            &mut w.control,
            TOK_CONTROL,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        reg.register(&mut w.mesh_listener, TOK_MESH, Interest::READABLE)?;
        Ok(w)
    }

    /// Queues a control message to the master.
    pub fn tell_master(&mut self, msg: Control) {
        if let Err(e) = self.control.send(&msg) {
            log::warn!("cannot queue a message for the master: {e}");
        }
    }

    /// Runs until stopped.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        while !self.stop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = (self.epoch.elapsed().as_millis() / 100) as u32;
            for slot in std::mem::take(&mut self.resume) {
                if let Some(c) = self.conns.get_mut(slot) {
                    c.flags &= !RESUME;
                }
                self.on_readable(slot, false);
            }
            for ev in events.iter() {
                match ev.token() {
                    TOK_WS => self.accept(Port::Ws),
                    TOK_TEXT => self.accept(Port::Text),
                    TOK_HTTP => self.accept(Port::Http),
                    TOK_CONTROL => self.on_control(),
                    TOK_MESH => self.accept_mesh(),
                    TOK_SIO => self.accept(Port::Sio),
                    TOK_HANDOFF => self.sio_adopt(),
                    Token(t) if t >= LINK_BASE => self.on_link(t - LINK_BASE),
                    Token(t) if t >= CONN_BASE => {
                        let slot = t - CONN_BASE;
                        if ev.is_writable() {
                            self.mark_dirty(slot);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            // A plain readable event: no end or error was pending when it was
                            // taken, so a short read drained the socket, and anything arriving
                            // after it (bytes, FIN) raises a new edge for the next turn.
                            let plain = !ev.is_read_closed() && !ev.is_error();
                            self.on_readable(slot, plain);
                        }
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            if now >= self.next_sweep {
                self.sweep();
                self.next_sweep = now + self.sweep_interval();
            }
            self.inflight.expire(now, &mut expired);
            self.expire_queries(now);
            for p in expired.drain(..) {
                self.stats.ipc_undelivered += p.waiting as u64;
                self.settle(p.reply, p.total, true);
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept_all();
            }
            if !self.mesh_known && now >= self.mesh_wait_until {
                log::warn!(
                    "no list of workers from the master within {} s; accepting connections anyway",
                    MESH_WAIT.as_secs()
                );
                self.mesh_known = true;
                self.accept_all();
            }
            if self.reconnect_at.is_some_and(|t| t <= now) {
                self.reconnect_at = None;
                self.connect_peers();
            }
            if now.duration_since(self.last_tick) >= Duration::from_secs(1) {
                let secs = now.duration_since(self.last_tick).as_secs_f64();
                self.qps = (self.stats.pushes - self.last_tick_pushes) as f64 / secs;
                self.last_tick_pushes = self.stats.pushes;
                self.sio_tick();
                self.last_tick = now;
            }
            self.flush_all();
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() {
                    log::info!("drained: no connection left");
                    break;
                }
                if now >= deadline {
                    log::info!(
                        "drain timeout: closing {} remaining connections with 1001",
                        self.conns.len()
                    );
                    self.close_all(1001, "server going away");
                    break;
                }
            }
        }
        if self.stop {
            self.close_all(1001, "server stopping");
        }
        // Hand the master whatever it was last told (ListenersClosed, a status row).
        let _ = self.control.flush();
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.resume.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut t = self.last_tick + Duration::from_secs(1);
        for d in [
            self.inflight.next_deadline(),
            self.accept_paused_until,
            (!self.mesh_known).then_some(self.mesh_wait_until),
            self.reconnect_at,
            self.drain_deadline,
            Some(self.next_sweep),
            self.next_query_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(d);
        }
        Some(t.saturating_duration_since(now))
    }

    // ---------------------------------------------------------------- deadlines

    fn forget_ip(&mut self, ip: IpAddr) {
        if self.cfg.max_connections_per_ip == 0 {
            return;
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// How often deadlines are checked: a quarter of the shortest timeout, within 50 ms..1 s.
    fn sweep_interval(&self) -> Duration {
        let c = &self.cfg;
        let shortest = [
            c.auth_timeout,
            c.ping_interval,
            c.idle_timeout,
            c.slow_timeout,
        ]
        .into_iter()
        .filter(|t| *t > 0.0)
        .fold(4.0, f64::min);
        Duration::from_secs_f64((shortest / 4.0).clamp(0.05, 1.0))
    }

    /// After a peak of connections, return the tables' spare room and the allocator's free
    /// pages to the system, so memory goes back to its baseline when the clients leave.
    fn give_back_memory(&mut self) {
        let mut shrunk = false;
        if self.conns.capacity() > 2 * self.conns.len() + 1024 {
            self.conns.shrink_to_fit();
            shrunk = true;
        }
        shrunk |= self.registry.shrink();
        // Work lists are reused from turn to turn; one sized by a peak keeps its room.
        shrunk |= shrink_idle(&mut self.dirty)
            | shrink_idle(&mut self.resume)
            | shrink_idle(&mut self.slots_buf)
            | shrink_idle(&mut self.ready_buf);
        if self.per_ip.capacity() > 2 * self.per_ip.len() + 1024 {
            self.per_ip.shrink_to_fit();
            shrunk = true;
        }
        let n = self.conns.len();
        if shrunk || n + 1000 < self.trim_mark {
            // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps and
            // in free pages; it touches no live allocation.
            unsafe {
                libc::malloc_trim(0);
            }
            self.trim_mark = n;
        } else if n > self.trim_mark {
            self.trim_mark = n;
        }
    }

    /// One coarse pass over the connections: handshake and login deadlines, idle and slow
    /// connections, and the periodic ping (one shared frame for every WebSocket). Costs one
    /// comparison per connection per sweep; no connection owns a timer.
    fn sweep(&mut self) {
        let now = self.now;
        let auth = ticks(self.cfg.auth_timeout);
        let idle = ticks(self.cfg.idle_timeout);
        let slow = ticks(self.cfg.slow_timeout);
        let ping_due = self.cfg.ping_interval > 0.0
            && now.saturating_sub(self.last_ping) >= ticks(self.cfg.ping_interval);
        if ping_due {
            self.last_ping = now;
        }
        // WebSockets are pinged a slice per sweep, each every `ping_interval`: 10,000
        // connections pinged at once would hold up pushes for one write each (tens of ms).
        let slices = if self.cfg.ping_interval > 0.0 {
            (self.cfg.ping_interval / self.sweep_interval().as_secs_f64())
                .round()
                .max(1.0) as usize
        } else {
            0
        };
        let slice = self.ping_sweeps % slices.max(1);
        self.ping_sweeps = self.ping_sweeps.wrapping_add(1);
        let ping = frame(OP_PING, b"");
        self.groups.expire(now, ticks(self.cfg.group_ttl));
        self.give_back_memory();
        self.sio_sweep(ping_due);
        enum Act {
            Drop,
            Close(u16, &'static str),
            Ping,
        }
        let mut acts: Vec<(usize, Act)> = Vec::new();
        for (slot, c) in self.conns.iter() {
            if c.flags & CLOSING != 0 {
                continue;
            }
            if c.slow_since != 0 && now.saturating_sub(c.slow_since) >= slow {
                acts.push((slot, Act::Drop));
                continue;
            }
            let age = now.saturating_sub(c.since);
            let quiet = now.saturating_sub(c.last_seen);
            match &c.proto {
                Proto::Handshake if age >= auth => acts.push((slot, Act::Drop)),
                Proto::Ws(ws) if ws.uid.is_none() && ws.session.is_none() && age >= auth => {
                    acts.push((slot, Act::Close(1008, "login timeout")))
                }
                Proto::Ws(ws) if !ws.close_sent && quiet >= idle => {
                    acts.push((slot, Act::Close(1001, "idle timeout")))
                }
                Proto::Ws(ws)
                    if slices > 0
                        && slot % slices == slice
                        && ws.uid.is_some()
                        && !ws.close_sent =>
                {
                    acts.push((slot, Act::Ping))
                }
                Proto::Http(h) if !h.waiting && quiet >= idle => acts.push((slot, Act::Drop)),
                _ => {}
            }
        }
        for (slot, act) in acts {
            let Some(c) = self.conns.get_mut(slot) else {
                continue;
            };
            let (id, remote) = (c.id, c.remote);
            match act {
                Act::Ping => self.queue(slot, ping.clone()),
                Act::Drop => {
                    if c.slow_since != 0 {
                        self.stats.slow_closed += 1;
                        log::info!(
                            "connection {id} from {remote}: output over max_send_buffer for slow_timeout; closing"
                        );
                    } else if matches!(c.proto, Proto::Handshake) {
                        self.stats.auth_timeout += 1;
                        log::info!(
                            "websocket {id} from {remote}: handshake not finished in time; closing"
                        );
                    } else {
                        self.stats.idle_closed += 1;
                        log::debug!("http connection {id} from {remote}: idle; closing");
                    }
                    self.close(slot);
                }
                Act::Close(code, why) => {
                    if code == 1008 {
                        self.stats.auth_timeout += 1;
                    } else {
                        self.stats.idle_closed += 1;
                    }
                    log::info!("websocket {id} from {remote}: {why}; closing");
                    self.ws_close(slot, code, why);
                }
            }
        }
    }

    // ---------------------------------------------------------------- accepting

    /// Takes what waits on every port.
    fn accept_all(&mut self) {
        for port in [Port::Ws, Port::Text, Port::Http, Port::Sio] {
            self.accept(port);
        }
    }

    fn accept(&mut self, port: Port) {
        if self.accept_paused_until.is_some() || !self.mesh_known {
            return;
        }
        loop {
            let listener = match port {
                Port::Ws => self.ws_listener.as_ref(),
                Port::Text => self.text_listener.as_ref(),
                Port::Http => self.http_listener.as_ref(),
                Port::Sio => self.sio_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((stream, remote)) => {
                    if self.emfile {
                        self.emfile = false;
                        log::info!("accepting again: descriptors are available");
                    }
                    self.add_conn(stream, remote, port)
                }
                Err(e) if would_block(&e) => return,
                Err(e)
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    // Out of descriptors: the pending connection stays queued in the kernel.
                    // Pause instead of spinning on a readiness we cannot act on; say so once
                    // per episode, not every retry.
                    if !self.emfile {
                        self.emfile = true;
                        log::warn!(
                            "accept on {} port: {e}; pausing accepts, retrying every {:?}",
                            port.name(),
                            ACCEPT_BACKOFF
                        );
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("accept on {} port: {e}", port.name());
                }
            }
        }
    }

    fn add_conn(&mut self, stream: mio::net::TcpStream, remote: std::net::SocketAddr, port: Port) {
        self.add_conn_with(stream, remote, port, None);
    }

    /// Adds a connection; `initial` holds bytes already read from it (a connection handed
    /// over by a sibling), handled before the socket is read.
    fn add_conn_with(
        &mut self,
        mut stream: mio::net::TcpStream,
        remote: std::net::SocketAddr,
        port: Port,
        initial: Option<&mut Vec<u8>>,
    ) {
        let max = self.cfg.max_connections;
        if max > 0 && self.conns.len() >= max {
            self.stats.over_max_connections += 1;
            log::warn!(
                "{} connection from {remote} refused: max_connections ({max}) reached",
                port.name()
            );
            refuse(
                &mut stream,
                port,
                "503 Service Unavailable",
                "too many connections",
            );
            return;
        }
        let per_ip = self.cfg.max_connections_per_ip;
        if per_ip > 0 {
            let n = self.per_ip.entry(remote.ip()).or_insert(0);
            if *n as usize >= per_ip {
                self.stats.over_per_ip += 1;
                log::warn!(
                    "{} connection from {remote} refused: max_connections_per_ip ({per_ip}) reached",
                    port.name()
                );
                refuse(
                    &mut stream,
                    port,
                    "429 Too Many Requests",
                    "too many connections from this address",
                );
                return;
            }
            *n += 1;
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE)
        {
            log::warn!("cannot register connection from {remote}: {e}");
            self.forget_ip(remote.ip());
            return;
        }
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        self.stats.accepted += 1;
        entry.insert(Conn {
            stream,
            remote,
            id,
            port,
            proto: match port {
                Port::Ws => Proto::Handshake,
                Port::Text => Proto::Text(Text {
                    authed: self.cfg.push_secret.is_empty(),
                    ..Text::default()
                }),
                Port::Http | Port::Sio => Proto::Http(Http::default()),
            },
            out: Default::default(),
            inbuf: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            flags: 0,
            since: self.now,
            last_seen: self.now,
            slow_since: 0,
        });
        log::debug!("{} connection {id} from {remote}", port.name());
        if let Some(bytes) = initial {
            self.on_bytes(slot, bytes);
        }
        // Data may already be there (edge-triggered: no event promised for it).
        self.on_readable(slot, false);
    }

    // ---------------------------------------------------------------- reading

    /// Reads `slot` until `WouldBlock`, its read budget or backpressure. With `short_ok` (the
    /// event said readable and nothing else), a read that did not fill the buffer ends it: the
    /// socket was empty then, and saving the `read` that would only say `WouldBlock` is one
    /// system call less per backend connection and turn.
    fn on_readable(&mut self, slot: usize, short_ok: bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut budget = READ_BUDGET;
        while let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & CLOSING == 0 {
                if read_blocked(conn, &self.cfg) {
                    // Backpressure: read again once its output drains or its requests finish.
                    conn.flags |= READ_PAUSED;
                    break;
                }
                if budget == 0 {
                    if conn.flags & RESUME == 0 {
                        conn.flags |= RESUME;
                        self.resume.push(slot);
                    }
                    break;
                }
            }
            if conn.flags & CLOSING != 0 {
                // Discard what a closing peer still sends; stop at WouldBlock or EOF.
                match conn.stream.read(&mut scratch) {
                    Ok(0) => {
                        self.close(slot);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        self.close(slot);
                        break;
                    }
                }
            }
            match conn.stream.read(&mut scratch) {
                Ok(0) => {
                    self.close(slot);
                    break;
                }
                Ok(n) => {
                    conn.bytes_in += n as u64;
                    conn.last_seen = self.now;
                    budget = budget.saturating_sub(n);
                    self.on_bytes(slot, &mut scratch[..n]);
                    if short_ok && n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    log::debug!("read from connection in slot {slot}: {e}");
                    self.close(slot);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Handles bytes just read. Works on the bytes in place when nothing was pending, and keeps
    /// only an incomplete tail with the connection.
    fn on_bytes(&mut self, slot: usize, data: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut buf = std::mem::take(&mut conn.inbuf);
        let port = conn.port;
        let handshake = matches!(conn.proto, Proto::Handshake);
        let used_inbuf = !buf.is_empty() || handshake || port == Port::Http || port == Port::Sio;
        let rest = if used_inbuf {
            buf.extend_from_slice(data);
            let used = self.consume(slot, &mut buf);
            buf.drain(..used.min(buf.len()));
            buf
        } else {
            let used = self.consume(slot, data);
            data[used.min(data.len())..].to_vec()
        };
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & CLOSING == 0 {
                conn.inbuf = rest;
                if conn.inbuf.capacity() > conn.inbuf.len() * 2 + 1024 {
                    conn.inbuf.shrink_to_fit();
                }
            }
        }
    }

    /// Handles what it can of `buf`; returns how many bytes were used.
    fn consume(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let Some(conn) = self.conns.get(slot) else {
            return buf.len();
        };
        match conn.proto {
            Proto::Handshake => self.consume_handshake(slot, buf),
            Proto::Ws(_) => self.consume_ws(slot, buf),
            Proto::Text(_) => self.consume_text(slot, buf),
            Proto::Http(_) => self.consume_http(slot, buf),
        }
    }

    // ---------------------------------------------------------------- WebSocket

    fn consume_handshake(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        match websocket::handshake(buf, self.cfg.max_header) {
            Handshake::Partial => 0,
            Handshake::Reject {
                status,
                response,
                reason,
            } => {
                self.reject(slot, reason, response, Refusal::for_status(status));
                buf.len()
            }
            Handshake::Upgrade {
                response,
                consumed,
                target,
                origin,
            } => {
                let allowed = &self.cfg.allowed_origins;
                if !allowed.is_empty()
                    && !allowed
                        .iter()
                        .any(|a| a == "*" || origin.as_deref() == Some(a.as_str()))
                {
                    self.stats.bad_origin += 1;
                    let r = websocket::http_error("403 Forbidden", "origin not allowed\n", "");
                    self.reject(slot, "origin not allowed", r, Refusal::Counted);
                    return buf.len();
                }
                // A token in the URL is checked before the upgrade, so a bad one gets a 401.
                let mut uid = None;
                if self.auth.mode != Mode::Uid {
                    if let Some(token) = auth::token_from_target(&target) {
                        match self.auth.verify(&token, unix_now()) {
                            Ok(u) => uid = Some(u),
                            Err(e) => {
                                self.stats.auth_failed += 1;
                                let r = websocket::http_error(
                                    "401 Unauthorized",
                                    "invalid token\n",
                                    "",
                                );
                                self.reject(
                                    slot,
                                    &format!("token in URL refused: {e}"),
                                    r,
                                    Refusal::Counted,
                                );
                                return buf.len();
                            }
                        }
                    }
                }
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.proto = Proto::Ws(Ws::default());
                }
                self.queue(slot, Bytes::from(response));
                if let Some(uid) = uid {
                    if !self.login(slot, &uid) {
                        return buf.len();
                    }
                }
                consumed + self.consume_ws(slot, &mut buf[consumed..])
            }
        }
    }

    fn consume_ws(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            match websocket::parse_frame(&mut buf[pos..], self.cfg.max_frame) {
                Ok(None) => return pos,
                Err(e) => {
                    self.ws_fail(slot, &e);
                    return buf.len();
                }
                Ok(Some((f, used))) => {
                    let start = pos + f.payload.start;
                    let end = pos + f.payload.end;
                    pos += used;
                    if let Err(e) = self.ws_frame(slot, f.fin, f.opcode, &buf[start..end]) {
                        self.ws_fail(slot, &e);
                        return buf.len();
                    }
                    match self.conns.get(slot) {
                        Some(c) if c.flags & CLOSING == 0 => {}
                        _ => return buf.len(),
                    }
                }
            }
        }
    }

    fn ws_fail(&mut self, slot: usize, e: &WsError) {
        if *e == WsError::TooBig {
            self.stats.oversize += 1;
        } else {
            self.stats.rejected += 1;
        }
        if let Some(c) = self.conns.get(slot) {
            log::info!(
                "websocket {} from {}: {e}; closing with {}",
                c.id,
                c.remote,
                e.close_code()
            );
        }
        self.ws_close(slot, e.close_code(), &e.to_string());
    }

    /// Queues a close frame and closes once it is written.
    fn ws_close(&mut self, slot: usize, code: u16, reason: &str) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if let Proto::Ws(ws) = &mut conn.proto {
            if !ws.close_sent {
                ws.close_sent = true;
                self.queue(slot, close_frame(code, reason));
            }
        }
        self.close_after_flush(slot);
    }

    fn ws_frame(
        &mut self,
        slot: usize,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> Result<(), WsError> {
        let max = self.cfg.max_frame;
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return Ok(());
        };
        match opcode {
            0x8 => {
                let code = websocket::close_code(payload)?;
                let echo = if code == 1000 || payload.is_empty() {
                    1000
                } else {
                    code
                };
                self.ws_close(slot, echo, "");
                Ok(())
            }
            0x9 => {
                if !ws.close_sent {
                    self.queue(slot, frame(OP_PONG, payload));
                }
                Ok(())
            }
            0xA => Ok(()),
            0x0 => {
                let Some(frag) = ws.frag.as_mut() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if frag.data.len() + payload.len() > max {
                    return Err(WsError::TooBig);
                }
                frag.data.extend_from_slice(payload);
                if fin {
                    if let Some(f) = ws.frag.take() {
                        self.ws_message(slot, f.opcode == OP_TEXT, &f.data)?;
                    }
                }
                Ok(())
            }
            _ => {
                if ws.frag.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                if fin {
                    self.ws_message(slot, opcode == OP_TEXT, payload)
                } else {
                    ws.frag = Some(Box::new(Fragments {
                        opcode,
                        data: payload.to_vec(),
                    }));
                    Ok(())
                }
            }
        }
    }

    fn ws_message(&mut self, slot: usize, is_text: bool, data: &[u8]) -> Result<(), WsError> {
        let text = if is_text {
            Some(std::str::from_utf8(data).map_err(|_| WsError::BadUtf8)?)
        } else {
            None
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return Ok(());
        };
        if let Some(idx) = ws.session {
            if let Some(t) = text {
                self.sio_ws_message(slot, idx as usize, t);
            }
            return Ok(());
        }
        match (&ws.uid, text) {
            (None, None) => {
                self.stats.rejected += 1;
                self.ws_close(slot, 1003, "the first message must be the uid, as text");
            }
            (None, Some(token)) => match self.auth.verify(token, unix_now()) {
                Ok(uid) => {
                    self.login(slot, &uid);
                }
                Err(e) => {
                    self.stats.auth_failed += 1;
                    log::info!(
                        "websocket {} from {}: login refused: {e}",
                        conn.id,
                        conn.remote
                    );
                    self.ws_close(slot, 4001, "invalid token");
                }
            },
            (Some(_), Some(msg)) if self.cfg.client_relay => {
                // Seed 002: `UID:message` to UID, `all:message` to everyone.
                if let Some((to, body)) = msg.split_once(':') {
                    let target = if to == "all" {
                        Target::All
                    } else {
                        Target::Uids(vec![to.to_string()])
                    };
                    self.push(
                        target.into(),
                        Vec::new(),
                        body.as_bytes(),
                        false,
                        ReplyTo::Nobody,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Registers a checked uid for connection `slot`; false (and the connection closing) if
    /// the uid is not acceptable.
    fn login(&mut self, slot: usize, uid: &str) -> bool {
        if uid.is_empty() || uid.len() > MAX_UID || uid.chars().any(char::is_control) {
            self.stats.auth_failed += 1;
            self.ws_close(slot, 1008, "invalid uid");
            return false;
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return false;
        };
        let first_here = self.registry.get(uid).is_empty();
        let rc = self.registry.add(uid, slot as u32);
        log::debug!(
            "websocket {} from {} logged in as {uid}",
            conn.id,
            conn.remote
        );
        ws.uid = Some(rc);
        if self.cfg.login_reply {
            let msg = format!("login success, your uid is {uid}");
            self.queue(slot, frame(OP_TEXT, msg.as_bytes()));
        }
        if first_here {
            self.groups.arrived(uid);
            if self.links.iter().any(|(_, l)| l.outbound) {
                self.query(
                    serde_json::json!({"q": "groups_of", "uid": uid}),
                    QReply::LoginSync(uid.to_string()),
                );
            }
        }
        true
    }

    // ---------------------------------------------------------------- text port

    fn consume_text(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            if nl > self.cfg.max_line {
                self.line_too_long(slot);
                return buf.len();
            }
            let line = &buf[pos..pos + nl];
            pos += nl + 1;
            self.text_line(slot, line);
            match self.conns.get(slot) {
                Some(c) if c.flags & CLOSING == 0 => {}
                _ => return buf.len(),
            }
        }
        if buf.len() - pos > self.cfg.max_line {
            self.line_too_long(slot);
            return buf.len();
        }
        pos
    }

    fn line_too_long(&mut self, slot: usize) {
        self.stats.oversize += 1;
        if let Some(c) = self.conns.get(slot) {
            log::warn!(
                "text connection {} from {}: line longer than max_line ({} bytes); closing",
                c.id,
                c.remote,
                self.cfg.max_line
            );
        }
        // Replies already due for earlier lines are written first.
        self.close_after_flush(slot);
    }

    fn text_line(&mut self, slot: usize, line: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let id = conn.id;
        let Proto::Text(t) = &mut conn.proto else {
            return;
        };
        let seq = t.reserve();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !t.authed {
            // The first line must present the push secret; nothing else is read before it.
            let ok = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .is_some_and(|v| {
                    v.get("cmd").and_then(|c| c.as_str()) == Some("auth")
                        && v.get("secret").and_then(|s| s.as_str()).is_some_and(|s| {
                            auth::secret_eq(s.as_bytes(), self.cfg.push_secret.as_bytes())
                        })
                });
            if ok {
                t.authed = true;
                self.text_reply(slot, id, seq, Bytes::from_static(b"ok\n"));
            } else {
                self.stats.unauthorized += 1;
                log::warn!(
                    "text connection {id} from {}: no valid push secret; closing",
                    conn.remote
                );
                self.text_reply(
                    slot,
                    id,
                    seq,
                    Bytes::from(text::error_reply("unauthorized")),
                );
                self.close_after_flush(slot);
            }
            return;
        }
        let reply = |kind| ReplyTo::Text {
            slot,
            id,
            seq,
            kind,
        };
        match text::parse_line(line) {
            Command::Seed { uid } => {
                self.push(
                    To::Uid(&uid),
                    Vec::new(),
                    line,
                    false,
                    reply(ReplyKind::OkFail),
                );
            }
            Command::Push {
                target,
                exclude,
                payload,
                binary,
            } => {
                let kind = if target == Target::All {
                    ReplyKind::AlwaysOk
                } else {
                    ReplyKind::OkFail
                };
                self.push(target.into(), exclude, &payload, binary, reply(kind));
            }
            Command::Query(req) => self.query(req, QReply::Text { slot, id, seq }),
            Command::Fail(why) => {
                log::debug!("text connection {id}: {why}; replying fail");
                self.text_reply(slot, id, seq, Bytes::from_static(b"fail\n"));
            }
            Command::Error(e) => {
                self.text_reply(slot, id, seq, Bytes::from(text::error_reply(&e)));
            }
        }
    }

    fn text_reply(&mut self, slot: usize, id: u64, seq: u64, reply: Bytes) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.id != id {
            return;
        }
        let Proto::Text(t) = &mut conn.proto else {
            return;
        };
        let mut ready = std::mem::take(&mut self.ready_buf);
        t.fill(seq, reply, &mut ready);
        for b in ready.drain(..) {
            self.queue(slot, b);
        }
        self.ready_buf = ready;
    }

    // ---------------------------------------------------------------- HTTP port

    fn consume_http(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return buf.len();
            };
            if conn.flags & CLOSING != 0 {
                return buf.len();
            }
            let port = conn.port;
            let h = match &mut conn.proto {
                Proto::Http(h) => h,
                // The Socket.IO port upgraded this connection: frames may follow at once.
                Proto::Ws(_) => return pos + self.consume_ws(slot, &mut buf[pos..]),
                _ => return buf.len(),
            };
            if h.waiting || pos == buf.len() {
                return pos;
            }
            match http::parse_request(&buf[pos..], self.cfg.max_header, self.cfg.max_body) {
                Parsed::Partial { continue_100 } => {
                    if continue_100 && !h.continue_sent {
                        h.continue_sent = true;
                        self.queue(slot, Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                    }
                    return pos;
                }
                Parsed::Error { status, reason } => {
                    let code = status.get(..3).and_then(|c| c.parse().ok()).unwrap_or(400);
                    self.reject(
                        slot,
                        reason,
                        http::text(status, &format!("{reason}\n"), false),
                        Refusal::for_status(code),
                    );
                    return buf.len();
                }
                Parsed::Request(req, used) => {
                    h.continue_sent = false;
                    let start = pos;
                    pos += used;
                    if port == Port::Sio {
                        let id = conn.id;
                        if self.sio_request(slot, id, req, &buf[start..]) {
                            // Handed to the session's worker, with every byte from here on.
                            return buf.len();
                        }
                    } else {
                        self.http_request(slot, req);
                    }
                }
            }
        }
    }

    fn http_request(&mut self, slot: usize, req: http::Request) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let id = conn.id;
        let Proto::Http(h) = &mut conn.proto else {
            return;
        };
        h.close_after = !req.keep_alive;
        let keep = req.keep_alive;
        if !self.cfg.push_secret.is_empty() {
            let given = req
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            if !auth::secret_eq(given.as_bytes(), self.cfg.push_secret.as_bytes()) {
                self.stats.unauthorized += 1;
                log::warn!("http request from {}: no valid push secret", conn.remote);
                let (ctype, body): (&str, &[u8]) = if req.path.starts_with("/api/") {
                    ("application/json", b"{\"error\":\"unauthorized\"}\n")
                } else {
                    ("text/plain; charset=utf-8", b"unauthorized\n")
                };
                let r = http::response(
                    "401 Unauthorized",
                    ctype,
                    body,
                    keep,
                    "WWW-Authenticate: Bearer\r\n",
                );
                return self.http_respond(slot, r);
            }
        }
        if req.path.starts_with("/api/") {
            h.waiting = true;
            return self.api_request(slot, id, &req);
        }
        if req.path == "/metrics" {
            if req.method != "GET" {
                let r = http::response(
                    "405 Method Not Allowed",
                    "text/plain; charset=utf-8",
                    b"method not allowed\n",
                    keep,
                    "Allow: GET\r\n",
                );
                return self.http_respond(slot, r);
            }
            h.waiting = true;
            return self.query(
                serde_json::json!({"q": "stats"}),
                QReply::Metrics { slot, id },
            );
        }
        if req.path != "/" {
            return self.http_respond(slot, http::text("404 Not Found", "not found\n", keep));
        }
        if req.method != "GET" && req.method != "POST" {
            let r = http::response(
                "405 Method Not Allowed",
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                keep,
                "Allow: GET, POST\r\n",
            );
            return self.http_respond(slot, r);
        }
        let params = match http::params(&req) {
            Ok(p) => p,
            Err(why) => {
                return self.http_respond(
                    slot,
                    http::text("400 Bad Request", &format!("{why}\n"), keep),
                )
            }
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("type") != Some("publish") {
            return self.http_respond(slot, http::text("200 OK", "fail", keep));
        }
        let content = http::html_escape(get("content").unwrap_or(""));
        let to = get("to").unwrap_or("").to_string();
        h.waiting = true;
        if to.is_empty() {
            let reply = ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::AlwaysOk,
            };
            self.push(To::ALL, Vec::new(), content.as_bytes(), false, reply);
        } else {
            let reply = ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::Publish,
            };
            self.push(To::Uid(&to), Vec::new(), content.as_bytes(), false, reply);
        }
    }

    /// Writes the response to the request in progress and goes on with pipelined ones.
    fn http_respond(&mut self, slot: usize, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Proto::Http(h) = &mut conn.proto else {
            return;
        };
        h.waiting = false;
        let close = h.close_after;
        self.queue(slot, Bytes::from(response));
        if close {
            self.close_after_flush(slot);
        }
    }

    /// Resumes parsing requests that arrived while a push was in flight.
    fn http_resume(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.inbuf.is_empty() || conn.flags & CLOSING != 0 {
            return;
        }
        let mut buf = std::mem::take(&mut conn.inbuf);
        let used = self.consume_http(slot, &mut buf);
        buf.drain(..used.min(buf.len()));
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & CLOSING == 0 {
                conn.inbuf = buf;
            }
        }
    }

    /// Answers with an error response and closes, moving the counter `why` names.
    fn reject(&mut self, slot: usize, reason: &str, response: Vec<u8>, why: Refusal) {
        match why {
            Refusal::Oversize => self.stats.oversize += 1,
            Refusal::Protocol => self.stats.rejected += 1,
            Refusal::Counted => {}
        }
        if let Some(c) = self.conns.get(slot) {
            log::info!(
                "{} connection {} from {}: {reason}",
                c.port.name(),
                c.id,
                c.remote
            );
        }
        self.queue(slot, Bytes::from(response));
        self.close_after_flush(slot);
    }

    // ---------------------------------------------------------------- pushing

    /// Delivers here, sends to every sibling, and arranges for the outcome to reach `reply`.
    fn push(
        &mut self,
        target: To<'_>,
        exclude: Vec<String>,
        payload: &[u8],
        binary: bool,
        reply: ReplyTo,
    ) {
        self.stats.pushes += 1;
        let f = frame(if binary { OP_BINARY } else { OP_TEXT }, payload);
        let local = self.deliver_local(&target, &exclude, f, payload, binary);
        if !self.links.iter().any(|(_, l)| l.outbound) {
            let missing = self.unlinked_peers();
            self.stats.ipc_undelivered += missing as u64;
            self.settle(reply, local, missing > 0);
            return;
        }
        let id = self.inflight.next_id();
        let target = match target {
            To::Target(t) => t,
            To::Uid(u) => Target::Uids(vec![u.to_owned()]),
        };
        let msg = PeerMsg::Push(Push {
            id,
            target,
            exclude,
            payload: payload.to_vec(),
            binary,
        });
        let mut waiting = 0;
        let mut partial = self.unlinked_peers() > 0;
        for (_, link) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            match link.chan.send(&msg) {
                Ok(()) => {
                    link.inflight.push_back(id);
                    link.dirty = true;
                    waiting += 1;
                }
                Err(e) => {
                    // Counted, never silent; logged at debug since a stalled sibling would
                    // otherwise log once per push.
                    self.stats.ipc_undelivered += 1;
                    partial = true;
                    log::debug!("push {id} not sent to worker {}: {e}", link.peer_worker);
                }
            }
        }
        if waiting == 0 {
            self.settle(reply, local, partial);
            return;
        }
        let reply = if reply.decided(local) {
            self.settle(reply, local, partial);
            ReplyTo::Nobody
        } else {
            reply
        };
        self.inflight.add(Pending {
            total: local,
            waiting,
            reply,
            deadline: Instant::now() + ms(self.cfg.ipc_timeout),
            partial,
        });
    }

    /// Queues `f` to every local connection `target` names; returns how many.
    fn deliver_local(
        &mut self,
        target: &To<'_>,
        exclude: &[String],
        f: Bytes,
        payload: &[u8],
        binary: bool,
    ) -> u32 {
        // Reused between pushes: no allocation per push for the recipient list.
        let mut slots = std::mem::take(&mut self.slots_buf);
        slots.clear();
        match target {
            To::Uid(u) => {
                if !exclude.iter().any(|e| e == u) {
                    slots.extend_from_slice(self.registry.get(u));
                }
            }
            To::Target(Target::Uids(uids)) => {
                for (i, u) in uids.iter().enumerate() {
                    if exclude.contains(u) || uids[..i].contains(u) {
                        continue;
                    }
                    slots.extend_from_slice(self.registry.get(u));
                }
            }
            To::Target(Target::All) => {
                slots.reserve(self.registry.connection_count());
                for (uid, s) in self.registry.iter() {
                    if exclude.is_empty() || !exclude.iter().any(|e| **e == **uid) {
                        slots.extend_from_slice(s);
                    }
                }
                // In table order, not the map's: sockets accepted together sit together in
                // the kernel's tables and in ours, so a broadcast walks memory in order.
                slots.sort_unstable();
            }
            To::Target(Target::Groups(groups)) => {
                let mut seen: HashSet<&str> = HashSet::new();
                for g in groups {
                    for u in self.groups.members(g) {
                        if exclude.contains(u) || !seen.insert(u) {
                            continue;
                        }
                        slots.extend_from_slice(self.registry.get(u));
                    }
                }
            }
        }
        let mut n = 0;
        // Socket.IO sessions get the push as a `new_msg` event, encoded once, on first need.
        let mut sio: Option<Option<(Rc<str>, Bytes)>> = None;
        let last = slots.len().saturating_sub(1);
        let mut f = Some(f);
        for (i, &s) in slots.iter().enumerate() {
            if s & SESSION_BIT != 0 {
                let enc = sio.get_or_insert_with(|| {
                    let text = std::str::from_utf8(payload).ok().filter(|_| !binary)?;
                    let m = crate::engineio::event_message(
                        "/",
                        "new_msg",
                        &[serde_json::Value::from(text)],
                    );
                    let f = frame(OP_TEXT, m.as_bytes());
                    Some((Rc::from(m.as_str()), f))
                });
                if let Some((m, f)) = enc {
                    let (m, f) = (m.clone(), f.clone());
                    if self.sio_send((s & !SESSION_BIT) as usize, m, Some(&f)) {
                        self.stats.delivered += 1;
                        n += 1;
                    }
                }
                continue;
            }
            // The last recipient takes the frame itself: a unicast push shares nothing, so its
            // frame needs no shared reference count (one allocation less).
            let one = if i == last { f.take() } else { f.clone() };
            if one.is_some_and(|one| self.deliver(s as usize, one)) {
                n += 1;
            }
        }
        if slots.capacity() > 64 * 1024 {
            slots = Vec::new();
        }
        self.slots_buf = slots;
        n
    }

    /// Queues one frame to one logged-in connection, unless its output is over the cap.
    fn deliver(&mut self, slot: usize, f: Bytes) -> bool {
        let cap = self.cfg.max_send_buffer;
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if conn.flags & CLOSING != 0 {
            return false;
        }
        if conn.out.len() + f.len() > cap {
            self.stats.send_fail += 1;
            if conn.slow_since == 0 {
                conn.slow_since = self.now.max(1);
            }
            return false;
        }
        self.stats.delivered += 1;
        self.queue(slot, f);
        true
    }

    /// Sends a push's outcome where it belongs.
    fn settle(&mut self, reply: ReplyTo, total: u32, partial: bool) {
        let word = |kind: ReplyKind| -> &'static [u8] {
            match kind {
                ReplyKind::AlwaysOk => b"ok",
                ReplyKind::OkFail if total > 0 => b"ok",
                ReplyKind::OkFail => b"fail",
                ReplyKind::Publish if total > 0 => b"ok",
                ReplyKind::Publish => b"offline",
                ReplyKind::Count => b"",
            }
        };
        match reply {
            ReplyTo::Nobody => {}
            ReplyTo::Text {
                slot,
                id,
                seq,
                kind,
            } => {
                let b: &'static [u8] = match word(kind) {
                    b"ok" => b"ok\n",
                    _ => b"fail\n",
                };
                self.text_reply(slot, id, seq, Bytes::from_static(b));
            }
            ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::Count,
            } => {
                let mut v = serde_json::json!({ "delivered": total });
                if partial {
                    v["partial"] = serde_json::json!(true);
                }
                self.http_json(slot, id, "200 OK", &v);
            }
            ReplyTo::Http { slot, id, kind } => {
                let Some(keep) = self.http_keep_alive(slot, id) else {
                    return;
                };
                let body = word(kind);
                self.http_respond(
                    slot,
                    http::response("200 OK", "text/plain; charset=utf-8", body, keep, ""),
                );
                self.http_resume(slot);
            }
        }
    }

    /// Whether HTTP connection `slot` stays open after its response; `None` when the slot no
    /// longer holds HTTP connection `id` (it closed, and the slot may be reused).
    fn http_keep_alive(&self, slot: usize, id: u64) -> Option<bool> {
        let conn = self.conns.get(slot).filter(|c| c.id == id)?;
        match &conn.proto {
            Proto::Http(h) => Some(!h.close_after),
            _ => None,
        }
    }

    // ---------------------------------------------------------------- output

    fn queue(&mut self, slot: usize, b: Bytes) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.out.push(b);
        if conn.flags & DIRTY == 0 {
            conn.flags |= DIRTY;
            self.dirty.push(slot);
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & DIRTY == 0 {
                conn.flags |= DIRTY;
                self.dirty.push(slot);
            }
        }
    }

    fn close_after_flush(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.flags |= CLOSING;
        }
        self.mark_dirty(slot);
    }

    fn flush_all(&mut self) {
        self.sio_flush();
        let mut i = 0;
        while i < self.dirty.len() {
            let slot = self.dirty[i];
            i += 1;
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.flags &= !DIRTY;
            let res = conn.out.flush(&mut conn.stream, &mut conn.bytes_out);
            if conn.flags & READ_PAUSED != 0 && !read_blocked(conn, &self.cfg) {
                conn.flags &= !READ_PAUSED;
                if conn.flags & RESUME == 0 {
                    conn.flags |= RESUME;
                    self.resume.push(slot);
                }
            }
            match res {
                Ok(true) => {
                    conn.slow_since = 0;
                    if conn.flags & CLOSING != 0 {
                        self.close(slot);
                    } else if conn.flags & WANT_WRITE != 0 {
                        conn.flags &= !WANT_WRITE;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(CONN_BASE + slot),
                            Interest::READABLE,
                        );
                    }
                }
                Ok(false) => {
                    // The socket is full: ask for WRITABLE until the queue drains. Only slow
                    // connections pay for it; the common case writes at once and never gets
                    // a writable event per write.
                    if conn.flags & WANT_WRITE == 0 {
                        conn.flags |= WANT_WRITE;
                        if let Err(e) = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(CONN_BASE + slot),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log::debug!("reregister connection {}: {e}", conn.id);
                            self.close(slot);
                        }
                    }
                }
                Err(e) => {
                    log::debug!("write to connection {}: {e}", conn.id);
                    self.close(slot);
                }
            }
        }
        self.dirty.clear();
        for (_, link) in self.links.iter_mut() {
            if link.dirty {
                link.dirty = false;
                if let Err(e) = link.chan.flush() {
                    log::warn!("link to worker {}: {e}", link.peer_worker);
                }
            }
        }
        let _ = self.control.flush();
    }

    /// Removes a connection now.
    fn close(&mut self, slot: usize) {
        if !self.conns.contains(slot) {
            return;
        }
        let mut conn = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.forget_ip(conn.remote.ip());
        if conn.port == Port::Sio {
            self.sio_conn_closed(slot, &conn);
        }
        if let Proto::Ws(ws) = &conn.proto {
            if let Some(uid) = &ws.uid {
                self.registry.remove(uid, slot as u32);
                if self.registry.get(uid).is_empty() {
                    self.groups.departed(uid, self.now);
                }
            }
        }
        log::debug!(
            "{} connection {} from {} closed",
            conn.port.name(),
            conn.id,
            conn.remote
        );
    }

    /// Stop or drain end: WebSockets get a close frame with `code`, best effort, then all go.
    fn close_all(&mut self, code: u16, reason: &str) {
        let f = close_frame(code, reason);
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            if let Some(conn) = self.conns.get_mut(slot) {
                if let Proto::Ws(ws) = &mut conn.proto {
                    if !ws.close_sent {
                        ws.close_sent = true;
                        conn.out.push(f.clone());
                    }
                }
                let _ = conn.out.flush(&mut conn.stream, &mut conn.bytes_out);
            }
            self.close(slot);
        }
    }

    // ---------------------------------------------------------------- control

    fn on_control(&mut self) {
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

    fn control_msg(&mut self, m: Control) {
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

    fn begin_drain(&mut self) {
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

    fn status_row(&self) -> serde_json::Value {
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

    fn connection_rows(&self) -> Vec<serde_json::Value> {
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

    // ---------------------------------------------------------------- mesh

    /// Siblings the master announced that have no outbound link yet (starting, reconnecting):
    /// a push or query cannot reach them, and says so.
    fn unlinked_peers(&self) -> usize {
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

    fn connect_peers(&mut self) {
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

    fn connect_peer(&mut self, p: &Peer) -> io::Result<()> {
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

    fn accept_mesh(&mut self) {
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

    fn on_link(&mut self, key: usize) {
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

    fn link_msg(&mut self, key: usize, m: PeerMsg) {
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
    fn answered(&mut self, id: u64, count: u32, answered: bool) {
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

    fn drop_link(&mut self, key: usize, why: &str) {
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

/// Best-effort refusal written straight to a just-accepted socket, which is then dropped.
fn refuse(stream: &mut mio::net::TcpStream, port: Port, status: &str, why: &str) {
    let bytes = match port {
        Port::Text => text::error_reply(why),
        Port::Ws | Port::Http | Port::Sio => websocket::http_error(status, &format!("{why}\n"), ""),
    };
    let _ = stream.write(&bytes);
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4)
        .unwrap_or(0)
}
