//! TODO

use super::*;
use crate::proto::websocket;
use crate::proto::websocket::Handshake;
use crate::proto::websocket::WsError;

impl Worker {
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
                    let r = websocket::http_error("403 Forbidden", "origin not allowed\n", "");
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
                                let r = websocket::http_error(
                                    "401 Unauthorized",
                                    "invalid token\n",
                                    "",
                                );
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
                self.queue(slot, Bytes::from(response));
                if let Some(uid) = uid {
                    if !self.login(slot, &uid) {
                        return buf.len();
                    }
                }
                consumed + self.consume_ws(slot, &mut buf[consumed..])
            }
        }
    }

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
            }
        }
        self.close_after_flush(slot);
    }

    pub(super) fn ws_frame(
        &mut self,
        slot: usize,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> Result<(), WsError> {
        let max = self.cfg.max_frame;
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return Ok(());
        };
        match opcode {
            0x8 => {
                let code = websocket::close_code(payload)?;
                let echo = if code == 1000 || payload.is_empty() {
                    1000
                } else {
                    code
                };
                self.ws_close(slot, echo, "");
                Ok(())
            }
            0x9 => {
                if !ws.close_sent {
                    self.queue(slot, frame(OP_PONG, payload));
                }
                Ok(())
            }
            0xA => Ok(()),
            0x0 => {
                let Some(frag) = ws.frag.as_mut() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if frag.data.len() + payload.len() > max {
                    return Err(WsError::TooBig);
                }
                frag.data.extend_from_slice(payload);
                if fin {
                    if let Some(f) = ws.frag.take() {
                        self.ws_message(slot, f.opcode == OP_TEXT, &f.data)?;
                    }
                }
                Ok(())
            }
            _ => {
                if ws.frag.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                if fin {
                    self.ws_message(slot, opcode == OP_TEXT, payload)
                } else {
                    ws.frag = Some(Box::new(Fragments {
                        opcode,
                        data: payload.to_vec(),
                    }));
                    Ok(())
                }
            }
        }
    }

    pub(super) fn ws_message(
        &mut self,
        slot: usize,
        is_text: bool,
        data: &[u8],
    ) -> Result<(), WsError> {
        let text = if is_text {
            Some(std::str::from_utf8(data).map_err(|_| WsError::BadUtf8)?)
        } else {
            None
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Proto::Ws(ws) = &mut conn.proto else {
            return Ok(());
        };
        if let Some(idx) = ws.session {
            if let Some(t) = text {
                self.sio_ws_message(slot, idx as usize, t);
            }
            return Ok(());
        }
        match (&ws.uid, text) {
            (None, None) => {
                self.stats.rejected += 1;
                self.ws_close(slot, 1003, "the first message must be the uid, as text");
            }
            (None, Some(token)) => match self.auth.verify(token, unix_now()) {
                Ok(uid) => {
                    self.login(slot, &uid);
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
            (Some(_), Some(msg)) if self.cfg.client_relay => {
                // Seed 002: `UID:message` to UID, `all:message` to everyone.
                if let Some((to, body)) = msg.split_once(':') {
                    let target = if to == "all" {
                        Target::All
                    } else {
                        Target::Uids(vec![to.to_string()])
                    };
                    self.push(
                        target.into(),
                        Vec::new(),
                        body.as_bytes(),
                        false,
                        ReplyTo::Nobody,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}
