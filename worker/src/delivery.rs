//! Delivery: frames encoded once and shared, and each connection's queue of references to them.
//!
//! Server-to-client WebSocket frames are unmasked, so the bytes of one message are identical for
//! every recipient: [`frame`] builds them once into a [`Bytes`], and each recipient's
//! [`OutQueue`] holds a reference-counted handle, not a copy. A connection's queue is flushed
//! once per loop turn with `writev`, so every frame queued for it in that turn shares one
//! system call. An idle connection's queue owns no heap memory.

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// WebSocket opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// WebSocket opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// WebSocket opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// WebSocket opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// WebSocket opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// The header of a final, unmasked server frame with `opcode` for a payload of `len` bytes:
/// the bytes, of which the first `.1` are used.
pub fn frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    let used = match len {
        0..=125 => {
            h[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (h, used)
}

/// Encodes one final, unmasked server frame with `opcode` around `payload`.
///
/// The buffer is allocated at its exact size, so the `Bytes` owns it directly: no separate
/// shared header is allocated unless the frame goes to more than one connection.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let (h, used) = frame_header(opcode, payload.len());
    let mut b = Vec::with_capacity(used + payload.len());
    b.extend_from_slice(&h[..used]);
    b.extend_from_slice(payload);
    Bytes::from(b)
}

/// A close frame with `code` and a short `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    // Control payloads are at most 125 bytes.
    let r = reason.as_bytes();
    p.extend_from_slice(&r[..r.len().min(123)]);
    frame(OP_CLOSE, &p)
}

/// Most buffers handed to one `writev`.
const IOV_MAX: usize = 64;
/// Buffers up to this size are copied together when more wait than one `writev` takes.
const SMALL: usize = 1024;
/// Most bytes copied together that way.
const COALESCE_MAX: usize = 64 * 1024;

/// Output waiting for one connection: shared frames and small replies, in order.
///
/// The first buffer is kept inline: a connection that gets one frame per loop turn (a push, a
/// broadcast) queues and writes it without allocating, and an idle connection owns no heap
/// memory at all.
#[derive(Default)]
pub struct OutQueue {
    /// The oldest buffer, possibly partly written (advanced past what was).
    first: Option<Bytes>,
    /// The buffers after `first`, in order (allocated only when two or more wait).
    rest: VecDeque<Bytes>,
    /// Bytes queued in all of them (u32: a queue is bounded far below 4 GiB by
    /// `max_send_buffer` and the read backpressure, and an idle connection stays small).
    len: u32,
    /// Bytes the kernel held unsent (or unacknowledged) in the socket's send buffer at the
    /// last short write; zero once a write took everything.
    kernel: u32,
}

impl OutQueue {
    /// Bytes waiting for the peer: queued here, plus what the kernel held unsent at the last
    /// short write. The `max_send_buffer` check and `connections` use it, so a client that
    /// does not read is over the cap for what it leaves in the kernel too.
    pub fn len(&self) -> usize {
        self.len as usize + self.kernel as usize
    }

    /// Nothing queued here (the kernel may still hold some).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records what the kernel holds unsent for the socket after a short write (see
    /// [`kernel_unsent`]).
    pub fn set_kernel_backlog(&mut self, bytes: usize) {
        self.kernel = u32::try_from(bytes).unwrap_or(u32::MAX);
    }

