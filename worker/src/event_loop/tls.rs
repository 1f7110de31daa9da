//! TLS in the loop: a new connection's session on the ports that speak TLS, what a read
//! says about it (a finished handshake, a refusal), the refusal of a TLS client on a plain
//! port, the handshake deadline, and the relay that carries a TLS Socket.IO connection's
//! decrypted bytes to the worker owning its session.
//!
//! **Why a relay.** A Socket.IO request landing on a worker that does not own its session is
//! normally handed over as a socket (`handoff`). A TLS session cannot move that way: its keys
//! and record sequence numbers live in this process's rustls state. So this worker keeps the
//! TLS connection and gives the owner one end of a Unix socket pair instead, with the
//! request's bytes and the client's address (a datagram starting with [`RELAY_MARK`]); it
//! then relays between the TLS connection and its end of the pair, decrypting one way and
//! encrypting the other. The owner sees a plain connection ([`Stream::Relayed`]) and serves it
//! with the hand-off code unchanged. Each direction holds at most one read's worth of bytes:
//! a side that does not take them stops the reading of the other (no unbounded buffer). The
//! relay ends when both directions have ended, or either side fails; the owner's timeouts
//! (idle, ping, drain) therefore end it too, by closing its end.

use super::Worker;
use crate::conn::{Port, RESUME};
use crate::stream::{Stream, TlsFailure, TLS_HANDSHAKE};
use mio::net::UnixStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// Relay tokens: `Token(RELAY_BASE + 2 * key)` is the client's TLS side, `+ 1` the pair side.
pub(super) const RELAY_BASE: usize = 1 << 39;

/// How a hand-off datagram carrying a socket pair (or a relayed connection) starts: a byte no
/// HTTP request begins with, then the client's address and a newline, then the request bytes.
pub(super) const RELAY_MARK: &[u8] = b"\0relay ";

/// Most bytes one direction of a relay reads before the other side has taken them.
const RELAY_CHUNK: usize = 16 * 1024;

/// A fatal TLS alert record, `handshake_failure`: what a TLS client reaching a plain port gets.
const ALERT_HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28];

/// A TLS connection relayed to the worker owning its Socket.IO session.
pub(super) struct Relay {
    /// The client's TLS connection (kept here: its session cannot move).
    tls: Stream,
    /// This worker's end of the pair whose other end the owner serves.
    pair: UnixStream,
    /// Decrypted bytes from the client that the pair has not taken yet.
    up: Vec<u8>,
    /// Bytes from the owner that the TLS session has not taken yet.
    down: Vec<u8>,
    /// The client finished sending (the pair was shut for writing).
    up_done: bool,
    /// The owner finished sending (the client got `close_notify`).
    down_done: bool,
    /// The client, for logs.
    remote: SocketAddr,
}

/// Splits a hand-off datagram carrying a relayed connection into the client's address and
/// the request bytes.
pub(super) fn relayed(data: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let rest = data.strip_prefix(RELAY_MARK)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let addr = std::str::from_utf8(&rest[..nl]).ok()?.parse().ok()?;
    Some((addr, &rest[nl + 1..]))
}

impl Worker {
    /// The stream of a connection just accepted on `port`: a TLS session when the port speaks
    /// TLS, else the socket as it is. `None` (the socket dropped) if rustls cannot start one.
    pub(super) fn tls_wrap(
        &mut self,
        tcp: mio::net::TcpStream,
        remote: SocketAddr,
        port: Port,
    ) -> Option<Stream> {
        let Some(sc) = self.tls.get(port) else {
            return Some(Stream::Plain(tcp));
        };
        match rustls::server::UnbufferedServerConnection::new(sc.clone()) {
            Ok(s) => Some(Stream::tls(tcp, s)),
            Err(e) => {
                log::warn!(
                    "{} connection from {remote}: no TLS session: {e}",
                    port.name()
                );
                None
            }
        }
    }

    /// Whether `slot` must be read again after a short read: a TLS stream's plaintext comes
    /// a record at a time, so a short one says nothing of the socket.
    pub(super) fn tls_read_more(&self, slot: usize) -> bool {
        self.conns.get(slot).is_some_and(|c| c.stream.is_tls())
    }

    /// After reading `slot`: counts a finished handshake, and has records rustls holds (its
    /// handshake answers) written when the socket has room.
    pub(super) fn tls_after_read(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.stream.take_yielded() && c.flags & RESUME == 0 {
            // Many records without data: the rest of the socket waits for the next turn.
            c.flags |= RESUME;
            self.resume.push(slot);
        }
        let news = c.stream.take_handshake_news();
        if news {
            self.stats.tls_handshakes += 1;
        }
        // Records the handshake left, or output queued before its end, go out now.
        if c.stream.tls_pending() || (news && !c.out.is_empty()) {
            self.mark_dirty(slot);
        }
    }

