//! One non-blocking connection to Redis on the worker's own `mio::Poll`: no thread and no
//! hand-off between the loop and the socket. It connects (again, with a growing back-off,
//! after a loss), sends its greeting (`AUTH`, `SELECT`, whatever the owner adds), writes the
//! commands queued during a loop turn in one go, and returns the replies in order.
//!
//! The owner (`event_loop/wire.rs`) keeps what each reply answers; the link only knows how
//! many greeting replies to swallow before it is ready.

use crate::resp::{self, RespError, Value};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use thiserror::Error;

/// First wait before connecting again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection that is not ready (connected and greeted) this long after it began is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read per readiness before the loop gets its turn back.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes waiting to be written past which the link takes no more commands.
pub const OUT_LIMIT: usize = 8 << 20;

/// Why a link went down.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The socket failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Redis closed the connection.
    #[error("connection closed by Redis")]
    Closed,
    /// The bytes are not Redis's.
    #[error("{0}")]
    Resp(#[from] RespError),
    /// The greeting was refused (a wrong password, an unknown database).
    #[error("Redis refused the greeting: {0}")]
    Refused(String),
    /// No connection within the time allowed.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; the next attempt is due at the given time.
    Down(Instant),
    /// Connecting or greeting: that many greeting replies are still due, and when it began.
    Greeting(usize, Instant),
    /// Commands may be queued.
    Ready,
}

/// A connection to Redis driven by the loop.
pub struct Link {
    /// Where Redis listens (resolved once, when the worker starts).
    addrs: Vec<SocketAddr>,
    /// The commands sent first on every connection, and how many replies they give.
    greeting: (Vec<u8>, usize),
    /// This link's token in the loop's `Poll`.
    token: Token,
    /// The socket, while there is one.
    sock: Option<TcpStream>,
    /// Where the link stands.
    state: State,
    /// Encoded commands not yet written.
    out: Vec<u8>,
    /// Bytes of `out` already written.
    sent: usize,
    /// Bytes read and not yet parsed into replies.
    inb: Vec<u8>,
    /// The wait before the next attempt after a failure.
    backoff: Duration,
    /// Which address the next attempt uses (they are tried in turn).
    next_addr: usize,
}

impl Link {
    /// A link to `addrs` that starts down, due to connect at once.
    pub fn new(addrs: Vec<SocketAddr>, token: Token) -> Link {
        Link {
            addrs,
            greeting: (Vec::new(), 0),
            token,
            sock: None,
            state: State::Down(Instant::now()),
            out: Vec::new(),
            sent: 0,
            inb: Vec::new(),
            backoff: FIRST_BACKOFF,
            next_addr: 0,
        }
    }

    /// Adds a command to the greeting of every new connection; its reply must not be an error.
    pub fn greet(&mut self, args: &[&[u8]]) {
        resp::command(&mut self.greeting.0, args);
        self.greeting.1 += 1;
    }

    /// Commands may be queued.
    pub fn ready(&self) -> bool {
        self.state == State::Ready && self.out.len() - self.sent < OUT_LIMIT
    }

    /// A socket exists (connecting, greeting or ready).
    pub fn connected(&self) -> bool {
        self.sock.is_some()
    }

    /// Queues a command (written by the next [`Link::flush`]); the caller checked [`Link::ready`].
    pub fn queue(&mut self, args: &[&[u8]]) {
        resp::command(&mut self.out, args);
    }

    /// When the link wants [`Link::tick`] next: its next attempt or its greeting's deadline.
    pub fn due(&self) -> Option<Instant> {
        match self.state {
            State::Down(at) => Some(at),
            State::Greeting(_, began) => Some(began + CONNECT_TIMEOUT),
            State::Ready => None,
        }
    }

    /// Connects when an attempt is due; gives up a greeting that took too long. `Err` when the
    /// link just went down (the caller fails what waited on it).
    pub fn tick(&mut self, reg: &Registry, now: Instant) -> Result<(), LinkError> {
        match self.state {
            State::Down(at) if now >= at => {
                if let Err(e) = self.open(reg, now) {
                    self.down(reg, now);
                    return Err(e);
                }
                Ok(())
            }
            State::Greeting(_, began) if now >= began + CONNECT_TIMEOUT => {
                self.down(reg, now);
                Err(LinkError::Timeout(CONNECT_TIMEOUT))
            }
            _ => Ok(()),
        }
    }

