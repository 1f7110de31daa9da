//! The connection table's entries: one client or backend socket and its protocol state.
//!
//! Sized for hundreds of thousands of idle entries: no buffer is owned while nothing is
//! pending (`inbuf` holds only an incomplete frame, line or request; `out` only unwritten
//! output), and per-protocol state that is rarely needed (a fragmented message) is boxed.

use crate::config::Listeners;
use crate::delivery::OutQueue;
use crate::proto::ws_message::Messages;
use crate::stream::Stream;
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

/// Flag: queued in the worker's flush list for this loop turn.
pub const DIRTY: u8 = 1;
/// Flag: registered for WRITABLE because a flush left output behind.
pub const WANT_WRITE: u8 = 4;
/// Flag: not reading: its output, input or pending replies are at their bound (the peer is
/// sending faster than it reads or than its requests complete).
pub const READ_PAUSED: u8 = 8;
/// Flag: in the worker's resume list (read again next loop turn).
pub const RESUME: u8 = 16;
/// Flag: close once the output is written (after a close frame, an error response…).
pub const CLOSING: u8 = 2;
/// Flag: the peer finished sending (a read returned end of file). Nothing more is read; a
/// backend's lines and requests already read are still answered, then the connection closes
/// once the answers are written (RFC 9112 §9.6: a server reading EOF still answers).
pub const EOF_IN: u8 = 32;
/// Flag: a backend connection of a draining or stopping worker: nothing more is read as
/// requests; once every request already read is answered and written, the server shuts its
/// side for writing and reads (and discards) what the peer still sends until its EOF, so
/// that unread input cannot turn the close into a reset that destroys answers in flight.
pub const RETIRED: u8 = 64;

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The WebSocket port.
    Ws,
    /// The text port.
    Text,
    /// The HTTP port.
    Http,
    /// The Socket.IO port (Engine.IO polling requests and WebSocket transports).
    Sio,
}

impl Port {
    /// Every port, in the order they are listed (status, logs).
    pub const ALL: [Port; 4] = [Port::Ws, Port::Text, Port::Http, Port::Sio];

    /// Its place in a [`PortMap`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its configured address, if it is enabled.
    pub fn addr(self, l: &Listeners) -> Option<SocketAddr> {
        match self {
            Port::Ws => l.ws,
            Port::Text => l.text,
            Port::Http => l.http,
            Port::Sio => l.socketio,
        }
    }

    /// Name shown by `connections` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Port::Ws => "websocket",
            Port::Text => "text",
            Port::Http => "http",
            Port::Sio => "socketio",
        }
    }
}

/// One `T` per port, indexed by [`Port`].
#[derive(Debug, Default)]
pub struct PortMap<T>(pub [T; 4]);

impl<T> PortMap<T> {
    /// (port, value) pairs in [`Port::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Port, &T)> {
        Port::ALL.into_iter().zip(self.0.iter())
    }

    /// (port, value) pairs, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Port, &mut T)> {
        Port::ALL.into_iter().zip(self.0.iter_mut())
    }
}

impl<T> std::ops::Index<Port> for PortMap<T> {
    type Output = T;
    fn index(&self, p: Port) -> &T {
        &self.0[p.index()]
    }
}

impl<T> std::ops::IndexMut<Port> for PortMap<T> {
    fn index_mut(&mut self, p: Port) -> &mut T {
        &mut self.0[p.index()]
    }
}

/// WebSocket state after the handshake.
#[derive(Default)]
pub struct Ws {
    /// The uid once logged in (shared with the registry's key).
    pub uid: Option<Rc<str>>,
    /// Fragments of an unfinished message, if one is in progress.
    pub messages: Messages,
    /// A close frame was queued: send nothing more.
    pub close_sent: bool,
    /// The Socket.IO session this WebSocket carries (Engine.IO packets, not a uid login).
    pub session: Option<u32>,
}

/// Text-port state: replies kept in the order of the lines.
#[derive(Default)]
pub struct Text {
    /// The backend presented `push_secret` (or none is configured).
    pub authed: bool,
    /// One slot per line whose reply is not yet written; `None` while its push is in flight.
    pub replies: VecDeque<Option<Bytes>>,
    /// Sequence number of `replies.front()`.
    pub first_seq: u64,
}

impl Text {
    /// Reserves the next reply slot and returns its sequence number.
    pub fn reserve(&mut self) -> u64 {
        self.replies.push_back(None);
        self.first_seq + self.replies.len() as u64 - 1
    }

    /// Fills slot `seq` (the replies then ready come out of [`Text::next_ready`]).
    pub fn fill(&mut self, seq: u64, reply: Bytes) {
        if let Some(slot) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.replies.get_mut(i as usize))
        {
            *slot = Some(reply);
        }
    }

    /// The oldest reply if it is ready to write (every line before it is answered).
    pub fn next_ready(&mut self) -> Option<Bytes> {
        let Some(Some(_)) = self.replies.front() else {
            if self.replies.is_empty() && self.replies.capacity() > 64 {
                self.replies = VecDeque::new();
            }
            return None;
        };
        self.first_seq += 1;
        self.replies.pop_front().flatten()
    }
}

