//! The worker's event loop: one mio `Poll` for the listeners, every connection, the sibling
//! links and the master's control channel.
//!
//! A loop turn: wait for readiness (or the next deadline), handle every event — reading each
//! socket until `WouldBlock` and handling everything a read brought — then settle what waited
//! too long for siblings, and last flush every connection that got output during the turn,
//! once, with `writev`. So a broadcast costs one shared frame plus one queue entry per
//! recipient, and all the frames and replies one connection got in a turn share a system call.
//!
//! The loop's work is split by phase, one module each, all of them `impl Worker` blocks over
//! the one struct below:
//!
//! - `accept`: listeners, limits on connections, the descriptor reserve;
//! - `read`: reading a socket and handing its bytes to its protocol: `websocket`, `text`,
//!   `http` (and `api` under `/api/`), `socketio` (with `handoff` of a session's
//!   connection to the worker owning it, and `sio_push`: pushes, kicks and the online count
//!   as events);
//! - `session`: login and logout, the same for every protocol;
//! - `push`: the only place that reads the registry and the groups to deliver, and that
//!   sends pushes to the siblings;
//! - `mesh`: the links to the siblings and the one scatter-gather over them (pushes waiting
//!   for `Delivered`, queries waiting for shares); `query`: this worker's share of a query
//!   and what is done with the merged answer;
//! - `output`: queued output, flushing, closing;
//! - `control`: the master's channel, drain, status rows;
//! - `timers`: the sweep (handshake, login, idle and slow deadlines, pings) and memory;
//! - `upstream`: events from clients (login, message, logout, online, offline) for the
//!   webhook and the text port's subscribers.

use crate::auth::Auth;
use crate::config::{Config, Listeners};
use crate::conn::{Conn, Port, PortMap, RESUME};
use crate::gather::Gather;
use crate::groups::Groups;
use crate::mesh::Link;
use crate::presence::{self, View};
use crate::registry::{Recipient, Registry};
use herald_ipc::{mesh_name, Channel, Control, Peer, Stats};
use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::linux::net::SocketAddrExt;
use std::time::{Duration, Instant, SystemTime};

mod accept;
mod api;
mod backends;
mod cluster;
mod control;
mod handoff;
mod history_all;
mod history_cluster;
mod history_cluster_fan;
mod history_handover;
mod http;
mod mesh;
mod output;
mod presence_cluster;
mod presence_gap;
mod push;
mod query;
mod read;
mod recovery;
mod resume;
mod session;
mod sio_life;
mod sio_push;
mod sio_recovery;
mod socketio;
mod text;
mod timers;
mod tls;
mod upstream;
mod websocket;
mod wire;

use control::Retire;
use mesh::Job;
use socketio::Sio;

/// The master's control channel (listeners use tokens `0..4`, one per [`Port`]).
const TOK_CONTROL: Token = Token(8);
/// The mesh listener: siblings connecting to this worker.
const TOK_MESH: Token = Token(9);
/// The Socket.IO handoff socket: connections passed by siblings.
const TOK_HANDOFF: Token = Token(10);
/// The loop's one waker (shared by the cluster bus, the webhook and the answer writer): news
/// from a thread wait.
const TOK_BUS: Token = Token(11);
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
/// Client connections (WebSocket, Socket.IO) read in one loop turn at most; the others wait
/// for the next turn (`resume`), after a poll that sees the backends' new lines. A reconnect
/// storm makes every event a handshake (~20-40 us each): without a bound, one turn of 1,024
/// of them would hold a backend's push for tens of milliseconds.
const CLIENT_READS_PER_TURN: usize = 128;
/// Replies a text connection may have in flight before it is read no further.
const MAX_PENDING_REPLIES: usize = 16 * 1024;

