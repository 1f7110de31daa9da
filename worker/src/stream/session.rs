//! One TLS connection on rustls's unbuffered API (see the parent module's header): the
//! session, the three buffers it needs only while bytes are in flight, and the reading,
//! writing and closing that drive it.

use super::{not_tls, TlsFailure, TLS_HANDSHAKE};
use mio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus,
};
use std::io::{self, IoSlice, Read, Write};

/// Most bytes of incomplete records kept from the peer: a handshake message may be up to 64 KiB
/// (rustls's own bound), a record 16 KiB plus its overhead.
const MAX_INCOMING: usize = 64 * 1024 + 512;
/// Bytes read from the socket at a time (one full record).
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Plaintext encrypted at a time: several small frames become one record.
const RECORD: usize = 16 * 1024;
/// What a record adds to its plaintext at most (header, content type, nonce, tag), with room.
const RECORD_OVERHEAD: usize = 64;
/// Ciphertext one read takes from the socket at most while it yields no plaintext (records
/// without data: empty ones, alerts, handshake messages), so that a peer cannot hold the loop.
const READ_CAP: usize = 4 * READ_CHUNK;

/// A TCP socket and its TLS session, on rustls's unbuffered API: the session holds only the
/// protocol state and keys; the bytes in flight are in three vectors of this struct that own
/// no memory while the connection is idle (an incomplete record, records not yet written,
/// plaintext not yet read).
pub struct Tls {
    /// The socket (ciphertext).
    pub tcp: TcpStream,
    /// The session: handshake state and keys.
    session: UnbufferedServerConnection,
    /// Ciphertext read and not yet processed: an incomplete record (empty when idle).
    pub(super) incoming: Vec<u8>,
    /// Records encoded and not yet written (empty when idle; bounded by `BUFFER_LIMIT`).
    pub(super) outgoing: Vec<u8>,
    /// Plaintext decrypted and not yet read (empty when idle).
    pub(super) plain: Vec<u8>,
    /// How much of `plain` was read.
    pub(super) plain_at: usize,
    /// No byte was read yet: the first one decides whether the peer speaks TLS at all.
    pub(super) fresh: bool,
    /// The handshake is not finished.
    pub(super) handshaking: bool,
    /// The handshake finished and the loop has not been told yet (it counts it).
    pub(super) handshake_news: bool,
    /// The peer said `close_notify`, or closed TCP: nothing more will be read.
    pub(super) ended: bool,
    /// `close_notify` was queued.
    pub(super) bye_sent: bool,
    /// The session failed: rustls must not be called again (its positions in `incoming` no
    /// longer hold).
    pub(super) failed: bool,
    /// A read stopped at [`READ_CAP`] without plaintext, with the socket maybe not empty: the
    /// loop reads it again next turn (edge-triggered readiness will not say so again).
    pub(super) yielded: bool,
}

