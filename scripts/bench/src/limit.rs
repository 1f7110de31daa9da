//! The `limit` server: the simplest program that can do Herald's broadcast, as the ceiling a
//! one-write-per-delivery server cannot pass. It runs in its own process (hidden subcommand
//! `_limit-server`), accepts plain TCP connections (no handshake, no login), and for each
//! broadcast encodes one unmasked 100-byte WebSocket text frame once and `write`s it to every
//! socket: one syscall per delivery. Output that does not fit is kept and finished on `WRITABLE`.
//! Each accepted client gets one `login success` frame, so that clients know they were accepted
//! (that is outside the measured broadcasts).
//!
//! It also listens on a text port, the floor of a unicast push (`limit-unicast`): each line
//! `{"uid":"uN",…}` that a backend connection brings is framed as it is and written to accepted
//! socket `N mod count` (one `write` per push; which client gets it does not matter for the
//! floor, only that every push costs one delivery), and answered `ok\n`; the answers to all the
//! lines of one read go back in one `write`. No JSON parsing, no registry, no WebSocket login.
//!
//! Several of these processes can serve one port (`--floor-procs`, see `floor.rs`): the
//! listening socket is bound with `SO_REUSEPORT`, so the kernel spreads the connections over
//! them as it does over Herald's workers, and each process writes a broadcast to its own
//! sockets. Only the first process has the text port.
//!
//! With `--ws 1` (the handshake floor of `limit-connect` and `limit-storm`) each client must
//! first do the WebSocket upgrade: the process reads the request up to its blank line, answers
//! `101` (see `floor_ws.rs`), reads the client's first frame (the login, content ignored) and
//! answers `login success`; afterwards whatever a client sends is read and dropped, and a
//! connection the client closed is closed and its slot reused. With `--steady 1` the process
//! also listens on a port of its own, and the clients accepted there are the only ones its text
//! port's pushes go to (the storm's steady clients, apart from the clients that drop).
//!
//! With `--ping-ms T` (the floor of `limit-idle`; 0, the default, sends none) the process
//! writes a WebSocket ping frame (`0x89 0x00`, pre-encoded) to each logged-in client once every
//! T ms, spread as Herald's sweep spreads them: a slice of the sockets at each sweep (once a
//! second, or every T ms if shorter), each socket in one slice of T / sweep. It counts the pings
//! written and the bytes its logged-in clients send (their masked pongs, read and dropped).
//!
//! Arguments: `--port P` (0: any free port), `--text 0|1`, `--ws 0|1`, `--steady 0|1`,
//! `--ping-ms T`.
//! Pipe protocol on stdin: `count` → `{"accepted":N,"pings":P,"ready_bytes":B}` (logged-in
//! clients with `--ws 1`, pings written, bytes read from logged-in clients);
//! `b DATA` → broadcast DATA (no answer); `quit` or end of input → exit. At start it prints
//! `{"hello":true,"port":P,"text":T,"steady":S,"pid":PID,"nofile":F}` (0 for a port it lacks).

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, Socket, Type};

use crate::floor_ws::{self, Request};
use crate::util;
use crate::ws;

/// Token of the listening socket.
const LISTENER: Token = Token(usize::MAX - 2);
/// Token of the command pipe.
const STDIN: Token = Token(usize::MAX - 1);
/// Token of the text listening socket.
const TEXT_LISTENER: Token = Token(usize::MAX - 3);
/// Token of the steady clients' listening socket.
const STEADY_LISTENER: Token = Token(usize::MAX - 4);
/// Tokens of text connections start here (client sockets count up from 0).
const TEXT_BASE: usize = 1 << 40;
/// An unmasked WebSocket ping frame without payload, as Herald sends it.
const PING: [u8; 2] = [0x89, 0x00];

/// One backend connection on the text port.
struct Backend {
    /// The socket.
    sock: TcpStream,
    /// A line not complete yet.
    partial: Vec<u8>,
    /// Answers not written yet (the backend stopped reading).
    out: Vec<u8>,
}

/// Where an accepted client is (always `Ready` without `--ws`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// Reading the upgrade request.
    Http,
    /// `101` sent; reading the login frame.
    Login,
    /// Logged in: broadcasts and pushes go to it.
    Ready,
}

/// One accepted client.
struct Peer {
    /// The socket.
    sock: TcpStream,
    /// Bytes a short write left behind; empty almost always.
    pending: Vec<u8>,
    /// Registered with the poll (for `WRITABLE` after the first short write; from the start
    /// with `--ws`, which also reads).
    registered: bool,
    /// Handshake progress.
    stage: Stage,
    /// With `--ws`: the request or login frame received so far.
    inbuf: Vec<u8>,
    /// Accepted on the steady listener: a unicast target.
    steady: bool,
}

