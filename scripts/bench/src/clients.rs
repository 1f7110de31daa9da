//! The WebSocket clients: a hidden `_clients` subcommand that runs in its own process (one process
//! may hold at most 20,000 files) and the `ClientPool` that spawns several of them and talks to
//! them over pipes.
//!
//! A client process owns a contiguous range of global client numbers `g`; client `g` logs in as
//! uid `u{g}` from source address `127.0.0.{1 + g % addrs}` (bound before connecting, with
//! `IP_BIND_ADDRESS_NO_PORT` so that the port is chosen per destination). It runs one
//! non-blocking mio loop, keeps at most `inflight` handshakes in progress, reads into one scratch
//! buffer, and records, with `CLOCK_MONOTONIC`, when each push or broadcast arrived.
//!
//! Pipe protocol: the parent writes one command per line on the child's stdin, the child answers
//! each with one JSON line on stdout: `hello` at start (unprompted), then
//! `connect` → `{"connected","failed","t_done","errors"}` once every client is logged in or has
//! failed; `stat` → counts so far; `reset` → forget what was recorded; `report` → everything
//! recorded; `quit` (or end of input) → exit. The `churn` mode adds
//! `churn RATE PUSH_RATE SECONDS TEXT UID_FIRST UID_STRIDE SEED` (answered when the churn is over,
//! see `churn.rs`) and `leave` → close every connection, `{"left"}`.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

use crate::tls::Sock;
use crate::util::{self, mono_ns, Rng, Victim};
use crate::ws;

mod churn;

/// Token of the command pipe (stdin) in a client process.
const STDIN: Token = Token(usize::MAX - 1);
/// Token of the text-port connection that a churning client process pushes through.
const TEXT: Token = Token(usize::MAX - 2);
/// `Conn::ready_pos` of a connection that is not in the ready list.
const NOT_READY: usize = usize::MAX;

/// Settings of one client process, from its command line.
#[derive(Clone, Debug)]
pub struct ChildConfig {
    /// The server's WebSocket (or, in raw mode, plain TCP) address.
    pub ws: SocketAddrV4,
    /// Global number of this process's first client.
    pub first: usize,
    /// How many clients this process holds.
    pub count: usize,
    /// How many source addresses 127.0.0.1.. the clients are spread over.
    pub addrs: usize,
    /// At most this many connections between `connect()` and logged in.
    pub inflight: usize,
    /// Monotonic time after which clients still logging in are counted as failed.
    pub connect_deadline_ns: u64,
    /// Raw mode (the `limit` server): no handshake and no uid sent; the server's first frame
    /// (`login success`) means ready.
    pub raw: bool,
    /// `--tls`: the CA file the clients trust for `wss://` (empty: plain `ws://`).
    pub ca: String,
}

impl ChildConfig {
    /// The command-line arguments that `parse` reads back.
    fn to_args(&self) -> Vec<String> {
        vec![
            "--ws".into(),
            self.ws.to_string(),
            "--first".into(),
            self.first.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--addrs".into(),
            self.addrs.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            "--connect-deadline-ns".into(),
            self.connect_deadline_ns.to_string(),
            "--raw".into(),
            (self.raw as u8).to_string(),
            "--ca".into(),
            if self.ca.is_empty() {
                "-".into()
            } else {
                self.ca.clone()
            },
        ]
    }

    /// Reads the arguments written by `to_args`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let get = |k: &str| -> Result<&str, String> {
            args.iter()
                .position(|a| a == k)
                .and_then(|i| args.get(i + 1))
                .map(|s| s.as_str())
                .ok_or_else(|| format!("_clients: missing {k}"))
        };
        let num = |k: &str| -> Result<u64, String> {
            get(k)?
                .parse::<u64>()
                .map_err(|e| format!("_clients: {k}: {e}"))
        };
        Ok(ChildConfig {
            ws: get("--ws")?
                .parse()
                .map_err(|e| format!("_clients: --ws: {e}"))?,
            first: num("--first")? as usize,
            count: num("--count")? as usize,
            addrs: (num("--addrs")? as usize).clamp(1, 254),
            inflight: (num("--inflight")? as usize).max(1),
            connect_deadline_ns: num("--connect-deadline-ns")?,
            raw: num("--raw")? != 0,
            ca: match get("--ca")? {
                "-" => String::new(),
                p => p.to_string(),
            },
        })
    }
}

