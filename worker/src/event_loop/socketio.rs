//! The Socket.IO port: Engine.IO sessions over HTTP long-polling and WebSocket, the
//! `login` / `new_msg` / `update_online_count` events of the seeds' web page, and routing of a
//! session's requests to the worker that owns it.
//!
//! DESIGN — requests spread by SO_REUSEPORT: every worker serves the port, and a session lives
//! in the worker that answered its handshake; its id carries that worker's pid. A request
//! (a poll, a POST, the WebSocket upgrade) that lands on another worker is not relayed
//! message by message: the TCP connection itself, with the bytes already read, is handed to
//! the owner over a Unix datagram socket (`SCM_RIGHTS`), and the owner serves it from then on
//! as if it had accepted it. One mechanism covers polling and the upgrade, adds no copy per
//! message, and keeps a session's state in one place. A sid whose owner is gone gets the
//! protocol's "Session ID unknown", and the client opens a new session.
//!
//! Sessions share the one registry with plain WebSockets (as [`Recipient::session`]), so every
//! push from the text port, the HTTP API or a sibling reaches them as a `new_msg` event,
//! encoded once per push and shared ([`SioEvent`]).

use super::handoff::handoff_name;
use super::{unix_now, Worker};
use crate::conn::{Proto, Ws};
use crate::delivery::{frame, OP_TEXT};
use crate::proto::engineio::{
    self, connect_message, decode_packet, decode_payload, decode_sio, open_packet, push_payload,
    EioVersion, ErrorCode, Handshake as EioHandshake, PacketType, SidGen, SioType, Transport,
};
use crate::proto::{http, websocket};
use crate::registry::Recipient;
use bytes::Bytes;
use serde_json::Value;
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::rc::Rc;
/// Largest POST payload a client may send (announced as `maxPayload`).
pub(super) const MAX_PAYLOAD: usize = 100_000;
/// Milliseconds a v4 client waits for a ping after `pingInterval` before giving up.
pub(super) const PING_TIMEOUT_MS: u64 = 20_000;

/// What became of a request on the Socket.IO port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Routed {
    /// Served (or refused) here; the next pipelined request may follow.
    Here,
    /// The connection went to the worker owning the session, with every byte from this
    /// request on.
    HandedOff,
    /// It is for another worker, and answers to earlier requests are still being written: it
    /// is read again once they are out.
    AfterFlush,
}

/// One Engine.IO session.
pub struct Session {
    /// Its id (also the registry's key in `sids`).
    pub sid: Rc<str>,
    /// Engine.IO 3 (socket.io-client 2) or 4 (3.x, 4.x).
    pub version: EioVersion,
    /// The uid once `login` was received.
    pub uid: Option<Rc<str>>,
    /// Joined the default namespace (v3: at once; v4: after the client's `40`).
    pub connected: bool,
    /// Encoded packets waiting for the next poll.
    pub queue: Vec<Rc<str>>,
    /// Bytes in `queue` (bounded by `max_send_buffer`).
    pub queued: usize,
    /// The held long-poll GET: (connection slot, connection id).
    pub poll: Option<(usize, u64)>,
    /// The WebSocket transport once upgraded (or from the start).
    pub ws: Option<(usize, u64)>,
    /// A WebSocket that sent `2probe` and has not yet sent `5`.
    pub probe: Option<(usize, u64)>,
    /// Last sign of life (worker clock ticks).
    pub last_seen: u32,
    /// The page's Origin, echoed in CORS headers.
    pub origin: Option<String>,
    /// In the flush list.
    pub dirty: bool,
}

/// The Socket.IO state of a worker.
pub struct Sio {
    /// Sessions by index (the registry holds [`Recipient::session`] of the index).
    pub sessions: Slab<Session>,
    /// Session index by sid.
    pub sids: HashMap<Rc<str>, usize>,
    /// Session ids carrying this worker's pid.
    pub gen: SidGen,
    /// Sessions with packets for a held poll.
    pub dirty: Vec<usize>,
    /// Receives connections handed over by siblings.
    pub handoff: mio::net::UnixDatagram,
    /// The last `update_online_count` text sent.
    pub online_text: String,
    /// A count query is in flight.
    pub online_asked: bool,
    /// The generations behind the last count (see `Query::Generation`): while no worker's
    /// logins moved, the count stands and is not asked again.
    pub online_generation: Option<u64>,
}

