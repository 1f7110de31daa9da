//! Accepting: every port's listener, the limits on connections (`max_connections`,
//! `max_connections_per_ip`), the pause after `EMFILE`, and a new connection's entry in the
//! table.

use super::{would_block, Worker, CONN_BASE};
use crate::conn::{Conn, Http, Port, Proto, Text};
use crate::proto::{http, text};
use mio::{Interest, Token};
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long accepting pauses after `EMFILE`/`ENFILE`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Worker {
    /// Takes what waits on every port.
    pub(super) fn accept_all(&mut self) {
        for port in Port::ALL {
            self.accept(port);
        }
    }

    /// Takes every connection waiting on `port`'s listener (edge-triggered: until
    /// `WouldBlock`), unless accepting is paused.
    pub(super) fn accept(&mut self, port: Port) {
        if self.accept_paused_until.is_some() || !self.mesh_known {
            return;
        }
        loop {
            let Some(listener) = self.listeners[port].as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, remote)) => {
                    if self.emfile {
                        self.emfile = false;
                        log::info!("accepting again: descriptors are available");
                    }
                    self.add_conn(stream, remote, port)
                }
                Err(e) if would_block(&e) => return,
                Err(e)
                    if e.raw_os_error() == Some(libc::EMFILE)
                        || e.raw_os_error() == Some(libc::ENFILE) =>
                {
                    // Out of descriptors: the pending connection stays queued in the kernel.
                    // Pause instead of spinning on a readiness we cannot act on; say so once
                    // per episode, not every retry.
                    if !self.emfile {
                        self.emfile = true;
                        log::warn!(
                            "accept on {} port: {e}; pausing accepts, retrying every {:?}",
                            port.name(),
                            ACCEPT_BACKOFF
                        );
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("accept on {} port: {e}", port.name());
                }
            }
        }
    }

    /// Adds a connection just accepted.
    pub(super) fn add_conn(
        &mut self,
        stream: mio::net::TcpStream,
        remote: std::net::SocketAddr,
        port: Port,
    ) {
        self.add_conn_with(stream, remote, port, None);
    }

    /// Adds a connection; `initial` holds bytes already read from it (a connection handed
    /// over by a sibling), handled before the socket is read.
    pub(super) fn add_conn_with(
        &mut self,
        mut stream: mio::net::TcpStream,
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
            refuse(&mut stream, port, 503, "too many connections");
            return;
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
                refuse(
                    &mut stream,
                    port,
                    429,
                    "too many connections from this address",
                );
                return;
            }
            *n += 1;
        }
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE)
        {
            log::warn!("cannot register connection from {remote}: {e}");
            self.forget_ip(remote.ip());
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
            proto: match port {
                Port::Ws => Proto::Handshake,
                Port::Text => Proto::Text(Text {
                    authed: self.cfg.push_secret.is_empty(),
                    ..Text::default()
                }),
                Port::Http | Port::Sio => Proto::Http(Http::default()),
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

/// Best-effort refusal written straight to a just-accepted socket, which is then dropped.
fn refuse(stream: &mut mio::net::TcpStream, port: Port, status: u16, why: &str) {
    let bytes = match port {
        Port::Text => text::error_reply(why),
        Port::Ws | Port::Http | Port::Sio => http::text(status, &format!("{why}\n"), false),
    };
    let _ = stream.write(&bytes);
}