/// Where a client connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// `connect()` issued, not yet established.
    Connecting,
    /// Upgrade request sent, waiting for `101`.
    Handshake,
    /// Uid sent, waiting for `login success`.
    Login,
    /// Logged in; pushes and broadcasts are recorded.
    Ready,
}

/// One client connection.
struct Conn {
    /// The socket (plain, or TLS with `--tls`).
    sock: Sock,
    /// Global client number: the uid is `u{uid}`.
    uid: u64,
    /// Life stage.
    state: St,
    /// Bytes of an incomplete handshake answer or frame; empty almost always.
    inbuf: Vec<u8>,
    /// Bytes not yet written (request, login frame, pongs); empty almost always.
    out: Vec<u8>,
    /// Index in `ClientProc::ready` while logged in, else `NOT_READY`.
    ready_pos: usize,
    /// With `history`: the last position the server told (epoch, offset).
    pos: Option<(String, u64)>,
}

/// What a client process measured.
#[derive(Default)]
struct Recorder {
    /// Send time (`t` of the payload) of each unicast push received.
    uni_t: Vec<u64>,
    /// Receive time of each unicast push, same index as `uni_t`.
    uni_r: Vec<u64>,
    /// Unicast pushes that arrived at a connection of another uid.
    misrouted: u64,
    /// Per broadcast number: (deliveries, first receive time, last receive time).
    bc: Vec<(u64, u64, u64)>,
    /// Total broadcast deliveries.
    bc_total: u64,
    /// Text frames that were neither pushes nor broadcasts of this bench.
    other: u64,
    /// Pings answered.
    pings: u64,
    /// With `history`: recoveries answered `recovered: true`.
    recovered: u64,
    /// Recoveries answered `recovered: false`.
    not_recovered: u64,
    /// When the last recovery answer came.
    recovery_last: u64,
    /// Messages with a position received.
    positioned_msgs: u64,
}

impl Recorder {
    /// Records one text message received at `now` by client `uid`.
    fn text(&mut self, uid: u64, p: &[u8], now: u64) {
        match p.first() {
            Some(b'{') => {
                let Some(t) = number_after(p, b"\"t\":") else {
                    self.other += 1;
                    return;
                };
                if number_after(p, b"\"uid\":\"u") != Some(uid) {
                    self.misrouted += 1;
                }
                self.uni_t.push(t);
                self.uni_r.push(now);
            }
            Some(b'b') => {
                let Some(idx) = number_after(p, b"b") else {
                    self.other += 1;
                    return;
                };
                let idx = idx as usize;
                if idx >= 1 << 20 {
                    self.other += 1;
                    return;
                }
                if self.bc.len() <= idx {
                    self.bc.resize(idx + 1, (0, u64::MAX, 0));
                }
                let e = &mut self.bc[idx];
                e.0 += 1;
                e.1 = e.1.min(now);
                e.2 = e.2.max(now);
                self.bc_total += 1;
            }
            _ => self.other += 1,
        }
    }
}

/// The decimal number right after the first occurrence of `key` in `p`.
pub fn number_after(p: &[u8], key: &[u8]) -> Option<u64> {
    let at = p.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = p[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    std::str::from_utf8(&p[at..at + digits]).ok()?.parse().ok()
}

/// What `feed` did to a connection's state.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Nothing worth counting.
    Nothing,
    /// The login reply arrived.
    LoggedIn,
    /// The connection must be dropped, with the reason.
    Drop(String),
}

/// Processes bytes that arrived on `c` at `now`.
fn feed(c: &mut Conn, data: &[u8], now: u64, rec: &mut Recorder, mask: [u8; 4]) -> Change {
    let mut owned = std::mem::take(&mut c.inbuf);
    let buffered = !owned.is_empty() || c.state == St::Handshake;
    if buffered {
        owned.extend_from_slice(data);
    }
    let mut change = Change::Nothing;
    let mut pos = 0;
    {
        let buf: &[u8] = if buffered { &owned } else { data };
        if c.state == St::Handshake {
            match ws::parse_handshake(buf) {
                ws::HandshakeReply::Incomplete => {}
                ws::HandshakeReply::Refused(line) => {
                    return Change::Drop(format!("handshake refused: {line}"))
                }
                ws::HandshakeReply::Switched(n) => {
                    pos = n;
                    c.state = St::Login;
                    let uid = format!("u{}", c.uid);
                    ws::encode_masked(ws::OP_TEXT, uid.as_bytes(), mask, &mut c.out);
                }
            }
        }
        while c.state != St::Handshake {
            let (frame, used) = match ws::parse_frame(&buf[pos..]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => return Change::Drop(e),
            };
            pos += used;
            match frame.opcode {
                // A position may come before the login reply (the worker owning the uid's
                // history answers at once).
                ws::OP_TEXT if frame.payload.starts_with(b"{\"type\":\"") => {
                    positioned(c, frame.payload, now, rec)
                }
                ws::OP_TEXT if c.state == St::Ready => rec.text(c.uid, frame.payload, now),
                ws::OP_TEXT if frame.payload.starts_with(b"login success") => {
                    c.state = St::Ready;
                    change = Change::LoggedIn;
                }
                ws::OP_TEXT => rec.other += 1,
                ws::OP_PING => {
                    rec.pings += 1;
                    ws::encode_masked(ws::OP_PONG, frame.payload, mask, &mut c.out);
                }
                ws::OP_CLOSE => return Change::Drop("server sent close".into()),
                _ => {}
            }
        }
    }
    if buffered {
        owned.drain(..pos);
        c.inbuf = owned;
    } else if pos < data.len() {
        owned.clear();
        owned.extend_from_slice(&data[pos..]);
        c.inbuf = owned;
    }
    change
}