/// HTTP state: one request handled at a time, so pipelined responses keep their order.
#[derive(Default)]
pub struct Http {
    /// A request's push is in flight; later requests wait in `inbuf`.
    pub waiting: bool,
    /// Close after the response in flight (the request asked for it).
    pub close_after: bool,
    /// `100 Continue` already sent for the request being received.
    pub continue_sent: bool,
    /// The Socket.IO session whose long-poll GET this connection holds.
    pub poll_for: Option<u32>,
    /// A pipelined request for another worker's session waits until the answers to the
    /// earlier ones are written: the connection then changes hands with nothing pending.
    pub handoff_after_flush: bool,
    /// How far the chunked body of the request being received was read (reset per request).
    pub chunks: crate::proto::http::ChunkScan,
    /// When the first byte of the request being received was handled (worker clock ticks; 0:
    /// none is being received): `header_timeout` counts from here, whatever trickles in.
    pub started: u32,
}

/// Protocol state.
pub enum Proto {
    /// WebSocket port, opening handshake not complete.
    Handshake,
    /// WebSocket after the handshake.
    Ws(Ws),
    /// Text port.
    Text(Text),
    /// HTTP port.
    Http(Http),
    /// A TLS connection over a limit (`max_connections`, `max_connections_per_ip`): it is
    /// refused in words once its handshake is done and its first bytes arrive, since a refusal
    /// in plain text before the handshake reads as a protocol error to a TLS client.
    Refused {
        /// HTTP status of the refusal (503, 429).
        status: u16,
        /// What the refusal says.
        why: &'static str,
    },
}

/// One accepted socket.
pub struct Conn {
    /// The socket, plain or speaking TLS (registered READABLE, and WRITABLE while a flush left
    /// output behind; edge-triggered).
    pub stream: Stream,
    /// Peer address, for logs and `connections`.
    pub remote: SocketAddr,
    /// Unique per worker; guards replies against a slot reused by a newer connection.
    pub id: u64,
    /// Which port.
    pub port: Port,
    /// Protocol state.
    pub proto: Proto,
    /// Unwritten output.
    pub out: OutQueue,
    /// Bytes of an incomplete frame, line or request (empty, unallocated, when idle).
    pub inbuf: Vec<u8>,
    /// Bytes read, for `connections`.
    pub bytes_in: u64,
    /// Bytes written, for `connections`.
    pub bytes_out: u64,
    /// [`DIRTY`], [`CLOSING`], [`EOF_IN`], [`RETIRED`]…
    pub flags: u8,
    /// When accepted (worker clock ticks): the handshake and login deadline count from here.
    pub since: u32,
    /// Last time bytes arrived (ticks): the idle timeout counts from here.
    pub last_seen: u32,
    /// Since when pushes to it are being dropped for a full queue (ticks; 0: not slow).
    pub slow_since: u32,
}

impl Conn {
    /// A backend's connection (the text port, the HTTP port): its lines and requests are
    /// pushes and queries, each answered; a draining or stopping worker retires it.
    pub fn is_backend(&self) -> bool {
        matches!(self.port, Port::Text | Port::Http)
    }

    /// Every line or request read from it has its answer queued: no text reply and no HTTP
    /// response waits (for siblings, or for a long poll's packets).
    pub fn answered(&self) -> bool {
        match &self.proto {
            Proto::Text(t) => t.replies.is_empty(),
            Proto::Http(h) => !h.waiting,
            Proto::Handshake | Proto::Ws(_) | Proto::Refused { .. } => true,
        }
    }

    /// Whether its socket is read: not after its EOF, nor once retired (until it is closing,
    /// when what the peer still sends is read and discarded).
    pub fn reads(&self) -> bool {
        self.flags & EOF_IN == 0 && self.flags & (RETIRED | CLOSING) != RETIRED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_come_out_in_line_order() {
        let mut t = Text::default();
        let a = t.reserve();
        let b = t.reserve();
        let c = t.reserve();
        let ready = |t: &mut Text| std::iter::from_fn(|| t.next_ready()).collect::<Vec<_>>();
        t.fill(b, Bytes::from_static(b"B"));
        assert!(ready(&mut t).is_empty());
        t.fill(a, Bytes::from_static(b"A"));
        assert_eq!(
            ready(&mut t),
            vec![Bytes::from_static(b"A"), Bytes::from_static(b"B")]
        );
        t.fill(c, Bytes::from_static(b"C"));
        assert_eq!(ready(&mut t), vec![Bytes::from_static(b"C")]);
        assert!(t.replies.is_empty());
    }
}