    /// Appends a buffer (a reference when it is shared).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.len = self
            .len
            .saturating_add(u32::try_from(b.len()).unwrap_or(u32::MAX));
        if self.first.is_none() {
            self.first = Some(b);
        } else {
            self.rest.push_back(b);
        }
    }

    /// Writes as much as the socket takes. `Ok(true)`: all written; `Ok(false)`: the socket is
    /// full (wait for WRITABLE). Adds the bytes written to `written`.
    pub fn flush<W: Write>(&mut self, w: &mut W, written: &mut u64) -> io::Result<bool> {
        if self.rest.len() >= IOV_MAX {
            self.coalesce();
        }
        loop {
            let res = match (&self.first, self.rest.is_empty()) {
                (None, _) => break,
                // One buffer: a plain write.
                (Some(f), true) => w.write(f),
                (Some(f), false) => {
                    let mut iov: [IoSlice<'_>; IOV_MAX] = [IoSlice::new(&[]); IOV_MAX];
                    iov[0] = IoSlice::new(f);
                    let mut k = 1;
                    for b in self.rest.iter().take(IOV_MAX - 1) {
                        iov[k] = IoSlice::new(b);
                        k += 1;
                    }
                    w.write_vectored(&iov[..k])
                }
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    *written += n as u64;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Give the ring's memory back: an idle connection holds none.
        if self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        // A TLS stream may still hold records: all written means those too.
        match w.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        // The kernel took everything: it has room, and its backlog no longer counts.
        self.kernel = 0;
        Ok(true)
    }

    /// Copies the small buffers at the front into one, so that a backend's hundreds of `ok`
    /// replies of one turn go out in one write instead of one `writev` per 64 of them. A copy
    /// of a few hundred bytes costs far less than a system call.
    fn coalesce(&mut self) {
        let mut merged: Vec<u8> = Vec::new();
        while let Some(f) = &self.first {
            if f.len() > SMALL || merged.len() + f.len() > COALESCE_MAX {
                break;
            }
            merged.extend_from_slice(f);
            self.first = self.rest.pop_front();
        }
        if merged.is_empty() {
            return;
        }
        if let Some(f) = self.first.take() {
            self.rest.push_front(f);
        }
        self.first = Some(Bytes::from(merged));
    }

    fn consume(&mut self, mut n: usize) {
        self.len = self
            .len
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        while n > 0 {
            let Some(front) = self.first.as_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.first = self.rest.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.first = None;
        self.rest = VecDeque::new();
        self.len = 0;
        self.kernel = 0;
    }
}

/// Bytes in a socket's send buffer not yet acknowledged by the peer (`SIOCOUTQ`): what the
/// kernel holds for a client. One `ioctl`, asked only after a short write.
pub fn kernel_unsent(fd: std::os::fd::RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int into `n`; an invalid fd only
    // makes it fail.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if r == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then says `WouldBlock` once `budget`
    /// is spent, like a full socket.
    struct Trickle {
        /// What was written so far.
        got: Vec<u8>,
        /// Bytes one call takes at most.
        cap: usize,
        /// Bytes left before `WouldBlock`.
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap).min(self.budget);
            self.got.extend_from_slice(&b[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(&frame(OP_TEXT, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(OP_TEXT, &[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let f = frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(&f[..2], &[0x82, 127]);
        assert_eq!(f.len(), 70_010);
        assert_eq!(&frame(OP_TEXT, &[1; 125])[..2], &[0x81, 125]);
        assert_eq!(&frame(OP_TEXT, &[1; 126])[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&frame(OP_TEXT, &[1; 65_535])[..4], &[0x81, 126, 255, 255]);
        assert_eq!(
            &frame(OP_TEXT, &[1; 65_536])[..10],
            &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(&frame(OP_PING, b"")[..], &[0x89, 0]);
    }

    #[test]
    fn one_buffer_needs_no_ring() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"frame"));
        assert_eq!(q.rest.capacity(), 0);
        let mut w = Trickle {
            got: vec![],
            cap: 2,
            budget: 100,
        };
        let mut n = 0;
        assert!(q.flush(&mut w, &mut n).unwrap());
        assert_eq!(w.got, b"frame");
        assert!(q.is_empty());
    }

    #[test]
    fn the_kernels_backlog_counts_until_a_write_takes_everything() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"0123456789"));
        let mut full = Trickle {
            got: vec![],
            cap: 4,
            budget: 4,
        };
        let mut n = 0;
        assert!(!q.flush(&mut full, &mut n).unwrap());
        // What the socket holds unsent, as SIOCOUTQ would say after the short write.
        q.set_kernel_backlog(1000);
        assert_eq!(q.len(), 6 + 1000);
        assert!(!q.is_empty());
        let mut room = Trickle {
            got: vec![],
            cap: 100,
            budget: 100,
        };
        assert!(q.flush(&mut room, &mut n).unwrap());
        assert_eq!((q.len(), q.is_empty()), (0, true));
        q.set_kernel_backlog(5);
        q.clear();
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn kernel_unsent_reads_a_sockets_send_queue() {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsRawFd;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_b, _) = l.accept().unwrap();
        assert_eq!(kernel_unsent(a.as_raw_fd()), 0);
        // The peer never reads: once its receive window is full, what is written stays here.
        a.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 65536];
        let mut sent = 0usize;
        while let Ok(k) = a.write(&chunk) {
            sent += k;
            if sent > 64 << 20 {
                break;
            }
        }
        let q = kernel_unsent(a.as_raw_fd());
        assert!(q > 0 && q <= sent, "{q} of {sent}");
        assert_eq!(kernel_unsent(-1), 0);
    }

    /// Counts the calls that reach the socket.
    struct Counting {
        /// What was written so far.
        got: Vec<u8>,
        /// Calls made.
        calls: usize,
    }

    impl Write for Counting {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            self.got.extend_from_slice(b);
            Ok(b.len())
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                self.got.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn many_small_buffers_share_one_write() {
        let mut q = OutQueue::default();
        let mut want = Vec::new();
        for i in 0..300 {
            let r: &'static [u8] = if i % 2 == 0 { b"ok\n" } else { b"fail\n" };
            q.push(Bytes::from_static(r));
            want.extend_from_slice(r);
        }
        // A big frame after them keeps its place and is not copied.
        let big = Bytes::from(vec![7u8; 5000]);
        q.push(big.clone());
        want.extend_from_slice(&big);
        let mut w = Counting {
            got: vec![],
            calls: 0,
        };
        let mut n = 0;
        assert!(q.flush(&mut w, &mut n).unwrap());
        assert_eq!(w.got, want);
        assert_eq!(n as usize, want.len());
        assert_eq!(w.calls, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn partial_writes_resume_in_order() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::from_static(b"world"));
        let mut w = Trickle {
            got: vec![],
            cap: 4,
            budget: 7,
        };
        let mut n = 0;
        assert!(!q.flush(&mut w, &mut n).unwrap());
        assert_eq!(q.len(), 4);
        w.budget = 100;
        assert!(q.flush(&mut w, &mut n).unwrap());
        assert_eq!(w.got, b"hello world");
        assert_eq!(n, 11);
        assert!(q.is_empty());
    }
}