/// A frame of a client that asked for positions (`?envelope=1`, `?since=`): the position it
/// carries is kept, a recovery answer counted.
fn positioned(c: &mut Conn, p: &[u8], now: u64, rec: &mut Recorder) {
    let epoch = p
        .windows(9)
        .position(|w| w == b"\"epoch\":\"")
        .and_then(|at| {
            let rest = &p[at + 9..];
            let end = rest.iter().position(|&b| b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok()
        });
    if let (Some(e), Some(o)) = (epoch, number_after(p, b"\"offset\":")) {
        c.pos = Some((e.to_string(), o));
    }
    if p.starts_with(b"{\"type\":\"recovery\"") {
        if p.windows(16).any(|w| w == b"\"recovered\":true") {
            rec.recovered += 1;
        } else {
            rec.not_recovered += 1;
        }
        rec.recovery_last = rec.recovery_last.max(now);
    } else if p.starts_with(b"{\"type\":\"msg\"") {
        rec.positioned_msgs += 1;
    }
}

/// Writes what is queued on `c`; `Err` if the connection broke.
fn flush(c: &mut Conn) -> io::Result<()> {
    let mut done = 0;
    while done < c.out.len() {
        match c.sock.write(&c.out[done..]) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out.drain(..done);
    Ok(())
}

/// A non-blocking TCP socket bound to `src` (port chosen at connect time), connecting to `dst`.
fn open_socket(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; the std stream closes it on drop from here on.
    let std_sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with pointers to live values of the sizes given.
    unsafe {
        let sz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = &one as *const libc::c_int as *const libc::c_void;
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, p, sz);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, p, sz);
        // Close with RST: no TIME_WAIT left behind to exhaust ports over repeated runs.
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sin(SocketAddrV4::new(src, 0));
    let remote = sin(dst);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `remote` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(std_sock))
}

/// The state of one client process.
struct ClientProc {
    /// Settings.
    cfg: ChildConfig,
    /// The event loop.
    poll: Poll,
    /// Connection `i` is client `cfg.first + i`; `None` before opening and after dropping.
    conns: Vec<Option<Conn>>,
    /// Next local index to open.
    next_open: usize,
    /// Connections opened and not yet logged in.
    inflight: usize,
    /// Clients logged in.
    connected: usize,
    /// Clients that failed before logging in.
    failed: usize,
    /// Logged-in clients that were closed later.
    closed: usize,
    /// `connect` has been received.
    started: bool,
    /// The answer to `connect` has been written.
    ready_sent: bool,
    /// When the last client logged in or failed.
    t_done: u64,
    /// The first few error messages.
    errors: Vec<String>,
    /// What was measured.
    rec: Recorder,
    /// One read buffer for every connection.
    scratch: Vec<u8>,
    /// Command bytes not yet ending in a newline.
    cmd_buf: Vec<u8>,
    /// Masks for client frames.
    rng: Rng,
    /// Local indexes of the logged-in connections, in no order (for random choices).
    ready: Vec<usize>,
    /// The churn in progress (`churn` command), if any.
    churn: Option<churn::Churn>,
    /// Slots to open again (`reopen` after `drop`), opened as the in-flight limit allows.
    reopen: Vec<usize>,
    /// `--tls`: the clients' TLS configuration.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The `history` command: clients ask for positions (`?envelope=1`) and come back with
    /// `?since=` their last one.
    history: bool,
    /// With `history`: each slot's last position, kept while it is closed.
    positions: Vec<Option<(String, u64)>>,
}