    /// Starts a connection and queues the greeting.
    fn open(&mut self, reg: &Registry, now: Instant) -> Result<(), LinkError> {
        let Some(&addr) = self.addrs.get(self.next_addr % self.addrs.len().max(1)) else {
            return Err(LinkError::Io(io::Error::other("no address for Redis")));
        };
        self.next_addr = self.next_addr.wrapping_add(1);
        let mut sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        reg.register(
            &mut sock,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.sock = Some(sock);
        self.out.clear();
        self.sent = 0;
        self.inb.clear();
        self.out.extend_from_slice(&self.greeting.0);
        self.state = if self.greeting.1 == 0 {
            State::Ready
        } else {
            State::Greeting(self.greeting.1, now)
        };
        Ok(())
    }

    /// Closes the socket; the next attempt waits the back-off, which then grows.
    pub fn down(&mut self, reg: &Registry, now: Instant) {
        if let Some(mut s) = self.sock.take() {
            let _ = reg.deregister(&mut s);
        }
        self.out.clear();
        self.sent = 0;
        self.inb.clear();
        self.state = State::Down(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self, reg: &Registry) -> Result<(), LinkError> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        while self.sent < self.out.len() {
            match sock.write(&self.out[self.sent..]) {
                Ok(0) => return self.fail(reg, LinkError::Closed),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // Still connecting: the writable edge comes when it is done.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(reg, e.into()),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }

    /// Whether queued bytes wait to be written.
    pub fn pending_out(&self) -> bool {
        self.sent < self.out.len()
    }

    /// The socket is readable or writable: writes what waits, reads up to a budget, and appends
    /// the replies after the greeting's to `replies`. `Ok(true)` when the budget stopped the
    /// reading (more may wait: call again next turn).
    pub fn on_ready(
        &mut self,
        reg: &Registry,
        replies: &mut Vec<Value>,
    ) -> Result<bool, LinkError> {
        self.flush(reg)?;
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        let mut read = 0;
        let mut chunk = [0u8; 16 * 1024];
        let mut more = false;
        // Redis may answer and then close (a refused greeting): what came first is read.
        let mut closed = false;
        loop {
            if read >= READ_BUDGET {
                more = true;
                break;
            }
            match sock.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    read += n;
                    self.inb.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(reg, e.into()),
            }
        }
        let mut at = 0;
        loop {
            match resp::parse(&self.inb[at..]) {
                Ok(Some((v, used))) => {
                    at += used;
                    if let State::Greeting(left, began) = self.state {
                        if let Some(why) = v.error_text() {
                            return self.fail(reg, LinkError::Refused(why));
                        }
                        self.state = if left <= 1 {
                            self.backoff = FIRST_BACKOFF;
                            State::Ready
                        } else {
                            State::Greeting(left - 1, began)
                        };
                    } else {
                        replies.push(v);
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(reg, e.into()),
            }
        }
        self.inb.drain(..at);
        if closed {
            return self.fail(reg, LinkError::Closed);
        }
        Ok(more)
    }

    /// Takes the link down after `e`, and returns it.
    fn fail<T>(&mut self, reg: &Registry, e: LinkError) -> Result<T, LinkError> {
        self.down(reg, Instant::now());
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::net::TcpListener;

    /// Drives `link` until `f` holds, polling for up to two seconds.
    fn drive(
        poll: &mut Poll,
        link: &mut Link,
        replies: &mut Vec<Value>,
        f: impl Fn(&Link, &[Value]) -> bool,
    ) -> Result<(), LinkError> {
        let mut events = Events::with_capacity(8);
        let until = Instant::now() + Duration::from_secs(2);
        while !f(link, replies) {
            assert!(Instant::now() < until, "timed out");
            link.tick(poll.registry(), Instant::now())?;
            poll.poll(&mut events, Some(Duration::from_millis(20)))?;
            if !events.is_empty() {
                link.on_ready(poll.registry(), replies)?;
            }
        }
        Ok(())
    }

    #[test]
    fn greets_then_returns_replies_in_order_and_refusals_take_it_down() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let peer = std::thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            // The greeting, then one command.
            while !got.ends_with(b"PING\r\n") {
                let n = s.read(&mut buf).expect("read");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"+OK\r\n:7\r\n").expect("write");
            let (mut s2, _) = server.accept().expect("accept again");
            let n = s2.read(&mut buf).expect("read");
            assert!(n > 0);
            s2.write_all(b"-WRONGPASS invalid\r\n").expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        let mut poll = Poll::new().expect("poll");
        let mut link = Link::new(vec![addr], Token(1));
        link.greet(&[b"AUTH", b"pw"]);
        let mut replies = Vec::new();
        drive(&mut poll, &mut link, &mut replies, |l, _| l.connected()).expect("connect");
        assert!(!link.ready(), "not ready before the greeting's answer");
        link.queue(&[b"PING"]);
        link.flush(poll.registry()).expect("flush");
        drive(&mut poll, &mut link, &mut replies, |_, r| !r.is_empty()).expect("reply");
        assert!(link.ready());
        assert_eq!(replies, vec![Value::Int(7)]);
        // The server closes this connection only after the test: make the link reconnect by
        // taking it down, and see the second greeting refused.
        link.down(poll.registry(), Instant::now() - Duration::from_secs(1));
        link.state = State::Down(Instant::now());
        let refused = drive(&mut poll, &mut link, &mut replies, |_, _| false);
        assert!(
            matches!(refused, Err(LinkError::Refused(ref w)) if w.contains("WRONGPASS")),
            "{refused:?}"
        );
        assert!(!link.connected());
        let sent = peer.join().expect("peer");
        assert_eq!(sent, "*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n");
    }
}