/// One worker: everything its loop owns.
pub struct Worker {
    /// Stable worker id (0..count).
    id: u32,
    /// The master's pid: names the mesh sockets.
    instance: u32,
    /// Own pid, cached.
    pid: u32,
    /// The configuration the master sent at start (a reload starts new workers).
    cfg: Config,
    /// Addresses, for `status`.
    addrs: Listeners,
    /// Readiness of every socket the worker owns.
    poll: Poll,
    /// Listeners by port; `None` when disabled or closed by a drain.
    listeners: PortMap<Option<TcpListener>>,
    /// Accepting is paused after EMFILE until then.
    accept_paused_until: Option<Instant>,
    /// Listeners (bit `Port::index`) whose queue was not emptied last turn (the accept budget
    /// ran out): taken again this turn, since edge-triggered readiness will not say so again.
    accept_again: u8,
    /// The master has said which workers are alive (its first `Peers`), and this worker has
    /// linked to them. Until then connections wait in the kernel's accept queue: a push taken
    /// by a fresh worker that does not know its siblings yet would reach nobody and answer
    /// `fail` for a uid that is online elsewhere.
    mesh_known: bool,
    /// Accept anyway after this, should the master's word not come.
    mesh_wait_until: Instant,
    /// Every client and backend connection, by slot (a slot is the connection's token).
    conns: Slab<Conn>,
    /// uid → this worker's recipients.
    registry: Registry,
    /// The per-worker read buffer.
    scratch: Vec<u8>,
    /// Connections with output queued this turn.
    dirty: Vec<usize>,
    /// Pushes read and answered in this turn, not yet counted in `push_latency`.
    answered_in_turn: u64,
    /// The next connection id (ids are never reused, slots are).
    next_conn_id: u64,
    /// The master's channel: configuration and orders in, readiness and reports out.
    control: Channel<Control, Control>,
    /// Where siblings connect to this worker.
    mesh_listener: UnixListener,
    /// Links to and from siblings, by key (a key is the link's token).
    links: Slab<Link>,
    /// Peers the master announced (other than this process).
    peers: Vec<Peer>,
    /// When to retry connecting to announced peers we have no link to.
    reconnect_at: Option<Instant>,
    /// Pushes and queries waiting for siblings' answers.
    gather: Gather<Job>,
    /// Which uid buckets this worker holds, and what changed since siblings were told.
    presence: presence::Local,
    /// Each sibling's picture (by pid): a push for a uid goes to the siblings that may hold it.
    views: HashMap<u32, View>,
    /// The way to the other hosts of a cluster (`None`: a single host).
    bus: Option<crate::cluster::Bus>,
    /// The cluster's hot path on the loop's own links to Redis (`None`: on the bus's threads).
    wire: Option<wire::Wire>,
    /// The thread that writes big answers (`uids` over many uids), started at the first.
    renderer: Option<crate::render::Renderer>,
    /// The loop's one waker, for the threads that hand it work (set once the loop is built).
    waker: Option<std::sync::Arc<mio::Waker>>,
    /// Redis answers (for `status`, `/metrics` and the log).
    cluster_up: bool,
    /// The loss of Redis was logged (once per episode).
    cluster_down_logged: bool,
    /// The live nodes of the cluster, as Redis last listed them (for `status`).
    cluster_nodes: Vec<String>,
    /// Bus events are left over from the last turn: handle them before waiting.
    bus_again: bool,
    /// Counters for `status`, `/metrics` and the API (gauges are filled in per row).
    stats: Stats,
    /// How long backends waited for the answers to their pushes.
    push_latency: crate::histogram::Histogram,
    /// How long clients' frames waited in their output queues before the kernel took them
    /// (from the turn that queued them to the write that finished them).
    delivery_latency: crate::histogram::Histogram,
    /// When this turn's events were taken: frames queued in the turn are counted from it.
    turn_start: Instant,
    /// Client connections whose output did not all go in one write, with the turn their
    /// oldest waiting frame was queued in (few: only slow readers are here).
    blocked_since: foldhash::HashMap<usize, Instant>,
    /// Pushes per second over the last stats tick.
    qps: f64,
    /// When `qps` was last computed (once a second, with Socket.IO's online count).
    last_tick: Instant,
    /// `stats.pushes` at the last tick.
    last_tick_pushes: u64,
    /// When the worker started, for `status`.
    started: SystemTime,
    /// Set by `Drain`: when to close remaining connections.
    drain_deadline: Option<Instant>,
    /// Set by `Stop` or a closed control channel: exit once the backends' answers are out.
    stopping: bool,
    /// Drain or stop: the backends' retirement and the closing of the clients.
    retire: Option<Retire>,
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
    /// A group exists somewhere (this worker applied a join, or learned one from its
    /// siblings): until then a login does not ask the siblings for its uid's groups, which
    /// keeps a login storm free of that question when groups are not used.
    groups_in_use: bool,
    /// The one-time group sync with the siblings was asked for.
    groups_synced: bool,
    /// Accepting hit EMFILE/ENFILE and has not succeeded since (logged once per episode).
    emfile: bool,
    /// The open-file limit (soft `RLIMIT_NOFILE`) when the worker started.
    fd_limit: usize,
    /// A descriptor held in reserve (`/dev/null`): at EMFILE it is closed for a moment, so a
    /// waiting connection can be accepted and refused instead of hanging in the accept queue.
    spare_fd: Option<std::fs::File>,
    /// Client ports are refusing connections to keep `fd_reserve` (logged once per episode).
    fd_reserve_hit: bool,
    /// Connections to read again next turn (budget spent, or backpressure lifted).
    resume: Vec<usize>,
    /// Recipients of the push being delivered (kept to avoid an allocation per push).
    slots_buf: Vec<Recipient>,
    /// Socket.IO sessions and the handoff socket.
    sio: Sio,
    /// Connections at the last heap trim (or the peak since): a drop of 1,000 below it trims.
    trim_mark: usize,
    /// The rustls configuration of each port that speaks TLS.
    tls: crate::tls::Acceptors,
    /// TLS connections relayed to the sibling owning their Socket.IO session.
    relays: Slab<tls::Relay>,
    /// Events from clients: subscribers, the webhook, server-wide presence.
    up: upstream::Upstream,
    /// The history of the uids this worker owns and the recoveries in flight (`None`:
    /// `history_size` is 0, and nothing of it runs).
    hist: Option<Box<recovery::Recovery>>,
}