/// Runs a client process (the hidden `_clients` subcommand) until `quit` or end of input.
pub fn child_main(args: &[String]) -> Result<(), String> {
    let cfg = ChildConfig::parse(args)?;
    let limit = util::raise_nofile();
    if cfg.count as u64 + 16 > limit {
        return Err(format!(
            "_clients: {} clients need more than the open-file limit {limit}",
            cfg.count
        ));
    }
    let poll = Poll::new().map_err(|e| format!("_clients: poll: {e}"))?;
    // SAFETY: fcntl on our own stdin; only the non-blocking flag of our read end changes.
    unsafe {
        let fl = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    poll.registry()
        .register(&mut SourceFd(&0), STDIN, Interest::READABLE)
        .map_err(|e| format!("_clients: register stdin: {e}"))?;
    let tls = if cfg.ca.is_empty() {
        None
    } else {
        Some(crate::tls::client_config(std::path::Path::new(&cfg.ca))?)
    };
    let mut p = ClientProc {
        tls,
        conns: (0..cfg.count).map(|_| None).collect(),
        rng: Rng::new(cfg.first as u64 + 1),
        cfg,
        poll,
        next_open: 0,
        inflight: 0,
        connected: 0,
        failed: 0,
        closed: 0,
        started: false,
        ready_sent: false,
        t_done: 0,
        errors: Vec::new(),
        rec: Recorder::default(),
        scratch: vec![0; 64 * 1024],
        cmd_buf: Vec::new(),
        ready: Vec::new(),
        churn: None,
        reopen: Vec::new(),
        history: false,
        positions: Vec::new(),
    };
    reply(&json!({"hello": true, "pid": std::process::id()}))?;
    p.run()
}

/// Writes one JSON line to stdout (the parent).
fn reply(v: &Value) -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("_clients: write to parent: {e}"))
}

