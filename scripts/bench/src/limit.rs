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
//! Pipe protocol on stdin: `count` → `{"accepted":N}`; `b DATA` → broadcast DATA (no answer);
//! `quit` or end of input → exit. At start it prints
//! `{"hello":true,"port":P,"text":T,"pid":PID}`.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

use crate::util::{self, mono_ns, Victim};
use crate::ws;

/// Token of the listening socket.
const LISTENER: Token = Token(usize::MAX - 2);
/// Token of the command pipe.
const STDIN: Token = Token(usize::MAX - 1);
/// Token of the text listening socket.
const TEXT_LISTENER: Token = Token(usize::MAX - 3);
/// Tokens of text connections start here (client sockets count up from 0).
const TEXT_BASE: usize = 1 << 40;

/// One backend connection on the text port.
struct Backend {
    /// The socket.
    sock: TcpStream,
    /// A line not complete yet.
    partial: Vec<u8>,
    /// Answers not written yet (the backend stopped reading).
    out: Vec<u8>,
}

/// One accepted client.
struct Peer {
    /// The socket.
    sock: TcpStream,
    /// Bytes a short write left behind; empty almost always.
    pending: Vec<u8>,
    /// Registered for `WRITABLE` (after the first short write).
    registered: bool,
}

/// Writes one JSON line to the parent.
fn reply(v: &Value) -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("_limit-server: write to parent: {e}"))
}

/// Runs the `limit` server until `quit` or end of input.
pub fn child_main() -> Result<(), String> {
    let nofile = util::raise_nofile();
    let addr: SocketAddr = "127.0.0.1:0"
        .parse()
        .map_err(|e| format!("_limit-server: {e}"))?;
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("_limit-server: bind: {e}"))?;
    // SAFETY: listen(2) again on our own listening socket only raises its backlog (to at most
    // net.core.somaxconn), so that a burst of clients does not overflow the accept queue.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let port = listener
        .local_addr()
        .map_err(|e| format!("_limit-server: {e}"))?
        .port();
    let mut text_listener =
        TcpListener::bind(addr).map_err(|e| format!("_limit-server: bind text: {e}"))?;
    let text_port = text_listener
        .local_addr()
        .map_err(|e| format!("_limit-server: {e}"))?
        .port();
    let mut poll = Poll::new().map_err(|e| format!("_limit-server: poll: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| format!("_limit-server: register: {e}"))?;
    poll.registry()
        .register(&mut text_listener, TEXT_LISTENER, Interest::READABLE)
        .map_err(|e| format!("_limit-server: register text: {e}"))?;
    // SAFETY: fcntl on our own stdin; only the non-blocking flag of our read end changes.
    unsafe {
        let fl = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    poll.registry()
        .register(&mut SourceFd(&0), STDIN, Interest::READABLE)
        .map_err(|e| format!("_limit-server: register stdin: {e}"))?;
    reply(
        &json!({"hello": true, "port": port, "text": text_port, "pid": std::process::id(),
                  "nofile": nofile}),
    )?;

    let mut peers: Vec<Option<Peer>> = Vec::new();
    let mut backends: Vec<Option<Backend>> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut cmd_buf: Vec<u8> = Vec::new();
    let mut frame: Vec<u8> = Vec::with_capacity(128);
    let mut login: Vec<u8> = Vec::new();
    ws::encode_server_text(b"login success", &mut login);
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("_limit-server: poll: {e}")),
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => accept_all(&listener, &mut peers, &login),
                TEXT_LISTENER => accept_backends(&poll, &text_listener, &mut backends),
                Token(t) if (TEXT_BASE..2 * TEXT_BASE).contains(&t) => {
                    let j = t - TEXT_BASE;
                    let Some(Some(b)) = backends.get_mut(j) else {
                        continue;
                    };
                    if serve_backend(&poll, b, &mut peers, &mut scratch, &mut frame).is_err() {
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
                            accept_all(&listener, &mut peers, &login);
                            let n = peers.iter().filter(|p| p.is_some()).count();
                            reply(&json!({"accepted": n}))?;
                        } else if let Some(data) = line.strip_prefix(b"b ") {
                            frame.clear();
                            ws::encode_server_text(data, &mut frame);
                            broadcast(&poll, &mut peers, &frame);
                        } else if line == b"quit" {
                            return Ok(());
                        }
                    }
                }
                Token(i) => {
                    if let Some(Some(p)) = peers.get_mut(i) {
                        if finish(p).is_err() {
                            peers[i] = None;
                        }
                    }
                }
            }
        }
    }
}

