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
use crate::mesh::{InFlight, Link, Pending, ReplyKind, ReplyTo};
use crate::registry::Registry;
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

mod accept;
mod control;
mod http;
mod mesh;
mod output;
mod push;
mod query;
mod read;
mod session;
mod socketio;
mod text;
mod timers;
mod websocket;

use query::{PendingQuery, QReply};
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
}

/// Best-effort refusal written straight to a just-accepted socket, which is then dropped.
fn refuse(stream: &mut mio::net::TcpStream, port: Port, status: &str, why: &str) {
    let bytes = match port {
        Port::Text => crate::proto::text::error_reply(why),
        Port::Ws | Port::Http | Port::Sio => {
            crate::proto::websocket::http_error(status, &format!("{why}\n"), "")
        }
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