impl ClientProc {
    /// The event loop.
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.started {
                self.open_more();
            }
            self.churn_tick()?;
            let timeout = self
                .churn
                .as_ref()
                .map_or(Duration::from_millis(50), |c| c.next_timeout(mono_ns()));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("_clients: poll: {e}")),
            }
            for ev in events.iter() {
                if ev.token() == STDIN {
                    if !self.commands()? {
                        return Ok(());
                    }
                } else if ev.token() == TEXT {
                    self.churn_text_event()?;
                } else {
                    self.on_conn(ev.token().0);
                }
            }
            self.check_ready()?;
        }
    }

    /// Opens connections while fewer than `inflight` are logging in.
    fn open_more(&mut self) {
        while self.inflight < self.cfg.inflight && self.next_open < self.cfg.count {
            let i = self.next_open;
            self.next_open += 1;
            self.open_slot(i, (self.cfg.first + i) as u64);
        }
        while self.inflight < self.cfg.inflight {
            let Some(i) = self.reopen.pop() else { break };
            if self.conns.get(i).is_some_and(Option::is_none) {
                self.open_slot(i, (self.cfg.first + i) as u64);
            }
        }
    }

    /// Closes every connection at once (a network drop, as the clients see it); returns how
    /// many were open.
    fn drop_all(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.conns.len() {
            if let Some(mut c) = self.take_conn(i) {
                let _ = self.poll.registry().deregister(&mut c.sock);
                if c.state != St::Ready {
                    self.inflight -= 1;
                }
                n += 1;
            }
        }
        n
    }

    /// Opens connection `i` (an empty slot of `conns`) for client `u{g}`, from source address
    /// `127.0.0.{1 + g % addrs}`; a failure counts as a failed client.
    fn open_slot(&mut self, i: usize, g: u64) {
        let src = Ipv4Addr::new(127, 0, 0, 1 + (g % self.cfg.addrs as u64) as u8);
        let tls = self.tls.as_ref();
        let opened = open_socket(src, self.cfg.ws).and_then(|tcp| {
            let mut sock = Sock::new(tcp, tls)?;
            self.poll.registry().register(
                &mut sock,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(sock)
        });
        match opened {
            Ok(sock) => {
                self.inflight += 1;
                self.conns[i] = Some(Conn {
                    sock,
                    uid: g,
                    state: St::Connecting,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    ready_pos: NOT_READY,
                    pos: None,
                });
            }
            Err(e) => {
                self.failed += 1;
                self.note_error(format!("connect from {src}: {e}"));
            }
        }
    }

    /// Keeps the first few error messages.
    fn note_error(&mut self, e: String) {
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }

    /// Handles readiness of connection `i`.
    fn on_conn(&mut self, i: usize) {
        let mask = (self.rng.next_u64() as u32).to_le_bytes();
        let Some(c) = self.conns.get_mut(i).and_then(|c| c.as_mut()) else {
            return;
        };
        let mut logged = false;
        let mut drop: Option<String> = None;
        if c.state == St::Connecting {
            match c.sock.tcp().take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.drop_conn(i, format!("connect: {e}")),
            }
            match c.sock.tcp().peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return self.drop_conn(i, format!("connect: {e}")),
            }
            if self.cfg.raw {
                c.state = St::Login;
            } else {
                c.state = St::Handshake;
                let path = match self.positions.get(i).and_then(Option::as_ref) {
                    Some((e, o)) if self.history => format!("/?since={e}:{o}"),
                    None if self.history => "/?envelope=1".to_string(),
                    _ => "/".to_string(),
                };
                c.out
                    .extend_from_slice(&ws::handshake_request_to(&self.cfg.ws.to_string(), &path));
            }
        }
        while drop.is_none() {
            match c.sock.read(&mut self.scratch) {
                Ok(0) => drop = Some("server closed the connection".into()),
                Ok(n) => {
                    let now = mono_ns();
                    match feed(c, &self.scratch[..n], now, &mut self.rec, mask) {
                        Change::Nothing => {}
                        Change::LoggedIn => logged = true,
                        Change::Drop(why) => drop = Some(why),
                    }
                    // A short read drained the socket: with edge-triggered readiness, bytes that
                    // arrive later raise a new event, so the extra read to see EAGAIN is saved.
                    // (Not so for TLS, whose reads give one record at a time.)
                    if n < self.scratch.len() && !c.sock.is_tls() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => drop = Some(format!("read: {e}")),
            }
        }
        if drop.is_none() && !c.out.is_empty() {
            if let Err(e) = flush(c) {
                drop = Some(format!("write: {e}"));
            }
        }
        if drop.is_none() {
            // TLS records (handshake, pongs) not yet written.
            if let Err(e) = c.sock.push() {
                drop = Some(format!("write: {e}"));
            }
        }
        if logged {
            self.inflight -= 1;
            self.connected += 1;
            self.t_done = mono_ns();
            self.ready_add(i);
        }
        if let Some(why) = drop {
            self.drop_conn(i, why);
        }
    }

    /// Closes connection `i` and counts it as failed (before login) or closed (after).
    fn drop_conn(&mut self, i: usize, why: String) {
        let Some(mut c) = self.take_conn(i) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.sock);
        if c.state == St::Ready {
            self.closed += 1;
        } else {
            self.inflight -= 1;
            self.failed += 1;
            self.t_done = mono_ns();
        }
        self.note_error(format!("client u{}: {why}", c.uid));
    }

    /// Puts logged-in connection `i` on the ready list.
    fn ready_add(&mut self, i: usize) {
        if let Some(Some(c)) = self.conns.get_mut(i) {
            if c.ready_pos == NOT_READY {
                c.ready_pos = self.ready.len();
                self.ready.push(i);
            }
        }
    }

    /// Takes connection `i` out of its slot and off the ready list, and notes when it closed
    /// for the churn's accounting. The caller deregisters and drops it.
    fn take_conn(&mut self, i: usize) -> Option<Conn> {
        let c = self.conns.get_mut(i)?.take()?;
        if self.history {
            if self.positions.len() <= i {
                self.positions.resize(i + 1, None);
            }
            self.positions[i] = c.pos.clone();
        }
        let pos = c.ready_pos;
        if pos < self.ready.len() {
            self.ready.swap_remove(pos);
            if let Some(&moved) = self.ready.get(pos) {
                if let Some(Some(m)) = self.conns.get_mut(moved) {
                    m.ready_pos = pos;
                }
            }
        }
        if let Some(ch) = self.churn.as_mut() {
            ch.note_closed(i, mono_ns());
        }
        Some(c)
    }

    /// Answers `connect` once every client is logged in or failed, or at the connect deadline.
    fn check_ready(&mut self) -> Result<(), String> {
        if !self.started || self.ready_sent {
            return Ok(());
        }
        let settled = self.connected + self.failed >= self.cfg.count;
        if !settled && mono_ns() < self.cfg.connect_deadline_ns {
            return Ok(());
        }
        if !settled {
            let pending = self.cfg.count - self.connected - self.failed;
            self.note_error(format!("{pending} clients not logged in by the deadline"));
            self.failed += pending;
            self.next_open = self.cfg.count;
            for i in 0..self.conns.len() {
                if self.conns[i].as_ref().is_some_and(|c| c.state != St::Ready) {
                    if let Some(mut c) = self.take_conn(i) {
                        let _ = self.poll.registry().deregister(&mut c.sock);
                    }
                }
            }
            self.inflight = 0;
            self.t_done = mono_ns();
        }
        self.ready_sent = true;
        reply(&json!({
            "connected": self.connected,
            "failed": self.failed,
            "closed": self.closed,
            "t_done": self.t_done,
            "errors": self.errors,
        }))
    }

    /// Reads and runs commands from stdin; `Ok(false)` means exit.
    fn commands(&mut self) -> Result<bool, String> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a live stack buffer of the length given.
            let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n == 0 {
                return Ok(false);
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock => break,
                    ErrorKind::Interrupted => continue,
                    _ => return Err(format!("_clients: read stdin: {e}")),
                }
            }
            self.cmd_buf.extend_from_slice(&buf[..n as usize]);
        }
        while let Some(nl) = self.cmd_buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.cmd_buf.drain(..=nl).collect();
            let cmd = String::from_utf8_lossy(&line).trim().to_string();
            match cmd.as_str() {
                "connect" => self.started = true,
                "history" => {
                    self.history = true;
                    reply(&json!({"ok": true}))?;
                }
                "positions" => reply(&json!({
                    "positioned": self.conns.iter().flatten().filter(|c| c.pos.is_some()).count(),
                    "recovered": self.rec.recovered,
                    "not_recovered": self.rec.not_recovered,
                    "recovery_last": self.rec.recovery_last,
                    "positioned_msgs": self.rec.positioned_msgs,
                    "live": self.ready.len(),
                }))?,
                "stat" => reply(&json!({
                    "uni": self.rec.uni_t.len(),
                    "bc": self.rec.bc_total,
                    "connected": self.connected,
                    "closed": self.closed,
                    "other": self.rec.other,
                    "live": self.ready.len(),
                    "failed": self.failed,
                }))?,
                "drop" => {
                    let dropped = self.drop_all();
                    reply(&json!({"dropped": dropped}))?;
                }
                "reopen" => {
                    self.reopen = (0..self.conns.len())
                        .rev()
                        .filter(|&i| self.conns[i].is_none())
                        .collect();
                    self.started = true;
                    reply(&json!({"reopening": self.reopen.len()}))?;
                }
                "reset" => {
                    self.rec = Recorder::default();
                    reply(&json!({"ok": true}))?;
                }
                "report" => {
                    let bc: Vec<Value> = self
                        .rec
                        .bc
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.0 > 0)
                        .map(|(i, e)| json!([i, e.0, e.1, e.2]))
                        .collect();
                    reply(&json!({
                        "uni_t": self.rec.uni_t,
                        "uni_r": self.rec.uni_r,
                        "misrouted": self.rec.misrouted,
                        "bc": bc,
                        "other": self.rec.other,
                        "pings": self.rec.pings,
                        "closed": self.closed,
                        "errors": self.errors,
                    }))?;
                }
                "quit" => return Ok(false),
                "leave" => {
                    let left = self.leave();
                    reply(&json!({"left": left}))?;
                }
                c if c.starts_with("churn ") => self.start_churn(c)?,
                "" => {}
                other => reply(&json!({"error": format!("unknown command {other}")}))?,
            }
        }
        Ok(true)
    }
}