/// Seconds to worker clock ticks (tenths of a second).
fn ticks(secs: f64) -> u32 {
    (secs * 10.0).ceil().clamp(0.0, u32::MAX as f64) as u32
}

/// Drops the room of an empty work list grown past a few pages by a peak; whether it did.
fn shrink_idle<T>(v: &mut Vec<T>) -> bool {
    if v.is_empty() && v.capacity() * std::mem::size_of::<T>() > 16 * 1024 {
        *v = Vec::new();
        return true;
    }
    false
}

/// The operation would block: wait for the next readiness.
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Configured seconds as a duration (negative counts as zero).
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
        listeners: PortMap<Option<TcpListener>>,
        control: Channel<Control, Control>,
    ) -> io::Result<Worker> {
        let pid = std::process::id();
        let name = mesh_name(instance, pid);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std_mesh = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std_mesh.set_nonblocking(true)?;
        let mesh_listener = UnixListener::from_std(std_mesh);
        let mode = cfg.auth_mode(&addrs).map_err(io::Error::other)?;
        let auth = Auth::new(mode, &cfg.auth_secret);
        let mut w = Worker {
            id,
            instance,
            pid,
            cfg,
            addrs,
            poll: Poll::new()?,
            listeners,
            accept_paused_until: None,
            accept_again: 0,
            mesh_known: false,
            mesh_wait_until: Instant::now() + MESH_WAIT,
            conns: Slab::new(),
            registry: Registry::default(),
            scratch: vec![0; SCRATCH],
            dirty: Vec::new(),
            answered_in_turn: 0,
            next_conn_id: 1,
            control,
            mesh_listener,
            links: Slab::new(),
            peers: Vec::new(),
            reconnect_at: None,
            gather: Gather::default(),
            presence: presence::Local::default(),
            views: HashMap::new(),
            bus: None,
            wire: None,
            cluster_up: false,
            cluster_down_logged: false,
            cluster_nodes: Vec::new(),
            bus_again: false,
            stats: Stats::default(),
            waker: None,
            renderer: None,
            push_latency: Default::default(),
            delivery_latency: Default::default(),
            turn_start: Instant::now(),
            blocked_since: Default::default(),
            qps: 0.0,
            last_tick: Instant::now(),
            last_tick_pushes: 0,
            started: SystemTime::now(),
            drain_deadline: None,
            stopping: false,
            retire: None,
            auth,
            epoch: Instant::now(),
            now: 0,
            next_sweep: Instant::now(),
            last_ping: 0,
            ping_sweeps: 0,
            per_ip: HashMap::new(),
            groups: Groups::default(),
            groups_in_use: false,
            groups_synced: false,
            emfile: false,
            fd_limit: accept::open_file_limit(),
            spare_fd: std::fs::File::open("/dev/null").ok(),
            fd_reserve_hit: false,
            resume: Vec::new(),
            slots_buf: Vec::new(),
            sio: Sio::new(instance, pid)?,
            trim_mark: 0,
            tls: crate::tls::Acceptors::default(),
            relays: Slab::new(),
            up: upstream::Upstream::default(),
            hist: None,
        };
        w.tls = crate::tls::Acceptors::new(&w.cfg).map_err(io::Error::other)?;
        // mio allows one waker per poll: the cluster bus, the webhook and the answer writer
        // share it.
        let shared = std::sync::Arc::new(mio::Waker::new(w.poll.registry(), TOK_BUS)?);
        w.waker = Some(shared.clone());
        let waker = (!w.cfg.cluster.is_empty() || !w.cfg.webhook_url.is_empty()).then_some(shared);
        w.up = upstream::Upstream::new(&w.cfg, pid, waker.clone())?;
        if w.cfg.history_size > 0 {
            w.hist = Some(Box::new(recovery::Recovery::new(&w.cfg)));
        }
        let reg = w.poll.registry();
        for (port, l) in w.listeners.iter_mut() {
            if let Some(l) = l {
                reg.register(l, Token(port.index()), Interest::READABLE)?;
            }
        }
        reg.register(&mut w.sio.handoff, TOK_HANDOFF, Interest::READABLE)?;
        reg.register(
            &mut w.control,
            TOK_CONTROL,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        reg.register(&mut w.mesh_listener, TOK_MESH, Interest::READABLE)?;
        if !w.cfg.cluster.is_empty() {
            let node = cluster::node_name(&w.cfg.node_id, instance);
            let plan = wire::Plan::of(&w.cfg.cluster, &w.cfg.cluster_ca);
            let bus = cluster::start_bus(
                &w.cfg.cluster,
                &w.cfg.cluster_ca,
                &w.cfg.cluster_prefix,
                &node,
                pid,
                instance,
                waker.clone(),
                plan.is_some(),
            )?;
            log::info!("cluster: node {node}, member {}", bus.member);
            w.up.conn_node = format!("{node}/");
            w.wire = plan.map(|plan| {
                wire::Wire::new(
                    plan,
                    &w.cfg.cluster_prefix,
                    &node,
                    &bus.member,
                    bus.joined.clone(),
                    bus.listening.clone(),
                )
            });
            w.bus = Some(bus);
        }
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
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.turn_start = Instant::now();
            self.now = (self
                .turn_start
                .saturating_duration_since(self.epoch)
                .as_millis()
                / 100) as u32;
            // Sibling links first: what a sibling said before this turn (a login's presence,
            // answers) is known before any connection's request of this turn is handled.
            // Then the backends (text port, HTTP API): a push that came in this turn goes
            // out before the clients' requests of this turn are read.
            for ev in events.iter() {
                let Token(t) = ev.token();
                if t >= LINK_BASE {
                    self.on_link(t - LINK_BASE);
                }
            }
            for ev in events.iter() {
                if let Some(slot) = self.backend_event(ev) {
                    let plain = !ev.is_read_closed() && !ev.is_error();
                    self.on_readable(slot, plain);
                }
            }
            let mut reads = CLIENT_READS_PER_TURN;
            if std::mem::take(&mut self.bus_again) {
                self.on_bus();
            }
            if std::mem::take(&mut self.up.news_again) {
                self.on_webhook();
            }
            let again = std::mem::take(&mut self.accept_again);
            for port in Port::ALL {
                if again & (1 << port.index()) != 0 {
                    self.accept(port);
                }
            }
            let resumed = std::mem::take(&mut self.resume);
            for (i, &slot) in resumed.iter().enumerate() {
                if reads == 0 {
                    // Still flagged: read in a later turn.
                    self.resume.extend_from_slice(&resumed[i..]);
                    break;
                }
                let Some(c) = self.conns.get_mut(slot) else {
                    continue;
                };
                c.flags &= !RESUME;
                if !c.is_backend() {
                    reads -= 1;
                }
                self.on_readable(slot, false);
            }
            for ev in events.iter() {
                match ev.token() {
                    Token(t) if t < Port::ALL.len() => self.accept(Port::ALL[t]),
                    TOK_CONTROL => self.on_control(),
                    TOK_MESH => self.accept_mesh(),
                    TOK_HANDOFF => self.sio_adopt(),
                    wire::TOK_WIRE_CMD | wire::TOK_WIRE_SUB => self.on_wire(ev.token()),
                    TOK_BUS => {
                        self.on_bus();
                        self.on_webhook();
                        self.on_rendered();
                    }
                    Token(t) if t >= LINK_BASE => {}
                    Token(t) if t >= tls::RELAY_BASE => self.on_relay((t - tls::RELAY_BASE) / 2),
                    Token(t) if t >= CONN_BASE => {
                        let slot = t - CONN_BASE;
                        if ev.is_writable() {
                            self.mark_dirty(slot);
                        }
                        if self.backend_event(ev).is_some() {
                            // Read first, above.
                        } else if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if reads == 0 {
                                self.read_later(slot);
                                continue;
                            }
                            reads -= 1;
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
            self.expire_gathers(now);
            self.recovery_tick(now);
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
                self.up_tick();
                self.last_tick = now;
            }
            self.wind_down(now);
            self.send_presence();
            // Redis first: a cross-node push starts its way while local clients are written.
            self.wire_turn(now);
            self.flush_all();
            if self.retire.is_some()
                && self.conns.is_empty()
                && self.relays.is_empty()
                && !self.handover_waits(now)
            {
                log::info!(
                    "{}: no connection left",
                    if self.stopping { "stopped" } else { "drained" }
                );
                break;
            }
        }
        // Hand the master whatever it was last told (ListenersClosed, a status row).
        let _ = self.control.flush();
        // The last events (a drain's logouts) to the webhook, well within the master's
        // `stop_timeout`.
        let limit = ms(self
            .cfg
            .webhook_timeout
            .min(self.cfg.stop_timeout / 2.0)
            .min(2.0));
        self.up.finish(limit);
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.resume.is_empty() || self.bus_again || self.up.news_again || self.accept_again != 0
        {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut t = self.last_tick + Duration::from_secs(1);
        for d in [
            self.gather.next_deadline(),
            self.accept_paused_until,
            (!self.mesh_known).then_some(self.mesh_wait_until),
            self.reconnect_at,
            self.wind_down_deadline(),
            self.wire_due(),
            Some(self.next_sweep),
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(d);
        }
        Some(t.saturating_duration_since(now))
    }
}

/// Nanoseconds of the host's monotonic clock: the same clock in every process, so a push's
/// deadline means the same to every worker.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`;
    // CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