/// Options of one server process, from its command line.
struct ServerArgs {
    /// The port to share (0: a free one).
    port: u16,
    /// Listen on a text port too.
    text: bool,
    /// Clients do the WebSocket upgrade and log in.
    ws: bool,
    /// Listen on a port of its own for the steady clients.
    steady: bool,
    /// Milliseconds between two pings to one client (0: no pings).
    ping_ms: u64,
}

impl ServerArgs {
    /// Reads `--port P --text 0|1 --ws 0|1 --steady 0|1 --ping-ms T` (each optional).
    fn parse(args: &[String]) -> Result<Self, String> {
        let get = |k: &str| -> Result<u64, String> {
            match args.iter().position(|a| a == k) {
                None => Ok(0),
                Some(i) => args
                    .get(i + 1)
                    .ok_or_else(|| format!("_limit-server: {k} needs a value"))?
                    .parse()
                    .map_err(|e| format!("_limit-server: {k}: {e}")),
            }
        };
        Ok(ServerArgs {
            port: u16::try_from(get("--port")?).map_err(|e| format!("_limit-server: {e}"))?,
            text: get("--text")? != 0,
            ws: get("--ws")? != 0,
            steady: get("--steady")? != 0,
            ping_ms: get("--ping-ms")?,
        })
    }
}

/// The arguments that `ServerArgs::parse` reads back.
pub fn server_args(port: u16, text: bool, ws: bool, steady: bool, ping_ms: u64) -> Vec<String> {
    let flag = |b: bool| u8::from(b).to_string();
    vec![
        "--port".into(),
        port.to_string(),
        "--text".into(),
        flag(text),
        "--ws".into(),
        flag(ws),
        "--steady".into(),
        flag(steady),
        "--ping-ms".into(),
        ping_ms.to_string(),
    ]
}

/// Writes one JSON line to the parent.
fn reply(v: &Value) -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("_limit-server: write to parent: {e}"))
}

/// A non-blocking listening socket on 127.0.0.1:`port` with a backlog of 4096 (at most
/// net.core.somaxconn), so that a burst of clients does not overflow the accept queue; with
/// `shared`, bound with `SO_REUSEPORT` so that sibling processes can bind the same port.
fn listen(port: u16, shared: bool) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if shared {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.listen(4096)?;
    Ok(TcpListener::from_std(s.into()))
}

/// The port `l` listens on.
fn port_of(l: &TcpListener) -> Result<u16, String> {
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("_limit-server: {e}"))
}

/// The state of one server process.
struct Server {
    /// The poll every socket is registered with.
    poll: Poll,
    /// Accepted clients by slot (the slot is the token); `None` for a free slot.
    peers: Vec<Option<Peer>>,
    /// Free slots of `peers`, reused before it grows.
    free: Vec<usize>,
    /// Slots of the clients accepted on the steady listener.
    steady: Vec<usize>,
    /// Clients that broadcasts go to (logged in with `--ws`, else accepted).
    ready: u64,
    /// `--ws`: clients must do the upgrade and log in.
    ws: bool,
    /// The pre-encoded `login success` frame.
    login: Vec<u8>,
    /// Read buffer.
    scratch: Vec<u8>,
    /// An accept failed for a reason other than `WouldBlock` (such as too many open files): try
    /// again at the next loop turn, as the edge-triggered listener may not report again.
    accept_stalled: bool,
    /// Ping frames written (or queued) to logged-in clients.
    pings: u64,
    /// Bytes read from logged-in clients and dropped (with pings: their pongs).
    ready_bytes: u64,
    /// Sweeps so far: which slice of the sockets the next sweep pings.
    sweeps: usize,
}

