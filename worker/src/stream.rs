//! A connection's byte stream: a plain TCP socket, a TCP socket speaking TLS, or the worker's
//! end of a Unix socket pair carrying the decrypted bytes of a TLS connection another worker
//! keeps (a Socket.IO request relayed to the worker owning its session, see `event_loop::tls`).
//!
//! Every variant reads and writes plaintext, so the protocols above, the output queue and the
//! flush see one kind of stream. The TLS variant drives rustls's unbuffered server connection
//! without blocking; the session holds the protocol state and keys only, and the bytes in
//! flight are in three vectors of [`Tls`] that are empty and unallocated while the connection
//! is idle (rustls's buffered connection keeps a 4 KiB read buffer per connection for good):
//!
//! - `read` returns plaintext already decrypted, else reads the socket once (one record's
//!   worth, on the stack), appends it to what was left of an incomplete record, lets rustls
//!   decrypt every whole record in place and answer what the handshake asks, writes those
//!   answers as far as the socket takes them, and tries again; `WouldBlock` when the socket is
//!   empty. Only an incomplete record's bytes stay with the connection.
//! - `write`/`write_vectored` encrypt up to one record of plaintext (small frames queued
//!   together become one record) into the connection's output, bounded by
//!   [`crate::tls::BUFFER_LIMIT`], then write it out; when that output is full and the socket
//!   takes nothing, `WouldBlock`, so the caller's queue keeps the rest (the frames queued by
//!   reference, never copied per connection until encrypted).
//! - `flush` writes out the records still held: `WouldBlock` while the socket is full. The
//!   output queue calls it after its last write, so "all written" means the ciphertext too.
//!
//! After a failure (a bad record, a refused handshake) rustls's alert is written and the
//! session is never called again.
//!
//! Before its first record, a TLS stream looks at the first byte: anything but a handshake
//! record (a plain HTTP request, a JSON line) is refused with [`TlsFailure::NotTls`] rather than a TLS
//! alert the plain client could not read.

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::server::UnbufferedServerConnection;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

mod session;

pub use session::Tls;

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
    pub fn tls(tcp: TcpStream, session: UnbufferedServerConnection) -> Stream {
        Stream::Tls(Box::new(Tls::new(tcp, session)))
    }

    /// Whether it speaks TLS on this socket.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// A TLS handshake is under way (not yet finished).
    pub fn handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.handshaking)
    }

    /// The handshake finished since the last call (once per connection).
    pub fn take_handshake_news(&mut self) -> bool {
        match self {
            Stream::Tls(t) => std::mem::take(&mut t.handshake_news),
            _ => false,
        }
    }

    /// A read stopped early with the socket maybe not empty (once per stop): read it again.
    pub fn take_yielded(&mut self) -> bool {
        match self {
            Stream::Tls(t) => std::mem::take(&mut t.yielded),
            _ => false,
        }
    }

    /// rustls holds records not yet written to the socket (a handshake answer, an alert).
    pub fn tls_pending(&self) -> bool {
        matches!(self, Stream::Tls(t) if !t.outgoing.is_empty())
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

#[cfg(test)]
mod tests;
