//! [`Channel`]: one end of a non-blocking Unix stream that carries typed frames.
//!
//! Output is appended to one buffer and written in as few `write` calls as the socket allows
//! (every frame queued in a loop turn shares the next flush). The buffer is bounded: `send`
//! refuses with [`ChannelError::Full`] once `max_pending` bytes wait for a peer that does not
//! read, and the caller decides what an undeliverable message means (a push counts it as
//! undelivered there; it is never dropped silently). Input is drained until `WouldBlock`, as mio
//! requires, and every whole frame is decoded.

use crate::codec::{read_frame, write_frame, CodecError, Wire, FRAME_HEADER};
use mio::event::Source;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use thiserror::Error;

/// What can go wrong on a channel.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("channel I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("channel protocol: {0}")]
    Codec(#[from] CodecError),
    /// The output buffer is at its bound; the message was not queued.
    #[error("channel output full ({pending} bytes pending)")]
    Full {
        /// Bytes waiting when the message was refused.
        pending: usize,
    },
    /// The peer closed its end.
    #[error("channel closed by peer")]
    Closed,
}

/// A typed, bounded, non-blocking frame channel over a Unix stream.
pub struct Channel<Tx, Rx> {
    /// The socket; registered on the owner's `Poll` through the `Source` impl.
    stream: UnixStream,
    /// Bytes read but not yet a whole frame.
    rbuf: Vec<u8>,
    /// Encoded frames not yet written; `wpos` marks how much of it was.
    wbuf: Vec<u8>,
    /// Start of the unwritten part of `wbuf`.
    wpos: usize,
    /// Bound on unwritten bytes: past it `send` refuses.
    max_pending: usize,
    /// Frames of a kind this build does not know (a newer sibling's, during a reload to a
    /// new binary), skipped whole instead of ending the link.
    pub skipped: u64,
    /// Ties the channel to what it sends and receives, so a worker cannot send a control
    /// message on a mesh link.
    _types: PhantomData<fn(Tx) -> Rx>,
}

impl<Tx: Wire, Rx: Wire> Channel<Tx, Rx> {
    /// Wraps a connected non-blocking stream.
    pub fn new(stream: UnixStream, max_pending: usize) -> Self {
        Channel {
            stream,
            rbuf: Vec::new(),
            skipped: 0,
            wbuf: Vec::new(),
            wpos: 0,
            max_pending,
            _types: PhantomData,
        }
    }