/// Runs the `limit` server until `quit` or end of input.
pub fn child_main(args: &[String]) -> Result<(), String> {
    let a = ServerArgs::parse(args)?;
    let nofile = util::raise_nofile();
    let err = |what: &str, e: &dyn std::fmt::Display| format!("_limit-server: {what}: {e}");
    let mut listener = listen(a.port, true).map_err(|e| err("bind", &e))?;
    let port = port_of(&listener)?;
    let poll = Poll::new().map_err(|e| err("poll", &e))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| err("register", &e))?;
    // A listener of its own on a free port, registered as `token` (when `wanted`).
    let extra =
        |wanted: bool, token: Token, what: &str| -> Result<(Option<TcpListener>, u16), String> {
            if !wanted {
                return Ok((None, 0));
            }
            let mut l = listen(0, false).map_err(|e| err(&format!("bind {what}"), &e))?;
            let port = port_of(&l)?;
            poll.registry()
                .register(&mut l, token, Interest::READABLE)
                .map_err(|e| err(&format!("register {what}"), &e))?;
            Ok((Some(l), port))
        };
    let (text_listener, text_port) = extra(a.text, TEXT_LISTENER, "text")?;
    let (steady_listener, steady_port) = extra(a.steady, STEADY_LISTENER, "steady")?;
    // SAFETY: fcntl on our own stdin; only the non-blocking flag of our read end changes.
    unsafe {
        let fl = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    poll.registry()
        .register(&mut SourceFd(&0), STDIN, Interest::READABLE)
        .map_err(|e| err("register stdin", &e))?;
    reply(
        &json!({"hello": true, "port": port, "text": text_port, "steady": steady_port,
                  "pid": std::process::id(), "nofile": nofile}),
    )?;

    let mut login: Vec<u8> = Vec::new();
    ws::encode_server_text(b"login success", &mut login);
    let mut s = Server {
        poll,
        peers: Vec::new(),
        free: Vec::new(),
        steady: Vec::new(),
        ready: 0,
        ws: a.ws,
        login,
        scratch: vec![0u8; 64 * 1024],
        accept_stalled: false,
        pings: 0,
        ready_bytes: 0,
        sweeps: 0,
    };
    // The sweep: every `sweep_ns`, one of `slices` slices of the sockets is pinged.
    let sweep_ns = a.ping_ms.clamp(1, 1000) * 1_000_000;
    let slices = (a.ping_ms * 1_000_000).div_ceil(sweep_ns).max(1) as usize;
    let mut next_sweep = util::mono_ns() + sweep_ns;
    let mut backends: Vec<Option<Backend>> = Vec::new();
    let mut text_scratch = vec![0u8; 64 * 1024];
    let mut cmd_buf: Vec<u8> = Vec::new();
    let mut frame: Vec<u8> = Vec::with_capacity(128);
    let mut events = Events::with_capacity(1024);
    loop {
        // Wake for a stalled accept's retry (100 ms), the next sweep, or at least once a
        // second; an idle floor wakes no more than it must, as its CPU is the figure.
        let now = util::mono_ns();
        let wait_ns = if s.accept_stalled {
            100_000_000
        } else if a.ping_ms > 0 {
            next_sweep.saturating_sub(now).min(1_000_000_000)
        } else {
            1_000_000_000
        };
        match s
            .poll
            .poll(&mut events, Some(Duration::from_nanos(wait_ns)))
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(err("poll", &e)),
        }
        if a.ping_ms > 0 && util::mono_ns() >= next_sweep {
            s.ping_sweep(slices);
            next_sweep = (next_sweep + sweep_ns).max(util::mono_ns());
        }
        if s.accept_stalled {
            s.accept_stalled = false;
            s.accept_all(&listener, false);
            if let Some(l) = &steady_listener {
                s.accept_all(l, true);
            }
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => s.accept_all(&listener, false),
                STEADY_LISTENER => {
                    if let Some(l) = &steady_listener {
                        s.accept_all(l, true);
                    }
                }
                TEXT_LISTENER => {
                    if let Some(l) = &text_listener {
                        accept_backends(&s.poll, l, &mut backends);
                    }
                }
                Token(t) if (TEXT_BASE..2 * TEXT_BASE).contains(&t) => {
                    let j = t - TEXT_BASE;
                    let Some(Some(b)) = backends.get_mut(j) else {
                        continue;
                    };
                    if serve_backend(&mut s, b, &mut text_scratch, &mut frame).is_err() {
                        backends[j] = None;
                    }
                }
                STDIN => {
                    if !read_commands(&mut cmd_buf)? {
                        return Ok(());
                    }
                    while let Some(nl) = cmd_buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = cmd_buf.drain(..=nl).collect();
                        let line = &line[..line.len() - 1];
                        if line == b"count" {
                            s.accept_all(&listener, false);
                            reply(&json!({"accepted": s.ready, "pings": s.pings,
                                          "ready_bytes": s.ready_bytes}))?;
                        } else if let Some(data) = line.strip_prefix(b"b ") {
                            frame.clear();
                            ws::encode_server_text(data, &mut frame);
                            s.broadcast(&frame);
                        } else if line == b"quit" {
                            return Ok(());
                        }
                    }
                }
                Token(i) => s.on_peer(i),
            }
        }
    }
}