    /// A read of `slot` failed with `e`: when TLS refused the peer, count it and, for a plain
    /// client on a TLS port, tell it in its own protocol. The caller closes the connection.
    pub(super) fn tls_read_failed(&mut self, slot: usize, e: &io::Error) {
        let Some(failure) = crate::stream::tls_failure(e) else {
            return;
        };
        self.stats.tls_refused += 1;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        log::info!(
            "{} connection {} from {}: {failure}; closing",
            c.port.name(),
            c.id,
            c.remote
        );
        if let (TlsFailure::NotTls(_), Some(tcp)) = (failure, c.stream.tcp()) {
            let why = "this port speaks TLS: use https://, wss:// or tls://";
            let bytes = match c.port {
                Port::Text => crate::proto::text::error_reply(why),
                Port::Ws | Port::Http | Port::Sio => {
                    crate::proto::http::text(400, &format!("{why}\n"), false)
                }
            };
            // Take what it sent first: unread input would make the close a reset.
            let _ = tcp.read(&mut [0u8; 4096]);
            let _ = tcp.write(&bytes);
        }
    }

    /// The first bytes of a plain connection: a TLS ClientHello on a port that does not speak
    /// TLS gets a `handshake_failure` alert (which its client reports, instead of choking on a
    /// plain answer), is counted, and closes. Returns whether it was one.
    pub(super) fn tls_on_plain(&mut self, slot: usize, first: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(slot) else {
            return false;
        };
        if !matches!(c.stream, Stream::Plain(_))
            || first.len() < 3
            || first[0] != TLS_HANDSHAKE
            || first[1] != 3
        {
            return false;
        }
        self.stats.tls_on_plain += 1;
        log::info!(
            "{} connection {} from {}: a TLS handshake on a port without TLS; closing",
            c.port.name(),
            c.id,
            c.remote
        );
        if let Some(tcp) = c.stream.tcp() {
            let _ = tcp.write(&ALERT_HANDSHAKE_FAILURE);
        }
        self.close(slot);
        true
    }

    /// Closes TLS connections whose handshake did not finish within `auth_timeout` of their
    /// accept (a client that stalls, or trickles its ClientHello).
    pub(super) fn tls_sweep(&mut self, deadline: u32) {
        if self.tls.is_empty() {
            return;
        }
        let now = self.now;
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.stream.handshaking() && now.saturating_sub(c.since) >= deadline)
            .map(|(slot, _)| slot)
            .collect();
        for slot in late {
            self.stats.tls_refused += 1;
            if let Some(c) = self.conns.get(slot) {
                log::info!(
                    "{} connection {} from {}: TLS handshake not finished in time; closing",
                    c.port.name(),
                    c.id,
                    c.remote
                );
            }
            self.close(slot);
        }
    }

    /// Hands a Socket.IO connection `slot` whose stream is not a plain TCP socket to the
    /// worker `pid` (see the module header): a TLS connection stays here behind a relay and
    /// the owner gets a socket pair's end; a relayed one passes its own end on. `raw` is what
    /// was read and not served. Whether it was sent (the caller then closes the slot, which
    /// now holds only this worker's copy of what was sent).
    pub(super) fn tls_handoff(&mut self, slot: usize, pid: u32, raw: &[u8]) -> bool {
        let Some(c) = self.conns.get(slot) else {
            return false;
        };
        let (remote, is_tls, fd) = (c.remote, c.stream.is_tls(), c.stream.as_raw_fd());
        let mut msg = Vec::with_capacity(RELAY_MARK.len() + 48 + raw.len());
        msg.extend_from_slice(RELAY_MARK);
        msg.extend_from_slice(format!("{remote}\n").as_bytes());
        msg.extend_from_slice(raw);
        if !is_tls {
            return self.send_fd(pid, fd, &msg);
        }
        let (mine, theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("socket pair for a TLS socket.io connection: {e}");
                return false;
            }
        };
        if mine.set_nonblocking(true).is_err() || theirs.set_nonblocking(true).is_err() {
            return false;
        }
        if !self.send_fd(pid, theirs.as_raw_fd(), &msg) {
            return false;
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return true;
        };
        // The slot keeps `theirs` (closed with the slot); the TLS stream becomes the relay's.
        let mut tls =
            std::mem::replace(&mut c.stream, Stream::Relayed(UnixStream::from_std(theirs)));
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut tls);
        let entry = self.relays.vacant_entry();
        let key = entry.key();
        let mut pair = UnixStream::from_std(mine);
        let both = Interest::READABLE | Interest::WRITABLE;
        if reg
            .register(&mut tls, Token(RELAY_BASE + 2 * key), both)
            .and_then(|()| reg.register(&mut pair, Token(RELAY_BASE + 2 * key + 1), both))
            .is_err()
        {
            // Sent, but cannot be served from here: the owner's end sees EOF at once.
            return true;
        }
        entry.insert(Relay {
            tls,
            pair,
            up: Vec::new(),
            down: Vec::new(),
            up_done: false,
            down_done: false,
            remote,
        });
        self.stats.tls_relayed += 1;
        // What rustls already decrypted, or the socket already holds, moves now.
        self.on_relay(key);
        true
    }

    /// Adopts a relayed connection a sibling handed over: `fd` is a Unix socket carrying the
    /// decrypted bytes, `data` the hand-off datagram. Returns false when `data` is not a
    /// relay's (the caller adopts a TCP socket).
    pub(super) fn adopt_relayed(&mut self, fd: RawFd, data: &[u8]) -> bool {
        let Some((remote, raw)) = relayed(data) else {
            return false;
        };
        // SAFETY: `fd` arrived in SCM_RIGHTS just now: a new descriptor that this process owns
        // and nothing else refers to.
        let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        // Only a sibling's socket pair carries a relay; anything else is dropped (closed).
        let unix = socket2::SockRef::from(&std_stream)
            .domain()
            .is_ok_and(|d| d == socket2::Domain::UNIX);
        if !unix || std_stream.set_nonblocking(true).is_err() {
            log::warn!("a relayed socket.io connection that is not a socket pair: dropped");
            return true;
        }
        self.stats.adopted += 1;
        let mut bytes = raw.to_vec();
        let stream = Stream::Relayed(UnixStream::from_std(std_stream));
        self.add_conn_with(stream, remote, Port::Sio, Some(&mut bytes));
        true
    }

    /// Stop or drain end: every relay ends (its client gets `close_notify`, the owner's end
    /// EOF), as the clients' own connections do.
    pub(super) fn tls_end_relays(&mut self) {
        let reg = self.poll.registry();
        for mut r in self.relays.drain() {
            r.tls.goodbye();
            let _ = reg.deregister(&mut r.tls);
            let _ = reg.deregister(&mut r.pair);
        }
    }

    /// A relay's socket is ready: moves bytes both ways until neither side can go on.
    pub(super) fn on_relay(&mut self, key: usize) {
        // On the stack: a relay starts while the worker's read buffer is lent out.
        let mut buf = [0u8; RELAY_CHUNK];
        let done = match self.relays.get_mut(key) {
            Some(r) => match r.pump(&mut buf) {
                // 64 KiB of records without data from a client already served: abuse, and
                // a relay has no later turn to read the rest in.
                Ok(_) if r.tls.take_yielded() => {
                    log::info!("relay for {}: records without data; closing", r.remote);
                    true
                }
                Ok(done) => done,
                Err(e) => {
                    log::debug!("relay for {}: {e}", r.remote);
                    true
                }
            },
            None => false,
        };
        if done {
            let mut r = self.relays.remove(key);
            r.tls.goodbye();
            let reg = self.poll.registry();
            let _ = reg.deregister(&mut r.tls);
            let _ = reg.deregister(&mut r.pair);
        }
    }
}

