//! The HTTP port: requests parsed one at a time (pipelined ones wait in the input buffer, so
//! responses keep their order), the seed's publish call on `/`, `/metrics`, and the JSON API
//! under `/api/` (routed in [`api`](super::api)).

use super::push::To;
use super::query::QReply;
use super::socketio::Routed;
use super::Worker;
use crate::auth;
use crate::conn::{Port, Proto, CLOSING};
use crate::mesh::{ReplyKind, ReplyTo};
use crate::proto::http::{self, Parsed};
use bytes::Bytes;
use herald_ipc::Query;
use serde_json::Value;

/// Which `status` counter a refused request moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Malformed or not allowed: `rejected`.
    Protocol,
    /// Over a size limit (413, 431): `oversize`.
    Oversize,
    /// The caller already counted it (`auth_failed`, `bad_origin`).
    Counted,
}

impl Refusal {
    /// The counter a refusal with `status` moves.
    pub(super) fn for_status(status: u16) -> Refusal {
        match status {
            413 | 431 => Refusal::Oversize,
            _ => Refusal::Protocol,
        }
    }
}

impl Worker {
    /// Requests in `buf`, one at a time; returns the bytes used.
    pub(super) fn consume_http(&mut self, slot: usize, buf: &mut [u8]) -> usize {
        let mut pos = 0;
        let now = self.now.max(1);
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return buf.len();
            };
            if conn.flags & CLOSING != 0 {
                return buf.len();
            }
            let port = conn.port;
            let h = match &mut conn.proto {
                Proto::Http(h) => h,
                // The Socket.IO port upgraded this connection: frames may follow at once.
                Proto::Ws(_) => return pos + self.consume_ws(slot, &mut buf[pos..]),
                _ => return buf.len(),
            };
            if h.waiting || pos == buf.len() {
                return pos;
            }
            let (max_header, max_body) = (self.cfg.max_header, self.cfg.max_body);
            match http::parse_request_with(&buf[pos..], max_header, max_body, &mut h.chunks) {
                Parsed::Partial { continue_100 } => {
                    if h.started == 0 {
                        h.started = now;
                    }
                    if continue_100 && !h.continue_sent {
                        h.continue_sent = true;
                        self.queue(slot, Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"));
                    }
                    return pos;
                }
                Parsed::Error { status, reason } => {
                    self.reject(
                        slot,
                        reason,
                        http::text(status, &format!("{reason}\n"), false),
                        Refusal::for_status(status),
                    );
                    return buf.len();
                }
                Parsed::Request(req, used) => {
                    h.continue_sent = false;
                    h.chunks = Default::default();
                    h.started = 0;
                    let start = pos;
                    pos += used;
                    if port == Port::Sio {
                        let id = conn.id;
                        match self.sio_request(slot, id, req, &buf[start..]) {
                            Routed::Here => {}
                            // Handed to the session's worker, with every byte from here on.
                            Routed::HandedOff => return buf.len(),
                            // Once the earlier answers are written, this request is read again.
                            Routed::AfterFlush => return start,
                        }
                    } else {
                        self.http_request(slot, req);
                    }
                }
            }
        }
    }

    /// One request on the HTTP port.
    fn http_request(&mut self, slot: usize, req: http::Request) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let id = conn.id;
        let Proto::Http(h) = &mut conn.proto else {
            return;
        };
        h.close_after = !req.keep_alive;
        let keep = req.keep_alive;
        // Probes for load balancers and orchestrators: cheap, local, and not behind
        // `push_secret` (they carry no data).
        if req.method == "GET" && (req.path == "/healthz" || req.path == "/readyz") {
            let ready = req.path == "/healthz" || self.ready();
            let (status, body) = if ready {
                (200, "ok\n")
            } else {
                (503, "not ready\n")
            };
            return self.http_respond(slot, http::text(status, body, keep));
        }
        if !self.cfg.push_secret.is_empty() {
            let given = req
                .authorization
                .as_deref()
                .and_then(http::bearer_token)
                .unwrap_or("");
            if !auth::secret_eq(given.as_bytes(), self.cfg.push_secret.as_bytes()) {
                self.stats.unauthorized += 1;
                log::warn!("http request from {}: no valid push secret", conn.remote);
                let (ctype, body): (&str, &[u8]) = if req.path.starts_with("/api/") {
                    ("application/json", b"{\"error\":\"unauthorized\"}\n")
                } else {
                    ("text/plain; charset=utf-8", b"unauthorized\n")
                };
                let r = http::response(401, ctype, body, keep, "WWW-Authenticate: Bearer\r\n");
                return self.http_respond(slot, r);
            }
        }
        if req.path.starts_with("/api/") {
            h.waiting = true;
            return self.api_request(slot, id, &req);
        }
        if req.path == "/metrics" {
            if req.method != "GET" {
                let r = http::response(
                    405,
                    "text/plain; charset=utf-8",
                    b"method not allowed\n",
                    keep,
                    "Allow: GET\r\n",
                );
                return self.http_respond(slot, r);
            }
            h.waiting = true;
            return self.query(Query::Stats, QReply::Metrics { slot, id });
        }
        if req.path != "/" {
            return self.http_respond(slot, http::text(404, "not found\n", keep));
        }
        if req.method != "GET" && req.method != "POST" {
            let r = http::response(
                405,
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                keep,
                "Allow: GET, POST\r\n",
            );
            return self.http_respond(slot, r);
        }
        let params = match http::params(&req) {
            Ok(p) => p,
            Err(why) => return self.http_respond(slot, http::text(400, &format!("{why}\n"), keep)),
        };
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("type") != Some("publish") {
            return self.http_respond(slot, http::text(200, "fail", keep));
        }
        let content = http::html_escape(get("content").unwrap_or(""));
        let to = get("to").unwrap_or("").to_string();
        h.waiting = true;
        if to.is_empty() {
            let reply = ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::AlwaysOk,
            };
            self.push(To::ALL, Vec::new(), content.as_bytes(), false, reply);
        } else {
            let reply = ReplyTo::Http {
                slot,
                id,
                kind: ReplyKind::Publish,
            };
            self.push(To::Uid(&to), Vec::new(), content.as_bytes(), false, reply);
        }
    }

    /// Writes the response to the request in progress and goes on with pipelined ones.
    pub(super) fn http_respond(&mut self, slot: usize, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Proto::Http(h) = &mut conn.proto else {
            return;
        };
        h.waiting = false;
        let close = h.close_after;
        self.queue(slot, Bytes::from(response));
        if close {
            self.close_after_flush(slot);
        }
    }

    /// Resumes parsing requests that arrived while a push was in flight.
    pub(super) fn http_resume(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.inbuf.is_empty() || conn.flags & CLOSING != 0 {
            return;
        }
        let mut buf = std::mem::take(&mut conn.inbuf);
        let used = self.consume_http(slot, &mut buf);
        buf.drain(..used.min(buf.len()));
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.flags & CLOSING == 0 {
                conn.inbuf = buf;
            }
        }
    }

    /// Answers with an error response and closes, moving the counter `why` names.
    pub(super) fn reject(&mut self, slot: usize, reason: &str, response: Vec<u8>, why: Refusal) {
        match why {
            Refusal::Oversize => self.stats.oversize += 1,
            Refusal::Protocol => self.stats.rejected += 1,
            Refusal::Counted => {}
        }
        if let Some(c) = self.conns.get(slot) {
            log::info!(
                "{} connection {} from {}: {reason}",
                c.port.name(),
                c.id,
                c.remote
            );
        }
        self.queue(slot, Bytes::from(response));
        self.close_after_flush(slot);
    }

    /// Whether HTTP connection `slot` stays open after its response; `None` when the slot no
    /// longer holds HTTP connection `id` (it closed, and the slot may be reused).
    pub(super) fn http_keep_alive(&self, slot: usize, id: u64) -> Option<bool> {
        let conn = self.conns.get(slot).filter(|c| c.id == id)?;
        match &conn.proto {
            Proto::Http(h) => Some(!h.close_after),
            _ => None,
        }
    }

    /// Writes a JSON response to HTTP connection `slot` (if still connection `id`) and goes on
    /// with its pipelined requests. `allow` names the allowed methods of a 405.
    pub(super) fn http_json(
        &mut self,
        slot: usize,
        id: u64,
        status: u16,
        v: &Value,
        allow: Option<&str>,
    ) {
        self.http_json_with(slot, id, status, v.to_string(), allow);
    }

    /// [`Worker::http_json`] for a body already written as JSON text.
    pub(super) fn http_json_text(&mut self, slot: usize, id: u64, status: u16, body: String) {
        self.http_json_with(slot, id, status, body, None);
    }

    /// Sends `body` (JSON text, a newline added) as the answer on `slot`.
    fn http_json_with(
        &mut self,
        slot: usize,
        id: u64,
        status: u16,
        body: String,
        allow: Option<&str>,
    ) {
        let Some(keep) = self.http_keep_alive(slot, id) else {
            return;
        };
        let mut body = body.into_bytes();
        body.push(b'\n');
        let allow = allow.map(|a| format!("Allow: {a}\r\n")).unwrap_or_default();
        let r = http::response(status, "application/json", &body, keep, &allow);
        self.http_respond(slot, r);
        self.http_resume(slot);
    }

    /// Whether this worker is ready to serve the whole server's answers: it knows and reaches
    /// every sibling the master announced, it is not retiring, and, with a cluster, Redis
    /// answers.
    fn ready(&self) -> bool {
        self.mesh_known
            && self.retire.is_none()
            && self.unlinked_peers(super::mesh::Holders::All) == 0
            && (self.bus.is_none() || self.cluster_up)
    }
}
