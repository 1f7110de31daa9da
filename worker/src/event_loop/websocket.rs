//! The WebSocket port: the opening handshake (origin and URL-token checks), frames cut by the
//! codec and turned into messages by the message layer ([`Messages`]), and what a message
//! means here: a login (uid or token), a relay (seed 002), or a Socket.IO packet.

use super::http::Refusal;
use super::{unix_now, Worker};
use crate::auth::{self, Mode};
use crate::conn::{Proto, Ws, CLOSING};
use crate::delivery::{close_frame, frame, OP_PONG, OP_TEXT};
use crate::proto::http;
use crate::proto::websocket::{self, Handshake, WsError};
use crate::proto::ws_message::Incoming;
use crate::registry::Recipient;
use bytes::Bytes;

impl Worker {
    /// The opening handshake, then whatever frames followed it in the same read.
    pub(super) fn consume_handshake(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        match websocket::handshake(buf, self.cfg.max_header) {
            Handshake::Partial => 0,
            Handshake::Reject {
                status,
                response,
                reason,
            } => {
                self.reject(slot, reason, response, Refusal::for_status(status));
                buf.len()
            }
            Handshake::Upgrade {
                response,
                consumed,
                target,
                origin,
            } => {
                let allowed = &self.cfg.allowed_origins;
                if !allowed.is_empty()
                    && !allowed
                        .iter()
                        .any(|a| a == "*" || origin.as_deref() == Some(a.as_str()))
                {
                    self.stats.bad_origin += 1;
                    let r = http::text(403, "origin not allowed\n", false);
                    self.reject(slot, "origin not allowed", r, Refusal::Counted);
                    return buf.len();
                }
                // A token in the URL is checked before the upgrade, so a bad one gets a 401.
                let mut uid = None;
                if self.auth.mode != Mode::Uid {
                    if let Some(token) = auth::token_from_target(&target) {
                        match self.auth.verify(&token, unix_now()) {
                            Ok(u) => uid = Some(u),
                            Err(e) => {
                                self.stats.auth_failed += 1;
                                let r = http::text(401, "invalid token\n", false);
                                self.reject(
                                    slot,
                                    &format!("token in URL refused: {e}"),
                                    r,
                                    Refusal::Counted,
                                );
                                return buf.len();
                            }
                        }
                    }
                }
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.proto = Proto::Ws(Ws::default());
                }
                self.up_handshake(slot, &target);
                self.ws_history_options(slot, &target);
                self.queue(slot, Bytes::from(response));
                if let Some(uid) = uid {
                    if !self.ws_login(slot, &uid) {
                        return buf.len();
                    }
                }
                consumed + self.consume_ws(slot, &mut buf[consumed..])
            }
        }
    }

    /// Frames of an upgraded connection; returns the bytes used (an incomplete frame stays).
    pub(super) fn consume_ws(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            match websocket::parse_frame(&mut buf[pos..], self.cfg.max_frame) {
                Ok(None) => return pos,
                Err(e) => {
                    self.ws_fail(slot, &e);
                    return buf.len();
                }
                Ok(Some((f, used))) => {
                    let start = pos + f.payload.start;
                    let end = pos + f.payload.end;
                    pos += used;
                    if let Err(e) = self.ws_frame(slot, f.fin, f.opcode, &buf[start..end]) {
                        self.ws_fail(slot, &e);
                        return buf.len();
                    }
                    match self.conns.get(slot) {
                        Some(c) if c.flags & CLOSING == 0 => {}
                        _ => return buf.len(),
                    }
                }
            }
        }
    }

    /// Closes with the code the violation calls for, counted.
    pub(super) fn ws_fail(&mut self, slot: usize, e: &WsError) {
        if *e == WsError::TooBig {
            self.stats.oversize += 1;
        } else {
            self.stats.rejected += 1;
        }
        if let Some(c) = self.conns.get(slot) {
            log::info!(
                "websocket {} from {}: {e}; closing with {}",
                c.id,
                c.remote,
                e.close_code()
            );
        }
        self.ws_close(slot, e.close_code(), &e.to_string());
    }

    /// Queues a close frame and closes once it is written.
    pub(super) fn ws_close(&mut self, slot: usize, code: u16, reason: &str) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if let Proto::Ws(ws) = &mut conn.proto {
            if !ws.close_sent {
                ws.close_sent = true;
                self.queue(slot, close_frame(code, reason));
                self.up_note_close(Recipient::conn(slot), Some(code), reason);
            }
        }
        self.close_after_flush(slot);
    }

    /// One frame, through the message layer.
    fn ws_frame(
        &mut self,
        slot: usize,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> Result<(), WsError> {
        let max = self.cfg.max_frame;
        let Some(Proto::Ws(ws)) = self.conns.get_mut(slot).map(|c| &mut c.proto) else {
            return Ok(());
        };
        match ws.messages.frame(fin, opcode, payload, max)? {
            Incoming::Close { echo } => self.ws_close(slot, echo, ""),
            Incoming::Ping(p) => {
                if !ws.close_sent {
                    self.queue(slot, frame(OP_PONG, p));
                }
            }
            Incoming::Text(t) => self.ws_message(slot, Some(&t), &[]),
            Incoming::Binary(b) => self.ws_message(slot, None, &b),
            Incoming::Nothing => {}
        }
        Ok(())
    }

    /// A whole message (`text` is `None` for a binary one, whose bytes are `data`).
    fn ws_message(&mut self, slot: usize, text: Option<&str>, data: &[u8]) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return;
        };
        if let Some(idx) = ws.session {
            if let Some(t) = text {
                self.sio_ws_message(slot, idx as usize, t);
            }
            return;
        }
        match (&ws.uid, text) {
            (None, None) => {
                self.stats.rejected += 1;
                self.ws_close(slot, 1003, "the first message must be the uid, as text");
            }
            // In uid mode the first message is the uid itself: one too long is an invalid uid
            // (1008), as documented, not a refused token.
            (None, Some(uid)) if self.auth.mode == Mode::Uid => {
                self.ws_login(slot, uid);
            }
            (None, Some(token)) => match self.auth.verify(token, unix_now()) {
                Ok(uid) => {
                    self.ws_login(slot, &uid);
                }
                Err(e) => {
                    self.stats.auth_failed += 1;
                    log::info!(
                        "websocket {} from {}: login refused: {e}",
                        conn.id,
                        conn.remote
                    );
                    self.ws_close(slot, 4001, "invalid token");
                }
            },
            // After login: a relay (seed 002) and a `message` event.
            (Some(uid), _) => {
                let uid = uid.clone();
                self.up_ws_message(slot, uid, text, data);
            }
        }
    }

    /// Logs connection `slot` in as `uid` (checked); false, and the connection closing with
    /// 1008, when the uid is not acceptable.
    pub(super) fn ws_login(&mut self, slot: usize, uid: &str) -> bool {
        let Some(rc) = self.login(Recipient::conn(slot), uid) else {
            self.ws_close(slot, 1008, "invalid uid");
            return false;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return false;
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return false;
        };
        log::debug!(
            "websocket {} from {} logged in as {uid}",
            conn.id,
            conn.remote
        );
        ws.uid = Some(rc);
        if self.cfg.login_reply {
            let msg = format!("login success, your uid is {uid}");
            self.queue(slot, frame(OP_TEXT, msg.as_bytes()));
        }
        true
    }

    /// Kicks connection `slot`: its last message (`data`), then a close with 1000.
    pub(super) fn ws_kick(&mut self, slot: usize, data: Option<&str>) {
        if let Some(d) = data {
            self.queue(slot, frame(OP_TEXT, d.as_bytes()));
        }
        self.ws_close(slot, 1000, "kicked");
    }
}