/// Appends what `encode` writes to `out`, sized exactly: `encode` is first asked with no room,
/// which makes it say how much it needs.
fn append<E>(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    need: impl Fn(&E) -> Option<usize>,
) -> Result<usize, E> {
    let size = match encode(&mut []) {
        Ok(n) => return Ok(n),
        Err(e) => match need(&e) {
            Some(n) => n,
            None => return Err(e),
        },
    };
    let start = out.len();
    out.resize(start + size, 0);
    match encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(n)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Encodes a handshake record into `out`.
fn encode_hs(out: &mut Vec<u8>, e: &mut EncodeTlsData<'_, ServerConnectionData>) {
    let _ = append(
        out,
        |b| e.encode(b),
        |err| match err {
            EncodeError::InsufficientSize(s) => Some(s.required_size),
            _ => None,
        },
    );
}

/// How much room an encryption needs, when that is what it said.
fn encrypt_need(err: &EncryptError) -> Option<usize> {
    match err {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// The error a TLS failure makes.
fn refused(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, TlsFailure::Refused(e))
}

impl Tls {
    /// A new session's stream over `tcp`.
    pub(super) fn new(tcp: TcpStream, session: UnbufferedServerConnection) -> Tls {
        Tls {
            tcp,
            session,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            fresh: true,
            handshaking: true,
            handshake_news: false,
            ended: false,
            bye_sent: false,
            failed: false,
            yielded: false,
        }
    }

    /// Runs the session over `incoming` until it needs more bytes from the peer: decrypted
    /// application data goes to `plain`, handshake records to `outgoing`. With `app`, that
    /// plaintext is encrypted into `outgoing` once the session can send (`Ok(true)`; `Ok(false)`
    /// while the handshake is not finished).
    fn run(&mut self, app: Option<&[u8]>) -> Result<bool, rustls::Error> {
        if self.failed {
            return Err(rustls::Error::General("the TLS session failed".into()));
        }
        let mut sent = false;
        loop {
            let mut failure = None;
            let UnbufferedStatus { discard, state } =
                self.session.process_tls_records(&mut self.incoming);
            let mut stop = false;
            match state {
                Err(e) => failure = Some(e),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => self.plain.extend_from_slice(rec.payload),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode_hs(&mut self.outgoing, &mut e),
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(ConnectionState::PeerClosed) => self.ended = true,
                Ok(ConnectionState::Closed) => {
                    self.ended = true;
                    stop = true;
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if self.handshaking {
                        self.handshaking = false;
                        self.handshake_news = true;
                    }
                    if let Some(data) = app {
                        if let Err(e) =
                            append(&mut self.outgoing, |b| w.encrypt(data, b), encrypt_need)
                        {
                            failure = Some(rustls::Error::General(e.to_string()));
                        } else {
                            sent = true;
                        }
                    }
                    stop = true;
                }
                // BlockedHandshake (more bytes needed), and early data (not enabled).
                Ok(_) => stop = true,
            }
            if let Some(e) = failure {
                // `incoming` stays as it is: the session's positions in it must hold for the
                // call that yields the alert.
                self.alert();
                return Err(e);
            }
            if discard > 0 {
                self.incoming.drain(..discard.min(self.incoming.len()));
            }
            if stop {
                if self.incoming.is_empty() {
                    self.incoming = Vec::new();
                }
                return Ok(sent);
            }
        }
    }

    /// After a failure: encodes the alert rustls queued, for the peer to learn why.
    fn alert(&mut self) {
        // One call: rustls hands out a queued record before it looks at `incoming` again
        // (which, after a failure, it must not be asked to do).
        let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            encode_hs(&mut self.outgoing, &mut e);
        }
        self.incoming = Vec::new();
        self.ended = true;
        self.failed = true;
        let _ = self.push();
    }

    /// Sends `close_notify` once, as far as the socket takes it now.
    pub(super) fn goodbye(&mut self) {
        if !self.handshaking && !self.bye_sent && !self.failed {
            self.bye_sent = true;
            // (Always `incoming`: the session keeps positions in the buffer it is given.)
            let UnbufferedStatus { discard, state } =
                self.session.process_tls_records(&mut self.incoming);
            if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
                let _ = append(
                    &mut self.outgoing,
                    |b| w.queue_close_notify(b),
                    encrypt_need,
                );
            }
            self.incoming.drain(..discard.min(self.incoming.len()));
        }
        let _ = self.push();
    }

    /// Writes `outgoing` until it is empty (`Ok(true)`) or the socket is full (`Ok(false)`).
    pub(super) fn push(&mut self) -> io::Result<bool> {
        let mut done = 0;
        let res = loop {
            if done == self.outgoing.len() {
                break Ok(true);
            }
            match self.tcp.write(&self.outgoing[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if done == self.outgoing.len() {
            // Idle: no memory kept.
            self.outgoing = Vec::new();
        } else if done > 0 {
            self.outgoing.drain(..done);
        }
        res
    }

    /// Reads plaintext (see the module header).
    pub(super) fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fresh {
            let mut first = [0u8; 1];
            match self.tcp.peek(&mut first)? {
                0 => return Ok(0),
                _ if first[0] != TLS_HANDSHAKE => return Err(not_tls(first[0])),
                _ => self.fresh = false,
            }
        }
        let mut taken = 0;
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_at);
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain = Vec::new();
                    self.plain_at = 0;
                }
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            if taken >= READ_CAP {
                self.yielded = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut chunk = [0u8; READ_CHUNK];
            match self.tcp.read(&mut chunk) {
                Ok(0) => {
                    self.ended = true;
                    return Ok(0);
                }
                Ok(n) => {
                    taken += n;
                    if self.incoming.len() + n > MAX_INCOMING {
                        return Err(refused(rustls::Error::General(
                            "handshake message too large".into(),
                        )));
                    }
                    self.incoming.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Err(e),
            }
            self.run(None).map_err(refused)?;
            // The handshake's answers (and tickets) go out now, as far as the socket takes
            // them; the loop flushes the rest when the socket has room.
            self.push()?;
        }
    }

    /// Encrypts what of `bufs` the bounded output takes and writes records out.
    pub(super) fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Room first: records waiting are older than this plaintext.
        self.push()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let room = crate::tls::BUFFER_LIMIT.saturating_sub(self.outgoing.len());
        if room < 1024 || self.handshaking {
            // Full, and the socket takes nothing (or the handshake is not finished: its end
            // flushes the connection again).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let take = total.min((room - RECORD_OVERHEAD).min(RECORD));
        // Small frames queued together become one record.
        let first: &[u8] = bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| &b[..]);
        let gathered;
        let data: &[u8] = if first.len() >= take {
            &first[..take]
        } else {
            let mut g = Vec::with_capacity(take);
            for b in bufs {
                let want = take - g.len();
                g.extend_from_slice(&b[..b.len().min(want)]);
                if g.len() == take {
                    break;
                }
            }
            gathered = g;
            &gathered
        };
        let n = data.len();
        match self.run(Some(data)) {
            Ok(true) => {}
            Ok(false) => return Err(io::ErrorKind::WouldBlock.into()),
            Err(e) => return Err(refused(e)),
        }
        self.push()?;
        Ok(n)
    }
}