    /// Wraps a connected std stream, switching it to non-blocking mode.
    pub fn from_std(
        stream: std::os::unix::net::UnixStream,
        max_pending: usize,
    ) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::new(UnixStream::from_std(stream), max_pending))
    }

    /// Queues `msg`; it is written by the next [`flush`](Self::flush).
    pub fn send(&mut self, msg: &Tx) -> Result<(), ChannelError> {
        let pending = self.pending();
        if pending >= self.max_pending {
            return Err(ChannelError::Full { pending });
        }
        if self.wpos > 0 && self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        write_frame(msg, &mut self.wbuf)?;
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes queued bytes until done (`Ok(true)`) or the socket is full (`Ok(false)`: wait
    /// for WRITABLE).
    pub fn flush(&mut self) -> Result<bool, ChannelError> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Give back what was written, so the buffer does not creep.
                    if self.wpos > 64 * 1024 {
                        self.wbuf.drain(..self.wpos);
                        self.wpos = 0;
                    }
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 256 * 1024 {
            self.wbuf.shrink_to(64 * 1024);
        }
        Ok(true)
    }

    /// Reads until `WouldBlock` and appends every whole frame to `out`. `Err(Closed)` when the
    /// peer hung up (frames read before that are still in `out`).
    pub fn receive(&mut self, out: &mut Vec<Rx>) -> Result<(), ChannelError> {
        let mut closed = false;
        loop {
            // Read into a window of 64 KiB past what is kept: zeroing the whole capacity
            // (a megabyte after a big answer) before every read would cost more than the read.
            let len = self.rbuf.len();
            self.rbuf.resize(len + 64 * 1024, 0);
            match self.stream.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    closed = true;
                    break;
                }
                Ok(n) => self.rbuf.truncate(len + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rbuf.truncate(len);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.rbuf.truncate(len),
                Err(e) => {
                    self.rbuf.truncate(len);
                    return Err(e.into());
                }
            }
            self.decode_into(out)?;
        }
        self.decode_into(out)?;
        if closed {
            return Err(ChannelError::Closed);
        }
        Ok(())
    }

    fn decode_into(&mut self, out: &mut Vec<Rx>) -> Result<(), ChannelError> {
        let mut used = 0;
        loop {
            match read_frame::<Rx>(&self.rbuf[used..]) {
                Ok(Some((msg, n))) => {
                    out.push(msg);
                    used += n;
                }
                Ok(None) => break,
                // A whole frame of a kind this build does not know: skipped, so that a sibling
                // of a newer build (a reload to a new binary) cannot end the link with a
                // message added since; the frame's length is in its header.
                Err(CodecError::UnknownKind(_)) => {
                    let b = &self.rbuf[used..];
                    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    used += FRAME_HEADER + len;
                    self.skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if used > 0 {
            self.rbuf.drain(..used);
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 256 * 1024 {
            self.rbuf = Vec::new();
        }
        Ok(())
    }

    /// The underlying stream (for its fd, or peer credentials).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl<Tx, Rx> Source for Channel<Tx, Rx> {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.stream.register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.stream.reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.stream.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::PeerMsg;

    fn pair() -> (Channel<PeerMsg, PeerMsg>, Channel<PeerMsg, PeerMsg>) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            Channel::from_std(a, 1024).unwrap(),
            Channel::from_std(b, 1024).unwrap(),
        )
    }

    #[test]
    fn frames_cross_and_batch() {
        let (mut a, mut b) = pair();
        for i in 0..10 {
            a.send(&PeerMsg::Delivered { id: i, count: 1 }).unwrap();
        }
        assert!(a.flush().unwrap());
        let mut got = Vec::new();
        b.receive(&mut got).unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(got[9], PeerMsg::Delivered { id: 9, count: 1 });
    }

    #[test]
    fn bounded_output_refuses_instead_of_growing() {
        let (mut a, _b) = pair();
        let big = PeerMsg::Query {
            id: 1,
            query: crate::Query::Online {
                uid: "x".repeat(600),
            },
        };
        a.send(&big).unwrap();
        a.send(&big).unwrap();
        assert!(matches!(a.send(&big), Err(ChannelError::Full { .. })));
    }

    #[test]
    fn hostile_length_closes_with_typed_error() {
        let (a, mut b) = pair();
        let mut raw: std::os::unix::net::UnixStream = {
            use std::os::fd::{FromRawFd, IntoRawFd};
            let fd = a.stream.into_raw_fd();
            // SAFETY: `fd` was just released by `into_raw_fd`, so it is open and owned by no one else.
            unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) }
        };
        raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut got = Vec::new();
        assert!(matches!(
            b.receive(&mut got),
            Err(ChannelError::Codec(CodecError::TooLarge(_)))
        ));
    }

    #[test]
    fn frames_of_an_unknown_kind_are_skipped_not_fatal() {
        let (a, mut b) = pair();
        let mut raw: std::os::unix::net::UnixStream = {
            use std::os::fd::{FromRawFd, IntoRawFd};
            let fd = a.stream.into_raw_fd();
            // SAFETY: `fd` was just released by `into_raw_fd`, so it is open and owned by no one else.
            unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) }
        };
        // A frame of kind 250 (a newer build's), then a known one.
        raw.write_all(&[0, 0, 0, 4, 250, 1, 2, 3]).unwrap();
        let mut known = Vec::new();
        write_frame(&PeerMsg::Delivered { id: 5, count: 2 }, &mut known).unwrap();
        raw.write_all(&known).unwrap();
        let mut got = Vec::new();
        b.receive(&mut got).unwrap();
        assert_eq!(got, vec![PeerMsg::Delivered { id: 5, count: 2 }]);
        assert_eq!(b.skipped, 1);
    }

    #[test]
    fn hangup_is_closed() {
        let (a, mut b) = pair();
        drop(a);
        let mut got = Vec::new();
        assert!(matches!(b.receive(&mut got), Err(ChannelError::Closed)));
    }
}