/// Settings of a whole pool of client processes.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Server address the clients connect to.
    pub ws: SocketAddrV4,
    /// Total clients.
    pub clients: usize,
    /// Client processes.
    pub procs: usize,
    /// At most this many clients per source address.
    pub per_addr: usize,
    /// Handshakes in flight per process.
    pub inflight: usize,
    /// Raw TCP clients (for `limit`).
    pub raw: bool,
    /// `--tls`: the CA file the clients trust.
    pub ca: Option<std::path::PathBuf>,
    /// Monotonic deadline for logging in.
    pub connect_deadline_ns: u64,
    /// Connections opened over the whole run (more than `clients` when churning): the source
    /// addresses are chosen so that each carries at most `per_addr` of them.
    pub total_connects: usize,
    /// The first client's number (uid `u{uid_base}`): two pools side by side hold distinct uids.
    pub uid_base: usize,
}

/// One spawned client process, seen from the parent.
struct Proc {
    /// The process.
    child: Child,
    /// Its command pipe.
    stdin: ChildStdin,
    /// Its answer pipe.
    stdout: BufReader<ChildStdout>,
    /// Its entry on the kill list.
    victim: Victim,
}

/// Outcome of `ClientPool::connect`.
#[derive(Debug)]
pub struct ConnectOutcome {
    /// Clients logged in.
    pub connected: u64,
    /// Clients that failed.
    pub failed: u64,
    /// Nanoseconds from the `connect` command to the last login.
    pub elapsed_ns: u64,
    /// The first error messages of each process.
    pub errors: Vec<String>,
    /// CPU time the client processes spent meanwhile (the load tool's own cost), nanoseconds
    /// of schedstat run time.
    pub client_cpu_ns: u64,
}

