//! Socket.IO requests that land on a worker not owning their session: the TCP connection
//! itself, with the bytes already read, goes to the owner over a Unix datagram socket
//! (`SCM_RIGHTS`), and the owner adopts it as if it had accepted it (see `socketio`'s header
//! for why the connection moves rather than its messages).

use super::socketio::eio_error;
use super::Worker;
use crate::conn::{Port, Proto};
use crate::proto::engineio::{self, ErrorCode};
use crate::stream::Stream;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// Largest request handed to another worker in one datagram.
pub(super) const MAX_HANDOFF: usize = 128 * 1024;

/// Abstract name of worker `pid`'s handoff socket.
pub(super) fn handoff_name(instance: u32, pid: u32) -> String {
    format!("herald-{instance}-{pid}-fd")
}

impl Worker {
    /// Sends descriptor `fd` with `msg` to worker `pid`'s hand-off socket.
    pub(super) fn send_fd(&self, pid: u32, fd: std::os::fd::RawFd, msg: &[u8]) -> bool {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let name = handoff_name(self.instance, pid);
        let res = UnixAddr::new_abstract(name.as_bytes()).and_then(|addr| {
            sendmsg(
                self.sio.handoff.as_raw_fd(),
                &[io::IoSlice::new(msg)],
                &[ControlMessage::ScmRights(&[fd])],
                MsgFlags::MSG_DONTWAIT,
                Some(&addr),
            )
        });
        match res {
            Ok(_) => true,
            Err(e) => {
                log::warn!("cannot hand a socket.io connection to worker pid {pid}: {e}");
                false
            }
        }
    }

    /// Writes what is queued for connection `slot` before it changes hands; false when the
    /// socket cannot take it all now (the handoff then waits for the flush) or failed.
    pub(super) fn flushed_for_handoff(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        if conn.out.is_empty() {
            return true;
        }
        match conn.out.flush(&mut conn.stream, &mut conn.bytes_out) {
            Ok(true) => true,
            Ok(false) => {
                if let Proto::Http(h) = &mut conn.proto {
                    h.waiting = true;
                    h.handoff_after_flush = true;
                }
                self.mark_dirty(slot);
                false
            }
            Err(e) => {
                log::debug!("write to connection {} before its handoff: {e}", conn.id);
                self.close(slot);
                false
            }
        }
    }

    /// Hands connection `slot` (with `raw`, the bytes read and not yet served) to worker
    /// `owner_pid`. Returns true when it was handed over (the slot is then gone).
    pub(super) fn sio_handoff(
        &mut self,
        slot: usize,
        owner: u32,
        raw: &[u8],
        origin: Option<&str>,
        keep: bool,
    ) -> bool {
        let owner_pid = self
            .peers
            .iter()
            .find(|p| p.pid & engineio::MAX_SID_WORKER == owner)
            .map(|p| p.pid);
        let plain = self
            .conns
            .get(slot)
            .is_some_and(|c| matches!(c.stream, Stream::Plain(_)));
        let sent = raw.len() <= MAX_HANDOFF
            && owner_pid.is_some_and(|pid| {
                if !plain {
                    // TLS, or relayed already: see `tls`'s header.
                    return self.tls_handoff(slot, pid, raw);
                }
                self.conns
                    .get(slot)
                    .is_some_and(|c| self.send_fd(pid, c.stream.as_raw_fd(), raw))
            });
        if !sent {
            self.http_respond(slot, eio_error(ErrorCode::UnknownSid, origin, keep));
            return false;
        }
        self.stats.handed_off += 1;
        // The owner has its own descriptor for the socket now: forget ours quietly.
        if let Some(c) = self.conns.get_mut(slot) {
            c.out.clear();
        }
        self.close(slot);
        true
    }

    /// Connections handed over by siblings: adopt each, with the bytes already read.
    pub(super) fn sio_adopt(&mut self) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let raw_sock = self.sio.handoff.as_raw_fd();
        let mut buf = vec![0u8; MAX_HANDOFF];
        loop {
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let (n, fds) = {
                let mut iov = [io::IoSliceMut::new(&mut buf)];
                match recvmsg::<()>(
                    raw_sock,
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => {
                        let mut fds = Vec::new();
                        if let Ok(cm) = m.cmsgs() {
                            for c in cm {
                                if let ControlMessageOwned::ScmRights(v) = c {
                                    fds.extend(v);
                                }
                            }
                        }
                        (m.bytes, fds)
                    }
                    Err(nix::errno::Errno::EAGAIN) => return,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log::warn!("handoff socket: {e}");
                        return;
                    }
                }
            };
            for fd in fds {
                if self.adopt_relayed(fd, &buf[..n]) {
                    continue;
                }
                // SAFETY: `fd` arrived in SCM_RIGHTS just now: a new descriptor that this process
                // owns and nothing else refers to.
                let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
                if std_stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let remote = match std_stream.peer_addr() {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                let stream = mio::net::TcpStream::from_std(std_stream);
                self.stats.adopted += 1;
                let mut bytes = buf[..n].to_vec();
                self.add_conn_with(Stream::Plain(stream), remote, Port::Sio, Some(&mut bytes));
            }
        }
    }
}
