//! Accepting: every port's listener, the limits on connections (`max_connections`,
//! `max_connections_per_ip`), the descriptors kept for the backends (`fd_reserve`), what
//! happens at `EMFILE`, and a new connection's entry in the table.
//!
//! **The descriptor reserve.** The kernel gives a new socket the lowest free descriptor, so a
//! client connection whose descriptor is at or above `limit - reserve` means that fewer than
//! `reserve` descriptors are left: the WebSocket and Socket.IO ports then refuse it (503) at
//! once. Clients can therefore never hold the top `reserve` descriptors, which stay for the
//! text and HTTP ports (backends) and the sibling links. No counting, one comparison.
//!
//! **At `EMFILE`.** When not even the reserve is left, a spare descriptor (`/dev/null`, opened
//! at start) is closed for a moment to accept the waiting connection, refuse it (503, or an
//! error line on the text port) and close it; then the spare is opened again. A client or a
//! backend is told at once, instead of waiting in the accept queue until it gives up (and its
//! push runs later, unannounced).

use super::{would_block, Worker, CONN_BASE};
use crate::conn::{Conn, Http, Port, Proto, Text};
use crate::proto::{http, text};
use crate::stream::Stream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What a connection refused for lack of descriptors is told.
const NO_FDS: &str = "server busy: out of file descriptors";

/// Connections taken from one listener in one loop turn at most: each is read at once (its
/// handshake is usually there already), so a reconnect storm's full accept queue (4,096)
/// taken in one turn would hold every push of the worker for 100 ms and more; the rest waits
/// for the next turn, after the other sockets' events.
const ACCEPT_BUDGET: usize = 64;

/// How long accepting pauses after `EMFILE`/`ENFILE` when no spare descriptor is at hand.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The soft open-file limit (`usize::MAX` when unlimited).
pub(super) fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return usize::MAX;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

impl Worker {
    /// Takes what waits on every port.
    pub(super) fn accept_all(&mut self) {
        for port in Port::ALL {
            self.accept(port);
        }
    }

    /// The lowest descriptor a client connection may not have: the ones above are kept for
    /// backends and sibling links (`fd_reserve`, at most a quarter of the open-file limit).
    fn client_fd_ceiling(&self) -> usize {
        if self.fd_limit == usize::MAX {
            return usize::MAX;
        }
        let reserve = self.cfg.fd_reserve.min(self.fd_limit / 4);
        self.fd_limit - reserve
    }

    /// Takes the connections waiting on `port`'s listener (edge-triggered: until `WouldBlock`,
    /// or [`ACCEPT_BUDGET`] of them, the rest marked to be taken next turn), unless accepting
    /// is paused.
    pub(super) fn accept(&mut self, port: Port) {
        if self.accept_paused_until.is_some() || !self.mesh_known {
            return;
        }
        let mut budget = ACCEPT_BUDGET;
        loop {
            if budget == 0 {
                self.accept_again |= 1 << port.index();
                return;
            }
            budget -= 1;
            let Some(listener) = self.listeners[port].as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((mut stream, remote)) => {
                    if self.emfile {
                        self.emfile = false;
                        log::info!("accepting again: descriptors are available");
                    }
                    let client = matches!(port, Port::Ws | Port::Sio);
                    if client && stream.as_raw_fd() as usize >= self.client_fd_ceiling() {
                        self.stats.out_of_fds += 1;
                        if !self.fd_reserve_hit {
                            self.fd_reserve_hit = true;
                            log::warn!(
                                "{} connection from {remote} refused: fewer than fd_reserve ({}) \
                                 descriptors left of {}, kept for backends; refusing clients \
                                 until some close",
                                port.name(),
                                self.cfg.fd_reserve.min(self.fd_limit / 4),
                                self.fd_limit
                            );
                        }
                        refuse(&mut stream, port, 503, NO_FDS);
                        continue;
                    }
                    if client && self.fd_reserve_hit {
                        self.fd_reserve_hit = false;
                        log::info!("accepting clients again: descriptors are available");
                    }
                    self.add_conn(stream, remote, port)
                }
                Err(e) if would_block(&e) => return,
                Err(e)
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    // Out of descriptors, the reserve included. Say so once per episode.
                    if !self.emfile {
                        self.emfile = true;
                        log::warn!(
                            "accept on {} port: {e}; refusing new connections until some close",
                            port.name()
                        );
                        self.fd_limit = open_file_limit();
                    }
                    match self.refuse_with_spare(port) {
                        Spare::Refused => continue,
                        Spare::Empty => return,
                        Spare::Missing => {
                            // The pending connection stays queued in the kernel. Pause instead
                            // of spinning on a readiness we cannot act on.
                            log::debug!("no spare descriptor: pausing accepts");
                            self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("accept on {} port: {e}", port.name());
                }
            }
        }
    }