/// The client processes of a run.
pub struct ClientPool {
    /// The processes.
    procs: Vec<Proc>,
}

impl ClientPool {
    /// Spawns the client processes (re-executing this binary) and waits for their hello.
    pub fn spawn(cfg: &PoolConfig) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let procs = cfg.procs.clamp(1, cfg.clients.max(1));
        let addrs = cfg
            .total_connects
            .max(cfg.clients)
            .div_ceil(cfg.per_addr.max(1))
            .clamp(1, 254);
        let mut pool = ClientPool { procs: Vec::new() };
        let mut first = cfg.uid_base;
        for p in 0..procs {
            let count = cfg.clients / procs + usize::from(p < cfg.clients % procs);
            let cc = ChildConfig {
                ws: cfg.ws,
                first,
                count,
                addrs,
                inflight: cfg.inflight,
                connect_deadline_ns: cfg.connect_deadline_ns,
                raw: cfg.raw,
                ca: cfg
                    .ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            };
            first += count;
            let mut child = Command::new(&exe)
                .arg("_clients")
                .args(cc.to_args())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn client process: {e}"))?;
            let victim = Victim {
                pid: child.id() as i32,
                group: false,
            };
            util::register_victim(victim);
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("client process without pipes".into());
            };
            pool.procs.push(Proc {
                child,
                stdin,
                stdout: BufReader::new(stdout),
                victim,
            });
        }
        for i in 0..pool.procs.len() {
            let hello = pool.read(i)?;
            if hello.get("hello").is_none() {
                return Err(format!("client process {i}: unexpected greeting {hello}"));
            }
        }
        util::progress(&format!(
            "{} client processes for {} clients over {addrs} source addresses",
            pool.procs.len(),
            cfg.clients
        ));
        Ok(pool)
    }

    /// Reads one JSON answer from process `i`.
    fn read(&mut self, i: usize) -> Result<Value, String> {
        let mut line = String::new();
        let n = self.procs[i]
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("client process {i}: {e}"))?;
        if n == 0 {
            return Err(format!("client process {i} exited"));
        }
        serde_json::from_str(&line).map_err(|e| format!("client process {i}: bad answer: {e}"))
    }

    /// Sends `cmd` to every process.
    fn send_all(&mut self, cmd: &str) -> Result<(), String> {
        for (i, p) in self.procs.iter_mut().enumerate() {
            writeln!(p.stdin, "{cmd}")
                .and_then(|_| p.stdin.flush())
                .map_err(|e| format!("client process {i}: {e}"))?;
        }
        Ok(())
    }

    /// Sends `cmd` to every process and returns every answer.
    pub fn ask(&mut self, cmd: &str) -> Result<Vec<Value>, String> {
        self.send_all(cmd)?;
        (0..self.procs.len()).map(|i| self.read(i)).collect()
    }

    /// Sends `cmd(i)` to process `i`, for every process, and returns every answer.
    pub fn ask_each(&mut self, cmd: impl Fn(usize) -> String) -> Result<Vec<Value>, String> {
        for (i, p) in self.procs.iter_mut().enumerate() {
            writeln!(p.stdin, "{}", cmd(i))
                .and_then(|_| p.stdin.flush())
                .map_err(|e| format!("client process {i}: {e}"))?;
        }
        (0..self.procs.len()).map(|i| self.read(i)).collect()
    }

    /// How many client processes there are.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// The client processes' pids (for the load tool's own CPU).
    pub fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|p| p.child.id() as i32).collect()
    }

    /// Connects and logs in every client; returns when all are in or failed.
    pub fn connect(&mut self) -> Result<ConnectOutcome, String> {
        let pids = self.pids();
        let cpu0 = crate::procstat::sample(&pids).sched_ns;
        let t0 = mono_ns();
        let answers = self.ask("connect")?;
        let mut out = ConnectOutcome {
            connected: 0,
            failed: 0,
            elapsed_ns: 0,
            errors: Vec::new(),
            client_cpu_ns: crate::procstat::sample(&pids).sched_ns.saturating_sub(cpu0),
        };
        let mut t_done = t0;
        for a in &answers {
            out.connected += a["connected"].as_u64().unwrap_or(0);
            out.failed += a["failed"].as_u64().unwrap_or(0);
            t_done = t_done.max(a["t_done"].as_u64().unwrap_or(0));
            if let Some(errs) = a["errors"].as_array() {
                out.errors
                    .extend(errs.iter().filter_map(|e| e.as_str().map(String::from)));
            }
        }
        out.elapsed_ns = t_done - t0;
        Ok(out)
    }

    /// Sums field `key` of a `stat` over all processes.
    pub fn stat_sum(&mut self, key: &str) -> Result<u64, String> {
        Ok(self
            .ask("stat")?
            .iter()
            .map(|a| a[key].as_u64().unwrap_or(0))
            .sum())
    }

    /// The `report` field `key` summed over every client process.
    pub fn report_sum(&mut self, key: &str) -> Result<u64, String> {
        Ok(self
            .ask("report")?
            .iter()
            .map(|a| a[key].as_u64().unwrap_or(0))
            .sum())
    }

    /// Waits until the `stat` field `key` reaches `expected`, or stops growing for `settle`, or
    /// `deadline_ns` passes. Returns the last total.
    pub fn wait_for(
        &mut self,
        key: &str,
        expected: u64,
        settle: Duration,
        deadline_ns: u64,
    ) -> Result<u64, String> {
        let mut last = self.stat_sum(key)?;
        let mut last_change = mono_ns();
        while last < expected && mono_ns() < deadline_ns {
            std::thread::sleep(Duration::from_millis(20));
            let now_total = self.stat_sum(key)?;
            if now_total != last {
                last = now_total;
                last_change = mono_ns();
            } else if mono_ns() - last_change > settle.as_nanos() as u64 {
                break;
            }
        }
        Ok(last)
    }

    /// Stops every client process.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Asks the processes to quit, then kills any still there.
    fn stop(&mut self) {
        let _ = self.send_all("quit");
        let until = mono_ns() + 2_000_000_000;
        for p in &mut self.procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if mono_ns() > until => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            util::unregister_victim(p.victim);
        }
        self.procs.clear();
    }
}