/// Accepts every pending connection and greets it with `login` (a `login success` frame), which
/// tells the client it was accepted: clients pace their connects on it as they do with Herald.
fn accept_all(listener: &TcpListener, peers: &mut Vec<Option<Peer>>, login: &[u8]) {
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                let _ = sock.set_nodelay(true);
                if !matches!(sock.write(login), Ok(n) if n == login.len()) {
                    continue;
                }
                peers.push(Some(Peer {
                    sock,
                    pending: Vec::new(),
                    registered: false,
                }));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    eprintln!("_limit-server: accept: {e}");
                }
                break;
            }
        }
    }
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
    poll: &Poll,
    b: &mut Backend,
    peers: &mut [Option<Peer>],
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
            let live = peers.len().max(1);
            let to =
                crate::clients::number_after(line, b"\"uid\":\"u").unwrap_or(0) as usize % live;
            frame.clear();
            ws::encode_server_text(line, frame);
            unicast(poll, peers, to, frame);
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

/// Writes `frame` to every peer: one `write` each, the rest queued if the socket is full.
fn broadcast(poll: &Poll, peers: &mut [Option<Peer>], frame: &[u8]) {
    for i in 0..peers.len() {
        unicast(poll, peers, i, frame);
    }
}

/// Writes `frame` to peer `i` in one `write`, the rest queued if the socket is full.
fn unicast(poll: &Poll, peers: &mut [Option<Peer>], i: usize, frame: &[u8]) {
    let Some(slot) = peers.get_mut(i) else {
        return;
    };
    let Some(p) = slot else { return };
    if !p.pending.is_empty() {
        p.pending.extend_from_slice(frame);
        return;
    }
    match p.sock.write(frame) {
        Ok(n) if n == frame.len() => {}
        Ok(n) => queue(poll, i, p, &frame[n..]),
        Err(e) if e.kind() == ErrorKind::WouldBlock => queue(poll, i, p, frame),
        Err(_) => *slot = None,
    }
}

/// Keeps `rest` for later and asks for `WRITABLE`.
fn queue(poll: &Poll, i: usize, p: &mut Peer, rest: &[u8]) {
    p.pending.extend_from_slice(rest);
    if !p.registered {
        p.registered = poll
            .registry()
            .register(&mut p.sock, Token(i), Interest::WRITABLE)
            .is_ok();
    }
}

/// Writes pending bytes after `WRITABLE`.
fn finish(p: &mut Peer) -> io::Result<()> {
    write_pending(&mut p.sock, &mut p.pending)
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

/// The parent's handle on a running `limit` server.
pub struct LimitServer {
    /// The process.
    child: Child,
    /// Its command pipe.
    stdin: ChildStdin,
    /// Its answer pipe.
    stdout: BufReader<ChildStdout>,
    /// Its entry on the kill list.
    victim: Victim,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its text port (127.0.0.1), for `limit-unicast`.
    pub text: u16,
}

impl LimitServer {
    /// Starts the server process and waits for its hello.
    pub fn spawn() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("_limit-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn limit server: {e}"))?;
        let victim = Victim {
            pid: child.id() as i32,
            group: false,
        };
        util::register_victim(victim);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("limit server without pipes".into());
        };
        let mut s = LimitServer {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            victim,
            port: 0,
            text: 0,
        };
        let hello = s.read()?;
        s.port = hello["port"].as_u64().ok_or("limit server: no port")? as u16;
        s.text = hello["text"].as_u64().ok_or("limit server: no text port")? as u16;
        Ok(s)
    }

    /// The server's pid (for CPU and memory figures).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads one JSON answer.
    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("limit server exited".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("limit server: {e}")),
            Err(e) => Err(format!("limit server: {e}")),
        }
    }

    /// Sends one command line.
    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("limit server: {e}"))
    }

    /// Waits until `n` connections are accepted (or `deadline_ns`); returns how many were.
    pub fn wait_accepted(&mut self, n: u64, deadline_ns: u64) -> Result<u64, String> {
        loop {
            self.send("count")?;
            let got = self.read()?["accepted"].as_u64().unwrap_or(0);
            if got >= n || mono_ns() > deadline_ns {
                return Ok(got);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Broadcasts `data` (no newline inside) to every connection.
    pub fn broadcast(&mut self, data: &str) -> Result<(), String> {
        self.send(&format!("b {data}"))
    }

    /// Stops the server.
    pub fn stop(mut self) {
        let _ = self.send("quit");
        let until = mono_ns() + 2_000_000_000;
        while matches!(self.child.try_wait(), Ok(None)) && mono_ns() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        util::unregister_victim(self.victim);
    }
}
