//! A connection's byte stream: a plain TCP socket, a TCP socket speaking TLS, or the worker's
//! end of a Unix socket pair carrying the decrypted bytes of a TLS connection another worker
//! keeps (a Socket.IO request relayed to the worker owning its session, see `event_loop::tls`).
//!
//! Every variant reads and writes plaintext, so the protocols above, the output queue and the
//! flush see one kind of stream. The TLS variant drives a rustls `ServerConnection` without
//! blocking:
//!
//! - `read` returns plaintext rustls already decrypted, else reads the socket once
//!   (`read_tls`), processes the records, answers what the handshake asks (`write_tls`, as
//!   far as the socket takes it) and tries again; `WouldBlock` when the socket is empty.
//! - `write`/`write_vectored` hand plaintext to rustls, which encrypts it into its bounded
//!   send buffer (`set_buffer_limit`), then write the records out; when that buffer is full
//!   and the socket takes nothing, `WouldBlock`, so the caller's queue keeps the rest (the
//!   frames queued by reference, never copied per connection until encrypted).
//! - `flush` writes out the records rustls still holds: `WouldBlock` while the socket is
//!   full. The output queue calls it after its last write, so "all written" means the
//!   ciphertext too.
//!
//! Before its first record, a TLS stream looks at the first byte: anything but a handshake
//! record (a plain HTTP request, a JSON line) is refused with [`not_tls`] rather than a TLS
//! alert the plain client could not read.

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// The first byte of a TLS handshake record (content type 22).
pub const TLS_HANDSHAKE: u8 = 0x16;

/// Why a TLS stream failed, carried inside the `io::Error` its `read` returns, so the loop
/// can count the refusal and tell a plain client in its own words.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// The peer's first byte is not a TLS handshake record: a plain client.
    #[error("not a TLS client (first byte {0:#04x})")]
    NotTls(u8),
    /// rustls refused what the peer sent (a bad or truncated handshake, a missing client
    /// certificate, a renegotiation attempt, a bad record).
    #[error("TLS: {0}")]
    Refused(rustls::Error),
}

/// The TLS failure inside `e`, if it is one.
pub fn tls_failure(e: &io::Error) -> Option<&TlsFailure> {
    e.get_ref().and_then(|i| i.downcast_ref::<TlsFailure>())
}

/// The error a TLS stream's read returns for a plain client.
fn not_tls(byte: u8) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure::NotTls(byte))
}

/// A TCP socket and its TLS session.
pub struct Tls {
    /// The socket (ciphertext).
    pub tcp: TcpStream,
    /// The session: handshake state, keys, bounded record buffers.
    pub session: ServerConnection,
    /// No byte was read yet: the first one decides whether the peer speaks TLS at all.
    fresh: bool,
    /// The handshake finished and the loop has not been told yet (it counts it).
    handshake_news: bool,
}

/// What a connection reads and writes plaintext through.
pub enum Stream {
    /// A plain TCP connection.
    Plain(TcpStream),
    /// A TCP connection speaking TLS (boxed: the session is large, and most connections of a
    /// server with TLS off never have one).
    Tls(Box<Tls>),
    /// A Socket.IO connection relayed by the sibling that keeps its TLS session: decrypted
    /// bytes over a Unix socket pair.
    Relayed(UnixStream),
}

impl Stream {
    /// A TLS stream over `tcp` for a new session.
    pub fn tls(tcp: TcpStream, mut session: ServerConnection) -> Stream {
        session.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
        Stream::Tls(Box::new(Tls {
            tcp,
            session,
            fresh: true,
            handshake_news: false,
        }))
    }