impl Drop for ClientPool {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_payloads() {
        let p = br#"{"uid":"u123","t":98765}"#;
        assert_eq!(number_after(p, b"\"t\":"), Some(98765));
        assert_eq!(number_after(p, b"\"uid\":\"u"), Some(123));
        assert_eq!(number_after(b"b000042 t1", b"b"), Some(42));
        assert_eq!(number_after(b"{\"t\":x}", b"\"t\":"), None);
    }

    #[test]
    fn recorder_sorts_messages() {
        let mut r = Recorder::default();
        r.text(5, br#"{"uid":"u5","t":100}"#, 150);
        r.text(5, br#"{"uid":"u6","t":101}"#, 160);
        r.text(5, b"b000003 t123 xxxx", 200);
        r.text(5, b"b000003 t123 xxxx", 190);
        r.text(5, b"hello", 1);
        assert_eq!(r.uni_t, vec![100, 101]);
        assert_eq!(r.uni_r, vec![150, 160]);
        assert_eq!(r.misrouted, 1);
        assert_eq!(r.bc[3], (2, 190, 200));
        assert_eq!(r.bc_total, 2);
        assert_eq!(r.other, 1);
    }

    #[test]
    fn config_round_trip() {
        let c = ChildConfig {
            ws: "127.0.0.1:9".parse().unwrap(),
            first: 10,
            count: 20,
            addrs: 2,
            inflight: 64,
            connect_deadline_ns: 99,
            raw: true,
            ca: "/tmp/ca.pem".into(),
        };
        let back = ChildConfig::parse(&c.to_args()).unwrap();
        assert_eq!(back.ca, "/tmp/ca.pem");
        assert_eq!(back.first, 10);
        assert_eq!(back.count, 20);
        assert!(back.raw);
        assert_eq!(back.ws, c.ws);
    }
}