impl Sio {
    /// State for worker `pid` of master `instance`; binds the handoff socket.
    pub fn new(instance: u32, pid: u32) -> io::Result<Sio> {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(
            handoff_name(instance, pid).as_bytes(),
        )?;
        let s = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        s.set_nonblocking(true)?;
        Ok(Sio {
            sessions: Slab::new(),
            sids: HashMap::new(),
            gen: SidGen::new(pid & engineio::MAX_SID_WORKER),
            dirty: Vec::new(),
            handoff: mio::net::UnixDatagram::from_std(s),
            online_text: String::new(),
            online_asked: false,
            online_generation: None,
        })
    }
}

fn cors(origin: Option<&str>) -> String {
    engineio::cors_headers(origin)
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// An Engine.IO error answer (`{"code":…,"message":…}`) with CORS headers.
pub(super) fn eio_error(code: ErrorCode, origin: Option<&str>, keep: bool) -> Vec<u8> {
    let status = if code.status() == 403 { 403 } else { 400 };
    http::response(
        status,
        "application/json",
        code.body().as_bytes(),
        keep,
        &cors(origin),
    )
}

impl Worker {
    /// A request on the Socket.IO port. `raw` is the request's bytes and everything after
    /// it (for a handoff). Returns true when the connection was handed to another worker.
    pub(super) fn sio_request(
        &mut self,
        slot: usize,
        id: u64,
        req: http::Request,
        raw: &[u8],
    ) -> Routed {
        let keep = req.keep_alive;
        let origin = req.origin.clone();
        if req.path == "/socket.io/socket.io.js" && req.method == "GET" {
            self.sio_client_js(slot, keep, origin.as_deref());
            return Routed::Here;
        }
        if !engineio::is_engine_path(&req.path, engineio::DEFAULT_PATH) {
            self.http_respond(slot, http::text(404, "not found\n", keep));
            return Routed::Here;
        }
        if req.method == "OPTIONS" {
            let h: String =
                engineio::preflight_headers(origin.as_deref(), req.request_headers.as_deref())
                    .into_iter()
                    .map(|(k, v)| format!("{k}: {v}\r\n"))
                    .collect();
            self.http_respond(slot, http::response(204, "text/plain", b"", keep, &h));
            return Routed::Here;
        }
        let q = match engineio::parse_query(&req.query) {
            Ok(q) => q,
            Err(code) => {
                self.http_respond(slot, eio_error(code, origin.as_deref(), keep));
                return Routed::Here;
            }
        };
        let Some(sid) = q.sid.clone() else {
            // A handshake.
            if req.method != "GET" {
                self.http_respond(
                    slot,
                    eio_error(ErrorCode::BadHandshakeMethod, origin.as_deref(), keep),
                );
                return Routed::Here;
            }
            let next = self.sio.sessions.vacant_key();
            match q.transport {
                Transport::Polling => self.sio_open_polling(slot, q.version, origin, keep),
                Transport::Websocket => self.sio_open_ws(slot, id, &req, q.version, None),
            }
            self.up_sio_handshake(next, slot, &req.query);
            return Routed::Here;
        };
        let owner = engineio::sid_worker(&sid).unwrap_or(0);
        if owner != self.pid & engineio::MAX_SID_WORKER {
            // A body over the limit gets the owner's answer (400) here: it would not fit the
            // handoff, and is refused there anyway.
            if req.method == "POST" && req.body.len() > MAX_PAYLOAD {
                let r = eio_error(ErrorCode::BadRequest, origin.as_deref(), keep);
                self.http_respond(slot, r);
                return Routed::Here;
            }
            if !self.flushed_for_handoff(slot) {
                return Routed::AfterFlush;
            }
            return match self.sio_handoff(slot, owner, raw, origin.as_deref(), keep) {
                true => Routed::HandedOff,
                false => Routed::Here,
            };
        }
        let Some(&idx) = self.sio.sids.get(sid.as_str()) else {
            self.http_respond(
                slot,
                eio_error(ErrorCode::UnknownSid, origin.as_deref(), keep),
            );
            return Routed::Here;
        };
        self.sio.sessions[idx].last_seen = self.now;
        match (q.transport, req.method.as_str()) {
            (Transport::Websocket, _) => self.sio_open_ws(slot, id, &req, q.version, Some(idx)),
            (Transport::Polling, "GET") => self.sio_poll(slot, id, idx, keep),
            (Transport::Polling, "POST") => {
                let octet = req.content_type.starts_with("application/octet-stream");
                match decode_payload(
                    self.sio.sessions[idx].version,
                    &req.body,
                    octet,
                    MAX_PAYLOAD,
                ) {
                    Ok(packets) => {
                        for p in packets {
                            self.sio_packet(idx, p);
                        }
                        let r =
                            http::response(200, "text/html", b"ok", keep, &cors(origin.as_deref()));
                        self.http_respond(slot, r);
                    }
                    Err(e) => {
                        log::info!("socket.io session {sid}: bad payload: {e}");
                        self.http_respond(
                            slot,
                            eio_error(ErrorCode::BadRequest, origin.as_deref(), keep),
                        );
                        self.sio_close(idx, "parse error");
                    }
                }
            }
            _ => self.http_respond(
                slot,
                eio_error(ErrorCode::BadRequest, origin.as_deref(), keep),
            ),
        }
        Routed::Here
    }

    /// Serves the configured socket.io client build, as the reference server does for pages.
    fn sio_client_js(&mut self, slot: usize, keep: bool, origin: Option<&str>) {
        let path = &self.cfg.socketio_client;
        let body = if path.is_empty() {
            None
        } else {
            match std::fs::read(path) {
                Ok(b) => Some(b),
                Err(e) => {
                    log::warn!("socketio_client {path}: {e}");
                    None
                }
            }
        };
        let r = match body {
            Some(b) => http::response(200, "application/javascript", &b, keep, &cors(origin)),
            None => http::text(
                404,
                "socket.io client not configured (socketio_client)\n",
                keep,
            ),
        };
        self.http_respond(slot, r);
    }

    fn sio_new_session(&mut self, version: EioVersion, origin: Option<String>) -> usize {
        let sid: Rc<str> = Rc::from(self.sio.gen.next_sid());
        let idx = self.sio.sessions.insert(Session {
            sid: sid.clone(),
            version,
            uid: None,
            // Socket.IO 2 (Engine.IO 3) joins the default namespace at once; 3+ waits for `40`.
            connected: version == EioVersion::V3,
            queue: Vec::new(),
            queued: 0,
            poll: None,
            ws: None,
            probe: None,
            last_seen: self.now,
            origin,
            dirty: false,
        });
        self.sio.sids.insert(sid, idx);
        idx
    }

    fn sio_open_text(&self, idx: usize, transport: Transport) -> String {
        let s = &self.sio.sessions[idx];
        open_packet(
            s.version,
            &EioHandshake {
                sid: &s.sid,
                upgrades: engineio::upgrades_from(transport),
                ping_interval_ms: (self.cfg.ping_interval * 1000.0) as u64,
                ping_timeout_ms: PING_TIMEOUT_MS,
                max_payload: MAX_PAYLOAD as u64,
            },
        )
    }

    fn sio_open_polling(
        &mut self,
        slot: usize,
        version: EioVersion,
        origin: Option<String>,
        keep: bool,
    ) {
        let idx = self.sio_new_session(version, origin.clone());
        let mut body = String::new();
        push_payload(
            version,
            &mut body,
            &self.sio_open_text(idx, Transport::Polling),
        );
        if version == EioVersion::V3 {
            push_payload(version, &mut body, "40");
        }
        let r = http::response(
            200,
            engineio::CONTENT_TYPE_TEXT,
            body.as_bytes(),
            keep,
            &cors(origin.as_deref()),
        );
        self.http_respond(slot, r);
    }

    /// Upgrades connection `slot` to WebSocket for a new session (`idx` None) or as the probe
    /// of an existing polling session.
    fn sio_open_ws(
        &mut self,
        slot: usize,
        id: u64,
        req: &http::Request,
        version: EioVersion,
        idx: Option<usize>,
    ) {
        let key = req.ws_key.as_deref().filter(|k| websocket::key_is_valid(k));
        let (Some(key), true, true) = (key, req.upgrade, req.ws_version_ok) else {
            self.http_respond(
                slot,
                eio_error(ErrorCode::BadRequest, req.origin.as_deref(), false),
            );
            return;
        };
        let response = websocket::accept_response(key);
        let fresh = idx.is_none();
        let idx = match idx {
            Some(i) => {
                if self.sio.sessions[i].ws.is_some() || self.sio.sessions[i].probe.is_some() {
                    self.http_respond(
                        slot,
                        eio_error(ErrorCode::BadRequest, req.origin.as_deref(), false),
                    );
                    return;
                }
                i
            }
            None => self.sio_new_session(version, req.origin.clone()),
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.proto = Proto::Ws(Ws {
            session: Some(idx as u32),
            ..Ws::default()
        });
        self.queue(slot, Bytes::from(response));
        if fresh {
            // A WebSocket-only session: the open packet (and v3's connect) go as frames.
            self.sio.sessions[idx].ws = Some((slot, id));
            let open = self.sio_open_text(idx, Transport::Websocket);
            self.queue(slot, frame(OP_TEXT, open.as_bytes()));
            if version == EioVersion::V3 {
                self.queue(slot, frame(OP_TEXT, b"40"));
            }
        } else {
            self.sio.sessions[idx].probe = Some((slot, id));
        }
    }

    /// A long-poll GET: answered at once if packets wait, else held until some arrive.
    fn sio_poll(&mut self, slot: usize, id: u64, idx: usize, keep: bool) {
        let s = &mut self.sio.sessions[idx];
        if s.poll.is_some() || s.ws.is_some() {
            let origin = s.origin.clone();
            self.http_respond(
                slot,
                eio_error(ErrorCode::BadRequest, origin.as_deref(), keep),
            );
            return;
        }
        s.poll = Some((slot, id));
        if !s.queue.is_empty() && !s.dirty {
            s.dirty = true;
            self.sio.dirty.push(idx);
        }
        if let Some(Proto::Http(h)) = self.conns.get_mut(slot).map(|c| &mut c.proto) {
            h.waiting = true;
            h.poll_for = Some(idx as u32);
        }
        // An upgrade is under way: this poll may have come after the probe (a relayed or
        // handed-over request is late), so it returns at once (a noop, as the probe's
        // `3probe` does for a poll held then) and the client can pause polling.
        let s = &mut self.sio.sessions[idx];
        if s.probe.is_some() && s.queue.is_empty() {
            s.poll = None;
            let origin = s.origin.clone();
            let mut body = String::new();
            push_payload(s.version, &mut body, "6");
            self.sio_answer_poll(slot, id, body, origin.as_deref());
        }
    }

    /// Sends one encoded packet to a session: on its WebSocket, or queued for its next poll.
    pub(super) fn sio_send(
        &mut self,
        idx: usize,
        packet: Rc<str>,
        ws_frame: Option<&Bytes>,
    ) -> bool {
        // With a history, a v4 session's events end with its position.
        let stamped = self.sio_stamp(idx, &packet);
        let (packet, ws_frame) = match stamped {
            Some(p) => (p, None),
            None => (packet, ws_frame),
        };
        let cap = self.cfg.max_send_buffer;
        let Some(s) = self.sio.sessions.get_mut(idx) else {
            return false;
        };
        if let Some((slot, _)) = s.ws {
            let f = match ws_frame {
                Some(f) => f.clone(),
                None => frame(OP_TEXT, packet.as_bytes()),
            };
            let now = self.now;
            if let Some(c) = self.conns.get_mut(slot) {
                if c.out.len() + f.len() > cap {
                    // As for a plain WebSocket: a transport that stays over the cap for
                    // `slow_timeout` is closed by the sweep.
                    self.stats.send_fail += 1;
                    if c.slow_since == 0 {
                        c.slow_since = now.max(1);
                    }
                    return false;
                }
            }
            self.queue(slot, f);
            return true;
        }
        if s.queued + packet.len() > cap {
            self.stats.send_fail += 1;
            return false;
        }
        s.queued += packet.len();
        s.queue.push(packet);
        if s.poll.is_some() && !s.dirty {
            s.dirty = true;
            self.sio.dirty.push(idx);
        }
        true
    }

    /// Answers every held poll that has packets (once per loop turn).
    pub(super) fn sio_flush(&mut self) {
        for idx in std::mem::take(&mut self.sio.dirty) {
            let Some(s) = self.sio.sessions.get_mut(idx) else {
                continue;
            };
            s.dirty = false;
            let Some((slot, id)) = s.poll else { continue };
            if s.queue.is_empty() {
                continue;
            }
            s.poll = None;
            let mut body = String::with_capacity(s.queued + 8 * s.queue.len());
            for p in s.queue.drain(..) {
                push_payload(s.version, &mut body, &p);
            }
            s.queued = 0;
            let origin = s.origin.clone();
            self.sio_answer_poll(slot, id, body, origin.as_deref());
        }
    }

    pub(super) fn sio_answer_poll(
        &mut self,
        slot: usize,
        id: u64,
        body: String,
        origin: Option<&str>,
    ) {
        let Some(keep) = self.http_keep_alive(slot, id) else {
            return;
        };
        if let Some(Proto::Http(h)) = self.conns.get_mut(slot).map(|c| &mut c.proto) {
            h.poll_for = None;
        }
        let r = http::response(
            200,
            engineio::CONTENT_TYPE_TEXT,
            body.as_bytes(),
            keep,
            &cors(origin),
        );
        self.http_respond(slot, r);
        self.http_resume(slot);
    }

    /// One Engine.IO packet from a session's client.
    fn sio_packet(&mut self, idx: usize, p: engineio::Packet) {
        let Some(s) = self.sio.sessions.get_mut(idx) else {
            return;
        };
        s.last_seen = self.now;
        let version = s.version;
        match p.kind {
            PacketType::Ping => {
                // v3: the client's heartbeat. (The probe is handled on the WebSocket.)
                self.sio_send(idx, Rc::from("3"), None);
            }
            PacketType::Pong | PacketType::Noop | PacketType::Open => {}
            PacketType::Close => self.sio_close(idx, "client closed"),
            PacketType::Upgrade => {}
            PacketType::Message => {
                let Some(text) = p.as_text() else { return };
                match decode_sio(text, MAX_PAYLOAD) {
                    Ok(pkt) => match pkt.kind {
                        SioType::Connect => {
                            if self.sio_history_connect(idx, version, &pkt) {
                                return;
                            }
                            let Some(s) = self.sio.sessions.get_mut(idx) else {
                                return;
                            };
                            let sid = s.sid.clone();
                            s.connected = true;
                            let m = connect_message(version, &pkt.nsp, &sid);
                            self.sio_send(idx, Rc::from(m.as_str()), None);
                            self.sio_online_to(idx);
                        }
                        SioType::Disconnect => self.sio_close(idx, "client namespace disconnect"),
                        SioType::Event => match pkt.into_event() {
                            Ok(ev) => self.sio_event(idx, ev),
                            Err(e) => log::debug!("socket.io: {e}"),
                        },
                        _ => {}
                    },
                    Err(e) => {
                        log::info!("socket.io session {}: {e}; closing", s.sid);
                        self.sio_close(idx, "parse error");
                    }
                }
            }
        }
    }

    fn sio_event(&mut self, idx: usize, ev: engineio::Event) {
        if ev.name != "login" {
            return self.up_sio_event(idx, ev);
        }
        let Some(s) = self.sio.sessions.get(idx) else {
            return;
        };
        if s.uid.is_some() {
            return;
        }
        let token = match ev.args.first() {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return,
        };
        let uid = match self.auth.verify(&token, unix_now()) {
            Ok(uid) => Some(uid),
            Err(_) => {
                self.stats.auth_failed += 1;
                None
            }
        };
        match uid.and_then(|u| self.login(Recipient::session(idx), &u)) {
            Some(rc) => {
                if let Some(s) = self.sio.sessions.get_mut(idx) {
                    s.uid = Some(rc);
                }
                if let Some(id) = ev.id {
                    let ack = engineio::ack_message(&ev.nsp, id, &[]);
                    self.sio_send(idx, Rc::from(ack.as_str()), None);
                }
            }
            None => {
                let m = engineio::connect_error_message(
                    self.sio.sessions[idx].version,
                    "/",
                    "invalid token",
                );
                self.sio_send(idx, Rc::from(m.as_str()), None);
            }
        }
    }

    /// A text frame on a session's WebSocket.
    pub(super) fn sio_ws_message(&mut self, slot: usize, idx: usize, text: &str) {
        let Some(s) = self.sio.sessions.get_mut(idx) else {
            return;
        };
        let version = s.version;
        let Ok(p) = decode_packet(version, text) else {
            self.sio_close(idx, "parse error");
            return;
        };
        s.last_seen = self.now;
        let id = self.conns.get(slot).map(|c| c.id).unwrap_or(0);
        if s.probe == Some((slot, id)) {
            if p.is_probe_ping() {
                // Let a pending poll return so the client can pause polling.
                let held = s.poll.take();
                let origin = s.origin.clone();
                self.queue(slot, frame(OP_TEXT, b"3probe"));
                if let Some((pslot, pid)) = held {
                    let mut body = String::new();
                    push_payload(version, &mut body, "6");
                    self.sio_answer_poll(pslot, pid, body, origin.as_deref());
                }
                return;
            }
            if p.kind == PacketType::Upgrade {
                s.probe = None;
                s.ws = Some((slot, id));
                // Whatever waited for a poll goes on the WebSocket now.
                let queued: Vec<Rc<str>> = s.queue.drain(..).collect();
                s.queued = 0;
                for q in queued {
                    self.queue(slot, frame(OP_TEXT, q.as_bytes()));
                }
                return;
            }
        }
        self.sio_packet(idx, p);
    }
}