impl Server {
    /// Accepts every pending connection of `listener`. Without `--ws` each is greeted at once
    /// with `login success`, which tells the client it was accepted (clients pace their connects
    /// on it as they do with Herald); with `--ws` it is registered to read its upgrade request.
    fn accept_all(&mut self, listener: &TcpListener, steady: bool) {
        loop {
            let (mut sock, _) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    if !self.accept_stalled {
                        eprintln!("_limit-server: accept: {e}");
                    }
                    self.accept_stalled = true;
                    break;
                }
            };
            let _ = sock.set_nodelay(true);
            let i = self.free.pop().unwrap_or(self.peers.len());
            let stage = if self.ws {
                let ok = self
                    .poll
                    .registry()
                    .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                    .is_ok();
                if !ok {
                    self.free.push(i);
                    continue;
                }
                Stage::Http
            } else {
                if !matches!(sock.write(&self.login), Ok(n) if n == self.login.len()) {
                    self.free.push(i);
                    continue;
                }
                self.ready += 1;
                Stage::Ready
            };
            let peer = Peer {
                sock,
                pending: Vec::new(),
                registered: self.ws,
                stage,
                inbuf: Vec::new(),
                steady,
            };
            if i == self.peers.len() {
                self.peers.push(Some(peer));
            } else {
                self.peers[i] = Some(peer);
            }
            if steady {
                self.steady.push(i);
            }
        }
    }

    /// Closes the client in slot `i` and frees the slot.
    fn close(&mut self, i: usize) {
        let Some(p) = self.peers.get_mut(i).and_then(Option::take) else {
            return;
        };
        if p.stage == Stage::Ready {
            self.ready -= 1;
        }
        if p.steady {
            self.steady.retain(|&s| s != i);
        }
        self.free.push(i);
    }

    /// Handles readiness of client `i`: finishes its pending output and, with `--ws`, reads
    /// what it sent.
    fn on_peer(&mut self, i: usize) {
        let Some(Some(p)) = self.peers.get_mut(i) else {
            return;
        };
        let r = if self.ws {
            serve_ws(p, &mut self.scratch, &self.login, &mut self.ready_bytes)
        } else {
            write_pending(&mut p.sock, &mut p.pending).map(|_| false)
        };
        match r {
            Ok(true) => self.ready += 1,
            Ok(false) => {}
            Err(_) => self.close(i),
        }
    }

    /// Writes `frame` to every logged-in client: one `write` each, the rest queued if the
    /// socket is full.
    fn broadcast(&mut self, frame: &[u8]) {
        for i in 0..self.peers.len() {
            self.unicast(i, frame);
        }
    }

    /// Writes the ping frame to one slice of the logged-in clients (slot `i` is in slice
    /// `i % slices`; the slices take turns, one per sweep).
    fn ping_sweep(&mut self, slices: usize) {
        let slice = self.sweeps % slices;
        self.sweeps = self.sweeps.wrapping_add(1);
        for i in (slice..self.peers.len()).step_by(slices) {
            if matches!(&self.peers[i], Some(p) if p.stage == Stage::Ready) {
                self.pings += 1;
                self.unicast(i, &PING);
            }
        }
    }

    /// Writes `frame` to client `i` in one `write` if it is logged in, the rest queued if the
    /// socket is full.
    fn unicast(&mut self, i: usize, frame: &[u8]) {
        let Some(Some(p)) = self.peers.get_mut(i) else {
            return;
        };
        if p.stage != Stage::Ready {
            return;
        }
        if !p.pending.is_empty() {
            p.pending.extend_from_slice(frame);
            return;
        }
        match p.sock.write(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => queue(&self.poll, i, p, &frame[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => queue(&self.poll, i, p, frame),
            Err(_) => self.close(i),
        }
    }

    /// The client a push with uid number `n` goes to: one of the steady clients if there is a
    /// steady listener, else any slot.
    fn target(&self, n: u64) -> usize {
        if self.steady.is_empty() {
            (n % self.peers.len().max(1) as u64) as usize
        } else {
            self.steady[(n % self.steady.len() as u64) as usize]
        }
    }
}

/// With `--ws`: writes what is pending for `p`, then reads until `WouldBlock`, moving it through
/// the upgrade and the login. `Ok(true)` when it just logged in; `Err` when it must be closed
/// (closed by the client, a bad request, an error). What a logged-in client sends is counted
/// in `ready_bytes` and dropped.
fn serve_ws(
    p: &mut Peer,
    scratch: &mut [u8],
    login: &[u8],
    ready_bytes: &mut u64,
) -> io::Result<bool> {
    write_pending(&mut p.sock, &mut p.pending)?;
    let mut logged_in = false;
    loop {
        let n = match p.sock.read(scratch) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if p.stage == Stage::Ready {
            *ready_bytes += n as u64;
            continue;
        }
        p.inbuf.extend_from_slice(&scratch[..n]);
        if p.stage == Stage::Http {
            match floor_ws::request(&p.inbuf) {
                Request::Incomplete => continue,
                Request::Bad => return Err(ErrorKind::InvalidData.into()),
                Request::Upgrade(answer, used) => {
                    p.pending.extend_from_slice(&answer);
                    p.inbuf.drain(..used);
                    p.stage = Stage::Login;
                }
            }
        }
        match floor_ws::frame_len(&p.inbuf) {
            Ok(None) => {}
            Ok(Some(_)) => {
                p.inbuf = Vec::new();
                p.pending.extend_from_slice(login);
                p.stage = Stage::Ready;
                logged_in = true;
            }
            Err(()) => return Err(ErrorKind::InvalidData.into()),
        }
    }
    write_pending(&mut p.sock, &mut p.pending)?;
    Ok(logged_in)
}

/// Accepts every pending backend connection.
fn accept_backends(poll: &Poll, listener: &TcpListener, backends: &mut Vec<Option<Backend>>) {
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                let _ = sock.set_nodelay(true);
                let token = Token(TEXT_BASE + backends.len());
                if poll
                    .registry()
                    .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                    .is_ok()
                {
                    backends.push(Some(Backend {
                        sock,
                        partial: Vec::new(),
                        out: Vec::new(),
                    }));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    eprintln!("_limit-server: accept text: {e}");
                }
                break;
            }
        }
    }
}