    /// At `EMFILE`: frees the spare descriptor for a moment to accept one waiting connection on
    /// `port` and refuse it, then takes the spare back.
    fn refuse_with_spare(&mut self, port: Port) -> Spare {
        let Some(spare) = self.spare_fd.take() else {
            return Spare::Missing;
        };
        drop(spare);
        let outcome = match self.listeners[port].as_ref().map(|l| l.accept()) {
            Some(Ok((mut stream, _))) => {
                self.stats.out_of_fds += 1;
                refuse(&mut stream, port, 503, NO_FDS);
                Spare::Refused
            }
            // The kernel reports EMFILE before it looks at the queue: nothing was waiting.
            Some(Err(e)) if would_block(&e) => Spare::Empty,
            _ => Spare::Missing,
        };
        self.spare_fd = std::fs::File::open("/dev/null").ok();
        match self.spare_fd {
            Some(_) => outcome,
            None => Spare::Missing,
        }
    }

    /// Adds a connection just accepted (its TLS session begins when its port speaks TLS).
    pub(super) fn add_conn(
        &mut self,
        stream: mio::net::TcpStream,
        remote: std::net::SocketAddr,
        port: Port,
    ) {
        if let Some(stream) = self.tls_wrap(stream, remote, port) {
            self.add_conn_with(stream, remote, port, None);
        }
    }

    /// Adds a connection; `initial` holds bytes already read from it (a connection handed
    /// over by a sibling), handled before the socket is read.
    pub(super) fn add_conn_with(
        &mut self,
        mut stream: Stream,
        remote: std::net::SocketAddr,
        port: Port,
        initial: Option<&mut Vec<u8>>,
    ) {
        let max = self.cfg.max_connections;
        if max > 0 && self.conns.len() >= max {
            self.stats.over_max_connections += 1;
            log::warn!(
                "{} connection from {remote} refused: max_connections ({max}) reached",
                port.name()
            );
            if !stream.is_tls() {
                refuse_stream(&mut stream, port, 503, "too many connections");
                return;
            }
            // Over TLS the refusal waits for the handshake (bounded by auth_timeout), so the
            // client reads it; a worker may hold that many more for that long.
            return self.insert_conn(
                stream,
                remote,
                port,
                None,
                Some((503, "too many connections")),
            );
        }
        let per_ip = self.cfg.max_connections_per_ip;
        if per_ip > 0 {
            let n = self.per_ip.entry(remote.ip()).or_insert(0);
            if *n as usize >= per_ip {
                self.stats.over_per_ip += 1;
                log::warn!(
                    "{} connection from {remote} refused: max_connections_per_ip ({per_ip}) reached",
                    port.name()
                );
                let why = "too many connections from this address";
                if !stream.is_tls() {
                    refuse_stream(&mut stream, port, 429, why);
                    return;
                }
                return self.insert_conn(stream, remote, port, None, Some((429, why)));
            }
            *n += 1;
        }
        self.insert_conn(stream, remote, port, initial, None);
    }