impl Relay {
    /// Moves what can move; `Ok(true)` once both directions have ended.
    fn pump(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        loop {
            let mut moved = false;
            if !self.up_done {
                moved |= carry(&mut self.tls, &mut self.pair, &mut self.up, buf, |p| {
                    p.shutdown(std::net::Shutdown::Write)
                })
                .map(|(m, end)| {
                    self.up_done = end;
                    m
                })?;
            }
            if !self.down_done {
                moved |= carry(&mut self.pair, &mut self.tls, &mut self.down, buf, |t| {
                    t.shutdown(std::net::Shutdown::Write)
                })
                .map(|(m, end)| {
                    self.down_done = end;
                    m
                })?;
            }
            // Records the TLS session still holds go out as the socket takes them.
            match self.tls.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.up_done && self.down_done {
                return Ok(true);
            }
            if !moved {
                return Ok(false);
            }
        }
    }
}

/// One direction of a relay: writes what `pending` holds to `to`, then reads `from` into
/// `buf` and writes that on, keeping what `to` does not take. Returns whether bytes moved,
/// and whether `from` ended (then `end` was applied to `to`).
fn carry<R: Read, W: Write>(
    from: &mut R,
    to: &mut W,
    pending: &mut Vec<u8>,
    buf: &mut [u8],
    end: impl FnOnce(&mut W) -> io::Result<()>,
) -> io::Result<(bool, bool)> {
    let mut moved = false;
    if !pending.is_empty() {
        match to.write(pending) {
            Ok(n) => {
                pending.drain(..n);
                moved |= n > 0;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, false)),
            Err(e) => return Err(e),
        }
        if !pending.is_empty() {
            return Ok((moved, false));
        }
        *pending = Vec::new();
    }
    match from.read(buf) {
        Ok(0) => {
            let _ = to.flush();
            let _ = end(to);
            Ok((true, true))
        }
        Ok(n) => {
            let mut off = 0;
            while off < n {
                match to.write(&buf[off..n]) {
                    Ok(0) => break,
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if off < n {
                pending.extend_from_slice(&buf[off..n]);
            }
            Ok((true, false))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((moved, false)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok((true, false)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_datagram_names_its_client() {
        let msg = b"\0relay 127.0.0.1:4567\nGET / HTTP/1.1\r\n\r\n";
        let (addr, raw) = relayed(msg).unwrap();
        assert_eq!(addr.port(), 4567);
        assert_eq!(raw, b"GET / HTTP/1.1\r\n\r\n");
        assert!(relayed(b"GET / HTTP/1.1\r\n\r\n").is_none());
        assert!(relayed(b"\0relay nonsense\nGET").is_none());
    }
}