    /// Whether it speaks TLS on this socket.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// A TLS handshake is under way (not yet finished).
    pub fn handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.session.is_handshaking())
    }

    /// The handshake finished since the last call (once per connection).
    pub fn take_handshake_news(&mut self) -> bool {
        match self {
            Stream::Tls(t) => std::mem::take(&mut t.handshake_news),
            _ => false,
        }
    }

    /// rustls holds records not yet written to the socket (a handshake answer, an alert).
    pub fn tls_pending(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.session.wants_write())
    }

    /// The TCP socket, when there is one (raw bytes, below any TLS).
    pub fn tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(&mut t.tcp),
            Stream::Relayed(_) => None,
        }
    }

    /// Sets `TCP_NODELAY` (nothing to do on a relay's Unix socket).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_nodelay(on),
            Stream::Tls(t) => t.tcp.set_nodelay(on),
            Stream::Relayed(_) => Ok(()),
        }
    }

    /// Shuts the socket down; for writing, a TLS session says `close_notify` first (best
    /// effort: what the socket does not take now is lost with the close).
    pub fn shutdown(&mut self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown(how),
            Stream::Tls(t) => {
                if how != std::net::Shutdown::Read {
                    t.goodbye();
                }
                t.tcp.shutdown(how)
            }
            Stream::Relayed(s) => s.shutdown(how),
        }
    }

    /// A TLS session's `close_notify`, best effort, before the socket is closed.
    pub fn goodbye(&mut self) {
        if let Stream::Tls(t) = self {
            t.goodbye();
        }
    }
}

impl Tls {
    /// Sends `close_notify` once, as far as the socket takes it now.
    fn goodbye(&mut self) {
        if !self.session.is_handshaking() {
            self.session.send_close_notify();
        }
        let _ = self.push();
    }

    /// Writes the records rustls holds until it holds none (`Ok(true)`) or the socket is
    /// full (`Ok(false)`).
    fn push(&mut self) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads plaintext (see the module header).
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fresh {
            let mut first = [0u8; 1];
            match self.tcp.peek(&mut first)? {
                0 => return Ok(0),
                _ if first[0] != TLS_HANDSHAKE => return Err(not_tls(first[0])),
                _ => self.fresh = false,
            }
        }
        loop {
            match self.session.reader().read(buf) {
                // Plaintext, or 0 after the peer's close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: an end like any other here
                // (the protocols above frame their own messages).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.session.read_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let was_handshaking = self.session.is_handshaking();
            if let Err(e) = self.session.process_new_packets() {
                // Tell the peer why (rustls queued the alert), then fail.
                let _ = self.push();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    TlsFailure::Refused(e),
                ));
            }
            if was_handshaking && !self.session.is_handshaking() {
                self.handshake_news = true;
            }
            // The handshake's answers (and tickets) go out now, as far as the socket takes
            // them; the loop flushes the rest when the socket has room.
            self.push()?;
        }
    }

    /// Encrypts what of `bufs` rustls's send buffer takes and writes records out.
    fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Room first: records waiting are older than this plaintext.
        let drained = self.push()?;
        let n = self.session.writer().write_vectored(bufs)?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if n == 0 && total > 0 {
            // The buffer is at its limit and the socket takes nothing: wait for WRITABLE
            // (or, during the handshake, for its end, which flushes the connection again).
            let _ = drained;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.push()?;
        Ok(n)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read_plain(buf),
            Stream::Relayed(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write_plain(&[IoSlice::new(buf)]),
            Stream::Relayed(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(t) => t.write_plain(bufs),
            Stream::Relayed(s) => s.write_vectored(bufs),
        }
    }

    /// Writes out the records a TLS session holds (`WouldBlock` while the socket is full);
    /// nothing to do for the others.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(t) => match t.push()? {
                true => Ok(()),
                false => Err(io::ErrorKind::WouldBlock.into()),
            },
            Stream::Plain(_) | Stream::Relayed(_) => Ok(()),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.register(r, t, i),
            Stream::Tls(s) => s.tcp.register(r, t, i),
            Stream::Relayed(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.reregister(r, t, i),
            Stream::Tls(s) => s.tcp.reregister(r, t, i),
            Stream::Relayed(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.deregister(r),
            Stream::Tls(s) => s.tcp.deregister(r),
            Stream::Relayed(s) => s.deregister(r),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.tcp.as_raw_fd(),
            Stream::Relayed(s) => s.as_raw_fd(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Plain(s) => s.as_fd(),
            Stream::Tls(t) => t.tcp.as_fd(),
            Stream::Relayed(s) => s.as_fd(),
        }
    }
}