    /// Registers `stream` and gives it a slot: a new connection of `port`, or, with `refused`,
    /// one that is answered that refusal once its first bytes come (TLS ports, see
    /// [`Proto::Refused`]).
    fn insert_conn(
        &mut self,
        mut stream: Stream,
        remote: std::net::SocketAddr,
        port: Port,
        initial: Option<&mut Vec<u8>>,
        refused: Option<(u16, &'static str)>,
    ) {
        let _ = stream.set_nodelay(true);
        if matches!(port, Port::Ws | Port::Sio) && self.cfg.client_sndbuf > 0 {
            // The most the kernel holds for a client that does not read (it doubles it).
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.cfg.client_sndbuf);
        }
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE)
        {
            log::warn!("cannot register connection from {remote}: {e}");
            if refused.is_none() {
                self.forget_ip(remote.ip());
            }
            return;
        }
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        self.stats.accepted += 1;
        entry.insert(Conn {
            stream,
            remote,
            id,
            port,
            proto: match (refused, port) {
                (Some((status, why)), _) => Proto::Refused { status, why },
                (None, Port::Ws) => Proto::Handshake,
                (None, Port::Text) => Proto::Text(Text {
                    authed: self.cfg.push_secret.is_empty(),
                    ..Text::default()
                }),
                (None, Port::Http | Port::Sio) => Proto::Http(Http::default()),
            },
            out: Default::default(),
            inbuf: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            flags: 0,
            since: self.now,
            last_seen: self.now,
            slow_since: 0,
        });
        log::debug!("{} connection {id} from {remote}", port.name());
        if let Some(bytes) = initial {
            self.on_bytes(slot, bytes);
        }
        // Data may already be there (edge-triggered: no event promised for it).
        self.on_readable(slot, false);
    }

    /// A connection from `ip` is gone: one less against `max_connections_per_ip`.
    pub(super) fn forget_ip(&mut self, ip: IpAddr) {
        if self.cfg.max_connections_per_ip == 0 {
            return;
        }
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

impl Worker {
    /// A TLS connection over a limit sent its first bytes: it is told the refusal, over TLS,
    /// and closed once that is written.
    pub(super) fn refuse_in_words(&mut self, slot: usize, status: u16, why: &'static str) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let port = c.port;
        let bytes = match port {
            Port::Text => text::error_reply(why),
            Port::Ws | Port::Http | Port::Sio => http::text(status, &format!("{why}\n"), false),
        };
        self.queue(slot, bytes::Bytes::from(bytes));
        self.close_after_flush(slot);
    }
}

/// What freeing the spare descriptor at `EMFILE` came to.
enum Spare {
    /// A waiting connection was accepted and refused; the spare is back.
    Refused,
    /// Nothing was waiting; the spare is back.
    Empty,
    /// No spare (it could not be opened): accepting must pause.
    Missing,
}

/// [`refuse`] below any TLS: on the socket itself.
fn refuse_stream(stream: &mut Stream, port: Port, status: u16, why: &str) {
    match stream.tcp() {
        Some(tcp) => refuse(tcp, port, status, why),
        None => refuse(stream, port, status, why),
    }
}

/// Best-effort refusal written straight to a just-accepted socket, which is then dropped. What
/// the client already sent is read first: a socket closed with unread input is reset, which
/// could reach the client before it has read the refusal. (Out of descriptors, a TLS client is
/// refused in plain words, before any handshake: it reports a protocol error; over the
/// connection limits it is refused after its handshake, see [`Proto::Refused`].)
fn refuse<S: Read + Write>(stream: &mut S, port: Port, status: u16, why: &str) {
    let _ = stream.read(&mut [0u8; 4096]);
    let bytes = match port {
        Port::Text => text::error_reply(why),
        Port::Ws | Port::Http | Port::Sio => http::text(status, &format!("{why}\n"), false),
    };
    let _ = stream.write(&bytes);
}