/// Reads what backend `b` sent until `WouldBlock`; every complete line is written to one client
/// as a frame and answered `ok`. `Err` when the backend is gone.
fn serve_backend(
    s: &mut Server,
    b: &mut Backend,
    scratch: &mut [u8],
    frame: &mut Vec<u8>,
) -> io::Result<()> {
    write_pending(&mut b.sock, &mut b.out)?;
    loop {
        let n = match b.sock.read(scratch) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let joined;
        let data: &[u8] = if b.partial.is_empty() {
            &scratch[..n]
        } else {
            joined = [std::mem::take(&mut b.partial).as_slice(), &scratch[..n]].concat();
            &joined
        };
        let mut pos = 0;
        while let Some(nl) = data[pos..].iter().position(|&c| c == b'\n') {
            let line = &data[pos..pos + nl];
            pos += nl + 1;
            let uid = crate::clients::number_after(line, b"\"uid\":\"u").unwrap_or(0);
            frame.clear();
            ws::encode_server_text(line, frame);
            s.unicast(s.target(uid), frame);
            b.out.extend_from_slice(b"ok\n");
        }
        b.partial.extend_from_slice(&data[pos..]);
        write_pending(&mut b.sock, &mut b.out)?;
    }
}

/// Reads available command bytes; `Ok(false)` at end of input.
fn read_commands(buf: &mut Vec<u8>) -> Result<bool, String> {
    let mut chunk = [0u8; 8192];
    loop {
        // SAFETY: reading into a live stack buffer of the length given.
        let n = unsafe { libc::read(0, chunk.as_mut_ptr() as *mut libc::c_void, chunk.len()) };
        if n == 0 {
            return Ok(false);
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::WouldBlock => return Ok(true),
                ErrorKind::Interrupted => continue,
                _ => return Err(format!("_limit-server: read stdin: {e}")),
            }
        }
        buf.extend_from_slice(&chunk[..n as usize]);
    }
}

/// Keeps `rest` for later and asks for `WRITABLE` (a `--ws` client is registered already).
fn queue(poll: &Poll, i: usize, p: &mut Peer, rest: &[u8]) {
    p.pending.extend_from_slice(rest);
    if !p.registered {
        p.registered = poll
            .registry()
            .register(&mut p.sock, Token(i), Interest::WRITABLE)
            .is_ok();
    }
}

/// Writes `pending` as far as `sock` takes it; what is written leaves `pending`.
fn write_pending(sock: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<()> {
    while !pending.is_empty() {
        match sock.write(pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_args_round_trip() {
        let a = ServerArgs::parse(&server_args(4321, false, true, true, 25_000)).expect("parsed");
        assert_eq!((a.port, a.text, a.ws, a.steady), (4321, false, true, true));
        assert_eq!(a.ping_ms, 25_000);
        let d = ServerArgs::parse(&[]).expect("defaults");
        assert_eq!((d.port, d.text, d.ws, d.steady), (0, false, false, false));
        assert_eq!(d.ping_ms, 0);
        assert!(ServerArgs::parse(&["--port".into(), "70000".into()]).is_err());
    }
}
